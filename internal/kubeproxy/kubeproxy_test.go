package kubeproxy

import (
	"net/netip"
	"strings"
	"testing"
)

// Chain names seen in real clusters' iptables-save output.
func TestChainNamesMatchKubeProxy(t *testing.T) {
	for _, tc := range []struct {
		sp   ServicePort
		want string
	}{
		{ServicePort{Namespace: "default", Name: "kubernetes", PortName: "https", Protocol: "tcp"}, "KUBE-SVC-NPX46M4PTMTKRN6Y"},
		{ServicePort{Namespace: "kube-system", Name: "kube-dns", PortName: "dns", Protocol: "udp"}, "KUBE-SVC-TCOU7JCQXEZGVUNU"},
		{ServicePort{Namespace: "kube-system", Name: "kube-dns", PortName: "dns-tcp", Protocol: "tcp"}, "KUBE-SVC-ERIFXISQEP7F7OF4"},
		{ServicePort{Namespace: "default", Name: "nginx", Protocol: "tcp"}, "KUBE-SVC-2CMXP7HKUVJN7L6M"},
	} {
		if got := tc.sp.SvcChain(); got != tc.want {
			t.Errorf("%s: SvcChain = %s, want %s", tc.sp, got, tc.want)
		}
	}
}

func TestIPTablesRestoreLayout(t *testing.T) {
	web := ServicePort{Namespace: "lab", Name: "web", PortName: "http", Protocol: "tcp",
		ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("10.244.0.11:8080"), netip.MustParseAddrPort("10.244.0.12:8080")}}
	empty := ServicePort{Namespace: "lab", Name: "empty", PortName: "http", Protocol: "tcp",
		ClusterIP: netip.MustParseAddr("10.96.0.20"), Port: 80}
	out := IPTablesRestore([]ServicePort{web, empty}, Options{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")})

	for _, want := range []string{
		`-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "lab/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable`,
		`-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "lab/web:http cluster IP" -m tcp --dport 80 -j ` + web.SvcChain(),
		`-A ` + web.SvcChain() + ` ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "lab/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ`,
		`-A ` + web.SvcChain() + ` -m comment --comment "lab/web:http -> 10.244.0.11:8080" -m statistic --mode random --probability 0.50000000000 -j ` + web.SepChain(web.Endpoints[0]),
		`-A ` + web.SvcChain() + ` -m comment --comment "lab/web:http -> 10.244.0.12:8080" -j ` + web.SepChain(web.Endpoints[1]),
		`-A ` + web.SepChain(web.Endpoints[1]) + ` -p tcp -m comment --comment "lab/web:http" -m tcp -j DNAT --to-destination 10.244.0.12:8080`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("ruleset lacks\n  %s\ngot:\n%s", want, out)
		}
	}
	// A Service without endpoints gets no nat chains at all.
	if strings.Contains(out, empty.SvcChain()) {
		t.Errorf("ruleset has a KUBE-SVC chain for a Service without endpoints:\n%s", out)
	}
}

// kube-proxy writes an IPv6 ClusterIP's rules into ip6tables, and the
// parser reads them back as the same Service port's.
func TestIPTablesRestoreIPv6(t *testing.T) {
	web := ServicePort{Namespace: "lab", Name: "web", PortName: "http", Protocol: "tcp",
		ClusterIP: netip.MustParseAddr("fd00:10:96::10"), Port: 80,
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("[fd00:10:244::11]:8080")}}
	empty := ServicePort{Namespace: "lab", Name: "empty", PortName: "http", Protocol: "tcp",
		ClusterIP: netip.MustParseAddr("fd00:10:96::20"), Port: 80}
	out := IPTablesRestore([]ServicePort{web, empty}, Options{ClusterCIDR: netip.MustParsePrefix("fd00:10:244::/56")})
	for _, want := range []string{
		`-A KUBE-SERVICES -d fd00:10:96::20/128 -p tcp -m comment --comment "lab/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable`,
		`-A ` + web.SvcChain() + ` ! -s fd00:10:244::/56 -d fd00:10:96::10/128 -p tcp -m comment --comment "lab/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ`,
		`-A ` + web.SepChain(web.Endpoints[0]) + ` -s fd00:10:244::11/128 -m comment --comment "lab/web:http" -j KUBE-MARK-MASQ`,
		`-A ` + web.SepChain(web.Endpoints[0]) + ` -p tcp -m comment --comment "lab/web:http" -m tcp -j DNAT --to-destination [fd00:10:244::11]:8080`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("ruleset lacks\n  %s\ngot:\n%s", want, out)
		}
	}
	var r Ruleset
	if err := ParseIPTablesSave(&r, out); err != nil {
		t.Fatal(err)
	}
	p := r.Port("lab/web:http", "tcp")
	if p == nil || len(p.Endpoints) != 1 || p.Endpoints[0].Addr != web.Endpoints[0] ||
		len(p.Dests) != 1 || p.Dests[0].Addr != netip.MustParseAddrPort("[fd00:10:96::10]:80") {
		t.Errorf("parsed %+v", p)
	}
	if e := r.Port("lab/empty:http", "tcp"); e == nil || len(e.Rejects) != 1 || e.Rejects[0].Dest.Addr != netip.MustParseAddrPort("[fd00:10:96::20]:80") {
		t.Errorf("parsed reject %+v", e)
	}
}
