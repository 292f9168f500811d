package router

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/shardproxy/shardproxy/plan"
)

// inspect calls fn for every parse-tree message under m (m included),
// depth first, in field order so that traversals are deterministic. The
// *pg_query.Node wrappers are skipped: fn sees the concrete node types.
// When fn returns false the children of that message are not visited.
func inspect(m proto.Message, fn func(proto.Message) bool) {
	if m == nil {
		return
	}
	inspectReflect(m.ProtoReflect(), fn)
}

func inspectReflect(rm protoreflect.Message, fn func(proto.Message) bool) {
	if !rm.IsValid() {
		return
	}
	if n, ok := rm.Interface().(*pg_query.Node); ok {
		if n.Node == nil {
			return
		}
		// Descend straight into the oneof's value.
		fields := rm.Descriptor().Oneofs().Get(0)
		fd := rm.WhichOneof(fields)
		if fd == nil {
			return
		}
		inspectReflect(rm.Get(fd).Message(), fn)
		return
	}
	if !fn(rm.Interface()) {
		return
	}
	fields := rm.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Message() == nil || fd.IsMap() {
			continue
		}
		if fd.IsList() {
			l := rm.Get(fd).List()
			for j := 0; j < l.Len(); j++ {
				inspectReflect(l.Get(j).Message(), fn)
			}
			continue
		}
		if rm.Has(fd) {
			inspectReflect(rm.Get(fd).Message(), fn)
		}
	}
}

// equalNodes compares two expressions ignoring source locations, the way
// PostgreSQL matches an ORDER BY or GROUP BY item with a select-list
// expression.
func equalNodes(a, b *pg_query.Node) bool {
	if a == nil || b == nil {
		return a == b
	}
	return equalMsg(a.ProtoReflect(), b.ProtoReflect())
}

func equalMsg(a, b protoreflect.Message) bool {
	if a.Descriptor() != b.Descriptor() {
		return false
	}
	fields := a.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := string(fd.Name())
		if name == "location" || strings.HasSuffix(name, "_location") {
			continue
		}
		if a.Has(fd) != b.Has(fd) {
			return false
		}
		if !a.Has(fd) {
			continue
		}
		va, vb := a.Get(fd), b.Get(fd)
		switch {
		case fd.IsList():
			la, lb := va.List(), vb.List()
			if la.Len() != lb.Len() {
				return false
			}
			for j := 0; j < la.Len(); j++ {
				if fd.Message() != nil {
					if !equalMsg(la.Get(j).Message(), lb.Get(j).Message()) {
						return false
					}
				} else if !la.Get(j).Equal(lb.Get(j)) {
					return false
				}
			}
		case fd.Message() != nil:
			if !equalMsg(va.Message(), vb.Message()) {
				return false
			}
		default:
			if !va.Equal(vb) {
				return false
			}
		}
	}
	return true
}

// strs returns the String values of a name list (["pg_catalog", "count"]).
func strs(nodes []*pg_query.Node) []string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if s := n.GetString_(); s != nil {
			out = append(out, s.Sval)
		}
	}
	return out
}

// funcName returns the unqualified name of a function call and whether
// it names a built-in (unqualified or pg_catalog-qualified).
func funcName(fc *pg_query.FuncCall) (string, bool) {
	names := strs(fc.Funcname)
	if len(names) == 0 {
		return "", false
	}
	name := names[len(names)-1]
	builtin := len(names) == 1 || (len(names) == 2 && names[0] == "pg_catalog")
	return name, builtin
}

// conjuncts flattens a tree of ANDs.
func conjuncts(n *pg_query.Node) []*pg_query.Node {
	if n == nil {
		return nil
	}
	if b := n.GetBoolExpr(); b != nil && b.Boolop == pg_query.BoolExprType_AND_EXPR {
		var out []*pg_query.Node
		for _, a := range b.Args {
			out = append(out, conjuncts(a)...)
		}
		return out
	}
	return []*pg_query.Node{n}
}

// andOf rebuilds an AND of conditions (nil for none).
func andOf(conds []*pg_query.Node) *pg_query.Node {
	switch len(conds) {
	case 0:
		return nil
	case 1:
		return conds[0]
	}
	return &pg_query.Node{Node: &pg_query.Node_BoolExpr{BoolExpr: &pg_query.BoolExpr{
		Boolop: pg_query.BoolExprType_AND_EXPR, Args: conds, Location: -1,
	}}}
}

// stripCasts removes casts around an expression: `$1::int` is still $1
// for routing.
func stripCasts(n *pg_query.Node) *pg_query.Node {
	for n != nil {
		tc := n.GetTypeCast()
		if tc == nil {
			return n
		}
		n = tc.Arg
	}
	return n
}

