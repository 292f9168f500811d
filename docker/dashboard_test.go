package docker

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	"github.com/shardproxy/shardproxy/metrics"
)

const dashboardPath = "grafana/dashboards/shardproxy.json"

// Metric kinds, as far as the dashboard checks care.
const (
	kindCounter   = "counter"
	kindGauge     = "gauge"
	kindHistogram = "histogram"
	kindSummary   = "summary"
	kindUntyped   = "untyped"
)

// exportedMetrics returns every shardproxy_ metric family the proxy
// exports, with its kind.
func exportedMetrics(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	// The proxy's own registry, as `shardproxy serve` builds it. Label
	// vectors and the scrape-time collectors only produce families once
	// they have series, so give each one.
	m := metrics.New()
	m.Error("42P01")
	m.Statement(metrics.RouteSingle, false)
	m.Batch(0, "s0", false, time.Millisecond)
	m.RegisterClientStateCollector(func() metrics.ClientStates { return metrics.ClientStates{Idle: 1} })
	m.RegisterPoolCollector(func() []metrics.PoolStats {
		return []metrics.PoolStats{{Shard: "s0", Node: "n:5432", Role: "primary", User: "app", Database: "app", MaxSize: 1}}
	})
	m.RegisterNodeCollector(func() []metrics.NodeStats {
		return []metrics.NodeStats{
			{Shard: "s0", Node: "p:5432", Role: "primary", Healthy: true},
			{Shard: "s0", Node: "r:5432", Role: "replica", Healthy: true},
		}
	})
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		out[f.GetName()] = familyKind(f.GetType())
	}
	// And any label vector of Metrics still without series (a field
	// added later): its descriptor names it.
	v := reflect.ValueOf(m).Elem()
	for i := 0; i < v.NumField(); i++ {
		if !v.Type().Field(i).IsExported() {
			continue
		}
		var kind string
		switch v.Field(i).Interface().(type) {
		case *prometheus.CounterVec:
			kind = kindCounter
		case *prometheus.GaugeVec:
			kind = kindGauge
		case *prometheus.HistogramVec:
			kind = kindHistogram
		case *prometheus.SummaryVec:
			kind = kindSummary
		default:
			continue
		}
		for _, name := range describedNames(v.Field(i).Interface().(prometheus.Collector)) {
			if _, ok := out[name]; !ok {
				out[name] = kind
			}
		}
	}
	for name, kind := range rebalanceMetrics(t) {
		out[name] = kind
	}
	for name := range out {
		if !strings.HasPrefix(name, "shardproxy_") {
			delete(out, name) // go_ and process_ collectors
		}
	}
	return out
}

func familyKind(t dto.MetricType) string {
	switch t {
	case dto.MetricType_COUNTER:
		return kindCounter
	case dto.MetricType_GAUGE:
		return kindGauge
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return kindHistogram
	case dto.MetricType_SUMMARY:
		return kindSummary
	}
	return kindUntyped
}

var fqNameRE = regexp.MustCompile(`fqName: "([^"]+)"`)

// describedNames reads the metric names off a collector's descriptors;
// Desc has no accessor for it, but its String form is stable.
func describedNames(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	var names []string
	for d := range ch {
		if m := fqNameRE.FindStringSubmatch(d.String()); m != nil {
			names = append(names, m[1])
		}
	}
	return names
}

// rebalanceMetrics lists the rebalance's series, which
// rebalance.Orchestrator.Register adds to the proxy's registry. Building
// an Orchestrator needs a metadata database (rebalance.New opens its
// journal), and the metric constructor (newMetrics) is unexported, so the
// names are read from the source instead: every XxxOpts{Name: "..."}
// literal in ../rebalance/metrics.go. Should the rebalance package export
// a database-free way to register its metrics, gather from it instead.
func rebalanceMetrics(t *testing.T) map[string]string {
	t.Helper()
	const path = "../rebalance/metrics.go"
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{"CounterOpts": kindCounter, "GaugeOpts": kindGauge, "HistogramOpts": kindHistogram, "SummaryOpts": kindSummary}
	out := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.CompositeLit)
		if !ok {
			return true
		}
		sel, ok := lit.Type.(*ast.SelectorExpr)
		if !ok || kinds[sel.Sel.Name] == "" {
			return true
		}
		parts := map[string]string{}
		for _, e := range lit.Elts {
			kv, ok := e.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			key, _ := kv.Key.(*ast.Ident)
			val, _ := kv.Value.(*ast.BasicLit)
			if key == nil {
				continue
			}
			if val == nil || val.Kind != token.STRING {
				if key.Name == "Name" || key.Name == "Namespace" || key.Name == "Subsystem" {
					t.Errorf("%s: %s is not a string literal; teach rebalanceMetrics to resolve it", path, key.Name)
				}
				continue
			}
			s, err := strconv.Unquote(val.Value)
			if err != nil {
				t.Fatal(err)
			}
			parts[key.Name] = s
		}
		out[prometheus.BuildFQName(parts["Namespace"], parts["Subsystem"], parts["Name"])] = kinds[sel.Sel.Name]
		return true
	})
	if len(out) == 0 {
		t.Fatalf("no metric definitions found in %s", path)
	}
	return out
}

