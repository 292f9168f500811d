package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
)

// Shards fetches GET /api/v1/shards.
func (c *Client) Shards(ctx context.Context) ([]ShardInfo, error) {
	var out []ShardInfo
	return out, c.call(ctx, http.MethodGet, ShardsPath, nil, &out)
}

// AddShard sends POST /api/v1/shards.
func (c *Client) AddShard(ctx context.Context, req AddShardRequest) (ShardInfo, error) {
	var out ShardInfo
	return out, c.call(ctx, http.MethodPost, ShardsPath, req, &out)
}

// DrainShard sends POST /api/v1/shards/{name}/drain.
func (c *Client) DrainShard(ctx context.Context, name string) (ShardInfo, error) {
	var out ShardInfo
	return out, c.call(ctx, http.MethodPost, ShardDrainPath(name), nil, &out)
}

// RemoveShard sends DELETE /api/v1/shards/{name}.
func (c *Client) RemoveShard(ctx context.Context, name string) error {
	return c.call(ctx, http.MethodDelete, ShardPath(name), nil, nil)
}

// PlanRebalance fetches GET /api/v1/rebalance/plan?even=...
func (c *Client) PlanRebalance(ctx context.Context, req RebalanceRequest) (Plan, error) {
	var out Plan
	return out, c.call(ctx, http.MethodGet, RebalancePlanURL(req), nil, &out)
}

// StartRebalance sends POST /api/v1/rebalance.
func (c *Client) StartRebalance(ctx context.Context, req RebalanceRequest) (RebalanceStatus, error) {
	var out RebalanceStatus
	return out, c.call(ctx, http.MethodPost, RebalancePath, req, &out)
}

// RebalanceStatus fetches GET /api/v1/rebalance.
func (c *Client) RebalanceStatus(ctx context.Context) (RebalanceStatus, error) {
	var out RebalanceStatus
	return out, c.call(ctx, http.MethodGet, RebalancePath, nil, &out)
}

// CancelRebalance sends POST /api/v1/rebalance/cancel.
func (c *Client) CancelRebalance(ctx context.Context) (RebalanceStatus, error) {
	var out RebalanceStatus
	return out, c.call(ctx, http.MethodPost, RebalanceCancelPath, nil, &out)
}

// ShardPath is /api/v1/shards/{name}, the name escaped.
func ShardPath(name string) string { return ShardPathPrefix + url.PathEscape(name) }

// ShardDrainPath is /api/v1/shards/{name}/drain, the name escaped.
func ShardDrainPath(name string) string { return ShardPath(name) + "/drain" }

// RebalancePlanURL is the path and query of GET /api/v1/rebalance/plan.
func RebalancePlanURL(req RebalanceRequest) string {
	return fmt.Sprintf("%s?even=%t", RebalancePlanPath, req.Even)
}

// call does one request and decodes the answer into out (when not nil).
func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	body, err := c.Do(ctx, method, path, in)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("admin API at %s: decode %s %s: %w", c.Addr, method, path, err)
	}
	return nil
}
