package flow_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/describe"
	. "github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

// Hand-built event sequences for paths the lab does not record.

const nodeNS = 4026531999

func tup(src, dst string, p nf.Proto) nf.Tuple {
	return nf.Tuple{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), Proto: p}
}

// seq builds events with increasing times.
type seq struct {
	t   uint64
	evs []nf.Event
}

func (s *seq) at(d time.Duration) *seq { s.t += uint64(d); return s }

func (s *seq) hook(pkt uint64, h nf.Hook, st nf.Stage, t nf.Tuple, f nf.TCPFlags, ct nf.Conntrack) *seq {
	s.t += 1000
	s.evs = append(s.evs, nf.Event{Time: s.t, Kind: nf.KindHook, Hook: h, Stage: st, NetNS: nodeNS,
		Packet: pkt, Tuple: t, TCPFlags: f, CT: ct})
	return s
}

func (s *seq) drop(pkt uint64, t nf.Tuple, ct nf.Conntrack) *seq {
	s.t += 1000
	s.evs = append(s.evs, nf.Event{Time: s.t, Kind: nf.KindDrop, NetNS: nodeNS, Packet: pkt, Tuple: t, CT: ct,
		Drop: nf.Drop{Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x3e8"}})
	return s
}

func (s *seq) last() *nf.Event { return &s.evs[len(s.evs)-1] }

func ct(info nf.CTInfo, orig, reply nf.Tuple) nf.Conntrack {
	return nf.Conntrack{ID: 77, Info: info, Orig: orig, Reply: reply}
}

func run(s *seq, opts Options) ([]*Conn, *Assembler) {
	opts.NodeNetNS = nodeNS
	return tracetest.Replay(s.evs, opts)
}

var (
	udpOrig  = tup("10.0.0.2:5000", "10.96.0.10:53", nf.UDP)
	udpReply = tup("10.244.0.5:53", "10.0.0.2:5000", nf.UDP)
	synOrig  = tup("10.0.0.2:40000", "10.96.0.10:80", nf.TCP)
	synReply = tup("10.244.0.5:8080", "10.0.0.2:40000", nf.TCP)
)

// UDP to a port nobody listens on: the endpoint answers ICMP port
// unreachable, which is the UDP form of a reset.
func TestUDPPortUnreachableFromEndpointIsReset(t *testing.T) {
	s := &seq{}
	nat := ct(nf.CTNew, udpOrig, udpReply)
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, udpOrig, 0, nat)
	s.hook(1, nf.PreRouting, nf.StagePostDNAT, tup("10.0.0.2:5000", "10.244.0.5:53", nf.UDP), 0, nat)
	s.hook(1, nf.PostRouting, nf.StageLast, tup("10.0.0.2:5000", "10.244.0.5:53", nf.UDP), 0, nat)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, tup("10.244.0.5:0", "10.0.0.2:0", nf.ICMP), 0,
		ct(nf.CTRelatedReply, udpOrig, udpReply))
	s.last().ICMP = nf.ICMPInfo{Type: 3, Code: 3, Inner: tup("10.0.0.2:5000", "10.244.0.5:53", nf.UDP)}
	conns, _ := run(s, Options{})
	c := only(t, conns)
	if c.Verdict != Reset || !strings.Contains(describe.Reason(c), "ICMP port-unreachable") {
		t.Fatalf("%s: %s, want reset by ICMP port-unreachable", c.Verdict, describe.Reason(c))
	}
}

// REJECT --reject-with tcp-reset: the RST comes from the node (OUTPUT) and is
// tied to the entry as RELATED.
func TestTCPResetFromTheNodeIsRejected(t *testing.T) {
	s := &seq{}
	entry := ct(nf.CTNew, synOrig, synOrig.Reverse())
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, entry)
	s.hook(1, nf.Forward, nf.StagePreFilter, synOrig, nf.SYN, entry)
	s.hook(2, nf.LocalOut, nf.StagePreConntrack, synOrig.Reverse(), nf.RST|nf.ACK,
		ct(nf.CTRelatedReply, synOrig, synOrig.Reverse()))
	s.drop(1, synOrig, entry)
	c := only(t, mustRun(s))
	if c.Verdict != Rejected || !strings.Contains(describe.Reason(c), "a TCP RST") {
		t.Fatalf("%s: %s, want rejected with a TCP RST", c.Verdict, describe.Reason(c))
	}
	if c.Drop == nil || c.Drop.Gap.Hook != nf.Forward {
		t.Errorf("drop %+v, want the SYN's drop in FORWARD", c.Drop)
	}
}

func mustRun(s *seq) []*Conn { c, _ := run(s, Options{}); return c }

