package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func findingCodes(fs []report.Finding) []report.Code {
	var out []report.Code
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return out
}

func TestConntrackFull(t *testing.T) {
	web := pod(shop, "web-1", "web", "10.244.0.11", "node-1", true)
	objs := resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Pods: []corev1.Pod{web}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web)}}
	in, _ := check(t, story{objs: objs})
	for _, c := range []struct {
		name     string
		count    uint64
		severity report.Severity // "": no finding
	}{
		{"roomy", 1000, ""},
		{"nearly full", 950, report.Warning},
		{"full", 1000 * 1000, report.Problem},
	} {
		t.Run(c.name, func(t *testing.T) {
			max := uint64(1000)
			if c.name == "roomy" {
				max = 1 << 20
			}
			in.Conntrack = &conntrack.Table{Count: c.count, Max: max, Stats: map[string]uint64{"drop": 7, "early_drop": 2}}
			fs := Check(in)
			i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "conntrack-full" })
			switch {
			case c.severity == "" && i >= 0:
				t.Errorf("finding %+v, want none", fs[i])
			case c.severity == "":
			case i < 0:
				t.Errorf("no conntrack-full finding in %v", findingCodes(fs))
			case fs[i].Severity != c.severity || !slices.Contains(fs[i].Evidence, "conntrack statistics of the node's namespace: drop 7, early_drop 2"):
				t.Errorf("finding %+v, want severity %s and the drop counters", fs[i], c.severity)
			}
			if c.severity == report.Problem && fs[0].Code != "conntrack-full" {
				t.Errorf("first finding %s, want conntrack-full", fs[0].Code)
			}
		})
	}
}

// dnsService is a UDP Service shop/dns, 10.96.1.53:53, whose one ready
// Pod (named name, 10.244.0.12) serves on port 8080.
func dnsService(t *testing.T, name string) Input {
	dns := pod(shop, name, "dns", "10.244.0.12", "node-1", true)
	dns.Spec.Containers[0].Ports[0].Protocol = corev1.ProtocolUDP
	s := svc("dns", "10.96.1.53", map[string]string{"app": "dns"}, intstr.FromInt32(8080))
	s.Spec.Ports[0].Protocol, s.Spec.Ports[0].Name, s.Spec.Ports[0].Port = corev1.ProtocolUDP, "dns", 53
	sl := slice("dns", 8080, dns)
	udp, port := corev1.ProtocolUDP, "dns"
	sl.Ports[0].Protocol, sl.Ports[0].Name = &udp, &port
	in, _ := check(t, story{objs: resolve.Objects{Services: []corev1.Service{s}, Pods: []corev1.Pod{dns}, Slices: []discoveryv1.EndpointSlice{sl}}})
	return in
}

func TestStaleConntrack(t *testing.T) {
	in := dnsService(t, "dns-2")
	ap := netip.MustParseAddrPort
	entry := func(client, to string) conntrack.Entry {
		return conntrack.Entry{Proto: "udp", Orig: [2]netip.AddrPort{ap(client), ap("10.96.1.53:53")},
			Reply: [2]netip.AddrPort{ap(to), ap("10.244.0.1:" + strings.Split(client, ":")[1])}, Timeout: 117}
	}
	in.Conntrack = &conntrack.Table{Count: 3, Max: 1 << 18, Entries: []conntrack.Entry{
		entry("10.99.0.2:40053", "10.244.0.19:8080"), // dns-1, gone
		entry("10.99.0.3:40054", "10.244.0.19:8080"),
		entry("10.99.0.4:40055", "10.244.0.12:8080"), // dns-2: fine
	}}
	fs := Check(in)
	i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "conntrack-stale" })
	if i < 0 {
		t.Fatalf("no conntrack-stale finding in %v", findingCodes(fs))
	}
	f := fs[i]
	if !strings.HasPrefix(f.Summary, "2 conntrack entries still send UDP to 10.96.1.53:53 (ClusterIP) on to 10.244.0.19:8080") ||
		len(f.Evidence) != 2 || !strings.Contains(f.Next[0], "conntrack -D -p udp -d 10.96.1.53 --dport 53 -r 10.244.0.19") {
		t.Errorf("finding %+v", f)
	}

	x := NewExplainer(in, fs, nil)
	c := &flow.Conn{Proto: nf.UDP, Client: ap("10.99.0.2:40053"), VIP: ap("10.96.1.53:53"), Endpoint: ap("10.244.0.19:8080"),
		Verdict: flow.NoReply, Prior: true}
	want := "a conntrack entry made before this trace sends the flow to 10.244.0.19:8080, which is not a serving endpoint of shop/dns:dns now"
	del := "conntrack -D -p udp -s 10.99.0.2 --sport 40053 -d 10.96.1.53 --dport 53"
	if e := x.Explain(c); !strings.HasPrefix(e.Blame, want) || !strings.HasSuffix(e.Blame, del) {
		t.Errorf("blame %q, want %q… %q", e.Blame, want, del)
	}
	// A flow that began in the trace went where the rules sent it: not a
	// stale entry's doing.
	c.Prior = false
	if e := x.Explain(c); strings.HasPrefix(e.Blame, "a conntrack entry") {
		t.Errorf("blame %q for a new flow", e.Blame)
	}

	// Entries that could not be read are said to be unread, not clean.
	in.Conntrack = &conntrack.Table{Count: 3, Max: 1 << 18, Unlisted: "listing conntrack entries: protocol not supported"}
	fs = Check(in)
	if i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "conntrack-unlisted" }); i < 0 || fs[i].Severity != report.Info ||
		!strings.Contains(fs[i].Next[0], "conntrack -L -p udp -d 10.96.1.53") || slices.ContainsFunc(fs, func(f report.Finding) bool { return f.Code == "conntrack-stale" }) {
		t.Errorf("unlisted table: findings %v", findingCodes(fs))
	}
}

