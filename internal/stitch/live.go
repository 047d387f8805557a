package stitch

import (
	"slices"
	"time"

	"github.com/svctrace/svctrace/internal/report"
)

// Live stitches connections as the nodes tracing at once report them
// (kubectl svctrace): a node's report of a connection waits, up to Hold
// after the last of its parts came, for the other nodes' reports of it,
// then the stitched connection is ready. Times are on the clock of the
// first node heard from. Not safe for concurrent use.
type Live struct {
	Hold    time.Duration
	views   []View
	arrived [][]time.Time // when each of views[i].Conns came
	nextID  int
	ids     map[seenAs]int // the number each node's report was printed under
}

type seenAs struct {
	node string
	id   int
}

// Clock tells the node's clock: its wall-clock time at monotonic 0 (-o
// parts' clock line), heard at now, from when it traces.
func (l *Live) Clock(node string, wall, now time.Time) {
	v := &l.views[l.view(node)]
	v.Wall, v.Mono, v.From = wall, 0, uint64(max(0, now.Sub(wall)))
}

// view is the index of node's view, added if new.
func (l *Live) view(node string) int {
	if i := slices.IndexFunc(l.views, func(v View) bool { return v.Node == node }); i >= 0 {
		return i
	}
	l.views = append(l.views, View{Node: node})
	l.arrived = append(l.arrived, nil)
	return len(l.views) - 1
}

// Wall is the wall-clock time of monotonic time m on the first node's
// clock, which the stitched connections' times are on.
func (l *Live) Wall(m uint64) time.Time {
	if len(l.views) == 0 {
		return time.Time{}
	}
	return l.views[0].Wall.Add(time.Duration(m))
}

// Add takes a node's report of a connection, come at now.
func (l *Live) Add(node string, c report.Conn, now time.Time) {
	i := l.view(node)
	l.views[i].Conns = append(l.views[i].Conns, c)
	l.arrived[i] = append(l.arrived[i], now)
}

// Ready returns the stitched connections all of whose parts came at least
// Hold before now, numbered on from the last returned.
func (l *Live) Ready(now time.Time) []report.Conn {
	return l.take(func(t time.Time) bool { return now.Sub(t) >= l.Hold })
}

// Flush returns every connection waiting: the trace is over.
func (l *Live) Flush() []report.Conn {
	return l.take(func(time.Time) bool { return true })
}

func (l *Live) take(old func(time.Time) bool) []report.Conn {
	if l.ids == nil {
		l.ids = map[seenAs]int{}
	}
	res := Stitch(l.views)
	var out []report.Conn
	gone := make([][]bool, len(l.views))
	for i := range l.views {
		gone[i] = make([]bool, len(l.views[i].Conns))
	}
	for k, c := range res.Conns {
		parts := res.Parts[k]
		if !slices.ContainsFunc(parts, func(p [2]int) bool { return !old(l.arrived[p[0]][p[1]]) }) {
			head := l.views[parts[0][0]].Conns[parts[0][1]]
			l.nextID++
			c.ID, c.Continues = l.nextID, l.ids[seenAs{l.views[parts[0][0]].Node, head.Continues}]
			for _, p := range parts {
				gone[p[0]][p[1]] = true
				l.ids[seenAs{l.views[p[0]].Node, l.views[p[0]].Conns[p[1]].ID}] = c.ID
			}
			out = append(out, c)
		}
	}
	for i := range l.views {
		keep := 0
		for j := range l.views[i].Conns {
			if !gone[i][j] {
				l.views[i].Conns[keep], l.arrived[i][keep] = l.views[i].Conns[j], l.arrived[i][j]
				keep++
			}
		}
		clear(l.views[i].Conns[keep:])
		l.views[i].Conns, l.arrived[i] = l.views[i].Conns[:keep], l.arrived[i][:keep]
	}
	return out
}
