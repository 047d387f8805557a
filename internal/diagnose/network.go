package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// endpoints checks each endpoint against what its EndpointSlice says of it
// and what the Pods and the node hold: its conditions, whose address it
// is, the route and neighbour to it, and the sockets its Pod listens on.
func (c *checker) endpoints() {
	seen := map[netip.AddrPort]bool{}
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		for _, e := range p.Endpoints {
			if seen[e.Addr] {
				continue
			}
			seen[e.Addr] = true
			c.conditions(p, e)
			c.holder(p, e)
			c.ruleDrops(p, e)
			if c.Net != nil {
				c.path(p, e)
			}
		}
	}
	if c.Net != nil && len(seen) > 0 {
		c.forwarding()
		c.unread()
	}
}

// endpointObject names the endpoint's Pod, else its slice.
func endpointObject(e resolve.Endpoint) string {
	if e.Pod.Name != "" {
		return "Pod " + e.Pod.String()
	}
	return "EndpointSlice " + e.Slice
}

// sliceSays quotes the endpoint's conditions as its slice has them.
func sliceSays(e resolve.Endpoint) string {
	by := e.Manager
	if by == "" {
		by = "no endpointslice.kubernetes.io/managed-by label"
	}
	return fmt.Sprintf("EndpointSlice %s (managed by %s): %s ready=%t serving=%t terminating=%t",
		e.Slice, by, e.Addr, e.Ready, e.Serving, e.Terminating)
}

// conditions: contradictions between an endpoint's conditions, and
// between them and its Pod's readiness.
func (c *checker) conditions(p *resolve.Port, e resolve.Endpoint) {
	f := report.Finding{Code: report.EndpointConditions, Object: endpointObject(e), Port: p.String(), Endpoint: e.Addr.String(), Evidence: []string{sliceSays(e)}}
	pod := c.View.Holder(e.Addr.Addr())
	switch {
	case e.Ready && (!e.Serving || e.Terminating):
		f.Severity = report.Problem
		f.Summary = fmt.Sprintf("the endpoint %s is ready yet says it is not serving or is terminating: kube-proxy goes by ready and sends new connections to it", e.Addr)
	case e.Ready && pod != nil && !podReady(pod) && c.svc.PublishNotReady:
		f.Severity = report.Info
		f.Summary = fmt.Sprintf("Pod %s/%s is not Ready, but the Service publishes not-ready addresses (publishNotReadyAddresses: true), so its endpoint %s is ready and kube-proxy sends it connections", pod.Namespace, pod.Name, e.Addr)
	case e.Ready && pod != nil && !podReady(pod):
		f.Severity = report.Problem
		f.Summary = fmt.Sprintf("the endpoint %s is ready, but Pod %s/%s, which holds that address, is not Ready: kube-proxy sends it connections", e.Addr, pod.Namespace, pod.Name)
		f.Evidence = append(f.Evidence, whyNotReady(pod))
	case !e.Ready && e.Serving && !e.Terminating:
		f.Severity = report.Info
		f.Summary = fmt.Sprintf("the endpoint %s is serving but not ready: kube-proxy sends it no connections (only terminating endpoints that serve are used, when no endpoint is ready)", e.Addr)
	default:
		return
	}
	if e.HandMade() {
		f.Next = append(f.Next, fmt.Sprintf("the slice is not the EndpointSlice controller's: fix its conditions where it is written (kubectl get endpointslice -n %s %s -o yaml)", c.ns, e.Slice))
	} else if pod != nil {
		f.Next = append(f.Next, fmt.Sprintf("kubectl describe pod -n %s %s", pod.Namespace, pod.Name))
	}
	c.add(f)
}

