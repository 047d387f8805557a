package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/netpol"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// policyTarget is one endpoint Pod of one Service port, as the network
// policies judge traffic to it.
type policyTarget struct {
	port      *resolve.Port
	number    uint16 // the port the Pod receives the Service's traffic on
	to        netpol.Endpoint
	onNode    string // the node the Pod runs on
	isolating []string
}

// policies judges the Service's endpoint Pods by the network policies
// read: which isolate them and what their rules admit on each target port,
// and whether this node and the client named by --from get through.
func (c *checker) policies() {
	p := c.View.Policies
	if p == nil {
		return
	}
	if len(p.Unread) > 0 {
		c.add(report.Finding{Severity: report.Info, Code: report.PoliciesUnread, Object: c.object,
			Summary:  "some network policies could not be read: no traffic is judged by those",
			Evidence: p.Unread,
			Next:     []string{"grant svctrace read access to them: kubectl apply -f deploy/rbac.yaml"}})
	}
	targets := c.policyTargets()
	// One finding per port and set of isolating policies: the Pods of a
	// Deployment share both.
	type key struct {
		port      *resolve.Port
		isolating string
	}
	for _, g := range grouped(targets, func(t policyTarget) (key, bool) {
		return key{t.port, strings.Join(t.isolating, ", ")}, len(t.isolating) > 0
	}) {
		c.isolated(g)
	}
	c.clientDenied(targets)
}

// grouped collects vs into groups of equal keys, in the order each key
// first appears; a value whose key says false is left out.
func grouped[K comparable, V any](vs []V, key func(V) (K, bool)) [][]V {
	var out [][]V
	at := map[K]int{}
	for _, v := range vs {
		k, ok := key(v)
		if !ok {
			continue
		}
		i, seen := at[k]
		if !seen {
			i = len(out)
			at[k] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], v)
	}
	return out
}

// policyTargets are the endpoint Pods of the Service's ports in its
// namespace that policies can select (not hostNetwork), with the policies
// that isolate each for ingress.
func (c *checker) policyTargets() []policyTarget {
	p := c.View.Policies
	labels, _ := p.NamespaceLabels(c.ns)
	var out []policyTarget
	for i := range c.svc.Ports {
		sp := &c.svc.Ports[i]
		seen := map[netip.AddrPort]bool{}
		for _, e := range sp.Endpoints {
			pod := c.View.Holder(e.Addr.Addr())
			if pod == nil || pod.Spec.HostNetwork || pod.Namespace != c.ns || seen[e.Addr] {
				continue
			}
			seen[e.Addr] = true
			out = append(out, policyTarget{port: sp, number: e.Addr.Port(), onNode: pod.Spec.NodeName,
				to:        netpol.Endpoint{IP: e.Addr.Addr(), Pod: pod, Namespace: labels},
				isolating: netpol.Isolating(p.Network, pod, netpol.Ingress)})
		}
	}
	return out
}

