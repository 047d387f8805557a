package kubeproxy

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
)

// checkRuleset holds a parsed ruleset against the objects kube-proxy saw:
// every Service port has its ClusterIP destination and exactly its ready
// endpoints as DNAT targets, or, without endpoints, the "has no endpoints"
// reject.
func checkRuleset(t *testing.T, r *Ruleset, o objects) {
	t.Helper()
	for sp := range o.servicePorts() {
		p := r.Port(sp.String(), sp.Protocol)
		if p == nil {
			t.Errorf("%s: no rules found", sp)
			continue
		}
		var got []netip.AddrPort
		for _, e := range p.Endpoints {
			got = append(got, e.Addr)
		}
		want := slices.Clone(sp.Endpoints)
		slices.SortFunc(want, func(a, b netip.AddrPort) int { return strings.Compare(a.String(), b.String()) })
		if !slices.Equal(got, want) {
			t.Errorf("%s: DNAT targets %v, want %v", sp, got, want)
		}
		vip := netip.AddrPortFrom(sp.ClusterIP, sp.Port)
		if len(sp.Endpoints) == 0 {
			if len(p.Rejects) != 1 || p.Rejects[0].Why != "has no endpoints" || p.Rejects[0].Dest.Addr != vip || p.Rejects[0].Verdict != "REJECT" {
				t.Errorf("%s: rejects %+v, want one REJECT of %s for has no endpoints", sp, p.Rejects, vip)
			}
			continue
		}
		if !slices.ContainsFunc(p.Dests, func(d Dest) bool { return d.Addr == vip && d.Kind == "cluster IP" }) {
			t.Errorf("%s: destinations %v lack cluster IP %s", sp, p.Dests, vip)
		}
		if len(p.Rejects) != 0 {
			t.Errorf("%s has endpoints but rejects %+v", sp, p.Rejects)
		}
		if len(p.Chains) == 0 {
			t.Errorf("%s: no chains", sp)
		}
	}
	if p := r.Port("fixtures/sticky:http", "tcp"); p == nil || p.AffinityTimeout != 3*time.Hour {
		t.Errorf("fixtures/sticky:http: sessionAffinity timeout not read: %+v", p)
	}
	if p := r.Port("fixtures/single:http", "tcp"); p == nil || p.AffinityTimeout != 0 {
		t.Errorf("fixtures/single:http: affinity where there is none: %+v", p)
	}
	// Fixture-specific shapes: the NodePort and the external IP.
	if p := r.Port("fixtures/nodeport:http", "tcp"); p == nil || !slices.ContainsFunc(p.Dests, func(d Dest) bool { return d.Kind == "nodePort" && d.Addr.Port() == 30080 }) {
		t.Errorf("fixtures/nodeport:http: no nodePort 30080 destination in %+v", p)
	}
}

func TestParseRealIPTablesSave(t *testing.T) {
	for _, mode := range []string{"iptables", "iptables-legacy"} {
		for _, dir := range fixtureDirs(t, mode) {
			t.Run(dir, func(t *testing.T) {
				b, err := os.ReadFile(filepath.Join(dir, "iptables-save.txt"))
				if err != nil {
					t.Fatal(err)
				}
				r := &Ruleset{}
				if err := ParseIPTablesSave(r, string(b)); err != nil {
					t.Fatal(err)
				}
				checkRuleset(t, r, readObjects(t, dir))
				ext := r.Port("fixtures/external:http", "tcp")
				if ext == nil || !slices.Contains(ext.Dests, Dest{Addr: netip.MustParseAddrPort("203.0.113.10:80"), Kind: "external IP"}) {
					t.Errorf("external IP destination missing: %+v", ext)
				}
				// nf_conntrack_tcp_be_liberal is 0 where the fixtures were made.
				if r.InvalidDrop != "filter table, chain KUBE-FORWARD" {
					t.Errorf("INVALID drop %q, want kube-proxy's in KUBE-FORWARD", r.InvalidDrop)
				}
			})
		}
	}
}

