package tracer

import (
	"encoding/json"
	"errors"
	"math/bits"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

func raw(e bpfEvent) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(&e)), rawEventSize)
}

func v4(s string) [16]byte { return netip.MustParseAddr(s).As16() } // IPv4-mapped, as the kernel side writes it

func port(p uint16) uint16 { return bits.ReverseBytes16(p) } // network order, read as little endian

type fixedSymbols map[uint64]string

func (f fixedSymbols) Symbolize(a uint64) string { return f[a] }

func TestDecodeObserverEventWithConntrack(t *testing.T) {
	d := decoder{key: 42}
	ev, err := d.decode(raw(bpfEvent{
		Ts: 123, Skb: 0xffff888001234500, Ct: 0xffff888009876500, Netns: 4026532177, IfindexIn: 4,
		Kind: uint8(nf.KindHook), Hook: uint8(nf.PreRouting), Family: uint8(nf.IPv4), Stage: uint8(nf.StagePostDNAT),
		Ctinfo: uint8(nf.CTNew), CtStatus: uint32(nf.CTDstNAT | nf.CTDstNATDone), CtMark: 7, CtZone: 3, SkbMark: 0x4000,
		TcpFlags: uint8(nf.SYN), Flags: flagPacket | flagCT, Len: 60,
		Pkt:   bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.244.0.11"), Sport: port(41162), Dport: port(8080), Proto: uint8(nf.TCP)},
		Orig:  bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.96.0.10"), Sport: port(41162), Dport: port(80), Proto: uint8(nf.TCP)},
		Reply: bpfTuple{Saddr: v4("10.244.0.11"), Daddr: v4("10.99.0.2"), Sport: port(8080), Dport: port(41162), Proto: uint8(nf.TCP)},
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := nf.Tuple{Src: netip.MustParseAddrPort("10.99.0.2:41162"), Dst: netip.MustParseAddrPort("10.244.0.11:8080"), Proto: nf.TCP}
	if ev.Tuple != want {
		t.Errorf("tuple %v, want %v", ev.Tuple, want)
	}
	if !ev.Tuple.Src.Addr().Is4() {
		t.Errorf("IPv4 address decoded as %v, want a plain IPv4 address", ev.Tuple.Src.Addr())
	}
	if ev.CT.Orig.Dst != netip.MustParseAddrPort("10.96.0.10:80") || ev.CT.Reply.Src != netip.MustParseAddrPort("10.244.0.11:8080") {
		t.Errorf("conntrack tuples %v / %v", ev.CT.Orig, ev.CT.Reply)
	}
	if ev.CT.Info != nf.CTNew || ev.CT.Status != nf.CTDstNAT|nf.CTDstNATDone || ev.CT.Mark != 7 || ev.CT.Zone != 3 {
		t.Errorf("conntrack %+v", ev.CT)
	}
	if ev.Hook != nf.PreRouting || ev.Stage != nf.StagePostDNAT || ev.TCPFlags != nf.SYN || ev.Mark != 0x4000 || ev.NetNS != 4026532177 {
		t.Errorf("event %+v", ev)
	}
	// Identities are stable but are not the kernel's addresses.
	if ev.Packet == 0xffff888001234500 || ev.CT.ID == 0xffff888009876500 || ev.CT.ID == 0 {
		t.Errorf("kernel address leaked or lost: packet %#x ct %#x", ev.Packet, ev.CT.ID)
	}
	again, _ := d.decode(raw(bpfEvent{Skb: 0xffff888001234500, Ct: 0xffff888009876500, Flags: flagCT}))
	if again.Packet != ev.Packet || again.CT.ID != ev.CT.ID {
		t.Error("the same kernel addresses gave different identities")
	}
}

func TestDecodeWithoutConntrackHasNoEntry(t *testing.T) {
	d := decoder{}
	ev, _ := d.decode(raw(bpfEvent{Kind: uint8(nf.KindHook), Family: uint8(nf.IPv4), Flags: flagPacket, Ctinfo: 0,
		Pkt: bpfTuple{Saddr: v4("10.0.0.1"), Daddr: v4("10.0.0.2"), Sport: port(1), Dport: port(2), Proto: uint8(nf.UDP)}}))
	if ev.CT != (nf.Conntrack{}) {
		t.Errorf("conntrack %+v, want none", ev.CT)
	}
	// NOTRACK leaves the packet untracked on purpose: ctinfo 7, no entry.
	ev, _ = d.decode(raw(bpfEvent{Kind: uint8(nf.KindHook), Family: uint8(nf.IPv4), Flags: flagPacket, Ctinfo: uint8(nf.CTUntracked)}))
	if ev.CT.ID != 0 || ev.CT.Info != nf.CTUntracked {
		t.Errorf("conntrack %+v, want untracked", ev.CT)
	}
}

func TestDecodeICMPErrorAndIPv6(t *testing.T) {
	d := decoder{}
	a, b := netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
	ev, _ := d.decode(raw(bpfEvent{Kind: uint8(nf.KindHook), Family: uint8(nf.IPv6), Flags: flagPacket | flagInner,
		IcmpType: 1, IcmpCode: 4,
		Pkt:   bpfTuple{Saddr: b.As16(), Daddr: a.As16(), Proto: uint8(nf.ICMPv6)},
		Inner: bpfTuple{Saddr: a.As16(), Daddr: b.As16(), Sport: port(5353), Dport: port(53), Proto: uint8(nf.UDP)}}))
	if !ev.ICMP.IsError() || ev.ICMP.Inner.Dst != netip.AddrPortFrom(b, 53) {
		t.Fatalf("ICMP %+v", ev.ICMP)
	}
	if got := ev.ICMP.Describe(ev.Tuple.Proto); got != "port-unreachable" {
		t.Errorf("described as %q", got)
	}
	if ev.Tuple.Src.Addr() != b {
		t.Errorf("source %v", ev.Tuple.Src)
	}
}

func TestDecodeDrop(t *testing.T) {
	d := decoder{reasons: map[uint32]string{12: "NETFILTER_DROP"}, symbols: fixedSymbols{0xffffffff81a00000: "nf_hook_slow+0x9c"}}
	ev, _ := d.decode(raw(bpfEvent{Kind: uint8(nf.KindDrop), DropReason: 12, Location: 0xffffffff81a00000}))
	if ev.Drop.Reason != "NETFILTER_DROP" || ev.Drop.Location != "nf_hook_slow+0x9c" {
		t.Errorf("drop %+v", ev.Drop)
	}
	ev, _ = d.decode(raw(bpfEvent{Kind: uint8(nf.KindDrop), DropReason: 99}))
	if ev.Drop.Reason != "reason-99" {
		t.Errorf("unknown reason decoded as %q", ev.Drop.Reason)
	}
	// Before 5.17 kernels have no drop reasons at all.
	d.reasons = map[uint32]string{}
	if ev, _ = d.decode(raw(bpfEvent{Kind: uint8(nf.KindDrop), Location: 0xffffffff81a00000})); ev.Drop.Reason != "" {
		t.Errorf("no reason decoded as %q", ev.Drop.Reason)
	}
}

func TestDecodeShortRecord(t *testing.T) {
	_, err := (&decoder{}).decode(make([]byte, rawEventSize-1))
	if !errors.Is(err, errShortRecord) {
		t.Fatalf("err %v, want errShortRecord", err)
	}
}

func TestTargetKeyMatchesKernelLayout(t *testing.T) {
	k := targetKey(nf.Target{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP})
	if k.Addr != v4("10.96.0.10") || k.Port != port(80) || k.Proto != 6 {
		t.Errorf("key %+v", k)
	}
	if k.Addr[10] != 0xff || k.Addr[11] != 0xff {
		t.Errorf("IPv4 not IPv4-mapped: %v", k.Addr)
	}
}

func TestEventJSONRoundTrip(t *testing.T) {
	ev := nf.Event{Time: 5, Kind: nf.KindHook, Hook: nf.Forward, Stage: nf.StagePreFilter, Family: nf.IPv4, Packet: 9,
		Tuple:    nf.Tuple{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.0.2:2"), Proto: nf.TCP},
		TCPFlags: nf.SYN | nf.ACK,
		CT: nf.Conntrack{ID: 3, Info: nf.CTEstablishedReply, Status: nf.CTSeenReply | nf.CTConfirmed,
			Orig: nf.Tuple{Src: netip.MustParseAddrPort("10.0.0.1:1"), Dst: netip.MustParseAddrPort("10.0.0.2:2"), Proto: nf.TCP}}}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"hook":"FORWARD"`, `"stage":"pre-filter"`, `"tcp_flags":"SYN,ACK"`, `"info":"ESTABLISHED,REPLY"`, `"status":"SEEN_REPLY|CONFIRMED"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	var back nf.Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, ev) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, ev)
	}
}

func TestNearestSymbol(t *testing.T) {
	kallsyms := `ffffffff81000000 T _stext
ffffffff81a00000 T nf_hook_slow
ffffffff81a00400 t nf_hook_entries_grow
ffffffff81b00000 D some_data
ffffffffc0100000 t nft_do_chain	[nf_tables]
`
	for addr, want := range map[uint64]string{
		0xffffffff81a0009c: "nf_hook_slow+0x9c",
		0xffffffff81a00400: "nf_hook_entries_grow+0x0",
		0xffffffff81b00010: "nf_hook_entries_grow+0xffc10", // data symbols are skipped
		0xffffffffc01003e8: "nft_do_chain+0x3e8",
	} {
		got, ok := nearestSymbol(strings.NewReader(kallsyms), addr)
		if !ok || got != want {
			t.Errorf("%#x: %q, want %q", addr, got, want)
		}
	}
	if _, ok := nearestSymbol(strings.NewReader(kallsyms), 0x1000); ok {
		t.Error("an address below every symbol was symbolised")
	}
}

func TestReasonsFromFormat(t *testing.T) {
	format := `print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 12, "NETFILTER_DROP" }, { 128, "MAX" })`
	got := reasonsFromFormat(format)
	if got[12] != "NETFILTER_DROP" || got[2] != "NOT_SPECIFIED" || len(got) != 3 {
		t.Errorf("reasons %v", got)
	}
}

func TestGaps(t *testing.T) {
	for _, tc := range []struct {
		hook  nf.Hook
		after nf.Stage
		want  string
	}{
		{nf.Forward, nf.StagePreFilter, "FORWARD between priority -1 and 1: filter table (0)"},
		{nf.PreRouting, nf.StagePreDNAT, "PREROUTING between priority -101 and -99: DNAT (nat table) (-100)"},
		{nf.PreRouting, nf.StagePreConntrack, "PREROUTING between priority -201 and -199: conntrack (-200)"},
		{nf.PostRouting, nf.StagePreSNAT, "POSTROUTING between priority 99 and 101: SNAT (nat table) (100)"},
		{nf.PostRouting, nf.StageLast, "POSTROUTING after priority INT_MAX-1: conntrack confirm (INT_MAX)"},
		{nf.PreRouting, nf.StageNone, "PREROUTING before priority -201: raw table (-300)"},
		{nf.Forward, nf.StagePostFilter, "FORWARD after priority 1: security table (50)"},
		{nf.PreRouting, nf.StageLast, "PREROUTING after priority INT_MAX-1"},
	} {
		if got := nf.GapAfter(tc.hook, tc.after).String(); got != tc.want {
			t.Errorf("%s after %s: %q, want %q", tc.hook, tc.after, got, tc.want)
		}
	}
}

// Every planned observer exists in the object, and observers on a hook are
// in priority order (the stage order assembly relies on).
func TestPlanMatchesObject(t *testing.T) {
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	for h, plan := range nf.Plan {
		for i, s := range plan {
			p := spec.Programs[programs[s]]
			if p == nil || p.SectionName != "netfilter" {
				t.Errorf("%s %s: no netfilter program %q", h, s, programs[s])
			}
			if i > 0 && plan[i-1].Priority() >= s.Priority() {
				t.Errorf("%s: %s (%d) after %s (%d)", h, s, s.Priority(), plan[i-1], plan[i-1].Priority())
			}
		}
	}
	if rawEventSize != 400 {
		t.Errorf("event is %d bytes; a change of struct event needs its readers checked", rawEventSize)
	}
}

// internal/nf's enums have bpf/svctrace.h's values.
func TestEnumsMatchTheKernelSide(t *testing.T) {
	for got, want := range map[nf.Kind]bpfEventKind{nf.KindHook: bpfEventKindEVENT_HOOK, nf.KindDrop: bpfEventKindEVENT_DROP, nf.KindCount: bpfEventKindEVENT_COUNT, nf.KindSettled: bpfEventKindEVENT_SETTLED} {
		if uint32(got) != uint32(want) {
			t.Errorf("kind %s is %d in nf, %d in bpf", got, got, want)
		}
	}
	for got, want := range map[nf.Stage]bpfStage{
		nf.StageNone: bpfStageSTAGE_NONE, nf.StagePreConntrack: bpfStageSTAGE_PRE_CONNTRACK, nf.StagePostConntrack: bpfStageSTAGE_POST_CONNTRACK,
		nf.StagePreDNAT: bpfStageSTAGE_PRE_DNAT, nf.StagePostDNAT: bpfStageSTAGE_POST_DNAT, nf.StagePreFilter: bpfStageSTAGE_PRE_FILTER,
		nf.StagePostFilter: bpfStageSTAGE_POST_FILTER, nf.StagePreSNAT: bpfStageSTAGE_PRE_SNAT, nf.StagePostSNAT: bpfStageSTAGE_POST_SNAT,
		nf.StageLast: bpfStageSTAGE_LAST,
	} {
		if uint32(got) != uint32(want) {
			t.Errorf("stage %s is %d in nf, %d in bpf", got, got, want)
		}
	}
}

func TestSnaplenMatchesTheKernelSide(t *testing.T) {
	if n := len(bpfEvent{}.Data); n != nf.MaxSnaplen {
		t.Errorf("events carry %d bytes of a packet, nf.MaxSnaplen says %d", n, nf.MaxSnaplen)
	}
}

// A packet's path comes back as one event per observation: the first in
// full, each step the same packet with what that observer read - the
// addresses NAT changed (tuple indexes), conntrack appearing after
// conntrack, the headers captured after each translation.
func TestDecodePath(t *testing.T) {
	d := decoder{key: 42}
	client := bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.96.0.10"), Sport: port(41162), Dport: port(80), Proto: uint8(nf.TCP)}
	dnat := client
	dnat.Daddr, dnat.Dport = v4("10.244.0.11"), port(8080)
	reply := bpfTuple{Saddr: v4("10.244.0.11"), Daddr: v4("10.99.0.2"), Sport: port(8080), Dport: port(41162), Proto: uint8(nf.TCP)}
	unNATed := bpfTuple{Saddr: v4("10.96.0.10"), Daddr: v4("10.99.0.2"), Sport: port(80), Dport: port(41162), Proto: uint8(nf.TCP)}
	var p bpfPacketPath
	p.E = bpfEvent{Kind: pathKind, Ts: 1000, Hook: uint8(nf.PreRouting), Stage: uint8(nf.StagePreConntrack), Family: uint8(nf.IPv4),
		Flags: flagPacket, Skb: 0xffff888001234500, Netns: 7, IfindexIn: 3, Len: 60, TcpFlags: uint8(nf.SYN), Pkt: client, CapLen: 2}
	copy(p.E.Data[:], []byte{0x45, 0x00})
	p.Tuples[0], p.Tuples[1], p.Tuples[2], p.Tuples[3] = client, unNATed, dnat, reply
	p.Ntuples = 4
	ct := uint64(0xffff888009876500)
	p.Steps[0] = bpfPathStep{Dt: 10, Stage: uint8(nf.StagePostConntrack), Hook: uint8(nf.PreRouting), IfindexIn: 3, Len: 60,
		Flags: flagCT, Ct: ct, CtStatus: 0x8, Pkt: 0, Orig: 1, Reply: 2}
	p.Steps[1] = bpfPathStep{Dt: 25, Stage: uint8(nf.StagePostDNAT), Hook: uint8(nf.PreRouting), IfindexIn: 3, Len: 60,
		Flags: flagCT, Ct: ct, CtStatus: 0x1a8, Pkt: 3, Orig: 1, Reply: 4}
	p.Steps[2] = bpfPathStep{Dt: 40, Stage: uint8(nf.StageLast), Hook: uint8(nf.PostRouting), IfindexIn: 3, IfindexOut: 9, Len: 60,
		Flags: flagCT, Ct: ct, CtStatus: 0x1a8, Pkt: 3, Orig: 1, Reply: 4}
	p.Nsteps = 3
	p.DataStep, p.CapLen1 = 2, 3
	copy(p.Data1[:], []byte{0x45, 0x00, 0x01})
	b := unsafe.Slice((*byte)(unsafe.Pointer(&p)), rawPathSize)

	evs, err := d.decodeAll(b, nil)
	if err != nil || len(evs) != 4 {
		t.Fatalf("%d events, %v", len(evs), err)
	}
	tup := func(src, dst string) nf.Tuple {
		return nf.Tuple{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), Proto: nf.TCP}
	}
	first, post, dnatted, last := evs[0], evs[1], evs[2], evs[3]
	if first.Kind != nf.KindHook || first.Stage != nf.StagePreConntrack || first.CT.ID != 0 || string(first.Data) != "\x45\x00" {
		t.Errorf("first: %+v", first)
	}
	for i, ev := range evs {
		if ev.Packet != first.Packet || ev.Family != nf.IPv4 || ev.NetNS != 7 || ev.TCPFlags != nf.SYN || ev.Kind != nf.KindHook {
			t.Errorf("event %d is not the same packet: %+v", i, ev)
		}
	}
	if post.Time != 1010 || post.Stage != nf.StagePostConntrack || post.CT.ID == 0 || post.CT.Orig != tup("10.99.0.2:41162", "10.96.0.10:80") ||
		post.CT.Reply != tup("10.96.0.10:80", "10.99.0.2:41162") || post.Tuple != first.Tuple || post.Data != nil {
		t.Errorf("after conntrack: %+v", post)
	}
	if dnatted.Tuple != tup("10.99.0.2:41162", "10.244.0.11:8080") || dnatted.CT.Reply != tup("10.244.0.11:8080", "10.99.0.2:41162") ||
		dnatted.CT.ID != post.CT.ID || dnatted.CT.Status != 0x1a8 || string(dnatted.Data) != "\x45\x00\x01" {
		t.Errorf("after DNAT: %+v", dnatted)
	}
	if last.Hook != nf.PostRouting || last.OutIf != 9 || last.Time != 1040 || last.Tuple != dnatted.Tuple || last.Data != nil {
		t.Errorf("last: %+v", last)
	}
	// A path cut short is a bad record, not events made up.
	if evs, err := d.decodeAll(b[:rawPathSize-1], nil); err == nil || len(evs) != 0 {
		t.Errorf("short path: %d events, %v", len(evs), err)
	}
}