// isolated reports one port's endpoint Pods that the same NetworkPolicies
// isolate for ingress: the rules, and who of the usual clients they admit.
func (c *checker) isolated(ts []policyTarget) {
	p := c.View.Policies
	first := ts[0]
	proto, number := apiProtocol(first.port.Protocol), first.number
	var pods []string
	for _, t := range ts {
		pods = append(pods, t.to.Pod.Name)
	}
	what := fmt.Sprintf("%d/%s", number, proto)
	var ev []string // the rules, then how they treat the usual clients
	for _, name := range first.isolating {
		np := networkPolicy(p, name)
		if np == nil {
			continue
		}
		if len(np.Spec.Ingress) == 0 {
			ev = append(ev, fmt.Sprintf("NetworkPolicy %s: no ingress rule (it admits nothing)", name))
		}
		for i := range np.Spec.Ingress {
			ev = append(ev, fmt.Sprintf("NetworkPolicy %s ingress rule %d: %s", name, i+1, netpol.Describe(np, netpol.Ingress, i)))
		}
	}
	set := p.Set()
	// Another Pod of the namespace, with none of the labels rules name.
	other := netpol.Endpoint{Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: c.ns, Name: "(another)"}}, Namespace: first.to.Namespace}
	ev = append(ev, fmt.Sprintf("other Pods of namespace %s: %s", c.ns, judged(netpol.Evaluate(set, c.conn(other, first)), false)))
	ev = append(ev, "each Pod's own node (kubelet probes): admitted, whatever isolates the Pod")
	if local := c.View.LocalNode; local != "" {
		var remote []policyTarget
		for _, t := range ts {
			if t.onNode != local {
				remote = append(remote, t)
			}
		}
		if len(remote) > 0 && len(c.NodeAddrs) > 0 {
			n := netpol.Endpoint{IP: c.NodeAddrs[0], Node: local}
			if node := c.View.Nodes[local]; node != nil {
				n.NodeLabels = node.Labels
			}
			ev = append(ev, fmt.Sprintf("this node (%s) to the Pods on other nodes: %s", local, judged(netpol.Evaluate(set, c.conn(n, remote[0])), true)))
		}
	}
	if cl := clientEndpoint(c.View); cl != nil {
		ev = append(ev, fmt.Sprintf("%s (--from): %s", cl.Name(), judged(netpol.Evaluate(set, c.conn(*cl, first)), true)))
	}
	n := len(first.isolating)
	next := []string{fmt.Sprintf("kubectl describe networkpolicy -n %s %s", c.ns, strings.Join(names(first.isolating), " "))}
	if len(netpol.ForPort(p.Network, first.to, first.to, netpol.Ingress, proto, number)) == 0 {
		c.add(report.Finding{Severity: report.Warning, Code: report.PolicyAdmitsNothing, Object: "NetworkPolicy " + first.isolating[0], Port: first.port.String(),
			Summary: fmt.Sprintf("no rule of %s admits traffic to the endpoint Pods of %s (%s) on %s: only each Pod's own node (kubelet probes) reaches them",
				strings.Join(first.isolating, ", "), first.port.String(), strings.Join(pods, ", "), what),
			Evidence: ev,
			Next: []string{fmt.Sprintf("add an ingress rule for port %d (or the port's name) that names the Service's clients, to one of them or to a NetworkPolicy of its own", number),
				next[0]}})
		return
	}
	summary := fmt.Sprintf("%s %s %s the endpoint Pods of %s (%s) for ingress: on %s %s only what the rules below name",
		plural(n, "NetworkPolicy", "NetworkPolicies"), strings.Join(first.isolating, ", "), plural(n, "isolates", "isolate"),
		first.port.String(), strings.Join(pods, ", "), what, plural(n, "it admits", "they admit"))
	c.add(report.Finding{Severity: report.Info, Code: report.PolicyIsolates, Object: c.object, Port: first.port.String(),
		Summary: summary, Evidence: ev, Next: next})
}

// clientDenied reports where the policies deny the client named by --from,
// one finding per deciding rule (or isolating set).
func (c *checker) clientDenied(ts []policyTarget) {
	cl := clientEndpoint(c.View)
	if cl == nil {
		return
	}
	set := c.View.Policies.Set()
	type denial struct {
		t   policyTarget
		dec netpol.Decision
	}
	var denials []denial
	for _, t := range ts {
		if v := netpol.Evaluate(set, c.conn(*cl, t)); !v.Allowed {
			denials = append(denials, denial{t, v.Denial()})
		}
	}
	type key struct {
		port *resolve.Port
		dir  netpol.Direction
		by   string
	}
	for _, ds := range grouped(denials, func(x denial) (key, bool) { return key{x.t.port, x.dec.Direction, decider(x.dec)}, true }) {
		d, t := ds[0].dec, ds[0].t
		var pods []string
		for _, x := range ds {
			pods = append(pods, x.t.to.Pod.Name)
		}
		dir := "ingress of the endpoint Pods"
		if d.Direction == netpol.Egress {
			dir = "egress of " + cl.Name()
		}
		summary := fmt.Sprintf("%s %s %s's connections to the endpoint Pods of %s (%s) on %d/%s: the %s",
			decider(d), denyVerb(d), cl.Name(), t.port.String(), strings.Join(pods, ", "), t.number, apiProtocol(t.port.Protocol), dir)
		var ev, next []string
		switch {
		case d.Rule != nil:
			ev = append(ev, d.Rule.String()+" decides, "+tierNote(d.Rule.Tier))
			next = append(next, fmt.Sprintf("kubectl get %s %s -o yaml", strings.ToLower(kindOf(d.Rule.Tier)), d.Rule.Policy))
		default:
			ev = append(ev, "no rule of "+strings.Join(d.Isolating, ", ")+" admits it")
			for _, m := range d.Misses {
				ev = append(ev, fmt.Sprintf("%s misses: %s", m.Rule, strings.Join(m.Why, "; ")))
			}
			ns := c.ns
			if d.Direction == netpol.Egress {
				ns = cl.Pod.Namespace
			}
			next = append(next, fmt.Sprintf("kubectl describe networkpolicy -n %s %s", ns, strings.Join(names(d.Isolating), " ")))
		}
		c.add(report.Finding{Severity: report.Problem, Code: report.PolicyDenies, Object: decider(d), Port: t.port.String(),
			Summary: summary, Evidence: ev, Next: next})
	}
}