// The nftables fixture is loaded into a throwaway namespace and read back
// over netlink, the way svctrace reads a node.
func TestReadRealNFTables(t *testing.T) {
	testutil.RequireRoot(t)
	for _, dir := range fixtureDirs(t, "nftables") {
		t.Run(dir, func(t *testing.T) {
			ns := newNetNS(t)
			load := exec.Command("ip", "netns", "exec", ns.Spec, "nft", "-f", filepath.Join(dir, "nft.txt"))
			if out, err := load.CombinedOutput(); err != nil {
				t.Fatalf("nft -f: %v\n%s", err, out)
			}
			// An endpoint chain nothing jumps to any more (kube-proxy removes
			// such chains a while later) is not a DNAT target.
			leftover := exec.Command("ip", "netns", "exec", ns.Spec, "nft", "add", "chain", "ip", "kube-proxy",
				"endpoint-LEFTOVER-fixtures/single/tcp/http__10.244.3.99/8080")
			if out, err := leftover.CombinedOutput(); err != nil {
				t.Fatalf("nft add chain: %v\n%s", err, out)
			}
			r, err := Read(ns)
			if err != nil {
				t.Fatal(err)
			}
			if r.Mode != ModeNFTables {
				t.Fatalf("mode %s (%s), want nftables", r.Mode, r.Note)
			}
			checkRuleset(t, r, readObjects(t, dir))
			if !slices.ContainsFunc(r.BaseChains, func(b BaseChain) bool {
				return b.Table == "kube-proxy" && b.Chain == "filter-forward" && b.Hook == "forward"
			}) {
				t.Errorf("no base chain filter-forward in %+v", r.BaseChains)
			}
			d := r.RangeDrop(netip.MustParseAddr("10.96.200.1"))
			if d == nil || d.Prefix != netip.MustParsePrefix("10.96.0.0/16") || d.Why != "Drop traffic to unallocated ClusterIPs" {
				t.Errorf("drop of unallocated ClusterIPs: %+v", d)
			}
			// nftables mode's default --nodeport-addresses: the primary
			// address (IPv4); IPv6 has no primary address, so every local one.
			if !r.AcceptsNodePort(netip.MustParseAddr("10.99.3.1")) || r.AcceptsNodePort(netip.MustParseAddr("10.99.3.9")) ||
				!r.AcceptsNodePort(netip.MustParseAddr("fd00::1")) || r.NodePortWhere != "table ip kube-proxy, set nodeport-ips" {
				t.Errorf("NodePorts accepted on %v (%s)", r.NodePortAddrs, r.NodePortWhere)
			}
			if r.RangeDrop(netip.MustParseAddr("10.97.0.1")) != nil {
				t.Error("a drop covers 10.97.0.1, outside the service range")
			}
		})
	}
}

// In iptables mode, the backend that holds KUBE-* chains is the one read.
func TestReadIPTablesBackends(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range []struct {
		restore string
		mode    Mode
	}{{"iptables-nft-restore", ModeIPTables}, {"iptables-legacy-restore", ModeIPTablesLegacy}} {
		t.Run(string(c.mode), func(t *testing.T) {
			if _, err := exec.LookPath(c.restore); err != nil {
				t.Skipf("%s not installed", c.restore)
			}
			ns := newNetNS(t)
			sp := ServicePort{Namespace: "shop", Name: "web", PortName: "http", Protocol: "tcp",
				ClusterIP: netip.MustParseAddr("10.96.7.7"), Port: 80, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.244.0.9:8080")}}
			empty := ServicePort{Namespace: "shop", Name: "empty", Protocol: "tcp", ClusterIP: netip.MustParseAddr("10.96.7.8"), Port: 80}
			load := exec.Command("ip", "netns", "exec", ns.Spec, c.restore)
			load.Stdin = strings.NewReader(IPTablesRestore([]ServicePort{sp, empty}, Options{}))
			if out, err := load.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", c.restore, err, out)
			}
			r, err := Read(ns)
			if err != nil {
				t.Fatal(err)
			}
			if r.Mode != c.mode {
				t.Fatalf("mode %s (%s), want %s", r.Mode, r.Note, c.mode)
			}
			if p := r.Port("shop/web:http", "tcp"); p == nil || len(p.Endpoints) != 1 || p.Endpoints[0].Addr.String() != "10.244.0.9:8080" {
				t.Errorf("shop/web:http: %+v", p)
			}
			if p := r.Port("shop/empty", "tcp"); p == nil || len(p.Rejects) != 1 {
				t.Errorf("shop/empty: %+v", p)
			}
		})
	}
}

