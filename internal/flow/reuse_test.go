package flow_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/describe"
	. "github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
)

// render is what a connection shows, its ID left out (it counts on).
func render(c *Conn) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s→%s endpoint %s snat %s packets %v bytes %v syns %d closed %q drops %d: %s\n", c.Verdict,
		c.Proto, c.Client, c.VIP, c.Endpoint, c.SNAT, c.Packets, c.Bytes, c.SYNs, c.Closed, len(c.Drops), describe.Reason(c))
	for _, s := range c.Steps {
		fmt.Fprintf(&b, "  %d %s %s %s %s %s\n", s.Packet, s.Dir, s.Hook, s.Stage, s.CT, describe.Step(s))
	}
	return b.String()
}

// replay assembles evs after the events of warm (times before evs), and
// returns what evs' connections show; with release, each connection is
// released once rendered, as a live trace does once it has printed one.
func replay(warm, evs []nf.Event, release bool) []string {
	a := New(Options{NodeNetNS: nodeNetNS(evs)})
	var out []string
	take := func(cs []*Conn, keep bool) {
		for _, c := range cs {
			if keep {
				out = append(out, render(c))
			}
			if release {
				a.Release(c)
			}
		}
	}
	for _, ev := range warm {
		take(a.Tick(ev.Time), false)
		take(a.Add(&ev), false)
	}
	take(a.Flush(warm[len(warm)-1].Time+1), false)
	for _, ev := range evs {
		take(a.Tick(ev.Time), true)
		take(a.Add(&ev), true)
	}
	take(a.Flush(evs[len(evs)-1].Time+1), true)
	return out
}

// A connection made in the memory of released ones shows exactly what it
// shows in fresh memory: nothing of theirs (steps, drops, changes, state)
// is left in it. The lab's recording has every verdict; its connections
// are assembled after a round of the same traffic on other client ports,
// all released.
func TestReusedMemoryShowsNothingOfTheLast(t *testing.T) {
	evs := loadEvents(t, "lab")
	span := evs[len(evs)-1].Time - evs[0].Time + 1
	warm := make([]nf.Event, len(evs))
	for i, ev := range evs {
		ev.Time -= span
		shiftTuple(&ev.Tuple, 1)
		shiftTuple(&ev.CT.Orig, 1)
		shiftTuple(&ev.CT.Reply, 1)
		shiftTuple(&ev.ICMP.Inner, 1)
		warm[i] = ev
	}
	fresh, reused := replay(warm, evs, false), replay(warm, evs, true)
	if len(fresh) < 5 {
		t.Fatalf("%d connections", len(fresh))
	}
	if strings.Join(fresh, "") != strings.Join(reused, "") {
		t.Errorf("in reused memory:\n%s\nin fresh memory:\n%s", strings.Join(reused, ""), strings.Join(fresh, ""))
	}
}

// A connection finished while the assembler still lists it (a new one on
// its addresses) and released at once is not given to another connection
// until the assembler has let go of it too.
func TestReleasedWhileListedIsNotReusedYet(t *testing.T) {
	a := New(Options{NodeNetNS: nodeNS})
	est := ct(nf.CTNew, synOrig, synReply)
	s := &seq{}
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, est)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synReply, nf.SYN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.FIN|nf.ACK, ct(nf.CTEstablished, synOrig, synReply))
	s.hook(4, nf.PreRouting, nf.StagePostConntrack, synReply, nf.FIN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	s.hook(5, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, est) // the same addresses again
	other := tup("10.0.0.9:4000", "10.96.0.10:80", nf.TCP)
	s.hook(6, nf.PreRouting, nf.StagePostConntrack, other, nf.SYN, nf.Conntrack{ID: 78, Info: nf.CTNew, Orig: other, Reply: other.Reverse()})
	var first *Conn
	for i, ev := range s.evs {
		done := a.Add(&ev)
		for _, c := range done {
			first = c
			a.Release(c)
		}
		if i == len(s.evs)-2 && first == nil {
			t.Fatal("the new SYN on its addresses did not finish the first connection")
		}
	}
	rest := a.Flush(s.t + 1)
	if len(rest) != 2 {
		t.Fatalf("%d connections followed at the end, want 2", len(rest))
	}
	for _, c := range rest {
		if c == first {
			t.Errorf("connection %d took the memory of connection %d while the assembler still listed it", c.ID, first.ID)
		}
	}
	if first.ID != 1 || first.Verdict != Answered || rest[0].ID != 2 || rest[1].ID != 3 {
		t.Errorf("first %d %s, then %d and %d", first.ID, first.Verdict, rest[0].ID, rest[1].ID)
	}
}
