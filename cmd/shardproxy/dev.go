package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/shardproxy/shardproxy/config"
	"github.com/shardproxy/shardproxy/devcert"
	"github.com/shardproxy/shardproxy/localcluster"
)

type devFlags struct {
	dir                      string
	shards, replicas, spares int
	listen, admin            string
	poolMode                 string
}

func devCmd() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Start local PostgreSQL shards and replicas and run the proxy in front of them",
		Long: `dev starts real PostgreSQL primaries, streaming replicas and spare primaries
from the PostgreSQL binaries on this machine, writes a config for them and runs
the proxy. It prints one "node <shard> <role> <dsn>" line per server, the config
path, then "ready <url>" once the proxy accepts connections. Ctrl-C stops
everything; running it again on the same --dir reuses the data.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), f) },
	}
	cmd.Flags().StringVar(&f.dir, "dir", ".shardproxy/dev", "directory for data, logs and the generated config")
	cmd.Flags().IntVar(&f.shards, "shards", 2, "number of shards")
	cmd.Flags().IntVar(&f.replicas, "replicas", 1, "streaming replicas per shard")
	cmd.Flags().IntVar(&f.spares, "spares", 0, "spare primaries outside the shard map")
	cmd.Flags().StringVar(&f.listen, "listen", "127.0.0.1:6432", "client listen address")
	cmd.Flags().StringVar(&f.admin, "admin", "127.0.0.1:6480", "admin HTTP API listen address")
	cmd.Flags().StringVar(&f.poolMode, "pool-mode", config.PoolTransaction, "transaction or session")
	return cmd
}

func runDev(ctx context.Context, f devFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if f.shards < 1 {
		return fmt.Errorf("--shards must be at least 1")
	}
	dir, err := filepath.Abs(f.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	cl, err := localcluster.Start(ctx, localcluster.Options{
		Dir: dir, Shards: f.shards, Replicas: f.replicas, Spares: f.spares,
	})
	if err != nil {
		return err
	}
	defer cl.Stop()

	cfg := devConfig(cl, f)
	certFile, keyFile, err := writeDevCert(filepath.Join(dir, "tls"))
	if err != nil {
		return err
	}
	cfg.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("generated dev config: %w", err)
	}
	raw, err := cfg.Marshal()
	if err != nil {
		return err
	}
	cfgPath := filepath.Join(dir, "shardproxy.yaml")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		return fmt.Errorf("write dev config: %w", err)
	}
	for _, n := range cl.Nodes {
		fmt.Printf("node %s %s %s\n", n.Shard, n.Role, n.DSN("app"))
	}
	fmt.Printf("config %s\n", cfgPath)
	return run(ctx, cfg, cfgPath, nil, func(addr string) {
		fmt.Printf("ready postgres://app:app@%s/app\n", addr)
		// stdout stays machine-readable; the hint for humans goes to stderr.
		fmt.Fprintf(os.Stderr, "\nconnect with:  psql postgres://app:app@%s/app\nstop with Ctrl-C\n\n", addr)
	})
}

// devConfig shards pgbench's tables so pgbench works through the proxy
// out of the box.
func devConfig(cl *localcluster.Cluster, f devFlags) *config.Config {
	cfg := &config.Config{
		Listen: f.listen,
		Admin:  config.Admin{Listen: f.admin},
		Users: []config.User{{Name: "app", Password: "app", Auth: "scram-sha-256"},
			// The admin console (database shardproxy) only; it has no role
			// on the servers.
			{Name: "admin", Password: "admin", Auth: "scram-sha-256", Admin: true}},
		Pool: config.Pool{Mode: f.poolMode},
		Sharding: config.Sharding{
			Tables: []config.ShardedTable{
				{Name: "pgbench_accounts", Key: "aid"},
				{Name: "pgbench_history", Key: "aid"},
				{Name: "pgbench_tellers", Key: "tid"},
				{Name: "pgbench_branches", Key: "bid"},
			},
		},
	}
	for _, name := range cl.ShardNames() {
		sh := config.Shard{Name: name, Primary: cl.Primary(name).DSN("app")}
		for _, r := range cl.Replicas(name) {
			sh.Replicas = append(sh.Replicas, r.DSN("app"))
		}
		cfg.Shards = append(cfg.Shards, sh)
	}
	return cfg
}

// writeDevCert makes a self-signed certificate for 127.0.0.1/localhost so
// sslmode=require works against the dev proxy; reused across runs.
func writeDevCert(dir string) (certFile, keyFile string, err error) {
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
		return certFile, keyFile, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	certPEM, keyPEM, err := devcert.New("shardproxy dev", 5*365*24*time.Hour)
	if err != nil {
		return "", "", err
	}
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// dsnAddr shows a DSN's host:port without its credentials.
func dsnAddr(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Host != "" {
		return u.Host
	}
	return dsn
}
