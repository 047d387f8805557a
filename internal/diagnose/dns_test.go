package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolvconf"
	"github.com/svctrace/svctrace/internal/resolve"
	"k8s.io/apimachinery/pkg/types"
)

func TestLookupFindings(t *testing.T) {
	ip := netip.MustParseAddr
	kdns := netip.AddrPortFrom(ip("10.96.0.10"), 53)
	web := &resolve.Service{Namespace: "shop", Name: "web", ClusterIPs: []netip.Addr{ip("10.96.5.10")}}
	dnsSvc := &resolve.Service{Namespace: "kube-system", Name: "kube-dns", ClusterIPs: []netip.Addr{kdns.Addr()}, Selector: map[string]string{"k8s-app": "kube-dns"}}
	dnsSvc.Ports = []resolve.Port{{Service: dnsSvc, Name: "dns", Protocol: nf.UDP, Port: 53}}
	cluster := resolvconf.Cluster{DNS: []netip.Addr{kdns.Addr()}, Domain: "cluster.local"}
	conf := func(ns string) resolvconf.Conf {
		return resolvconf.Conf{Nameservers: cluster.DNS, Search: cluster.Search(ns), Ndots: 5, Timeout: 5}
	}
	// q is a pair of answers (A, AAAA) for name.
	q := func(name, rcode string, addrs ...netip.Addr) []probe.Query {
		return []probe.Query{{Name: name, Type: "A", Server: kdns, Rcode: rcode, Addrs: addrs}, {Name: name, Type: "AAAA", Server: kdns, Rcode: rcode}}
	}
	nx := func(names ...string) []probe.Query {
		var qs []probe.Query
		for _, n := range names {
			qs = append(qs, q(n, "NXDOMAIN")...)
		}
		return qs
	}
	resolved := func(name string, qs []probe.Query, answered string) probe.Resolution {
		return probe.Resolution{Name: name, Queries: qs, Addrs: []netip.Addr{ip("10.96.5.10")}, Answered: answered}
	}
	fqdn := "web.shop.svc.cluster.local."
	fromShop := []probe.Resolution{
		resolved("web", q(fqdn, "NOERROR", ip("10.96.5.10")), fqdn),
		resolved("web.shop", append(nx("web.shop.shop.svc.cluster.local."), q(fqdn, "NOERROR", ip("10.96.5.10"))...), fqdn),
		resolved(fqdn, q(fqdn, "NOERROR", ip("10.96.5.10")), fqdn),
	}
	fromFront := []probe.Resolution{
		{Name: "web", Queries: nx("web.front.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web.")},
		fromShop[1], fromShop[2],
	}
	refused := func(name string) probe.Resolution {
		qs := q(name, "")
		for i := range qs {
			qs[i].Failure = "refused (ICMP port unreachable: nothing listens there, or a rule REJECTs it)"
		}
		return probe.Resolution{Name: name, Queries: qs}
	}
	// The queries went on to coredns-0, ready, and nothing came back.
	coredns := resolve.Endpoint{Addr: netip.AddrPortFrom(ip("10.244.1.11"), 53), Ready: true, Serving: true, Pod: types.NamespacedName{Namespace: "kube-system", Name: "coredns-0"}}
	withPod := *dnsSvc
	withPod.Ports = []resolve.Port{{Service: &withPod, Name: "dns", Protocol: nf.UDP, Port: 53, Endpoints: []resolve.Endpoint{coredns}}}
	silent := func(name string) probe.Resolution {
		qs := q(name, "")
		for i := range qs {
			qs[i].From, qs[i].Failure = netip.AddrPortFrom(ip("10.244.1.20"), uint16(40000+i)), "no answer in 1.5s"
		}
		return probe.Resolution{Name: name, Queries: qs}
	}
	sentTo := map[netip.AddrPort]netip.AddrPort{}
	for i := range 2 {
		sentTo[netip.AddrPortFrom(ip("10.244.1.20"), uint16(40000+i))] = coredns.Addr
	}
	// The A answer is too big for UDP, and the TCP retry is refused.
	truncated := func(name string) probe.Resolution {
		qs := q(name, "NOERROR", ip("10.96.5.10"))
		qs[0].Truncated = true
		qs = append(qs, probe.Query{Name: name, Type: "A", Server: kdns, TCP: true, Failure: "refused (ICMP port unreachable)"})
		return probe.Resolution{Name: name, Queries: qs}
	}
	// A Pod asking NodeLocal DNSCache's link-local listener.
	nodeLocal := conf("shop")
	nodeLocal.Nameservers = []netip.Addr{ip("169.254.20.10")}
	viaCache := func(rs []probe.Resolution, rcode, failure string) []probe.Resolution {
		out := slices.Clone(rs)
		for i := range out {
			out[i].Queries = slices.Clone(out[i].Queries)
			for j := range out[i].Queries {
				q := &out[i].Queries[j]
				q.Server = netip.AddrPortFrom(ip("169.254.20.10"), 53)
				if rcode == "" {
					q.Rcode, q.Addrs, q.Failure = "", nil, failure
				}
			}
			if rcode == "" {
				out[i].Addrs, out[i].Answered = nil, ""
			}
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		lookup Lookup
		want   []report.Code
		object string // of the first finding
		says   string // the first finding's summary holds it
	}{
		{"from the Service's namespace", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc, Names: fromShop},
			[]report.Code{report.DNSSearchCost}, "the Pod's resolv.conf", "with ndots 5, the search list makes the resolver ask other names first"},
		{"the short name from another namespace", Lookup{Service: web, ClientNS: "front", Conf: conf("front"), Cluster: cluster, DNS: dnsSvc, Names: fromFront},
			[]report.Code{report.DNSOtherNamespace, report.DNSSearchCost}, "Service shop/web",
			`from namespace front, "web" does not resolve: the search list makes web.front.svc.cluster.local., web.svc.cluster.local., web.cluster.local., web., and every one is NXDOMAIN; the Service is in namespace shop: ask for web.shop or web.shop.svc.cluster.local.`},
		{"kube-dns without endpoints", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc,
			Names: []probe.Resolution{refused("web.shop.svc.cluster.local."), refused("web.shop.shop.svc.cluster.local."), refused(fqdn)}},
			[]report.Code{report.DNSNoAnswer}, "Service kube-system/kube-dns", "kube-system/kube-dns has no ready endpoint on udp 53"},
		{"a stale /etc/hosts line", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc,
			Names: []probe.Resolution{fromShop[0], {Name: "web.shop", Hosts: []resolvconf.HostsEntry{{Line: 3, Addr: ip("10.96.5.99"), Names: []string{"web.shop"}}}, Addrs: []netip.Addr{ip("10.96.5.99")}}, fromShop[2]}},
			[]report.Code{report.DNSWrongAddress}, "the Pod's /etc/hosts", "web.shop resolves to 10.96.5.99, not to its ClusterIP (10.96.5.10): the Pod's /etc/hosts answers it"},
		{"every form a name, NXDOMAIN", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc,
			Names: []probe.Resolution{{Name: "web", Queries: nx(fqdn)}, {Name: "web.shop", Queries: nx(fqdn)}, {Name: fqdn, Queries: nx(fqdn)}}},
			[]report.Code{report.DNSNotFound}, "Service shop/web", "no form of the name resolves: 10.96.0.10:53 answered NXDOMAIN for " + fqdn},
		{"a ready CoreDNS Pod that does not answer", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: &withPod, SentTo: sentTo,
			Names: []probe.Resolution{silent("web.shop.svc.cluster.local."), silent("web.shop.shop.svc.cluster.local."), silent(fqdn)}},
			[]report.Code{report.DNSNoAnswer}, "Pod kube-system/coredns-0", "kube-dns's DNAT sent them to Pod kube-system/coredns-0 (10.244.1.11:53), which is ready yet did not answer"},
		{"NodeLocal DNSCache answers", Lookup{Service: web, ClientNS: "shop", Conf: nodeLocal, Cluster: cluster, DNS: dnsSvc, Names: viaCache(fromShop[:1], "NOERROR", "")},
			[]report.Code{report.DNSNodeLocal}, "the Pod's resolv.conf", "the Pod asks 169.254.20.10, a link-local address: NodeLocal DNSCache on the node, not the DNS Service through its DNAT (it answered 2 of 2 queries)"},
		{"NodeLocal DNSCache not running", Lookup{Service: web, ClientNS: "shop", Conf: nodeLocal, Cluster: cluster, DNS: dnsSvc,
			Node:  &Sockets{Sockets: []node.Socket{{Proto: nf.UDP, Local: netip.AddrPortFrom(ip("127.0.0.1"), 53)}}},
			Names: viaCache(fromShop[:1], "", "refused (ICMP port unreachable: nothing listens there, or a rule REJECTs it)")},
			[]report.Code{report.DNSNoAnswer, report.DNSNodeLocal}, "NodeLocal DNSCache 169.254.20.10", "; nothing on the node listens on udp 169.254.20.10:53: the cache is not running here"},
		{"a truncated answer, and kube-dns without TCP", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc,
			Names: []probe.Resolution{truncated(fqdn), truncated(fqdn), truncated(fqdn)}},
			[]report.Code{report.DNSTruncatedTCPFails}, "Service kube-system/kube-dns",
			"the answer for web.shop.svc.cluster.local. A was too big for UDP (truncated) and the resolver's TCP retry to 10.96.0.10:53 failed: refused"},
		{"all well, the FQDN", Lookup{Service: web, ClientNS: "shop", Conf: conf("shop"), Cluster: cluster, DNS: dnsSvc, Names: []probe.Resolution{fromShop[0], fromShop[2]}},
			[]report.Code{report.DNSResolved}, "Service shop/web", "every form of the name resolves to its ClusterIP (10.96.5.10)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := tc.lookup.Findings()
			var codes []report.Code
			for _, f := range fs {
				codes = append(codes, f.Code)
			}
			if !slices.Equal(codes, tc.want) {
				t.Fatalf("codes %v, want %v: %+v", codes, tc.want, fs)
			}
			if fs[0].Object != tc.object || !strings.Contains(fs[0].Summary, tc.says) {
				t.Errorf("first finding %q: %s\nwant %q saying %q", fs[0].Object, fs[0].Summary, tc.object, tc.says)
			}
		})
	}
}

