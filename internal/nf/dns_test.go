package nf_test

import (
	"testing"

	"github.com/miekg/dns"
	. "github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

func TestParseDNS(t *testing.T) {
	const name = "web.shop.svc.cluster.local."
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeAAAA)
	q.Id = 0x1234
	nx := new(dns.Msg)
	nx.SetRcode(q, dns.RcodeNameError)
	ok := new(dns.Msg)
	ok.SetReply(q)
	ok.Question[0].Qtype = dns.TypeA
	a, _ := dns.NewRR(name + " 5 IN A 10.96.5.10")
	ok.Answer = []dns.RR{a}
	for _, tc := range []struct {
		name string
		data []byte
		want string // DNS.String(); "" not DNS
	}{
		{"a query over UDP", tracetest.DNSPacket(t, false, 40000, 53, q), "AAAA " + name},
		{"NXDOMAIN", tracetest.DNSPacket(t, false, 53, 40000, nx), "AAAA " + name + " NXDOMAIN"},
		{"an answer over TCP", tracetest.DNSPacket(t, true, 53, 40000, ok), "A " + name + " NOERROR (1 answer)"},
		{"not port 53", tracetest.DNSPacket(t, false, 40000, 5353, q), ""},
		{"headers only", tracetest.DNSPacket(t, false, 40000, 53, q)[:28], ""},
		{"the name cut short", tracetest.DNSPacket(t, false, 40000, 53, q)[:50], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, end, found := ParseDNS(tc.data)
			if got := map[bool]string{true: d.String()}[found]; got != tc.want {
				t.Fatalf("ParseDNS: %q, want %q", got, tc.want)
			}
			kept := KeepDNSQuestion(tc.data)
			switch {
			case found && d.ID != 0x1234:
				t.Errorf("ID %#x, want 0x1234", d.ID)
			case found && len(kept) != end:
				t.Errorf("kept %d bytes, want %d: up to the question's end", len(kept), end)
			case found && tc.name == "an answer over TCP" && end >= len(tc.data):
				t.Errorf("the answer record was kept: %d of %d bytes", end, len(tc.data))
			case !found && DNSPayload(tc.data) >= 0 && len(kept) > DNSPayload(tc.data)+12:
				t.Errorf("kept %d bytes of a question it cannot read, want the header only", len(kept))
			}
		})
	}
}
