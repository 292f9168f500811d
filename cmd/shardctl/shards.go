package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/admin"
)

func newShardsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "shards",
		Short: "List the shards with their state, slot count and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Get(cmd.Context(), admin.ShardsPath))
			}
			shards, err := c.Shards(cmd.Context())
			if err != nil {
				return err
			}
			return printShards(cmd.OutOrStdout(), shards)
		},
	}
}

func printShards(w io.Writer, shards []admin.ShardInfo) error {
	if len(shards) == 0 {
		_, err := fmt.Fprintln(w, "no shards")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSTATE\tSLOTS\tPRIMARY\tREPLICAS\tSOURCE")
	for _, s := range shards {
		replicas := "-"
		if len(s.Replicas) > 0 {
			replicas = strings.Join(s.Replicas, ",")
		}
		source := "shard add"
		if s.FromConfig {
			source = "config"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", s.Name, s.State, s.Slots, s.Primary, replicas, source)
	}
	return tw.Flush()
}

func newShardCmd(g *globals) *cobra.Command {
	cmd := groupCmd("shard", "Add, drain or remove a shard")
	cmd.AddCommand(newShardAddCmd(g), newShardDrainCmd(g), newShardRemoveCmd(g))
	return cmd
}

func newShardAddCmd(g *globals) *cobra.Command {
	var req admin.AddShardRequest
	cmd := &cobra.Command{
		Use:   "add --name N --primary DSN [--replica DSN]...",
		Short: "Add a shard; it owns no slots until a rebalance gives it some",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var missing []string
			if req.Name == "" {
				missing = append(missing, "--name")
			}
			if req.Primary == "" {
				missing = append(missing, "--primary")
			}
			if len(missing) > 0 {
				return usageError{fmt.Errorf("shardctl shard add: %s required", strings.Join(missing, " and "))}
			}
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Do(cmd.Context(), http.MethodPost, admin.ShardsPath, req))
			}
			sh, err := c.AddShard(cmd.Context(), req)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "shard %s added: primary %s, %s\n", sh.Name, sh.Primary, plural(len(sh.Replicas), "replica", "replicas"))
			_, err = fmt.Fprintf(w, "it owns no slots yet: review with 'shardctl rebalance plan', then run 'shardctl rebalance start'\n")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "name of the new shard")
	f.StringVar(&req.Primary, "primary", "", "DSN of the new shard's primary, as a superuser")
	f.StringArrayVar(&req.Replicas, "replica", nil, "DSN of a replica of the new shard (repeatable)")
	return cmd
}

func newShardDrainCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "drain NAME",
		Short: "Mark a shard draining: the next rebalance moves all its slots away",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Do(cmd.Context(), http.MethodPost, admin.ShardDrainPath(args[0]), nil))
			}
			sh, err := c.DrainShard(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "shard %s is %s, %s to move away\n", sh.Name, sh.State, plural(sh.Slots, "slot", "slots"))
			if sh.Slots > 0 {
				_, err = fmt.Fprintf(w, "move them with 'shardctl rebalance start', then remove it with 'shardctl shard remove %s'\n", sh.Name)
			} else {
				_, err = fmt.Fprintf(w, "remove it with 'shardctl shard remove %s'\n", sh.Name)
			}
			return err
		},
	}
}

func newShardRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a shard that owns no slots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := g.client().RemoveShard(cmd.Context(), args[0]); err != nil {
				return err
			}
			// 204 has no body; --json still prints something to parse.
			if g.json {
				raw, err := json.Marshal(map[string]string{"removed": args[0]})
				return printRaw(cmd)(raw, err)
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "shard %s removed\n", args[0])
			return err
		},
	}
}

// printRaw prints a successful answer's JSON, indented, as the server
// sent it: fields added by a newer proxy survive an older shardctl.
// Used as printRaw(cmd)(c.Get(...)).
func printRaw(cmd *cobra.Command) func(raw []byte, err error) error {
	return func(raw []byte, err error) error {
		if err != nil {
			return err
		}
		return printIndented(cmd.OutOrStdout(), raw)
	}
}