// The endpoint answers but the answer dies on the node.
func TestDroppedReplyIsDropped(t *testing.T) {
	s := &seq{}
	nat := ct(nf.CTNew, synOrig, synReply)
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, nat)
	s.hook(1, nf.PostRouting, nf.StageLast, tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP), nf.SYN, nat)
	est := ct(nf.CTEstablishedReply, synOrig, synReply)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synReply, nf.SYN|nf.ACK, est)
	s.hook(2, nf.Forward, nf.StagePreFilter, tup("10.244.0.5:8080", "10.0.0.2:40000", nf.TCP), nf.SYN|nf.ACK, est)
	s.drop(2, tup("10.244.0.5:8080", "10.0.0.2:40000", nf.TCP), est)
	c := only(t, mustRun(s))
	if c.Verdict != Dropped || c.Drop == nil || c.Drop.Dir != Reply || c.Drop.Gap.Hook != nf.Forward {
		t.Fatalf("%s (%s), drop %+v: want the reply dropped in FORWARD", c.Verdict, describe.Reason(c), c.Drop)
	}
	if !strings.Contains(describe.Reason(c), "answered, but the reply was discarded in FORWARD") {
		t.Errorf("why %q", describe.Reason(c))
	}
}

// The middle of a TCP connection that began before tracing opens nothing.
func TestMidStreamPacketsAreOrphans(t *testing.T) {
	s := &seq{}
	s.hook(1, nf.PreRouting, nf.StagePreConntrack, synOrig, nf.ACK|nf.PSH, nf.Conntrack{})
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.ACK, ct(nf.CTEstablished, synOrig, synReply))
	conns, a := run(s, Options{})
	if len(conns) != 0 || a.Orphans != 2 {
		t.Errorf("%d connections, %d orphans; want 0 and 2", len(conns), a.Orphans)
	}
}

// A new SYN on the addresses of a connection that was answered and closed
// is a new connection.
func TestPortReuseStartsANewConnection(t *testing.T) {
	s := &seq{}
	est := ct(nf.CTNew, synOrig, synReply)
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, est)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synReply, nf.SYN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	s.hook(2, nf.PostRouting, nf.StageLast, synOrig.Reverse(), nf.SYN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.FIN|nf.ACK, ct(nf.CTEstablished, synOrig, synReply))
	s.hook(4, nf.PreRouting, nf.StagePostConntrack, synReply, nf.FIN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	s.at(time.Second)
	s.hook(5, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, est)
	conns := mustRun(s)
	if len(conns) != 2 || conns[0].Verdict != Answered || conns[0].Closed != "FIN" || conns[1].ID != 2 {
		t.Fatalf("got %d connections: %+v", len(conns), conns)
	}
}

// A retransmission arriving after its connection was reported continues it.
func TestLateRetransmissionContinuesTheConnection(t *testing.T) {
	a := New(Options{NodeNetNS: nodeNS, Timeout: time.Second})
	s := &seq{}
	s.hook(1, nf.PreRouting, nf.StagePreConntrack, synOrig, nf.SYN, nf.Conntrack{})
	s.hook(1, nf.PostRouting, nf.StageLast, synOrig, nf.SYN, nf.Conntrack{})
	for _, ev := range s.evs {
		a.Add(&ev)
	}
	first := a.Tick(s.t + uint64(2*time.Second))
	if len(first) != 1 || first[0].Verdict != NotTranslated {
		t.Fatalf("first report %+v", first)
	}
	a.Add(&nf.Event{Time: s.t + uint64(3*time.Second), Kind: nf.KindHook, Hook: nf.PreRouting,
		Stage: nf.StagePreConntrack, NetNS: nodeNS, Packet: 2, Tuple: synOrig, TCPFlags: nf.SYN})
	c := only(t, a.Flush(s.t+uint64(5*time.Second)))
	if c.Continues != first[0].ID || c.SYNs != 2 || !hasNote(c, "SYN retransmitted (1)") {
		t.Errorf("continues %d, SYNs %d, steps %+v", c.Continues, c.SYNs, c.Steps)
	}
}

func TestMaxConnsReportsTheOldestEarly(t *testing.T) {
	a := New(Options{NodeNetNS: nodeNS, MaxConns: 2})
	var reported []*Conn
	for i := 1; i <= 3; i++ {
		t := tup("10.0.0.2:4000"+string(rune('0'+i)), "10.96.0.10:80", nf.TCP)
		reported = append(reported, a.Add(&nf.Event{Time: uint64(i), Kind: nf.KindHook, Hook: nf.PreRouting,
			Stage: nf.StagePreConntrack, NetNS: nodeNS, Packet: uint64(i), Tuple: t, TCPFlags: nf.SYN})...)
	}
	if len(reported) != 1 || reported[0].ID != 1 || a.Active() != 2 {
		t.Errorf("reported %d (first id %v), active %d; want #1 reported, 2 active", len(reported), reported, a.Active())
	}
}

