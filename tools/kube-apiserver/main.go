// Command kube-apiserver is the Kubernetes API server built from its Go
// modules, for Loom's Kubernetes discovery tests and manifest dry runs. It is a
// separate module so the root module never depends on k8s.io/kubernetes.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