// opName returns the operator of a binary A_Expr ("=", "<", ...).
func opName(e *pg_query.A_Expr) string {
	names := strs(e.Name)
	if len(names) == 0 {
		return ""
	}
	return names[len(names)-1]
}

// constText renders a constant (or a cast constant) as SQL text without
// quotes; ok is false for anything else.
func constText(n *pg_query.Node) (text string, null, ok bool) {
	n = stripCasts(n)
	if n == nil {
		return "", false, false
	}
	c := n.GetAConst()
	if c == nil {
		return "", false, false
	}
	if c.Isnull {
		return "", true, true
	}
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Ival:
		return strconv.FormatInt(int64(v.Ival.Ival), 10), false, true
	case *pg_query.A_Const_Fval:
		return v.Fval.Fval, false, true
	case *pg_query.A_Const_Sval:
		return v.Sval.Sval, false, true
	case *pg_query.A_Const_Boolval:
		return strconv.FormatBool(v.Boolval.Boolval), false, true
	}
	return "", false, false
}

// keyValue reads a shard-key value: a constant or a $N parameter,
// possibly cast.
func keyValue(n *pg_query.Node) (plan.Key, bool) {
	n = stripCasts(n)
	if n == nil {
		return plan.Key{}, false
	}
	if p := n.GetParamRef(); p != nil && p.Number > 0 {
		return plan.Key{Param: int(p.Number)}, true
	}
	text, null, ok := constText(n)
	if !ok {
		return plan.Key{}, false
	}
	if null {
		return plan.Key{Null: true}, true
	}
	return plan.Key{Value: text, IsValue: true}, true
}

// arrayKeys reads the right side of `key = ANY(...)`: a $N array
// parameter, an array literal '{1,2}' or ARRAY[...].
func arrayKeys(n *pg_query.Node) ([]plan.Key, bool) {
	n = stripCasts(n)
	if n == nil {
		return nil, false
	}
	if p := n.GetParamRef(); p != nil && p.Number > 0 {
		return []plan.Key{{ArrayParam: int(p.Number)}}, true
	}
	if a := n.GetAArrayExpr(); a != nil {
		keys := make([]plan.Key, 0, len(a.Elements))
		for _, e := range a.Elements {
			k, ok := keyValue(e)
			if !ok {
				return nil, false
			}
			keys = append(keys, k)
		}
		return keys, len(keys) > 0
	}
	text, null, ok := constText(n)
	if !ok || null {
		return nil, false
	}
	elems, ok := parseArrayLiteral(text)
	if !ok || len(elems) == 0 {
		return nil, false
	}
	keys := make([]plan.Key, len(elems))
	for i, e := range elems {
		if e == nil {
			keys[i] = plan.Key{Null: true}
		} else {
			keys[i] = plan.Key{Value: *e, IsValue: true}
		}
	}
	return keys, true
}

// parseArrayLiteral reads a one-dimensional array literal such as
// {1,2,"a b",NULL}. Elements are nil for NULL.
func parseArrayLiteral(s string) ([]*string, bool) {
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, false
	}
	body := s[1 : len(s)-1]
	var out []*string
	if strings.TrimSpace(body) == "" {
		return out, true
	}
	i := 0
	for {
		for i < len(body) && body[i] == ' ' {
			i++
		}
		var elem strings.Builder
		quoted := false
		if i < len(body) && body[i] == '"' {
			quoted = true
			i++
			for i < len(body) && body[i] != '"' {
				if body[i] == '\\' && i+1 < len(body) {
					i++
				}
				elem.WriteByte(body[i])
				i++
			}
			if i >= len(body) {
				return nil, false
			}
			i++ // closing quote
		} else {
			for i < len(body) && body[i] != ',' {
				if body[i] == '{' || body[i] == '"' {
					return nil, false // nested arrays are not key lists
				}
				if body[i] == '\\' && i+1 < len(body) {
					i++
				}
				elem.WriteByte(body[i])
				i++
			}
		}
		v := elem.String()
		if !quoted {
			v = strings.TrimSpace(v)
		}
		if !quoted && strings.EqualFold(v, "null") {
			out = append(out, nil)
		} else {
			out = append(out, &v)
		}
		for i < len(body) && body[i] == ' ' {
			i++
		}
		if i >= len(body) {
			return out, true
		}
		if body[i] != ',' {
			return nil, false
		}
		i++
	}
}

// outputName is the column name PostgreSQL gives a select-list item
// (FigureColname), for matching ORDER BY names and keeping names when the
// router rewrites an item.
func outputName(rt *pg_query.ResTarget) string {
	if rt.Name != "" {
		return rt.Name
	}
	return figureColname(rt.Val)
}

