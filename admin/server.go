// Package admin serves the proxy's admin HTTP API (/metrics, /api/v1/...)
// and holds the Go client that shardctl uses to talk to it.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths of the API, shared by the server and the client.
const (
	MetricsPath = "/metrics"
	StatusPath  = "/api/v1/status"
)

// Options configure a Server.
type Options struct {
	// Listen is host:port; port 0 picks a free port (see Server.Addr).
	Listen string
	// Token, when set, is required on every request as
	// "Authorization: Bearer <token>".
	Token string
	// Registry is served on /metrics.
	Registry *prometheus.Registry
	// Status is called on every GET /api/v1/status, concurrently with the
	// proxy, so it must be safe for that.
	Status func() Status
	// Operator carries out the operator verbs (shards, shard add/drain/
	// remove, rebalance). Nil when the proxy runs without a metadata
	// database: those routes then answer 503 with a hint.
	Operator Operator
	// Reload re-reads the proxy's config (POST /api/v1/reload, shardctl
	// reload); nil answers 503. An *Error keeps its status and hint.
	Reload func(ctx context.Context) (ReloadResult, error)
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Server is the admin HTTP API.
type Server struct {
	opts   Options
	log    *slog.Logger
	routes map[string]map[string]http.Handler // path -> method -> handler
	token  atomic.Pointer[string]             // Options.Token, then SetToken's

	mu   sync.Mutex
	http *http.Server
	ln   net.Listener
}

// NewServer builds the server; nothing listens until Start.
func NewServer(opts Options) *Server {
	s := &Server{opts: opts, log: opts.Logger}
	s.token.Store(&opts.Token)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes = map[string]map[string]http.Handler{
		MetricsPath: {http.MethodGet: s.metricsHandler()},
		StatusPath:  {http.MethodGet: http.HandlerFunc(s.handleStatus)},
	}
	s.addOperatorRoutes()
	s.addReloadRoute()
	return s
}

// Handler returns the API's handler, for embedding in another server or
// an httptest.Server.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Start listens and serves in the background. It returns once the listener
// is bound, so a client may connect as soon as it returns.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.http != nil {
		return errors.New("admin API: already started")
	}
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("admin API: listen on %s: %w", s.opts.Listen, err)
	}
	s.ln = ln
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: a slow scrape of a big pool list should finish
		// rather than be cut mid-body, and long-polling verbs may follow.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv := s.http
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin API stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	s.log.Info("admin API listening", "addr", ln.Addr().String(), "token_required", *s.token.Load() != "")
	return nil
}

// Addr is the bound address once started, else the configured one.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.opts.Listen
}

// Shutdown stops accepting and waits for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv := s.http
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("admin API: shutdown: %w", err)
	}
	return nil
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	// Authenticate before routing so that without a token nobody can even
	// learn which paths exist.
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="shardproxy"`)
		writeError(w, http.StatusUnauthorized, "missing or invalid bearer token")
		return
	}
	byMethod, ok := s.routes[r.URL.Path]
	if !ok {
		byMethod, ok = s.shardRoutes(r)
	}
	if !ok {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
		return
	}
	h, ok := byMethod[r.Method]
	if !ok && r.Method == http.MethodHead {
		h, ok = byMethod[http.MethodGet]
	}
	if !ok {
		allowed := make([]string, 0, len(byMethod))
		for m := range byMethod {
			allowed = append(allowed, m)
		}
		slices.Sort(allowed)
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		writeError(w, http.StatusMethodNotAllowed, r.Method+" not allowed on "+r.URL.Path)
		return
	}
	h.ServeHTTP(w, r)
}

// SetToken replaces the bearer token (a reloaded config's admin.token)
// for the requests that arrive from now on; "" requires none.
func (s *Server) SetToken(token string) { s.token.Store(&token) }

func (s *Server) authorized(r *http.Request) bool {
	token := *s.token.Load()
	if token == "" {
		return true
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	// Constant time, so response timing does not leak the token's prefix.
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func (s *Server) metricsHandler() http.Handler {
	if s.opts.Registry == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, http.StatusServiceUnavailable, "metrics are not configured")
		})
	}
	return promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{
		// One broken collector (say, a duplicate pool series) should not
		// blank the whole scrape; the error is logged and the rest served.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		// No Registry here: promhttp's own error counter would be the one
		// series without the shardproxy_ prefix that we could avoid.
	})
}

func (s *Server) handleStatus(w http.ResponseWriter, _ *http.Request) {
	if s.opts.Status == nil {
		writeError(w, http.StatusServiceUnavailable, "status is not configured")
		return
	}
	st := s.opts.Status()
	if !st.StartedAt.IsZero() {
		st.UptimeSeconds = time.Since(st.StartedAt).Seconds()
	}
	// Empty lists, not null, so scripts can iterate without a null check.
	if st.Shards == nil {
		st.Shards = []ShardStatus{}
	}
	for i := range st.Shards {
		if st.Shards[i].Replicas == nil {
			st.Shards[i].Replicas = []NodeStatus{}
		}
	}
	if st.Pools == nil {
		st.Pools = []PoolStatus{}
	}
	writeJSON(w, http.StatusOK, st)
}

// errorBody is the JSON body of every non-2xx response.
type errorBody struct {
	Error string `json:"error"`
	Hint  string `json:"hint,omitempty"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	// The header is sent; an encoding error can only be a gone client.
	_ = json.NewEncoder(w).Encode(v)
}