// decider names what denied: the admin rule, or the isolating
// NetworkPolicies.
func decider(d netpol.Decision) string {
	if d.Rule != nil {
		return d.Rule.String()
	}
	return plural(len(d.Isolating), "NetworkPolicy ", "NetworkPolicies ") + strings.Join(d.Isolating, ", ")
}

func denyVerb(d netpol.Decision) string {
	if d.Rule == nil && len(d.Isolating) > 1 {
		return "deny"
	}
	return "denies"
}

// tierNote says where an admin rule's tier stands to NetworkPolicy.
func tierNote(t netpol.Tier) string {
	if t == netpol.Baseline {
		return "no NetworkPolicy isolating the Pod"
	}
	return "before any NetworkPolicy"
}

func kindOf(t netpol.Tier) string {
	if t == netpol.Baseline {
		return "BaselineAdminNetworkPolicy"
	}
	return "AdminNetworkPolicy"
}

// judged says in a few words how the policies treat a client: admitted by
// which rule, or denied and why (the nearest miss, when miss).
func judged(v netpol.Verdict, miss bool) string {
	if v.Allowed {
		var by []string
		for _, d := range []netpol.Decision{v.Egress, v.Ingress} {
			if d.Rule != nil {
				by = append(by, d.Rule.String())
			}
		}
		if len(by) == 0 {
			return "admitted"
		}
		return "admitted by " + strings.Join(by, " and ")
	}
	d := v.Denial()
	switch {
	case d.Rule != nil:
		return "denied by " + d.Rule.String()
	case !miss:
		return "not admitted, unless a rule names them"
	case len(d.Misses) == 0:
		return fmt.Sprintf("denied: %s has no %s rule", strings.Join(d.Isolating, ", "), d.Direction)
	}
	return fmt.Sprintf("denied (%s) - nearest: %s misses: %s", d.Direction, d.Misses[0].Rule, strings.Join(d.Misses[0].Why, "; "))
}

// conn is a connection from `from` to target t's Pod on its target port.
func (c *checker) conn(from netpol.Endpoint, t policyTarget) netpol.Connection {
	return netpol.Connection{From: from, To: t.to, Protocol: apiProtocol(t.port.Protocol), Port: t.number}
}

// apiProtocol is a protocol as the API spells it: TCP, UDP, SCTP.
func apiProtocol(p nf.Proto) corev1.Protocol {
	return corev1.Protocol(strings.ToUpper(p.String()))
}

// clientEndpoint is the client named by --from, as the policies see it;
// nil without one.
func clientEndpoint(v *resolve.View) *netpol.Endpoint {
	pod := v.Client
	if pod == nil {
		return nil
	}
	e := &netpol.Endpoint{Pod: pod}
	e.IP, _ = netip.ParseAddr(pod.Status.PodIP)
	e.Namespace, _ = v.Policies.NamespaceLabels(pod.Namespace)
	if pod.Spec.HostNetwork {
		e.Node = pod.Spec.NodeName
	}
	return e
}

func networkPolicy(p *resolve.Policies, name string) *networkingv1.NetworkPolicy {
	for i := range p.Network {
		if np := &p.Network[i]; np.Namespace+"/"+np.Name == name {
			return np
		}
	}
	return nil
}

// names are the policies' names without their namespace.
func names(nsNames []string) []string {
	var out []string
	for _, n := range nsNames {
		_, name, _ := strings.Cut(n, "/")
		out = append(out, name)
	}
	return out
}

// policyBlame refines b, the blame of a packet a rule not kube-proxy's
// stopped on its way to an endpoint (fate: what the rule did, as
// tracedRule.fate says it), with the network policies: when they deny this
// client that endpoint, the policy that does is to blame (the rule is its
// engine's). Unchanged when they admit it (policyAdmits says so), or the
// policies or the client were not read.
func (x *Explainer) policyBlame(c *flow.Conn, pod, fate string, b blamed) blamed {
	if c.Drop == nil || c.PacketDir(c.Drop.Packet) != flow.Original {
		return b // replies of an admitted connection pass any policy
	}
	v, conn, ok := x.policyVerdict(c)
	if !ok {
		return b
	}
	if v.Allowed {
		return b // policyAdmits says so
	}
	what := fmt.Sprintf("%s → %s, port %d/%s", conn.From.Name(), pod, conn.Port, conn.Protocol)
	d := v.Denial()
	where := "at the Pod's ingress"
	if d.Direction == netpol.Egress {
		where = "at the egress of " + conn.From.Name()
	}
	text := fmt.Sprintf("%s %s %s, %s", decider(d), denyVerb(d), what, where)
	var ev []string
	switch {
	case d.Rule != nil:
		text += ", " + tierNote(d.Rule.Tier)
	case len(d.Misses) == 0:
		text += fmt.Sprintf(": %s has no %s rule", strings.Join(d.Isolating, ", "), d.Direction)
	default:
		text += fmt.Sprintf(": no rule admits this client; nearest, %s: %s", d.Misses[0].Rule, strings.Join(d.Misses[0].Why, "; "))
		for _, m := range d.Misses[1:] {
			ev = append(ev, fmt.Sprintf("%s misses: %s", m.Rule, strings.Join(m.Why, "; ")))
		}
	}
	text += "; " + fate
	return blamed{code: report.PolicyDenies, class: cause.Netfilter, text: text, evidence: append(ev, b.evidence...)}
}