func figureColname(n *pg_query.Node) string {
	if n == nil {
		return "?column?"
	}
	switch v := n.Node.(type) {
	case *pg_query.Node_ColumnRef:
		f := v.ColumnRef.Fields
		if len(f) > 0 {
			if s := f[len(f)-1].GetString_(); s != nil {
				return s.Sval
			}
		}
	case *pg_query.Node_FuncCall:
		name, _ := funcName(v.FuncCall)
		if name != "" {
			return name
		}
	case *pg_query.Node_TypeCast:
		if name := figureColname(v.TypeCast.Arg); name != "?column?" {
			return name
		}
		if v.TypeCast.TypeName != nil {
			names := strs(v.TypeCast.TypeName.Names)
			if len(names) > 0 {
				return names[len(names)-1]
			}
		}
	case *pg_query.Node_CaseExpr:
		return "case"
	case *pg_query.Node_CoalesceExpr:
		return "coalesce"
	case *pg_query.Node_SubLink:
		switch v.SubLink.SubLinkType {
		case pg_query.SubLinkType_EXISTS_SUBLINK:
			return "exists"
		case pg_query.SubLinkType_ARRAY_SUBLINK:
			return "array"
		case pg_query.SubLinkType_EXPR_SUBLINK:
			if s := v.SubLink.Subselect.GetSelectStmt(); s != nil && len(s.TargetList) == 1 {
				return outputName(s.TargetList[0].GetResTarget())
			}
		}
	case *pg_query.Node_AArrayExpr:
		return "array"
	case *pg_query.Node_MinMaxExpr:
		if v.MinMaxExpr.Op == pg_query.MinMaxOp_IS_GREATEST {
			return "greatest"
		}
		return "least"
	case *pg_query.Node_NullIfExpr:
		return "nullif"
	case *pg_query.Node_RowExpr:
		return "row"
	}
	return "?column?"
}

// hasParams reports whether an expression references $N parameters.
func hasParams(m proto.Message) bool {
	found := false
	inspect(m, func(x proto.Message) bool {
		if _, ok := x.(*pg_query.ParamRef); ok {
			found = true
		}
		return !found
	})
	return found
}

// constInt and the helpers below build nodes for rewritten statements.
func constInt(v int64) *pg_query.Node { return pg_query.MakeAConstIntNode(v, -1) }

func paramNode(n int) *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_ParamRef{ParamRef: &pg_query.ParamRef{Number: int32(n), Location: -1}}}
}

// castBigint casts to bigint: LIMIT and OFFSET take bigint, so a cast
// keeps the parameter's inferred type what the client's text implies.
func castBigint(n *pg_query.Node) *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_TypeCast{TypeCast: &pg_query.TypeCast{
		Arg: n,
		TypeName: &pg_query.TypeName{
			Names:    []*pg_query.Node{pg_query.MakeStrNode("pg_catalog"), pg_query.MakeStrNode("int8")},
			Typemod:  -1,
			Location: -1,
		},
		Location: -1,
	}}}
}

func binOp(op string, l, r *pg_query.Node) *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_AExpr{AExpr: &pg_query.A_Expr{
		Kind: pg_query.A_Expr_Kind_AEXPR_OP, Name: []*pg_query.Node{pg_query.MakeStrNode(op)},
		Lexpr: l, Rexpr: r, Location: -1,
	}}}
}

// parserVersion is the PostgreSQL version of the parse trees pg_query
// produces; Deparse refuses trees that do not carry it.
var parserVersion = func() int32 {
	t, err := pg_query.Parse("SELECT 1")
	if err != nil {
		panic("pg_query cannot parse SELECT 1: " + err.Error())
	}
	return t.Version
}()

// deparse renders one statement.
func deparse(stmt *pg_query.Node) (string, error) {
	return pg_query.Deparse(&pg_query.ParseResult{Version: parserVersion, Stmts: []*pg_query.RawStmt{{Stmt: stmt}}})
}

// exprSQL renders an expression for messages.
func exprSQL(n *pg_query.Node) string {
	if n == nil {
		return ""
	}
	sel := &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: &pg_query.SelectStmt{
		TargetList: []*pg_query.Node{{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Val: n}}}},
		Op:         pg_query.SetOperation_SETOP_NONE, LimitOption: pg_query.LimitOption_LIMIT_OPTION_DEFAULT,
	}}}
	s, err := deparse(sel)
	if err != nil {
		return "?"
	}
	return strings.TrimPrefix(s, "SELECT ")
}
