package flow_test

import (
	"net/netip"
	"testing"

	. "github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
)

// BenchmarkAssemble replays the lab recording over and over, each round on
// fresh client ports so every round makes new connections. It reports
// events per second through Add and Tick.
func BenchmarkAssemble(b *testing.B) {
	evs := loadEvents(b, "lab")
	a := New(Options{NodeNetNS: nodeNetNS(evs)})
	span := evs[len(evs)-1].Time - evs[0].Time + 1
	b.ReportAllocs()
	n := 0
	for round := 0; b.Loop(); round++ {
		for _, ev := range evs {
			ev.Time += uint64(round) * span
			// One tuple at a time: a slice of pointers into ev would move
			// ev to the heap, and the benchmark would count its copies.
			shiftTuple(&ev.Tuple, round)
			shiftTuple(&ev.CT.Orig, round)
			shiftTuple(&ev.CT.Reply, round)
			shiftTuple(&ev.ICMP.Inner, round)
			for _, c := range a.Add(&ev) {
				a.Release(c)
			}
			n++
		}
		for _, c := range a.Tick(evs[len(evs)-1].Time + uint64(round+1)*span) {
			a.Release(c) // as a live trace does once a connection is printed
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// shiftTuple moves the client's ports of t on by round.
func shiftTuple(t *nf.Tuple, round int) {
	shift := func(ap netip.AddrPort) netip.AddrPort {
		if ap.Addr() != client {
			return ap
		}
		return netip.AddrPortFrom(ap.Addr(), ap.Port()+uint16(round))
	}
	t.Src, t.Dst = shift(t.Src), shift(t.Dst)
}
