package session

import (
	"context"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
)

// prober opens svctrace's own test connections (--probe) once tracing has
// begun, says how each went, and ends the trace when their connections
// have had time to complete. With --probe=dns it resolves the Service's
// name first, and connects to the address that gave.
type prober struct {
	kind    probe.Kind
	from    nf.NetNS
	node    nf.NetNS
	where   string // "node", "pod shop/frontend-x"
	to      []resolve.Address
	timeout time.Duration
	say     func(format string, args ...any)
	done    func() // ends the trace
	failed  atomic.Bool
	// --probe=dns: how to resolve, the cluster's DNS, the Service, and
	// where the resolution is recorded (-w).
	resolver resolver
	dns      *clusterDNS
	service  *resolve.Service
	record   func(report.Resolution)
}

// prober prepares the probes: the Service's ClusterIP ports, and the
// network namespace to connect from (and, to resolve, the resolver's
// files).
func (s Service) prober(ctx context.Context, st *state, dns *clusterDNS) (*prober, error) {
	node := s.Node
	p := &prober{kind: s.Probe.Kind, from: node, node: node, where: "node", timeout: s.Timeout, dns: dns, service: st.Service,
		say: func(format string, args ...any) { s.say("probe "+format, args...) }}
	for _, a := range st.Service.Addresses(st.NodeAddrs) {
		if a.Kind == "ClusterIP" && (a.Port.Protocol == nf.TCP || a.Port.Protocol == nf.UDP) {
			p.to = append(p.to, a)
		}
	}
	svc := st.Service.Namespace + "/" + st.Service.Name
	// A headless Service's name resolves to its endpoints: --probe=dns
	// connects to the one it gives.
	if len(p.to) == 0 && !(p.kind == probe.DNS && st.Service.Headless) {
		return nil, fmt.Errorf("%s has no ClusterIP with a TCP or UDP port to probe (headless or ExternalName): trace its clients' traffic instead, without --probe (a headless Service's name: --probe=dns)", svc)
	}
	if dns != nil {
		p.resolver = nodeResolver(dns, node, st.Service.Namespace)
	}
	ns, name, ok := resolve.FromPod(s.Probe.From, s.Namespace)
	if !ok {
		return p, nil
	}
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
	if pod.Spec.HostNetwork {
		return p, nil
	}
	found, err := probe.PodNetNSes([]netip.Addr{ip}, node, "")
	if err == nil {
		p.from, err = found.NetNS(ip)
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", ns, name, err)
	}
	if dns != nil {
		if p.resolver, err = podResolver(found.PID(ip), p.from, ns); err != nil {
			return nil, fmt.Errorf("pod %s/%s: %w", ns, name, err)
		}
	}
	return p, nil
}

// settle is how long the trace goes on after the last probe: long enough
// for a closed connection's last packets to be seen.
const settle = 500 * time.Millisecond

// run probes each address in turn, then ends the trace. With --probe=dns
// it resolves the name first and connects to the address it gave, on
// each of the Service's ports.
func (p *prober) run(ctx context.Context, print func(func(output.Printer))) {
	defer p.done()
	to := p.to
	kind := p.kind
	if p.kind == probe.DNS {
		kind = probe.Connect
		addrs := p.resolveService(ctx, print)
		if ctx.Err() != nil {
			return
		}
		switch {
		case len(addrs) == 0 && len(to) == 0:
			p.failed.Store(true)
			p.say("from %s: the name did not resolve, and a headless Service has no ClusterIP to connect to instead", p.where)
		case len(addrs) == 0:
			p.failed.Store(true)
			p.say("from %s: the name did not resolve; connecting to the ClusterIP instead", p.where)
		case p.service.Headless:
			to = endpointsAt(p.service, addrs[0])
		default:
			to = nil
			for _, a := range p.to {
				if a.Addr.Addr().Is4() != addrs[0].Is4() {
					continue
				}
				a.Addr = netip.AddrPortFrom(addrs[0], a.Addr.Port())
				to = append(to, a)
			}
		}
	}
	for _, a := range to {
		r := probe.Run(ctx, p.from, kind, a.Port.Protocol, a.Addr, p.timeout)
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

// endpointsAt are where a client of headless Service svc connects once its
// name gave addr: on each TCP or UDP port, the endpoint at addr, else addr
// on the Service's port.
func endpointsAt(svc *resolve.Service, addr netip.Addr) []resolve.Address {
	var out []resolve.Address
	for i := range svc.Ports {
		port := &svc.Ports[i]
		if port.Protocol != nf.TCP && port.Protocol != nf.UDP {
			continue
		}
		a := resolve.Address{Addr: netip.AddrPortFrom(addr, port.Port), Kind: "endpoint", Port: port}
		for _, e := range port.Endpoints {
			if e.Addr.Addr() == addr {
				a.Addr = e.Addr
				break
			}
		}
		out = append(out, a)
	}
	return out
}
