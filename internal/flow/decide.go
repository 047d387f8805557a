package flow

import (
	"fmt"
	"time"

	"github.com/svctrace/svctrace/internal/tracer"
)

// decide gives a finished connection its verdict and the sentence that
// explains it. Order matters: an answer from the node or the destination
// settles it; then a drop on the node; then where the packets went.
func (a *Assembler) decide(c *Conn, now uint64) {
	st := &c.st
	nodeDrop, otherDrop := lastDrops(c.Drops)
	waited := time.Duration(now - c.Start).Round(100 * time.Millisecond)

	switch {
	case st.reject != nil && (st.reply == nil || st.reject.first.Time < st.reply.first.Time):
		c.Verdict = Rejected
		c.Why = fmt.Sprintf("the node itself answered with %s", answer(st.reject.first))
		if d := firstDrop(c.Drops, Original); d != nil {
			c.Drop = d
			c.Why += fmt.Sprintf("; the %s was rejected %s", c.PacketName(d.Packet), d.in())
		}

	case st.reply != nil && st.reply.isRefusal():
		c.Verdict = Reset
		r := st.reply.first
		if r.TCPFlags.Has(tracer.RST) {
			c.Why = fmt.Sprintf("%s answered with a TCP RST: nothing listens on port %d there",
				r.Tuple.Src, r.Tuple.Src.Port())
		} else {
			c.Why = fmt.Sprintf("%s answered %s", r.Tuple.Src.Addr(), answer(r))
		}

	case st.reply != nil && st.troubled > st.replyPassed:
		a.broken(c)

	case st.reply != nil && (st.replyOut || replyDrop(c.Drops) == nil):
		c.Verdict = Answered
		c.Why = fmt.Sprintf("%s answered (%s) and the reply was translated back to %s",
			st.reply.first.Tuple.Src, packetWhat(st.reply.first), c.Client)
		if ds := c.Retried(); len(ds) > 0 {
			c.Why += ", " + c.retries(ds)
		}

	case st.reply != nil:
		c.Verdict = Dropped
		c.Drop = replyDrop(c.Drops)
		c.Why = fmt.Sprintf("%s answered, but the reply was discarded %s", st.reply.first.Tuple.Src, c.Drop.place())

	case nodeDrop != nil && !st.leftUntranslated:
		c.Verdict = Dropped
		c.Drop = nodeDrop
		c.Why = c.discarded(nodeDrop)

	case st.leftUntranslated:
		c.Verdict = NotTranslated
		c.Why = fmt.Sprintf("the packet left the node via %s still addressed to %s: no DNAT translated the Service address",
			a.ifName(st.outIf), c.VIP)

	case otherDrop != nil:
		c.Verdict = Dropped
		c.Drop = otherDrop
		c.Why = c.discarded(otherDrop)

	case st.leftOut || st.delivered:
		c.Verdict = NoReply
		to := "forwarded to " + c.target().String()
		if st.delivered {
			to = "delivered locally to " + c.target().String()
		}
		c.Why = fmt.Sprintf("%s, no reply within %s%s", to, waited, tries(c))

	default:
		c.Verdict = Dropped
		c.Why = "the packet vanished on the node without a reported drop" + vanishedAfter(c)
	}
}

// broken decides a connection that was answered, then came to grief: a
// later packet was dropped on the node, or sent on untranslated, and no
// reply passed after it.
func (a *Assembler) broken(c *Conn) {
	st := &c.st
	c.Why = fmt.Sprintf("%s answered (%s), ", st.reply.first.Tuple.Src, packetWhat(st.reply.first))
	if st.broke != 0 {
		d := &c.Drops[st.broke-1]
		c.Verdict, c.Drop = Dropped, d
		c.Why += fmt.Sprintf("but then %s was discarded %s", c.Whose(d.Packet), d.place())
		if d.Invalid {
			c.Why += ": conntrack had no entry for it (INVALID), so no NAT applied"
		}
		c.Why += "; nothing came back after it"
		return
	}
	pk := st.strayed
	c.Verdict = NotTranslated
	c.Why += fmt.Sprintf("but then %s had no conntrack entry (INVALID), so no NAT applied: it left the node via %s still addressed to %s",
		c.Whose(pk.n), a.ifName(pk.last.OutIf), c.VIP)
}

