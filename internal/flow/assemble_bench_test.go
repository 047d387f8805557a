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
	shift := func(ap netip.AddrPort, round int) netip.AddrPort {
		if ap.Addr() != client {
			return ap
		}
		return netip.AddrPortFrom(ap.Addr(), ap.Port()+uint16(round))
	}
	b.ReportAllocs()
	n := 0
	for round := 0; b.Loop(); round++ {
		for _, ev := range evs {
			ev.Time += uint64(round) * span
			for _, t := range []*nf.Tuple{&ev.Tuple, &ev.CT.Orig, &ev.CT.Reply, &ev.ICMP.Inner} {
				t.Src, t.Dst = shift(t.Src, round), shift(t.Dst, round)
			}
			a.Add(ev)
			n++
		}
		a.Tick(evs[len(evs)-1].Time + uint64(round+1)*span)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}
