// Package docker holds the Docker Compose topology; its tests check the
// files against each other and against the proxy's config validation,
// since no Docker engine is needed for that.
package docker

import (
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

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
	Services map[string]service `yaml:"services"`
}

type service struct {
	Image       string            `yaml:"image"`
	Ports       []string          `yaml:"ports"`
	Environment map[string]string `yaml:"environment"`
	Command     []string          `yaml:"command"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	// The long form only: the short (list) form cannot wait for health.
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
}

// mount returns the host side of the bind mount of svc whose container
// side is target ("" if none).
func (svc service) mount(target string) string {
	for _, v := range svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && parts[1] == target {
			return parts[0]
		}
	}
	return ""
}

// composeCommand finds a Compose implementation: the standalone
// docker-compose (v1 from Debian, or v2), else the docker CLI's plugin.
// Neither needs a running engine for `config`.
func composeCommand() ([]string, bool) {
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}, true
	}
	if p, err := exec.LookPath("docker"); err == nil {
		if exec.Command(p, "compose", "version").Run() == nil {
			return []string{p, "compose"}, true
		}
	}
	return nil, false
}

// TestComposeConfig has Compose itself parse and validate the file
// (schema, anchors and merges, depends_on conditions, interpolation).
func TestComposeConfig(t *testing.T) {
	cmd, ok := composeCommand()
	if !ok {
		t.Skip("neither docker-compose nor the docker compose plugin is installed; " +
			"the other tests still check docker-compose.yml as YAML")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append(cmd[1:], "-p", "shardproxy", "-f", "docker-compose.yml", "config")
	c := exec.CommandContext(ctx, cmd[0], args...)
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(append(cmd, args...), " "), err, stderr.String())
	}
	// The rendered file must still hold every service; an empty render
	// would mean Compose read something else (a COMPOSE_FILE override).
	for _, want := range []string{"pg-s0-primary", "pg-s1-replica", "pg-s2-primary", "shardproxy", "prometheus", "grafana"} {
		if !strings.Contains(string(out), want+":") {
			t.Errorf("compose config output lacks service %s", want)
		}
	}
}

// Startup order: every service has a healthcheck, and waits for the
// health of what it depends on rather than just its start.
func TestStartupOrder(t *testing.T) {
	c := loadCompose(t)
	for name, svc := range c.Services {
		if svc.Healthcheck == nil || len(svc.Healthcheck.Test) == 0 {
			t.Errorf("service %s has no healthcheck", name)
		}
		for dep, d := range svc.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("service %s depends on unknown service %s", name, dep)
			}
			if d.Condition != "service_healthy" {
				t.Errorf("service %s waits for %s with %q, want service_healthy", name, dep, d.Condition)
			}
		}
	}
	for _, edge := range [][2]string{
		{"pg-s0-replica", "pg-s0-primary"}, {"pg-s1-replica", "pg-s1-primary"},
		{"shardproxy", "pg-s0-primary"}, {"shardproxy", "pg-s1-primary"}, {"shardproxy", "pg-s2-primary"},
		{"prometheus", "shardproxy"}, {"grafana", "prometheus"},
	} {
		if _, ok := c.Services[edge[0]].DependsOn[edge[1]]; !ok {
			t.Errorf("service %s does not wait for %s", edge[0], edge[1])
		}
	}
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

// Every PostgreSQL service, the spare included, runs with the settings the
// proxy depends on, and at least one primary is outside the config for
// `shardctl shard add`. The spare gets no replication slot: nobody would
// consume it, and it would pin WAL.
func TestSparePrimary(t *testing.T) {
	cfg, err := config.Load("shardproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	inConfig := map[string]bool{}
	for _, s := range cfg.Shards {
		inConfig[hostOf(t, s.Primary)] = true
		for _, r := range s.Replicas {
			inConfig[hostOf(t, r)] = true
		}
	}
	var spares []string
	for name, svc := range loadCompose(t).Services {
		if !strings.HasPrefix(svc.Image, "postgres:") {
			continue
		}
		cmd := strings.Join(svc.Command, " ")
		for _, want := range []string{"wal_level=logical", "max_prepared_transactions=100"} {
			if !strings.Contains(cmd, want) {
				t.Errorf("service %s command lacks %s", name, want)
			}
		}
		if svc.Environment["PRIMARY_HOST"] != "" || inConfig[name] {
			continue
		}
		spares = append(spares, name)
		if svc.Environment["APP_PASSWORD"] == "" {
			t.Errorf("spare %s creates no app role: the proxy could not log in as app after shard add", name)
		}
		if svc.Environment["REPLICATION_SLOT"] != "" {
			t.Errorf("spare %s creates replication slot %q that no replica consumes", name, svc.Environment["REPLICATION_SLOT"])
		}
		if svc.mount("/docker-entrypoint-initdb.d") != "./initdb" {
			t.Errorf("spare %s does not run initdb/", name)
		}
	}
	if len(spares) == 0 {
		t.Error("no spare primary outside shardproxy.yaml for `shardctl shard add`")
	}
}

// The proxy's client and admin ports are published, and the image's
// default command reads the config from where compose mounts it.
func TestProxyService(t *testing.T) {
	cfg, err := config.Load("shardproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	svc, ok := loadCompose(t).Services["shardproxy"]
	if !ok {
		t.Fatal("no shardproxy service")
	}
	for _, addr := range []string{cfg.Listen, cfg.Admin.Listen} {
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		published := false
		for _, p := range svc.Ports {
			published = published || strings.HasSuffix(p, ":"+port)
		}
		if !published {
			t.Errorf("port %s (from %s in shardproxy.yaml) is not published", port, addr)
		}
	}
	const target = "/etc/shardproxy/shardproxy.yaml"
	if svc.mount(target) != "./shardproxy.yaml" {
		t.Errorf("shardproxy.yaml is not mounted at %s", target)
	}
	if !strings.Contains(dockerfile(t), target) {
		t.Errorf("Dockerfile does not read the config from %s", target)
	}
}

func dockerfile(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// debianRelease maps a base image to its Debian major release, 0 when it
// is not a Debian-based glibc image this test knows.
func debianRelease(image string) int {
	switch {
	case strings.Contains(image, "bookworm"), strings.HasSuffix(image, "-debian12"):
		return 12
	case strings.Contains(image, "trixie"), strings.HasSuffix(image, "-debian13"):
		return 13
	}
	return 0
}

// The Dockerfile's essentials, which no engine here can try: a cgo build
// of both binaries, a runtime stage on the same or a newer Debian (the
// binaries link glibc dynamically), a non-root user, pg_dump matching the
// compose servers, and COPY sources that exist.
func TestDockerfile(t *testing.T) {
	df := dockerfile(t)
	var froms []string
	var user string
	for _, line := range strings.Split(df, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, f[1])
			user = ""
		case "USER":
			user = f[1]
		case "COPY":
			if strings.HasPrefix(f[1], "--from") {
				continue
			}
			// The build context is the repository root.
			for _, src := range f[1 : len(f)-1] {
				if _, err := os.Stat("../" + src); err != nil {
					t.Errorf("COPY source %s: %v", src, err)
				}
			}
		}
	}
	if len(froms) < 2 {
		t.Fatalf("%d stages, want a build and a runtime stage", len(froms))
	}
	build, run := froms[0], froms[len(froms)-1]
	if !strings.HasPrefix(build, "golang:") {
		t.Errorf("build stage on %s, want golang:", build)
	}
	if b, r := debianRelease(build), debianRelease(run); b == 0 || r < b {
		t.Errorf("runtime %s (Debian %d) cannot run what %s (Debian %d) links against", run, r, build, b)
	}
	if user == "" || user == "root" || user == "0" || strings.HasPrefix(user, "0:") {
		t.Errorf("runtime stage runs as %q, want a non-root user", user)
	}
	for _, want := range []string{"CGO_ENABLED=1", "./cmd/shardproxy", "./cmd/shardctl"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %s", want)
		}
	}
	// pg_dump refuses servers of a newer major version.
	for name, svc := range loadCompose(t).Services {
		if major, ok := strings.CutPrefix(svc.Image, "postgres:"); ok {
			major = strings.SplitN(major, "-", 2)[0]
			if !strings.Contains(df, "postgresql-client-"+major) {
				t.Errorf("service %s runs PostgreSQL %s but the image does not install postgresql-client-%s", name, major, major)
			}
		}
	}
}

// prometheusConfig is the part of prometheus/prometheus.yml the tests read.
type prometheusConfig struct {
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		Authorization *struct {
			Credentials     string `yaml:"credentials"`
			CredentialsFile string `yaml:"credentials_file"`
		} `yaml:"authorization"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

// Prometheus scrapes /metrics on the proxy's admin port as shardproxy.yaml
// configures it, by the proxy's compose service name, with the token if
// the config sets one.
func TestPrometheusScrapesProxy(t *testing.T) {
	cfg, err := config.Load("shardproxy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, adminPort, err := net.SplitHostPort(cfg.Admin.Listen)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var pc prometheusConfig
	if err := yaml.Unmarshal(raw, &pc); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	c := loadCompose(t)
	want := net.JoinHostPort("shardproxy", adminPort)
	found := false
	for _, sc := range pc.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				if target != want {
					continue
				}
				found = true
				if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" {
					t.Errorf("job %s scrapes %s, the proxy serves /metrics", sc.JobName, sc.MetricsPath)
				}
				if cfg.Admin.Token != "" && (sc.Authorization == nil || sc.Authorization.Credentials == "" && sc.Authorization.CredentialsFile == "") {
					t.Errorf("job %s sends no bearer token, but admin.token is set", sc.JobName)
				}
			}
		}
	}
	if !found {
		t.Errorf("no scrape job targets %s (admin.listen %s)", want, cfg.Admin.Listen)
	}
	if _, ok := c.Services["shardproxy"]; !ok {
		t.Error("no shardproxy service to scrape")
	}
	if c.Services["prometheus"].mount("/etc/prometheus/prometheus.yml") != "./prometheus/prometheus.yml" {
		t.Error("compose does not mount prometheus/prometheus.yml into the prometheus service")
	}
}

var hostPortRE = regexp.MustCompile(`^https?://([^/:]+):(\d+)`)

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
