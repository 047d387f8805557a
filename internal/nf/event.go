// Package nf is what svctrace knows of a node's packet path, apart from how
// it observes it: network namespaces, protocols and tuples, the netfilter
// hooks and the stages observed on them, and the events the tracer reports
// (Event). Everything past the tracer (flow, record, resolve, …) speaks
// these; only internal/tracer loads BPF.
package nf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Event is one observation by the kernel side: a netfilter observer saw a
// packet of a followed connection (KindHook), or the kernel freed such a
// packet as dropped (KindDrop).
type Event struct {
	Time   uint64 `json:"time"` // CLOCK_MONOTONIC nanoseconds
	Kind   Kind   `json:"kind"`
	Hook   Hook   `json:"hook"`           // KindHook only
	Stage  Stage  `json:"stage,omitzero"` // KindHook only
	Family Family `json:"family"`
	NetNS  uint32 `json:"netns,omitzero"`  // network namespace inode number (0: unknown)
	InIf   uint32 `json:"in_if,omitzero"`  // input interface index (KindDrop: skb_iif)
	OutIf  uint32 `json:"out_if,omitzero"` // output interface index (KindDrop: the skb's device)
	// Packet identifies the packet while it crosses netfilter: equal values in
	// consecutive events are the same packet. Opaque, not a kernel address.
	Packet uint64 `json:"packet"`
	Len    uint32 `json:"len,omitzero"`
	Mark   uint32 `json:"mark,omitzero"`  // skb->mark
	Tuple  Tuple  `json:"tuple,omitzero"` // the packet's own addresses; invalid if not parsed
	// Outer, when valid, is the overlay packet (VXLAN) that was seen:
	// Tuple and TCPFlags are the packet it carries, of a followed
	// connection; CT is not the carrier's.
	Outer    Tuple     `json:"outer,omitzero"`
	Fragment bool      `json:"fragment,omitzero"` // a non-first fragment: no ports
	TCPFlags TCPFlags  `json:"tcp_flags,omitzero"`
	ICMP     ICMPInfo  `json:"icmp,omitzero"`
	CT       Conntrack `json:"ct,omitzero"`   // CT.ID == 0: the packet had no conntrack entry
	Drop     Drop      `json:"drop,omitzero"` // KindDrop only
	// Counted are a connection's packets the kernel counted instead of
	// reporting them (KindCount only; the event budget).
	Counted Counted `json:"counted,omitzero"`
	// Data are the packet's first bytes from its IP header as this point
	// saw them: its headers, or Options.Snaplen bytes.
	Data []byte `json:"data,omitempty"`
}

// MaxSnaplen is the most of each packet an event carries (Event.Data):
// bpf/svctrace.h's CAP_MAX.
const MaxSnaplen = 128

// ErrClosed is what an event source's Read returns once it is closed.
var ErrClosed = errors.New("tracer closed")

// Kind says what produced an event.
type Kind uint8

// The values are bpf/svctrace.h's enum event_kind (the tracer's tests
// hold the two together).
const (
	KindHook Kind = 1
	KindDrop Kind = 2
	// KindCount carries counts of a followed connection's packets (its
	// conntrack entry in CT) that were not reported one by one.
	KindCount Kind = 3
	// KindSettled: a connection the tracer held and counted as answered
	// (tracer.Options.Hold), its opening not reported, came to grief
	// after all (a drop, a packet found INVALID, an ICMP error): it is
	// reported from here on. Time is when it was answered; CT names it.
	KindSettled Kind = 5
)

// Counted are packets and their IP bytes, by direction: [0] original,
// [1] reply.
type Counted struct {
	Packets [2]uint32 `json:"packets"`
	Bytes   [2]uint64 `json:"bytes"`
}

