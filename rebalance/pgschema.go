package rebalance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// CopySchema creates on `to` the tables (with their indexes, constraints,
// defaults, owned sequences, owner and grants) as they are on `from`, with
// pg_dump --schema-only from the PostgreSQL bin directory applied in one
// transaction. Tables already on `to` are skipped. Owner and grants are
// kept when the roles exist on `to`, dropped otherwise. What a running
// move added on `from` (the visibility policy, row-level security and
// REPLICA IDENTITY FULL it turned on) is not copied.
func CopySchema(ctx context.Context, from, to Node, tables []string) error {
	if len(tables) == 0 {
		return nil
	}
	dst, err := pgConnect(ctx, to.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", to.Name, err)
	}
	defer pgClose(dst)
	var missing []string
	for _, t := range tables {
		var ok bool
		if err := dst.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgTableIdent(t)).Scan(&ok); err != nil {
			return fmt.Errorf("rebalance: %s: %w", to.Name, err)
		}
		if !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}

	src, err := pgConnect(ctx, from.DSN)
	if err != nil {
		return fmt.Errorf("%s: %w", from.Name, err)
	}
	defer pgClose(src)
	info, err := pgSchemaInfo(ctx, src, missing)
	if err != nil {
		return fmt.Errorf("rebalance: %s: %w", from.Name, err)
	}
	keepOwner := true
	for _, role := range info.roles {
		var ok bool
		if err := dst.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role).Scan(&ok); err != nil {
			return fmt.Errorf("rebalance: %s: %w", to.Name, err)
		}
		if !ok {
			keepOwner = false
		}
	}
	pgDump, err := findPgDump()
	if err != nil {
		return fmt.Errorf("rebalance: CopySchema: %w", err)
	}
	args := []string{"--schema-only", "--no-tablespaces", "--dbname", from.DSN}
	if !keepOwner {
		args = append(args, "--no-owner", "--no-privileges")
	}
	for _, t := range missing {
		s, r := pgSplitName(t)
		// Double quotes make each part literal in a pg_dump pattern.
		args = append(args, "--table", `"`+strings.ReplaceAll(s, `"`, `""`)+`"."`+strings.ReplaceAll(r, `"`, `""`)+`"`)
	}
	dumpCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(dumpCtx, pgDump, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("rebalance: pg_dump from %s: %w: %s", from.Name, err, strings.TrimSpace(stderr.String()))
	}
	sql := pgFilterDump(stdout.String(), info)

	var b strings.Builder
	for _, s := range info.schemas {
		fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n", pgx.Identifier{s}.Sanitize())
	}
	b.WriteString(sql)
	if err := pgExec(ctx, dst, b.String()); err != nil {
		return fmt.Errorf("rebalance: %s: apply schema: %w", to.Name, err)
	}
	return nil
}

type pgDumpInfo struct {
	schemas []string
	roles   []string
	// ours: tables (schema.table) where a move turned row-level security
	// on for its policy; replIdent: original replica identity of tables a
	// move set to FULL.
	ours      map[string]bool
	replIdent map[string]string
}

func pgSchemaInfo(ctx context.Context, conn *pgx.Conn, tables []string) (pgDumpInfo, error) {
	info := pgDumpInfo{ours: map[string]bool{}, replIdent: map[string]string{}}
	seenS, seenR := map[string]bool{}, map[string]bool{}
	hasSchema, err := pgSchemaExists(ctx, conn)
	if err != nil {
		return info, err
	}
	for _, t := range tables {
		var owner string
		var ours bool
		err := conn.QueryRow(ctx, `SELECT pg_get_userbyid(c.relowner),
			EXISTS (SELECT FROM pg_policy WHERE polrelid = c.oid AND polname = $2 AND polpermissive)
			FROM pg_class c WHERE c.oid = $1::regclass`, pgTableIdent(t), pgPolicy).Scan(&owner, &ours)
		if err != nil {
			return info, fmt.Errorf("%s: %w", t, err)
		}
		s, _ := pgSplitName(t)
		if !seenS[s] && s != "public" {
			seenS[s] = true
			info.schemas = append(info.schemas, s)
		}
		if !seenR[owner] {
			seenR[owner] = true
			info.roles = append(info.roles, owner)
		}
		// Grantees must exist too for the GRANTs to apply.
		rows, err := conn.Query(ctx, `SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_class c, aclexplode(c.relacl) a
			WHERE c.oid = $1::regclass AND a.grantee <> 0`, pgTableIdent(t))
		if err != nil {
			return info, err
		}
		grantees, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return info, err
		}
		for _, g := range grantees {
			if !seenR[g] {
				seenR[g] = true
				info.roles = append(info.roles, g)
			}
		}
		key := pgTableKey(t)
		info.ours[key] = ours
		if hasSchema {
			var orig string
			err := conn.QueryRow(ctx, "SELECT original FROM shardproxy.move_replica_identity WHERE tbl = $1 LIMIT 1", key).Scan(&orig)
			if err == nil {
				info.replIdent[key] = orig
			} else if !errors.Is(err, pgx.ErrNoRows) {
				return info, err
			}
		}
	}
	return info, nil
}

