// Package localcluster runs real PostgreSQL primaries and streaming replicas
// on loopback, for `shardproxy dev`, integration tests and benchmarks.
//
// Every server is a direct child process (not daemonized through pg_ctl), so
// the launching process owns its PID, can stop it deterministically, and the
// kernel stops it (parent-death signal) if the launcher dies. Data lives
// under Options.Dir and is reused by the next Start on the same Dir.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Node roles.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
	// RoleSpare is a primary that is not in the shard map (a target for
	// `shardctl shard add`).
	RoleSpare = "spare"
	// RoleFormerPrimary marks a shard's old primary after one of its replicas
	// was promoted with (*Node).Promote. It is not re-attached as a replica.
	RoleFormerPrimary = "former-primary"
)

// App credentials created on every primary, as documented for `shardproxy dev`.
const (
	AppUser     = "app"
	AppPassword = "app"
	AppDatabase = "app"
)

const (
	defaultStartTimeout   = 90 * time.Second
	defaultReplicaTimeout = 60 * time.Second
	stopTimeout           = 10 * time.Second
	maxPortAttempts       = 5
	confFileName          = "shardproxy.conf"
	loopback              = "127.0.0.1"
)

// Options configures Start.
type Options struct {
	Dir      string // base directory (required); created if missing
	Shards   int    // number of shard primaries (default 1 if 0)
	Replicas int    // streaming replicas per shard primary
	Spares   int    // extra primaries not in the shard map
	BinDir   string // optional PostgreSQL bin dir; see FindBinDir
	Logger   *slog.Logger
	// ExtraConf holds extra postgresql.conf settings for every node. They are
	// rewritten on every start, so changing them takes effect on reuse.
	// "port" cannot be set here: ports are chosen per run.
	ExtraConf map[string]string
	// StartTimeout bounds the whole of Start (default 90s).
	StartTimeout time.Duration
	// ReplicaTimeout bounds how long Start waits for each replica to reach
	// the "streaming" state (default 60s, capped by StartTimeout).
	ReplicaTimeout time.Duration
}

// Node is one PostgreSQL server.
type Node struct {
	Name  string // data directory name: "shard0-primary", "shard0-replica1", "spare0"
	Shard string // "shard0", "spare0", ...
	// Role is RolePrimary, RoleReplica, RoleSpare or RoleFormerPrimary.
	// Promote changes it; do not read it concurrently with Promote.
	Role    string
	Host    string // "127.0.0.1"
	Port    int
	DataDir string
	// LogFile receives the server's stderr and the output of initdb and
	// pg_basebackup. It sits next to DataDir rather than inside it, because
	// pg_basebackup would otherwise copy the primary's log into each replica.
	LogFile string

	c        *Cluster
	upstream *Node // the primary a replica follows; guarded by c.mu

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed once cmd has been reaped
	exitErr error
	logOff  int64 // LogFile size when the current process was launched
}

// Cluster is a set of nodes started by Start.
type Cluster struct {
	Nodes  []*Node
	BinDir string
	Dir    string

	opts Options
	log  *slog.Logger
	su   *serverUser

	mu    sync.Mutex // guards ports, Node.Role, Node.upstream and the state file
	ports map[int]bool
}

// DSN is a superuser DSN for database db.
func (n *Node) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", n.Addr(), url.PathEscape(db))
}

// AppDSN is a DSN for the app role (SCRAM-SHA-256 password auth) and database db.
func (n *Node) AppDSN(db string) string {
	return fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", AppUser, AppPassword, n.Addr(), url.PathEscape(db))
}

// Addr is host:port.
func (n *Node) Addr() string { return net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) }

// PID is the postmaster's PID, or 0 when the node is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.runningLocked() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Running reports whether the postmaster process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.runningLocked()
}

func (n *Node) runningLocked() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

func (n *Node) hasData() bool {
	_, err := os.Stat(filepath.Join(n.DataDir, "PG_VERSION"))
	return err == nil
}

