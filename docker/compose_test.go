// Package docker holds the Docker Compose topology; its tests check the
// files against each other and against the proxy's config validation,
// since no Docker engine is needed for that.
package docker

import (
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/shardproxy/shardproxy/config"
)

func TestProxyConfigLoads(t *testing.T) {
	cfg, err := config.Load("shardproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Shards) != 2 {
		t.Fatalf("%d shards, want 2", len(cfg.Shards))
	}
	for _, s := range cfg.Shards {
		if len(s.Replicas) != 1 {
			t.Errorf("shard %s has %d replicas, want 1", s.Name, len(s.Replicas))
		}
	}
}

// compose is the part of docker-compose.yml the tests look at.
type compose struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Ports       []string          `yaml:"ports"`
		Environment map[string]string `yaml:"environment"`
		Command     []string          `yaml:"command"`
	} `yaml:"services"`
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	raw, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	// yaml.v3 resolves the x- anchors and << merges as compose does.
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

func TestPortsOnLoopbackOnly(t *testing.T) {
	for name, svc := range loadCompose(t).Services {
		for _, p := range svc.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %q beyond loopback", name, p)
			}
		}
	}
}

// Every node the proxy config names must be a compose service running
// PostgreSQL 15 with the settings the proxy depends on.
func TestConfigNodesAreComposeServices(t *testing.T) {
	cfg, err := config.Load("shardproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c := loadCompose(t)
	for _, s := range cfg.Shards {
		nodes := append([]string{s.Primary}, s.Replicas...)
		for i, dsn := range nodes {
			u, err := url.Parse(dsn)
			if err != nil {
				t.Fatalf("shard %s: %v", s.Name, err)
			}
			svc, ok := c.Services[u.Hostname()]
			if !ok {
				t.Errorf("shard %s node %s is not a compose service", s.Name, u.Hostname())
				continue
			}
			if svc.Image != "postgres:15" {
				t.Errorf("service %s runs %q, want postgres:15", u.Hostname(), svc.Image)
			}
			cmd := strings.Join(svc.Command, " ")
			for _, want := range []string{"wal_level=logical", "max_prepared_transactions=100"} {
				if !strings.Contains(cmd, want) {
					t.Errorf("service %s command lacks %s", u.Hostname(), want)
				}
			}
			if i > 0 && svc.Environment["PRIMARY_HOST"] != hostOf(t, s.Primary) {
				t.Errorf("replica %s clones %q, want its shard's primary %s", u.Hostname(), svc.Environment["PRIMARY_HOST"], hostOf(t, s.Primary))
			}
		}
	}
}

func hostOf(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u.Hostname()
}

func TestScriptsParse(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to check the scripts with")
	}
	for _, f := range []string{"replica-entrypoint.sh", "initdb/10-shardproxy.sh"} {
		if out, err := exec.Command(bash, "-n", f).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", f, err, out)
		}
	}
}
