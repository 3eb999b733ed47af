// Command kubectl is kubectl built from the Kubernetes release of
// tools/kube-apiserver, so that Loom's manifest tests dry-run with a client
// of exactly the API server's version. It is a separate module so that the
// root module never depends on k8s.io/kubectl.
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