// A flood of new connections between two Ticks: every one past MaxConns
// reports the oldest still followed, in order, and the table and its
// indexes stay at MaxConns.
func TestFloodStaysWithinMaxConns(t *testing.T) {
	const max, flood = 1000, 100000
	a := New(Options{NodeNetNS: nodeNS, MaxConns: max})
	next := 1
	for i := range flood {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 16), byte(i >> 8)}), uint16(i))
		done := a.Add(&nf.Event{Time: uint64(i + 1), Kind: nf.KindHook, Hook: nf.PreRouting,
			Stage: nf.StagePreConntrack, NetNS: nodeNS, Packet: uint64(i + 1),
			Tuple: nf.Tuple{Src: src, Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP}, TCPFlags: nf.SYN})
		if i < max {
			if len(done) != 0 {
				t.Fatalf("connection %d: %d reported early", i+1, len(done))
			}
			continue
		}
		if len(done) != 1 || done[0].ID != next {
			t.Fatalf("connection %d: reported %d, want #%d alone", i+1, len(done), next)
		}
		next++
	}
	// A SYN before conntrack is indexed both ways.
	if z := a.Sizes(); a.Active() != max || z.ByOrig != max || z.ByAny != 2*max || z.Ended > max {
		t.Errorf("active %d, indexed %d/%d, ended %d; want %d", a.Active(), z.ByOrig, z.ByAny, z.Ended, max)
	}
	if n := len(a.Tick(flood + 1)); n != 0 || a.Sizes().Conns != max {
		t.Errorf("tick reported %d, kept %d; want 0 and %d", n, a.Sizes().Conns, max)
	}
}

// Connections that each hold many steps: the room for steps they hold (what
// memory they take) stays within MaxHeld, however many connections that
// allows.
func TestStepsHeldStayWithinMaxHeld(t *testing.T) {
	const held, perConn = 100, 10
	a := New(Options{NodeNetNS: nodeNS, MaxHeld: held})
	reported := 0
	for i := range 1000 {
		tu := nf.Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.1"), uint16(1000+i)),
			Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP}
		for j := range perConn { // a SYN seen at one observer after another
			reported += len(a.Add(&nf.Event{Time: uint64(i*perConn + j + 1), Kind: nf.KindHook, Hook: nf.PreRouting,
				Stage: nf.Stage(j % 3), NetNS: nodeNS, Packet: uint64(i + 1), Tuple: tu, TCPFlags: nf.SYN}))
		}
		// The newest may go past it until it is no longer the newest.
		if a.Sizes().Held > held+max(perConn, StepsAtFirst) {
			t.Fatalf("after connection %d: room for %d steps held by %d connections; want at most %d", i+1, a.Sizes().Held, a.Active(), held)
		}
	}
	if reported+a.Active() != 1000 || a.Active() > held/2 {
		t.Errorf("%d reported early, %d followed; want most of 1000 reported", reported, a.Active())
	}
}

// A drop the kernel side could not place in a namespace is where the packet
// was last seen: here the node's own connection, dropped in OUTPUT.
func TestDropWithoutNamespaceIsPlacedWhereLastSeen(t *testing.T) {
	s := &seq{}
	local := tup("10.99.0.1:40000", "10.96.0.10:80", nf.TCP)
	s.hook(1, nf.LocalOut, nf.StagePreFilter, local, nf.SYN, nf.Conntrack{})
	s.drop(1, local, nf.Conntrack{})
	s.last().NetNS = 0
	c := only(t, mustRun(s))
	if c.Verdict != Dropped || c.Drop == nil || !c.Drop.InNode || !c.Drop.Placed || c.Drop.Gap.Hook != nf.LocalOut {
		t.Fatalf("%s (%s), drop %+v: want dropped in OUTPUT", c.Verdict, describe.Reason(c), c.Drop)
	}
}

// The kernel reuses a freed skb for the next packet, so a drop can carry the
// id of an earlier packet of the connection going the other way: the
// endpoint's kernel dropping the client's retransmission in the skb the
// SYN,ACK came in. The drop is the client's, not the reply's.
func TestDropInAReusedSkbIsNotThatPackets(t *testing.T) {
	s := answered().at(300 * time.Millisecond)
	toPod := tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP)
	s.drop(2, toPod, nf.Conntrack{}) // packet 2 was the SYN,ACK
	s.last().NetNS, s.last().Drop = 4026530000, nf.Drop{Reason: "TCP_OLD_SEQUENCE", Location: "tcp_validate_incoming+0x16b"}
	c := only(t, mustRun(s))
	if len(c.Drops) != 1 {
		t.Fatalf("drops %+v, want one", c.Drops)
	}
	if d := c.Drops[0]; d.Dir != Original || c.PacketDir(d.Packet) != Original || d.InNode {
		t.Errorf("drop %+v (its packet going %s): want the client's packet, outside the node", d, c.PacketDir(d.Packet))
	}
}

