// Package replica tracks the health, role and lag of every node of every
// shard and picks the replica that serves a read.
//
// A Monitor probes each node on its own persistent connection with one
// short query per interval (default 250 ms). Probe results are folded into
// an immutable per-shard snapshot that is swapped atomically, so the
// executor's hot-path calls (Pick, Primary, LSNAfter) take no lock and do
// not allocate; outstanding and served counts are per-node atomics.
//
// Node indexes are per shard: 0 is the configured primary, 1.. are the
// configured replicas in order. Roles are not taken from the configuration
// but from what the probes observe (pg_is_in_recovery()), so a promoted
// replica becomes the shard's primary without a restart.
package replica
