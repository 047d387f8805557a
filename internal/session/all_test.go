package session

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolve"
)

// svctrace -A explains each connection with its own Service's assessment,
// found by the address the client sent it to (or, arrived translated, by
// its endpoint), made once while the catalog stays the same; the table
// puts each connection down to its Service port.
func TestEveryServiceExplainsEachWithItsOwn(t *testing.T) {
	src := resolve.FileSource{Objects: lab.Objects(), Path: "lab"}
	ctx := context.Background()
	cat, err := resolve.ReadCatalog(ctx, src, "")
	if err != nil {
		t.Fatal(err)
	}
	st := &catalogState{cat: cat, index: cat.Index(nil)}
	// Not root: the node's rules and network are not read, the objects are.
	ns, err := nf.ResolveNetNS("")
	if err != nil {
		t.Fatal(err)
	}
	as := &assessor{src: src, node: ns, local: resolve.LocalNode{Name: lab.NodeName}, lookup: resolve.Memo(resolve.Lookup(src), nil),
		peers: resolve.Peers(src, nil), cache: map[string]assessed{}}
	byName := map[string]*resolve.Service{}
	for _, s := range cat.Services {
		byName[s.Name] = s
	}
	empty, web := byName["empty"], byName["web"]
	if empty == nil || web == nil {
		t.Fatalf("lab catalog: %d Services, no empty or web", len(cat.Services))
	}
	client := netip.MustParseAddrPort("10.99.0.2:40000")
	vip := netip.AddrPortFrom(empty.ClusterIPs[0], empty.Ports[0].Port)
	c := &flow.Conn{Proto: nf.TCP, Client: client, VIP: vip, Verdict: flow.Rejected}
	x := &allExplainer{ctx: ctx, st: st, as: as}
	e := x.Explain(c)
	if !strings.HasPrefix(e.Blame, "Service lab/empty: the selector") || !strings.HasPrefix(e.Service, "lab/empty:") {
		t.Errorf("empty: service %q, blame %q", e.Service, e.Blame)
	}
	if got := portOf(st.index, c); got != empty.Ports[0].String() {
		t.Errorf("table row %q", got)
	}

	// Arrived translated: by its endpoint, which web and dual share.
	ep := web.Ports[0].Endpoints[0]
	c = &flow.Conn{Proto: nf.TCP, Client: client, VIP: ep.Addr, Endpoint: ep.Addr, Verdict: flow.Answered}
	x = &allExplainer{ctx: ctx, st: st, as: as}
	x.Explain(c)
	if got := portOf(st.index, c); !strings.HasPrefix(got, "endpoint "+ep.Addr.String()+" of ") || !strings.Contains(got, web.Ports[0].String()) {
		t.Errorf("table row %q", got)
	}
	if n := x.Name(ep.Addr); !strings.Contains(n, "pod lab/"+ep.Pod.Name) {
		t.Errorf("endpoint named %q by the Service's explainer", n)
	}
	if len(as.cache) != 2 {
		t.Errorf("%d assessments kept, want one per Service explained", len(as.cache))
	}
	// A new catalog generation assesses again.
	st2 := &catalogState{cat: cat, index: st.index, gen: 1}
	(&allExplainer{ctx: ctx, st: st2, as: as}).Explain(c)
	if len(as.cache) != 1 || as.gen != 1 {
		t.Errorf("after a change: %d assessments of generation %d", len(as.cache), as.gen)
	}

	// An address no Service has (any more): said, not explained.
	c = &flow.Conn{Proto: nf.TCP, Client: client, VIP: netip.MustParseAddrPort("10.96.200.1:80"), Verdict: flow.NoReply}
	if e := (&allExplainer{ctx: ctx, st: st, as: as}).Explain(c); e.Blame != "" || len(e.Notes) != 1 || !strings.Contains(e.Notes[0], "no Service of the catalog has 10.96.200.1:80") {
		t.Errorf("unknown address: %+v", e)
	}
	if got := portOf(st.index, c); got != "(no Service) 10.96.200.1:80" {
		t.Errorf("table row %q", got)
	}
}
