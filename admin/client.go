package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to a proxy's admin API. The zero HTTP field means a client
// with a 10s timeout.
type Client struct {
	// Addr is host:port, or a base URL (http://... or https://...).
	Addr  string
	Token string
	HTTP  *http.Client
}

var defaultHTTP = &http.Client{Timeout: 10 * time.Second}

// changeHTTP serves the verbs that change something (shard add connects
// to the new shard and prepares it), which may take longer than a read.
var changeHTTP = &http.Client{Timeout: 5 * time.Minute}

// HTTPError is a non-2xx answer from the admin API.
type HTTPError struct {
	Addr       string
	Method     string
	Path       string
	StatusCode int
	// Message is the server's JSON "error" field, or the raw body when the
	// answer was not ours (a proxy in between, a wrong port).
	Message string
	// Hint is the server's JSON "hint" field: what to do next.
	Hint string
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("admin API at %s: %s %s: %d %s", e.Addr, e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Message != "" {
		msg += ": " + e.Message
	}
	if e.Hint != "" {
		msg += " (" + e.Hint + ")"
	}
	return msg
}

// Status fetches GET /api/v1/status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	body, err := c.Get(ctx, StatusPath)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("admin API at %s: decode %s: %w", c.Addr, StatusPath, err)
	}
	return st, nil
}

// Get returns the body of a successful GET of path, undecoded, for callers
// that print the server's JSON as is (shardctl --json).
func (c *Client) Get(ctx context.Context, path string) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, path, nil)
}

// Do sends a request with in (when not nil) as its JSON body and returns
// the body of a successful answer, undecoded. A non-2xx answer is an
// *HTTPError.
func (c *Client) Do(ctx context.Context, method, path string, in any) ([]byte, error) {
	var reqBody io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("admin API at %s: encode %s %s: %w", c.Addr, method, path, err)
		}
		reqBody = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.baseURL()+path, reqBody)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.Addr, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
		if method != http.MethodGet && method != http.MethodHead {
			hc = changeHTTP
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach admin API at %s: %w", c.Addr, unwrapURLError(err))
	}
	defer resp.Body.Close()
	// Bounded: a misdirected request could hit something that streams.
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: read %s: %w", c.Addr, path, err)
	}
	if resp.StatusCode/100 != 2 {
		msg, hint := errorMessage(body)
		return nil, &HTTPError{Addr: c.Addr, Method: req.Method, Path: path, StatusCode: resp.StatusCode, Message: msg, Hint: hint}
	}
	return body, nil
}

func (c *Client) baseURL() string {
	if strings.Contains(c.Addr, "://") {
		return strings.TrimSuffix(c.Addr, "/")
	}
	return "http://" + c.Addr
}

// unwrapURLError drops url.Error's `Get "http://...": ` prefix, which only
// repeats the address the caller's message already names.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func errorMessage(body []byte) (msg, hint string) {
	var e errorBody
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return e.Error, e.Hint
	}
	msg = strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	return msg, ""
}
