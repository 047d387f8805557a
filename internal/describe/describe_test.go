package describe

import (
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
)

// Every kind of change and of outcome has its words.
func TestEveryKindIsSaid(t *testing.T) {
	for k := flow.Sent; k <= flow.Invalid; k++ {
		if s := change(flow.Step{}, flow.Change{Kind: k}); strings.HasPrefix(s, "change ") {
			t.Errorf("change kind %d has no words", k)
		}
	}
	for k := flow.NodeRejected; k <= flow.Vanished; k++ {
		c := &flow.Conn{Verdict: "?", Outcome: flow.Outcome{Kind: k}, Drop: &flow.Drop{}}
		if s := Reason(c); s == "?" {
			t.Errorf("outcome kind %d has no words", k)
		}
	}
}
