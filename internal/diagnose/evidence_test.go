package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Connections are blamed from the kernel's evidence and the node's facts:
// each case writes down the cause before svctrace explains it.
func TestBlameFromEvidence(t *testing.T) {
	web := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	objs := func() story {
		return story{objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1},
			Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}}
	}
	vip, client := netip.MustParseAddrPort("10.96.1.10:80"), netip.MustParseAddrPort("10.99.0.2:40000")
	ep := netip.MustParseAddrPort("10.244.0.11:8080")
	toPod := node.Route{To: ep.Addr(), Type: "unicast", Dev: "cbr0", Src: netip.MustParseAddr("10.244.0.1")}
	pods := func(ss ...node.Socket) []node.Listeners {
		return []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(), Sockets: ss}}
	}
	tcp := func(a string, q, b uint32) node.Socket {
		return node.Socket{Proto: nf.TCP, Local: netip.MustParseAddrPort(a), Queue: q, Backlog: b}
	}
	syn := []flow.Step{{Packet: 1, Kind: nf.KindHook, Flags: "SYN"}}
	postrouting := nf.GapAfter(nf.PostRouting, nf.Next(nf.PostRouting, nf.StageNone))
	for last := postrouting.After; last != nf.StageNone; last = nf.Next(nf.PostRouting, last) {
		postrouting = nf.GapAfter(nf.PostRouting, last)
	}
	for _, c := range []struct {
		name     string
		net      *node.Facts
		conn     flow.Conn
		code     report.Code
		class    string
		blame    string // the blame starts with it
		evidence string // one evidence line contains it
	}{
		{name: "neighbour never answered", net: &node.Facts{Routes: []node.Route{toPod}, Neighbours: []node.Neighbour{{Addr: ep.Addr(), Dev: "cbr0", State: "FAILED"}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: postrouting, Reason: "NEIGH_FAILED", Location: "__neigh_event_send+0x1a0"}},
			code: report.KernelDrop, class: "neighbour",
			blame:    "Pod shop/web-1 on node-1: the kernel dropped the client's SYN to it after POSTROUTING, in the neighbour layer (the next hop's ARP/NDP): the next hop never answered ARP or NDP",
			evidence: "ip neigh: 10.244.0.11 dev cbr0 FAILED"},
		// An overlay's device with no forwarding entry for the next hop:
		// the node's overlay is to blame, not the Pod.
		{name: "no VXLAN forwarding entry", net: &node.Facts{Routes: []node.Route{{To: ep.Addr(), Type: "unicast", Dev: "flannel.1", Via: netip.MustParseAddr("10.244.1.0"), VXLAN: true}},
			Neighbours: []node.Neighbour{{Addr: netip.MustParseAddr("10.244.1.0"), Dev: "flannel.1", MAC: "0e:5c:97:01:00:02", State: "PERMANENT"}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: postrouting, Reason: "NO_TX_TARGET", Location: "vxlan_xmit+0xdb0"}},
			code: report.KernelDrop, class: "tunnel",
			blame:    "the overlay toward Pod shop/web-1 on node-1: the kernel dropped the client's SYN to it after POSTROUTING, in the tunnel's encapsulation",
			evidence: "via 10.244.1.0 dev flannel.1 (VXLAN: its forwarding table has no entry for the next hop's MAC address)"},
		{name: "no route", net: &node.Facts{Routes: []node.Route{{To: ep.Addr(), Type: "unreachable", Err: "no route to host"}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: nf.GapAfter(nf.Forward, nf.StageNone), Reason: "IP_INNOROUTES", Location: "ip_route_input_slow+0x9"}},
			code: report.KernelDrop, class: "routing", blame: "Pod shop/web-1 on node-1: the kernel dropped the client's SYN to it in FORWARD", evidence: "ip route get 10.244.0.11: no route to host (route type unreachable)"},
		{name: "no route, no ICMP error", net: &node.Facts{Routes: []node.Route{{To: ep.Addr(), Type: "unreachable", Err: "no route to host"}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Endpoint: ep, Gap: nf.GapAfter(nf.PreRouting, nf.StageNone), Reason: "NOT_SPECIFIED", Location: "ip_error+0x94"}},
			code: report.NoRouteToEndpoint, class: "routing", blame: "Pod shop/web-1 on node-1: this node has no usable route to 10.244.0.11 (the kernel dropped the SYN in PREROUTING",
			evidence: "no route to host"},
		{name: "rp_filter", net: &node.Facts{Routes: []node.Route{toPod}, Sysctls: map[string]string{"net.ipv4.conf.all.rp_filter": "1"}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Reason: "IP_RPFILTER", Location: "ip_rcv_finish_core+0x1"}},
			code: report.KernelDrop, class: "routing", evidence: "net.ipv4.conf.all.rp_filter = 1"},
		{name: "listens on loopback", net: &node.Facts{Routes: []node.Route{toPod}, Listeners: pods(tcp("127.0.0.1:8080", 0, 4096))},
			conn: flow.Conn{Verdict: flow.Reset, Outcome: flow.Outcome{Kind: flow.Refused, Answer: flow.Answer{From: ep, RST: true}}},
			code: report.ListensElsewhere, class: "socket",
			blame:    "Pod shop/web-1 on node-1 (ready): nothing listens on port 8080; its server listens on port 8080 only on 127.0.0.1:8080, not on 10.244.0.11",
			evidence: "sockets listening in shop/web-1's network namespace (sock_diag): tcp 127.0.0.1:8080"},
		{name: "reset with sockets unread", net: &node.Facts{Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(), Err: "no network namespace on this node holds 10.244.0.11"}}},
			conn: flow.Conn{Verdict: flow.Reset, Outcome: flow.Outcome{Kind: flow.Refused, Answer: flow.Answer{From: ep, RST: true}}},
			code: report.Refused, class: "socket", blame: "Pod shop/web-1 on node-1 (ready): nothing listens on port 8080",
			evidence: "not read: the sockets of shop/web-1: no network namespace on this node holds 10.244.0.11; would check: ss -ltnu"},
		{name: "accept queue full", net: &node.Facts{Routes: []node.Route{toPod}, Listeners: pods(tcp("0.0.0.0:8080", 2, 1))},
			conn: flow.Conn{Verdict: flow.NoReply},
			code: report.BacklogFull, class: "socket",
			blame: "Pod shop/web-1 on node-1 (ready) did not answer on port 8080: its server does not accept connections; the accept queue of 0.0.0.0:8080 is full (2 waiting, backlog 1)"},
		{name: "no answer, listener fine", net: &node.Facts{Routes: []node.Route{toPod}, Listeners: pods(tcp("0.0.0.0:8080", 0, 4096))},
			conn: flow.Conn{Verdict: flow.NoReply},
			code: report.NoAnswer, blame: "Pod shop/web-1 on node-1 (ready) did not answer on port 8080", evidence: "tcp 0.0.0.0:8080 (accept queue 0 of 4096)"},
		{name: "node's host-unreachable", net: &node.Facts{Routes: []node.Route{toPod}, Neighbours: []node.Neighbour{{Addr: ep.Addr(), Dev: "cbr0", State: "INCOMPLETE"}}},
			conn: flow.Conn{Verdict: flow.Rejected, Outcome: flow.Outcome{Kind: flow.NodeRejected, Answer: flow.Answer{From: netip.MustParseAddrPort("10.99.0.1:0"), Error: true, What: "host-unreachable", ICMP: flow.ICMPType{Proto: nf.ICMP, Type: 3, Code: 1}}}},
			code: report.EndpointUnanswered, class: "neighbour", blame: "Pod shop/web-1 on node-1: nothing on cbr0 answers ARP/NDP for 10.244.0.11", evidence: "ip neigh: 10.244.0.11 dev cbr0 INCOMPLETE"},
		{name: "link down: the neighbour fails because of it", net: &node.Facts{Routes: []node.Route{toPod}, Neighbours: []node.Neighbour{{Addr: ep.Addr(), Dev: "cbr0", State: "FAILED"}},
			Links: map[string]node.Link{"cbr0": {Up: true, State: "UP"}, "veth3": {State: "DOWN"}}, Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(), Link: "veth3"}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: postrouting, Reason: "NEIGH_FAILED", Location: "neigh_invalidate+0x7e"}},
			code: report.LinkDown, class: "link", blame: "Pod shop/web-1 on node-1: the node's link toward it, veth3, is down; the kernel dropped the client's SYN",
			evidence: "ip link show veth3: state DOWN"},
		{name: "link down, no reason given", net: &node.Facts{Routes: []node.Route{toPod}, Links: map[string]node.Link{"veth3": {State: "DOWN"}},
			Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(), Link: "veth3"}}},
			conn: flow.Conn{Verdict: flow.NoReply},
			code: report.LinkDown, class: "link", blame: "Pod shop/web-1 on node-1 (ready): the node's link toward it, veth3, is down"},
		{name: "a tc program", net: &node.Facts{Routes: []node.Route{toPod}, Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(), Link: "veth3"}},
			Qdiscs: []node.Qdisc{{Dev: "veth3", Kind: "clsact", Detail: "egress: bpf drop_ipv4 direct-action id 7", Dropped: 3}}},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: postrouting, Reason: "TC_EGRESS", Location: "__dev_queue_xmit+0x360"}},
			code: report.KernelDrop, class: "program", blame: "Pod shop/web-1 on node-1: the kernel dropped the client's SYN to it after POSTROUTING, in an eBPF program or tc action",
			evidence: "tc qdisc on veth3: clsact [egress: bpf drop_ipv4 direct-action id 7] (dropped 3)"},
		// The Pod's kernel drops the client's zero-window probes: the
		// connection holds data its application does not read.
		{name: "answered, then the window closed", net: &node.Facts{Routes: []node.Route{toPod}, Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: ep.Addr(),
			Sockets: []node.Socket{tcp("0.0.0.0:8080", 0, 4096)}, Held: []node.Held{{Local: ep, Remote: netip.MustParseAddrPort("10.244.0.1:33000"), RecvQ: 8192}}}}},
			conn: flow.Conn{Verdict: flow.Answered, SNAT: netip.MustParseAddrPort("10.244.0.1:33000"), Steps: syn, Drops: []flow.Drop{
				{Packet: 5, NetNS: 4026536126, Reason: "TCP_OLD_SEQUENCE", Location: "tcp_validate_incoming+0x16b"},
				{Packet: 6, NetNS: 4026536126, Reason: "TCP_OLD_SEQUENCE", Location: "tcp_validate_incoming+0x16b"}}},
			code: report.KernelDrop, class: "tcp-state",
			blame:    "Pod shop/web-1 on node-1 answered, then its kernel dropped 2 of the client's packets: a sequence number before the receive window: an old segment (TCP_OLD_SEQUENCE at tcp_validate_incoming+0x16b); its application has not read the 8192 bytes",
			evidence: "tcp 10.244.0.11:8080 ↔ 10.244.0.1:33000: 8192 bytes received and not read by its application (Recv-Q)"},
		{name: "an unknown reason, verbatim", net: &node.Facts{},
			conn: flow.Conn{Verdict: flow.Dropped, Steps: syn, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: nf.GapAfter(nf.Forward, nf.StageNone), Reason: "SOMETHING_NEW", Location: "f+0x1"}},
			code: report.UnplacedDrop, class: "other", blame: "the kernel dropped the SYN in FORWARD", evidence: "SOMETHING_NEW at f+0x1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in, fs := check(t, objs())
			in.Net = c.net
			x := NewExplainer(in, fs, nil)
			conn := c.conn
			conn.Proto, conn.Client, conn.VIP, conn.Endpoint = nf.TCP, client, vip, ep
			e := x.Explain(&conn)
			if e.Cause != c.code || e.Class != c.class || !strings.HasPrefix(e.Blame, c.blame) {
				t.Errorf("cause %s (%s): %q\nwant %s (%s): %q…", e.Cause, e.Class, e.Blame, c.code, c.class, c.blame)
			}
			if c.evidence != "" && !slices.ContainsFunc(e.Evidence, func(l string) bool { return strings.Contains(l, c.evidence) }) {
				t.Errorf("evidence %q lacks %q", e.Evidence, c.evidence)
			}
		})
	}
}

