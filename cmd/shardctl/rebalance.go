package main

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/admin"
)

func newRebalanceCmd(g *globals) *cobra.Command {
	cmd := groupCmd("rebalance", "Plan, start, follow or cancel moving slots between shards")
	cmd.AddCommand(newRebalancePlanCmd(g), newRebalanceStartCmd(g), newRebalanceStatusCmd(g), newRebalanceCancelCmd(g))
	return cmd
}

const evenUsage = "spread the slots evenly over the active shards (without it only draining shards are emptied; when none drains, it is the same as --even)"

func newRebalancePlanCmd(g *globals) *cobra.Command {
	var req admin.RebalanceRequest
	cmd := &cobra.Command{
		Use:   "plan [--even]",
		Short: "Show which slots a rebalance would move, without moving any",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Get(cmd.Context(), admin.RebalancePlanURL(req)))
			}
			plan, err := c.PlanRebalance(cmd.Context(), req)
			if err != nil {
				return err
			}
			return printPlan(cmd.OutOrStdout(), plan, req.Even)
		},
	}
	cmd.Flags().BoolVar(&req.Even, "even", false, evenUsage)
	return cmd
}

func printPlan(w io.Writer, plan admin.Plan, even bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(plan.Moves) == 0 {
		fmt.Fprintln(w, "nothing to move: every slot is already where the plan wants it")
	} else {
		fmt.Fprintln(tw, "FROM\tTO\tSLOTS\tSLOT RANGES\tROWS\tBYTES")
		var slots int
		var rows, bytes int64
		for _, m := range plan.Moves {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\n", m.From, m.To, len(m.Slots), compactSlots(m.Slots), m.Rows, humanBytes(m.Bytes))
			slots += len(m.Slots)
			rows += m.Rows
			bytes += m.Bytes
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "\n%s: %s, %d rows, %s (estimated)\n",
			plural(len(plan.Moves), "move", "moves"), plural(slots, "slot", "slots"), rows, humanBytes(bytes))
	}

	names := slices.Sorted(maps.Keys(plan.Before))
	for name := range plan.After {
		if _, ok := plan.Before[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	if len(names) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(tw, "SHARD\tBEFORE\tAFTER\tCHANGE")
		for _, name := range names {
			before, after := plan.Before[name], plan.After[name]
			change := "0"
			if after != before {
				change = fmt.Sprintf("%+d", after-before)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", name, before, after, change)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(plan.Moves) > 0 {
		start := "shardctl rebalance start"
		if even {
			start += " --even"
		}
		fmt.Fprintf(w, "\nstart it with '%s'\n", start)
	}
	return nil
}

func newRebalanceStartCmd(g *globals) *cobra.Command {
	var req admin.RebalanceRequest
	var wait bool
	cmd := &cobra.Command{
		Use:   "start [--even] [--wait]",
		Short: "Start a rebalance in the proxy (it goes on if shardctl exits)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			w := cmd.OutOrStdout()
			if g.json && !wait {
				return printRaw(cmd)(c.Do(cmd.Context(), http.MethodPost, admin.RebalancePath, req))
			}
			st, err := c.StartRebalance(cmd.Context(), req)
			if err != nil {
				return err
			}
			if !g.json {
				printStarted(w, st, wait)
			}
			if !wait {
				return nil
			}
			return watchRebalance(cmd, g, &st)
		},
	}
	cmd.Flags().BoolVar(&req.Even, "even", false, evenUsage)
	cmd.Flags().BoolVar(&wait, "wait", false, "follow its progress until it ends; exit 0 only if it is done")
	return cmd
}

func printStarted(w io.Writer, st admin.RebalanceStatus, wait bool) {
	if !running(st.State) {
		fmt.Fprintf(w, "rebalance %d: %s\n", st.ID, st.State)
		return
	}
	var slots int
	var rows, bytes int64
	for _, m := range st.Moves {
		slots += len(m.Slots)
		rows += m.Rows
		bytes += m.Bytes
	}
	fmt.Fprintf(w, "rebalance %d started: %s, %s, ~%d rows, ~%s\n",
		st.ID, plural(len(st.Moves), "move", "moves"), plural(slots, "slot", "slots"), rows, humanBytes(bytes))
	if !wait {
		fmt.Fprintln(w, "follow it with 'shardctl rebalance status --watch'; stop it with 'shardctl rebalance cancel'")
	}
}

func newRebalanceStatusCmd(g *globals) *cobra.Command {
	var watch bool
	cmd := &cobra.Command{
		Use:   "status [--watch]",
		Short: "Show the current or last rebalance, move by move",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if watch {
				return watchRebalance(cmd, g, nil)
			}
			if g.json {
				return printRaw(cmd)(c.Get(cmd.Context(), admin.RebalancePath))
			}
			st, err := c.RebalanceStatus(cmd.Context())
			if err != nil {
				return err
			}
			return printRebalance(cmd.OutOrStdout(), st, time.Now())
		},
	}
	cmd.Flags().BoolVar(&watch, "watch", false, "show live progress bars until the rebalance is no longer running (one line a second when stdout is not a terminal)")
	return cmd
}

func newRebalanceCancelCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cancel",
		Short: "Cancel the running rebalance; the move in progress rolls back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := g.client()
			if g.json {
				return printRaw(cmd)(c.Do(cmd.Context(), http.MethodPost, admin.RebalanceCancelPath, nil))
			}
			st, err := c.CancelRebalance(cmd.Context())
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "rebalance %d: %s\n", st.ID, st.State)
			if running(st.State) {
				fmt.Fprintln(w, "follow it with 'shardctl rebalance status --watch'")
			}
			return nil
		},
	}
}

