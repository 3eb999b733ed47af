//go:build kube

package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
	"github.com/loomrt/loom/discovery/kube"
	"github.com/loomrt/loom/internal/kubetest"
	"github.com/loomrt/loom/internal/testutil"
)

// kubectl runs kubectl ($LOOM_KUBECTL, of the API server's release) with
// args against the kubeconfig and returns its output; it fails the test,
// with the output, if kubectl fails.
func kubectl(t *testing.T, kubeconfig string, args ...string) string {
	t.Helper()
	path, err := kubetest.Kubectl()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var namespaces atomic.Int64

func newNamespace(t *testing.T, cs kubernetes.Interface) string {
	t.Helper()
	name := fmt.Sprintf("loom-%d", namespaces.Add(1))
	if _, err := cs.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// Every manifest passes the API server's validation and admission:
// `kubectl apply --dry-run=server -k` of each kustomize directory, in a
// namespace that enforces the restricted Pod Security Standard, without a
// PodSecurity warning (the plugin warns of a workload whose Pod template
// would be refused).
func TestEveryManifestPassesServerSideDryRun(t *testing.T) {
	srv := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, cs)
	kc := srv.Kubeconfig(true, ns)
	kubectl(t, kc, "label", "namespace", ns,
		"pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest",
		"pod-security.kubernetes.io/warn=restricted", "pod-security.kubernetes.io/warn-version=latest")
	// kubectl is of the API server's own release: nothing here depends on
	// how an older client or its kustomize reads the manifests.
	var v struct {
		Client struct{ GitVersion string } `json:"clientVersion"`
		Server struct{ GitVersion string } `json:"serverVersion"`
	}
	if err := json.Unmarshal([]byte(kubectl(t, kc, "version", "-o", "json")), &v); err != nil {
		t.Fatalf("kubectl version -o json: %v", err)
	}
	t.Logf("kubectl %s, kube-apiserver %s", v.Client.GitVersion, v.Server.GitVersion)
	if v.Client.GitVersion == "" || v.Client.GitVersion != v.Server.GitVersion {
		t.Fatalf("kubectl %q against kube-apiserver %q; want the same release (set %s to what tools/kube-apiserver/build.sh kubectl prints)",
			v.Client.GitVersion, v.Server.GitVersion, kubetest.KubectlEnv)
	}
	for _, dir := range dirs {
		out := kubectl(t, kc, "apply", "--dry-run=server", "-k", dir)
		t.Logf("kubectl apply --dry-run=server -k %s:\n%s", dir, out)
		want := len(objects(t, dir))
		if got := strings.Count(out, "(server dry run)"); got != want {
			t.Errorf("kubectl dry-ran %d objects of %s; want %d", got, dir, want)
		}
		if strings.Contains(out, "PodSecurity") {
			t.Errorf("kubectl apply -k %s in a namespace enforcing the restricted Pod Security Standard warned:\n%s", dir, out)
		}
	}
}

// serviceAccount applies rbac.yaml in ns and returns a client configuration
// with the token of its ServiceAccount, which may do what the Role grants
// and nothing else.
func serviceAccount(t *testing.T, srv *kubetest.Server, cs kubernetes.Interface, ns string) *rest.Config {
	t.Helper()
	kubectl(t, srv.Kubeconfig(true, ns), "apply", "-f", "rbac.yaml")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "loom", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of ServiceAccount loom: %v", err)
	}
	return &rest.Config{Host: srv.URL(), BearerToken: tok.Status.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

// deadLease writes, as an administrator, the Lease a process that died an
// hour ago would have left for inst.
func deadLease(t *testing.T, cs kubernetes.Interface, ns string, inst discovery.Instance) {
	t.Helper()
	value, err := json.Marshal(inst)
	if err != nil {
		t.Fatal(err)
	}
	then := metav1.NewMicroTime(time.Now().Add(-time.Hour))
	l := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        kube.LeaseName(inst.Key()),
			Labels:      map[string]string{kube.LabelManagedBy: kube.ManagedBy},
			Annotations: map[string]string{kube.AnnotationKey: inst.Key(), kube.AnnotationRecord: string(value)},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("dead"), LeaseDurationSeconds: ptr.To[int32](1), RenewTime: &then},
	}
	if _, err := cs.CoordinationV1().Leases(ns).Create(t.Context(), l, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// What the conformance suite below may not reach is allowed too: renewing a
// record (update), replacing a dead owner's Lease (get, delete, create)
// and deleting the Lease of a record that expired (delete, by a watcher).
// Any of them forbidden would show in the log.
func TestTheRoleIsEnoughForRenewingReplacingAndReaping(t *testing.T) {
	srv := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, cs)
	rc := serviceAccount(t, srv, cs, ns)
	replaced := discovery.Instance{Namespace: "ns", Component: "c", Endpoint: "e", ID: 1, Transport: "tcp", Address: "10.0.0.1:1"}
	reaped := replaced
	reaped.ID = 2
	deadLease(t, cs, ns, replaced)
	deadLease(t, cs, ns, reaped)
	var logs testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	d, err := kube.Open(ctx, rc, kube.Config{Namespace: ns, TTL: time.Second, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open as ServiceAccount loom: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })

	replaced.Address = "10.0.0.9:1"
	if err := d.Register(ctx, replaced); err != nil {
		t.Fatalf("Register over a dead owner's Lease as ServiceAccount loom: %v", err)
	}
	leases := cs.CoordinationV1().Leases(ns)
	first, err := leases.Get(ctx, kube.LeaseName(replaced.Key()), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the owner to renew its Lease", func() bool {
		l, err := leases.Get(t.Context(), first.Name, metav1.GetOptions{})
		return err == nil && l.ResourceVersion != first.ResourceVersion && l.Spec.RenewTime.After(first.Spec.RenewTime.Time)
	})
	// A watch finds the other dead Lease expired long ago, and deletes it.
	wctx, wcancel := context.WithCancel(t.Context())
	defer wcancel()
	if _, err := d.Watch(wctx, discovery.Query{}); err != nil {
		t.Fatalf("Watch as ServiceAccount loom: %v", err)
	}
	testutil.EventuallyNoError(t, 10*time.Second, "the watch to delete the dead owner's Lease", func() error {
		_, err := leases.Get(t.Context(), kube.LeaseName(reaped.Key()), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (get: %v)", err)
	})
	if out := logs.String(); strings.Contains(out, "forbidden") {
		t.Fatalf("the backend was refused something as ServiceAccount loom:\n%s", out)
	}
}

// The Role in rbac.yaml is enough for the kubernetes discovery backend:
// the whole conformance suite passes with the token of the ServiceAccount
// it is bound to, in a namespace where rbac.yaml is applied.
func TestTheRoleIsEnoughForDiscovery(t *testing.T) {
	srv := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	discoverytest.Run(t, func(t *testing.T) func() discovery.Discovery {
		ns := newNamespace(t, cs)
		rc := serviceAccount(t, srv, cs, ns)
		return func() discovery.Discovery {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			d, err := kube.Open(ctx, rc, kube.Config{Namespace: ns})
			if err != nil {
				t.Fatalf("Open as ServiceAccount loom: %v", err)
			}
			t.Cleanup(func() { _ = d.Close() })
			return d
		}
	})
}