// A connection answered, then broken by a packet conntrack found INVALID:
// dropped by kube-proxy's KUBE-FORWARD rule (iptables mode), or routed on
// untranslated (nftables mode has no such rule). The blame gives the cause
// the node's sysctls point to.
func TestInvalidPacketAfterTheAnswer(t *testing.T) {
	web := pod(shop, "web-1", "web", "10.244.0.11", "node-1", true)
	objs := resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Pods: []corev1.Pod{web}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web)}}
	in, _ := check(t, story{objs: objs})
	ap := netip.MustParseAddrPort
	in.Rules.InvalidDrop = "filter table, chain KUBE-FORWARD"
	in.Conntrack = &conntrack.Table{Count: 10, Max: 1 << 18, Stats: map[string]uint64{"invalid": 4},
		Sysctls: map[string]uint64{"nf_conntrack_tcp_loose": 0, "nf_conntrack_tcp_be_liberal": 0}}
	dropped := func() *flow.Conn {
		return &flow.Conn{Proto: nf.TCP, Client: ap("10.99.0.2:40000"), VIP: ap("10.96.1.10:80"), Endpoint: ap("10.244.0.11:8080"),
			Verdict: flow.Dropped, Invalid: 6,
			Drop:  &flow.Drop{Packet: 6, InNode: true, Placed: true, Invalid: true, Gap: nf.GapAfter(nf.Forward, nf.StagePreFilter)},
			Steps: []flow.Step{{Packet: 6, Kind: nf.KindHook, Flags: "PSH,ACK"}}}
	}
	x := NewExplainer(in, Check(in), nil)
	e := x.Explain(dropped())
	if e.Rule != "DROP: conntrack state INVALID (kube-proxy, filter table, chain KUBE-FORWARD)" {
		t.Errorf("rule %q", e.Rule)
	}
	for _, want := range []string{"conntrack found the client's PSH,ACK INVALID: it had no entry", "nf_conntrack_tcp_loose=0",
		"; kube-proxy drops INVALID packets (filter table, chain KUBE-FORWARD)", "or set net.netfilter.nf_conntrack_tcp_loose=1"} {
		if !strings.Contains(e.Blame, want) {
			t.Errorf("blame %q lacks %q", e.Blame, want)
		}
	}

	// Default sysctls: out of window is the likelier cause.
	in.Conntrack.Sysctls["nf_conntrack_tcp_loose"] = 1
	in.Rules.InvalidDrop = ""
	c := dropped()
	c.Verdict, c.Drop = flow.NotTranslated, nil
	e = NewExplainer(in, Check(in), nil).Explain(c)
	want := "conntrack found the client's PSH,ACK INVALID: outside the connection's TCP window, or its entry was gone (deleted or expired) (conntrack -S: invalid=4 so far); so no NAT applied, and the node routed it on still addressed to 10.96.1.10:80: net.netfilter.nf_conntrack_tcp_be_liberal=1"
	if e.Rule != "" || !strings.HasPrefix(e.Blame, want) {
		t.Errorf("rule %q, blame %q, want %q…", e.Rule, e.Blame, want)
	}

	// A drop of a packet that had its entry is someone else's rule.
	c = dropped()
	c.Drop.Invalid = false
	if e := x.Explain(c); strings.Contains(e.Blame, "INVALID") {
		t.Errorf("blame %q for a packet with an entry", e.Blame)
	}
}

