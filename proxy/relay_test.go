package proxy

import "testing"

// The desync check must accept every answer PostgreSQL gives and refuse
// answers that belong to another message, or a session would relay
// another client's results.
func TestAnswers(t *testing.T) {
	ok := map[byte]string{
		pParse:         "1",
		pBind:          "2",
		pClose:         "3",
		pDescribeStmt:  "tTn",
		pDescribePortl: "Tn",
		pExecute:       "DCIsGHdc",
		pSync:          "Z",
		pQuery:         "TDCIZGHdcV",
	}
	all := "123tTnDCIsGHWdcZV"
	for kind, good := range ok {
		for i := 0; i < len(all); i++ {
			typ := all[i]
			want := false
			for j := 0; j < len(good); j++ {
				if good[j] == typ {
					want = true
				}
			}
			if typ == 'W' && (kind == pExecute || kind == pQuery) {
				want = true
			}
			if got := answers(kind, typ); got != want {
				t.Errorf("answers(%q, %q) = %v, want %v", kind, typ, got, want)
			}
		}
		for _, async := range []byte{'N', 'A', 'S', 'E'} {
			if !answers(kind, async) {
				t.Errorf("%q must be allowed while %q is pending", async, kind)
			}
		}
	}
}
