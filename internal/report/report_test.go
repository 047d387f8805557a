package report

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
)

type asked []netip.AddrPort

func (a *asked) Explain(*flow.Conn) Explanation { return Explanation{Blame: "b"} }
func (a *asked) Name(p netip.AddrPort) string {
	*a = append(*a, p)
	return "n " + p.String()
}

// A report names the address asked for, every endpoint and every DNAT's
// destination, each once, and nothing else: what a printer shows and a
// recording holds does not depend on who prints.
func TestOfNamesWhatItShows(t *testing.T) {
	ap := netip.MustParseAddrPort
	vip, ep1, ep2 := ap("10.96.0.10:80"), ap("10.244.0.11:8080"), ap("10.244.0.12:8080")
	c := &flow.Conn{Client: ap("10.0.0.1:4000"), VIP: vip, Endpoint: ep2, Endpoints: []netip.AddrPort{ep1, ep2},
		SNAT: ap("10.244.0.1:4000"),
		Steps: []flow.Step{
			{Changes: []flow.Change{{Kind: flow.DNAT, From: vip, To: ep1}}},
			{Changes: []flow.Change{{Kind: flow.SNAT, From: ap("10.0.0.1:4000"), To: ap("10.244.0.1:4000")}}},
			{Changes: []flow.Change{{Kind: flow.DNAT, From: vip, To: ep2}}},
		}}
	var x asked
	r := Of(c, &x, 7)
	if want := []netip.AddrPort{vip, ep2, ep1}; !slices.Equal(x, want) {
		t.Errorf("asked for %v, want %v", x, want)
	}
	if r.Name(ep1) != "n "+ep1.String() || r.Name(c.Client) != "" || r.Explanation == nil || r.Explanation.Blame != "b" || r.Lost != 7 {
		t.Errorf("report %+v", r)
	}
	if r := Of(c, nil, 0); r.Explanation != nil || r.Names != nil {
		t.Errorf("unexplained report %+v", r)
	}
}