// holder: an endpoint whose address belongs to no Pod, or to another Pod
// than the one its slice names.
func (c *checker) holder(p *resolve.Port, e resolve.Endpoint) {
	a := e.Addr.Addr()
	pod := c.View.Holder(a)
	f := report.Finding{Severity: report.Problem, Code: report.EndpointNotAPod, Object: "EndpointSlice " + e.Slice, Port: p.String(), Endpoint: e.Addr.String(), Evidence: []string{sliceSays(e)}}
	switch {
	case pod == nil && slices.Contains(c.View.Orphans, a) && e.Pod.Name == "" && c.outsidePods(a):
		// A selector-less Service's endpoint beyond the Pods: the API
		// server's (default/kubernetes), a database's.
		f.Severity = report.Info
		f.Summary = fmt.Sprintf("the endpoint %s is no Pod's address, nor in a Pod range of the Nodes read: an address beyond the Pods (the API server's, an external server's), which svctrace follows as any other", a)
		f.Evidence = append(f.Evidence, fmt.Sprintf("no Pod has status.podIP %s (looked up by IP)", a))
	case pod == nil && slices.Contains(c.View.Orphans, a):
		f.Summary = fmt.Sprintf("the endpoint %s is an address no Pod holds", a)
		f.Evidence = append(f.Evidence, fmt.Sprintf("no Pod has status.podIP %s (looked up by IP)", a))
		if e.Pod.Name != "" {
			f.Summary += fmt.Sprintf(", though the slice names Pod %s", e.Pod)
		}
	case pod != nil && e.Pod.Name != "" && (pod.Namespace != e.Pod.Namespace || pod.Name != e.Pod.Name):
		f.Summary = fmt.Sprintf("the endpoint %s is Pod %s/%s's address, but the slice names Pod %s", a, pod.Namespace, pod.Name, e.Pod)
	default:
		return
	}
	if e.HandMade() {
		f.Next = []string{fmt.Sprintf("kubectl get endpointslice -n %s %s -o yaml   # written by %s, not by the EndpointSlice controller", c.ns, e.Slice, orUnknown(e.Manager))}
	}
	c.add(f)
}

// outsidePods reports whether a is in no Pod range (podCIDRs) of the Nodes
// the view holds, and some are known: without them, nothing says.
func (c *checker) outsidePods(a netip.Addr) bool {
	known := false
	for _, n := range c.View.Nodes {
		for _, s := range n.Spec.PodCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				continue
			}
			known = true
			if p.Contains(a) {
				return false
			}
		}
	}
	return known
}

// path: can the node send to the endpoint, does anything on its link
// answer for it, and does its Pod listen where the Service sends.
func (c *checker) path(p *resolve.Port, e resolve.Endpoint) {
	a := e.Addr.Addr()
	obj := endpointObject(e)
	r, ok := c.Net.Route(a)
	if ok && !r.Usable() {
		f := report.Finding{Severity: report.Problem, Code: report.NoRouteToEndpoint, Object: obj, Port: p.String(), Endpoint: e.Addr.String(),
			Summary:  fmt.Sprintf("this node has no usable route to the endpoint %s: packets to it are dropped (or refused) here", a),
			Evidence: []string{"ip route get " + a.String() + ": " + routeSays(r)},
			Next:     []string{"ip route get " + a.String(), "ip route show table all | grep -w unreachable"}}
		if e.Node != "" && e.Node != c.View.LocalNode {
			f.Summary += fmt.Sprintf("; the endpoint runs on node %s, whose Pod range this node must route to (the CNI's job)", e.Node)
			if n := c.View.Nodes[e.Node]; n != nil && len(n.Spec.PodCIDRs) > 0 {
				f.Evidence = append(f.Evidence, fmt.Sprintf("node %s's podCIDRs: %s", e.Node, strings.Join(n.Spec.PodCIDRs, ", ")))
			}
		}
		c.add(f)
		return
	}
	if ok && r.Usable() && r.Prefix.IsValid() && e.Node != "" && e.Node != c.View.LocalNode {
		c.podRange(p, e, r)
	}
	if dev, l, down := c.Net.LinkDown(a); down {
		c.add(report.Finding{Severity: report.Problem, Code: report.LinkDown, Object: obj, Port: p.String(), Endpoint: e.Addr.String(),
			Summary:  fmt.Sprintf("the node's link toward the endpoint %s is down (%s): the node cannot deliver to it", a, dev),
			Evidence: []string{l.String(dev)},
			Next:     []string{"ip link show " + dev, "is the Pod's own interface up? kubectl exec into it and run: ip link"}})
		return
	}
	if ok && r.Type == "unicast" && c.qdiscDrops(p, e, obj) {
		return
	}
	if ok && r.Type == "unicast" {
		if n, found := c.Net.Neighbour(r.NextHop()); found && !n.Answered() {
			f := report.Finding{Severity: report.Problem, Code: report.EndpointUnanswered, Object: obj, Port: p.String(), Endpoint: e.Addr.String(),
				Summary:  fmt.Sprintf("nothing on %s answers ARP/NDP for %s: the node cannot deliver to the endpoint %s", n.Dev, r.NextHop(), a),
				Evidence: []string{"ip route get " + a.String() + ": " + r.String(), "ip neigh: " + n.String()},
				Next:     []string{"ip neigh show " + r.NextHop().String(), "is a Pod running with that address? kubectl get pods -A -o wide | grep -w " + a.String()}}
			c.add(f)
			return
		}
	}
	l, ok := c.Net.ListenersOf(a)
	if !ok || l.Err != "" {
		return
	}
	c.listening(p, e, l)
}

