package stitch

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
)

var (
	client = netip.MustParseAddrPort("10.244.1.12:51354")
	vip    = netip.MustParseAddrPort("10.96.5.20:80")
	pod    = netip.MustParseAddrPort("10.244.201.11:8080")
	wall   = time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
)

const us = uint64(time.Microsecond)

// hop is one packet's crossing of a node: where it came in and left,
// between two times (µs on the node's clock).
type hop struct {
	packet   int
	dir      flow.Dir
	in, out  uint64
	src, dst netip.AddrPort
	left     string // the interface it left by ("" : none)
	dnat     netip.AddrPort
}

// conn is a node's report of a connection made of hops.
func conn(id int, verdict flow.Verdict, o flow.Outcome, e *report.Explanation, hops ...hop) report.Conn {
	c := &flow.Conn{ID: id, Proto: nf.TCP, Client: hops[0].src, VIP: hops[0].dst, Verdict: verdict, Outcome: o,
		Start: hops[0].in * us, End: hops[len(hops)-1].out * us}
	for _, h := range hops {
		first := flow.Step{Time: h.in * us, Packet: h.packet, Dir: h.dir, Kind: nf.KindHook, Hook: nf.PreRouting,
			Tuple: nf.Tuple{Proto: nf.TCP, Src: h.src, Dst: h.dst}, Flags: "SYN",
			Changes: []flow.Change{{Kind: flow.Sent, Iface: "flannel.1"}}}
		if h.dir == flow.Reply {
			first.Flags, first.Changes[0].Kind = "SYN,ACK", flow.Replied
			if c.Answer == 0 {
				c.Answer = h.in * us
			}
		}
		c.Steps = append(c.Steps, first)
		if h.dnat.IsValid() {
			c.Endpoint = h.dnat
			c.Steps = append(c.Steps, flow.Step{Time: (h.in + 1) * us, Packet: h.packet, Dir: h.dir, Kind: nf.KindHook, Hook: nf.PreRouting,
				Changes: []flow.Change{{Kind: flow.DNAT, From: h.dst, To: h.dnat}}})
		}
		last := flow.Step{Time: h.out * us, Packet: h.packet, Dir: h.dir, Kind: nf.KindHook, Hook: nf.PostRouting}
		if h.left != "" {
			last.Changes = []flow.Change{{Kind: flow.Left, Iface: h.left}}
		}
		c.Steps = append(c.Steps, last)
	}
	return report.Conn{Conn: c, Explanation: e}
}

var (
	translated = flow.Outcome{Kind: flow.Translated, Answer: flow.Answer{From: pod, What: "SYN,ACK"}}
	unanswered = flow.Outcome{Kind: flow.Unanswered, Waited: 3 * time.Second}
	onNode2    = &report.Explanation{Service: "shop/web:http (ClusterIP)", Pod: "shop/web-2", Node: "node-2", Cause: report.NoAnswer, Blame: "pod shop/web-2 did not answer"}
)

// The client's node and the endpoint's: node-2's monotonic clock is 5 s
// ahead of node-1's, its wall clock 3 ms behind the truth; each crossing
// takes 70 µs.
func views(node1, node2 []report.Conn) []View {
	return []View{
		{Node: "node-1", Wall: wall, Mono: 1000 * us, To: 10_000_000 * us, Conns: node1},
		{Node: "node-2", Wall: wall.Add(-3 * time.Millisecond), Mono: 5_001_000 * us, From: 5_000_000 * us, To: 15_000_000 * us, Conns: node2},
	}
}

// on2 is node-2's clock for node-1's time t (µs).
func on2(t uint64) uint64 { return t + 5_000_000 }

func healthy() (node1, node2 report.Conn) {
	node1 = conn(1, flow.Answered, translated, onNode2,
		hop{packet: 1, in: 2000, out: 2098, src: client, dst: vip, dnat: pod, left: "flannel.1"},
		hop{packet: 2, dir: flow.Reply, in: 2318, out: 2330, src: pod, dst: client, left: "cbr0"})
	node2 = conn(1, flow.Answered, translated, nil,
		hop{packet: 1, in: on2(2168), out: on2(2200), src: client, dst: pod, left: "cbr0"},
		hop{packet: 2, dir: flow.Reply, in: on2(2240), out: on2(2248), src: pod, dst: client, left: "flannel.1"})
	return node1, node2
}