func TestReadNoKubeProxy(t *testing.T) {
	testutil.RequireRoot(t)
	ns := newNetNS(t)
	r, err := Read(ns)
	if err != nil {
		t.Fatal(err)
	}
	if r.Mode != ModeNone || len(r.Ports) != 0 {
		t.Errorf("empty namespace: mode %s, %d ports", r.Mode, len(r.Ports))
	}
	if !strings.Contains(r.Note, "eBPF kube-proxy replacement") {
		t.Errorf("note %q does not mention a replacement", r.Note)
	}
}

func TestParseNFTChain(t *testing.T) {
	for _, c := range []struct {
		in   string
		key  PortKey
		ep   string
		fail bool
	}{
		{in: "service-2QRHZV4L-default/kubernetes/tcp/https", key: PortKey{"default/kubernetes:https", "tcp"}},
		{in: "endpoint-ZIPUHSU7-default/kubernetes/tcp/https__10.99.3.1/6443", key: PortKey{"default/kubernetes:https", "tcp"}, ep: "10.99.3.1:6443"},
		// kube-proxy writes an IPv6 address with dots for colons.
		{in: "endpoint-ABCDEFGH-ns/dns/udp/__fd00.10.244..1a/53", key: PortKey{"ns/dns", "udp"}, ep: "[fd00:10:244::1a]:53"},
		{in: "external-XEXIDDIG-fixtures/nodeport/tcp/http", key: PortKey{"fixtures/nodeport:http", "tcp"}},
		{in: "filter-forward", fail: true},
		{in: "service-X-a/b/tcp", fail: true},
		{in: "endpoint-X-a/b/tcp/p", fail: true},
	} {
		key, ep, ok := parseNFTChain(c.in)
		if ok == c.fail || key != c.key || (c.ep != "" && ep.String() != c.ep) {
			t.Errorf("parseNFTChain(%q) = %v %v %v", c.in, key, ep, ok)
		}
	}
}