// A receiving socket's drop the kernel side could not place (TCP reuses
// the field it reads the namespace from) after the node sent the packet on
// is the receiving host's, not the node's: the answered connection did
// not break. Delivered to a socket of the node's own, it is the node's.
func TestSocketDropWithoutNamespaceIsTheReceivers(t *testing.T) {
	s := answered().at(time.Second)
	est := ct(nf.CTEstablishedReply, synOrig, synReply)
	s.hook(3, nf.PostRouting, nf.StageLast, synOrig.Reverse(), nf.ACK, est)
	s.drop(3, synOrig.Reverse(), est)
	s.last().NetNS, s.last().Drop = 0, nf.Drop{Reason: "TCP_RFC7323_PAWS_ACK", Location: "tcp_validate_incoming+0x16b"}
	c := only(t, mustRun(s))
	if c.Verdict != Answered || len(c.Drops) != 1 || c.Drops[0].InNode {
		t.Fatalf("%s (%s), drops %+v: want answered, the drop outside the node", c.Verdict, describe.Reason(c), c.Drops)
	}
	if got := describe.In(c.Drops[0]); got != "outside the node, by the receiving socket of the host it was sent to" {
		t.Errorf("placed %q", got)
	}

	s = &seq{}
	local := tup("10.99.0.2:40000", "10.99.0.1:30080", nf.TCP)
	s.hook(1, nf.LocalIn, nf.StagePreFilter, local, nf.SYN, nf.Conntrack{})
	s.drop(1, local, nf.Conntrack{})
	s.last().NetNS, s.last().Drop = 0, nf.Drop{Reason: "TCP_LISTEN_OVERFLOW"}
	if c := only(t, mustRun(s)); c.Drop == nil || !c.Drop.InNode || c.Drop.Gap.Hook != nf.LocalIn {
		t.Fatalf("delivered locally: drop %+v, want the node's, in INPUT", c.Drop)
	}
}

// The kernel's counts of unreported packets add to the connection and keep
// it open past the no-reply timeout while they come; the close ends it.
func TestCountsKeepABusyConnectionOpen(t *testing.T) {
	s := &seq{}
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, ct(nf.CTNew, synOrig, synReply))
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synReply, nf.SYN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	for range 8 { // 4s of traffic, past the 3s timeout, counted every 500ms
		s.at(500 * time.Millisecond)
		s.evs = append(s.evs, nf.Event{Time: s.t, Kind: nf.KindCount, CT: ct(nf.CTEstablished, synOrig, synReply),
			Counted: nf.Counted{Packets: [2]uint32{10, 20}, Bytes: [2]uint64{1000, 30000}}})
	}
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.FIN|nf.ACK, ct(nf.CTEstablished, synOrig, synReply))
	s.hook(4, nf.PreRouting, nf.StagePostConntrack, synReply, nf.FIN|nf.ACK, ct(nf.CTEstablishedReply, synOrig, synReply))
	conns, a := run(s, Options{Timeout: 3 * time.Second})
	c := only(t, conns)
	if c.Verdict != Answered || c.Closed != "FIN" {
		t.Errorf("%s, closed %q: want answered and closed by FIN", c.Verdict, c.Closed)
	}
	if c.Packets != [2]int{2 + 80, 2 + 160} || c.Bytes[Original] != 8000 || c.Bytes[Reply] != 240000 {
		t.Errorf("packets %v, bytes %v: want [82 162] and the counted bytes", c.Packets, c.Bytes)
	}
	if a.Orphans != 0 {
		t.Errorf("%d orphans", a.Orphans)
	}
}

// answered is a connection whose handshake passed: the SYN DNAT'ed to the
// endpoint and out, the SYN ACK un-DNAT'ed and out to the client.
func answered() *seq {
	s := &seq{}
	nat := ct(nf.CTNew, synOrig, synReply)
	toPod := tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP)
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, nat)
	s.hook(1, nf.PreRouting, nf.StagePostDNAT, toPod, nf.SYN, nat)
	s.hook(1, nf.PostRouting, nf.StageLast, toPod, nf.SYN, nat)
	est := ct(nf.CTEstablishedReply, synOrig, synReply)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, synReply, nf.SYN|nf.ACK, est)
	s.hook(2, nf.PostRouting, nf.StageLast, synOrig.Reverse(), nf.SYN|nf.ACK, est)
	return s
}

