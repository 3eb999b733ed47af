package natskv

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/discovery"
)

// ownerEnv makes the test binary an owner process (see runOwner).
const ownerEnv = "NATSKV_TEST_OWNER"

// ownerSpec tells an owner process what to register.
type ownerSpec struct {
	URL    string
	Bucket string
	TTL    time.Duration
	Inst   discovery.Instance
}

// runOwner is the owner process: it registers one record, says so on
// stdout and waits to be killed.
func runOwner() int {
	var spec ownerSpec
	if err := json.Unmarshal([]byte(os.Getenv(ownerEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "owner:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	nc, err := nats.Connect(spec.URL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "owner:", err)
		return 2
	}
	d, err := New(ctx, nc, Config{Bucket: spec.Bucket, TTL: spec.TTL, Logger: quiet})
	if err == nil {
		err = d.Register(ctx, spec.Inst)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "owner:", err)
		return 2
	}
	fmt.Println("registered")
	time.Sleep(time.Minute) // the test kills the process long before
	return 3
}

// startOwner runs an owner process that registers spec.Inst, and returns a func
// that kills it with SIGKILL.
func startOwner(t *testing.T, spec ownerSpec) (kill func()) {
	t.Helper()
	env, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), ownerEnv+"="+string(env))
	stderr := &logBuffer{}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	ready := make(chan string, 1)
	go func() {
		defer close(done)
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
		_ = cmd.Wait()
	}()
	select {
	case line := <-ready:
		if strings.TrimSpace(line) != "registered" {
			t.Fatalf("owner process: %q, stderr: %s", line, stderr.String())
		}
	case <-time.After(2 * wait):
		t.Fatalf("owner process did not register within %v", 2*wait)
	}
	return func() { _ = cmd.Process.Kill() }
}
