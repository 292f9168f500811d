package localcluster

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// serverUser describes the OS identity postgres, initdb and pg_basebackup
// run as. PostgreSQL refuses to run as root, so when we are root the servers
// run as the "postgres" OS user; otherwise they run as ourselves and cred is
// nil.
type serverUser struct {
	cred *syscall.Credential
	uid  int
	gids []uint32
	home string
}

func lookupServerUser() (*serverUser, error) {
	if os.Geteuid() != 0 {
		return &serverUser{uid: os.Geteuid()}, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("localcluster: running as root, and PostgreSQL refuses to run as root, "+
			"so the servers must run as the \"postgres\" OS user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("localcluster: user postgres has non-numeric uid %q", u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("localcluster: user postgres has non-numeric gid %q", u.Gid)
	}
	su := &serverUser{uid: int(uid), home: u.HomeDir, gids: []uint32{uint32(gid)}}
	var groups []uint32
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				groups = append(groups, uint32(g))
			}
		}
	}
	su.gids = append(su.gids, groups...)
	// Groups is set explicitly: a nil slice would clear root's supplementary
	// groups anyway, but postgres may need its own (e.g. ssl-cert for keys).
	su.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
	return su, nil
}

func (su *serverUser) isRoot() bool { return su.cred != nil }

// chown hands a file we created to the server user, so postgres can own its
// data directory (it refuses a data directory owned by someone else).
func (su *serverUser) chown(path string) error {
	if !su.isRoot() {
		return nil
	}
	if err := os.Chown(path, int(su.cred.Uid), int(su.cred.Gid)); err != nil {
		return fmt.Errorf("localcluster: chown %s to postgres: %w", path, err)
	}
	return nil
}

// env is the environment for server processes. PG* variables are dropped
// because PGHOST, PGPORT, PGSSLMODE and friends would silently redirect
// pg_basebackup; HOME points at the server user's home so libpq does not
// poke at root's ~/.pgpass.
func (su *serverUser) env() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || (su.isRoot() && strings.HasPrefix(kv, "HOME=")) {
			continue
		}
		env = append(env, kv)
	}
	if su.isRoot() && su.home != "" {
		env = append(env, "HOME="+su.home)
	}
	return env
}

// mkdirAllTracked is os.MkdirAll that reports which directories it created,
// so we know which ones we may relax permissions on.
func mkdirAllTracked(dir string) (created []string, err error) {
	var missing []string
	for p := dir; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return created, err
		}
		created = append(created, missing[i])
	}
	return created, nil
}

// ensureTraversable makes sure the server user can reach dir: every ancestor
// needs search permission for it. Go's t.TempDir() and os.MkdirTemp create
// 0700 directories, so as root we add o+x where that is clearly ours to
// change (dir itself, directories we just created, and our own directories
// under os.TempDir()). Anything else, such as /root, is an error rather than
// a silent permission change on the developer's machine.
func (su *serverUser) ensureTraversable(dir string, created []string) error {
	if !su.isRoot() {
		return nil
	}
	tmp, _ := filepath.Abs(os.TempDir())
	if real, err := filepath.EvalSymlinks(tmp); err == nil {
		tmp = real
	}
	for p := dir; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("localcluster: %w", err)
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("localcluster: cannot read owner of %s", p)
		}
		if !su.canSearch(st.Mode(), sys) {
			mine := int(sys.Uid) == os.Geteuid()
			allowed := mine && (p == dir || slices.Contains(created, p) || isStrictlyUnder(p, tmp))
			if !allowed {
				return fmt.Errorf("localcluster: the postgres OS user cannot traverse %s (mode %v), "+
					"which it needs to reach its data directories under %s; choose a Dir elsewhere "+
					"or run: chmod o+x %s", p, st.Mode().Perm(), dir, p)
			}
			if err := os.Chmod(p, st.Mode().Perm()|0o001); err != nil {
				return fmt.Errorf("localcluster: making %s traversable for postgres: %w", p, err)
			}
		}
		if filepath.Dir(p) == p {
			return nil
		}
	}
}

func (su *serverUser) canSearch(mode os.FileMode, st *syscall.Stat_t) bool {
	perm := mode.Perm()
	switch {
	case int(st.Uid) == int(su.cred.Uid):
		return perm&0o100 != 0
	case slices.Contains(su.gids, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

func isStrictlyUnder(p, base string) bool {
	rel, err := filepath.Rel(base, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}
