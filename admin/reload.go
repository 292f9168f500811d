package admin

import (
	"context"
	"net/http"
)

// ReloadPath re-reads the proxy's config file (POST): shardctl reload.
const ReloadPath = "/api/v1/reload"

// ReloadResult is the body of a successful POST /api/v1/reload.
type ReloadResult struct {
	// Changes describes each setting the reload changed ("pool.size: 20 ->
	// 40", "users: added bob"); empty when the file had no change.
	Changes []string `json:"changes"`
}

// noReload answers POST /api/v1/reload when the proxy gave no Reload.
var noReload = &Error{
	Status:  http.StatusServiceUnavailable,
	Message: "reload is not available: this proxy was started without a config file to re-read",
}

func (s *Server) addReloadRoute() {
	s.routes[ReloadPath] = map[string]http.Handler{http.MethodPost: http.HandlerFunc(s.handleReload)}
}

// handleReload runs Options.Reload. A refused reload (invalid config,
// fields that need a restart) is an *Error with status 400 from the
// proxy; the running config is unchanged then.
func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	if s.opts.Reload == nil {
		writeAPIError(w, noReload)
		return
	}
	res, err := s.opts.Reload(r.Context())
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	if res.Changes == nil {
		res.Changes = []string{}
	}
	s.log.Info("admin API: config reloaded", "changes", len(res.Changes), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, res)
}

// Reload sends POST /api/v1/reload.
func (c *Client) Reload(ctx context.Context) (ReloadResult, error) {
	var out ReloadResult
	return out, c.call(ctx, http.MethodPost, ReloadPath, nil, &out)
}
