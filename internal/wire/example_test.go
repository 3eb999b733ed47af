package wire_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/loomrt/loom/internal/wire"
)

// A unary exchange on the wire: the client's preface and OPEN, the
// server's preface, one DATA and the END.
func ExampleWriter() {
	var client, server wire.Writer
	client.Open(1, &wire.OpenHeader{Path: "ns/c/e", Codec: "json", Timeout: 2 * time.Second}, []byte(`{}`))
	server.Data(1, []byte(`"hi"`))
	server.End(1, wire.CodeOK, "")

	fmt.Printf("client preface % x\n", wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: 4 << 20, InitialWindow: 256 << 10}))
	fmt.Printf("client OPEN    % x\n", client.Bytes())
	fmt.Printf("server preface % x\n", wire.AppendPreface(nil, wire.Preface{Version: wire.Version, MaxFrameSize: 4 << 20}))
	fmt.Print(hex.Dump(server.Bytes()))

	r := wire.NewReader(bytes.NewReader(server.Bytes()), wire.DefaultMaxFrameSize)
	for {
		f, err := r.ReadFrame()
		if err != nil {
			break
		}
		fmt.Printf("%v stream %d: %q\n", f.Type, f.Stream, f.Payload)
	}
	// Output:
	// client preface 4c 4f 4f 4d 01 00 00 40 00 00 00 04 00 00
	// client OPEN    01 00 00 00 00 01 00 00 00 1a 00 00 00 00 77 35 94 00 00 06 6e 73 2f 63 2f 65 04 6a 73 6f 6e 00 00 00 7b 7d
	// server preface 4c 4f 4f 4d 01 00 00 40 00 00 00 00 00 00
	// 00000000  02 00 00 00 00 01 00 00  00 04 22 68 69 22 03 00  |.........."hi"..|
	// 00000010  00 00 00 01 00 00 00 02  00 00                    |..........|
	// DATA stream 1: "\"hi\""
	// END stream 1: "\x00\x00"
}
