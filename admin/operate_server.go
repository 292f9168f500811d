package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// maxRequestBody bounds the JSON bodies of the operator verbs, which are
// a few DSNs at most.
const maxRequestBody = 1 << 20

// noOperator is the answer of every operator verb when the proxy has no
// Operator (it runs without a metadata database).
var noOperator = &Error{
	Status:  http.StatusServiceUnavailable,
	Message: "operator verbs are not available: this proxy runs without a metadata database (or without operator support), so it cannot add, drain or remove shards nor rebalance",
	Hint:    "set metadata.dsn in the proxy's config and restart it; 'shardctl status' works without it",
}

func (s *Server) addOperatorRoutes() {
	s.routes[ShardsPath] = map[string]http.Handler{
		http.MethodGet:  s.op(s.handleShards),
		http.MethodPost: s.op(s.handleAddShard),
	}
	s.routes[RebalancePath] = map[string]http.Handler{
		http.MethodGet:  s.op(s.handleRebalanceStatus),
		http.MethodPost: s.op(s.handleStartRebalance),
	}
	s.routes[RebalancePlanPath] = map[string]http.Handler{http.MethodGet: s.op(s.handlePlan)}
	s.routes[RebalanceCancelPath] = map[string]http.Handler{http.MethodPost: s.op(s.handleCancelRebalance)}
}

// shardRoutes resolves /api/v1/shards/{name} and /api/v1/shards/{name}/drain.
// The name is taken from the escaped path so that an escaped "/" in it
// cannot shift the segments.
func (s *Server) shardRoutes(r *http.Request) (map[string]http.Handler, bool) {
	rest, ok := strings.CutPrefix(r.URL.EscapedPath(), ShardPathPrefix)
	if !ok {
		return nil, false
	}
	parts := strings.Split(rest, "/")
	name, err := url.PathUnescape(parts[0])
	if err != nil || name == "" {
		return nil, false
	}
	switch {
	case len(parts) == 1:
		return map[string]http.Handler{http.MethodDelete: s.op(func(w http.ResponseWriter, r *http.Request) {
			s.handleRemoveShard(w, r, name)
		})}, true
	case len(parts) == 2 && parts[1] == "drain":
		return map[string]http.Handler{http.MethodPost: s.op(func(w http.ResponseWriter, r *http.Request) {
			s.handleDrainShard(w, r, name)
		})}, true
	}
	return nil, false
}

// op wraps an operator verb's handler with the check that there is an
// Operator at all.
func (s *Server) op(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Operator == nil {
			writeAPIError(w, noOperator)
			return
		}
		h(w, r)
	})
}

func (s *Server) handleShards(w http.ResponseWriter, r *http.Request) {
	shards, err := s.opts.Operator.Shards(r.Context())
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	if shards == nil {
		shards = []ShardInfo{}
	}
	for i := range shards {
		normalizeShard(&shards[i])
	}
	writeJSON(w, http.StatusOK, shards)
}

func (s *Server) handleAddShard(w http.ResponseWriter, r *http.Request) {
	var req AddShardRequest
	if !decodeBody(w, r, &req, false) {
		return
	}
	var missing []string
	if req.Name == "" {
		missing = append(missing, `"name"`)
	}
	if req.Primary == "" {
		missing = append(missing, `"primary"`)
	}
	if len(missing) > 0 {
		writeAPIError(w, &Error{
			Status:  http.StatusBadRequest,
			Message: "request body lacks " + strings.Join(missing, " and "),
			Hint:    `send {"name": "s2", "primary": "postgres://...", "replicas": [...]}`,
		})
		return
	}
	sh, err := s.opts.Operator.AddShard(r.Context(), req)
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizeShard(&sh)
	s.log.Info("admin API: shard added", "shard", sh.Name, "primary", sh.Primary, "replicas", len(sh.Replicas), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusCreated, sh)
}

func (s *Server) handleDrainShard(w http.ResponseWriter, r *http.Request, name string) {
	sh, err := s.opts.Operator.DrainShard(r.Context(), name)
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizeShard(&sh)
	s.log.Info("admin API: shard draining", "shard", name, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, sh)
}

