package output

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
)

// A resolution prints each query with who answered it (by the query's own
// address), its answer, and what the name resolved to; JSON the same.
func TestResolution(t *testing.T) {
	kd := netip.MustParseAddrPort("10.96.0.10:53")
	from := netip.MustParseAddrPort("10.244.1.13:59674")
	clusterIP := netip.MustParseAddr("10.96.5.10")
	r := report.Resolution{From: "pod front/client-1", Conf: "nameserver 10.96.0.10, search front.svc.cluster.local svc.cluster.local cluster.local, ndots 5",
		Cluster: "10.96.0.10 (kube-system/kube-dns), domain cluster.local",
		Names: []probe.Resolution{{Name: "web.shop", Queries: []probe.Query{
			{Name: "web.shop.front.svc.cluster.local.", Type: "A", Server: kd, From: from, Rcode: "NXDOMAIN", Took: 2500 * time.Microsecond},
			{Name: "web.shop.svc.cluster.local.", Type: "A", Server: kd, From: from, Rcode: "NOERROR", Addrs: []netip.Addr{clusterIP}, Took: 900 * time.Microsecond},
			{Name: "web.shop.svc.cluster.local.", Type: "AAAA", Server: kd, Failure: "no answer in 5s"}},
			Addrs: []netip.Addr{clusterIP}, Answered: "web.shop.svc.cluster.local."}},
		SentTo:   map[netip.AddrPort]string{from: "pod kube-system/coredns-0 10.244.1.11:53"},
		Findings: []report.Finding{{Severity: report.Info, Code: report.DNSSearchCost, Summary: "one name before the answer"}}}
	var b strings.Builder
	(&Text{w: &b}).Resolution(r)
	for _, want := range []string{
		"DNS from pod front/client-1\n",
		"    A     web.shop.svc.cluster.local.  udp 10.244.1.13:59674 → pod kube-system/coredns-0 10.244.1.11:53  NOERROR in 900µs: 10.96.5.10\n",
		"    AAAA  web.shop.svc.cluster.local.  udp → 10.96.0.10:53  no answer in 5s\n",
		"    → 10.96.5.10 (as web.shop.svc.cluster.local.)\n",
		"i dns-search-cost: one name before the answer\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	(&JSON{w: &b}).Resolution(r)
	var got struct {
		Kind  string
		Names []struct {
			Queries []struct {
				Rcode    string
				Endpoint string `json:"endpoint"`
			}
		}
	}
	if err := json.Unmarshal([]byte(b.String()), &got); err != nil || got.Kind != "resolution" ||
		got.Names[0].Queries[1].Endpoint != "pod kube-system/coredns-0 10.244.1.11:53" || got.Names[0].Queries[2].Rcode != "" {
		t.Errorf("JSON %s (%v)", b.String(), err)
	}
}
