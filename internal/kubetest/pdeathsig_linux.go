package kubetest

import (
	"os/exec"
	"syscall"
)

// dieWithParent makes the API server die with the test process, even when
// that is killed and cannot clean up.
func dieWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
