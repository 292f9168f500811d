//go:build !linux

package localcluster

import "syscall"

// Without Pdeathsig, servers outlive a launcher that dies without calling
// Stop; Setpgid still keeps terminal Ctrl-C away from them.
func serverSysProcAttr(cred *syscall.Credential, _ syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

// childPIDs is not implemented off Linux: Kill then only hits the
// postmaster, and its backends exit once they notice it is gone.
func childPIDs(int) []int { return nil }

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }
