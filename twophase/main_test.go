package twophase

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/localcluster"
)

// cluster is one pair of shard primaries shared by every test in the
// package, because starting PostgreSQL costs seconds. Tests keep out of each
// other's way with their own proxy names and row ids. shard0 also hosts the
// metadata database.
var cluster *localcluster.Cluster

const (
	metaDB    = "shardproxy_meta"
	itemTable = "twophase_items"
	// otherDB is a second database on each shard, for transactions
	// prepared outside the database the shard DSN names.
	otherDB = "postgres"
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// Unit tests only; the integration tests skip themselves.
		os.Exit(m.Run())
	}
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shardproxy-twophase-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "twophase:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// When we are root the servers run as the postgres OS user, which
	// must be able to enter the 0700 directory MkdirTemp made.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "twophase:", err)
		return 1
	}
	cluster, err = localcluster.Start(context.Background(), localcluster.Options{Dir: dir, Shards: 2})
	if err != nil {
		// Loud failure, not a skip: CI without PostgreSQL must notice.
		fmt.Fprintln(os.Stderr, "twophase: start cluster:", err)
		return 1
	}
	code := 1
	if err := setup(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "twophase: setup:", err)
	} else {
		code = m.Run()
	}
	if err := cluster.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "twophase: stop cluster:", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// setup creates the metadata database and the item table in both databases
// of both shards.
func setup(ctx context.Context) error {
	exec := func(dsn string, sqls ...string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		for _, sql := range sqls {
			if _, err := conn.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%s: %w", sql, err)
			}
		}
		return nil
	}
	if err := exec(cluster.Primary("shard0").DSN("postgres"), "CREATE DATABASE "+metaDB); err != nil {
		return err
	}
	for _, shard := range cluster.ShardNames() {
		for _, db := range []string{localcluster.AppDatabase, otherDB} {
			if err := exec(cluster.Primary(shard).DSN(db),
				"CREATE TABLE IF NOT EXISTS "+itemTable+" (id bigint PRIMARY KEY)"); err != nil {
				return err
			}
		}
	}
	return nil
}
