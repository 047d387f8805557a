package flow

import (
	"fmt"
	"net/netip"

	"github.com/svctrace/svctrace/internal/nf"
)

// Dir is a packet's direction relative to the connection.
type Dir uint8

const (
	Original Dir = iota // client → Service
	Reply               // back towards the client
)

func (d Dir) String() string {
	if d == Reply {
		return "reply"
	}
	return "original"
}

func (d Dir) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Dir) UnmarshalText(b []byte) error {
	switch string(b) {
	case "original":
		*d = Original
	case "reply":
		*d = Reply
	default:
		return fmt.Errorf("unknown direction %q", b)
	}
	return nil
}

func (d Dir) flip() Dir { return 1 - d }

// Conn is one connection as the node saw it, with its verdict.
type Conn struct {
	ID int
	// Continues is the ID of an earlier, unanswered connection with the same
	// addresses that this one continues (a retransmission after it was
	// reported); 0 if none.
	Continues int
	Scenario  string // set by the lab
	Proto     nf.Proto
	Client    netip.AddrPort // original source
	VIP       netip.AddrPort // original destination: what the client asked for
	Endpoint  netip.AddrPort // destination after DNAT; invalid: not translated
	// Endpoints are the destinations after DNAT, in the order the
	// connection's packets went there: more than one when a retransmission
	// was translated anew (its first try's conntrack entry was dropped
	// before confirmation) and went elsewhere. The last is Endpoint.
	Endpoints []netip.AddrPort
	SNAT      netip.AddrPort // source after SNAT; invalid: not translated
	Start     uint64         // CLOCK_MONOTONIC ns of the first event
	End       uint64         // ... of the last event
	Answer    uint64         // ... of the first answer from the destination; 0: none
	Verdict   Verdict
	Outcome   Outcome // why: the case that decided the verdict
	// Drop is where a packet of the connection died: for dropped, the drop;
	// for rejected, where the rejected packet was discarded.
	Drop *Drop
	// Drops are all drops seen, in order.
	Drops   []Drop
	Packets [2]int // distinct packets seen, by Dir
	// Bytes are the IP bytes of those packets, by Dir (each counted once,
	// as first seen).
	Bytes  [2]uint64
	SYNs   int    // SYNs the client sent: 1 + retransmissions
	Closed string // how the connection ended: "FIN", "RST" or ""
	// Prior: its first packet found a conntrack entry made before (a
	// flow that began before the trace): the NAT was decided then, not by
	// the rules the trace saw.
	Prior bool
	// Settled: the tracer held the connection's opening and counted it
	// answered without reporting it (tracer.Options.Hold: svctrace -A);
	// it is shown because it came to grief after that, from Answer on.
	// Its first packets are not among Steps or Packets.
	Settled bool `json:",omitempty"`
	// Invalid is the number of the first packet that passed conntrack
	// without an entry, in a connection that had one (0: none): conntrack
	// found it INVALID (its entry was gone, or it fell outside the TCP
	// window), so no NAT applied to it.
	Invalid int
	// Steps are the observations worth showing: every stage of the first
	// packet each way and of notable packets (errors, resets, drops), the
	// first stage of retransmissions.
	Steps     []Step
	Truncated bool // more steps happened than are kept
	// DNS are the DNS messages the connection carried, each question
	// and answer once in the order seen (at most MaxDNS): read from the
	// captured header and first question of a DNS Service's port-53
	// packets (tracer.Options.DNSQuestions).
	DNS []nf.DNS
	// Nodes are the nodes whose views of the connection make it, in the
	// order its packets crossed them, where more than one node traced it
	// (internal/stitch); nil: one node's view.
	Nodes    []string
	st       state
	done     bool // reported; no longer followed
	listed   bool // in the assembler's list of connections
	released bool // the caller is done with it (Assembler.Release)
	// Room the connection's steps and packets take from, a few at a time
	// (keep, packetFor): kept when the connection's memory is reused
	// (Assembler.Release).
	arena []Change
	slab  []packet
}

// Step is one observation of a packet.
type Step struct {
	Time   uint64 // CLOCK_MONOTONIC ns
	Packet int    // packet number within the connection, from 1
	Dir    Dir
	Kind   nf.Kind
	Hook   nf.Hook
	Stage  nf.Stage
	NetNS  uint32
	Tuple  nf.Tuple
	Flags  string // TCP flags or ICMP type
	// CT is the conntrack state: "" if the packet had no entry yet,
	// "INVALID" if it passed conntrack without one, "UNTRACKED" (NOTRACK).
	CT   string
	Mark uint32
	// CTMark and CTZone are the entry's mark and zone, where set.
	CTMark uint32 `json:",omitempty"`
	CTZone uint16 `json:",omitempty"`
	// Changes are what the packet is (its first step) and what the stage
	// did to it; none if nothing changed.
	Changes []Change
	Drop    *Drop  // set on a drop
	Data    []byte // the packet's first bytes here, from its IP header (pcapng)
	// Node is the node that saw this step, on a timeline stitched from
	// several nodes' (Conn.Nodes); "" otherwise.
	Node string `json:",omitempty"`
}

