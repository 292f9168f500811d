package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// stateFileName records ports and roles between runs, so that reusing a Dir
// keeps DSNs stable when the old ports are still free, and a replica promoted
// in an earlier run is still started as a primary.
const stateFileName = "cluster.json"

type clusterState struct {
	Nodes map[string]nodeState `json:"nodes"`
}

type nodeState struct {
	Shard string `json:"shard"`
	Role  string `json:"role"`
	Port  int    `json:"port"`
}

func loadState(dir string) (clusterState, error) {
	var st clusterState
	b, err := os.ReadFile(filepath.Join(dir, stateFileName))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return clusterState{}, fmt.Errorf("parse %s: %w", filepath.Join(dir, stateFileName), err)
	}
	return st, nil
}

// saveState writes via rename so an interrupted write never leaves a
// truncated file that would make the next run forget the ports.
func saveState(dir string, st clusterState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, stateFileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
