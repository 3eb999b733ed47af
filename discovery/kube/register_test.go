package kube

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kubeconfig writes a kubeconfig whose current context points at server,
// in namespace ns ("" for none), and returns its path.
func kubeconfig(t *testing.T, server, ns string) string {
	t.Helper()
	body := `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: ` + server + `
users:
- name: u
  user:
    token: secret
contexts:
- name: x
  context:
    cluster: c
    user: u
    namespace: "` + ns + `"
current-context: x
`
	p := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// RESTConfig reads a kubeconfig, or several, as kubectl does, and picks the
// namespace: the one asked for, else the context's, else "default".
func TestRESTConfigReadsTheKubeconfigAsKubectlDoes(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // outside a Pod
	withNS := kubeconfig(t, "https://10.1.2.3:6443", "team")
	withoutNS := kubeconfig(t, "https://10.9.9.9:6443", "")
	for _, tc := range []struct {
		name, kubeconfig, namespace string
		wantHost, wantNS            string
	}{
		{"the context's namespace", withNS, "", "https://10.1.2.3:6443", "team"},
		{"the namespace asked for wins", withNS, "other", "https://10.1.2.3:6443", "other"},
		{"no namespace anywhere is default", withoutNS, "", "https://10.9.9.9:6443", DefaultNamespace},
		{"of several files the first sets the context", withoutNS + string(os.PathListSeparator) + withNS, "", "https://10.9.9.9:6443", DefaultNamespace},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, ns, err := RESTConfig(tc.kubeconfig, tc.namespace)
			if err != nil {
				t.Fatal(err)
			}
			if rc.Host != tc.wantHost || ns != tc.wantNS || rc.BearerToken != "secret" {
				t.Fatalf("RESTConfig = host %q namespace %q token %q; want %q, %q, the kubeconfig's", rc.Host, ns, rc.BearerToken, tc.wantHost, tc.wantNS)
			}
		})
	}
	t.Run("a missing file is an error naming it and what to set", func(t *testing.T) {
		missing := filepath.Join(t.TempDir(), "nope")
		_, _, err := RESTConfig(missing, "")
		if err == nil {
			t.Fatal("RESTConfig of a missing kubeconfig succeeded")
		}
		for _, want := range []string{missing, "discovery.kubeconfig"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("RESTConfig = %v; want it to say %q", err, want)
			}
		}
	})
}
