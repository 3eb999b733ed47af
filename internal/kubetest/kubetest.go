// Package kubetest starts a real kube-apiserver on 127.0.0.1 for Loom's
// Kubernetes tests: the discovery/kube conformance run, the multi-process
// tests and the server-side dry run of the manifests in deploy/.
//
// The server is built from the Go module proxy by
// tools/kube-apiserver/build.sh (its own module, so the root module never
// depends on k8s.io/kubernetes), which caches the binary and prints its
// path; the tests read it from $LOOM_KUBE_APISERVER and fail, saying how to
// build it, when that is not set.
// It stores its data in an embedded etcd (package embedded/etcdserver),
// authenticates with static bearer tokens and authorizes with RBAC, so a
// test can check what a Role allows. No controller-manager or kubelet
// runs: nothing deletes a Lease by itself, and Pods are never scheduled.
//
// The tests that use it are behind the build tag "kube":
//
//	export LOOM_KUBE_APISERVER=$(bash tools/kube-apiserver/build.sh)
//	export LOOM_KUBECTL=$(bash tools/kube-apiserver/build.sh kubectl)
//	go test -tags kube ./discovery/kube/ ./deploy/
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/rest"

	"github.com/loomrt/loom/embedded/etcdserver"
	"github.com/loomrt/loom/internal/testutil"
)

// BinaryEnv and KubectlEnv name the variables that give the paths of the
// kube-apiserver and kubectl binaries.
const (
	BinaryEnv  = "LOOM_KUBE_APISERVER"
	KubectlEnv = "LOOM_KUBECTL"
)

// ReadyTimeout bounds the wait for a started API server to be ready.
const ReadyTimeout = 90 * time.Second

// Binary returns the path of the kube-apiserver binary, $LOOM_KUBE_APISERVER.
// Unset, it is an error saying how to build one: the tests never start a
// ten-minute build themselves (three test binaries would start it at once,
// and go test's timeout would cut it short).
func Binary() (string, error) { return fromEnv(BinaryEnv, "") }

// Kubectl returns the path of the kubectl binary, $LOOM_KUBECTL: the kubectl
// of the API server's own release, which tools/kube-apiserver/build.sh
// kubectl builds, so that no version skew between the two can decide a
// test.
func Kubectl() (string, error) { return fromEnv(KubectlEnv, " kubectl") }

func fromEnv(env, arg string) (string, error) {
	p := os.Getenv(env)
	if p == "" {
		return "", fmt.Errorf("kubetest: %s is not set. The tests built with -tags kube need it: build the binary "+
			"(from the Go module proxy; the first build takes minutes, later ones print the cached path at once) and export its path:\n"+
			"\texport %s=$(bash tools/kube-apiserver/build.sh%s)", env, env, arg)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("kubetest: %s=%s: %w (build it with: bash tools/kube-apiserver/build.sh%s)", env, p, err, arg)
	}
	return p, nil
}

// Token users. AdminToken belongs to group system:masters, which RBAC lets
// do anything; UserToken to user "loom-user" in no group, which may do only
// what a RoleBinding grants it.
const (
	AdminUser = "loom-admin"
	User      = "loom-user"
)

// Server is a running kube-apiserver.
type Server struct {
	t          *testing.T
	bin        string
	dir        string
	port       int
	args       []string
	adminToken string
	userToken  string

	etcd *etcdserver.Server

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *os.File
}

// Start starts a kube-apiserver on a free port of 127.0.0.1 with its own
// embedded etcd, waits until it is ready, and stops both when the test
// ends. It fails the test, saying why, if the binary cannot be had or the
// server does not become ready within ReadyTimeout.
func Start(t *testing.T) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdserver.Start(etcdserver.Options{Dir: filepath.Join(t.TempDir(), "etcd"), NoFsync: true})
	if err != nil {
		t.Fatalf("kubetest: start etcd: %v", err)
	}
	t.Cleanup(etcd.Close)
	s := &Server{t: t, bin: bin, dir: t.TempDir(), port: testutil.FreePort(t), adminToken: token(), userToken: token(), etcd: etcd}
	key := filepath.Join(s.dir, "sa.key")
	if err := writeKey(key); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(s.dir, "tokens.csv")
	body := fmt.Sprintf("%s,%s,%s,\"system:masters\"\n%s,%s,%s\n", s.adminToken, AdminUser, AdminUser, s.userToken, User, User)
	if err := os.WriteFile(tokens, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	s.args = []string{
		"--etcd-servers=" + etcd.ClientURL(),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The default reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(s.port),
		"--cert-dir=" + filepath.Join(s.dir, "certs"),
		"--service-account-issuer=https://127.0.0.1:" + strconv.Itoa(s.port),
		"--service-account-key-file=" + key,
		"--service-account-signing-key-file=" + key,
		"--authorization-mode=RBAC",
		"--token-auth-file=" + tokens,
		"--service-cluster-ip-range=10.96.0.0/16",
	}
	log, err := os.Create(filepath.Join(s.dir, "kube-apiserver.log"))
	if err != nil {
		t.Fatal(err)
	}
	s.log = log
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("kubetest: last lines of the kube-apiserver log:\n%s", s.logTail())
		}
		_ = log.Close()
	})
	s.Restart()
	return s
}

