package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/admin"
)

const defaultAdminAddr = "127.0.0.1:6480"

// globals are the persistent flags every verb shares.
type globals struct {
	admin  string
	token  string
	json   bool
	getenv func(string) string
}

func (g *globals) client() *admin.Client {
	token := g.token
	if token == "" {
		// Read here rather than as the flag's default, which --help
		// would print for anyone looking over the operator's shoulder.
		token = g.getenv("SHARDCTL_TOKEN")
	}
	return &admin.Client{Addr: g.admin, Token: token}
}

func newRootCmd(stdout, stderr io.Writer, getenv func(string) string) *cobra.Command {
	g := &globals{getenv: getenv}
	root := &cobra.Command{
		Use:   "shardctl",
		Short: "Operate a running shardproxy through its admin API",
		// Errors are printed once, by run, as a single line; cobra would
		// otherwise add the usage text to every failure of the proxy.
		SilenceErrors: true,
		SilenceUsage:  true,
		// A custom check rather than cobra's, whose "unknown command"
		// error we could not tell apart from a failure of the proxy.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	adminDefault := getenv("SHARDCTL_ADMIN")
	if adminDefault == "" {
		adminDefault = defaultAdminAddr
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.admin, "admin", adminDefault, "admin API address, host:port or URL (env SHARDCTL_ADMIN)")
	pf.StringVar(&g.token, "token", "", "admin API bearer token (env SHARDCTL_TOKEN)")
	pf.BoolVar(&g.json, "json", false, "print the API's JSON instead of a table")

	root.AddCommand(newStatusCmd(g), newShardsCmd(g), newShardCmd(g), newRebalanceCmd(g), newReloadCmd(g))

	// Stray arguments to a verb are usage errors too.
	for _, c := range root.Commands() {
		wrapArgs(c)
	}
	return root
}

// groupCmd is a verb that only holds others (shard, rebalance): alone it
// prints its help, and an unknown sub-verb is a usage error rather than
// cobra's silent help.
func groupCmd(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}

// wrapArgs turns the argument-validation errors of a command and its
// sub-commands into usageErrors.
func wrapArgs(c *cobra.Command) {
	for _, sub := range c.Commands() {
		wrapArgs(sub)
	}
	check := c.Args
	if check == nil {
		return
	}
	c.Args = func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{fmt.Errorf("%s: %w", cmd.CommandPath(), err)}
		}
		return nil
	}
}
