package flow

import (
	"fmt"
	"net/netip"

	"github.com/svctrace/svctrace/internal/tracer"
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

func (d Dir) flip() Dir { return 1 - d }

// Conn is one connection as the node saw it, with its verdict.
type Conn struct {
	ID int
	// Continues is the ID of an earlier, unanswered connection with the same
	// addresses that this one continues (a retransmission after it was
	// reported); 0 if none.
	Continues int
	Scenario  string // set by the lab
	Proto     tracer.Proto
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
	Why       string // the verdict in one sentence
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
	st        state
	done      bool // reported; no longer followed
}

// Step is one observation of a packet.
type Step struct {
	Time   uint64 // CLOCK_MONOTONIC ns
	Packet int    // packet number within the connection, from 1
	Dir    Dir
	Kind   tracer.Kind
	Hook   tracer.Hook
	Stage  tracer.Stage
	NetNS  uint32
	Tuple  tracer.Tuple
	Flags  string // TCP flags or ICMP type
	// CT is the conntrack state: "" if the packet had no entry yet,
	// "INVALID" if it passed conntrack without one, "UNTRACKED" (NOTRACK).
	CT   string
	Mark uint32
	// CTMark and CTZone are the entry's mark and zone, where set.
	CTMark uint32 `json:",omitempty"`
	CTZone uint16 `json:",omitempty"`
	Note   string // what happened here, in words; "" if nothing changed
	Drop   *Drop  // set on a drop
	Data   []byte // the packet's first bytes here, from its IP header (pcapng)
}

// Drop locates a drop.
type Drop struct {
	Time     uint64
	Packet   int
	Dir      Dir
	Gap      tracer.Gap // hook and observers around the drop; valid if Placed
	InNode   bool       // in the traced (node) network namespace
	Placed   bool       // an observer saw the packet before, so Gap says where
	NetNS    uint32
	Reason   string
	Location string
	// Invalid: the packet had passed conntrack without an entry (see
	// Conn.Invalid).
	Invalid bool `json:",omitempty"`
	// Endpoint is where the packet was going when it died, after DNAT
	// (invalid: not translated, or not known).
	Endpoint netip.AddrPort `json:",omitzero"`
}

// String: "dropped in FORWARD between priority -1 and 1: filter table (0)
// (NETFILTER_DROP at nft_do_chain+0x3e8)".
func (d Drop) String() string { return "dropped " + d.place() }

// place: "in FORWARD between … (NETFILTER_DROP at nft_do_chain+0x3e8)".
func (d Drop) place() string {
	if d.Reason == "" {
		return fmt.Sprintf("%s (at %s)", d.in(), d.Location)
	}
	return fmt.Sprintf("%s (%s at %s)", d.in(), d.Reason, d.Location)
}

// AtConfirm reports whether conntrack's confirmation dropped the packet
// (tracer.Gap.HasConfirm): an insert clash.
func (d Drop) AtConfirm() bool {
	return d.InNode && d.Placed && d.Reason == "NETFILTER_DROP" && d.Gap.HasConfirm()
}

func (d Drop) in() string {
	switch {
	case !d.InNode:
		return fmt.Sprintf("outside the node's network namespace, in net:[%d]", d.NetNS)
	case !d.Placed:
		return "in the node's network namespace before any observer saw it (raw table, defrag or routing)"
	}
	return "in " + d.Gap.String()
}

// packet is one traversal of the node by one packet.
type packet struct {
	id     uint64
	n      int
	dir    Dir
	first  tracer.Event
	last   tracer.Event
	detail bool // keep every stage
	brief  bool // keep the first stage and drops only
	local  bool // generated by the node (first seen in OUTPUT)
	// invalid: past conntrack without an entry (Conn.Invalid).
	invalid bool
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
	tuples           []tracer.Tuple // indexed forms, to unindex on finish
	ctSeen           bool           // an event carried the conntrack entry
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