// Stop stops the API server (SIGTERM, then SIGKILL after 10s) and waits
// for it to exit. Its data stays in etcd; Restart starts it again.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	fmt.Fprintf(s.log, "kubetest: SIGTERM at %s\n", time.Now().Format(time.RFC3339Nano))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Restart starts the API server again on the same port and etcd, after
// stopping it if it runs, and waits until it is ready.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("kubetest: start %s: %v", s.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	start := time.Now()
	if err := s.waitReady(done); err != nil {
		s.Stop()
		s.t.Fatalf("kubetest: %v\nlast lines of its log:\n%s", err, s.logTail())
	}
	s.t.Logf("kubetest: kube-apiserver ready on %s %v after it started", s.URL(), time.Since(start).Round(time.Millisecond))
}

// RestartWithoutData stops the API server and its etcd, and starts both
// again on a new, empty etcd, as after a store lost or restored from
// nothing: every object is gone (the API server creates its own, such as
// namespace "default", again), and resource versions start over, below
// those clients saw before. The API server keeps its port, certificates
// and tokens, so clients reconnect as after a plain restart.
func (s *Server) RestartWithoutData() {
	s.t.Helper()
	s.Stop()
	old := s.etcd
	old.Close()
	etcd, err := etcdserver.Start(etcdserver.Options{Dir: filepath.Join(s.t.TempDir(), "etcd"), NoFsync: true})
	if err != nil {
		s.t.Fatalf("kubetest: start a new etcd: %v", err)
	}
	s.t.Cleanup(etcd.Close)
	s.etcd = etcd
	for i, a := range s.args {
		if strings.HasPrefix(a, "--etcd-servers=") {
			s.args[i] = "--etcd-servers=" + etcd.ClientURL()
		}
	}
	s.Restart()
}

// waitReady polls /readyz until it answers ok.
func (s *Server) waitReady(exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a test server's self-signed certificate
	}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(ReadyTimeout)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.URL()+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.adminToken)
		if resp, err := client.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("kube-apiserver exited before it was ready")
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready within %v", ReadyTimeout)
		}
	}
}

// logTail returns the last lines of the server's log.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.log.Name())
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-80):], "\n")
}

// CompactEtcd compacts the API server's etcd to its current revision, so
// that a watch from an older resource version is answered 410 Gone.
func (s *Server) CompactEtcd() {
	s.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.etcd.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	ctx, cancel := context.WithTimeout(s.t.Context(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "compact-probe")
	if err != nil {
		s.t.Fatalf("kubetest: read etcd's revision: %v", err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		s.t.Fatalf("kubetest: compact etcd: %v", err)
	}
}

// AdvanceResourceVersion moves the API server's resource version n past
// where it is, as n writes would, by writing a key of its etcd outside
// the API server's prefix: a store that has served for a while is far
// ahead of a new one.
func (s *Server) AdvanceResourceVersion(n int) {
	s.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.etcd.ClientURL()}, DialTimeout: 5 * time.Second})
	if err != nil {
		s.t.Fatal(err)
	}
	defer func() { _ = cli.Close() }()
	ctx, cancel := context.WithTimeout(s.t.Context(), 30*time.Second)
	defer cancel()
	for i := range n {
		if _, err := cli.Put(ctx, "/kubetest/padding", strconv.Itoa(i)); err != nil {
			s.t.Fatalf("kubetest: write etcd: %v", err)
		}
	}
}

// URL returns the server's https URL.
func (s *Server) URL() string { return "https://127.0.0.1:" + strconv.Itoa(s.port) }

// AdminConfig returns a client configuration of an administrator.
func (s *Server) AdminConfig() *rest.Config { return s.config(s.adminToken) }

// UserConfig returns a client configuration of User, who may do only what
// a RoleBinding grants.
func (s *Server) UserConfig() *rest.Config { return s.config(s.userToken) }

func (s *Server) config(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Timeout:         30 * time.Second,
	}
}

// Kubeconfig writes a kubeconfig file for the administrator (admin true)
// or User, with namespace as its context's namespace, and returns its
// path.
func (s *Server) Kubeconfig(admin bool, namespace string) string {
	s.t.Helper()
	tok, name := s.userToken, User
	if admin {
		tok, name = s.adminToken, AdminUser
	}
	body := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: %s
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: %s
    namespace: %s
current-context: test
`, s.URL(), name, tok, name, namespace)
	path := filepath.Join(s.t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

func token() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// writeKey writes a new RSA key for signing service account tokens.
func writeKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	block := &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}
	return os.WriteFile(path, pem.EncodeToMemory(block), 0o600)
}

// Context returns a context for one API call of a test: the test's,
// bounded by d.
func Context(t *testing.T, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), d)
}