// podRange: the endpoint runs on another node, and this node reaches it
// by a route broader than that node's Pod range (its default route): no
// route of the CNI's for the range. A warning: where a cloud network
// routes Pod ranges (route-based networking), that is how it works.
func (c *checker) podRange(p *resolve.Port, e resolve.Endpoint, r node.Route) {
	n := c.View.Nodes[e.Node]
	if n == nil {
		return
	}
	for _, s := range n.Spec.PodCIDRs {
		pr, err := netip.ParsePrefix(s)
		if err != nil || !pr.Contains(e.Addr.Addr()) || r.Prefix.Bits() >= pr.Bits() {
			continue
		}
		c.add(report.Finding{Severity: report.Warning, Code: report.PodRangeUnrouted, Object: "Node " + e.Node, Port: p.String(), Endpoint: e.Addr.String(),
			Summary: fmt.Sprintf("this node has no route for node %s's Pod range %s: packets to its Pods (the endpoint %s) leave by the route to %s via %s, which only a network beyond that routes Pod ranges (a cloud's routes) delivers",
				e.Node, pr, e.Addr, r.Prefix, r.Dev),
			Evidence: []string{"ip route get " + e.Addr.Addr().String() + ": " + routeSays(r), fmt.Sprintf("node %s's podCIDRs: %s", e.Node, strings.Join(n.Spec.PodCIDRs, ", "))},
			Next:     []string{"ip route show " + pr.String(), "is the CNI's agent running on this node, and does it know node " + e.Node + "?"}})
		return
	}
}

// qdiscDrops: a qdisc on the way to the endpoint, or a tc program its
// clsact qdisc runs, has dropped packets. A
// problem when the endpoint's neighbour entry failed too (the qdisc
// swallowed the node's ARP requests), else a warning: drop counts add up
// since the qdisc was made.
func (c *checker) qdiscDrops(p *resolve.Port, e resolve.Endpoint, obj string) bool {
	a := e.Addr.Addr()
	var ev []string
	for _, d := range c.Net.Toward(a) {
		for _, q := range c.Net.QdiscsOn(d) {
			if q.Dropped > 0 {
				ev = append(ev, q.String())
			}
		}
	}
	if len(ev) == 0 {
		return false
	}
	f := report.Finding{Severity: report.Warning, Code: report.QdiscDrops, Object: obj, Port: p.String(), Endpoint: e.Addr.String(),
		Summary:  fmt.Sprintf("a queueing discipline or tc program on the way to the endpoint %s has dropped packets", a),
		Evidence: ev,
		Next:     []string{"tc -s qdisc show dev " + strings.Join(c.Net.Toward(a), "; tc -s qdisc show dev ")}}
	if r, ok := c.Net.Route(a); ok {
		if n, found := c.Net.Neighbour(r.NextHop()); found && !n.Answered() {
			f.Severity = report.Problem
			f.Summary += ", and nothing answered the node's ARP/NDP for it: the qdisc drops what the node sends there, ARP included"
			f.Evidence = append(f.Evidence, "ip neigh: "+n.String())
		}
	}
	c.add(f)
	return true
}

func routeSays(r node.Route) string {
	if r.Err != "" {
		s := r.Err
		if r.Type != "" {
			s += " (route type " + r.Type + ")"
		}
		return s
	}
	return r.String()
}

