package admin

import (
	"slices"
	"strconv"
	"strings"
)

// SlotRanges renders slot numbers compactly, sorted and deduplicated:
// "0-85,200,202-203" ("" for none). shardctl and the console both print
// slots this way.
func SlotRanges(slots []int) string {
	s := slices.Compact(slices.Sorted(slices.Values(slots)))
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(s[i]))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.Itoa(s[j]))
		}
		i = j + 1
	}
	return b.String()
}
