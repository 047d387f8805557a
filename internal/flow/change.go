package flow

import (
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
)

// ChangeKind is what a Change records.
type ChangeKind uint8

// What a packet is when first seen, then what a stage did to it.
const (
	// Sent: a new packet from the client (the step's tuple and flags).
	Sent ChangeKind = iota + 1
	// Retransmitted: the client sent its SYN again, for the N-th time.
	Retransmitted
	// Replied: a new packet towards the client from the destination.
	Replied
	// NodeSent: a new packet towards the client made by the node itself
	// (a REJECT's TCP RST).
	NodeSent
	// ICMPError: an ICMP error about the tuple Inner; ByNode if the node
	// sent it.
	ICMPError
	// Tracked: the packet has its conntrack entry (the step's CT, CTZone,
	// CTMark); Prior if the entry was made before this packet.
	Tracked
	// CTMarked: the entry's mark changed from OldMark to the step's CTMark.
	CTMarked
	// DNAT: the client's packet's destination From → To.
	DNAT
	// UnSNAT: a reply's destination From → To.
	UnSNAT
	// SNAT: the client's packet's source From → To; OldMark is the packet
	// mark the nat table saw.
	SNAT
	// UnDNAT: a reply's source From → To.
	UnDNAT
	// Accepted: the filter table let the packet pass.
	Accepted
	// Left: the packet leaves the node via Iface.
	Left
	// Delivered: the packet goes to a local socket.
	Delivered
	// Invalid: the packet passed conntrack without an entry (INVALID), so
	// no NAT applies to it.
	Invalid
	// Carried: an overlay packet (VXLAN) Inner carries the step's packet,
	// first seen here (made here, in OUTPUT; come in via Iface, in
	// PREROUTING). Its steps are not the connection's packets: they have
	// packet number 0.
	Carried
	// Unpacked: the overlay packet reached the node's overlay socket,
	// which takes out the packet it carries.
	Unpacked
)

// Change is one thing a step shows. Printers put it in words.
type Change struct {
	Kind     ChangeKind
	Prior    bool           // Tracked
	ByNode   bool           // ICMPError
	OldMark  uint32         // CTMarked, SNAT
	N        int32          // Retransmitted
	From, To netip.AddrPort // NAT
	// Inner is set for an ICMPError (the packet it is about) and Carried
	// (the overlay packet) only: a pointer keeps every other change small
	// (a connection holds tens).
	Inner *nf.Tuple
	// Iface: Left, where the packet leaves; Sent, Retransmitted, Replied
	// and ICMPError, where it came in (PREROUTING; "" : unknown, or made
	// on the node).
	Iface string
}

// OutcomeKind is which case decided a connection's verdict.
type OutcomeKind uint8

const (
	// NodeRejected: the node answered with an error (Answer) before any
	// answer from the destination; Drop, if set, is where the rejected
	// packet died.
	NodeRejected OutcomeKind = iota + 1
	// Refused: the destination answered with a TCP RST or an ICMP error.
	Refused
	// Translated: the destination answered (Answer) and the reply was
	// translated back to the client.
	Translated
	// ReplyDropped: the destination answered, but its reply died on the
	// node (Drop).
	ReplyDropped
	// BrokeDropped: answered, then packet Packet died on the node (Drop)
	// and nothing passed after it.
	BrokeDropped
	// BrokeUntranslated: answered, then packet Packet had no conntrack entry
	// and left via Iface still addressed to the Service.
	BrokeUntranslated
	// Discarded: the client's packet died (Drop).
	Discarded
	// Untranslated: the client's packet left via Iface still addressed to
	// the Service.
	Untranslated
	// Unanswered: the packet was forwarded (or, if Local, delivered
	// locally) and nothing came back within Waited.
	Unanswered
	// Vanished: no drop was reported; Last is the last place the packet was
	// seen, if Seen.
	Vanished
	// Crossing: the connection's packet (Dir, Packet: its number on
	// From) left node From via Iface for node To, which traced and never
	// saw it: it was lost between the nodes. Set by stitching only.
	Crossing
)

// Outcome is why a connection got its verdict, as data.
type Outcome struct {
	Kind   OutcomeKind
	Answer Answer        // the packet that settled it, where one did
	Packet int           // BrokeDropped, BrokeUntranslated
	Iface  string        // Untranslated, BrokeUntranslated
	Waited time.Duration // Unanswered
	Local  bool          // Unanswered
	Last   nf.Gap        // Vanished
	Seen   bool          // Vanished: Last is valid
	// Crossing: the nodes the packet left and never reached, and which
	// way it went.
	From, To string
	Dir      Dir
}

// Answer is a packet that came back towards the client.
type Answer struct {
	From netip.AddrPort
	// What it was: its TCP flags or ICMP type ("SYN,ACK",
	// "port-unreachable"), else its protocol ("UDP").
	What  string
	Error bool // an ICMP error
	RST   bool // a TCP reset
	// ICMP is an ICMP error's protocol (ICMP or ICMPv6), type and code.
	ICMP ICMPType `json:",omitzero"`
}

// ICMPType is an ICMP message's protocol, type and code.
type ICMPType struct {
	Proto      nf.Proto
	Type, Code uint8
}

func answerOf(ev *nf.Event) Answer {
	a := Answer{From: ev.Tuple.Src, What: packetWhat(ev), Error: ev.ICMP.IsError(), RST: ev.TCPFlags.Has(nf.RST)}
	if a.Error {
		a.ICMP = ICMPType{ev.Tuple.Proto, ev.ICMP.Type, ev.ICMP.Code}
	}
	return a
}

// Shown reports whether the step is worth a line: something changed, or
// the packet died.
func (s Step) Shown() bool { return len(s.Changes) > 0 || s.Drop != nil }

// Has reports whether the step shows a change of kind k, and the first.
func (s Step) Has(k ChangeKind) (Change, bool) {
	for _, c := range s.Changes {
		if c.Kind == k {
			return c, true
		}
	}
	return Change{}, false
}

// LeftVia is the interface the connection's first packet going dir left
// the node by ("" : it did not leave).
func (c *Conn) LeftVia(dir Dir) string {
	for _, s := range c.Steps {
		if s.Dir != dir {
			continue
		}
		if ch, ok := s.Has(Left); ok {
			return ch.Iface
		}
	}
	return ""
}

// PacketDir is the direction of packet n of the connection, from its steps.
func (c *Conn) PacketDir(n int) Dir {
	for _, s := range c.Steps {
		if s.Packet == n && s.Dir == Reply {
			return Reply
		}
	}
	return Original
}
