// Package config loads and validates the shardproxy YAML configuration.
//
// Every validation error names the offending field by its YAML path
// (for example `shards[1].primary`), so an operator can fix the file
// without reading the source.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole proxy configuration.
type Config struct {
	// Listen is the client-facing address, host:port.
	Listen string `yaml:"listen"`
	// Admin configures the admin HTTP API (/metrics, /api/v1/...).
	Admin Admin `yaml:"admin"`
	// TLS configures TLS for client connections.
	TLS TLS `yaml:"tls"`
	// Users who may connect, with their passwords and auth method.
	Users []User `yaml:"users"`
	// Pool sizes and pooling mode.
	Pool Pool `yaml:"pool"`
	// MaxClientConn caps concurrent client connections (SQLSTATE 53300 beyond it).
	MaxClientConn int `yaml:"max_client_conn"`
	// Shards lists every shard with its primary and replicas.
	Shards []Shard `yaml:"shards"`
	// Sharding declares which tables are sharded and by what key.
	Sharding Sharding `yaml:"sharding"`
	// Metadata is where the proxy keeps durable state (shard map versions).
	Metadata Metadata `yaml:"metadata"`
	// Replicas configures reads from streaming replicas.
	Replicas Replicas `yaml:"replicas"`
	// Log configures the proxy's own log.
	Log Log `yaml:"log"`
	// Limits bound what one client may ask of the proxy and the servers.
	Limits Limits `yaml:"limits"`
}

// Limits protect the proxy and the servers from one client. Zero
// durations are off.
type Limits struct {
	// MaxMessageSize refuses a client message (a query, a Bind with its
	// parameters, one CopyData) longer than this many bytes with FATAL
	// 54000; default 256MB (PostgreSQL's own ceiling is 1GB).
	MaxMessageSize Size `yaml:"max_message_size"`
	// StatementTimeout and IdleInTransactionTimeout are forwarded to
	// every server connection as the servers' statement_timeout and
	// idle_in_transaction_session_timeout defaults (a client's own SET
	// still wins for its session). The servers enforce them: 57014 for a
	// statement, 25P03 and a closed connection for an idle transaction.
	StatementTimeout         Duration `yaml:"statement_timeout"`
	IdleInTransactionTimeout Duration `yaml:"idle_in_transaction_timeout"`
	// QueryTimeout is enforced by the proxy: a server that has not
	// answered a statement within it is given up on (its connection
	// closed, the client told 57014 and disconnected). It is the guard
	// against a server that stalls without closing its socket; keep it
	// above the longest statement the application runs.
	QueryTimeout Duration `yaml:"query_timeout"`
}

// Size is a byte count that reads 1048576, "64kB", "16MB" or "1GB" (powers
// of 1024, PostgreSQL's units) from YAML.
type Size int64

// UnmarshalYAML parses a byte count with an optional kB, MB or GB unit.
func (z *Size) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := ParseSize(s)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*z = v
	return nil
}

// MarshalYAML writes the size in bytes.
func (z Size) MarshalYAML() (any, error) { return int64(z), nil }

// ParseSize reads a byte count: digits with an optional kB, MB or GB.
func ParseSize(s string) (Size, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<40)/mult {
		return 0, fmt.Errorf("%q is not a size (try 1048576, \"64kB\", \"16MB\" or \"1GB\")", s)
	}
	return Size(v * mult), nil
}

// Log configures logging (log/slog on stderr). Level, the slow query
// threshold and the statement log change on reload; the format does not.
type Log struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
	// Format is text (default) or json.
	Format string `yaml:"format"`
	// SlowQuery logs, at warn, every batch of statements (up to a Sync
	// or one simple query) that takes longer, with its route; 0: off.
	SlowQuery Duration `yaml:"slow_query"`
	// Statements logs every statement with its route at debug level.
	Statements bool `yaml:"statements"`
}

// Replicas configures how reads outside transactions use replicas.
type Replicas struct {
	// MaxLag is the staleness bound: a replica further behind its
	// primary serves no reads (default 1s; per session:
	// SET shardproxy.max_replica_lag).
	MaxLag Duration `yaml:"max_lag"`
	// Fallback is what a read gets when no replica qualifies: primary
	// (default) or error.
	Fallback string `yaml:"fallback"`
}