func newNetNS(t *testing.T) nf.NetNS {
	ns, err := nf.ResolveNetNS(testutil.NewNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// A ruleset survives a recording: JSON and back.
func TestRulesetJSON(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "kube-proxy-v1.34.4", "iptables", "iptables-save.txt"))
	if err != nil {
		t.Fatal(err)
	}
	r := &Ruleset{Mode: ModeIPTables, Note: "read with iptables-nft-save",
		RangeDrops: []RangeDrop{{Prefix: netip.MustParsePrefix("10.96.0.0/16"), Why: "unallocated"}}}
	if err := ParseIPTablesSave(r, string(b)); err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Ruleset
	if err := json.Unmarshal(j, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(&back)
	if string(again) != string(j) || len(back.Ports) != len(r.Ports) || len(back.Ports) == 0 {
		t.Fatalf("ruleset changed through JSON: %d ports, want %d", len(back.Ports), len(r.Ports))
	}
	for k, p := range r.Ports {
		if q := back.Ports[k]; q == nil || !slices.Equal(q.Endpoints, p.Endpoints) || !slices.Equal(q.Dests, p.Dests) || len(q.Rejects) != len(p.Rejects) {
			t.Errorf("%s: %+v, want %+v", k, q, p)
		}
	}
}

// externalTrafficPolicy: Local without a local endpoint: kube-proxy drops
// the NodePort in KUBE-EXTERNAL-SERVICES by port alone.
func TestNodePortDropWithoutLocalEndpoints(t *testing.T) {
	r := &Ruleset{}
	err := ParseIPTablesSave(r, "*filter\n"+`-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "shop/etp:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30090 -j DROP`+"\n")
	if err != nil {
		t.Fatal(err)
	}
	p := r.Port("shop/etp:http", "tcp")
	if p == nil || len(p.Rejects) != 1 || p.Rejects[0].Dest.String() != "nodePort 30090" || p.Rejects[0].Verdict != "DROP" {
		t.Fatalf("%+v", p)
	}
}

// Where NodePorts are accepted: every local address (the catch-all jump
// the fixtures hold), or only the addresses --nodeport-addresses names,
// one jump each.
func TestNodePortAddresses(t *testing.T) {
	const nodeports = `-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"`
	for _, c := range []struct {
		name, rules    string
		accept, refuse []string
	}{
		{"catch-all", "-A KUBE-SERVICES " + nodeports + " -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
			[]string{"10.99.3.1", "10.98.3.1", "fd00::1"}, nil},
		{"limited", "-A KUBE-SERVICES -d 10.99.3.1/32 " + nodeports + " -j KUBE-NODEPORTS\n-A KUBE-SERVICES -d 10.99.4.1/32 " + nodeports + " -j KUBE-NODEPORTS",
			[]string{"10.99.3.1", "10.99.4.1", "fd00::1"}, []string{"10.98.3.1", "127.0.0.1"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &Ruleset{}
			if err := ParseIPTablesSave(r, "*nat\n"+c.rules+"\n"); err != nil {
				t.Fatal(err)
			}
			for _, a := range c.accept {
				if !r.AcceptsNodePort(netip.MustParseAddr(a)) {
					t.Errorf("NodePorts refused on %s (%v)", a, r.NodePortAddrs)
				}
			}
			for _, a := range c.refuse {
				if r.AcceptsNodePort(netip.MustParseAddr(a)) {
					t.Errorf("NodePorts accepted on %s (%v)", a, r.NodePortAddrs)
				}
			}
			if len(c.refuse) > 0 && r.NodePortWhere != "nat table, chain KUBE-SERVICES: -d ADDRESS -j KUBE-NODEPORTS" {
				t.Errorf("where: %q", r.NodePortWhere)
			}
			var back Ruleset
			if b, err := json.Marshal(r); err != nil || json.Unmarshal(b, &back) != nil || !slices.Equal(back.NodePortAddrs, r.NodePortAddrs) {
				t.Errorf("recorded as %s (%v), read back %v", b, err, back.NodePortAddrs)
			}
		})
	}
}

// The fast word splitter agrees with the general one.
func TestSplitArgs(t *testing.T) {
	for _, line := range []string{
		`-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y`,
		`-A X -m comment --comment "a \"quoted\" \\ word" -j ACCEPT`,
		`-A X  -j   DROP	-m comment --comment ""`,
		`-A X -m comment --comment pre"fix"post -j ACCEPT`,
	} {
		fast, err1 := splitArgs(line)
		slow, err2 := splitArgsSlow(line)
		if (err1 == nil) != (err2 == nil) || !slices.Equal(fast, slow) {
			t.Errorf("%s:\nfast %q %v\nslow %q %v", line, fast, err1, slow, err2)
		}
	}
	if _, err := splitArgs(`-A X --comment "open`); err == nil {
		t.Error("an unterminated quote accepted")
	}
}

// xt_recent's lists, as /proc/net/xt_recent prints them, and the tick rate
// found from the uptime.
func TestRecentLists(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "KUBE-SEP-X")
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("src=10.99.0.2 ttl: 64 last_seen: 4299947581 oldest_pkt: 2 4299947000, 4299947581\nsrc=10.99.0.3 ttl: 63 last_seen: 4299940000 oldest_pkt: 1 4299940000\n")
	f.Seek(0, 0)
	got := parseRecent(f)
	want := []recentEntry{{netip.MustParseAddr("10.99.0.2"), 4299947581}, {netip.MustParseAddr("10.99.0.3"), 4299940000}}
	if !slices.Equal(got, want) {
		t.Errorf("got %+v", got)
	}
	for _, c := range []struct {
		jiffies uint64
		uptime  float64
		hz      int
	}{
		{4299947581, 20221.39, 250}, // measured on this kind of machine
		{1<<32 - 300*1000 + 3600*1000, 3600, 1000},
		{1<<32 - 300*100 + 86400*100, 86400.5, 100},
		{12345, 3600, 0}, // explains nothing
	} {
		if hz := hzFrom(c.jiffies, c.uptime); hz != c.hz {
			t.Errorf("jiffies %d after %.0f s: HZ %d, want %d", c.jiffies, c.uptime, hz, c.hz)
		}
	}
}
