// Command shardctl operates a running shardproxy through its admin HTTP API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/shardproxy/shardproxy/admin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// usageError marks a mistake on the command line, which exits 2 (like
// flag parsing in most Unix tools) so scripts can tell it from a failure
// of the proxy, which exits 1.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// run is main without the process: tests call it with their own streams
// and environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	root := newRootCmd(stdout, stderr, getenv)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "shardctl: %v%s\n", err, nextStep(err))
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "Run 'shardctl --help' for usage.")
		return 2
	}
	return 1
}

// nextStep says what to do about the failures whose message does not:
// the server's own errors carry a hint already.
func nextStep(err error) string {
	var he *admin.HTTPError
	if errors.As(err, &he) && he.Hint == "" && he.StatusCode == http.StatusUnauthorized {
		return " (pass the proxy's admin token with --token or SHARDCTL_TOKEN)"
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		return " (is shardproxy running? point --admin or SHARDCTL_ADMIN at its admin listener)"
	}
	return ""
}