// Its entry gone mid-connection (deleted, and nf_conntrack_tcp_loose=0),
// the client's next packet passes conntrack without one - INVALID - and
// kube-proxy's KUBE-FORWARD drops it, again and again: the connection
// broke after its answer.
func TestInvalidAfterTheAnswerIsDropped(t *testing.T) {
	s := answered().at(time.Second)
	for pkt := uint64(3); pkt <= 5; pkt++ {
		s.hook(pkt, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.PSH|nf.ACK, nf.Conntrack{})
		s.hook(pkt, nf.Forward, nf.StagePreFilter, synOrig, nf.PSH|nf.ACK, nf.Conntrack{})
		s.drop(pkt, synOrig, nf.Conntrack{})
		s.at(200 * time.Millisecond)
	}
	c := only(t, mustRun(s))
	if c.Verdict != Dropped || c.Drop == nil || !c.Drop.Invalid || c.Drop.Gap.Hook != nf.Forward || c.Drop.Packet != 3 {
		t.Fatalf("%s (%s), drop %+v: want the first INVALID packet dropped in FORWARD", c.Verdict, describe.Reason(c), c.Drop)
	}
	want := "10.244.0.5:8080 answered (SYN,ACK), but then the client's PSH,ACK was discarded in FORWARD"
	if !strings.HasPrefix(describe.Reason(c), want) || !strings.Contains(describe.Reason(c), "conntrack had no entry for it (INVALID)") {
		t.Errorf("why %q, want %q… INVALID", describe.Reason(c), want)
	}
	if c.Invalid != 3 || c.Endpoint != synReply.Src {
		t.Errorf("first INVALID packet %d, endpoint %s: want 3, the endpoint of the entry", c.Invalid, c.Endpoint)
	}
	if !slices.ContainsFunc(c.Steps, func(st Step) bool {
		return st.Packet == 3 && st.CT == "INVALID" && strings.Contains(describe.Step(st), "no conntrack entry: INVALID")
	}) {
		t.Errorf("no step says packet 3 was INVALID: %+v", c.Steps)
	}
}

// Where no rule drops INVALID packets (kube-proxy's nftables mode), the
// packet is routed on as it is: still addressed to the Service.
func TestInvalidAfterTheAnswerLeavesUntranslated(t *testing.T) {
	s := answered().at(time.Second)
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.PSH|nf.ACK, nf.Conntrack{})
	s.hook(3, nf.PostRouting, nf.StageLast, synOrig, nf.PSH|nf.ACK, nf.Conntrack{})
	s.last().OutIf = 9
	c := only(t, mustRun(s))
	want := "10.244.0.5:8080 answered (SYN,ACK), but then the client's PSH,ACK had no conntrack entry (INVALID), so no NAT applied: it left the node via ifindex 9 still addressed to 10.96.0.10:80"
	if c.Verdict != NotTranslated || describe.Reason(c) != want {
		t.Fatalf("%s (%s), want not-translated: %s", c.Verdict, describe.Reason(c), want)
	}
}

// A packet dropped after the answer, and the endpoint answering again
// after it (a retransmission got through): the connection recovered.
func TestDropAfterTheAnswerThenRepliesIsAnswered(t *testing.T) {
	s := answered().at(time.Second)
	est := ct(nf.CTEstablished, synOrig, synReply)
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.PSH|nf.ACK, est)
	s.drop(3, synOrig, est)
	s.at(200 * time.Millisecond)
	s.evs = append(s.evs, nf.Event{Time: s.t, Kind: nf.KindCount, CT: est,
		Counted: nf.Counted{Packets: [2]uint32{1, 1}}})
	c := only(t, mustRun(s))
	if c.Verdict != Answered {
		t.Fatalf("%s (%s), want answered", c.Verdict, describe.Reason(c))
	}
	// Without the counted reply, it broke.
	s.evs = s.evs[:len(s.evs)-1]
	if c := only(t, mustRun(s)); c.Verdict != Dropped || c.Drop.Invalid {
		t.Fatalf("%s (%s), drop %+v: want dropped, not for INVALID", c.Verdict, describe.Reason(c), c.Drop)
	}
}

