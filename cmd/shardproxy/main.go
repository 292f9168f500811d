// Command shardproxy is the PostgreSQL sharding proxy.
//
//	shardproxy serve --config shardproxy.yaml
//	shardproxy dev [--dir DIR] [--shards N] [--replicas R] [--spares K]
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := rootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "shardproxy:", err)
		os.Exit(1)
	}
}

func rootCmd() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:           "shardproxy",
		Short:         "PostgreSQL sharding proxy",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			lvl := slog.LevelInfo
			if logLevel != "" {
				if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
					return fmt.Errorf("--log-level: %w", err)
				}
			}
			// Until the config is read (and for dev's own messages).
			logLevelFlag = logLevel
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "", "debug, info, warn or error (default: the config's log.level, else info)")
	root.AddCommand(serveCmd(), devCmd())
	return root
}

func serveCmd() *cobra.Command {
	var cfgPath string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy from a config file",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFromFile(cmd.Context(), cfgPath, nil)
		},
	}
	cmd.Flags().StringVarP(&cfgPath, "config", "c", "shardproxy.yaml", "config file (YAML)")
	return cmd
}
