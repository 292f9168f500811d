package main

import (
	"fmt"
	"net/http"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/admin"
)

func newReloadCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reload",
		Short: "Make the proxy re-read its config file (like SIGHUP)",
		Long: `reload makes the proxy re-read and validate its config file, then apply
users, pool sizes and timeouts, max_client_conn, replica lag bound, fallback
and weights, and the admin token, without dropping connected clients. An
invalid file, or one that changes a setting only a restart applies (listen
addresses, shards, sharding, TLS, metadata, pool mode), is refused with the
fields named, and the running config stays.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Do(cmd.Context(), http.MethodPost, admin.ReloadPath, nil))
			}
			res, err := c.Reload(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if len(res.Changes) == 0 {
				_, err = fmt.Fprintln(w, "config reloaded: no change")
				return err
			}
			fmt.Fprintln(w, "config reloaded:")
			for _, ch := range res.Changes {
				if _, err := fmt.Fprintf(w, "  %s\n", ch); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
