package proxy

import (
	"fmt"
	"testing"
)

// Sessions with the same settings share a tag, so a pooled server
// connection moving between them skips the settings comparison; different
// settings never share one, or a server would keep the wrong settings.
func TestParamsTagOf(t *testing.T) {
	t.Cleanup(func() { // leave other tests a table with room
		sharedTags.Lock()
		clear(sharedTags.m)
		sharedTags.Unlock()
	})
	a := map[string]string{"application_name": "'pgbench'", "datestyle": "'ISO, MDY'"}
	b := map[string]string{"datestyle": "'ISO, MDY'", "application_name": "'pgbench'"}
	if paramsTagOf(a) != paramsTagOf(b) {
		t.Fatal("equal settings got different tags")
	}
	c := map[string]string{"application_name": "'other'", "datestyle": "'ISO, MDY'"}
	if paramsTagOf(a) == paramsTagOf(c) {
		t.Fatal("different values share a tag")
	}
	// Key/value boundaries are part of the identity: "ab"="c" is not "a"="bc".
	if paramsTagOf(map[string]string{"ab": "c"}) == paramsTagOf(map[string]string{"a": "bc"}) {
		t.Fatal("settings that differ only in where the key ends share a tag")
	}
	if paramsTagOf(map[string]string{}) == paramsTagOf(a) {
		t.Fatal("no settings and some settings share a tag")
	}
	// Past the table's bound, tags are fresh (never shared, so still safe).
	for i := 0; i <= maxSharedTags; i++ {
		paramsTagOf(map[string]string{"application_name": fmt.Sprintf("'app%d'", i)})
	}
	u := map[string]string{"application_name": "'unique-after-the-table-is-full'"}
	if x, y := paramsTagOf(u), paramsTagOf(u); x == y {
		t.Fatal("a full table still hands out shared tags")
	}
	if paramsTagOf(a) != paramsTagOf(b) {
		t.Fatal("settings shared before the table filled lost their tag")
	}
}
