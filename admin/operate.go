package admin

import (
	"context"
	"time"
)

// API paths of the operator verbs (shardctl shard ..., rebalance ...).
const (
	ShardsPath          = "/api/v1/shards"           // GET list, POST add
	ShardPathPrefix     = "/api/v1/shards/"          // {name}/drain (POST), {name} (DELETE)
	RebalancePath       = "/api/v1/rebalance"        // GET status, POST start
	RebalancePlanPath   = "/api/v1/rebalance/plan"   // GET ?even=true
	RebalanceCancelPath = "/api/v1/rebalance/cancel" // POST
)

// Operator carries out the operator verbs; the proxy implements it and
// the admin server exposes it over HTTP. Errors of type *Error keep their
// HTTP status and hint; any other error is a 500.
type Operator interface {
	Shards(ctx context.Context) ([]ShardInfo, error)
	AddShard(ctx context.Context, req AddShardRequest) (ShardInfo, error)
	DrainShard(ctx context.Context, name string) (ShardInfo, error)
	RemoveShard(ctx context.Context, name string) error
	PlanRebalance(ctx context.Context, req RebalanceRequest) (Plan, error)
	StartRebalance(ctx context.Context, req RebalanceRequest) (RebalanceStatus, error)
	RebalanceStatus(ctx context.Context) (RebalanceStatus, error)
	CancelRebalance(ctx context.Context) (RebalanceStatus, error)
}

// Error is an API error with the HTTP status to answer with and a hint
// saying what to do next. The JSON body of every non-2xx answer is
// {"error": Message, "hint": Hint}.
type Error struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Hint    string `json:"hint,omitempty"`
}

func (e *Error) Error() string {
	if e.Hint != "" {
		return e.Message + " (" + e.Hint + ")"
	}
	return e.Message
}

// ShardInfo is one shard as the operator verbs see it.
type ShardInfo struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"`  // host:port, no credentials
	Replicas []string `json:"replicas"` // host:port each
	// State is "active" (may own slots), "draining" (a rebalance moves
	// its slots away and gives it none) or "added" (not yet owning any).
	State string `json:"state"`
	Slots int    `json:"slots"`
	// FromConfig is false for shards added with shard add (kept in the
	// metadata database).
	FromConfig bool `json:"from_config"`
}

// AddShardRequest is the body of POST /api/v1/shards.
type AddShardRequest struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"` // superuser DSN
	Replicas []string `json:"replicas,omitempty"`
}

// RebalanceRequest selects what a rebalance does: Even spreads the slots
// evenly over the active shards; without it only draining shards are
// emptied (and, when none drain, it behaves as Even).
type RebalanceRequest struct {
	Even bool `json:"even"`
}

// Plan is what a rebalance would do.
type Plan struct {
	Moves []PlannedMove `json:"moves"`
	// Before and After are slot counts per shard name.
	Before map[string]int `json:"before"`
	After  map[string]int `json:"after"`
}

// PlannedMove is one batch of slots moved from one shard to another.
type PlannedMove struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Slots []int  `json:"slots"`
	// Estimates from the source, rows and on-disk bytes of the moving
	// slots over every sharded table.
	Rows  int64 `json:"rows"`
	Bytes int64 `json:"bytes"`
}

// RebalanceStatus is the body of GET /api/v1/rebalance.
type RebalanceStatus struct {
	ID int64 `json:"id"` // 0: no rebalance has run
	// State: "idle", "running", "cancelling", "done", "cancelled", "failed".
	State string `json:"state"`
	// Phase of the running move: "prepare", "copy", "catchup", "verify",
	// "cutover", "cleanup", "rollback" (empty when not running).
	Phase      string        `json:"phase,omitempty"`
	StartedAt  time.Time     `json:"started_at,omitzero"`
	FinishedAt time.Time     `json:"finished_at,omitzero"`
	Error      string        `json:"error,omitempty"`
	Moves      []MoveStatus  `json:"moves"`
	Totals     MoveProgress  `json:"totals"`
	ETASeconds float64       `json:"eta_seconds,omitempty"`
	Resumed    int           `json:"resumed,omitempty"` // times resumed after a proxy restart
	Log        []JournalNote `json:"log,omitempty"`     // latest journal entries, oldest first
}

// MoveStatus is one batch of a rebalance.
type MoveStatus struct {
	PlannedMove
	// Phase: "pending", "prepare", "copy", "catchup", "verify", "cutover",
	// "cleanup", "done", "rollback", "rolled_back", "skipped".
	Phase string `json:"phase"`
	MoveProgress
	// PauseMillis is how long writes to the moving slots were held at
	// the cutover.
	PauseMillis float64 `json:"pause_ms,omitempty"`
	// Verified is set once every slot's row count and checksum matched
	// on both sides.
	Verified    bool   `json:"verified"`
	VerifyError string `json:"verify_error,omitempty"`
}

// MoveProgress counts what a move has copied so far.
type MoveProgress struct {
	RowsCopied  int64 `json:"rows_copied"`
	RowsTotal   int64 `json:"rows_total"`
	BytesCopied int64 `json:"bytes_copied"`
	BytesTotal  int64 `json:"bytes_total"`
	// LagBytes is how far the target is behind the source's WAL while
	// catching up.
	LagBytes     int64 `json:"lag_bytes"`
	RowsCleaned  int64 `json:"rows_cleaned"`
	TablesSynced int   `json:"tables_synced"`
	TablesTotal  int   `json:"tables_total"`
}

// JournalNote is one step recorded in the rebalance journal.
type JournalNote struct {
	At      time.Time `json:"at"`
	Move    int       `json:"move"` // index in Moves, -1 for the whole rebalance
	Phase   string    `json:"phase"`
	Message string    `json:"message"`
}