// Start creates (or reuses) and starts the cluster described by opts. It
// returns once every primary accepts connections and has the app role and
// database, and every replica streams from its primary. On error it stops
// whatever it started.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Dir == "" {
		return nil, errors.New("localcluster: Options.Dir is required")
	}
	if opts.Shards < 0 || opts.Replicas < 0 || opts.Spares < 0 {
		return nil, fmt.Errorf("localcluster: negative node count (shards=%d replicas=%d spares=%d)",
			opts.Shards, opts.Replicas, opts.Spares)
	}
	if opts.Shards == 0 {
		opts.Shards = 1
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	if opts.ReplicaTimeout <= 0 {
		opts.ReplicaTimeout = defaultReplicaTimeout
	}
	if _, ok := opts.ExtraConf["port"]; ok {
		return nil, errors.New("localcluster: ExtraConf cannot set port: ports are chosen per run")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	binDir, err := FindBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	tools := []string{"postgres", "initdb"}
	if opts.Replicas > 0 {
		tools = append(tools, "pg_basebackup")
	}
	for _, t := range tools {
		if !isExecutable(filepath.Join(binDir, t)) {
			return nil, fmt.Errorf("localcluster: %s not found in PostgreSQL bin dir %s", t, binDir)
		}
	}

	su, err := lookupServerUser()
	if err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("localcluster: %w", err)
	}
	created, err := mkdirAllTracked(dir)
	if err != nil {
		return nil, fmt.Errorf("localcluster: create %s: %w", dir, err)
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	if err := su.ensureTraversable(dir, created); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	st, err := loadState(dir)
	if err != nil {
		// The state only holds preferences (ports, promoted roles); losing
		// it is no reason to refuse to start.
		log.Warn("localcluster: ignoring unreadable state file", "err", err)
	}

	c := &Cluster{BinDir: binDir, Dir: dir, opts: opts, log: log, su: su, ports: map[int]bool{}}
	c.buildNodes(st)

	defer func() {
		if err != nil {
			if stopErr := c.Stop(); stopErr != nil {
				err = errors.Join(err, stopErr)
			}
		}
	}()

	// Primaries and spares first, in parallel: replicas are base-backed-up
	// from their primary, which must be up and have the app database.
	var first, replicas []*Node
	for _, n := range c.Nodes {
		if n.Role == RoleReplica {
			replicas = append(replicas, n)
		} else {
			first = append(first, n)
		}
	}
	if err := parallel(first, func(n *Node) error { return c.bringUp(ctx, n) }); err != nil {
		return nil, err
	}
	if err := parallel(replicas, func(n *Node) error { return c.bringUp(ctx, n) }); err != nil {
		return nil, err
	}
	if err := c.saveState(); err != nil {
		return nil, fmt.Errorf("localcluster: write %s: %w", filepath.Join(dir, stateFileName), err)
	}
	return c, nil
}

// buildNodes lays out the nodes from opts, then applies roles remembered from
// an earlier run (a promoted replica stays primary) for nodes whose data
// still exists.
func (c *Cluster) buildNodes(st clusterState) {
	add := func(name, shard, role string) {
		n := &Node{
			Name: name, Shard: shard, Role: role, Host: loopback,
			DataDir: filepath.Join(c.Dir, name),
			LogFile: filepath.Join(c.Dir, name+".log"),
			c:       c,
		}
		if s, ok := st.Nodes[name]; ok && n.hasData() {
			n.Port = s.Port // only a preference; checked for availability at start
			if role != RoleSpare && (s.Role == RolePrimary || s.Role == RoleReplica || s.Role == RoleFormerPrimary) {
				n.Role = s.Role
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	for s := 0; s < c.opts.Shards; s++ {
		shard := fmt.Sprintf("shard%d", s)
		add(shard+"-primary", shard, RolePrimary)
		for r := 1; r <= c.opts.Replicas; r++ {
			add(fmt.Sprintf("%s-replica%d", shard, r), shard, RoleReplica)
		}
	}
	for s := 0; s < c.opts.Spares; s++ {
		name := fmt.Sprintf("spare%d", s)
		add(name, name, RoleSpare)
	}
	for _, shard := range c.ShardNames() {
		if c.primaryLocked(shard) == nil {
			// Remembered roles no longer add up (e.g. the promoted
			// replica's data was deleted): fall back to the layout.
			for _, n := range c.Nodes {
				if n.Shard == shard {
					n.Role = RoleReplica
					if strings.HasSuffix(n.Name, "-primary") {
						n.Role = RolePrimary
					}
				}
			}
		}
		p := c.primaryLocked(shard)
		for _, n := range c.Nodes {
			if n.Shard == shard && n.Role == RoleReplica {
				n.upstream = p
			}
		}
	}
}

// bringUp creates the node's data directory if needed, starts it and waits
// until it is usable.
func (c *Cluster) bringUp(ctx context.Context, n *Node) error {
	if !n.hasData() {
		var err error
		if n.Role == RoleReplica {
			err = c.baseBackup(ctx, n)
		} else {
			err = c.initDB(ctx, n)
		}
		if err != nil {
			return err
		}
	}
	if err := c.writeConf(n); err != nil {
		return err
	}
	if err := c.startOnFreePort(ctx, n); err != nil {
		return err
	}
	if n.Role == RoleReplica {
		wctx, cancel := context.WithTimeout(ctx, c.opts.ReplicaTimeout)
		defer cancel()
		return n.WaitStreaming(wctx)
	}
	return n.ensureAppDB(ctx)
}

// initDB creates a fresh primary data directory. It works in a temporary
// directory and renames it into place only when complete, so an interrupted
// run never leaves a half-initialized directory that the next run would
// mistake for reusable data.
func (c *Cluster) initDB(ctx context.Context, n *Node) error {
	tmp, err := c.prepareTmpDir(n)
	if err != nil {
		return err
	}
	if err := c.runTool(ctx, n, "initdb", "-D", tmp,
		"--locale=C.UTF-8", "--encoding=UTF8", "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256"); err != nil {
		return err
	}
	hba := "# Written by shardproxy localcluster. Superuser and replication are trusted on\n" +
		"# loopback so tools and tests need no password; everyone else uses SCRAM.\n" +
		"host all         postgres 127.0.0.1/32 trust\n" +
		"host all         postgres ::1/128      trust\n" +
		"host replication postgres 127.0.0.1/32 trust\n" +
		"host replication postgres ::1/128      trust\n" +
		"host all         all      127.0.0.1/32 scram-sha-256\n" +
		"host all         all      ::1/128      scram-sha-256\n"
	if err := c.writeNodeFile(filepath.Join(tmp, "pg_hba.conf"), hba); err != nil {
		return fmt.Errorf("localcluster: %s: %w", n.Name, err)
	}
	return c.commitTmpDir(n, tmp)
}

// baseBackup clones a replica from its primary; -R writes standby.signal so
// it starts as a streaming standby.
func (c *Cluster) baseBackup(ctx context.Context, n *Node) error {
	c.mu.Lock()
	up := n.upstream
	c.mu.Unlock()
	if up == nil || !up.Running() {
		return fmt.Errorf("localcluster: %s: cannot base-backup: primary of %s is not running", n.Name, n.Shard)
	}
	tmp, err := c.prepareTmpDir(n)
	if err != nil {
		return err
	}
	if err := c.runTool(ctx, n, "pg_basebackup", "-h", up.Host, "-p", strconv.Itoa(up.Port),
		"-U", "postgres", "-D", tmp, "-R", "-X", "stream", "--checkpoint=fast"); err != nil {
		return err
	}
	return c.commitTmpDir(n, tmp)
}

func (c *Cluster) prepareTmpDir(n *Node) (string, error) {
	tmp := filepath.Join(c.Dir, "."+n.Name+".init")
	if err := os.RemoveAll(tmp); err != nil {
		return "", fmt.Errorf("localcluster: %s: remove leftover %s: %w", n.Name, tmp, err)
	}
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return "", fmt.Errorf("localcluster: %s: %w", n.Name, err)
	}
	if err := c.su.chown(tmp); err != nil {
		return "", err
	}
	return tmp, nil
}

func (c *Cluster) commitTmpDir(n *Node, tmp string) error {
	if err := os.Rename(tmp, n.DataDir); err != nil {
		return fmt.Errorf("localcluster: %s: move new data directory into place "+
			"(if %s exists without PG_VERSION, remove it): %w", n.Name, n.DataDir, err)
	}
	return nil
}

// writeConf (re)writes our settings into shardproxy.conf, included from
// postgresql.conf. A separate file lets ExtraConf changes apply on reuse
// without editing postgresql.conf each time; port and primary_conninfo go
// on the command line instead, because they change on every run.
func (c *Cluster) writeConf(n *Node) error {
	settings := map[string]string{
		"listen_addresses":          loopback,
		"unix_socket_directories":   "", // TCP only: socket paths under deep test dirs exceed 107 bytes
		"wal_level":                 "logical",
		"max_wal_senders":           "20",
		"max_replication_slots":     "20",
		"max_prepared_transactions": "100",
		"max_connections":           "200",
		"hot_standby_feedback":      "on",
		"wal_keep_size":             "256MB",
		"shared_buffers":            "128MB",
		"logging_collector":         "off", // stderr goes to LogFile, which we own
		"password_encryption":       "scram-sha-256",
		// The logical replication launcher starts a new subscription's
		// worker at most this often (default 5s): every slot move
		// creates one. Also how soon a replica retries its primary.
		"wal_retrieve_retry_interval": "500ms",
	}
	for k, v := range c.opts.ExtraConf {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Rewritten by shardproxy localcluster on every start; edits are lost.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(settings[k]))
	}
	if err := c.writeNodeFile(filepath.Join(n.DataDir, confFileName), b.String()); err != nil {
		return fmt.Errorf("localcluster: %s: %w", n.Name, err)
	}

	main := filepath.Join(n.DataDir, "postgresql.conf")
	cur, err := os.ReadFile(main)
	if err != nil {
		return fmt.Errorf("localcluster: %s: %w", n.Name, err)
	}
	include := "include_if_exists = '" + confFileName + "'"
	if strings.Contains(string(cur), include) {
		return nil
	}
	f, err := os.OpenFile(main, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("localcluster: %s: %w", n.Name, err)
	}
	_, err = fmt.Fprintf(f, "\n# Added by shardproxy localcluster; must stay last so it overrides the above.\n%s\n", include)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("localcluster: %s: append to %s: %w", n.Name, main, err)
	}
	return nil
}

func quoteConf(v string) string {
	v = strings.ReplaceAll(v, `\`, `\\`)
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// writeNodeFile writes a file inside a data directory; postgres must own it
// to read it when we are root, hence the chown.
func (c *Cluster) writeNodeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return err
	}
	return c.su.chown(path)
}

// runTool runs initdb or pg_basebackup as the server user, logging to the
// node's log file.
func (c *Cluster) runTool(ctx context.Context, n *Node, tool string, args ...string) error {
	lf, off, err := n.openLog("running " + tool + " " + strings.Join(args, " "))
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, tool), args...)
	cmd.Dir = c.Dir // our cwd may be unreadable to the postgres user
	cmd.Env = c.su.env()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = serverSysProcAttr(c.su.cred, syscall.SIGTERM)
	// Kill the whole group: pg_basebackup forks a WAL streamer and initdb
	// runs postgres in bootstrap mode.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("localcluster: %s: %s failed: %w%s", n.Name, tool, err, logTail(n.LogFile, off))
	}
	return nil
}

// openLog opens the node's log for appending and writes a marker line, so a
// log that accumulates over many runs can still be read run by run. It
// returns the offset after the marker, from where failures are reported.
func (n *Node) openLog(what string) (*os.File, int64, error) {
	f, err := os.OpenFile(n.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("localcluster: %s: open log: %w", n.Name, err)
	}
	fmt.Fprintf(f, "--- localcluster %s: %s\n", time.Now().Format(time.RFC3339), what)
	off, err := f.Seek(0, 2)
	if err != nil {
		off = 0
	}
	return f, off, nil
}

// logTail returns the last lines written to path since offset off, formatted
// to be appended to an error.
func logTail(path string, off int64) string {
	const maxBytes, maxLines = 8192, 25
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	if st.Size()-off > maxBytes {
		off = st.Size() - maxBytes
	}
	buf := make([]byte, st.Size()-off)
	nr, _ := f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimRight(string(buf[:nr]), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	text := strings.Join(lines, "\n")
	if strings.TrimSpace(text) == "" {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", path, text)
}

var (
	errPortInUse = errors.New("port already in use")
	errShmInUse  = errors.New("previous server's shared memory still in use")
)

// startOnFreePort starts a node on its remembered port if free, else on a
// new one, retrying with another port when postgres loses the race for it.
func (c *Cluster) startOnFreePort(ctx context.Context, n *Node) error {
	var err error
	preferred := n.Port
	for attempt := 0; attempt < maxPortAttempts; attempt++ {
		var port int
		port, err = c.pickPort(preferred)
		if err != nil {
			return fmt.Errorf("localcluster: %s: %w", n.Name, err)
		}
		preferred = 0
		if err = n.launch(ctx, port); !errors.Is(err, errPortInUse) {
			return err
		}
		c.log.Warn("localcluster: port taken, retrying on another", "node", n.Name, "port", port)
	}
	return err
}

func (c *Cluster) pickPort(preferred int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if preferred > 0 && !c.ports[preferred] {
		if l, err := net.Listen("tcp", net.JoinHostPort(loopback, strconv.Itoa(preferred))); err == nil {
			l.Close()
			c.ports[preferred] = true
			return preferred, nil
		}
	}
	for range 50 {
		l, err := net.Listen("tcp", loopback+":0")
		if err != nil {
			return 0, fmt.Errorf("find free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		// Reserved ports stop two nodes starting in parallel from being
		// handed the same just-released port.
		if !c.ports[port] {
			c.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("find free port: no unreserved port after 50 tries")
}

// launch runs postgres on port and waits until it accepts connections. On
// failure the process is stopped and the error carries the log tail.
func (n *Node) launch(ctx context.Context, port int) error {
	c := n.c
	n.mu.Lock()
	if n.runningLocked() {
		n.mu.Unlock()
		return fmt.Errorf("localcluster: %s: already running (pid %d)", n.Name, n.cmd.Process.Pid)
	}
	n.mu.Unlock()
	waitOldPostmaster(ctx, n.DataDir)
	n.mu.Lock()
	lf, off, err := n.openLog(fmt.Sprintf("starting postgres on port %d", port))
	if err != nil {
		n.mu.Unlock()
		return err
	}
	args := []string{"-D", n.DataDir, "-p", strconv.Itoa(port)}
	c.mu.Lock()
	if n.Role == RoleReplica && n.upstream != nil {
		// Overrides the stale port that pg_basebackup -R wrote into
		// postgresql.auto.conf: command-line settings take precedence.
		args = append(args, "-c", fmt.Sprintf("primary_conninfo=host=%s port=%d user=postgres application_name=%s",
			n.upstream.Host, n.upstream.Port, n.Name))
	}
	c.mu.Unlock()
	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), args...)
	cmd.Dir = c.Dir
	cmd.Env = c.su.env()
	cmd.Stdout, cmd.Stderr = lf, lf
	// SIGINT on parent death is a fast shutdown: clean, but quick.
	cmd.SysProcAttr = serverSysProcAttr(c.su.cred, syscall.SIGINT)
	err = cmd.Start()
	lf.Close() // the child has its own descriptor
	if err != nil {
		n.mu.Unlock()
		return fmt.Errorf("localcluster: %s: start postgres: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.exitErr, n.logOff, n.Port = cmd, done, nil, off, port
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
		close(done)
	}()

	err = n.waitReady(ctx, done)
	if err == nil {
		c.log.Info("localcluster: node started", "node", n.Name, "role", n.Role, "port", port, "pid", cmd.Process.Pid)
		return nil
	}
	select {
	case <-done:
	default:
		_ = n.Stop()
	}
	tail := logTail(n.LogFile, off)
	switch {
	case strings.Contains(tail, "could not bind") || strings.Contains(tail, "could not create any TCP/IP sockets"):
		err = fmt.Errorf("%w: %w", errPortInUse, err)
	case strings.Contains(tail, "pre-existing shared memory block"):
		err = fmt.Errorf("%w: %w", errShmInUse, err)
	}
	return fmt.Errorf("localcluster: %s: postgres on port %d: %w%s", n.Name, port, err, tail)
}

func (n *Node) waitReady(ctx context.Context, done <-chan struct{}) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var lastErr error
	for {
		select {
		case <-done:
			n.mu.Lock()
			err := n.exitErr
			n.mu.Unlock()
			return fmt.Errorf("exited during startup: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("not accepting connections (last error: %v): %w", lastErr, ctx.Err())
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, n.DSN("postgres"))
		if err == nil {
			err = conn.Close(cctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
	}
}

// ensureAppDB creates role app and database app, owned by app, on a
// writable node. Idempotent, so it runs on every start.
func (n *Node) ensureAppDB(ctx context.Context) error {
	wrap := func(step string, err error) error {
		return fmt.Errorf("localcluster: %s: %s: %w", n.Name, step, err)
	}
	conn, err := pgx.Connect(ctx, n.DSN("postgres"))
	if err != nil {
		return wrap("connect", err)
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return wrap("check recovery", err)
	}
	if inRecovery {
		return nil // read-only; it inherits the role and database from its primary
	}
	// Set explicitly so a different server default cannot store an MD5 hash.
	if _, err := conn.Exec(ctx, "SET password_encryption = 'scram-sha-256'"); err != nil {
		return wrap("set password_encryption", err)
	}
	if _, err := conn.Exec(ctx, `DO $$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN
			CREATE ROLE app LOGIN PASSWORD 'app';
		END IF; END $$`); err != nil {
		return wrap("create role app", err)
	}
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = 'app')").Scan(&exists); err != nil {
		return wrap("check database app", err)
	}
	if !exists {
		// CREATE DATABASE cannot run inside a DO block, hence the check.
		if _, err := conn.Exec(ctx, "CREATE DATABASE app OWNER app"); err != nil {
			return wrap("create database app", err)
		}
	}
	appConn, err := pgx.Connect(ctx, n.DSN(AppDatabase))
	if err != nil {
		return wrap("connect to database app", err)
	}
	defer appConn.Close(context.Background())
	// PG15 no longer lets everyone create in public; owning it lets app do
	// everything a developer expects.
	if _, err := appConn.Exec(ctx, "ALTER SCHEMA public OWNER TO app"); err != nil {
		return wrap("alter schema public owner", err)
	}
	return nil
}

// WaitStreaming waits until a replica's WAL receiver is streaming from its
// primary.
func (n *Node) WaitStreaming(ctx context.Context) error {
	var status string
	var lastErr error
	for {
		if !n.Running() {
			return fmt.Errorf("localcluster: %s: exited while waiting for streaming%s", n.Name, n.tail())
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, n.DSN("postgres"))
		if err == nil {
			status = ""
			err = conn.QueryRow(cctx, "SELECT status FROM pg_stat_wal_receiver").Scan(&status)
			if errors.Is(err, pgx.ErrNoRows) {
				err = nil // receiver not (yet) running
			}
			conn.Close(cctx)
		}
		cancel()
		if status == "streaming" {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("localcluster: %s: not streaming from its primary (status %q, last error %v): %w%s",
				n.Name, status, lastErr, ctx.Err(), n.tail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (n *Node) tail() string {
	n.mu.Lock()
	off := n.logOff
	n.mu.Unlock()
	return logTail(n.LogFile, off)
}

// Stop shuts the node down with a fast shutdown (SIGINT), and kills its
// process group after 10s. It is a no-op when the node is not running.
func (n *Node) Stop() error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	running := n.runningLocked()
	n.mu.Unlock()
	if !running {
		return nil
	}
	_ = cmd.Process.Signal(os.Interrupt)
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
	}
	killTree(cmd)
	select {
	case <-done:
	case <-time.After(stopTimeout):
	}
	return fmt.Errorf("localcluster: %s (pid %d) did not shut down within %s of SIGINT; sent SIGKILL",
		n.Name, cmd.Process.Pid, stopTimeout)
}

// Kill simulates a crash of the whole server: SIGKILL to the postmaster and
// all its backends, so no backend keeps serving an open connection and none
// lingers to block a restart. No-op when not running.
func (n *Node) Kill() error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	running := n.runningLocked()
	n.mu.Unlock()
	if !running {
		return nil
	}
	killTree(cmd)
	select {
	case <-done:
		return nil
	case <-time.After(stopTimeout):
		return fmt.Errorf("localcluster: %s: pid %d still running %s after SIGKILL", n.Name, cmd.Process.Pid, stopTimeout)
	}
}

// Pause stops the postmaster and every backend (SIGSTOP): the node's
// sockets stay open and nothing answers, as when a network partition cuts
// it off or its host hangs. Resume undoes it; Stop and Kill work on a
// paused node. No-op when not running.
func (n *Node) Pause() { n.signalTree(syscall.SIGSTOP) }

// Resume continues a paused node (SIGCONT); harmless on a running one.
func (n *Node) Resume() { n.signalTree(syscall.SIGCONT) }

// signalTree sends sig to the postmaster and its children: the postmaster
// first when stopping, so it forks no backend that would miss the signal,
// and last when continuing.
func (n *Node) signalTree(sig syscall.Signal) {
	pid := n.PID()
	if pid == 0 {
		return
	}
	if sig == syscall.SIGSTOP {
		_ = syscall.Kill(pid, sig)
	}
	for _, c := range childPIDs(pid) {
		_ = syscall.Kill(c, sig)
	}
	if sig != syscall.SIGSTOP {
		_ = syscall.Kill(pid, sig)
	}
}

// killTree SIGKILLs the postmaster and its children. Children are listed
// first, while they are still ours by parent PID; each is also killed as a
// group because backends are session leaders and may have children of their
// own (archive_command, COPY PROGRAM).
func killTree(cmd *exec.Cmd) {
	children := childPIDs(cmd.Process.Pid)
	_ = cmd.Process.Kill()
	for _, pid := range children {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// SIGKILL is asynchronous; callers (failover tests) expect the node to
	// be gone, with its connections reset, once Kill returns.
	deadline := time.Now().Add(stopTimeout)
	for _, pid := range children {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Start restarts a stopped or killed node on its previous port (so DSNs held
// by tests stay valid) and waits until it accepts connections. It retries
// while the port or the crashed server's shared memory is still held, until
// ctx ends (StartTimeout if ctx has no deadline). It does not wait for a
// replica to stream; use WaitStreaming. No-op when already running.
func (n *Node) Start(ctx context.Context) error {
	if n.Running() {
		return nil
	}
	if n.Port == 0 {
		return fmt.Errorf("localcluster: %s: never started", n.Name)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.c.opts.StartTimeout)
		defer cancel()
	}
	if err := n.c.writeConf(n); err != nil {
		return err
	}
	for {
		err := n.launch(ctx, n.Port)
		if err == nil || !(errors.Is(err, errPortInUse) || errors.Is(err, errShmInUse)) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Promote turns a replica into a primary (pg_promote, waiting for it to
// finish). The shard's previous primary becomes RoleFormerPrimary, and the
// shard's other replicas will follow this node the next time they are
// started. The new roles are remembered in cluster.json for the next Start.
func (n *Node) Promote(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, n.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("localcluster: %s: promote: %w", n.Name, err)
	}
	defer conn.Close(context.Background())
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil {
		return fmt.Errorf("localcluster: %s: promote: %w", n.Name, err)
	}
	if !inRecovery {
		return fmt.Errorf("localcluster: %s: promote: not a standby", n.Name)
	}
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("localcluster: %s: promote: %w", n.Name, err)
	}
	if !ok {
		return fmt.Errorf("localcluster: %s: promote: pg_promote did not finish within 60s%s", n.Name, n.tail())
	}
	c := n.c
	c.mu.Lock()
	for _, o := range c.Nodes {
		if o == n || o.Shard != n.Shard {
			continue
		}
		switch o.Role {
		case RolePrimary:
			o.Role = RoleFormerPrimary
		case RoleReplica:
			o.upstream = n
		}
	}
	n.Role = RolePrimary
	n.upstream = nil
	c.mu.Unlock()
	if err := c.saveState(); err != nil {
		return fmt.Errorf("localcluster: %s: promoted, but writing %s failed: %w", n.Name, stateFileName, err)
	}
	return nil
}

// Stop stops every node: replicas first, so they do not spin reconnecting
// to primaries that are going away, then primaries. Idempotent.
func (c *Cluster) Stop() error {
	var replicas, others []*Node
	c.mu.Lock()
	for _, n := range c.Nodes {
		if n.Role == RoleReplica {
			replicas = append(replicas, n)
		} else {
			others = append(others, n)
		}
	}
	c.mu.Unlock()
	return errors.Join(
		parallel(replicas, (*Node).Stop),
		parallel(others, (*Node).Stop),
	)
}

// Primary returns the current primary of shard ("shard0", ...), or the spare
// node for a spare name ("spare0", ...); nil if there is none.
func (c *Cluster) Primary(shard string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.primaryLocked(shard)
}

func (c *Cluster) primaryLocked(shard string) *Node {
	for _, n := range c.Nodes {
		if n.Shard == shard && (n.Role == RolePrimary || n.Role == RoleSpare) {
			return n
		}
	}
	return nil
}

// Replicas returns the nodes currently replicating within shard.
func (c *Cluster) Replicas(shard string) []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.Nodes {
		if n.Shard == shard && n.Role == RoleReplica {
			out = append(out, n)
		}
	}
	return out
}

// ShardNames lists the shards in the shard map (shard0..N-1), not spares.
func (c *Cluster) ShardNames() []string {
	names := make([]string, c.opts.Shards)
	for i := range names {
		names[i] = fmt.Sprintf("shard%d", i)
	}
	return names
}

// Spares returns the spare primaries.
func (c *Cluster) Spares() []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n.Role == RoleSpare {
			out = append(out, n)
		}
	}
	return out
}

func (c *Cluster) saveState() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := clusterState{Nodes: map[string]nodeState{}}
	for _, n := range c.Nodes {
		if n.Port != 0 {
			st.Nodes[n.Name] = nodeState{Shard: n.Shard, Role: n.Role, Port: n.Port}
		}
	}
	return saveState(c.Dir, st)
}

func parallel(nodes []*Node, fn func(*Node) error) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() { errs[i] = fn(n) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitOldPostmaster waits (up to a minute) for a postmaster still running
// in dataDir to exit: after the launcher of an earlier run died, its
// servers get SIGINT and finish a fast shutdown, which a rerun right away
// would otherwise collide with ("lock file postmaster.pid already
// exists"). It never signals that process.
func waitOldPostmaster(ctx context.Context, dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) && alive(pid) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}