// running tells whether a rebalance in state is still going.
func running(state string) bool { return state == "running" || state == "cancelling" }

// printRebalance prints a rebalance's header, its moves and the totals.
func printRebalance(w io.Writer, st admin.RebalanceStatus, now time.Time) error {
	if st.ID == 0 {
		fmt.Fprintln(w, "no rebalance has run")
		_, err := fmt.Fprintln(w, "see what one would do with 'shardctl rebalance plan'")
		return err
	}
	head := fmt.Sprintf("rebalance %d: %s", st.ID, st.State)
	if st.Phase != "" {
		head += ", phase " + st.Phase
	}
	if !st.StartedAt.IsZero() {
		head += ", started " + st.StartedAt.UTC().Format(time.RFC3339)
		if st.FinishedAt.IsZero() {
			head += fmt.Sprintf(" (%s ago)", now.Sub(st.StartedAt).Round(time.Second))
		}
	}
	if !st.FinishedAt.IsZero() {
		head += ", finished " + st.FinishedAt.UTC().Format(time.RFC3339)
		if !st.StartedAt.IsZero() {
			head += fmt.Sprintf(" (took %s)", st.FinishedAt.Sub(st.StartedAt).Round(time.Second))
		}
	}
	if running(st.State) {
		head += ", ETA " + seconds(st.ETASeconds)
	}
	fmt.Fprintln(w, head)
	if st.Resumed > 0 {
		fmt.Fprintf(w, "resumed %s after a proxy restart\n", plural(st.Resumed, "time", "times"))
	}
	if st.Error != "" {
		fmt.Fprintf(w, "error: %s\n", st.Error)
	}

	if len(st.Moves) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "#\tFROM\tTO\tSLOTS\tPHASE\tROWS\tBYTES\tLAG\tPAUSE\tVERIFIED")
		for i, m := range st.Moves {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%d/%d\t%s/%s\t%s\t%s\t%s\n", i+1, m.From, m.To, len(m.Slots), m.Phase,
				m.RowsCopied, m.RowsTotal, humanBytes(m.BytesCopied), humanBytes(m.BytesTotal),
				moveLag(m), pause(m.PauseMillis), verified(m))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		t := st.Totals
		fmt.Fprintf(w, "\ntotal: %d/%d rows (%s), %s/%s\n", t.RowsCopied, t.RowsTotal, percent(t.RowsCopied, t.RowsTotal),
			humanBytes(t.BytesCopied), humanBytes(t.BytesTotal))
		for i, m := range st.Moves {
			if m.VerifyError != "" {
				fmt.Fprintf(w, "move %d verify: %s\n", i+1, m.VerifyError)
			}
		}
	}

	if len(st.Log) > 0 {
		fmt.Fprintln(w, "\nrecent steps:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, n := range st.Log {
			move := "-"
			if n.Move >= 0 {
				move = fmt.Sprintf("move %d", n.Move+1)
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", n.At.UTC().Format(time.TimeOnly), move, n.Phase, n.Message)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// moveLag is the catch-up lag, shown while it means something.
func moveLag(m admin.MoveStatus) string {
	if m.LagBytes > 0 || m.Phase == "catchup" || m.Phase == "cutover" {
		return humanBytes(m.LagBytes)
	}
	return "-"
}

func pause(ms float64) string {
	if ms <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fms", ms)
}

func verified(m admin.MoveStatus) string {
	switch {
	case m.VerifyError != "":
		return "FAILED"
	case m.Verified:
		return "yes"
	default:
		return "no"
	}
}