// metricNameRE matches a metric name of ours anywhere in a string.
var metricNameRE = regexp.MustCompile(`\bshardproxy_[a-zA-Z0-9_:]+`)

// counterFuncRE matches the functions that only make sense on counters
// (and a histogram's _bucket, _sum and _count series).
var counterFuncRE = regexp.MustCompile(`\b(?:rate|irate|increase)\(\s*(shardproxy_[a-zA-Z0-9_:]+)`)

// resolve maps a series name used in PromQL to its exported family and
// kind: itself, or the histogram (or summary) a _bucket, _sum or _count
// suffix belongs to. ok is false for a name the proxy does not export.
func resolve(exported map[string]string, name string) (family, kind string, cumulative, ok bool) {
	if k, found := exported[name]; found {
		return name, k, k == kindCounter, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, cut := strings.CutSuffix(name, suffix)
		if !cut {
			continue
		}
		switch exported[base] {
		case kindHistogram:
			return base, kindHistogram, true, true
		case kindSummary:
			if suffix != "_bucket" {
				return base, kindSummary, true, true
			}
		}
	}
	return "", "", false, false
}

type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		ID         int             `json:"id"`
		Type       string          `json:"type"`
		Title      string          `json:"title"`
		Datasource json.RawMessage `json:"datasource"`
		Targets    []struct {
			Expr       string          `json:"expr"`
			Datasource json.RawMessage `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t *testing.T) (dashboard, any) {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var tree any
	if err := json.Unmarshal(raw, &tree); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d, tree
}

// strings collects every string value in a decoded JSON tree: panel
// queries, but also template variable queries and descriptions, so that
// no metric name anywhere in the dashboard goes unchecked.
func jsonStrings(v any, out *[]string) {
	switch v := v.(type) {
	case string:
		*out = append(*out, v)
	case []any:
		for _, e := range v {
			jsonStrings(e, out)
		}
	case map[string]any:
		for _, e := range v {
			jsonStrings(e, out)
		}
	}
}

// TestDashboardMetricsExist is the check that the dashboard and the proxy
// agree: every shardproxy_ name the dashboard uses is exported, rate() and
// friends are applied to counters only, and the dashboard shows what an
// operator needs (each required family is used).
func TestDashboardMetricsExist(t *testing.T) {
	exported := exportedMetrics(t)
	d, tree := loadDashboard(t)

	var all []string
	jsonStrings(tree, &all)
	used := map[string]bool{}
	for _, s := range all {
		for _, name := range metricNameRE.FindAllString(s, -1) {
			family, _, _, ok := resolve(exported, name)
			if !ok {
				t.Errorf("dashboard uses %s, which the proxy does not export", name)
				continue
			}
			used[family] = true
		}
		for _, m := range counterFuncRE.FindAllStringSubmatch(s, -1) {
			if _, kind, cumulative, ok := resolve(exported, m[1]); ok && !cumulative {
				t.Errorf("dashboard applies rate/increase to %s, a %s: %q", m[1], kind, s)
			}
		}
	}

	exprs := 0
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr != "" {
				exprs++
			}
		}
	}
	if exprs < 10 {
		t.Fatalf("dashboard has %d PromQL expressions; did its format change?", exprs)
	}

	// What the dashboard must show (issue 6): client connections,
	// throughput, pool usage, errors, replica lag and node health, and a
	// rebalance's progress, lag and cutover pause.
	for _, want := range []string{
		"shardproxy_client_connections",
		"shardproxy_queries_total", "shardproxy_transactions_total",
		"shardproxy_pool_server_connections", "shardproxy_pool_max_size", "shardproxy_pool_clients_waiting",
		"shardproxy_errors_total",
		"shardproxy_replica_lag_bytes", "shardproxy_replica_lag_seconds", "shardproxy_node_up",
		"shardproxy_rebalance_rows_copied", "shardproxy_rebalance_rows_planned",
		"shardproxy_rebalance_lag_bytes", "shardproxy_rebalance_cutover_pause_seconds",
	} {
		if _, ok := exported[want]; !ok {
			t.Errorf("required metric %s is no longer exported; update this list and the dashboard", want)
		} else if !used[want] {
			t.Errorf("dashboard does not show %s", want)
		}
	}

	var unused []string
	for name := range exported {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("exported but not on the dashboard: %s", strings.Join(unused, ", "))
	}
}

// TestDashboardShape checks what Grafana would otherwise only complain
// about at load time: unique panel ids, and every query on the
// provisioned datasource.
func TestDashboardShape(t *testing.T) {
	d, _ := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard needs a uid and a title")
	}
	uid := provisionedDatasourceUID(t)
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, raw := range append([]json.RawMessage{p.Datasource}, func() []json.RawMessage {
			var r []json.RawMessage
			for _, tg := range p.Targets {
				r = append(r, tg.Datasource)
			}
			return r
		}()...) {
			var ds struct {
				UID string `json:"uid"`
			}
			if len(raw) == 0 || json.Unmarshal(raw, &ds) != nil || ds.UID != uid {
				t.Errorf("panel %q uses datasource %s, want uid %q", p.Title, raw, uid)
			}
		}
	}
}

// provisionedDatasourceUID returns the uid of the Prometheus datasource
// Grafana is provisioned with, after checking that it points at the
// compose Prometheus service.
func provisionedDatasourceUID(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile("grafana/provisioning/datasources/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	if err := yaml.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Datasources) != 1 || p.Datasources[0].Type != "prometheus" || p.Datasources[0].UID == "" {
		t.Fatalf("want one prometheus datasource with a uid, got %+v", p.Datasources)
	}
	ds := p.Datasources[0]
	m := hostPortRE.FindStringSubmatch(ds.URL)
	if m == nil {
		t.Fatalf("datasource url %q is not http://host:port", ds.URL)
	}
	c := loadCompose(t)
	svc, ok := c.Services[m[1]]
	if !ok || !strings.HasPrefix(svc.Image, "prom/prometheus") {
		t.Errorf("datasource url %s does not name the compose Prometheus service", ds.URL)
	}
	return ds.UID
}

// Grafana loads the datasource and the dashboard from where compose
// mounts them.
func TestGrafanaProvisioning(t *testing.T) {
	svc, ok := loadCompose(t).Services["grafana"]
	if !ok {
		t.Fatal("no grafana service")
	}
	if svc.mount("/etc/grafana/provisioning") != "./grafana/provisioning" {
		t.Error("compose does not mount grafana/provisioning at /etc/grafana/provisioning")
	}
	raw, err := os.ReadFile("grafana/provisioning/dashboards/shardproxy.yml")
	if err != nil {
		t.Fatal(err)
	}
	var p struct {
		Providers []struct {
			Type    string `yaml:"type"`
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	if len(p.Providers) != 1 || p.Providers[0].Type != "file" {
		t.Fatalf("want one file dashboard provider, got %+v", p.Providers)
	}
	dir := p.Providers[0].Options.Path
	if svc.mount(dir) != "./grafana/dashboards" {
		t.Errorf("the provider reads %s, where compose does not mount grafana/dashboards", dir)
	}
	if home := svc.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" && home != dir+"/shardproxy.json" {
		t.Errorf("home dashboard %s is not the provisioned %s/shardproxy.json", home, dir)
	}
}

// grafanaVarRE matches the Grafana variables the dashboard's queries use.
var grafanaVarRE = regexp.MustCompile(`\$(__rate_interval|__interval|__range|instance)\b`)

// TestPromtool has Prometheus's own tool check the scrape config and the
// syntax of every dashboard query (as recording rules, with the Grafana
// variables filled in), when promtool is installed (Debian: prometheus).
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian package prometheus); the scrape config and PromQL syntax go unchecked")
	}
	if out, err := exec.Command(promtool, "check", "config", "prometheus/prometheus.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool check config: %v\n%s", err, out)
	}
	d, _ := loadDashboard(t)
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				continue
			}
			expr := grafanaVarRE.ReplaceAllStringFunc(tg.Expr, func(v string) string {
				if v == "$instance" {
					return ".*"
				}
				return "1m"
			})
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:panel_%d:%d", p.ID, len(rules)), Expr: expr})
		}
	}
	raw, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput(); err != nil {
		t.Errorf("dashboard PromQL does not parse: %v\n%s", err, out)
	}
}