// The UDP race: two datagrams of one new flow at once, each with its own
// unconfirmed entry; the second to reach confirmation is dropped there.
// The first is answered.
func TestInsertClashDropAtConfirm(t *testing.T) {
	s := &seq{}
	toPod := tup("10.0.0.2:5000", "10.244.0.5:53", nf.UDP)
	for pkt := uint64(1); pkt <= 2; pkt++ {
		nat := ct(nf.CTNew, udpOrig, udpReply)
		nat.ID = 76 + pkt
		s.hook(pkt, nf.PreRouting, nf.StagePostConntrack, udpOrig, 0, nat)
		s.hook(pkt, nf.PostRouting, nf.StageLast, toPod, 0, nat)
	}
	s.drop(2, toPod, nf.Conntrack{})
	s.last().Drop.Location = "nf_hook_slow+0x4a"
	clash := len(s.evs)
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, udpReply, 0, ct(nf.CTEstablishedReply, udpOrig, udpReply))
	s.hook(3, nf.PostRouting, nf.StageLast, udpOrig.Reverse(), 0, ct(nf.CTEstablishedReply, udpOrig, udpReply))
	c := only(t, mustRun(s))
	if c.Verdict != Answered || len(c.Drops) != 1 || !c.Drops[0].AtConfirm() || c.Drops[0].Packet != 2 {
		t.Fatalf("%s (%s), drops %+v: want answered, with the second datagram dropped at confirmation", c.Verdict, describe.Reason(c), c.Drops)
	}
	// Unanswered, the datagram's drop is the verdict.
	s.evs = s.evs[:clash]
	c = only(t, mustRun(s))
	if c.Verdict != Dropped || c.Drop == nil || !c.Drop.AtConfirm() || !strings.Contains(describe.Reason(c), "conntrack confirm") {
		t.Fatalf("%s (%s): want dropped at conntrack confirm", c.Verdict, describe.Reason(c))
	}
}

// A conntrack zone and mark are shown where the entry has them, and a mark
// a rule changes on the way.
func TestConntrackZoneAndMark(t *testing.T) {
	s := &seq{}
	entry := ct(nf.CTNew, synOrig, synReply)
	entry.Zone, entry.Mark = 3, 0x20
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, entry)
	entry.Mark = 0x21
	s.hook(1, nf.PreRouting, nf.StagePostDNAT, tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP), nf.SYN, entry)
	c := only(t, mustRun(s))
	if len(c.Steps) != 2 || c.Steps[0].CTZone != 3 || c.Steps[0].CTMark != 0x20 ||
		!strings.HasSuffix(describe.Step(c.Steps[0]), "conntrack NEW, zone 3, ct mark 0x20") || !strings.Contains(describe.Step(c.Steps[1]), "ct mark 0x20 → 0x21") {
		t.Errorf("steps %+v", c.Steps)
	}
}

// A Pod calls its own Service through a bridge without hairpin mode: its SYN,
// translated back to itself, dies in the bridge; the retransmission finds no
// entry (the first was never confirmed), is translated to the other
// endpoint, and is answered. The answer does not hide the drop, nor the
// second translation.
func TestAnsweredAfterDroppedTries(t *testing.T) {
	client, self, other := "10.244.0.12:39934", "10.244.0.12:8080", "10.244.0.11:8080"
	orig := tup(client, "10.96.0.10:80", nf.TCP)
	s := &seq{}
	try := func(pkt uint64, id uint64, to string) nf.Conntrack {
		fresh := nf.Conntrack{ID: id, Info: nf.CTNew, Orig: orig, Reply: orig.Reverse()}
		nat := nf.Conntrack{ID: id, Info: nf.CTNew, Orig: orig, Reply: tup(to, client, nf.TCP)}
		s.hook(pkt, nf.PreRouting, nf.StagePreConntrack, orig, nf.SYN, nf.Conntrack{})
		s.hook(pkt, nf.PreRouting, nf.StagePostConntrack, orig, nf.SYN, fresh)
		s.hook(pkt, nf.PreRouting, nf.StagePreDNAT, orig, nf.SYN, fresh)
		s.hook(pkt, nf.PreRouting, nf.StagePostDNAT, tup(client, to, nf.TCP), nf.SYN, nat)
		s.hook(pkt, nf.PreRouting, nf.StageLast, tup(client, to, nf.TCP), nf.SYN, nat)
		return nat
	}
	try(1, 1, self)
	s.drop(1, tup(client, self, nf.TCP), nf.Conntrack{})
	s.last().Drop = nf.Drop{Reason: "NOT_SPECIFIED", Location: "br_handle_frame_finish+0x392"}
	s.at(time.Second)
	try(2, 2, self)
	s.drop(2, tup(client, self, nf.TCP), nf.Conntrack{})
	s.last().Drop = nf.Drop{Reason: "NOT_SPECIFIED", Location: "br_handle_frame_finish+0x392"}
	s.at(time.Second)
	nat := try(3, 3, other)
	s.hook(3, nf.Forward, nf.StagePreFilter, tup(client, other, nf.TCP), nf.SYN, nat)
	s.hook(3, nf.PostRouting, nf.StageLast, tup(client, other, nf.TCP), nf.SYN, nat)
	est := nat
	est.Info = nf.CTEstablishedReply
	s.hook(4, nf.PreRouting, nf.StagePostConntrack, tup(other, client, nf.TCP), nf.SYN|nf.ACK, est)
	s.hook(4, nf.PostRouting, nf.StageLast, tup("10.96.0.10:80", client, nf.TCP), nf.SYN|nf.ACK, est)
	c := only(t, mustRun(s))
	if c.Verdict != Answered || c.Endpoint.String() != other || c.SYNs != 3 {
		t.Fatalf("%s (%s) by %s after %d SYNs, want answered by %s after 3", c.Verdict, describe.Reason(c), c.Endpoint, c.SYNs, other)
	}
	if got := fmt.Sprint(c.Endpoints); got != "["+self+" "+other+"]" {
		t.Errorf("endpoints %s, want %s then %s", got, self, other)
	}
	tries := c.Retried()
	if len(tries) != 2 || tries[0].Endpoint.String() != self || tries[0].Reason != "NOT_SPECIFIED" || !tries[0].Placed || tries[0].Gap.Hook != nf.PreRouting {
		t.Fatalf("tries %+v, want the 2 SYNs to %s dropped in PREROUTING", tries, self)
	}
	want := "answered (SYN,ACK) and the reply was translated back to " + client + ", after 2 SYNs were dropped in PREROUTING after priority INT_MAX-1 (NOT_SPECIFIED at br_handle_frame_finish+0x392); the dropped packets went to " + self + ", the retransmission that got through to " + other
	if !strings.HasSuffix(describe.Reason(c), want) {
		t.Errorf("why %q\nwant …%q", describe.Reason(c), want)
	}
	var notes []string
	for _, st := range c.Steps {
		if st.Packet == 3 && describe.Step(st) != "" {
			notes = append(notes, describe.Step(st))
		}
	}
	if !slices.Contains(notes, "DNAT 10.96.0.10:80 → "+other) || !slices.Contains(notes, "leaves the node via ifindex 0") {
		t.Errorf("the third SYN's steps %q, want its DNAT to %s and its way out", notes, other)
	}
	drops := 0
	for _, st := range c.Steps {
		if st.Drop != nil {
			drops++
		}
	}
	if drops != 2 {
		t.Errorf("%d drops in the timeline, want 2", drops)
	}
}