// Metadata locates the PostgreSQL database holding the proxy's durable
// state. When DSN is empty the proxy derives one (see the proxy's docs);
// only the syntax is checked here.
type Metadata struct {
	DSN string `yaml:"dsn,omitempty"`
}

// Admin is the admin HTTP listener.
type Admin struct {
	Listen string `yaml:"listen"`
	// Token, when set, is required as "Authorization: Bearer <token>".
	Token string `yaml:"token"`
}

// TLS holds the certificate the proxy presents to clients.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Enabled reports whether TLS is configured.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// User is a client login.
type User struct {
	Name     string `yaml:"name"`
	Password string `yaml:"password"`
	// Auth is scram-sha-256 (default), md5 or trust.
	Auth string `yaml:"auth"`
	// Admin users may open the admin console (database "shardproxy").
	Admin bool `yaml:"admin"`
	// ServerUser and ServerPassword, when set, are the credentials the
	// proxy uses on the backends instead of the client's own.
	ServerUser     string `yaml:"server_user"`
	ServerPassword string `yaml:"server_password"`
	// MaxConnections caps this user's concurrent client connections
	// (53300 "too many connections for role" beyond it); 0: no cap.
	MaxConnections int `yaml:"max_connections"`
}

// Pool configures backend connection pools, one per (node, user, database).
type Pool struct {
	// Mode is transaction (default) or session.
	Mode string `yaml:"mode"`
	// Size is the maximum number of server connections per pool.
	Size int `yaml:"size"`
	// WaitTimeout bounds how long a client waits for a server connection.
	WaitTimeout Duration `yaml:"wait_timeout"`
	// ConnectTimeout bounds establishing a server connection.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// IdleTimeout closes server connections idle for longer.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// PreparedStatementCache bounds the server-side prepared statements kept per server connection.
	PreparedStatementCache int `yaml:"prepared_statement_cache"`
}

// Pool modes.
const (
	PoolTransaction = "transaction"
	PoolSession     = "session"
)

// Shard is one shard: a primary and its streaming replicas.
type Shard struct {
	Name     string   `yaml:"name"`
	Primary  string   `yaml:"primary"`
	Replicas []string `yaml:"replicas"`
	// ReplicaWeights, when set, gives each replica (same order) its share
	// of reads relative to the others (default 1 each).
	ReplicaWeights []int `yaml:"replica_weights,omitempty"`
}

// Sharding declares sharded and reference tables. Routing by key arrives
// with the router; the declarations are validated now so configs written
// today keep working.
type Sharding struct {
	Slots           int            `yaml:"slots"`
	DefaultShard    string         `yaml:"default_shard"`
	Tables          []ShardedTable `yaml:"tables"`
	ReferenceTables []string       `yaml:"reference_tables"`
}

// ShardedTable is a table split across shards by a key column.
type ShardedTable struct {
	Name string `yaml:"name"`
	Key  string `yaml:"key"`
	// Type is the key column's SQL type (default bigint): smallint,
	// integer, bigint, text, varchar, uuid or numeric (optionally
	// numeric(p,s)). Hash sharding must hash exactly as PostgreSQL
	// hashes that type, so it cannot be guessed from the values.
	Type string `yaml:"type"`
	// Method is hash (default), range or list.
	Method string `yaml:"method"`
	// Ranges (method range) map half-open key ranges to shards.
	Ranges []KeyRange `yaml:"ranges,omitempty"`
	// Lists (method list) map explicit key values to shards.
	Lists []KeyList `yaml:"lists,omitempty"`
}

// KeyRange sends keys k with From <= k < To to Shard. An empty bound is
// unbounded on that side. Bounds are strings so that numeric and text
// keys keep their exact spelling (YAML would turn 1.50 into a float).
type KeyRange struct {
	From  string `yaml:"from,omitempty"`
	To    string `yaml:"to,omitempty"`
	Shard string `yaml:"shard"`
}