// A reported packet that ends a quiet run carries the run's counts in its
// record: they come out as a count event ahead of the packet's, naming the
// connection by the first observation that has its conntrack entry, and the
// packet's own events carry no counts.
func TestDecodeCountsCarriedByAPacket(t *testing.T) {
	d := decoder{key: 42}
	client := bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.96.0.10"), Sport: port(41162), Dport: port(80), Proto: uint8(nf.TCP)}
	reply := bpfTuple{Saddr: v4("10.244.0.11"), Daddr: v4("10.99.0.2"), Sport: port(8080), Dport: port(41162), Proto: uint8(nf.TCP)}
	counts := func(e *bpfEvent) {
		e.Packets, e.Bytes = [2]uint32{3, 2}, [2]uint64{180, 1400}
	}

	// A FIN shown at one observer, after conntrack: one event record.
	fin := bpfEvent{Kind: uint8(nf.KindHook), Ts: 5000, Hook: uint8(nf.PreRouting), Stage: uint8(nf.StagePostConntrack), Family: uint8(nf.IPv4),
		Flags: flagPacket | flagCT, Skb: 0xffff888001234500, Ct: 0xffff888009876500, Netns: 7, TcpFlags: uint8(nf.FIN | nf.ACK),
		Pkt: client, Orig: client, Reply: reply}
	counts(&fin)
	evs, err := d.decodeAll(raw(fin), nil)
	if err != nil || len(evs) != 2 {
		t.Fatalf("FIN: %d events, %v", len(evs), err)
	}
	want := nf.Counted{Packets: [2]uint32{3, 2}, Bytes: [2]uint64{180, 1400}}
	if c := evs[0]; c.Kind != nf.KindCount || c.Counted != want || c.CT.ID != evs[1].CT.ID || c.CT.Orig != evs[1].CT.Orig || c.Time != 5000 {
		t.Errorf("count: %+v", c)
	}
	if e := evs[1]; e.Kind != nf.KindHook || e.Counted != (nf.Counted{}) || e.TCPFlags != nf.FIN|nf.ACK {
		t.Errorf("FIN: %+v", e)
	}

	// An RST's path starts before conntrack (no entry yet): the count
	// names the connection by the step after conntrack.
	var p bpfPacketPath
	p.E = bpfEvent{Kind: pathKind, Ts: 6000, Hook: uint8(nf.PreRouting), Stage: uint8(nf.StagePreConntrack), Family: uint8(nf.IPv4),
		Flags: flagPacket, Skb: 0xffff888001234600, Netns: 7, TcpFlags: uint8(nf.RST), Pkt: client}
	counts(&p.E)
	p.Tuples[0], p.Tuples[1] = client, reply
	p.Ntuples = 2
	p.Steps[0] = bpfPathStep{Dt: 10, Stage: uint8(nf.StagePostConntrack), Hook: uint8(nf.PreRouting), Flags: flagCT, Ct: 0xffff888009876500,
		Pkt: 0, Orig: 1, Reply: 2}
	p.Nsteps = 1
	evs, err = d.decodeAll(unsafe.Slice((*byte)(unsafe.Pointer(&p)), rawPathSize), []nf.Event{{Kind: nf.KindDrop}})
	if err != nil || len(evs) != 4 || evs[0].Kind != nf.KindDrop {
		t.Fatalf("RST: %d events, %v", len(evs), err)
	}
	if c := evs[1]; c.Kind != nf.KindCount || c.Counted != want || c.CT.ID == 0 || c.CT.ID != evs[3].CT.ID || c.Time != 6000 {
		t.Errorf("count: %+v", c)
	}
	if evs[2].Stage != nf.StagePreConntrack || evs[2].Counted != (nf.Counted{}) || evs[3].Counted != (nf.Counted{}) {
		t.Errorf("RST's observations: %+v", evs[2:])
	}
}