// retries says what the tries before the answer met: "after 3 SYNs were
// dropped in PREROUTING … (NOT_SPECIFIED at br_handle_frame_finish+0x392);
// they had gone to 10.244.0.12:8080, the answer came from 10.244.0.11:8080".
func (c *Conn) retries(ds []*Drop) string {
	what := "the " + c.PacketName(ds[0].Packet) + " was"
	if len(ds) > 1 {
		what = fmt.Sprintf("%d %ss were", len(ds), c.PacketName(ds[0].Packet))
	}
	s := fmt.Sprintf("after %s dropped %s", what, ds[0].place())
	for _, d := range ds[1:] {
		if d.place() != ds[0].place() {
			s += fmt.Sprintf(", then %s", d.place())
			break
		}
	}
	if to := ds[0].Endpoint; to.IsValid() && to != c.Endpoint {
		s += fmt.Sprintf("; the dropped packets went to %s, the retransmission that got through to %s", to, c.Endpoint)
	}
	return s
}

// Whose names packet n with its sender: "the client's PSH,ACK".
func (c *Conn) Whose(n int) string {
	for _, s := range c.Steps {
		if s.Packet == n && s.Dir == Reply {
			return "the endpoint's " + c.PacketName(n)
		}
	}
	return "the client's " + c.PacketName(n)
}

// discarded explains a drop: "the SYN was discarded in FORWARD … (2 SYNs
// sent, 2 dropped)".
func (c *Conn) discarded(d *Drop) string {
	s := fmt.Sprintf("the %s was discarded %s", c.PacketName(d.Packet), d.place())
	if c.SYNs > 1 {
		s += fmt.Sprintf("; %d SYNs sent, %d drops seen", c.SYNs, len(c.Drops))
	}
	return s
}

// PacketName names packet n of the connection by what it was ("SYN"), from
// its first step, or "packet".
func (c *Conn) PacketName(n int) string {
	for _, s := range c.Steps {
		if s.Packet == n && s.Kind == tracer.KindHook && s.Flags != "" {
			return s.Flags
		}
	}
	return "packet"
}

// answer names an error packet: "ICMP port-unreachable" or "a TCP RST".
func answer(ev tracer.Event) string {
	if ev.ICMP.IsError() {
		return "ICMP " + ev.ICMP.Describe(ev.Tuple.Proto)
	}
	if ev.TCPFlags.Has(tracer.RST) {
		return "a TCP RST"
	}
	return packetWhat(ev)
}

func tries(c *Conn) string {
	if c.SYNs > 1 {
		return fmt.Sprintf(" (%d SYNs sent)", c.SYNs)
	}
	return ""
}

func vanishedAfter(c *Conn) string {
	for i := len(c.Steps) - 1; i >= 0; i-- {
		if s := c.Steps[i]; s.Kind == tracer.KindHook {
			return " after " + tracer.GapAfter(s.Hook, s.Stage).String()
		}
	}
	return ""
}

// lastDrops returns the last drop on the node and the last elsewhere.
func lastDrops(ds []Drop) (node, other *Drop) {
	for i := range ds {
		if ds[i].InNode {
			node = &ds[i]
		} else {
			other = &ds[i]
		}
	}
	return node, other
}

func firstDrop(ds []Drop, d Dir) *Drop {
	for i := range ds {
		if ds[i].Dir == d && ds[i].InNode {
			return &ds[i]
		}
	}
	return nil
}

func replyDrop(ds []Drop) *Drop {
	for i := range ds {
		if ds[i].Dir == Reply {
			return &ds[i]
		}
	}
	return nil
}
