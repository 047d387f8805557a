// Package describe puts flow's connections in words: what each step did,
// where a packet died and why a connection got its verdict. flow records
// these as data; the explanation and the printers say them with this
// package, the same way everywhere.
package describe

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
)

// Step says what happened to a packet at one step: "SYN 10.0.0.1:4000 →
// 10.96.0.10:80, conntrack NEW", "DNAT 10.96.0.10:80 → 10.244.0.11:8080",
// "dropped in FORWARD …"; "" if nothing changed.
func Step(s flow.Step) string {
	if s.Drop != nil {
		return Drop(*s.Drop)
	}
	parts := make([]string, 0, len(s.Changes))
	for _, ch := range s.Changes {
		parts = append(parts, change(s, ch))
	}
	return strings.Join(parts, ", ")
}

func change(s flow.Step, ch flow.Change) string {
	what := s.Flags
	if what == "" {
		what = strings.ToUpper(s.Tuple.Proto.String())
	}
	switch ch.Kind {
	case flow.Sent:
		return what + " " + arrow(s.Tuple.Src, s.Tuple.Dst) + cameIn(s, ch)
	case flow.Retransmitted:
		return fmt.Sprintf("%s retransmitted (%d)", s.Flags, ch.N) + cameIn(s, ch)
	case flow.Replied:
		return "reply " + what + " " + arrow(s.Tuple.Src, s.Tuple.Dst) + cameIn(s, ch)
	case flow.NodeSent:
		return "the node sends " + what + " " + arrow(s.Tuple.Src, s.Tuple.Dst)
	case flow.ICMPError:
		m := fmt.Sprintf("ICMP %s %s → %s about %s", s.Flags, s.Tuple.Src.Addr(), s.Tuple.Dst.Addr(), ch.Inner)
		if ch.ByNode {
			m = "the node sends " + m
		}
		return m
	case flow.Tracked:
		m := "conntrack " + s.CT
		if ch.Prior {
			m += " (an existing entry)"
		}
		if s.CTZone != 0 {
			m += fmt.Sprintf(", zone %d", s.CTZone)
		}
		if s.CTMark != 0 {
			m += fmt.Sprintf(", ct mark %#x", s.CTMark)
		}
		return m
	case flow.CTMarked:
		return fmt.Sprintf("ct mark %#x → %#x", ch.OldMark, s.CTMark)
	case flow.DNAT:
		return "DNAT " + arrow(ch.From, ch.To)
	case flow.UnSNAT:
		return "un-SNAT dst " + arrow(ch.From, ch.To)
	case flow.SNAT:
		m := "SNAT src " + arrow(ch.From, ch.To)
		if ch.OldMark != 0 {
			m += fmt.Sprintf(" (packet mark %#x)", ch.OldMark)
		}
		return m
	case flow.UnDNAT:
		return "un-DNAT src " + arrow(ch.From, ch.To)
	case flow.Accepted:
		return "accepted by the filter table"
	case flow.Left:
		return "leaves the node via " + ch.Iface
	case flow.Delivered:
		return "delivered to a local socket"
	case flow.Invalid:
		return "no conntrack entry: INVALID, so no NAT applies"
	case flow.Carried:
		return fmt.Sprintf("%s %s carried in VXLAN %s", what, arrow(s.Tuple.Src, s.Tuple.Dst), arrow(ch.Inner.Src, ch.Inner.Dst)) + cameIn(s, ch)
	case flow.Unpacked:
		return "VXLAN delivered to the overlay's socket, which unpacks it"
	}
	return fmt.Sprintf("change %d", ch.Kind)
}

// cameIn says where a packet came into the node, on a timeline stitched
// from several nodes, where it tells the overlay from the Pod's bridge:
// " in via flannel.1".
func cameIn(s flow.Step, ch flow.Change) string {
	if s.Node == "" || ch.Iface == "" {
		return ""
	}
	return " in via " + ch.Iface
}

// arrow is "from → to". Steps are printed by the thousand: no fmt.
func arrow(from, to netip.AddrPort) string { return from.String() + " → " + to.String() }

// Drop: "dropped in FORWARD between priority -1 and 1: filter table (0)
// (NETFILTER_DROP at nft_do_chain+0x3e8)".
func Drop(d flow.Drop) string { return "dropped " + Place(d) }

