//go:build kube

package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"github.com/loomrt/loom/discovery"
	"github.com/loomrt/loom/discovery/discoverytest"
	"github.com/loomrt/loom/discovery/kube"
	"github.com/loomrt/loom/internal/kubetest"
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
// `kubectl apply --dry-run=server -k` of each kustomize directory.
func TestEveryManifestPassesServerSideDryRun(t *testing.T) {
	srv := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	ns := newNamespace(t, cs)
	kc := srv.Kubeconfig(true, ns)
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
		kubectl(t, srv.Kubeconfig(true, ns), "apply", "-f", "rbac.yaml")
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "loom", &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token of ServiceAccount loom: %v", err)
		}
		rc := &rest.Config{Host: srv.URL(), BearerToken: tok.Status.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
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
