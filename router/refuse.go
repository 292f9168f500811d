package router

import (
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/shardproxy/shardproxy/plan"
	"github.com/shardproxy/shardproxy/wire"
)

// refuse builds a Refused plan with SQLSTATE 0A000. Messages name the
// construct first ("window function across shards is not supported:
// ..."), hints say what to do instead. crossShard says the statement
// would be fine on a single shard forced by shardproxy.shard.
func refuse(cmd string, crossShard bool, hint, format string, args ...any) *plan.Statement {
	return &plan.Statement{
		Kind:       plan.Refused,
		Command:    cmd,
		CrossShard: crossShard,
		Err:        wire.Errorf(wire.CodeFeatureNotSupported, format, args...).WithHint(hint),
	}
}

const oneShardHint = "SET shardproxy.shard = 'name' to run it on one named shard."

// hintShard tells how to make a statement single-shard.
func hintShard(r *rel) string {
	if r == nil || r.kind != relSharded {
		return "Restrict it to one shard-key value, or " + oneShardHint
	}
	return fmt.Sprintf("Add a WHERE condition on the shard key %s of %s (%s = value) to run it on one shard, or %s",
		r.key, r.table, r.key, oneShardHint)
}

// quoteIdent renders an identifier as PostgreSQL would need it written.
func quoteIdent(s string) string {
	if s == "" {
		return `""`
	}
	simple := s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z')
	for i := 0; simple && i < len(s); i++ {
		c := s[i]
		simple = c == '_' || c == '$' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
	}
	if simple {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// Aggregates the executor can combine from per-shard partial results.
var combinable = map[string]plan.AggFunc{
	"count":    plan.AggCount,
	"sum":      plan.AggSum,
	"min":      plan.AggMin,
	"max":      plan.AggMax,
	"avg":      plan.AggAvg,
	"bool_and": plan.AggBoolAnd,
	"every":    plan.AggBoolAnd,
	"bool_or":  plan.AggBoolOr,
}

// builtinAggregates are PostgreSQL's aggregate functions: calls to them
// make a query aggregate even without GROUP BY. User-defined aggregates
// cannot be told from functions without the catalog.
var builtinAggregates = map[string]bool{
	"count": true, "sum": true, "min": true, "max": true, "avg": true,
	"bool_and": true, "bool_or": true, "every": true,
	"string_agg": true, "array_agg": true, "json_agg": true, "jsonb_agg": true,
	"json_object_agg": true, "jsonb_object_agg": true, "json_agg_strict": true, "jsonb_agg_strict": true,
	"json_object_agg_strict": true, "json_object_agg_unique": true, "json_object_agg_unique_strict": true,
	"jsonb_object_agg_strict": true, "jsonb_object_agg_unique": true, "jsonb_object_agg_unique_strict": true,
	"xmlagg": true, "bit_and": true, "bit_or": true, "bit_xor": true,
	"stddev": true, "stddev_pop": true, "stddev_samp": true,
	"variance": true, "var_pop": true, "var_samp": true,
	"corr": true, "covar_pop": true, "covar_samp": true,
	"regr_avgx": true, "regr_avgy": true, "regr_count": true, "regr_intercept": true,
	"regr_r2": true, "regr_slope": true, "regr_sxx": true, "regr_sxy": true, "regr_syy": true,
	"percentile_cont": true, "percentile_disc": true, "mode": true,
	"range_agg": true, "range_intersect_agg": true, "any_value": true,
}

// isAggCall reports whether a function call is an aggregate of the query.
func isAggCall(fc *pg_query.FuncCall) bool {
	if fc.Over != nil {
		return false
	}
	name, builtin := funcName(fc)
	return (builtin && builtinAggregates[name]) || fc.AggStar || fc.AggDistinct ||
		fc.AggFilter != nil || len(fc.AggOrder) > 0 || fc.AggWithinGroup
}

// containsAggregate reports whether an expression aggregates rows of the
// query it belongs to (aggregates inside subqueries belong to those).
func containsAggregate(n *pg_query.Node) bool {
	found := false
	inspect(n, func(m proto.Message) bool {
		switch v := m.(type) {
		case *pg_query.SubLink, *pg_query.SelectStmt:
			return false
		case *pg_query.FuncCall:
			if isAggCall(v) {
				found = true
			}
		case *pg_query.JsonArrayAgg, *pg_query.JsonObjectAgg:
			found = true
		}
		return !found
	})
	return found
}

// windowCall returns the first window function call in an expression.
func windowCall(n *pg_query.Node) *pg_query.FuncCall {
	var found *pg_query.FuncCall
	inspect(n, func(m proto.Message) bool {
		switch v := m.(type) {
		case *pg_query.SubLink, *pg_query.SelectStmt:
			return false
		case *pg_query.FuncCall:
			if v.Over != nil {
				found = v
			}
		}
		return found == nil
	})
	return found
}

func containsWindow(n *pg_query.Node) bool { return windowCall(n) != nil }

// writeFunctions change state when called from a SELECT, so such a
// SELECT must run on a primary.
var writeFunctions = map[string]bool{
	"nextval": true, "setval": true, "pg_advisory_lock": true, "pg_advisory_xact_lock": true,
	"pg_try_advisory_lock": true, "pg_try_advisory_xact_lock": true, "pg_advisory_lock_shared": true,
	"pg_advisory_xact_lock_shared": true, "pg_try_advisory_lock_shared": true,
	"pg_try_advisory_xact_lock_shared": true, "pg_advisory_unlock": true, "pg_advisory_unlock_all": true,
	"pg_advisory_unlock_shared": true, "set_config": true, "pg_notify": true,
	"txid_current": true, "pg_current_xact_id": true, "lo_create": true, "lo_import": true,
	"lo_unlink": true, "lo_from_bytea": true, "lo_put": true, "pg_switch_wal": true,
	"pg_create_logical_replication_slot": true, "pg_create_physical_replication_slot": true,
	"pg_drop_replication_slot": true, "pg_terminate_backend": true, "pg_cancel_backend": true,
}

// volatileFunctions return a different value on every shard: a write to
// a reference table using them would leave the copies different.
var volatileFunctions = map[string]bool{
	"random": true, "gen_random_uuid": true, "uuid_generate_v1": true, "uuid_generate_v1mc": true,
	"uuid_generate_v4": true, "nextval": true, "clock_timestamp": true, "timeofday": true,
	"setseed": true, "random_normal": true,
}

// callsAny returns the first call of a function in names anywhere in m.
func callsAny(m proto.Message, names map[string]bool) string {
	found := ""
	inspect(m, func(x proto.Message) bool {
		if fc, ok := x.(*pg_query.FuncCall); ok {
			if name, builtin := funcName(fc); builtin && names[name] {
				found = name
			}
		}
		return found == ""
	})
	return found
}