func TestHealthyAcrossNodes(t *testing.T) {
	node1, node2 := healthy()
	res := Stitch(views([]report.Conn{node1}, []report.Conn{node2}))
	if len(res.Conns) != 1 {
		t.Fatalf("%d connections, want 1 stitched", len(res.Conns))
	}
	c := res.Conns[0]
	if c.Verdict != flow.Answered || strings.Join(c.Nodes, ",") != "node-1,node-2" || c.Endpoint != pod || c.VIP != vip {
		t.Errorf("verdict %s, nodes %v, %s → %s; want answered across node-1,node-2, %s → %s", c.Verdict, c.Nodes, c.VIP, c.Endpoint, vip, pod)
	}
	// Measured both ways, node-2's clock is put back on node-1's exactly:
	// its steps sit between node-1's.
	if !res.Aligned[1] || res.Offsets[1] != -int64(5_000_000*us) {
		t.Errorf("node-2's offset %v (aligned %v), want -5s measured both ways", time.Duration(res.Offsets[1]), res.Aligned[1])
	}
	if res.Skew[1] != 3*time.Millisecond { // its wall clock was 3 ms behind
		t.Errorf("node-2's skew %v, want 3ms", res.Skew[1])
	}
	// The overlay packets carrying the answer and, much later, the FIN:
	// the answer left node-2 when its carrier did.
	vxlan := nf.Tuple{Proto: nf.UDP, Src: netip.MustParseAddrPort("10.97.1.2:40000"), Dst: netip.MustParseAddrPort("10.97.1.1:8472")}
	carrier := func(at uint64, flags string) []flow.Step {
		return []flow.Step{
			{Time: on2(at) * us, Dir: flow.Reply, Kind: nf.KindHook, Hook: nf.LocalOut, Flags: flags, Changes: []flow.Change{{Kind: flow.Carried, Inner: &vxlan}}},
			{Time: on2(at+8) * us, Dir: flow.Reply, Kind: nf.KindHook, Hook: nf.PostRouting, Changes: []flow.Change{{Kind: flow.Left, Iface: "eth0"}}}}
	}
	carried := *node2.Conn
	carried.Steps = append(append(append([]flow.Step(nil), node2.Steps...), carrier(2250, "SYN,ACK")...), carrier(4000, "FIN,ACK")...)
	res = Stitch(views([]report.Conn{node1}, []report.Conn{{Conn: &carried}}))
	// Left at 2258 (its carrier), not 2248: the crossings took 70 and 60
	// µs, read as 65 each: node-2's clock put 5 µs earlier. (The FIN's
	// carrier, much later, is another packet's.)
	if !res.Aligned[1] || res.Offsets[1] != -int64(5_000_000*us)-int64(5*us) {
		t.Errorf("with carriers, node-2's offset %v (aligned %v), want -5s-5µs", time.Duration(res.Offsets[1]), res.Aligned[1])
	}
	var got []string
	for _, s := range c.Steps {
		got = append(got, s.Node+" "+describe.Step(s)+" @"+time.Duration(s.Time-c.Start).String())
	}
	want := []string{
		"node-1 SYN 10.244.1.12:51354 → 10.96.5.20:80 in via flannel.1 @0s",
		"node-1 DNAT 10.96.5.20:80 → 10.244.201.11:8080 @1µs",
		"node-1 leaves the node via flannel.1 @98µs",
		"node-2 SYN 10.244.1.12:51354 → 10.244.201.11:8080 in via flannel.1 @168µs",
		"node-2 leaves the node via cbr0 @200µs",
		"node-2 reply SYN,ACK 10.244.201.11:8080 → 10.244.1.12:51354 in via flannel.1 @240µs",
		"node-2 leaves the node via flannel.1 @248µs",
		"node-1 reply SYN,ACK 10.244.201.11:8080 → 10.244.1.12:51354 in via flannel.1 @318µs",
		"node-1 leaves the node via cbr0 @330µs",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stitched steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// With the reply unseen, the wall clocks stand unless a packet would
// arrive before it left.
func TestOneWayClock(t *testing.T) {
	node1 := conn(1, flow.NoReply, unanswered, onNode2,
		hop{packet: 1, in: 2000, out: 2098, src: client, dst: vip, dnat: pod, left: "flannel.1"})
	node2 := conn(1, flow.NoReply, unanswered, onNode2,
		hop{packet: 1, in: on2(2090), out: on2(2100), src: client, dst: pod, left: "cbr0"})
	res := Stitch(views([]report.Conn{node1}, []report.Conn{node2}))
	// On the wall clocks it arrives at 2090-3000 µs: moved 3008 µs on, to
	// arrive at 2098 µs as it left.
	if res.Aligned[1] || res.Offsets[1] != -int64(5_003_000*us)+int64(3008*us) {
		t.Errorf("offset %v (aligned %v), want node-2 moved to arrive as it left", time.Duration(res.Offsets[1]), res.Aligned[1])
	}
	if c := res.Conns[0]; c.Verdict != flow.NoReply || c.Explanation.Blame != "on node-2, "+onNode2.Blame || len(c.Nodes) != 2 {
		t.Errorf("verdict %s across %v, blame %q; want node-2's no-reply and blame", c.Verdict, c.Nodes, c.Explanation.Blame)
	}
}

func TestLostBetweenNodes(t *testing.T) {
	sent := conn(1, flow.NoReply, unanswered, onNode2,
		hop{packet: 1, in: 2000, out: 2098, src: client, dst: vip, dnat: pod, left: "flannel.1"})
	for _, tc := range []struct {
		name         string
		node1, node2 []report.Conn
		tracedTo     uint64 // node-2's trace end, on its clock (µs); 0: the views'
		verdict      flow.Verdict
		dir          flow.Dir
		from, to     string
		blame        string
	}{
		{name: "never arrives", node1: []report.Conn{sent}, verdict: flow.NoReply, dir: flow.Original, from: "node-1", to: "node-2",
			blame: "the network between node-1 and node-2: the client's first packet left node-1 via flannel.1 and node-2 never saw it"},
		{name: "answer never comes back", node1: []report.Conn{sent}, node2: []report.Conn{func() report.Conn { _, n := healthy(); return n }()},
			verdict: flow.NoReply, dir: flow.Reply, from: "node-2", to: "node-1",
			blame: "the network between node-2 and node-1: the endpoint's answer left node-2 via flannel.1 and node-1 never saw it"},
		// node-2 stopped tracing before: nothing is known of the way.
		{name: "not traced there", node1: []report.Conn{sent}, tracedTo: on2(1000), verdict: flow.NoReply, blame: onNode2.Blame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vs := views(tc.node1, tc.node2)
			if tc.tracedTo != 0 {
				vs[1].To = tc.tracedTo * us
			}
			c := Stitch(vs).Conns[0]
			e := c.Explanation
			if c.Verdict != tc.verdict || e.Blame != tc.blame {
				t.Fatalf("%s, blame %q; want %s, %q", c.Verdict, e.Blame, tc.verdict, tc.blame)
			}
			if tc.from == "" {
				return
			}
			o := c.Outcome
			if o.Kind != flow.Crossing || o.From != tc.from || o.To != tc.to || o.Dir != tc.dir || e.Cause != report.LostBetweenNodes || e.Service != onNode2.Service {
				t.Errorf("outcome %+v, cause %s, service %q; want lost going %s from %s to %s", o, e.Cause, e.Service, tc.dir, tc.from, tc.to)
			}
			if r := describe.Reason(c.Conn); !strings.Contains(r, "left "+tc.from+" via flannel.1 and never reached "+tc.to) {
				t.Errorf("reason %q", r)
			}
		})
	}
}

// A drop on the endpoint's node decides, with that node's blame and the
// first node's Service.
func TestDroppedOnEndpointNode(t *testing.T) {
	node1 := conn(1, flow.NoReply, unanswered, onNode2,
		hop{packet: 1, in: 2000, out: 2098, src: client, dst: vip, dnat: pod, left: "flannel.1"})
	node2 := conn(1, flow.Dropped, flow.Outcome{Kind: flow.Discarded}, &report.Explanation{Cause: report.RuleDrop, Blame: "a rule in FORWARD", Evidence: []string{"policy DROP"}},
		hop{packet: 1, in: on2(2168), out: on2(2170), src: client, dst: pod})
	d := flow.Drop{Time: on2(2170) * us, Packet: 1, InNode: true, NetNS: 77, Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x46f"}
	node2.Drops, node2.Drop = []flow.Drop{d}, &d
	// Sharing node-2's kernel (a test bed), node-1 saw that drop too,
	// outside its namespace, and blamed it.
	seenAlso := d
	seenAlso.Time, seenAlso.InNode = 2170*us, false
	node1Too := node1
	c1 := *node1.Conn
	c1.Verdict, c1.Outcome, c1.Drops, c1.Drop = flow.Dropped, flow.Outcome{Kind: flow.Discarded}, []flow.Drop{seenAlso}, &seenAlso
	c1.Steps = append(c1.Steps, flow.Step{Time: seenAlso.Time, Packet: 1, Kind: nf.KindDrop, Drop: &seenAlso})
	node1Too.Conn = &c1
	for _, node1 := range []report.Conn{node1, node1Too} {
		c := Stitch(views([]report.Conn{node1}, []report.Conn{node2})).Conns[0]
		e := c.Explanation
		if c.Verdict != flow.Dropped || c.Drop == nil || c.Drop.Node != "node-2" || e.Blame != "on node-2, a rule in FORWARD" || e.Service != onNode2.Service || e.Evidence[0] != "node-2: policy DROP" {
			t.Errorf("%s, drop %+v, explanation %+v; want dropped on node-2 with its blame and node-1's Service", c.Verdict, c.Drop, e)
		}
		if len(c.Drops) != 1 || c.Steps[len(c.Steps)-1].Node != "node-2" {
			t.Errorf("drops %+v: want node-2's only", c.Drops)
		}
	}
}

// The answer goes back another way: node-2 sends it out of a link of its
// own, node-1 never sees it and drops the client's ACK (conntrack found it
// INVALID). node-1's drop decides; node-2 says where the answer went. A
// drop in the client's namespace, outside both nodes, which both saw
// (their kernel is shared), is kept once.
func TestAnswerAnotherWay(t *testing.T) {
	direct := pod
	node1 := conn(1, flow.Dropped, flow.Outcome{Kind: flow.Discarded}, &report.Explanation{Node: "node-2", Cause: report.CTInvalid, Blame: "conntrack found the client's ACK INVALID"},
		hop{packet: 1, in: 2000, out: 2098, src: client, dst: direct, left: "flannel.1"},
		hop{packet: 2, in: 2400, out: 2402, src: client, dst: direct})
	node2 := conn(1, flow.Answered, translated, nil,
		hop{packet: 1, in: on2(2168), out: on2(2200), src: client, dst: direct, left: "cbr0"},
		hop{packet: 2, dir: flow.Reply, in: on2(2240), out: on2(2248), src: direct, dst: client, left: "direct0"})
	dropped := flow.Drop{Time: 2402 * us, Packet: 2, InNode: true, Placed: true, Invalid: true, NetNS: 1, Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x46f"}
	inClient := flow.Drop{Time: 3000 * us, Dir: flow.Reply, NetNS: 99, Reason: "TCP_INVALID_SYN", Location: "tcp_validate_incoming+0x16b"}
	node1.Drops, node1.Drop = []flow.Drop{dropped, inClient}, &dropped
	seen2 := inClient
	seen2.Time = on2(3000) * us
	node2.Drops = []flow.Drop{seen2}
	for _, r := range []*report.Conn{&node1, &node2} {
		for _, d := range r.Drops {
			r.Steps = append(r.Steps, flow.Step{Time: d.Time, Packet: d.Packet, Dir: d.Dir, Kind: nf.KindDrop, Drop: &d})
		}
	}
	// Nothing translated the packet on the way, and node-2's wall clock
	// is 3 ms behind: it seems to have seen the SYN before node-1 did.
	// It runs the Pod, so it is the later.
	res := Stitch(views([]report.Conn{node1}, []report.Conn{node2}))
	if len(res.Conns) != 1 {
		t.Fatalf("%d connections, want 1 stitched", len(res.Conns))
	}
	c := res.Conns[0]
	e := c.Explanation
	if strings.Join(c.Nodes, ",") != "node-1,node-2" || e == nil {
		t.Fatalf("across %v, explanation %v; want node-1's, across node-1,node-2", c.Nodes, e)
	}
	if c.Verdict != flow.Dropped || c.Drop == nil || c.Drop.Node != "node-1" || e.Cause != report.CTInvalid {
		t.Errorf("%s, drop %+v, cause %s; want dropped on node-1, ct-invalid", c.Verdict, c.Drop, e.Cause)
	}
	want := "node-2: the endpoint's SYN,ACK left node-2 via direct0 and node-1 never saw it"
	if len(e.Evidence) == 0 || e.Evidence[len(e.Evidence)-1] != want {
		t.Errorf("evidence %q, want it to end with %q", e.Evidence, want)
	}
	var outside []string
	for _, d := range c.Drops {
		if !d.InNode {
			outside = append(outside, d.Node)
		}
	}
	if len(outside) != 1 {
		t.Errorf("the client's drop kept by %v, want once", outside)
	}
	if n := len(c.Steps); c.Steps[n-1].Drop == nil || c.Steps[n-2].Drop == nil || c.Steps[n-2].Drop.InNode == c.Steps[n-1].Drop.InNode {
		t.Errorf("last steps %+v, want node-1's drop, then the client's once", c.Steps[n-2:])
	}

	// The answer came back through node-1: nothing to say.
	healthy1, healthy2 := healthy()
	if e := Stitch(views([]report.Conn{healthy1}, []report.Conn{healthy2})).Conns[0].Explanation; slices.ContainsFunc(e.Evidence, func(l string) bool { return strings.Contains(l, "never saw") }) {
		t.Errorf("healthy: evidence %q", e.Evidence)
	}
}

// Connections only one node saw stay their own, marked with the node, and
// all are numbered anew in the order they started.
func TestUnmatchedAndNumbers(t *testing.T) {
	node1, node2 := healthy()
	other := netip.MustParseAddrPort("10.244.201.30:40000")
	alone := conn(7, flow.Answered, translated, nil,
		hop{packet: 1, in: on2(1000), out: on2(1010), src: other, dst: pod, left: "cbr0"})
	again := conn(8, flow.Answered, translated, nil,
		hop{packet: 1, in: on2(9000), out: on2(9010), src: other, dst: pod, left: "cbr0"})
	again.Continues = 7
	cs := Stitch(views([]report.Conn{node1}, []report.Conn{again, node2, alone})).Conns
	if len(cs) != 3 {
		t.Fatalf("%d connections, want 3", len(cs))
	}
	for i, want := range []struct {
		client    netip.AddrPort
		nodes     string
		continues int
	}{{other, "node-2", 0}, {client, "node-1,node-2", 0}, {other, "node-2", 1}} {
		c := cs[i]
		if c.ID != i+1 || c.Client != want.client || strings.Join(c.Nodes, ",") != want.nodes || c.Continues != want.continues || c.Steps[0].Node == "" {
			t.Errorf("#%d: id %d from %s across %v continues %d; want from %s across %s continuing %d", i+1, c.ID, c.Client, c.Nodes, c.Continues, want.client, want.nodes, want.continues)
		}
	}
}
