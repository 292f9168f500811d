package localcluster

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// serverSysProcAttr: own process group, so a terminal Ctrl-C reaches only
// the launcher, which then stops servers in order instead of them dying
// underneath it; and a parent-death signal, so that if the launcher dies
// (test binary killed, dev command crashes) the kernel still shuts the
// server down and no orphan holds the port or data directory.
func serverSysProcAttr(cred *syscall.Credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSig, Credential: cred}
}

// childPIDs lists the live children of pid. Postmaster children call
// setsid(), so signalling the postmaster's process group does not reach
// them; to crash a node completely we have to find them by parent PID.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// "pid (comm) state ppid ...": comm may contain spaces and parens.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 || fields[0] == "Z" {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie: a killed backend
// reparented to init may linger as a zombie, which holds no resources.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] != "Z"
}