// Place: "in FORWARD between … (NETFILTER_DROP at nft_do_chain+0x3e8)".
func Place(d flow.Drop) string {
	if d.Reason == "" {
		return fmt.Sprintf("%s (at %s)", In(d), d.Location)
	}
	return fmt.Sprintf("%s (%s at %s)", In(d), d.Reason, d.Location)
}

// In says where the packet died, without how: "in FORWARD between …".
func In(d flow.Drop) string {
	switch {
	case !d.InNode && d.NetNS == 0:
		return "outside the node, by the receiving socket of the host it was sent to"
	case !d.InNode:
		return fmt.Sprintf("outside the node's network namespace, in net:[%d]", d.NetNS)
	case !d.Placed:
		return "in the node's network namespace before any observer saw it (raw table, defrag or routing)"
	}
	// Past the last hook the packet crossed, the kernel's reason places
	// the drop better than the gap after the last observer.
	if r, ok := cause.Drop(d.Reason); ok && d.Gap.Before == nf.StageNone {
		switch where, past := pastNetfilter[r.Class]; {
		case d.Gap.Hook == nf.PostRouting && past:
			return "after POSTROUTING, " + where
		case d.Gap.Hook == nf.PreRouting && (r.Class == cause.Routing || r.Class == cause.XFRM || r.Class == cause.Size):
			return "after PREROUTING, in routing and forwarding's checks (before FORWARD or INPUT)"
		}
	}
	return "in " + d.Gap.String()
}

// pastNetfilter: where the kernel drops, by the class of its reason, once
// a packet has left netfilter's hooks.
var pastNetfilter = map[cause.Class]string{
	cause.Neighbour: "in the neighbour layer (the next hop's ARP/NDP)",
	cause.Qdisc:     "in the egress queueing discipline",
	cause.Device:    "at the egress device",
	cause.Resources: "at the egress device",
	cause.Size:      "when fragmenting or sending it (MTU)",
	cause.Tunnel:    "in the tunnel's encapsulation",
	cause.Program:   "in an eBPF program or tc action on the way out (the egress device's tc filters, or the sending cgroup's program)",
}

// Dropped names the packet drop d is of: "SYN", or "VXLAN packet carrying
// the SYN" when an overlay packet carrying it died.
func Dropped(c *flow.Conn, d flow.Drop) string {
	if d.Outer.IsValid() {
		return "VXLAN packet carrying the " + c.PacketName(d.Packet)
	}
	return c.PacketName(d.Packet)
}

// Whose names packet n with its sender: "the client's PSH,ACK".
func Whose(c *flow.Conn, n int) string {
	if c.PacketDir(n) == flow.Reply {
		return "the endpoint's " + c.PacketName(n)
	}
	return "the client's " + c.PacketName(n)
}

// Answer names an answer that refused: "ICMP port-unreachable", "a TCP
// RST", else what it was.
func Answer(a flow.Answer) string {
	switch {
	case a.Error:
		return "ICMP " + a.What
	case a.RST:
		return "a TCP RST"
	}
	return a.What
}

