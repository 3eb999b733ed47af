package objectstore_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/objectstore"
)

// Put streams from an io.Reader and Get to an io.Writer, whatever the
// object's size.
func ExampleStore() {
	ns, _ := embedded.StartNATS(embedded.NATSOptions{JetStream: true})
	defer ns.Shutdown()
	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()
	ctx := context.Background()

	st, err := objectstore.Open(ctx, nc, objectstore.Config{Bucket: "prompts", Storage: "memory"})
	if err != nil {
		fmt.Println(err)
		return
	}
	ref, err := st.Put(ctx, "long-prompt", strings.NewReader(strings.Repeat("token ", 500_000)))
	if err != nil {
		fmt.Println(err)
		return
	}
	var out bytes.Buffer
	if _, err := st.Get(ctx, "long-prompt", &out); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(ref.Size, out.Len())
	// Output: 3000000 3000000
}
