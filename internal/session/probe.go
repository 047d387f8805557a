package session

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/resolve"
)

// prober opens svctrace's own test connections (--probe) once tracing has
// begun, says how each went, and ends the trace when their connections
// have had time to complete.
type prober struct {
	kind    probe.Kind
	from    nf.NetNS
	where   string // "node", "pod shop/frontend-x"
	to      []resolve.Address
	timeout time.Duration
	say     func(format string, args ...any)
	done    func() // ends the trace
	failed  atomic.Bool
}

// prober prepares the probes: the Service's ClusterIP ports, and the
// network namespace to connect from.
func (s Service) prober(ctx context.Context, st *state) (*prober, error) {
	node := s.Node
	p := &prober{kind: s.Probe.Kind, from: node, where: "node", timeout: s.Timeout,
		say: func(format string, args ...any) { s.say("probe "+format, args...) }}
	for _, a := range st.Service.Addresses(st.NodeAddrs) {
		if a.Kind == "ClusterIP" && (a.Port.Protocol == nf.TCP || a.Port.Protocol == nf.UDP) {
			p.to = append(p.to, a)
		}
	}
	svc := st.Service.Namespace + "/" + st.Service.Name
	if len(p.to) == 0 {
		return nil, fmt.Errorf("%s has no ClusterIP with a TCP or UDP port to probe (headless or ExternalName): trace its clients' traffic instead, without --probe", svc)
	}
	if ns, name, ok := resolve.FromPod(s.Probe.From, s.Namespace); ok {
		pod, err := resolve.FindPod(ctx, s.Source, ns, name)
		if err != nil {
			return nil, err
		}
		if local := st.View.LocalNode; pod.Spec.NodeName != local {
			return nil, fmt.Errorf("pod %s/%s runs on node %q, not on this node (%s): run svctrace on that node to probe from it", ns, name, pod.Spec.NodeName, local)
		}
		ip, err := netip.ParseAddr(pod.Status.PodIP)
		if err != nil {
			return nil, fmt.Errorf("pod %s/%s has no IP yet (phase %s): probe from it once it runs", ns, name, pod.Status.Phase)
		}
		p.where = fmt.Sprintf("pod %s/%s", ns, name)
		if !pod.Spec.HostNetwork {
			if p.from, err = probe.PodNetNS(ip, node, ""); err != nil {
				return nil, fmt.Errorf("pod %s/%s: %w", ns, name, err)
			}
		}
	}
	return p, nil
}

// settle is how long the trace goes on after the last probe: long enough
// for a closed connection's last packets to be seen.
const settle = 500 * time.Millisecond

// run probes each address in turn, then ends the trace.
func (p *prober) run(ctx context.Context) {
	defer p.done()
	for _, a := range p.to {
		r := probe.Run(ctx, p.from, p.kind, a.Port.Protocol, a.Addr, p.timeout)
		if ctx.Err() != nil {
			return
		}
		p.say("from %s: %s", p.where, r)
		if !r.OK {
			p.failed.Store(true)
		}
	}
	select {
	case <-time.After(settle):
	case <-ctx.Done():
	}
}