// A connection sent to a Pod through this node whose answer came back
// another way: conntrack here saw the SYN and never the SYN,ACK, so it
// found the client's ACK INVALID. The blame says so from the packets seen
// and names the Pod whose route back to look at; once an answer was seen
// here, it is the usual INVALID.
func TestAnswerCameBackAnotherWay(t *testing.T) {
	web := pod(shop, "web-1", "web", "10.244.0.11", "node-2", true)
	objs := resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Pods: []corev1.Pod{web}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web)}}
	in, _ := check(t, story{objs: objs})
	in.Rules.InvalidDrop = "filter table, chain KUBE-FORWARD"
	ap := netip.MustParseAddrPort
	c := &flow.Conn{Proto: nf.TCP, Client: ap("10.99.0.2:40000"), VIP: ap("10.244.0.11:8080"),
		Verdict: flow.Dropped, Invalid: 2, Packets: [2]int{2, 0},
		Drop: &flow.Drop{Packet: 2, InNode: true, Placed: true, Invalid: true, Gap: nf.GapAfter(nf.Forward, nf.StagePreFilter)},
		Steps: []flow.Step{{Packet: 1, Kind: nf.KindHook, Flags: "SYN"}, {Packet: 1, Kind: nf.KindHook, Changes: []flow.Change{{Kind: flow.Left, Iface: "flannel.1"}}},
			{Packet: 2, Kind: nf.KindHook, Flags: "ACK"}}}
	x := NewExplainer(in, Check(in), nil)
	e := x.Explain(c)
	for _, want := range []string{"conntrack found the client's ACK INVALID: this node passed the SYN on (it left via flannel.1) and saw no answer to it",
		"the answer came back another way than through this node", "; kube-proxy drops INVALID packets (filter table, chain KUBE-FORWARD)",
		"look at the route from Pod shop/web-1 on node-2 back to 10.99.0.2"} {
		if !strings.Contains(e.Blame, want) {
			t.Errorf("blame %q lacks %q", e.Blame, want)
		}
	}
	if e.Cause != report.CTInvalid || e.Pod != "shop/web-1" || e.Node != "node-2" {
		t.Errorf("cause %s, pod %q on %q; want ct-invalid, shop/web-1 on node-2", e.Cause, e.Pod, e.Node)
	}
	c.Packets[flow.Reply] = 1
	c.Steps = append(c.Steps, flow.Step{Packet: 3, Dir: flow.Reply, Kind: nf.KindHook, Flags: "SYN,ACK"})
	if e := x.Explain(c); strings.Contains(e.Blame, "another way") || !strings.Contains(e.Blame, "INVALID") {
		t.Errorf("an answer seen here: blame %q", e.Blame)
	}
}

// A packet dropped at conntrack confirmation lost an insert clash: the
// blame when it killed the connection, a note when another packet was
// answered (the resolver's second query, which will time out).
func TestInsertClash(t *testing.T) {
	in := dnsService(t, "dns-1")
	in.Conntrack = &conntrack.Table{Count: 3, Max: 1 << 18, Stats: map[string]uint64{"insert_failed": 2, "clashres": 9}}
	ap := netip.MustParseAddrPort
	confirm := flow.Drop{Packet: 2, InNode: true, Placed: true, Reason: "NETFILTER_DROP", Location: "nf_hook_slow+0x4a",
		Gap: nf.GapAfter(nf.PostRouting, nf.StageLast)}
	c := &flow.Conn{Proto: nf.UDP, Client: ap("10.99.0.2:5000"), VIP: ap("10.96.1.53:53"), Endpoint: ap("10.244.0.12:8080"),
		Verdict: flow.Dropped, Drops: []flow.Drop{confirm}}
	c.Drop = &c.Drops[0]
	x := NewExplainer(in, Check(in), nil)
	want := "conntrack dropped the client's packet when confirming its new entry: another packet of the same flow (same addresses and ports) had made the entry first, an insert clash (conntrack -S: insert_failed 2, clashres 9)"
	e := x.Explain(c)
	if !strings.HasPrefix(e.Blame, want) || !strings.Contains(e.Blame, "single-request-reopen") {
		t.Errorf("blame %q, want %q…", e.Blame, want)
	}
	c.Verdict, c.Drop = flow.Answered, nil
	// The questions read in the kernel: the AAAA query is the one lost.
	const name = "web.shop.svc.cluster.local."
	c.DNS = []nf.DNS{{ID: 1, Name: name, Type: "A"}, {ID: 2, Name: name, Type: "AAAA"}, {ID: 1, Response: true, Rcode: "NOERROR", Answers: 1, Name: name, Type: "A"}}
	e = x.Explain(c)
	if e.Blame != "" || !slices.ContainsFunc(e.Notes, func(n string) bool {
		return strings.HasPrefix(n, want+"; the connection's DNS questions without an answer: AAAA "+name+";")
	}) {
		t.Errorf("answered: blame %q, notes %q: want the clash as a note, naming the AAAA query", e.Blame, e.Notes)
	}
	c.DNS = nil
	// A drop in a rule after the filter stage is not a clash.
	c.Verdict, c.Drops[0].Gap = flow.Dropped, nf.GapAfter(nf.Forward, nf.StagePreFilter)
	c.Drop = &c.Drops[0]
	if e := x.Explain(c); strings.Contains(e.Blame, "insert clash") {
		t.Errorf("blame %q for a drop in FORWARD", e.Blame)
	}
}
