package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/admin"
)

func newStatusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the proxy's version, clients, shards and pools",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if g.json {
				// The server's own bytes, re-indented: fields added by a
				// newer proxy survive an older shardctl.
				raw, err := c.Get(cmd.Context(), admin.StatusPath)
				if err != nil {
					return err
				}
				return printIndented(cmd.OutOrStdout(), raw)
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			return printStatus(cmd.OutOrStdout(), st)
		},
	}
}

func printIndented(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("admin API returned invalid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := buf.WriteTo(w)
	return err
}

func printStatus(w io.Writer, st admin.Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	uptime := time.Duration(st.UptimeSeconds * float64(time.Second)).Round(time.Second)
	fmt.Fprintf(tw, "version:\t%s\n", st.Version)
	if st.StartedAt.IsZero() {
		fmt.Fprintf(tw, "uptime:\t%s\n", uptime)
	} else {
		fmt.Fprintf(tw, "uptime:\t%s (since %s)\n", uptime, st.StartedAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "listen:\t%s\n", st.Listen)
	fmt.Fprintf(tw, "pool mode:\t%s\n", st.PoolMode)
	fmt.Fprintf(tw, "clients:\t%d\n", st.ClientConnections)
	// Flush between sections: each table aligns its own columns.
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w)
	if len(st.Shards) == 0 {
		fmt.Fprintln(w, "no shards")
	} else {
		fmt.Fprintln(tw, "SHARD\tROLE\tADDR\tHEALTH")
		for _, s := range st.Shards {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, "primary", s.Primary.Addr, health(s.Primary.Healthy))
			for _, r := range s.Replicas {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, "replica", r.Addr, health(r.Healthy))
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w)
	if len(st.Pools) == 0 {
		fmt.Fprintln(w, "no pools open")
		return nil
	}
	fmt.Fprintln(tw, "SHARD\tNODE\tROLE\tUSER\tDATABASE\tIDLE\tACTIVE\tWAITING\tMAX")
	for _, p := range st.Pools {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\n",
			p.Shard, p.Node, p.Role, p.User, p.Database, p.Idle, p.Active, p.Waiting, p.MaxSize)
	}
	return tw.Flush()
}

func health(ok bool) string {
	if ok {
		return "healthy"
	}
	return "DOWN"
}