var (
	pgRLSLine   = regexp.MustCompile(`^ALTER TABLE (?:ONLY )?(.+) (?:ENABLE|FORCE) ROW LEVEL SECURITY;$`)
	pgReplLine  = regexp.MustCompile(`^ALTER TABLE (?:ONLY )?(.+) REPLICA IDENTITY FULL;$`)
	pgOurPolicy = regexp.MustCompile(`^CREATE POLICY ` + pgPolicy + ` ON `)
)

// pgFilterDump drops psql meta-commands and what a move added to the
// tables from pg_dump's output.
func pgFilterDump(dump string, info pgDumpInfo) string {
	var out strings.Builder
	skipping := false
	for _, line := range strings.Split(dump, "\n") {
		if skipping {
			// Our policy statement ends with the line ending in ';'.
			if strings.HasSuffix(line, ";") {
				skipping = false
			}
			continue
		}
		switch {
		case strings.HasPrefix(line, `\`):
			continue
		case pgOurPolicy.MatchString(line):
			skipping = !strings.HasSuffix(line, ";")
			continue
		}
		if m := pgRLSLine.FindStringSubmatch(line); m != nil && info.ours[pgTableKey(m[1])] {
			continue
		}
		if m := pgReplLine.FindStringSubmatch(line); m != nil {
			if orig, ok := info.replIdent[pgTableKey(m[1])]; ok {
				switch {
				case orig == "d":
					continue
				case orig == "n":
					line = "ALTER TABLE ONLY " + m[1] + " REPLICA IDENTITY NOTHING;"
				case strings.HasPrefix(orig, "i:"):
					line = "ALTER TABLE ONLY " + m[1] + " REPLICA IDENTITY USING INDEX " + orig[2:] + ";"
				}
			}
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	return out.String()
}

// CopyData replaces the contents of table on `to` with its contents on
// `from` (for reference tables): COPY TO STDOUT on one connection piped
// into COPY FROM STDIN on the other, in binary format, after a TRUNCATE in
// the same transaction (readers of `to` see the old rows until it
// commits). Generated columns are left to `to` to compute.
func CopyData(ctx context.Context, from, to Node, table string) (int64, error) {
	src, err := pgConnect(ctx, from.DSN)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", from.Name, err)
	}
	defer pgClose(src)
	dst, err := pgConnect(ctx, to.DSN)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", to.Name, err)
	}
	defer pgClose(dst)
	ident := pgTableIdent(table)
	rows, err := src.Query(ctx, `SELECT quote_ident(attname) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
		ORDER BY attnum`, ident)
	if err != nil {
		return 0, fmt.Errorf("rebalance: %s: %w", from.Name, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("rebalance: %s: %w", from.Name, err)
	}
	colList := strings.Join(cols, ", ")

	var tx pgx.Tx
	for attempt := 0; ; attempt++ {
		tx, err = dst.Begin(ctx)
		if err == nil {
			_, err = tx.Exec(ctx, "SET LOCAL lock_timeout = '"+pgLockTimeout+"'")
		}
		if err == nil {
			_, err = tx.Exec(ctx, "TRUNCATE ONLY "+ident)
		}
		if err == nil {
			break
		}
		if tx != nil {
			_ = tx.Rollback(ctx)
		}
		if !pgRetryable(err) || attempt >= pgDDLAttempts {
			return 0, fmt.Errorf("rebalance: %s: truncate %s: %w", to.Name, table, err)
		}
		if err := pgSleep(ctx, time.Duration(attempt+1)*100*time.Millisecond); err != nil {
			return 0, err
		}
	}
	defer func() { _ = tx.Rollback(context.Background()) }()

	pr, pw := io.Pipe()
	copyErr := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, pw, fmt.Sprintf("COPY %s (%s) TO STDOUT (FORMAT binary)", ident, colList))
		pw.CloseWithError(err)
		copyErr <- err
	}()
	tag, err := dst.PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN (FORMAT binary)", ident, colList))
	pr.CloseWithError(errors.New("COPY FROM ended"))
	srcErr := <-copyErr
	if err != nil {
		return 0, fmt.Errorf("rebalance: %s: copy in %s: %w", to.Name, table, err)
	}
	if srcErr != nil {
		return 0, fmt.Errorf("rebalance: %s: copy out %s: %w", from.Name, table, srcErr)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("rebalance: %s: %w", to.Name, err)
	}
	return tag.RowsAffected(), nil
}

// findPgDump locates pg_dump: the newest /usr/lib/postgresql/*/bin (a
// pg_dump reads servers up to its own version), then PATH. Only the client
// package is needed (the container image has no server binaries).
func findPgDump() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	best, bestVer := "", -1
	for _, p := range dirs {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(p))))
		if err == nil && v > bestVer {
			if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
				best, bestVer = p, v
			}
		}
	}
	if best != "" {
		return best, nil
	}
	if p, err := exec.LookPath("pg_dump"); err == nil {
		return p, nil
	}
	return "", errors.New("pg_dump not found: install the PostgreSQL client (postgresql-client-15 or later) or put pg_dump on PATH")
}