func (k Kind) String() string {
	switch k {
	case KindHook:
		return "hook"
	case KindDrop:
		return "drop"
	case KindCount:
		return "count"
	case KindSettled:
		return "settled"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Family is the netfilter protocol family.
type Family uint8

const (
	IPv4 Family = 2  // NFPROTO_IPV4
	IPv6 Family = 10 // NFPROTO_IPV6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

// Proto is an IP protocol number.
type Proto uint8

const (
	ICMP   Proto = 1
	TCP    Proto = 6
	UDP    Proto = 17
	ICMPv6 Proto = 58
	SCTP   Proto = 132
)

func (p Proto) String() string {
	switch p {
	case ICMP:
		return "icmp"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case ICMPv6:
		return "icmpv6"
	case SCTP:
		return "sctp"
	case 0:
		return ""
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// ParseProto accepts tcp, udp and sctp (any case).
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want tcp, udp or sctp)", s)
}

// Tuple is a packet's or conntrack direction's addresses, ports and protocol.
// For ICMP echo, Src's port carries the identifier.
type Tuple struct {
	Src   netip.AddrPort `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
	Proto Proto          `json:"proto"`
}

func (t Tuple) IsValid() bool { return t.Src.IsValid() && t.Dst.IsValid() }

// Reverse swaps source and destination.
func (t Tuple) Reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src, Proto: t.Proto} }

func (t Tuple) String() string {
	if !t.IsValid() {
		return "-"
	}
	return fmt.Sprintf("%s → %s %s", t.Src, t.Dst, t.Proto)
}

// TCPFlags are the flags byte of a TCP header.
type TCPFlags uint8

const (
	FIN TCPFlags = 1 << iota
	SYN
	RST
	PSH
	ACK
	URG
	ECE
	CWR
)

func (f TCPFlags) Has(x TCPFlags) bool { return f&x == x }

func (f TCPFlags) String() string { return tcpFlagNames[f] }

// tcpFlagNames are the names of every combination of flags, made once:
// each packet shown is named by its flags.
var tcpFlagNames = func() (names [256]string) {
	for f := range names {
		names[f] = TCPFlags(f).describe()
	}
	return names
}()

func (f TCPFlags) describe() string {
	var parts []string
	for _, n := range []struct {
		f    TCPFlags
		name string
	}{{SYN, "SYN"}, {RST, "RST"}, {FIN, "FIN"}, {PSH, "PSH"}, {ACK, "ACK"}, {URG, "URG"}, {ECE, "ECE"}, {CWR, "CWR"}} {
		if f.Has(n.f) {
			parts = append(parts, n.name)
		}
	}
	return strings.Join(parts, ",")
}

// ICMP holds the type and code of an ICMP or ICMPv6 packet, and for error
// messages the tuple of the packet the error reports on.
type ICMPInfo struct {
	Type  uint8 `json:"type"`
	Code  uint8 `json:"code"`
	Inner Tuple `json:"inner,omitzero"` // valid for error messages
}

// IsError reports whether the message is an ICMP error (destination
// unreachable, time exceeded, ...).
func (i ICMPInfo) IsError() bool { return i.Inner.IsValid() }

// Describe names common ICMP errors the way operators know them.
func (i ICMPInfo) Describe(p Proto) string {
	if p == ICMP {
		if i.Type == 3 {
			if n, ok := icmpUnreach[i.Code]; ok {
				return n
			}
			return fmt.Sprintf("unreachable code %d", i.Code)
		}
		switch i.Type {
		case 0:
			return "echo-reply"
		case 8:
			return "echo-request"
		case 11:
			return "time-exceeded"
		}
	}
	if p == ICMPv6 && i.Type == 1 {
		if n, ok := icmp6Unreach[i.Code]; ok {
			return n
		}
	}
	if p == ICMPv6 && i.Type == 2 {
		return "packet-too-big"
	}
	return fmt.Sprintf("%s type %d code %d", p, i.Type, i.Code)
}

var icmpUnreach = map[uint8]string{
	0: "net-unreachable", 1: "host-unreachable", 2: "protocol-unreachable",
	3: "port-unreachable", 4: "fragmentation-needed", 9: "net-prohibited", 10: "host-prohibited", 13: "admin-prohibited",
}

var icmp6Unreach = map[uint8]string{
	0: "no-route", 1: "admin-prohibited", 3: "addr-unreachable", 4: "port-unreachable",
}

// Conntrack is the state of the packet's conntrack entry when it was seen.
type Conntrack struct {
	ID     uint64   `json:"id"` // opaque identity of the entry; 0: no entry (Info: CTUntracked, or none)
	Info   CTInfo   `json:"info"`
	Status CTStatus `json:"status"`
	Mark   uint32   `json:"mark,omitzero"`
	Zone   uint16   `json:"zone,omitzero"`
	Orig   Tuple    `json:"orig"`  // original direction
	Reply  Tuple    `json:"reply"` // reply direction: a NAT shows as Reply != Orig.Reverse()
}

// CTInfo is enum ip_conntrack_info: the packet's relation to its entry.
type CTInfo uint8

const (
	CTEstablished      CTInfo = 0
	CTRelated          CTInfo = 1
	CTNew              CTInfo = 2
	CTEstablishedReply CTInfo = 3
	CTRelatedReply     CTInfo = 4
	CTUntracked        CTInfo = 7
)

// IsReply reports whether the packet travels in the reply direction.
func (c CTInfo) IsReply() bool { return c == CTEstablishedReply || c == CTRelatedReply }

func (c CTInfo) String() string {
	switch c {
	case CTEstablished:
		return "ESTABLISHED"
	case CTRelated:
		return "RELATED"
	case CTNew:
		return "NEW"
	case CTEstablishedReply:
		return "ESTABLISHED,REPLY"
	case CTRelatedReply:
		return "RELATED,REPLY"
	case CTUntracked:
		return "UNTRACKED"
	}
	return fmt.Sprintf("ctinfo(%d)", uint8(c))
}

// CTStatus is enum ip_conntrack_status.
type CTStatus uint32

const (
	CTExpected   CTStatus = 1 << 0
	CTSeenReply  CTStatus = 1 << 1
	CTAssured    CTStatus = 1 << 2
	CTConfirmed  CTStatus = 1 << 3
	CTSrcNAT     CTStatus = 1 << 4
	CTDstNAT     CTStatus = 1 << 5
	CTSrcNATDone CTStatus = 1 << 7
	CTDstNATDone CTStatus = 1 << 8
	CTDying      CTStatus = 1 << 9
)

var ctStatusNames = []string{
	"EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED", "SRC_NAT", "DST_NAT", "SEQ_ADJUST",
	"SRC_NAT_DONE", "DST_NAT_DONE", "DYING", "FIXED_TIMEOUT", "TEMPLATE", "NAT_CLASH",
	"HELPER", "OFFLOAD", "HW_OFFLOAD",
}

func (s CTStatus) String() string {
	var parts []string
	for i, n := range ctStatusNames {
		if s&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, "|")
}

// Drop describes where and why the kernel freed a packet.
type Drop struct {
	Reason     string `json:"reason"` // kernel drop reason without the SKB_DROP_REASON_ prefix
	ReasonCode uint32 `json:"reason_code"`
	Location   string `json:"location"` // symbolised, e.g. "nf_hook_slow+0x9c"
}
