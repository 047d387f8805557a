package session

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// All is svctrace -A (every namespace) and svctrace -n NAMESPACE without a
// Service: every Service of the scope whose traffic can cross this node,
// its connections printed only when they fail (unless AllVerdicts), a
// table per Service port at the end and every SummaryEvery; or, not
// tracing (svctrace check -A), one line per Service with a problem.
type All struct {
	Trace
	Namespace string // "": all namespaces
	Source    resolve.Source
	Node      nf.NetNS
	Local     resolve.LocalNode
	Tracing   bool
	// AllVerdicts prints every connection, answered ones too.
	AllVerdicts bool
	// SummaryEvery prints the table this often while tracing; 0: at the
	// end only.
	SummaryEvery time.Duration
}

// scope is what the catalog covers, in words.
func (s All) scope() string {
	if s.Namespace == "" {
		return "all namespaces"
	}
	return "namespace " + s.Namespace
}

// ServeAll runs svctrace -A or svctrace check -A. It returns ErrReported
// when check found a Service with a problem.
func ServeAll(ctx context.Context, s All) error {
	if s.Tracing {
		tracer.Prepare()
	}
	if !s.Tracing {
		return s.checkAll(ctx)
	}
	return s.traceAll(ctx, nodeAddrs(ctx, s.Source, s.Local))
}

// nodeAddrs are where this node's NodePorts are reached: its Node
// object's addresses (when it can be read) and its own, as
// diagnose.AssessView has them.
func nodeAddrs(ctx context.Context, src resolve.Source, local resolve.LocalNode) []netip.Addr {
	var n *corev1.Node
	if local.Name != "" {
		if got, err := src.Node(ctx, local.Name); err == nil {
			n = got
		}
	}
	return resolve.NodePortAddrsOf(n, local.Addrs)
}