// The kernel side leaves out QUEUE_PURGE drops, whatever number the running
// kernel gives the reason; a kernel without it leaves out none.
func TestIgnoredReason(t *testing.T) {
	if got := ignoredReason(map[uint32]string{2: "NOT_SPECIFIED", 87: "QUEUE_PURGE", 88: "IP_OUTNOROUTES"}); got != 87 {
		t.Errorf("got %d, want 87", got)
	}
	if got := ignoredReason(map[uint32]string{}); got != ^uint32(0) {
		t.Errorf("no reasons: got %d", got)
	}
}

// A DNS packet's capture is cut after its question, or after --snaplen's
// bytes when those are more; without DNSQuestions it is left whole.
func TestCapturedDNS(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("web.shop.svc.cluster.local.", dns.TypeA)
	m := new(dns.Msg)
	m.SetReply(q)
	rr, _ := dns.NewRR("web.shop.svc.cluster.local. 5 IN A 10.96.5.10")
	m.Answer = []dns.RR{rr}
	pkt := tracetest.DNSPacket(t, false, 53, 40000, m)
	_, end, ok := nf.ParseDNS(pkt)
	if !ok || end >= len(pkt) {
		t.Fatalf("the answer's question ends at %d of %d bytes", end, len(pkt))
	}
	for _, tc := range []struct {
		d    decoder
		want int
	}{
		{decoder{dns: true}, end},
		{decoder{dns: true, snaplen: 20}, end},
		{decoder{dns: true, snaplen: end + 4}, end + 4},
		{decoder{}, len(pkt)},
	} {
		if got := tc.d.captured(pkt, uint16(len(pkt))); len(got) != tc.want {
			t.Errorf("dns %v, snaplen %d: %d bytes kept, want %d", tc.d.dns, tc.d.snaplen, len(got), tc.want)
		}
	}
}