// listening holds the endpoint's Pod's sockets against where the Service
// sends: that port and protocol, on the endpoint's address.
func (c *checker) listening(p *resolve.Port, e resolve.Endpoint, l node.Listeners) {
	var takes *node.Socket
	var samePort, sameProto []string
	for i, s := range l.Sockets {
		switch {
		case s.Takes(p.Protocol, e.Addr):
			takes = &l.Sockets[i]
		case s.Proto == p.Protocol && s.Local.Port() == e.Addr.Port():
			samePort = append(samePort, s.Local.String())
		case s.Proto == p.Protocol:
			sameProto = append(sameProto, s.Local.String())
		}
	}
	quote := fmt.Sprintf("sockets listening in %s's network namespace (sock_diag): %s", l.Pod, socketList(l.Sockets))
	f := report.Finding{Severity: report.Problem, Object: endpointObject(e), Port: p.String(), Endpoint: e.Addr.String(), Evidence: []string{quote},
		Next: []string{"nsenter -n -t <pid of a process of the Pod> ss -ltnup   # the Pod's sockets"}}
	switch {
	case takes != nil && takes.Proto.String() == "tcp" && takes.Queue > takes.Backlog:
		f.Code = report.BacklogFull
		f.Summary = fmt.Sprintf("the server listening on %s in %s does not accept connections: its accept queue is full (%d waiting, backlog %d), so the kernel drops new SYNs", takes.Local, l.Pod, takes.Queue, takes.Backlog)
	case takes != nil:
		return
	case len(samePort) > 0 && e.Addr.Addr().Is6() && slices.Contains(samePort, netip.AddrPortFrom(netip.IPv4Unspecified(), e.Addr.Port()).String()):
		f.Code = report.ListensElsewhere
		f.Summary = fmt.Sprintf("nothing listens on %s/%s in %s: its server listens on 0.0.0.0:%d, IPv4 only, so the Service's IPv6 endpoint is refused",
			e.Addr, p.Protocol, l.Pod, e.Addr.Port())
		f.Next = append(f.Next, "have the server listen on [::] (both families)")
	case len(samePort) > 0:
		f.Code = report.ListensElsewhere
		f.Summary = fmt.Sprintf("nothing listens on %s/%s in %s: its server listens on port %d only on %s, not on the Pod's address",
			e.Addr, p.Protocol, l.Pod, e.Addr.Port(), strings.Join(samePort, ", "))
		f.Next = append(f.Next, "have the server listen on 0.0.0.0 (or [::]), not on a loopback or other address")
	default:
		f.Code = report.NotListening
		f.Summary = fmt.Sprintf("nothing listens on %s/%s in %s, where the Service sends", e.Addr, p.Protocol, l.Pod)
		if len(sameProto) > 0 {
			f.Summary += fmt.Sprintf("; it listens on %s", strings.Join(sameProto, ", "))
		}
		f.Next = append(f.Next, fmt.Sprintf("set targetPort of %s to the port the server listens on, or fix the server", p.String()))
	}
	c.add(f)
}

func socketList(ss []node.Socket) string {
	if len(ss) == 0 {
		return "none"
	}
	var out []string
	for _, s := range ss {
		out = append(out, s.String())
	}
	return strings.Join(out, ", ")
}

// forwarding: a node that does not forward IPv4 sends no Service traffic
// on to another Pod or node.
func (c *checker) forwarding() {
	v, ok := c.Net.Sysctl("net.ipv4.ip_forward")
	if !ok || v != "0" || !slices.ContainsFunc(c.svc.ClusterIPs, netip.Addr.Is4) {
		return
	}
	c.add(report.Finding{Severity: report.Problem, Code: report.ForwardingOff, Object: "node " + c.nodeName(),
		Summary:  "the node does not forward IPv4 (net.ipv4.ip_forward=0): it drops Service traffic that must go on to a Pod",
		Evidence: []string{"net.ipv4.ip_forward = 0"},
		Next:     []string{"sysctl -w net.ipv4.ip_forward=1 (kubelet and the CNI expect it on)"}})
}

// factCauses are the causes check evaluates from the node's facts, with
// the facts each needs: what it could not check when a fact was not read.
var factCauses = []struct {
	code  report.Code
	needs []cause.Fact
}{
	{report.NoRouteToEndpoint, []cause.Fact{cause.Route}},
	{report.EndpointUnanswered, []cause.Fact{cause.Route, cause.Neighbours}},
	{report.LinkDown, []cause.Fact{cause.Route}},
	{report.NotListening, []cause.Fact{cause.Sockets}},
	{report.ListensElsewhere, []cause.Fact{cause.Sockets}},
	{report.BacklogFull, []cause.Fact{cause.Sockets}},
	{report.ForwardingOff, []cause.Fact{cause.Forwarding}},
	{report.RuleDropsEndpoint, []cause.Fact{cause.Rules}},
}

// unread says which of the node's facts could not be read, which causes
// svctrace therefore did not check, and how to check them.
func (c *checker) unread() {
	var ev []string
	missing := map[cause.Fact]bool{}
	if len(c.Net.Unread) > 0 {
		ev = append(ev, c.Net.Unread...)
		if len(c.Net.Routes) == 0 {
			missing[cause.Route], missing[cause.Neighbours], missing[cause.Forwarding] = true, true, true
		}
	}
	for _, l := range c.Net.Listeners {
		if l.Err != "" {
			ev = append(ev, fmt.Sprintf("the sockets of %s (%s): %s", l.Pod, l.Addr, l.Err))
			missing[cause.Sockets] = true
		}
	}
	if slices.ContainsFunc(c.Net.Unread, func(u string) bool { return strings.Contains(u, "sockets") }) {
		missing[cause.Sockets] = true
	}
	if c.Rules == nil || len(c.Rules.Tables) == 0 {
		missing[cause.Rules] = true
	}
	if len(ev) == 0 {
		return
	}
	var notChecked []string
	var next []string
	for _, fc := range factCauses {
		for _, f := range fc.needs {
			if missing[f] {
				notChecked = append(notChecked, string(fc.code))
				if check := f.Check(); !slices.Contains(next, check) {
					next = append(next, check)
				}
				break
			}
		}
	}
	summary := "some of the node's facts could not be read"
	if len(notChecked) > 0 {
		summary += ": svctrace did not check " + strings.Join(notChecked, ", ")
	}
	c.add(report.Finding{Severity: report.Info, Code: report.NodeFactsUnread, Object: "node " + c.nodeName(),
		Summary: summary, Evidence: ev, Next: next})
}

