package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/shardproxy/shardproxy/admin"
)

// humanBytes renders n in IEC units: "512 B", "1.5 KiB", "12.0 MiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		if v < unit && v > -unit {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return fmt.Sprintf("%.1f PiB", v/unit)
}

// humanCount renders a row count compactly for progress lines: exact
// below 10,000, then "12.3k", "4.5M", "1.2G".
func humanCount(n int64) string {
	if n < 10000 && n > -10000 {
		return strconv.FormatInt(n, 10)
	}
	v := float64(n)
	for _, u := range []string{"k", "M", "G"} {
		v /= 1000
		if v < 1000 && v > -1000 {
			return fmt.Sprintf("%.1f%s", v, u)
		}
	}
	return fmt.Sprintf("%.1fT", v/1000)
}

// compactSlots renders slot numbers as sorted ranges: "3-7,12".
func compactSlots(slots []int) string {
	if len(slots) == 0 {
		return "-"
	}
	return admin.SlotRanges(slots)
}

// percent is done/total as "42%", "-" when the total is unknown.
func percent(done, total int64) string {
	if total <= 0 {
		return "-"
	}
	p := float64(done) / float64(total) * 100
	if p > 100 {
		p = 100
	}
	return fmt.Sprintf("%.0f%%", p)
}

// seconds renders a duration in seconds rounded to the second ("1m20s"),
// "-" when zero (unknown).
func seconds(s float64) string {
	if s <= 0 {
		return "-"
	}
	return (time.Duration(s*float64(time.Second)) + time.Second/2).Truncate(time.Second).String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + many
}
