package shard

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shardproxy/shardproxy/config"
)

// freshDB creates an empty database for one test, so that tests do not
// see each other's shard maps, and returns its superuser DSN.
func freshDB(t *testing.T) string {
	t.Helper()
	cluster := shared.Get(t)
	name := "store_" + strings.ToLower(strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, cluster.Primary("shard0").DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)", "CREATE DATABASE " + name} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	return cluster.Primary("shard0").DSN(name)
}

func openStore(t *testing.T, dsn string) *PGStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := OpenPGStore(ctx, dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func slotsOf(names ...string) []string {
	var s []string
	for i := range 8 {
		s = append(s, names[i*len(names)/8])
	}
	return s
}

func TestStoreLoadSave(t *testing.T) {
	dsn := freshDB(t)
	ctx := context.Background()
	st := openStore(t, dsn)
	openStore(t, dsn) // creating the schema again is a no-op

	if a, err := st.Load(ctx); err != nil || a != nil {
		t.Fatalf("Load on an empty store = %+v, %v", a, err)
	}
	v1 := slotsOf("a", "b")
	if v, err := st.Save(ctx, v1, 0); err != nil || v != 1 {
		t.Fatalf("first Save = %d, %v", v, err)
	}
	a, err := st.Load(ctx)
	if err != nil || a == nil || a.Version != 1 || !slices.Equal(a.Slots, v1) || time.Since(a.CreatedAt) > time.Minute {
		t.Fatalf("Load = %+v, %v", a, err)
	}
	// A writer that did not see version 1.
	_, err = st.Save(ctx, slotsOf("x"), 0)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, ErrConflict) || ce.Expected != 0 || ce.Current != 1 {
		t.Fatalf("stale Save = %v", err)
	}
	if !strings.Contains(err.Error(), "version 1 is the latest") {
		t.Errorf("conflict message: %v", err)
	}
	// Saving over a version from the future is a conflict too.
	if _, err := st.Save(ctx, slotsOf("x"), 5); !errors.Is(err, ErrConflict) {
		t.Fatalf("Save over version 5 = %v", err)
	}
	v2 := slotsOf("b", "a")
	if v, err := st.Save(ctx, v2, 1); err != nil || v != 2 {
		t.Fatalf("second Save = %d, %v", v, err)
	}
	if a, _ := st.Load(ctx); a.Version != 2 || !slices.Equal(a.Slots, v2) {
		t.Fatalf("Load after second Save = %+v", a)
	}
	if _, err := st.Save(ctx, nil, 2); err == nil {
		t.Error("Save of no slots: no error")
	}
}

// Racing writers: exactly one wins each version.
func TestStoreSaveRace(t *testing.T) {
	dsn := freshDB(t)
	ctx := context.Background()
	stores := []*PGStore{openStore(t, dsn), openStore(t, dsn), openStore(t, dsn)}
	const writers = 12
	var wg sync.WaitGroup
	results := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			_, results[i] = stores[i%len(stores)].Save(ctx, slotsOf(fmt.Sprint("w", i)), 0)
		})
	}
	wg.Wait()
	won := 0
	for _, err := range results {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrConflict):
			t.Errorf("losing Save: %v, want a conflict", err)
		}
	}
	if won != 1 {
		t.Errorf("%d writers won version 1", won)
	}
}

func TestStoreWatch(t *testing.T) {
	dsn := freshDB(t)
	st := openStore(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := st.Save(ctx, slotsOf("a"), 0); err != nil {
		t.Fatal(err)
	}
	versions := make(chan int64, 16)
	done := make(chan error, 1)
	go func() { done <- st.Watch(ctx, func(v int64) { versions <- v }) }()
	next := func(what string) int64 {
		t.Helper()
		select {
		case v := <-versions:
			return v
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no version from Watch", what)
		}
		return 0
	}
	if v := next("on connect"); v != 1 {
		t.Errorf("on connect: version %d, want 1", v)
	}
	start := time.Now()
	if _, err := st.Save(ctx, slotsOf("b"), 1); err != nil {
		t.Fatal(err)
	}
	if v := next("after Save"); v != 2 {
		t.Errorf("after Save: version %d, want 2", v)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("notification took %v", d)
	}

	// Kill the listening connection; Watch reconnects, reports the
	// latest version, and hears later saves.
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var killed int
	if err := admin.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
		WatchApplicationName).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d watch connections: %v", killed, err)
	}
	if v := next("after reconnect"); v != 2 {
		t.Errorf("after reconnect: version %d, want 2", v)
	}
	if _, err := st.Save(ctx, slotsOf("c"), 2); err != nil {
		t.Fatal(err)
	}
	if v := next("after reconnect and Save"); v != 3 {
		t.Errorf("after reconnect and Save: version %d, want 3", v)
	}

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}
}

func TestLoadOrInit(t *testing.T) {
	dsn := freshDB(t)
	ctx := context.Background()
	st := openStore(t, dsn)
	cfg := func(slots int, shards ...string) *Map {
		c := &config.Config{Sharding: config.Sharding{Slots: slots}}
		for _, s := range shards {
			c.Shards = append(c.Shards, config.Shard{Name: s})
		}
		m, err := FromConfig(c)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	base := cfg(16, "a", "b")
	m, err := LoadOrInit(ctx, st, base)
	if err != nil || m.Version != 1 || !slices.Equal(m.Slots, base.Slots) {
		t.Fatalf("first start: %+v, %v", m, err)
	}
	// A rebalance stored version 2; the next start routes by it.
	moved := base.Assignment()
	moved[0] = "b"
	if _, err := st.Save(ctx, moved, 1); err != nil {
		t.Fatal(err)
	}
	m, err = LoadOrInit(ctx, st, base)
	if err != nil || m.Version != 2 || m.Slots[0] != 1 {
		t.Fatalf("restart: v%d slot0=%d, %v", m.Version, m.Slots[0], err)
	}
	// A shard added to the config (owning no slots yet) is fine.
	if _, err := LoadOrInit(ctx, st, cfg(16, "a", "b", "c")); err != nil {
		t.Errorf("config with an extra shard: %v", err)
	}
	if _, err := LoadOrInit(ctx, st, cfg(32, "a", "b")); err == nil || !strings.Contains(err.Error(), "stored shard map disagrees with the config: shard map version 2 has 16 slots, the config has 32") {
		t.Errorf("slot count changed: %v", err)
	}
	if _, err := LoadOrInit(ctx, st, cfg(16, "a", "c")); err == nil || !strings.Contains(err.Error(), `assigns slot 0 to shard "b", which is not in the config's shards (a, c)`) {
		t.Errorf("shard renamed: %v", err)
	}
}