// A drop the kernel attributes to something other than a rule names no
// rule, even where a legacy table's stage sits in the gap.
func TestNoRuleForAReasonedDrop(t *testing.T) {
	web := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	in, fs := check(t, story{objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1},
		Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}})
	in.Rules.Mode = "iptables-legacy"
	x := NewExplainer(in, fs, nil)
	gap := nf.GapAfter(nf.PostRouting, nf.StageNone)
	for g := gap; g.Before != nf.StageNone; g = nf.GapAfter(nf.PostRouting, g.Before) {
		gap = nf.GapAfter(nf.PostRouting, g.Before)
	}
	if len(gap.Pieces) == 0 {
		t.Fatalf("no netfilter piece after the last observer of POSTROUTING: %+v", gap)
	}
	for _, c := range []struct {
		reason string
		rule   bool
	}{{"NEIGH_FAILED", false}, {"NETFILTER_DROP", true}} {
		d := &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: gap, Reason: c.reason, Location: "x+0x1"}
		conn := &flow.Conn{Proto: nf.TCP, Client: netip.MustParseAddrPort("10.99.0.2:40000"), VIP: netip.MustParseAddrPort("10.96.1.10:80"),
			Endpoint: netip.MustParseAddrPort("10.244.0.11:8080"), Verdict: flow.Dropped, Drop: d}
		if e := x.Explain(conn); (e.Rule != "") != c.rule {
			t.Errorf("%s: rule %q", c.reason, e.Rule)
		}
	}
}

