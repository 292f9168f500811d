package config

import (
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
)

// Reloadable lists, by YAML path ("[]" for any index), the fields a
// running proxy takes from a reloaded config (SIGHUP, shardctl reload,
// RELOAD in the admin console). Every other field is fixed at start: a
// reload that changes one is refused as a whole. A field added to Config
// later is fixed until it is listed here and the proxy applies it.
var Reloadable = []string{
	"users",
	"admin.token",
	"max_client_conn",
	"pool.size",
	"pool.wait_timeout",
	"pool.connect_timeout",
	"pool.idle_timeout",
	"pool.prepared_statement_cache",
	"replicas.max_lag",
	"replicas.fallback",
	"shards[].replica_weights",
	"log.level",
	"log.slow_query",
	"log.statements",
	"limits.max_message_size",
	"limits.query_timeout",
}

// RestartError refuses a reload that changes fields only a restart applies.
type RestartError struct {
	// Fields are the changed fixed fields, by YAML path (shards[1].primary).
	Fields []string
}

func (e *RestartError) Error() string {
	return fmt.Sprintf("restart the proxy to change %s; nothing was reloaded", strings.Join(e.Fields, ", "))
}

// Diff compares the running config with a newly loaded one. changes
// describes, one per changed reloadable field, what a reload applies
// ("pool.size: 20 -> 40", "users: added bob"; never a password or token).
// err is a *RestartError when a fixed field differs; values that are
// equal (also an empty list against an absent one) are no change.
func Diff(running, next *Config) (changes []string, err error) {
	var restart []string
	diffValue("", reflect.ValueOf(*running), reflect.ValueOf(*next), &changes, &restart)
	if len(restart) > 0 {
		return changes, &RestartError{Fields: restart}
	}
	return changes, nil
}

// WithReloadable returns a copy of c with every reloadable field taken
// from next. Slices are matched by index: c may hold more shards than
// next (those added at run time), which keep their settings.
func (c *Config) WithReloadable(next *Config) *Config {
	out := c.Clone()
	src := next.Clone()
	copyReloadable("", reflect.ValueOf(out).Elem(), reflect.ValueOf(src).Elem())
	return out
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	out := deepCopy(reflect.ValueOf(c).Elem()).Interface().(Config)
	return &out
}

var indexRE = regexp.MustCompile(`\[\d+\]`)

func reloadable(path string) bool {
	return slices.Contains(Reloadable, indexRE.ReplaceAllString(path, "[]"))
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch name {
	case "-":
		return ""
	case "":
		return strings.ToLower(f.Name)
	}
	return name
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func diffValue(path string, a, b reflect.Value, changes, restart *[]string) {
	if path != "" && reloadable(path) {
		if !equalValue(a, b) {
			*changes = append(*changes, describe(path, a, b))
		}
		return
	}
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if name := yamlName(a.Type().Field(i)); name != "" {
				diffValue(join(path, name), a.Field(i), b.Field(i), changes, restart)
			}
		}
	case reflect.Slice:
		if a.Len() != b.Len() {
			*restart = append(*restart, path)
			return
		}
		for i := range a.Len() {
			diffValue(fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i), changes, restart)
		}
	default:
		if !equalValue(a, b) {
			*restart = append(*restart, path)
		}
	}
}

// equalValue is reflect.DeepEqual except that a nil slice or map equals
// an empty one (YAML's `replicas: []` and no replicas at all).
func equalValue(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			if !equalValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice, reflect.Array:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !equalValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for _, k := range a.MapKeys() {
			bv := b.MapIndex(k)
			if !bv.IsValid() || !equalValue(a.MapIndex(k), bv) {
				return false
			}
		}
		return true
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return equalValue(a.Elem(), b.Elem())
	}
	return reflect.DeepEqual(a.Interface(), b.Interface())
}

// describe words one reloadable change without revealing secrets.
func describe(path string, a, b reflect.Value) string {
	switch path {
	case "users":
		return describeUsers(a.Interface().([]User), b.Interface().([]User))
	case "admin.token":
		return path + ": changed"
	}
	return fmt.Sprintf("%s: %s -> %s", path, show(a), show(b))
}

func show(v reflect.Value) string {
	if d, ok := v.Interface().(Duration); ok {
		return d.D().String()
	}
	if v.Kind() == reflect.String {
		return fmt.Sprintf("%q", v.String())
	}
	return fmt.Sprint(v.Interface())
}

func describeUsers(old, next []User) string {
	var added, removed, changed []string
	for _, u := range next {
		i := slices.IndexFunc(old, func(o User) bool { return o.Name == u.Name })
		if i < 0 {
			added = append(added, u.Name)
			continue
		}
		o := old[i]
		var what []string
		if o.Password != u.Password {
			what = append(what, "password")
		}
		if o.Auth != u.Auth {
			what = append(what, "auth "+u.Auth)
		}
		if o.Admin != u.Admin {
			what = append(what, fmt.Sprintf("admin %t", u.Admin))
		}
		if o.ServerUser != u.ServerUser || o.ServerPassword != u.ServerPassword {
			what = append(what, "server credentials")
		}
		if len(what) > 0 {
			changed = append(changed, u.Name+" ("+strings.Join(what, ", ")+")")
		}
	}
	for _, o := range old {
		if !slices.ContainsFunc(next, func(u User) bool { return u.Name == o.Name }) {
			removed = append(removed, o.Name)
		}
	}
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	if len(changed) > 0 {
		parts = append(parts, "changed "+strings.Join(changed, ", "))
	}
	if len(parts) == 0 {
		parts = append(parts, "reordered")
	}
	return "users: " + strings.Join(parts, "; ")
}

// copyReloadable sets every reloadable field of dst from src (both
// addressable, src not shared with anyone).
func copyReloadable(path string, dst, src reflect.Value) {
	if path != "" && reloadable(path) {
		dst.Set(src)
		return
	}
	switch dst.Kind() {
	case reflect.Struct:
		for i := range dst.NumField() {
			if name := yamlName(dst.Type().Field(i)); name != "" {
				copyReloadable(join(path, name), dst.Field(i), src.Field(i))
			}
		}
	case reflect.Slice:
		for i := range min(dst.Len(), src.Len()) {
			copyReloadable(fmt.Sprintf("%s[%d]", path, i), dst.Index(i), src.Index(i))
		}
	}
}

// deepCopy copies v, sharing no slice, map or pointer with it.
func deepCopy(v reflect.Value) reflect.Value {
	out := reflect.New(v.Type()).Elem()
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				out.Field(i).Set(deepCopy(v.Field(i)))
			}
		}
	case reflect.Slice:
		if v.IsNil() {
			return out
		}
		out.Set(reflect.MakeSlice(v.Type(), v.Len(), v.Len()))
		for i := range v.Len() {
			out.Index(i).Set(deepCopy(v.Index(i)))
		}
	case reflect.Map:
		if v.IsNil() {
			return out
		}
		out.Set(reflect.MakeMapWithSize(v.Type(), v.Len()))
		for _, k := range v.MapKeys() {
			out.SetMapIndex(k, deepCopy(v.MapIndex(k)))
		}
	case reflect.Pointer:
		if v.IsNil() {
			return out
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(deepCopy(v.Elem()))
		out.Set(p)
	default:
		out.Set(v)
	}
	return out
}