// The DNS answers a connection carried are said as notes: NXDOMAIN and
// SERVFAIL with what they mean, a truncated answer with its TCP retry.
func TestDNSNotes(t *testing.T) {
	q := func(rcode string, tc bool, name string) nf.DNS {
		return nf.DNS{Response: true, Rcode: rcode, Truncated: tc, Name: name, Type: "A"}
	}
	c := &flow.Conn{DNS: []nf.DNS{
		{Name: "web.front.svc.cluster.local.", Type: "A"},
		q("NXDOMAIN", false, "web.front.svc.cluster.local."),
		{Name: "web.front.svc.cluster.local.", Type: "AAAA", Response: true, Rcode: "NXDOMAIN"},
		q("NOERROR", true, "big.shop.svc.cluster.local."),
		q("NOERROR", false, "web.shop.svc.cluster.local."),
	}}
	got := dnsNotes(c)
	if len(got) != 2 || !strings.HasPrefix(got[0], "the DNS answered NXDOMAIN for A web.front.svc.cluster.local., AAAA web.front.svc.cluster.local.: no such name") ||
		!strings.HasPrefix(got[1], "the answer for A big.shop.svc.cluster.local. was truncated") {
		t.Errorf("notes %q", got)
	}
	if n := dnsNotes(&flow.Conn{DNS: []nf.DNS{q("NOERROR", false, "web.shop.svc.cluster.local.")}}); n != nil {
		t.Errorf("an answer with addresses is said: %q", n)
	}
}