// A drop in FORWARD's filter stage is blamed on the rule the packet
// reaches through the jumps, quoted with its path and comment.
func TestBlameTheRuleThroughJumps(t *testing.T) {
	const save = `*filter
:FORWARD ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:NP - [0:0]
-A FORWARD -j KUBE-FORWARD
-A FORWARD -i client0 -j NP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A NP -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -m comment --comment "shop/deny-web" -j DROP
COMMIT
`
	web := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	in, fs := check(t, story{objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1},
		Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}})
	in.Rules.Tables = kubeproxy.ParseTables("ip", "iptables-nft", save)
	x := NewExplainer(in, fs, nil)
	conn := &flow.Conn{Proto: nf.TCP, Client: netip.MustParseAddrPort("10.99.0.2:40000"), VIP: netip.MustParseAddrPort("10.96.1.10:80"),
		Endpoint: netip.MustParseAddrPort("10.244.0.11:8080"), Verdict: flow.Dropped, Steps: []flow.Step{{Packet: 1, Kind: nf.KindHook, Flags: "SYN"}},
		Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, In: "client0", Gap: nf.GapAfter(nf.Forward, nf.StagePreFilter), Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x1"}}
	e := x.Explain(conn)
	const rule = `in table ip filter (iptables-nft), chain NP, rule 1: -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -m comment --comment "shop/deny-web" -j DROP`
	if e.Rule != rule || e.Cause != report.RuleDrop || !strings.HasPrefix(e.Blame, "a rule "+rule+", not kube-proxy's, dropped the SYN to Pod shop/web-1") {
		t.Errorf("rule %q\nblame %q (%s)", e.Rule, e.Blame, e.Cause)
	}
	if want := "ip filter: FORWARD 2 → NP (-i client0) → chain NP, rule 1"; len(e.Evidence) == 0 || !strings.HasPrefix(e.Evidence[0], want) {
		t.Errorf("evidence %q, want %q…", e.Evidence, want)
	}
	// From elsewhere the jump is not taken: no rule of these drops it.
	conn.Drop.In = "uplink0"
	if e := x.Explain(conn); strings.Contains(e.Rule, "chain NP") {
		t.Errorf("from uplink0: rule %q", e.Rule)
	}
}