// Reason is the verdict in one sentence.
func Reason(c *flow.Conn) string {
	o := c.Outcome
	switch o.Kind {
	case flow.NodeRejected:
		s := "the node itself answered with " + Answer(o.Answer)
		if d := c.Drop; d != nil {
			s += fmt.Sprintf("; the %s was rejected %s", c.PacketName(d.Packet), In(*d))
		}
		return s
	case flow.Refused:
		if o.Answer.RST {
			return fmt.Sprintf("%s answered with a TCP RST: nothing listens on port %d there", o.Answer.From, o.Answer.From.Port())
		}
		return fmt.Sprintf("%s answered %s", o.Answer.From.Addr(), Answer(o.Answer))
	case flow.BrokeDropped:
		s := fmt.Sprintf("%s answered (%s), but then %s was discarded %s", o.Answer.From, o.Answer.What, Whose(c, o.Packet), Place(*c.Drop))
		if c.Drop.Invalid {
			s += ": conntrack had no entry for it (INVALID), so no NAT applied"
		}
		return s + "; nothing came back after it"
	case flow.BrokeUntranslated:
		return fmt.Sprintf("%s answered (%s), but then %s had no conntrack entry (INVALID), so no NAT applied: it left the node via %s still addressed to %s",
			o.Answer.From, o.Answer.What, Whose(c, o.Packet), o.Iface, c.VIP)
	case flow.Translated:
		s := fmt.Sprintf("%s answered (%s) and the reply was translated back to %s", o.Answer.From, o.Answer.What, c.Client)
		if ds := c.Retried(); len(ds) > 0 {
			s += ", " + retries(c, ds)
		}
		return s
	case flow.ReplyDropped:
		return fmt.Sprintf("%s answered, but the reply was discarded %s", o.Answer.From, Place(*c.Drop))
	case flow.Discarded:
		d := c.Drop
		s := fmt.Sprintf("the %s was discarded %s", Dropped(c, *d), Place(*d))
		if c.SYNs > 1 {
			s += fmt.Sprintf("; %d SYNs sent, %d drops seen", c.SYNs, len(c.Drops))
		}
		return s
	case flow.Untranslated:
		return fmt.Sprintf("the packet left the node via %s still addressed to %s: no DNAT translated the Service address", o.Iface, c.VIP)
	case flow.Unanswered:
		to := "forwarded to "
		if o.Local {
			to = "delivered locally to "
		}
		s := fmt.Sprintf("%s%s, no reply within %s", to, target(c), o.Waited)
		if c.SYNs > 1 {
			s += fmt.Sprintf(" (%d SYNs sent)", c.SYNs)
		}
		return s
	case flow.Vanished:
		s := "the packet vanished on the node without a reported drop"
		if o.Seen {
			s += " after " + o.Last.String()
		}
		return s
	case flow.Crossing:
		what := "the " + c.PacketName(o.Packet)
		if o.Dir == flow.Reply {
			what = fmt.Sprintf("%s answered (%s) and its reply", o.Answer.From, o.Answer.What)
		}
		return fmt.Sprintf("%s left %s via %s and never reached %s, which traced it: lost between the nodes", what, o.From, o.Iface, o.To)
	}
	return string(c.Verdict)
}

// retries says what the tries before the answer met: "after 3 SYNs were
// dropped in PREROUTING … (NOT_SPECIFIED at br_handle_frame_finish+0x392);
// the dropped packets went to 10.244.0.12:8080, the retransmission that got
// through to 10.244.0.11:8080".
func retries(c *flow.Conn, ds []*flow.Drop) string {
	what := "the " + c.PacketName(ds[0].Packet) + " was"
	if len(ds) > 1 {
		what = fmt.Sprintf("%d %ss were", len(ds), c.PacketName(ds[0].Packet))
	}
	s := fmt.Sprintf("after %s dropped %s", what, Place(*ds[0]))
	for _, d := range ds[1:] {
		if Place(*d) != Place(*ds[0]) {
			s += fmt.Sprintf(", then %s", Place(*d))
			break
		}
	}
	if to := ds[0].Endpoint; to.IsValid() && to != c.Endpoint {
		s += fmt.Sprintf("; the dropped packets went to %s, the retransmission that got through to %s", to, c.Endpoint)
	}
	return s
}

// target is where the client's packets are delivered: the endpoint after
// DNAT, else the address asked for.
func target(c *flow.Conn) string {
	if c.Endpoint.IsValid() {
		return c.Endpoint.String()
	}
	return c.VIP.String()
}

// DNS is the DNS a connection carried, each question with its answer:
// "A web.shop.svc.cluster.local. → NOERROR (1 answer), AAAA … → NXDOMAIN";
// a question without an answer "→ no answer"; "" without DNS read.
func DNS(c *flow.Conn) string {
	var parts []string
	answered := map[uint16]bool{}
	for _, q := range c.DNS {
		if q.Response {
			continue
		}
		s := q.String() + " → no answer"
		if r, ok := q.AnswerIn(c.DNS); ok {
			answered[r.ID] = true
			s = q.String() + " → " + strings.TrimPrefix(r.String(), r.Type+" "+r.Name+" ")
		}
		parts = append(parts, s)
	}
	for _, r := range c.DNS {
		if r.Response && !answered[r.ID] {
			parts = append(parts, "answer "+r.String())
		}
	}
	return strings.Join(parts, ", ")
}