// A resolver's A and AAAA queries on one socket, each answered: the
// connection keeps each question and answer once, a retransmission and
// the same packet seen again at a later observer not counted twice.
func TestDNSMessagesOfAConnection(t *testing.T) {
	const name = "web.shop.svc.cluster.local."
	a, aaaa := new(dns.Msg), new(dns.Msg)
	a.SetQuestion(name, dns.TypeA)
	aaaa.SetQuestion(name, dns.TypeAAAA)
	a.Id, aaaa.Id = 1, 2
	aOK, aaaaNX := new(dns.Msg), new(dns.Msg)
	aOK.SetReply(a)
	rr, _ := dns.NewRR(name + " 5 IN A 10.96.5.10")
	aOK.Answer = []dns.RR{rr}
	aaaaNX.SetRcode(aaaa, dns.RcodeNameError)
	query := func(m *dns.Msg) []byte { return tracetest.DNSPacket(t, false, 5000, 53, m) }
	answer := func(m *dns.Msg) []byte { return tracetest.DNSPacket(t, false, 53, 5000, m) }

	s := &seq{}
	nat := ct(nf.CTNew, udpOrig, udpReply)
	est := ct(nf.CTEstablished, udpOrig, udpReply)
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, udpOrig, 0, nat)
	s.last().Data = query(a)
	s.hook(1, nf.PreRouting, nf.StagePostDNAT, tup("10.0.0.2:5000", "10.244.0.5:53", nf.UDP), 0, nat)
	s.last().Data = query(a)
	s.hook(2, nf.PreRouting, nf.StagePostConntrack, udpOrig, 0, nat)
	s.last().Data = query(aaaa)
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, udpReply, 0, ct(nf.CTEstablishedReply, udpOrig, udpReply))
	s.last().Data = answer(aOK)
	s.hook(4, nf.PreRouting, nf.StagePostConntrack, udpOrig, 0, est)
	s.last().Data = query(aaaa) // the resolver asks again
	s.hook(5, nf.PreRouting, nf.StagePostConntrack, udpReply, 0, ct(nf.CTEstablishedReply, udpOrig, udpReply))
	s.last().Data = answer(aaaaNX)
	c := only(t, mustRun(s))
	var got []string
	for _, d := range c.DNS {
		got = append(got, d.String())
	}
	want := []string{"A " + name, "AAAA " + name, "A " + name + " NOERROR (1 answer)", "AAAA " + name + " NXDOMAIN"}
	if !slices.Equal(got, want) {
		t.Errorf("DNS messages %q, want %q", got, want)
	}
	if got, want := describe.DNS(c), "A "+name+" → NOERROR (1 answer), AAAA "+name+" → NXDOMAIN"; got != want {
		t.Errorf("said %q, want %q", got, want)
	}
}

