package kube

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/loomrt/loom/discovery"
)

// The "kubernetes" backend keeps records as Leases in the namespace
// discovery.kubernetes_namespace names, with discovery.lease_ttl as their
// duration, reached with discovery.kubeconfig or the Pod's service
// account.
func init() {
	discovery.RegisterBackend("kubernetes", func(ctx context.Context, env discovery.Env) (discovery.Discovery, error) {
		c := env.Config
		rc, ns, err := RESTConfig(c.Kubeconfig, c.KubernetesNamespace)
		if err != nil {
			return nil, err
		}
		if c.DialTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.DialTimeout)
			defer cancel()
		}
		return Open(ctx, rc, Config{
			Namespace: ns,
			TTL:       c.LeaseTTL,
			PodName:   c.PodName,
			PodUID:    c.PodUID,
			Logger:    env.Logger,
		})
	})
}

// serviceAccountNamespace is where a Pod finds its namespace.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// RESTConfig returns how to reach the API server and the namespace to use.
//
// With kubeconfig set (a path, or several joined by the OS's list
// separator as in KUBECONFIG), it is read as kubectl would, its current
// context chosen. Otherwise a process in a Pod uses its service account,
// and one outside uses $KUBECONFIG or ~/.kube/config. The namespace is
// namespace if set, else the Pod's (its service account's), else the
// kubeconfig context's, else "default".
func RESTConfig(kubeconfig, namespace string) (*rest.Config, string, error) {
	if kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, "", fmt.Errorf("kube: in-cluster configuration: %w (set discovery.kubeconfig to use a kubeconfig instead)", err)
		}
		if namespace == "" {
			if b, err := os.ReadFile(serviceAccountNamespace); err == nil {
				namespace = strings.TrimSpace(string(b))
			}
		}
		if namespace == "" {
			namespace = DefaultNamespace
		}
		return rc, namespace, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.Precedence = filepath.SplitList(kubeconfig)
		rules.ExplicitPath = ""
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{})
	rc, err := cc.ClientConfig()
	if err != nil {
		where := kubeconfig
		if where == "" {
			where = "$KUBECONFIG or ~/.kube/config"
		}
		return nil, "", fmt.Errorf("kube: read the kubeconfig at %s: %w (set discovery.kubeconfig or KUBECONFIG to a kubeconfig file, or run in a Pod)", where, err)
	}
	if namespace == "" {
		if ns, _, err := cc.Namespace(); err == nil && ns != "" {
			namespace = ns
		}
	}
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return rc, namespace, nil
}
