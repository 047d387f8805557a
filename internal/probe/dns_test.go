package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolvconf"
)

// zone answers as a cluster DNS would: web.shop's ClusterIP, a name whose
// answer is too big for UDP, NXDOMAIN for the rest.
func zone(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	q := r.Question[0]
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	switch {
	case q.Name == "web.shop.svc.cluster.local." && q.Qtype == dns.TypeA:
		rr, _ := dns.NewRR("web.shop.svc.cluster.local. 5 IN A 10.96.0.50")
		m.Answer = append(m.Answer, rr)
	case q.Name == "web.shop.svc.cluster.local.":
	case q.Name == "big.shop.svc.cluster.local." && q.Qtype == dns.TypeA && !tcp:
		m.Truncated = true
	case q.Name == "big.shop.svc.cluster.local." && q.Qtype == dns.TypeA:
		for i := 1; i <= 40; i++ {
			rr, _ := dns.NewRR(fmt.Sprintf("big.shop.svc.cluster.local. 5 IN A 10.244.1.%d", i))
			m.Answer = append(m.Answer, rr)
		}
	case q.Name == "big.shop.svc.cluster.local.":
	default:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

// server runs zone on 127.0.0.1, UDP and TCP on one port.
func server(t *testing.T) uint16 {
	t.Helper()
	for range 10 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
		ln, err := net.Listen("tcp4", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: dns.HandlerFunc(zone)}, {Listener: ln, Handler: dns.HandlerFunc(zone)}} {
			go s.ActivateAndServe()
			t.Cleanup(func() { s.Shutdown() })
		}
		return port
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

func TestResolve(t *testing.T) {
	port := server(t)
	conf := func(extra string) resolvconf.Conf {
		c, err := resolvconf.Parse(strings.NewReader("nameserver 127.0.0.1\nsearch front.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1\n" + extra))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hosts, _ := resolvconf.ParseHosts(strings.NewReader("10.0.0.99 web.shop.svc\n"))
	type asked struct{ name, typ, rcode string }
	for _, tc := range []struct {
		name, extra string
		resolve     string
		nameservers []string
		want        []asked
		addrs       string
		answered    string
		failure     string
	}{
		{name: "name.namespace: its second name answers", resolve: "web.shop",
			want: []asked{{"web.shop.front.svc.cluster.local.", "A", "NXDOMAIN"}, {"web.shop.front.svc.cluster.local.", "AAAA", "NXDOMAIN"},
				{"web.shop.svc.cluster.local.", "A", "NOERROR"}, {"web.shop.svc.cluster.local.", "AAAA", "NOERROR"}},
			addrs: "10.96.0.50", answered: "web.shop.svc.cluster.local."},
		{name: "the short name from another namespace: every name NXDOMAIN", resolve: "web",
			want: []asked{{"web.front.svc.cluster.local.", "A", "NXDOMAIN"}, {"web.front.svc.cluster.local.", "AAAA", "NXDOMAIN"},
				{"web.svc.cluster.local.", "A", "NXDOMAIN"}, {"web.svc.cluster.local.", "AAAA", "NXDOMAIN"},
				{"web.cluster.local.", "A", "NXDOMAIN"}, {"web.cluster.local.", "AAAA", "NXDOMAIN"},
				{"web.", "A", "NXDOMAIN"}, {"web.", "AAAA", "NXDOMAIN"}}},
		{name: "single-request: one after the other", resolve: "web.shop.svc.cluster.local.", extra: "options single-request\n",
			want:  []asked{{"web.shop.svc.cluster.local.", "A", "NOERROR"}, {"web.shop.svc.cluster.local.", "AAAA", "NOERROR"}},
			addrs: "10.96.0.50", answered: "web.shop.svc.cluster.local."},
		{name: "/etc/hosts answers first", resolve: "web.shop.svc", addrs: "10.0.0.99"},
		{name: "a truncated answer is asked again over TCP", resolve: "big.shop.svc.cluster.local.",
			want: []asked{{"big.shop.svc.cluster.local.", "A", "NOERROR"}, {"big.shop.svc.cluster.local.", "AAAA", "NOERROR"},
				{"big.shop.svc.cluster.local.", "A", "NOERROR"}},
			answered: "big.shop.svc.cluster.local."},
		{name: "a nameserver that refuses, then one that answers", resolve: "web.shop.svc.cluster.local.", nameservers: []string{"127.0.0.2", "127.0.0.1"},
			want: []asked{{"web.shop.svc.cluster.local.", "A", ""}, {"web.shop.svc.cluster.local.", "AAAA", ""},
				{"web.shop.svc.cluster.local.", "A", "NOERROR"}, {"web.shop.svc.cluster.local.", "AAAA", "NOERROR"}},
			addrs: "10.96.0.50", answered: "web.shop.svc.cluster.local.", failure: "refused (ICMP port unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := conf(tc.extra)
			if tc.nameservers != nil {
				c.Nameservers = nil
				for _, s := range tc.nameservers {
					c.Nameservers = append(c.Nameservers, netip.MustParseAddr(s))
				}
			}
			r := Resolver{NS: nf.NetNS{}, Conf: c, Hosts: hosts, Port: port, Timeout: 2 * time.Second}
			res := r.Resolve(context.Background(), tc.resolve)
			var got []asked
			var failures []string
			for _, q := range res.Queries {
				got = append(got, asked{q.Name, q.Type, q.Rcode})
				if q.Failure != "" {
					failures = append(failures, q.Failure)
				}
				if q.From.Port() == 0 || q.From.Addr() != netip.MustParseAddr("127.0.0.1") {
					t.Errorf("%s %s: from %s, want the socket's own address", q.Name, q.Type, q.From)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("asked %v,\nwant %v", got, tc.want)
			}
			if tc.addrs != "" && (len(res.Addrs) != 1 || res.Addrs[0].String() != tc.addrs) {
				t.Errorf("addresses %v, want %s", res.Addrs, tc.addrs)
			}
			if res.Answered != tc.answered {
				t.Errorf("answered by %q, want %q", res.Answered, tc.answered)
			}
			if tc.failure != "" && (len(failures) == 0 || !strings.HasPrefix(failures[0], tc.failure)) {
				t.Errorf("failures %q, want %q", failures, tc.failure)
			}
			if strings.HasPrefix(tc.resolve, "big") {
				if last := res.Queries[len(res.Queries)-1]; !last.TCP || len(last.Addrs) != 40 || !res.Queries[0].Truncated {
					t.Errorf("TCP fallback: %+v", last)
				}
			}
		})
	}
}
