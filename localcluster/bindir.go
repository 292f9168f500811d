package localcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// FindBinDir returns the directory holding the PostgreSQL server binaries.
//
// The order mirrors how a developer would expect a tool to pick a server:
// an explicit hint wins; then pg_config on PATH, because it names the build
// the developer chose; then the newest Debian/Ubuntu versioned install,
// because there pg_config may be missing (it ships in libpq-dev) while the
// server is installed; and last a bare postgres on PATH (Homebrew, Nix).
func FindBinDir(hint string) (string, error) {
	if hint != "" {
		if !isExecutable(filepath.Join(hint, "postgres")) {
			return "", fmt.Errorf("localcluster: BinDir %q has no postgres executable", hint)
		}
		return hint, nil
	}
	if pgConfig, err := exec.LookPath("pg_config"); err == nil {
		if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
			dir := strings.TrimSpace(string(out))
			if dir != "" && isExecutable(filepath.Join(dir, "postgres")) {
				return dir, nil
			}
		}
	}
	if dir := newestDebianBinDir("/usr/lib/postgresql"); dir != "" {
		return dir, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		// Resolve symlinks: initdb locates postgres next to itself, so we
		// need the real install directory, not e.g. /usr/local/bin.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		return filepath.Dir(p), nil
	}
	return "", errors.New("localcluster: no PostgreSQL binaries found: set Options.BinDir, " +
		"put pg_config or postgres on PATH, or install the server (looked in /usr/lib/postgresql/*/bin)")
}

// newestDebianBinDir picks the highest version under root/*/bin that holds a
// postgres executable, comparing versions numerically so 15 beats 9.6.
func newestDebianBinDir(root string) string {
	matches, _ := filepath.Glob(filepath.Join(root, "*", "bin"))
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, m := range matches {
		if !isExecutable(filepath.Join(m, "postgres")) {
			continue
		}
		var ver []int
		ok := true
		for _, part := range strings.Split(filepath.Base(filepath.Dir(m)), ".") {
			v, err := strconv.Atoi(part)
			if err != nil {
				ok = false
				break
			}
			ver = append(ver, v)
		}
		if ok {
			cands = append(cands, cand{m, ver})
		}
	}
	if len(cands) == 0 {
		return ""
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i].ver, cands[j].ver
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	return cands[0].dir
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}
