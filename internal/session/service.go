package session

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
	corev1 "k8s.io/api/core/v1"
)

// Service is svctrace SERVICE (and svctrace check): diagnose a Service
// from its objects and the node's facts, then trace it, re-assessing when
// the objects change.
type Service struct {
	// Trace holds the trace's settings; Serve fills in the targets, names
	// and what to record, and closes Rec however it ends.
	Trace
	Namespace, Name string
	Source          resolve.Source
	Node            nf.NetNS // resolved Trace.NetNS
	Local           resolve.LocalNode
	// Tracing: trace after the diagnosis (svctrace SERVICE), not only
	// diagnose (svctrace check).
	Tracing bool
	// Probe, if set, opens svctrace's own test connections once tracing
	// has begun, and ends the trace after them.
	Probe *Probe
	// Client, pod/NAME or pod/NAMESPACE/NAME, is a client Pod to judge the
	// network policies for: --from (check, or --probe's source); "": none.
	Client string
}

// Probe is --probe: what to open, and from where.
type Probe struct {
	Kind probe.Kind
	From string // "node", or pod/NAME or pod/NAMESPACE/NAME
}

// state is what svctrace knows about the Service at one moment.
type state struct {
	*diagnose.Assessment
	targets  []nf.Target
	services map[nf.Target]bool
}

// record writes the state into a recording: the objects, the node's rules,
// the Service addresses.
func (st *state) record(w *record.Writer) {
	w.View(st.View)
	w.Rules(RecordedFacts(st.Node))
	services := make([]nf.Target, 0, len(st.services))
	for t := range st.services {
		services = append(services, t)
	}
	sort.Slice(services, func(i, j int) bool { return services[i].String() < services[j].String() })
	w.Services(services)
}

