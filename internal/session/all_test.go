package session

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolve"
)

// svctrace -A explains each connection with its own Service's assessment,
// found by the address the client sent it to (or, arrived translated, by
// its endpoint), made once while the Service's objects stay the same; the table
// puts each connection down to its Service port.
func TestEveryServiceExplainsEachWithItsOwn(t *testing.T) {
	src := resolve.FileSource{Objects: lab.Objects(), Path: "lab"}
	ctx := context.Background()
	svcs, sls, err := src.ServicesAndSlices(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	cat := resolve.NewCatalog("", svcs, sls)
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
	// The catalog changed, not web: its assessment holds. Then web's
	// Service changed: it is assessed again, once.
	c = &flow.Conn{Proto: nf.TCP, Client: client, VIP: netip.AddrPortFrom(web.ClusterIPs[0], web.Ports[0].Port), Verdict: flow.NoReply}
	explainIn := func(cat *resolve.Catalog) *diagnose.Assessment {
		(&allExplainer{ctx: ctx, st: &catalogState{cat: cat, index: cat.Index(nil)}, as: as}).Explain(c)
		return as.cache[web.Key()].a
	}
	kept := explainIn(cat)
	if kept == nil {
		t.Fatalf("web not assessed: %+v", as.cache[web.Key()])
	}
	next := cat.Next(svcs, sls)
	if a := explainIn(next); a != kept {
		t.Errorf("web assessed again after a change to nothing of its own")
	}
	changed := slices.Clone(svcs)
	for i, s := range changed {
		if s.Namespace == web.Namespace && s.Name == web.Name {
			copied := *s
			changed[i] = &copied
		}
	}
	next = next.Next(changed, sls)
	again := explainIn(next)
	if again == kept || explainIn(next) != again {
		t.Errorf("web's Service changed: assessed again %v, then kept %v; want once", again != kept, explainIn(next) == again)
	}
	// Old, it is made again: the node and the Pods may have changed.
	got := as.cache[web.Key()]
	got.at = got.at.Add(-maxAssessedAge)
	as.cache[web.Key()] = got
	if explainIn(next) == again {
		t.Errorf("an assessment %s old was kept", maxAssessedAge)
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
