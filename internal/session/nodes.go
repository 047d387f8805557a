package session

import (
	"fmt"
	"path/filepath"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/stitch"
)

// Recording is one node's recording to analyse with others'.
type Recording struct {
	Path string
	Rec  *record.Recording
	// Corrupt: it was read up to a corruption.
	Corrupt bool
}

// ReplayNodes prints what recordings made on several nodes at once saw:
// each one's diagnosis, then every connection stitched across the nodes
// it crossed (internal/stitch), for the connections keep keeps, on the
// first recording's clock; then the summary and the analysis of the
// stitched connections.
func ReplayNodes(o IO, recs []Recording, keep func(*flow.Conn) bool) error {
	views := make([]stitch.View, len(recs))
	for i, r := range recs {
		m := r.Rec.Meta
		v := &views[i]
		v.Node, v.Wall, v.Mono, v.From = nodeName(r), m.Wall, m.Mono, m.Mono
		for j := range views[:i] {
			if views[j].Node == v.Node {
				return fmt.Errorf("%s and %s are both recordings of node %s: name one recording per node", recs[j].Path, r.Path, v.Node)
			}
		}
	}
	first := recs[0].Rec.Meta
	p, err := o.Printer(output.Options{Wall: first.WallClock()})
	if err != nil {
		return err
	}
	var sum output.Summary
	for i, r := range recs {
		v := &views[i]
		got, err := replay(o, r.Path, r.Rec, r.Corrupt, replayTo{p: p, collect: func(c report.Conn) { v.Conns = append(v.Conns, c) }})
		if err != nil {
			return err
		}
		v.To = got.last
		sum.Lost += got.res.Lost
		sum.Orphans += got.res.Orphans
	}
	res := stitch.Stitch(views)
	for i, v := range views[1:] {
		how := "from its wall clock (no connection crossed both ways)"
		if res.Aligned[i+1] {
			how = "from the packets that crossed both ways"
		}
		o.say("%s's clock put on %s's %s: %s off its wall clock", v.Node, views[0].Node, how, res.Skew[i+1])
	}
	var an output.Analysis
	for _, c := range res.Conns {
		if keep(c.Conn) {
			sum.Count(c.Conn)
			an.Count(c)
			p.Conn(c)
		}
	}
	p.Summary(sum)
	output.WriteAnalysis(p, &an)
	return pcapErr(p)
}

// nodeName is the node a recording was made on: its --node, else the
// host's name, else the file's.
func nodeName(r Recording) string {
	switch m := r.Rec.Meta; {
	case m.Node != "":
		return m.Node
	case m.Host != "":
		return m.Host
	}
	return filepath.Base(r.Path)
}
