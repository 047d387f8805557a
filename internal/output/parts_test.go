package output

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
)

// -o parts carries every report in full: read back, each is what was
// written (the lab's connections, a stitched one's nodes, an overlay
// packet's change, an explanation), after the node's clock.
func TestPartsRoundTrip(t *testing.T) {
	var b bytes.Buffer
	wall := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	p, err := New(FormatParts, &b, Options{Wall: func(m uint64) time.Time { return wall.Add(time.Duration(m)) }})
	if err != nil {
		t.Fatal(err)
	}
	var want []report.Conn
	for _, c := range labConns(t) {
		want = append(want, named(c, 3))
	}
	outer := nf.Tuple{Proto: nf.UDP, Src: netip.MustParseAddrPort("10.97.1.1:40000"), Dst: netip.MustParseAddrPort("10.97.1.2:8472")}
	x := *want[0].Conn
	x.Nodes = []string{"node-1", "node-2"}
	x.Steps = append(append([]flow.Step(nil), x.Steps...), flow.Step{Time: x.End, Dir: flow.Reply, Kind: nf.KindHook, Hook: nf.LocalOut, Node: "node-2",
		Changes: []flow.Change{{Kind: flow.Carried, Inner: &outer, Iface: "eth0"}}})
	want = append(want, report.Conn{Conn: &x, Explanation: &report.Explanation{Service: "lab/web:http", Cause: report.RuleDrop, Evidence: []string{"a fact"}}})
	d := report.Diagnosis{Service: "lab/web", Node: "node-1", Findings: []report.Finding{{Code: report.Healthy, Summary: "fine"}}}
	p.Diagnosis(d)
	for _, c := range want {
		p.Conn(c)
	}
	p.Summary(Summary{Conns: len(want), Lost: 3})

	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != len(want)+3 {
		t.Fatalf("%d lines, want clock, diagnosis, %d connections, summary", len(lines), len(want))
	}
	var got []report.Conn
	for i, l := range lines {
		part, err := ReadPart([]byte(l))
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		switch {
		case i == 0 && (part.Kind != "clock" || !part.Clock.Equal(wall)):
			t.Errorf("first line %s %v, want the clock at %v", part.Kind, part.Clock, wall)
		case i == 1 && (part.Diagnosis == nil || !reflect.DeepEqual(*part.Diagnosis, d)):
			t.Errorf("diagnosis %+v, want %+v", part.Diagnosis, d)
		case part.Kind == "connection":
			got = append(got, *part.Conn)
		case i == len(lines)-1 && (part.Summary == nil || part.Summary.Lost != 3):
			t.Errorf("summary %+v", part.Summary)
		}
	}
	// Compared as written again: the assembler's own state (unexported)
	// is not part of a report.
	for i := range want {
		g, _ := json.Marshal(got[i])
		w, _ := json.Marshal(want[i])
		if !bytes.Equal(g, w) {
			t.Errorf("connection %d read back differs:\n got %s\nwant %s", i, g, w)
		}
	}
	last := got[len(got)-1]
	if ch, ok := last.Steps[len(last.Steps)-1].Has(flow.Carried); !ok || *ch.Inner != outer || last.Explanation.Cause != report.RuleDrop {
		t.Errorf("the overlay packet's step or the explanation did not come back: %+v", last.Steps[len(last.Steps)-1])
	}
	if _, err := ReadPart([]byte(`{"kind":"connection"`)); err == nil {
		t.Error("a cut line was read")
	}
}
