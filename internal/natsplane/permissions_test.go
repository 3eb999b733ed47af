package natsplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/loomrt/loom/embedded"
	"github.com/loomrt/loom/internal/plane"
	"github.com/loomrt/loom/internal/testutil"
)

// startNATSWithUsers runs a nats-server whose users have the given
// permissions, by name; each user's password is its name.
func startNATSWithUsers(t *testing.T, users map[string]*server.Permissions) *embedded.NATS {
	t.Helper()
	ns := testutil.StartNATS(t, embedded.NATSOptions{Configure: func(o *server.Options) {
		for name, perms := range users {
			o.Users = append(o.Users, &server.User{Username: name, Password: name, Permissions: perms})
		}
	}})
	return ns
}

func connectAs(t *testing.T, ns *embedded.NATS, user string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, user), nats.NoReconnect(), nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestAServerThatMayNotSubscribeSaysSo: a NATS user without permission to
// subscribe to the instance's subject cannot serve; NewServer fails
// naming the subject and the permission, rather than registering an
// instance no request reaches.
func TestAServerThatMayNotSubscribeSaysSo(t *testing.T) {
	ns := startNATSWithUsers(t, map[string]*server.Permissions{
		"worker": {Subscribe: &server.SubjectPermission{Deny: []string{"loom.rpc.>"}}},
	})
	nc := connectAs(t, ns, "worker")
	_, err := NewServer(nc, "loom.rpc.abc", ServerConfig{Logger: testLogger()}, HandlerFunc(echo))
	if err == nil || !strings.Contains(err.Error(), "loom.rpc.abc") || !strings.Contains(err.Error(), "permission") {
		t.Fatalf("NewServer with subscribe denied: %v; want an error naming the subject and the permission", err)
	}
}

// TestACallerThatMayNotPublishSaysSo: a caller whose NATS user may not
// publish to the server's subject gets an error naming the subject and
// the permission, not a wait for an answer that cannot come.
func TestACallerThatMayNotPublishSaysSo(t *testing.T) {
	ns := startNATSWithUsers(t, map[string]*server.Permissions{
		"worker": nil,
		"caller": {Publish: &server.SubjectPermission{Deny: []string{"loom.rpc.>"}}},
	})
	srv := serve(t, connectAs(t, ns, "worker"), ServerConfig{}, echo)
	c := newClient(t, connectAs(t, ns, "caller"), ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Open(ctx, srv.Address(), plane.Request{Path: "p", Payload: []byte("x")})
	if err == nil {
		_, err = recvAll(st)
		st.Close()
	}
	if err == nil || !strings.Contains(err.Error(), srv.Address()) || !strings.Contains(err.Error(), "permission") {
		t.Fatalf("a call with publish denied: %v; want an error naming the subject and the permission", err)
	}
}
