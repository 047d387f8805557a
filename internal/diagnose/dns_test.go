package diagnose

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolvconf"
	"github.com/svctrace/svctrace/internal/resolve"
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