// KeyList sends the listed key values to Shard.
type KeyList struct {
	Values []string `yaml:"values"`
	Shard  string   `yaml:"shard"`
}

// Key type names accepted in sharding.tables[].type, lower-case. The shard
// package maps each to PostgreSQL's hash function for that type.
var KeyTypeNames = []string{
	"smallint", "int2",
	"integer", "int", "int4",
	"bigint", "int8",
	"text",
	"varchar", "character varying",
	"uuid",
	"numeric", "decimal",
}

// ValidKeyType reports whether name is an accepted key type: one of
// KeyTypeNames, where numeric/decimal may carry (precision[, scale]) and
// varchar/character varying a (length).
func ValidKeyType(name string) bool {
	base, args, hasArgs := splitTypeMod(strings.ToLower(strings.TrimSpace(name)))
	for _, n := range KeyTypeNames {
		if base != n {
			continue
		}
		if !hasArgs {
			return true
		}
		switch base {
		case "numeric", "decimal":
			return len(args) == 1 || len(args) == 2
		case "varchar", "character varying":
			return len(args) == 1
		}
		return false
	}
	return false
}

// splitTypeMod splits "numeric(10, 2)" into "numeric" and [10 2]. It
// reports hasArgs with nil args when the modifier is malformed, so the
// caller rejects it.
func splitTypeMod(s string) (base string, args []int, hasArgs bool) {
	open := strings.IndexByte(s, '(')
	if open < 0 {
		return s, nil, false
	}
	if !strings.HasSuffix(s, ")") {
		return s, nil, true
	}
	base = strings.TrimSpace(s[:open])
	for _, part := range strings.Split(s[open+1:len(s)-1], ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return base, nil, true
		}
		args = append(args, n)
	}
	return base, args, true
}

// Duration is a time.Duration that reads "5s" or "250ms" from YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (try \"5s\" or \"250ms\")", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration as a string.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads, defaults and validates the config file at path.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes YAML, rejecting unknown fields, then defaults and validates.
func Parse(raw []byte) (*Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	// An empty document decodes to io.EOF; let it through so validation
	// names the missing fields instead.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// SetDefaults fills every unset field with its documented default.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:6432"
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = "127.0.0.1:6480"
	}
	if c.Pool.Mode == "" {
		c.Pool.Mode = PoolTransaction
	}
	if c.Pool.Size == 0 {
		c.Pool.Size = 20
	}
	if c.Pool.WaitTimeout == 0 {
		c.Pool.WaitTimeout = Duration(5 * time.Second)
	}
	if c.Pool.ConnectTimeout == 0 {
		c.Pool.ConnectTimeout = Duration(5 * time.Second)
	}
	if c.Pool.IdleTimeout == 0 {
		c.Pool.IdleTimeout = Duration(5 * time.Minute)
	}
	if c.Replicas.MaxLag == 0 {
		c.Replicas.MaxLag = Duration(time.Second)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Replicas.Fallback == "" {
		c.Replicas.Fallback = "primary"
	}
	if c.Pool.PreparedStatementCache == 0 {
		c.Pool.PreparedStatementCache = 500
	}
	if c.MaxClientConn == 0 {
		c.MaxClientConn = 1000
	}
	if c.Limits.MaxMessageSize == 0 {
		c.Limits.MaxMessageSize = 256 << 20
	}
	for i := range c.Users {
		if c.Users[i].Auth == "" {
			c.Users[i].Auth = "scram-sha-256"
		}
	}
	if c.Sharding.Slots == 0 {
		c.Sharding.Slots = 256
	}
	if c.Sharding.DefaultShard == "" && len(c.Shards) > 0 {
		c.Sharding.DefaultShard = c.Shards[0].Name
	}
	for i := range c.Sharding.Tables {
		if c.Sharding.Tables[i].Method == "" {
			c.Sharding.Tables[i].Method = "hash"
		}
		if c.Sharding.Tables[i].Type == "" {
			c.Sharding.Tables[i].Type = "bigint"
		}
	}
}