// An overlay packet carrying the connection's SYN (Event.Outer) is shown
// where it is made and where it leaves, is not counted as one of the
// connection's packets, and its drop is the connection's, placed, with
// the overlay packet named.
func TestCarriedByTheOverlay(t *testing.T) {
	toPod := tup("10.0.0.2:40000", "10.244.9.5:8080", nf.TCP)
	vxlan := tup("10.97.0.1:41000", "10.97.0.2:8472", nf.UDP)
	nat := ct(nf.CTNew, synOrig, tup("10.244.9.5:8080", "10.0.0.2:40000", nf.TCP))
	s := &seq{}
	s.hook(1, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.SYN, nat)
	s.hook(1, nf.PreRouting, nf.StagePostDNAT, toPod, nf.SYN, nat)
	s.hook(1, nf.PostRouting, nf.StageLast, toPod, nf.SYN, nat)
	s.last().OutIf = 7
	carrier := uint64(1 | 1<<63) // the same skb, set apart by the decoder
	s.hook(carrier, nf.LocalOut, nf.StagePreConntrack, toPod, nf.SYN, nf.Conntrack{})
	s.last().Outer = vxlan
	s.hook(carrier, nf.LocalOut, nf.StagePreFilter, toPod, nf.SYN, nf.Conntrack{})
	s.last().Outer = vxlan
	s.drop(carrier, toPod, nf.Conntrack{})
	s.last().Outer = vxlan
	conns, _ := run(s, Options{IfName: func(i uint32) string { return map[uint32]string{7: "flannel.1"}[i] }})
	c := only(t, conns)
	if c.Packets != [2]int{1, 0} || c.SYNs != 1 {
		t.Errorf("packets %v, SYNs %d: want the SYN once", c.Packets, c.SYNs)
	}
	var shown []string
	for _, st := range c.Steps {
		if st.Shown() {
			shown = append(shown, fmt.Sprintf("%d %s", st.Packet, describe.Step(st)))
		}
	}
	want := "0 SYN 10.0.0.2:40000 → 10.244.9.5:8080 carried in VXLAN 10.97.0.1:41000 → 10.97.0.2:8472"
	if !slices.Contains(shown, want) {
		t.Errorf("steps %q, want %q", shown, want)
	}
	d := c.Drop
	if c.Verdict != Dropped || d == nil || d.Outer != vxlan || !d.Placed || d.Gap.Hook != nf.LocalOut ||
		!strings.HasPrefix(describe.Reason(c), "the VXLAN packet carrying the SYN was discarded in OUTPUT between priority -1 and 1") {
		t.Errorf("%s, drop %+v: %s; want the VXLAN packet's drop in OUTPUT's filter", c.Verdict, d, describe.Reason(c))
	}
}

// A connection the tracer held and counted as answered (svctrace -A)
// starts at its settled record when a packet of it is dropped later: it
// is answered by its endpoint, then broke, like one seen whole; one whose
// settled record nothing follows stays answered.
func TestSettledThenDropped(t *testing.T) {
	est := ct(nf.CTEstablished, synOrig, synReply)
	s := &seq{}
	s.evs = append(s.evs, nf.Event{Time: 1000, Kind: nf.KindSettled, CT: est})
	s.t = 1000
	s.at(time.Second)
	s.hook(3, nf.PreRouting, nf.StagePostConntrack, synOrig, nf.PSH|nf.ACK, est)
	s.hook(3, nf.Forward, nf.StagePreFilter, tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP), nf.PSH|nf.ACK, est)
	s.drop(3, tup("10.0.0.2:40000", "10.244.0.5:8080", nf.TCP), est)
	c := only(t, mustRun(s))
	if !c.Settled || c.Answer != 1000 || c.Endpoint != synReply.Src || c.Verdict != Dropped || c.Outcome.Kind != BrokeDropped {
		t.Fatalf("settled %v, answer %d, endpoint %s: %s (%s); want settled at 1000 by %s, dropped after the answer",
			c.Settled, c.Answer, c.Endpoint, c.Verdict, describe.Reason(c), synReply.Src)
	}
	if want := "10.244.0.5:8080 answered (SYN,ACK), but then the client's PSH,ACK was discarded in FORWARD"; !strings.HasPrefix(describe.Reason(c), want) {
		t.Errorf("why %q, want %q…", describe.Reason(c), want)
	}
	if c := only(t, mustRun(&seq{evs: s.evs[:1]})); c.Verdict != Answered {
		t.Errorf("settled alone: %s (%s), want answered", c.Verdict, describe.Reason(c))
	}
}