// checkAll assesses every Service of the scope with the node's facts,
// read once, and prints one line for each whose first finding is a
// problem.
func (s All) checkAll(ctx context.Context) error {
	svcs, sls, err := s.Source.ServicesAndSlices(ctx, s.Namespace)
	if err != nil {
		return err
	}
	slices.SortFunc(svcs, func(a, b *corev1.Service) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	bySvc := resolve.SlicesByService(sls)
	p, err := s.Printer(output.Options{})
	if err != nil {
		return err
	}
	facts := diagnose.ReadNode(s.Node, s.Local)
	// Every Service's view from reads made once (every Pod listed, each
	// Node, namespace and its policies read once), not a dozen requests
	// per Service.
	src := resolve.NewListed(s.Source)
	// A problem of the node's (forwarding off, kube-proxy not running) is
	// every Service's: said once, before the Services' own.
	var nodeWide, found []output.ServiceCheck
	for _, svc := range svcs {
		key := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
		// Each Service with the objects listed above, not read again.
		v, err := resolve.GatherFrom(ctx, src, svc, bySvc[key], s.Local)
		if err != nil {
			s.warn("%s: %v", key, err)
			continue
		}
		a := diagnose.AssessView(v, facts)
		own := false
		for _, f := range a.Findings {
			if f.Severity != report.Problem {
				continue
			}
			if !isNodeWide(f) {
				if !own {
					found = append(found, output.ServiceCheck{Service: key.String(), Finding: f})
				}
				own = true
				continue
			}
			if !slices.ContainsFunc(nodeWide, func(c output.ServiceCheck) bool { return c.Finding.Code == f.Code && c.Finding.Summary == f.Summary }) {
				nodeWide = append(nodeWide, output.ServiceCheck{Node: cmp.Or(a.View.LocalNode, s.Local.Name), Finding: f})
			}
		}
	}
	output.WriteChecks(p, append(nodeWide, found...))
	s.say("checked %d Service(s) in %s on node %s: %d with a problem of their own, %d of the node's", len(svcs), s.scope(), s.Local.Name, len(found), len(nodeWide))
	if len(found)+len(nodeWide) > 0 {
		return ErrReported
	}
	return nil
}

// isNodeWide reports whether a finding is about the node rather than one
// Service: it blames the node, its kube-proxy or its conntrack table, and
// no Service port or endpoint.
func isNodeWide(f report.Finding) bool {
	if f.Port != "" || f.Endpoint != "" {
		return false
	}
	for _, p := range []string{"node ", "kube-proxy", "conntrack on "} {
		if strings.HasPrefix(f.Object, p) {
			return true
		}
	}
	return false
}

// catalogState is the catalog as the trace uses it at one moment.
type catalogState struct {
	cat   *resolve.Catalog
	index resolve.Index
}

// traceAll traces every address of the catalog.
func (s All) traceAll(ctx context.Context, addrs []netip.Addr) error {
	if s.Rec != nil {
		return fmt.Errorf("-w records one Service's trace; with -A or -n alone it records nothing yet: record the failing Service's (svctrace SERVICE -n NAMESPACE -w FILE)")
	}
	// cur is read by the live loop; mu orders the changes with the
	// tracer's filter, which follows every change once attached.
	var cur atomic.Pointer[catalogState]
	var mu sync.Mutex
	var tr *tracer.Tracer
	apply := func(cat *resolve.Catalog) {
		mu.Lock()
		defer mu.Unlock()
		if tr != nil {
			if err := tr.SetTargets(cat.Targets(addrs)); err != nil {
				s.warn("updating the traced addresses: %v", err)
				return
			}
		}
		if cur.Load() != nil {
			s.logf("Services changed: now %d in %s", len(cat.Services), s.scope())
		}
		cur.Store(&catalogState{cat: cat, index: cat.Index(addrs)})
	}
	failing := func(err error) {
		s.warn("watching the API server failed (%s); tracing goes on with the Services as they were", firstLine(err.Error()))
	}
	var cat *resolve.Catalog
	var err error
	api, isAPI := s.Source.(*resolve.API)
	if isAPI {
		var cw *resolve.CatalogWatch
		if cw, err = api.WatchCatalog(ctx, s.Namespace, apply, failing); err != nil {
			return err
		}
		cat = cw.Catalog()
	} else if cat, err = resolve.ReadCatalog(ctx, s.Source, s.Namespace); err != nil {
		return err
	}
	if cur.Load() == nil { // else a change came first, newer
		apply(cat)
	}
	cat = cur.Load().cat
	targets := cat.Targets(addrs)
	if len(targets) == 0 {
		s.say("nothing to trace: no Service in %s has an address or endpoint on this node's path", s.scope())
		return nil
	}
	s.say("%d Service(s) in %s (%s): %d addresses and endpoints", len(cat.Services), s.scope(), cat.Kinds(), len(targets))

	as := &assessor{src: s.Source, node: s.Node, local: s.Local, lookup: resolve.Memo(resolve.Lookup(s.Source), nil),
		peers: resolve.Peers(s.Source, nil), cache: map[string]assessed{}, logf: s.logf}
	var namer *resolve.Namer
	if isAPI {
		namer = resolve.NewNamer(resolve.Lookup(s.Source))
		as.lookup = namer.Name
	}
	var tab output.Services
	start := time.Now()
	t := s.Trace
	t.Targets, t.Mode = targets, "all"
	// The filter holds twice what there is now: Services created while
	// tracing fit.
	t.MaxTargets = max(2*len(targets), tracer.DefaultMaxTargets)
	t.IsService = func(pr nf.Proto, a netip.AddrPort) bool { return cur.Load().index.IsService(pr, a) }
	t.Show = func(c *flow.Conn) bool { return s.AllVerdicts || c.Verdict != flow.Answered }
	t.Explainer = func() report.Explainer { return &allExplainer{st: cur.Load(), as: as, ctx: ctx} }
	t.Tally = func(r report.Conn) { tab.Count(portOf(cur.Load().index, r.Conn), r.Conn, r.Explanation) }
	t.StatusMore = tab.Headline
	// Healthy connections are counted in the kernel, never handed over
	// (unless every connection is to be printed): the table adds the
	// kernel's counts, by Service port, when printed.
	t.Hold = !s.AllVerdicts
	table := func(p output.Printer, final bool) {
		mu.Lock()
		attached := tr
		mu.Unlock()
		if attached != nil {
			tab.Counted(countedPorts(cur.Load().index, attached.Answered()))
		}
		output.WriteServices(p, &tab, time.Since(start), final)
	}
	t.Closing = func(p output.Printer) { table(p, true) }
	t.Started = func(ctx context.Context, attached *tracer.Tracer, print func(func(output.Printer))) {
		mu.Lock()
		tr = attached
		mu.Unlock()
		// A change that came while the tracer was being attached.
		if now := cur.Load(); now.cat != cat {
			apply(now.cat)
		}
		if namer != nil {
			go namer.Run(ctx)
		}
		if s.SummaryEvery > 0 {
			go func() {
				tick := time.NewTicker(s.SummaryEvery)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
						print(func(p output.Printer) { table(p, false) })
					}
				}
			}()
		}
	}
	return Run(ctx, t)
}