// Validate checks the config and returns every problem found, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	checkAddr := func(field, addr string) {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(field, "%q is not host:port", addr)
		}
	}
	checkAddr("listen", c.Listen)
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.Log.Level)); c.Log.Level != "" && err != nil {
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if f := c.Log.Format; f != "" && f != "text" && f != "json" {
		bad("log.format", "%q is not text or json", f)
	}
	if c.Log.SlowQuery < 0 {
		bad("log.slow_query", "must not be negative")
	}
	checkAddr("admin.listen", c.Admin.Listen)
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls", "cert_file and key_file must be set together")
	}
	for _, f := range []struct{ field, path string }{{"tls.cert_file", c.TLS.CertFile}, {"tls.key_file", c.TLS.KeyFile}} {
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				bad(f.field, "%v", err)
			}
		}
	}
	if len(c.Users) == 0 {
		bad("users", "at least one user is required")
	}
	seenUser := map[string]bool{}
	for i, u := range c.Users {
		field := fmt.Sprintf("users[%d]", i)
		if u.Name == "" {
			bad(field+".name", "is required")
		}
		if seenUser[u.Name] {
			bad(field+".name", "duplicate user %q", u.Name)
		}
		seenUser[u.Name] = true
		switch u.Auth {
		case "scram-sha-256", "md5":
			if u.Password == "" {
				bad(field+".password", "is required for auth %s", u.Auth)
			}
		case "trust":
		default:
			bad(field+".auth", "%q is not one of scram-sha-256, md5, trust", u.Auth)
		}
		if u.MaxConnections < 0 {
			bad(field+".max_connections", "must not be negative")
		}
	}
	switch c.Pool.Mode {
	case PoolTransaction, PoolSession:
	default:
		bad("pool.mode", "%q is not one of transaction, session", c.Pool.Mode)
	}
	if c.Pool.Size < 1 {
		bad("pool.size", "must be at least 1, got %d", c.Pool.Size)
	}
	if c.Pool.WaitTimeout < 0 {
		bad("pool.wait_timeout", "must not be negative")
	}
	if c.Pool.PreparedStatementCache < 1 {
		bad("pool.prepared_statement_cache", "must be at least 1")
	}
	if c.MaxClientConn < 1 {
		bad("max_client_conn", "must be at least 1, got %d", c.MaxClientConn)
	}
	// Smaller than a startup packet or a short query would lock every
	// client out; PostgreSQL refuses messages over 1GB anyway.
	if c.Limits.MaxMessageSize < 1<<10 || c.Limits.MaxMessageSize > 1<<30 {
		bad("limits.max_message_size", "must be between 1kB and 1GB, got %d bytes", c.Limits.MaxMessageSize)
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{{"limits.statement_timeout", c.Limits.StatementTimeout}, {"limits.idle_in_transaction_timeout", c.Limits.IdleInTransactionTimeout}, {"limits.query_timeout", c.Limits.QueryTimeout}} {
		if d.v < 0 {
			bad(d.field, "must not be negative")
		} else if d.v > 0 && d.v < Duration(time.Millisecond) {
			bad(d.field, "must be at least 1ms (PostgreSQL's unit), got %s", d.v.D())
		}
	}
	if len(c.Shards) == 0 {
		bad("shards", "at least one shard is required")
	}
	seenShard := map[string]bool{}
	for i, s := range c.Shards {
		field := fmt.Sprintf("shards[%d]", i)
		if s.Name == "" {
			bad(field+".name", "is required")
		}
		if seenShard[s.Name] {
			bad(field+".name", "duplicate shard %q", s.Name)
		}
		seenShard[s.Name] = true
		if s.Primary == "" {
			bad(field+".primary", "is required")
		} else if err := checkDSN(s.Primary); err != nil {
			bad(field+".primary", "%v", err)
		}
		for j, r := range s.Replicas {
			if err := checkDSN(r); err != nil {
				bad(fmt.Sprintf("%s.replicas[%d]", field, j), "%v", err)
			}
		}
		if len(s.ReplicaWeights) > 0 && len(s.ReplicaWeights) != len(s.Replicas) {
			bad(field+".replica_weights", "has %d entries for %d replicas", len(s.ReplicaWeights), len(s.Replicas))
		}
		for j, w := range s.ReplicaWeights {
			if w < 1 {
				bad(fmt.Sprintf("%s.replica_weights[%d]", field, j), "must be at least 1")
			}
		}
	}
	if c.Replicas.Fallback != "primary" && c.Replicas.Fallback != "error" {
		bad("replicas.fallback", "must be primary or error, not %q", c.Replicas.Fallback)
	}
	if c.Sharding.Slots < 1 {
		bad("sharding.slots", "must be at least 1")
	}
	if c.Sharding.DefaultShard != "" && !seenShard[c.Sharding.DefaultShard] {
		bad("sharding.default_shard", "no shard named %q", c.Sharding.DefaultShard)
	}
	// Table names are matched case-insensitively and without a "public."
	// qualifier, so duplicates are judged the same way.
	tableName := func(n string) string { return strings.TrimPrefix(strings.ToLower(n), "public.") }
	seenTable := map[string]string{}
	checkShard := func(field, name string) {
		if name == "" {
			bad(field, "is required")
		} else if !seenShard[name] {
			bad(field, "no shard named %q", name)
		}
	}
	for i, t := range c.Sharding.Tables {
		field := fmt.Sprintf("sharding.tables[%d]", i)
		if t.Name == "" {
			bad(field+".name", "is required")
		} else if prev, dup := seenTable[tableName(t.Name)]; dup {
			bad(field+".name", "table %q is already declared in %s", t.Name, prev)
		} else {
			seenTable[tableName(t.Name)] = field
		}
		if t.Key == "" {
			bad(field+".key", "is required")
		}
		if !ValidKeyType(t.Type) {
			bad(field+".type", "%q is not one of smallint, integer, bigint, text, varchar, uuid, numeric", t.Type)
		}
		switch t.Method {
		case "hash", "range", "list":
		default:
			bad(field+".method", "%q is not one of hash, range, list", t.Method)
		}
		if t.Method == "range" && len(t.Ranges) == 0 {
			bad(field+".ranges", "at least one range is required for method range")
		}
		if t.Method != "range" && len(t.Ranges) > 0 {
			bad(field+".ranges", "only allowed with method range")
		}
		for j, r := range t.Ranges {
			checkShard(fmt.Sprintf("%s.ranges[%d].shard", field, j), r.Shard)
		}
		if t.Method == "list" && len(t.Lists) == 0 {
			bad(field+".lists", "at least one list is required for method list")
		}
		if t.Method != "list" && len(t.Lists) > 0 {
			bad(field+".lists", "only allowed with method list")
		}
		for j, l := range t.Lists {
			lf := fmt.Sprintf("%s.lists[%d]", field, j)
			if len(l.Values) == 0 {
				bad(lf+".values", "at least one value is required")
			}
			checkShard(lf+".shard", l.Shard)
		}
	}
	for i, name := range c.Sharding.ReferenceTables {
		field := fmt.Sprintf("sharding.reference_tables[%d]", i)
		if name == "" {
			bad(field, "is empty")
		} else if prev, dup := seenTable[tableName(name)]; dup {
			bad(field, "table %q is already declared in %s", name, prev)
		} else {
			seenTable[tableName(name)] = field
		}
	}
	if c.Metadata.DSN != "" {
		if err := checkDSN(c.Metadata.DSN); err != nil {
			bad("metadata.dsn", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// checkDSN accepts postgres:// URLs and key=value connection strings with a host.
func checkDSN(dsn string) error {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return fmt.Errorf("bad DSN: %w", err)
		}
		if u.Host == "" {
			return fmt.Errorf("DSN %q has no host", dsn)
		}
		return nil
	}
	if !strings.Contains(dsn, "host=") {
		return fmt.Errorf("DSN %q is neither a postgres:// URL nor a key=value string with host=", dsn)
	}
	return nil
}

// User looks up a user by name.
func (c *Config) User(name string) (User, bool) {
	for _, u := range c.Users {
		if u.Name == name {
			return u, true
		}
	}
	return User{}, false
}

// Marshal renders the config as YAML (used by `shardproxy dev` to write its config file).
func (c *Config) Marshal() ([]byte, error) { return yaml.Marshal(c) }
