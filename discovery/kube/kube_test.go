//go:build kube

package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
	"github.com/loomrt/loom/internal/kubetest"
)

var quiet = slog.New(slog.DiscardHandler)

// wait bounds every wait for an event in this package's own tests.
const wait = 10 * time.Second

var namespaces atomic.Int64

// newNamespace creates a fresh Kubernetes namespace on srv.
func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := fmt.Sprintf("loom-test-%d-%d", time.Now().UnixNano()%1e6, namespaces.Add(1))
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// startAPIServer starts a kube-apiserver of the test's own (a few seconds),
// so that no test sees another's restarts or leftovers.
func startAPIServer(t *testing.T) (*kubetest.Server, kubernetes.Interface) {
	t.Helper()
	srv := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	return srv, cs
}

// open returns a Discovery in namespace ns of srv, closed when the test
// ends.
func open(t *testing.T, srv *kubetest.Server, cfg Config) *Discovery {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	d, err := Open(ctx, srv.AdminConfig(), cfg)
	if err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// Every subtest gets a fresh Kubernetes namespace on one API server; each
// client is its own Discovery, as a separate process would have.
func TestConformance(t *testing.T) {
	srv, cs := startAPIServer(t)
	discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
		ns := newNamespace(t, cs)
		return func() discovery.Discovery {
			return open(t, srv, Config{Namespace: ns})
		}
	})
}