// portOf is the name of the Service port a connection belongs to, for the
// table: "namespace/name:port"; an endpoint several Service ports share
// (a connection that arrived translated) is named with all of them; its
// destination when no Service has it (any more).
func portOf(x resolve.Index, c *flow.Conn) string { return portName(x, c.Proto, c.VIP) }

// countedPorts adds up the tracer's counts of answered connections by
// original destination (tracer.Tracer.Answered) per Service port, named as
// portOf names them.
func countedPorts(x resolve.Index, answered map[nf.Target]uint64) map[string]int {
	out := map[string]int{}
	for tg, n := range answered {
		out[portName(x, tg.Proto, tg.Addr)] += int(n)
	}
	return out
}

func portName(x resolve.Index, proto nf.Proto, dst netip.AddrPort) string {
	ps := x.Ports(proto, dst)
	switch len(ps) {
	case 0:
		return "(no Service) " + dst.String()
	case 1:
		return ps[0].String()
	}
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.String()
	}
	return fmt.Sprintf("endpoint %s of %s", dst, strings.Join(names, ", "))
}

// assessor assesses a Service the first time one of its connections needs
// explaining, and keeps the assessment while the Service's model stays the
// same (its Service and EndpointSlices unchanged: resolve.Catalog.Next),
// for at most maxAssessedAge: -A reads a Service's Pods, Nodes, policies
// and rules only when it fails, and a busy cluster's changes to other
// Services do not make it read them again.
type assessor struct {
	src    resolve.Source
	node   nf.NetNS
	local  resolve.LocalNode
	lookup func(netip.Addr) string
	peers  func(netip.Addr) (resolve.Peer, bool)
	logf   func(string, ...any) // --verbose

	mu    sync.Mutex
	cache map[string]assessed
}

type assessed struct {
	a     *diagnose.Assessment
	err   error
	model *resolve.Service // what it assessed
	at    time.Time
}

const (
	// maxAssessed bounds the assessments kept: past it, they are made
	// again.
	maxAssessed = 256
	// maxAssessedAge: an assessment older is made again, with the node's
	// rules and the Service's Pods as they are now (a failing Service costs
	// one assessment, ~30 ms, per this while its connections fail).
	maxAssessedAge = 10 * time.Second
)

// get is the assessment of the Service whose model is m.
func (as *assessor) get(ctx context.Context, m *resolve.Service) (*diagnose.Assessment, error) {
	as.mu.Lock()
	defer as.mu.Unlock()
	key := m.Key()
	if got, ok := as.cache[key]; ok && got.model == m && time.Since(got.at) < maxAssessedAge {
		return got.a, got.err
	}
	if len(as.cache) >= maxAssessed {
		clear(as.cache)
	}
	ns, name, _ := strings.Cut(key, "/")
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	facts := diagnose.ReadNode(as.node, as.local, key)
	read := time.Since(start)
	a, err := diagnose.Assess(ctx, as.src, ns, name, nil, facts)
	if err == nil {
		a.Explainer.Lookup, a.Explainer.Peer = as.lookup, as.peers
	}
	if as.logf != nil {
		as.logf("assessed %s to explain its connection in %s (the node's rules and conntrack table: %s)", key, time.Since(start).Round(time.Millisecond), read.Round(time.Millisecond))
	}
	as.cache[key] = assessed{a: a, err: err, model: m, at: start}
	return a, err
}

// allExplainer explains one connection of -A with its Service's
// assessment; it names the connection's addresses with the same one.
type allExplainer struct {
	ctx  context.Context
	st   *catalogState
	as   *assessor
	used *diagnose.Explainer
}

func (x *allExplainer) Explain(c *flow.Conn) report.Explanation {
	ps := x.st.index.Ports(c.Proto, c.VIP)
	if len(ps) == 0 {
		return report.Explanation{Notes: []string{fmt.Sprintf("no Service of the catalog has %s any more: not explained", c.VIP)}}
	}
	// An endpoint several Services share is the same Pod to each: the
	// first one's objects name and explain it.
	p := ps[0]
	a, err := x.as.get(x.ctx, p.Service)
	if err != nil {
		return report.Explanation{Notes: []string{fmt.Sprintf("not explained: reading Service %s failed: %v", p.Service.Key(), err)}}
	}
	x.used = a.Explainer
	return a.Explainer.Explain(c)
}

func (x *allExplainer) Name(a netip.AddrPort) string {
	if x.used == nil {
		return ""
	}
	return x.used.Name(a)
}
