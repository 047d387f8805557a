package resolvconf

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// kubelet's resolv.conf for a ClusterFirst Pod of namespace shop, on a node
// whose own search domain is example.internal.
const kubelet = `search shop.svc.cluster.local svc.cluster.local cluster.local example.internal
nameserver 10.96.0.10
options ndots:5
`

var cluster = Cluster{DNS: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Domain: "cluster.local"}

func parse(t *testing.T, s string) Conf {
	t.Helper()
	c, err := Parse(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The names the resolver asks for, in order: the search list first under
// ndots, the name itself first at or above it.
func TestQueries(t *testing.T) {
	c := parse(t, kubelet)
	if c.Ndots != 5 || len(c.Nameservers) != 1 || c.Nameservers[0] != cluster.DNS[0] || len(c.Search) != 4 {
		t.Fatalf("parsed %+v", c)
	}
	for _, tc := range []struct {
		name string
		want []string
	}{
		{"web", []string{"web.shop.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web.example.internal.", "web."}},
		{"web.shop", []string{"web.shop.shop.svc.cluster.local.", "web.shop.svc.cluster.local.", "web.shop.cluster.local.", "web.shop.example.internal.", "web.shop."}},
		{"web.shop.svc.cluster.local.", []string{"web.shop.svc.cluster.local."}},
		{"a.b.c.d.e.f", []string{"a.b.c.d.e.f.", "a.b.c.d.e.f.shop.svc.cluster.local.", "a.b.c.d.e.f.svc.cluster.local.", "a.b.c.d.e.f.cluster.local.", "a.b.c.d.e.f.example.internal."}},
	} {
		if got := c.Queries(tc.name); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q,\nwant %q", tc.name, got, tc.want)
		}
	}
	// The cost of the search list: web.shop answers at its second name;
	// an external name with fewer than five dots, after four misses.
	if n := c.Asked("web.shop", "web.shop.svc.cluster.local"); n != 2 {
		t.Errorf("web.shop answered after %d names, want 2", n)
	}
	if n := c.Asked("api.example.com", "api.example.com."); n != 5 {
		t.Errorf("api.example.com answered after %d names, want 5", n)
	}
	if n := c.Asked("web", "web.other.svc.cluster.local"); n != 0 {
		t.Errorf("a name the search list never makes: %d", n)
	}
	one := parse(t, strings.Replace(kubelet, "ndots:5", "ndots:1", 1))
	if got := one.Queries("web.shop"); got[0] != "web.shop." {
		t.Errorf("ndots 1: %q, want web.shop. first", got)
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		want       []string // the problems' codes
		says       string
	}{
		{"kubelet's", kubelet, nil, ""},
		{"NodeLocal DNSCache", strings.Replace(kubelet, "10.96.0.10", "169.254.20.10", 1), nil, ""},
		{"a hard-coded resolver", strings.Replace(kubelet, "10.96.0.10", "8.8.8.8", 1), []string{"nameserver-not-cluster-dns"},
			"the nameserver is 8.8.8.8, not the cluster DNS Service (10.96.0.10)"},
		{"dnsPolicy Default: the node's own", "search example.internal\nnameserver 10.0.0.2\n", []string{"nameserver-not-cluster-dns", "search-incomplete"},
			"lacks shop.svc.cluster.local, svc.cluster.local, cluster.local"},
		{"ndots 1", strings.Replace(kubelet, "ndots:5", "ndots:1", 1), []string{"ndots-low"}, "ndots is 1 (kubelet writes 5)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := parse(t, tc.conf).Check(cluster, "shop")
			var codes, texts []string
			for _, p := range ps {
				codes, texts = append(codes, p.Code), append(texts, p.Text)
			}
			if !slices.Equal(codes, tc.want) || !strings.Contains(strings.Join(texts, "\n"), tc.says) {
				t.Errorf("problems %q, want %q saying %q:\n%s", codes, tc.want, tc.says, strings.Join(texts, "\n"))
			}
		})
	}
}
