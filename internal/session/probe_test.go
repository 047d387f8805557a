package session

import (
	"net/netip"
	"testing"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolve"
)

// A headless Service's name gives an endpoint's address: --probe=dns
// connects to that endpoint's port, or to the Service's port at an
// address that is no endpoint.
func TestEndpointsAt(t *testing.T) {
	ap := netip.MustParseAddrPort
	svc := &resolve.Service{Namespace: "shop", Name: "db", Headless: true}
	svc.Ports = []resolve.Port{
		{Service: svc, Name: "sql", Protocol: nf.TCP, Port: 5432, Endpoints: []resolve.Endpoint{{Addr: ap("10.244.1.7:15432")}, {Addr: ap("10.244.1.8:15432")}}},
		{Service: svc, Name: "sctp", Protocol: nf.SCTP, Port: 9},
	}
	for addr, want := range map[string]string{"10.244.1.8": "10.244.1.8:15432", "10.244.1.99": "10.244.1.99:5432"} {
		got := endpointsAt(svc, netip.MustParseAddr(addr))
		if len(got) != 1 || got[0].Addr.String() != want || got[0].Port.Name != "sql" {
			t.Errorf("%s: %+v, want one address, %s on port sql", addr, got, want)
		}
	}
}