// Facts the diagnosis did not read are read again once for the connection
// that needs them, handed over for the recording, and taken back in by
// analysis with the same explanation.
func TestRecheckForTheConnection(t *testing.T) {
	web := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	s := story{objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1},
		Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}}
	ep := netip.MustParseAddrPort("10.244.0.11:8080")
	// Read at diagnosis: the route, and no neighbour entry yet.
	s.net = &node.Facts{Routes: []node.Route{{To: ep.Addr(), Type: "unicast", Dev: "cbr0"}}}
	in, fs := check(t, s)
	postrouting := nf.GapAfter(nf.PostRouting, nf.StageNone)
	for g := postrouting; g.Before != nf.StageNone; g = nf.GapAfter(nf.PostRouting, g.Before) {
		postrouting = nf.GapAfter(nf.PostRouting, g.Before)
	}
	conn := &flow.Conn{Proto: nf.TCP, Client: netip.MustParseAddrPort("10.99.0.2:40000"), VIP: netip.MustParseAddrPort("10.96.1.10:80"),
		Endpoint: ep, Verdict: flow.Dropped, Steps: []flow.Step{{Packet: 1, Kind: nf.KindHook, Flags: "SYN"}},
		Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: postrouting, Reason: "NEIGH_FAILED", Location: "__neigh_event_send+0x1"}}
	failed := &node.Facts{Routes: []node.Route{{To: ep.Addr(), Type: "unicast", Dev: "cbr0"}}, Neighbours: []node.Neighbour{{Addr: ep.Addr(), Dev: "cbr0", State: "FAILED"}}}
	var asked, recorded int
	x := NewExplainer(in, fs, nil)
	x.Recheck = func(w node.Want) *node.Facts {
		asked++
		if len(w.Addrs) != 1 || w.Addrs[0] != ep.Addr() {
			t.Errorf("read again for %v", w.Addrs)
		}
		return failed
	}
	x.Rechecked = func(*node.Facts) { recorded++ }
	const want = "ip neigh: 10.244.0.11 dev cbr0 FAILED"
	for range 2 {
		if e := x.Explain(conn); !slices.Contains(e.Evidence, want) {
			t.Errorf("evidence %q, want %q", e.Evidence, want)
		}
	}
	if asked != 1 || recorded != 1 {
		t.Errorf("read again %d times, recorded %d: want once", asked, recorded)
	}
	// Analysis: no node to read, the recorded facts instead.
	replayed := NewExplainer(in, fs, nil)
	replayed.AddFacts(failed)
	if e := replayed.Explain(conn); !slices.Contains(e.Evidence, want) {
		t.Errorf("replayed evidence %q", e.Evidence)
	}
}