// Drop locates a drop.
type Drop struct {
	Time     uint64
	Packet   int
	Dir      Dir
	Gap      nf.Gap // hook and observers around the drop; valid if Placed
	InNode   bool   // in the traced (node) network namespace
	Placed   bool   // an observer saw the packet before, so Gap says where
	NetNS    uint32
	Reason   string
	Location string
	// In is the interface the packet came in on ("" : sent by the node,
	// or unknown).
	In string `json:",omitempty"`
	// Invalid: the packet had passed conntrack without an entry (see
	// Conn.Invalid).
	Invalid bool `json:",omitempty"`
	// Endpoint is where the packet was going when it died, after DNAT
	// (invalid: not translated, or not known).
	Endpoint netip.AddrPort `json:",omitzero"`
	// Node is the node it died on, on a stitched timeline (Step.Node).
	Node string `json:",omitempty"`
	// Outer is the overlay packet that died carrying the connection's
	// (Change Carried); invalid if the packet died as itself.
	Outer nf.Tuple `json:",omitzero"`
}

// AtConfirm reports whether conntrack's confirmation dropped the packet
// (nf.Gap.HasConfirm): an insert clash.
func (d Drop) AtConfirm() bool {
	return d.InNode && d.Placed && d.Reason == "NETFILTER_DROP" && d.Gap.HasConfirm()
}

// packet is one traversal of the node by one packet.
type packet struct {
	id     uint64
	n      int
	dir    Dir
	start  uint64 // its first observation
	answer Answer // what it says, were it an answer
	last   sighting
	detail bool // keep every stage
	brief  bool // keep the first stage and drops only
	local  bool // generated by the node (first seen in OUTPUT)
	// invalid: past conntrack without an entry (Conn.Invalid).
	invalid bool
	dns     bool // its DNS message was read
	// carrier: an overlay packet carrying one of the connection's
	// (Event.Outer); not counted as one of them, n 0.
	carrier bool
}

// MaxDNS bounds the DNS messages kept per connection.
const MaxDNS = 8

// sighting is what the assembler keeps of a packet's last observation:
// what the next is compared with, and where a drop after it happened.
type sighting struct {
	Time   uint64
	CTID   uint64
	Tuple  nf.Tuple
	NetNS  uint32
	OutIf  uint32
	Mark   uint32
	CTMark uint32
	Kind   nf.Kind
	Hook   nf.Hook
	Stage  nf.Stage
}

func sight(ev *nf.Event) sighting {
	return sighting{Time: ev.Time, CTID: ev.CT.ID, Tuple: ev.Tuple, NetNS: ev.NetNS, OutIf: ev.OutIf, Mark: ev.Mark,
		CTMark: ev.CT.Mark, Kind: ev.Kind, Hook: ev.Hook, Stage: ev.Stage}
}

// state is what the assembler accumulates towards the verdict.
type state struct {
	recent           [8]*packet // most recent packets, for drops and stage order
	next             int
	reply            *packet // first answer from the destination
	reject           *packet // first error the node itself sent back
	replyOut         bool    // a reply left towards the client
	leftOut          bool    // an original packet left the node
	leftUntranslated bool    // ... still addressed to the Service address
	delivered        bool    // an original packet was delivered locally
	outIf            uint32
	fin              [2]bool
	rst              bool
	tuples           []key    // indexed forms, to unindex on finish
	ctSeen           bool     // an event carried the conntrack entry
	learned          nf.Tuple // the reply tuple learnNAT last learned from
	// After the answer: when a reply last passed the node, and when a
	// packet last came to grief on it (dropped, or INVALID and sent on
	// untranslated). The connection broke if nothing passed after that.
	replyPassed uint64
	troubled    uint64
	broke       int     // 1 + the index in Drops of the first such drop; 0: none
	strayed     *packet // the first INVALID packet that left untranslated
	// shownDNAT is the destination of the last DNAT the steps show: a
	// retransmission translated elsewhere is shown in full.
	shownDNAT netip.AddrPort
}

func (c *Conn) findPacket(id uint64) *packet {
	for i := 0; i < len(c.st.recent); i++ {
		// newest first
		pk := c.st.recent[(c.st.next-1-i+2*len(c.st.recent))%len(c.st.recent)]
		if pk != nil && pk.id == id {
			return pk
		}
	}
	return nil
}

func (c *Conn) remember(pk *packet) {
	c.st.recent[c.st.next] = pk
	c.st.next = (c.st.next + 1) % len(c.st.recent)
}

// Retried returns the drops of the client's packets before the answer: the
// tries an answered connection needed.
func (c *Conn) Retried() []*Drop {
	if c.Verdict != Answered {
		return nil
	}
	var ds []*Drop
	for i := range c.Drops {
		if d := &c.Drops[i]; d.Dir == Original && d.InNode && d.Time < c.Answer {
			ds = append(ds, d)
		}
	}
	return ds
}

// target is where the client's packets are delivered: the endpoint after
// DNAT, else the address asked for.
func (c *Conn) target() netip.AddrPort {
	if c.Endpoint.IsValid() {
		return c.Endpoint
	}
	return c.VIP
}
