// Package scenario is what the Go clients of the compatibility suite
// share: the connection settings compat/run.sh passes in the environment
// and the way a step reports success or failure.
package scenario

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Env is one client's run: where the proxy is, who to log in as, the two
// accounts (on different shards) it works on and its own teller id.
type Env struct {
	Host, Port, User, Password, DB, RootCert, Client string
	A, B, TID                                        int
}

// Load reads the COMPAT_* variables; client names the run when
// COMPAT_CLIENT is unset.
func Load(client string) Env {
	e := Env{Host: getenv("COMPAT_HOST"), Port: getenv("COMPAT_PORT"), User: getenv("COMPAT_USER"),
		Password: getenv("COMPAT_PASSWORD"), DB: getenv("COMPAT_DB"), RootCert: os.Getenv("COMPAT_SSLROOTCERT"),
		Client: os.Getenv("COMPAT_CLIENT"), A: atoi("COMPAT_AID_A"), B: atoi("COMPAT_AID_B"), TID: atoi("COMPAT_TID")}
	if e.Client == "" {
		e.Client = client
	}
	return e
}

// DSN is a libpq keyword/value connection string for the proxy.
func (e Env) DSN(sslmode string, extra ...string) string {
	s := fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=%s connect_timeout=10",
		e.Host, e.Port, e.User, e.Password, e.DB, sslmode)
	return strings.Join(append([]string{s}, extra...), " ")
}

func getenv(name string) string {
	v := os.Getenv(name)
	if v == "" {
		Failf("environment variable %s is not set (compat/run.sh sets it)", name)
	}
	return v
}

func atoi(name string) int {
	n, err := strconv.Atoi(getenv(name))
	if err != nil {
		Failf("%s: %v", name, err)
	}
	return n
}

// Failf reports a failed step and ends the client with status 1.
func Failf(format string, args ...any) {
	fmt.Printf("FAIL "+format+"\n", args...)
	os.Exit(1)
}

// OK reports a step that passed.
func OK(format string, args ...any) { fmt.Printf("ok "+format+"\n", args...) }

// Check fails the step what if err is not nil.
func Check(err error, what string) {
	if err != nil {
		Failf("%s: %v", what, err)
	}
}