// namedPorts: a targetPort by name that resolves to different numbers in
// different Pods (a rolling update, or a Pod spec that drifted).
func (c *checker) namedPorts() {
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		if p.TargetPort.Type != intstr.String || len(c.View.Pods) < 2 {
			continue
		}
		byNumber := map[int32][]string{}
		var numbers []int32
		for _, pod := range c.View.Pods {
			if n, ok := namedPort(&pod, p.TargetPort.StrVal); ok {
				if byNumber[n] == nil {
					numbers = append(numbers, n)
				}
				byNumber[n] = append(byNumber[n], pod.Name)
			}
		}
		if len(numbers) < 2 {
			continue
		}
		slices.Sort(numbers)
		f := report.Finding{Severity: report.Warning, Code: report.NamedPortDiffers, Object: c.object, Port: p.String(),
			Summary: fmt.Sprintf("targetPort %q of %s is port %s depending on the Pod: each Pod's endpoint uses its own number, so a server listening on another one refuses",
				p.TargetPort.StrVal, p.String(), joinInts(numbers))}
		for _, n := range numbers {
			f.Evidence = append(f.Evidence, fmt.Sprintf("%s = %d in %s", p.TargetPort.StrVal, n, strings.Join(byNumber[n], ", ")))
		}
		f.Next = []string{fmt.Sprintf("kubectl get pods -n %s -l %s -o custom-columns=NAME:.metadata.name,PORTS:.spec.containers[*].ports", c.ns, selectorString(c.svc.Selector))}
		c.add(f)
	}
}

func namedPort(p *corev1.Pod, name string) (int32, bool) {
	for _, ctr := range p.Spec.Containers {
		for _, cp := range ctr.Ports {
			if cp.Name == name {
				return cp.ContainerPort, true
			}
		}
	}
	return 0, false
}

func joinInts(ns []int32) string {
	var s []string
	for _, n := range ns {
		s = append(s, fmt.Sprint(n))
	}
	return strings.Join(s, " or ")
}

// workloads: the selector matches Pods of more than one controller (a
// selector broader than its author meant: another Deployment's Pods, a
// canary, a Job), each of which becomes an endpoint.
func (c *checker) workloads() {
	if len(c.svc.Selector) == 0 || len(c.View.Pods) < 2 {
		return
	}
	count := map[string]int{}
	var owners []string
	for _, p := range c.View.Pods {
		o := ownerOf(&p)
		if count[o] == 0 {
			owners = append(owners, o)
		}
		count[o]++
	}
	if len(owners) < 2 {
		return
	}
	f := report.Finding{Severity: report.Info, Code: report.SelectorSpansWorkloads, Object: c.object,
		Summary: fmt.Sprintf("the selector %s matches the Pods of %d workloads: each of their Pods is an endpoint, whatever it serves",
			selectorString(c.svc.Selector), len(owners)),
		Next: []string{fmt.Sprintf("kubectl get pods -n %s -l %s -L app.kubernetes.io/name,app -o wide", c.ns, selectorString(c.svc.Selector))}}
	for _, o := range owners {
		f.Evidence = append(f.Evidence, fmt.Sprintf("%s: %d Pod(s)", o, count[o]))
	}
	c.add(f)
}

// ownerOf names a Pod's controller: "Deployment web" for a ReplicaSet
// web-6c8f9d (its pod-template-hash stripped), "StatefulSet db", or "no
// controller" for a bare Pod.
func ownerOf(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		if h := p.Labels["pod-template-hash"]; o.Kind == "ReplicaSet" && h != "" && strings.HasSuffix(o.Name, "-"+h) {
			return "Deployment " + strings.TrimSuffix(o.Name, "-"+h)
		}
		return o.Kind + " " + o.Name
	}
	return "no controller"
}