func (s *Server) handleRemoveShard(w http.ResponseWriter, r *http.Request, name string) {
	if err := s.opts.Operator.RemoveShard(r.Context(), name); err != nil {
		s.writeOpError(w, r, err)
		return
	}
	s.log.Info("admin API: shard removed", "shard", name, "remote", r.RemoteAddr)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handlePlan(w http.ResponseWriter, r *http.Request) {
	var req RebalanceRequest
	if v := r.URL.Query().Get("even"); v != "" {
		even, err := strconv.ParseBool(v)
		if err != nil {
			writeAPIError(w, &Error{Status: http.StatusBadRequest, Message: fmt.Sprintf("query parameter even=%q is not a boolean", v), Hint: "use even=true or even=false"})
			return
		}
		req.Even = even
	}
	plan, err := s.opts.Operator.PlanRebalance(r.Context(), req)
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizePlan(&plan)
	writeJSON(w, http.StatusOK, plan)
}

func (s *Server) handleStartRebalance(w http.ResponseWriter, r *http.Request) {
	var req RebalanceRequest
	// An empty body is the default request, so a bare
	// `curl -X POST .../rebalance` works.
	if !decodeBody(w, r, &req, true) {
		return
	}
	st, err := s.opts.Operator.StartRebalance(r.Context(), req)
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizeRebalance(&st)
	s.log.Info("admin API: rebalance started", "id", st.ID, "even", req.Even, "moves", len(st.Moves), "remote", r.RemoteAddr)
	writeJSON(w, http.StatusAccepted, st)
}

func (s *Server) handleRebalanceStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.opts.Operator.RebalanceStatus(r.Context())
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizeRebalance(&st)
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleCancelRebalance(w http.ResponseWriter, r *http.Request) {
	st, err := s.opts.Operator.CancelRebalance(r.Context())
	if err != nil {
		s.writeOpError(w, r, err)
		return
	}
	normalizeRebalance(&st)
	s.log.Info("admin API: rebalance cancel requested", "id", st.ID, "state", st.State, "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, st)
}

// decodeBody reads a JSON request body into v, answering 400 and
// returning false when it is not one. Unknown fields are accepted, so a
// newer shardctl can talk to an older proxy.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeAPIError(w, &Error{Status: http.StatusRequestEntityTooLarge, Message: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)})
			return false
		}
		writeAPIError(w, &Error{Status: http.StatusBadRequest, Message: "cannot read request body: " + err.Error()})
		return false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if emptyOK {
			return true
		}
		writeAPIError(w, &Error{Status: http.StatusBadRequest, Message: "request body is empty", Hint: "send a JSON object"})
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		writeAPIError(w, &Error{Status: http.StatusBadRequest, Message: "request body is not valid JSON: " + jsonProblem(err), Hint: "send a JSON object"})
		return false
	}
	if dec.More() {
		writeAPIError(w, &Error{Status: http.StatusBadRequest, Message: "request body has data after its JSON object", Hint: "send a single JSON object"})
		return false
	}
	return true
}

// jsonProblem words a decoding error without Go type names where it can.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return fmt.Sprintf("field %q must be a JSON %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v (at byte %d)", se, se.Offset)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "it ends early"
	}
	return err.Error()
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "slice", "array":
		return "array"
	case "struct", "map":
		return "object"
	default:
		return "number"
	}
}

// writeOpError answers with an Operator's error: an *Error keeps its
// status and hint, anything else is a 500.
func (s *Server) writeOpError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *Error
	if errors.As(err, &ae) {
		writeAPIError(w, ae)
		return
	}
	s.log.Error("admin API: operator verb failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusInternalServerError, err.Error())
}

func writeAPIError(w http.ResponseWriter, e *Error) {
	code := e.Status
	if code < 400 || code > 599 {
		code = http.StatusBadRequest
	}
	writeJSON(w, code, errorBody{Error: e.Message, Hint: e.Hint})
}

// Empty lists and maps, not null, so scripts can iterate without a null
// check.

func normalizeShard(sh *ShardInfo) {
	if sh.Replicas == nil {
		sh.Replicas = []string{}
	}
}

func normalizePlan(p *Plan) {
	if p.Moves == nil {
		p.Moves = []PlannedMove{}
	}
	for i := range p.Moves {
		if p.Moves[i].Slots == nil {
			p.Moves[i].Slots = []int{}
		}
	}
	if p.Before == nil {
		p.Before = map[string]int{}
	}
	if p.After == nil {
		p.After = map[string]int{}
	}
}

func normalizeRebalance(st *RebalanceStatus) {
	if st.Moves == nil {
		st.Moves = []MoveStatus{}
	}
	for i := range st.Moves {
		if st.Moves[i].Slots == nil {
			st.Moves[i].Slots = []int{}
		}
	}
}