// policyAdmits says, for a connection that failed for another cause, that
// the network policies that select its Pods admit it: where they isolate
// either end, an operator suspects them first. "" when no policy selects
// them, or the client or the policies are unknown.
func (x *Explainer) policyAdmits(c *flow.Conn, pod string) string {
	switch c.Verdict {
	case flow.Dropped, flow.Rejected, flow.NoReply:
	default:
		return ""
	}
	// Only where a policy may select the endpoint's Pod: the client is
	// not looked up for every failed connection.
	if p := x.in.View.Policies; p == nil || (len(p.Admin) == 0 && p.Baseline == nil && !x.endpointIsolated(c)) {
		return ""
	}
	v, conn, ok := x.policyVerdict(c)
	if !ok || !v.Allowed {
		return ""
	}
	selected := false
	for _, d := range []netpol.Decision{v.Egress, v.Ingress} {
		selected = selected || len(d.Isolating) > 0 || d.Rule != nil
	}
	if !selected {
		return ""
	}
	return fmt.Sprintf("network policies: %s → %s, port %d/%s: %s; they are not what stopped it",
		conn.From.Name(), pod, conn.Port, conn.Protocol, judged(v, false))
}

// endpointIsolated: a NetworkPolicy read isolates c's endpoint's Pod for
// ingress.
func (x *Explainer) endpointIsolated(c *flow.Conn) bool {
	pod := x.in.View.Holder(c.Endpoint.Addr())
	return pod != nil && len(netpol.Isolating(x.in.View.Policies.Network, pod, netpol.Ingress)) > 0
}

// policyVerdict judges c by the network policies read (and the client's
// namespace's), if its endpoint's Pod and its client are known.
func (x *Explainer) policyVerdict(c *flow.Conn) (netpol.Verdict, netpol.Connection, bool) {
	p := x.in.View.Policies
	if p == nil || !c.Endpoint.IsValid() {
		return netpol.Verdict{}, netpol.Connection{}, false
	}
	pod := x.in.View.Holder(c.Endpoint.Addr())
	if pod == nil {
		return netpol.Verdict{}, netpol.Connection{}, false
	}
	labels, _ := p.NamespaceLabels(pod.Namespace)
	from, ok := x.peer(c.Client.Addr())
	if !ok {
		return netpol.Verdict{}, netpol.Connection{}, false
	}
	set := p.Set()
	for _, np := range from.Policies {
		if !slices.ContainsFunc(set.Network, func(have networkingv1.NetworkPolicy) bool {
			return have.Namespace == np.Namespace && have.Name == np.Name
		}) {
			set.Network = append(set.Network, np)
		}
	}
	conn := netpol.Connection{From: from.Endpoint, To: netpol.Endpoint{IP: c.Endpoint.Addr(), Pod: pod, Namespace: labels},
		Protocol: apiProtocol(c.Proto), Port: c.Endpoint.Port()}
	return netpol.Evaluate(set, conn), conn, true
}

// peer is the client at a as the policies see it: the --from Pod, a Node,
// else whatever Peer says; false when unknown.
func (x *Explainer) peer(a netip.Addr) (resolve.Peer, bool) {
	if e := clientEndpoint(x.in.View); e != nil && e.IP == a {
		return resolve.Peer{Endpoint: *e}, true
	}
	for name, n := range x.in.View.Nodes {
		if n != nil && slices.Contains(resolve.NodeAddrs(n), a) {
			return resolve.Peer{Endpoint: netpol.Endpoint{IP: a, Node: name, NodeLabels: n.Labels}}, true
		}
	}
	if x.Peer != nil {
		return x.Peer(a)
	}
	return resolve.Peer{}, false
}
