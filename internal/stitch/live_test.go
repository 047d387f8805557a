package stitch

import (
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// Live: a node's report waits for the other node's report of the same
// connection, up to Hold after the last came; then both are one
// connection, numbered on.
func TestLive(t *testing.T) {
	node1, node2 := healthy()
	vs := views(nil, nil)
	now := wall // node-1 at monotonic 1 ms: both nodes trace from then
	l := &Live{Hold: 2 * time.Second}
	if cs := l.Ready(now); len(cs) != 0 { // no node heard from yet
		t.Fatalf("ready with no node: %d", len(cs))
	}
	// Each node's clock: its wall time at monotonic 0.
	l.Clock("node-1", vs[0].Wall.Add(-time.Duration(vs[0].Mono)), now)
	l.Clock("node-2", vs[1].Wall.Add(-time.Duration(vs[1].Mono)), now)
	l.Add("node-1", node1, now)
	if cs := l.Ready(now.Add(time.Second)); len(cs) != 0 {
		t.Fatalf("ready before the hold: %d connections", len(cs))
	}
	l.Add("node-2", node2, now.Add(time.Second))
	if cs := l.Ready(now.Add(2500 * time.Millisecond)); len(cs) != 0 {
		t.Fatalf("ready before the hold after node-2's report: %d connections", len(cs))
	}
	cs := l.Ready(now.Add(3 * time.Second))
	if len(cs) != 1 || cs[0].ID != 1 || strings.Join(cs[0].Nodes, ",") != "node-1,node-2" || cs[0].Verdict != flow.Answered {
		t.Fatalf("ready: %d connections, want #1 across node-1,node-2 answered", len(cs))
	}
	if got := l.Wall(cs[0].Start); !got.Equal(wall.Add(time.Duration(node1.Start - vs[0].Mono))) {
		t.Errorf("it started at %v on node-1's clock", got)
	}
	// node-1 reports the client's retransmission later, as continuing its
	// connection 1: the stitched number it was printed under.
	again := conn(2, flow.NoReply, unanswered, onNode2, hop{packet: 1, in: 9000, out: 9098, src: client, dst: vip, dnat: pod, left: "flannel.1"})
	again.Continues = 1
	l.Add("node-1", again, now.Add(4*time.Second))
	cs = l.Flush()
	if len(cs) != 1 || cs[0].ID != 2 || cs[0].Continues != 1 {
		t.Fatalf("flushed %d connections, want #2 continuing #1: %+v", len(cs), cs)
	}
	// node-2 traced meanwhile and saw nothing of it: lost between.
	if cs[0].Explanation.Cause != report.LostBetweenNodes {
		t.Errorf("cause %s, want lost-between-nodes", cs[0].Explanation.Cause)
	}
	if cs := l.Flush(); len(cs) != 0 {
		t.Errorf("flushed twice: %d", len(cs))
	}
}