// Serve diagnoses the Service, prints the diagnosis and, when tracing,
// traces it. It returns ErrReported when the diagnosis (check) or a probe
// found a problem.
func Serve(ctx context.Context, s Service) error {
	if s.Tracing {
		// The tracer's object and the kernel's BTF are read while the
		// objects and the node's rules are.
		tracer.Prepare()
	}
	// The recording (-w), once tracing starts; recording is true once its
	// first record is written.
	w := s.Rec
	if w != nil {
		// On an error or an early end (nothing to trace); Run closes it
		// first when it traced. Closed before it began, it leaves nothing.
		defer w.Close(record.End{})
	}
	var recording atomic.Bool
	// Names the objects do not give (client Pods, Nodes) go into the
	// recording as the reports first use them: analysis has no API.
	learned := func(ip netip.Addr, name string) {
		if recording.Load() {
			w.Name(record.Name{Addr: ip, Name: name})
		}
	}
	// From the API they are looked up in the background, never while a
	// connection waits to be reported; saved objects answer at once.
	var lookup func(netip.Addr) string
	var namer *resolve.Namer
	if _, ok := s.Source.(*resolve.API); ok && s.Tracing {
		namer = resolve.NewNamer(resolve.Lookup(s.Source))
		namer.Learned = learned
		lookup = namer.Name
	} else {
		lookup = resolve.Memo(resolve.Lookup(s.Source), learned)
	}
	// Who a dropped connection's client is, for the network policies;
	// recorded as names are.
	peers := resolve.Peers(s.Source, func(ip netip.Addr, e resolve.Peer) {
		if recording.Load() {
			w.Name(record.Name{Addr: ip, Peer: &e})
		}
	})
	// gather reads the objects and the node's rules again: at the start and
	// after every change of the objects.
	var client *corev1.Pod
	if ns, name, ok := resolve.FromPod(s.Client, s.Namespace); ok {
		var err error
		if client, err = resolve.FindPod(ctx, s.Source, ns, name); err != nil {
			return err
		}
	}
	// --probe=dns traces the cluster's DNS Service beside the Service.
	var dns *clusterDNS
	if s.Probe != nil && s.Probe.Kind == probe.DNS {
		var err error
		if dns, err = s.findDNS(ctx); err != nil {
			return err
		}
		if dns.a != nil {
			// Its explanations name addresses, and its facts read again
			// are recorded, as the Service's are.
			dns.a.Explainer.Lookup, dns.a.Explainer.Peer = lookup, peers
			dns.a.Explainer.Rechecked = func(f *node.Facts) {
				if recording.Load() {
					w.Facts(f)
				}
			}
		}
	}
	gather := func(ctx context.Context) (*state, error) {
		facts := diagnose.ReadNode(s.Node, s.Local, s.Namespace+"/"+s.Name)
		a, err := diagnose.Assess(ctx, s.Source, s.Namespace, s.Name, client, facts)
		if err != nil {
			return nil, err
		}
		st := &state{Assessment: a, targets: a.Service.Targets(a.NodeAddrs), services: map[nf.Target]bool{}}
		for _, ad := range a.Service.Addresses(a.NodeAddrs) {
			st.services[nf.Target{Addr: ad.Addr, Proto: ad.Port.Protocol}] = true
		}
		if dns != nil && dns.a != nil {
			for _, t := range dns.a.Service.Targets(dns.a.NodeAddrs) {
				if !slices.Contains(st.targets, t) {
					st.targets = append(st.targets, t)
				}
			}
			for _, ad := range dns.a.Service.Addresses(dns.a.NodeAddrs) {
				st.services[nf.Target{Addr: ad.Addr, Proto: ad.Port.Protocol}] = true
			}
		}
		a.Explainer.Lookup, a.Explainer.Peer = lookup, peers
		// Facts read again for a connection go into the recording where
		// its report used them, as names do.
		a.Explainer.Rechecked = func(f *node.Facts) {
			if recording.Load() {
				w.Facts(f)
			}
		}
		return st, nil
	}
	st, err := gather(ctx)
	if err != nil {
		return err
	}
	p, err := s.Printer(output.Options{})
	if err != nil {
		return err
	}
	p.Diagnosis(st.Diagnosis())
	if dns != nil && dns.a != nil {
		p.Diagnosis(dns.a.Diagnosis())
	}
	if !s.Tracing {
		if len(st.Findings) > 0 && st.Findings[0].Severity == report.Problem {
			return ErrReported
		}
		return nil
	}
	if len(st.targets) == 0 {
		s.say("nothing to trace: %s has no address and no endpoint on this node's path", s.Namespace+"/"+s.Name)
		return nil
	}
	var probes *prober
	if s.Probe != nil {
		if probes, err = s.prober(ctx, st, dns); err != nil {
			return err
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		probes.done = cancel
		probes.record = func(r report.Resolution) {
			if recording.Load() {
				w.Resolution(r)
			}
		}
	}
	var cur atomic.Pointer[state]
	cur.Store(st)
	t := s.Trace
	t.Targets, t.Mode = st.targets, "service"
	t.DNSQuestions = t.DNSQuestions && (dns != nil || servesClusterDNS(st.Service))
	t.Meta = func(m *record.Meta) {
		m.Namespace, m.Service, m.Node, m.Addrs = s.Namespace, s.Name, s.Local.Name, s.Local.Addrs
	}
	t.RecordState = func() {
		cur.Load().record(w)
		if dns != nil && dns.a != nil {
			w.DNS(record.DNS{View: dns.a.View, Rules: RecordedFacts(dns.a.Node)})
		}
		recording.Store(true)
	}
	t.IsService = func(pr nf.Proto, a netip.AddrPort) bool {
		return cur.Load().services[nf.Target{Addr: a, Proto: pr}]
	}
	t.Explainer = func() report.Explainer {
		if dns != nil {
			return explainers{main: cur.Load().Explainer, dns: dns}
		}
		return cur.Load().Explainer
	}
	t.Started = func(ctx context.Context, tr *tracer.Tracer, print func(func(output.Printer))) {
		if probes != nil {
			go probes.run(ctx, print)
		}
		if namer != nil {
			go namer.Run(ctx)
		}
		api, ok := s.Source.(*resolve.API)
		if !ok {
			return
		}
		var known atomic.Int64 // when the objects were last read, for the warning
		known.Store(time.Now().UnixNano())
		go api.Watch(ctx, s.Namespace, s.Name, func() map[string]string { return cur.Load().Service.Selector }, func() {
			st, err := gather(ctx)
			if err != nil {
				s.warn("%v (tracing goes on with what was known before)", err)
				return
			}
			if err := tr.SetTargets(st.targets); err != nil {
				s.warn("updating the traced addresses: %v", err)
				return
			}
			cur.Store(st)
			known.Store(time.Now().UnixNano())
			if recording.Load() {
				st.record(w)
			}
			s.logf("objects changed: now %s", st.Service.Summary())
		}, func(err error) {
			s.warn("watching the API server failed (%s); tracing goes on with the objects as they were at %s",
				firstLine(err.Error()), time.Unix(0, known.Load()).Format("15:04:05"))
		})
	}
	err = Run(ctx, t)
	if err == nil && probes != nil && probes.failed.Load() {
		return ErrReported
	}
	return err
}

// RecordedFacts is what a recording keeps of the node's facts, for
// assessRecorded.
func RecordedFacts(f diagnose.NodeFacts) record.Rules {
	r := record.Rules{Rules: f.Rules, KubeProxy: f.KubeProxy, KubeProxyKnown: f.KubeProxyKnown, Bridges: f.Bridges, Conntrack: f.Conntrack, Net: f.Net}
	if f.RulesErr != nil {
		r.Err = f.RulesErr.Error()
	}
	return r
}

// assessRecorded diagnoses recorded objects with the node's recorded rules,
// as the live run did.
func assessRecorded(v *resolve.View, r record.Rules, m record.Meta) *diagnose.Assessment {
	facts := diagnose.NodeFacts{Local: resolve.LocalNode{Name: m.Node, Addrs: m.Addrs},
		Rules: r.Rules, KubeProxy: r.KubeProxy, KubeProxyKnown: r.KubeProxyKnown, Bridges: r.Bridges, Conntrack: r.Conntrack, Net: r.Net}
	if r.Err != "" {
		facts.RulesErr = errors.New(r.Err)
	}
	return diagnose.AssessView(v, facts)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
