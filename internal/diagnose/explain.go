package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Explainer explains connections of one Service with what Check knows.
type Explainer struct {
	in       Input
	findings []report.Finding
	addrs    map[netip.AddrPort]resolve.Address
	eps      map[netip.AddrPort]endpointOf
	ips      map[netip.Addr]string
	// Lookup names an address nothing else knows (a client Pod, a Node);
	// may be nil. It is called for every address a report shows and must
	// not wait on the API server: a resolve.Namer's Name, or a
	// resolve.Memo of saved objects.
	Lookup func(netip.Addr) string
	// Peer says who a client address is as the network policies see it
	// (its Pod, namespace labels and policies, a Node, or an address
	// outside the cluster); false when unknown. nil: only the --from Pod
	// and the Nodes the View holds are known.
	Peer func(netip.Addr) (resolve.Peer, bool)
	// Recheck, if set, reads the node's facts again for a connection
	// whose explanation needs one the diagnosis did not read (the route
	// back to a client, a neighbour entry the trace's own packets made);
	// netlink in the node's namespace, quick. Rechecked, if set, is told
	// what was read, for the recording; AddFacts takes it back in.
	Recheck   func(node.Want) *node.Facts
	Rechecked func(*node.Facts)
	// known are the facts read again taken over the diagnosis's (nil:
	// none read again, the diagnosis's serve); rechecked the addresses
	// read again (each once, bounded).
	known     *node.Facts
	rechecked map[netip.Addr]bool
	// sticky are the endpoints explained connections of a Service port
	// with session affinity went to, by client: kube-proxy's memory as it
	// grew since its rules were read.
	sticky map[stickyKey][]stuck
}

// maxSticky bounds the clients remembered for affinity notes.
const maxSticky = 4096

type stickyKey struct {
	port   *resolve.Port
	client netip.Addr
}

type stuck struct {
	endpoint netip.AddrPort
	conn     int // the connection that went there
}

type endpointOf struct {
	ep   resolve.Endpoint
	port *resolve.Port
}

// NewExplainer prepares explanations; nodeAddrs are the addresses
// NodePorts were watched on.
func NewExplainer(in Input, findings []report.Finding, nodeAddrs []netip.Addr) *Explainer {
	x := &Explainer{in: in, findings: findings, addrs: map[netip.AddrPort]resolve.Address{},
		eps: map[netip.AddrPort]endpointOf{}, ips: map[netip.Addr]string{}, sticky: map[stickyKey][]stuck{}}
	for _, a := range in.Service.Addresses(nodeAddrs) {
		x.addrs[a.Addr] = a
	}
	for i := range in.Service.Ports {
		p := &in.Service.Ports[i]
		for _, e := range p.Endpoints {
			x.eps[e.Addr] = endpointOf{e, p}
			x.ips[e.Addr.Addr()] = podName(e)
		}
	}
	for _, p := range in.View.Pods {
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				x.ips[a] = fmt.Sprintf("pod %s/%s on %s", p.Namespace, p.Name, orUnknown(p.Spec.NodeName))
			}
		}
	}
	for name, n := range in.View.Nodes {
		if n == nil {
			continue
		}
		for _, a := range resolve.NodeAddrs(n) {
			x.ips[a] = "node " + name
		}
	}
	return x
}

func podName(e resolve.Endpoint) string {
	s := "endpoint"
	if e.Pod.Name != "" {
		s = "pod " + e.Pod.String()
	}
	if e.Node != "" {
		s += " on " + e.Node
	}
	return s + ", " + e.State()
}

// Name describes an address: "ClusterIP of shop/web:http", "pod
// shop/web-1 on node-1, ready", "node node-1", or "".
func (x *Explainer) Name(a netip.AddrPort) string {
	if ad, ok := x.addrs[a]; ok {
		return ad.Kind + " of " + ad.Port.String()
	}
	if e, ok := x.eps[a]; ok {
		return podName(e.ep)
	}
	if n, ok := x.ips[a.Addr()]; ok {
		return n
	}
	if x.Lookup != nil {
		return x.Lookup(a.Addr())
	}
	return ""
}

// Knows reports whether a is one of the Service's own addresses or
// endpoints (Name also names other Pods and Nodes).
func (x *Explainer) Knows(a netip.AddrPort) bool {
	_, isAddr := x.addrs[a]
	_, isEndpoint := x.eps[a]
	return isAddr || isEndpoint
}

// Explain names what a connection went through and what to blame.
func (x *Explainer) Explain(c *flow.Conn) report.Explanation {
	var e report.Explanation
	ad, viaService := x.addrs[c.VIP]
	var port *resolve.Port
	if viaService {
		port = ad.Port
		e.Service = fmt.Sprintf("%s (%s)", port.String(), ad.Kind)
	}
	// Where it was going: the endpoint the DNAT chose, or the one it was
	// sent to itself.
	dest := c.Endpoint
	if !viaService && !dest.IsValid() {
		dest = c.VIP
	}
	if ep, ok := x.eps[dest]; ok {
		e.Node, e.Endpoint = ep.ep.Node, ep.ep.State()
		if ep.ep.Pod.Name != "" {
			e.Pod = ep.ep.Pod.String()
		}
		if port == nil {
			port = ep.port
		}
	} else if c.Endpoint.IsValid() {
		e.Endpoint = "not an endpoint of the Service"
	}
	if viaService {
		e.Notes = x.notes(c, ad)
	}
	tries := c.Retried()
	for i := range c.Drops {
		// A packet lost at confirmation in a connection that did not die
		// of it: a DNS query that will time out, say. (An answer that
		// needed retransmissions is blamed on what dropped the tries.)
		if d := &c.Drops[i]; d.AtConfirm() && d != c.Drop && len(tries) == 0 {
			e.Notes = append(e.Notes, x.insertClash(c, d))
			break
		}
	}
	e.Notes = append(e.Notes, dnsNotes(c)...)
	var ownRule bool
	var traced *tracedRule
	e.Rule, ownRule, traced = x.rule(c, port)
	pod := "the endpoint " + dest.String()
	if e.Pod != "" {
		pod = "Pod " + e.Pod
		if e.Node != "" {
			pod += " on " + e.Node
		}
	}
	x.blame(c, port, ad, viaService, ownRule, traced, pod, &e).into(&e)
	if e.Cause != report.PolicyDenies {
		if l := x.policyAdmits(c, pod); l != "" {
			e.Evidence = append(e.Evidence, l)
		}
	}
	return e
}

// blame finds what to blame for the connection, from the evidence in
// order of how directly it shows the cause: what the Service's addresses
// and conntrack's entries did to it, then the kernel's own word (its drop
// reason, the answer that refused), then the node's and the objects'
// facts about the endpoint, then the rules where it died (traced: the
// iptables rule the dropped packet was followed to, if any).
func (x *Explainer) blame(c *flow.Conn, port *resolve.Port, ad resolve.Address, viaService, ownRule bool, traced *tracedRule, pod string, e *report.Explanation) blamed {
	if viaService && ad.Kind == "NodePort" && !c.Endpoint.IsValid() && x.in.Rules != nil && !x.in.Rules.AcceptsNodePort(c.VIP.Addr()) {
		return blamed{code: report.NodePortAddr, class: cause.Netfilter,
			text: fmt.Sprintf("kube-proxy does not accept NodePorts on %s, so nothing translated %s; use one of its NodePort addresses (%s)",
				c.VIP.Addr(), c.VIP, nodePortRule(x.in.Rules)),
			evidence: []string{nodePortRule(x.in.Rules)}}
	}
	if s := staleEntry(c, port); s != "" && c.Verdict != flow.Answered {
		return blamed{code: report.StaleEntry, class: cause.Netfilter, text: s}
	}
	if rule, b := x.invalid(c, pod); b != "" {
		if rule != "" {
			e.Rule = rule
		}
		return blamed{code: report.CTInvalid, class: cause.Netfilter, text: b, evidence: x.facts(cause.Conntrack, c.Client.Addr())}
	}
	proto := c.Proto
	switch c.Verdict {
	case flow.Rejected, flow.NotTranslated:
		// A rule not kube-proxy's, followed to, rejected it (a policy
		// engine's REJECT, kube-router's): the policy it enforces, else
		// the rule, whatever the node's ICMP error seems to say.
		if c.Verdict == flow.Rejected && !ownRule && traced != nil && c.Endpoint.IsValid() {
			return x.policyBlame(c, pod, traced.fate(describe.Dropped(c, *c.Drop), c.Drop), blamed{code: report.RuleDrop, class: cause.Netfilter,
				text: fmt.Sprintf("a rule %s, not kube-proxy's, rejected the %s to %s: look for a NetworkPolicy or a firewall rule there",
					e.Rule, c.PacketName(c.Drop.Packet), pod),
				evidence: traced.evidence()})
		}
		// The node's own ICMP error about the endpoint (a neighbour that
		// never answered, no route) is about the endpoint, not the rules.
		if c.Verdict == flow.Rejected && c.Endpoint.IsValid() && c.Outcome.Answer.Error {
			if b, ok := x.dropBlame(c, c.Drop, c.Endpoint, pod); ok {
				b.text += "; the node answered the client with " + describe.Answer(c.Outcome.Answer)
				return x.withFindings(b, c.Endpoint)
			}
			if b := x.refusal(c, pod); b.class != cause.Netfilter {
				if f, ok := x.endpointFacts(c, pod, c.Endpoint.Port(), proto); ok {
					f.text += " (the node answered " + describe.Answer(c.Outcome.Answer) + ")"
					return f
				}
				return b
			}
		}
		if f := x.problem(port); f != nil {
			return fromFinding(f)
		} else if e.Rule != "" {
			return blamed{code: report.RuleDrop, class: cause.Netfilter, text: e.Rule}
		}
	case flow.Answered:
		if tries := c.Retried(); len(tries) > 0 {
			return x.retried(c, tries)
		}
		if b, ok := x.droppedAfter(c, pod); ok {
			return b
		}
	case flow.Dropped:
		if b, ok := x.dropBlame(c, c.Drop, c.Endpoint, pod); ok {
			return x.withFindings(b, c.Endpoint)
		}
		// Dropped on the node on its way to an endpoint the node cannot
		// reach (no route, no ARP answer), with no reason given.
		if d := c.Drop; d != nil && d.InNode && d.Endpoint.IsValid() && c.PacketDir(d.Packet) == flow.Original {
			if f, ok := x.endpointFacts(c, pod, c.Endpoint.Port(), proto); ok && (f.code == report.NoRouteToEndpoint || f.code == report.EndpointUnanswered) {
				f.text += fmt.Sprintf(" (the kernel dropped the %s %s)", c.PacketName(d.Packet), describe.In(*d))
				return f
			}
		}
		// kube-proxy's own drop ("has no local endpoints") is a symptom:
		// blame what the Service's objects say. Someone else's rule is to
		// blame itself.
		if f := x.problem(port); ownRule && f != nil {
			return fromFinding(f)
		} else if ownRule {
			return blamed{code: report.KubeProxyRejects, class: cause.Netfilter, text: e.Rule}
		} else if e.Rule != "" {
			to := ""
			if c.Endpoint.IsValid() {
				to = " to " + pod
			}
			name := describe.Dropped(c, *c.Drop)
			fix := "look for a NetworkPolicy or a firewall rule there"
			if o := c.Drop.Outer; o.IsValid() {
				fix = fmt.Sprintf("the nodes carry Pod traffic to each other in VXLAN on %s port %d: this firewall must let it pass between them", strings.ToUpper(o.Proto.String()), o.Dst.Port())
			}
			b := blamed{code: report.RuleDrop, class: cause.Netfilter,
				text: fmt.Sprintf("a rule %s, not kube-proxy's, dropped the %s%s: %s", e.Rule, name, to, fix)}
			fate := fmt.Sprintf("the %s was dropped by a rule %s", name, e.Rule)
			if traced != nil {
				b.evidence, fate = traced.evidence(), traced.fate(name, c.Drop)
				if traced.v.Queue() != "" {
					b.text = strings.ToUpper(fate[:1]) + fate[1:] + ": look for the policy engine that reads it (kube-network-policies queues this way)"
				}
			}
			return x.policyBlame(c, pod, fate, b)
		}
		if d := c.Drop; d != nil {
			r, _ := cause.Drop(d.Reason)
			return blamed{code: report.UnplacedDrop, class: r.Class,
				text:     fmt.Sprintf("the kernel dropped the %s %s, where no rule svctrace read sits: look at what runs there", describe.Dropped(c, *d), describe.In(*d)),
				evidence: []string{fmt.Sprintf("the kernel's drop reason and location: %s at %s", orUnknown(d.Reason), d.Location)}}
		}
	case flow.Reset:
		if c.Outcome.Answer.Error {
			return x.refusal(c, pod+" ("+e.Endpoint+")")
		}
		b := blamed{code: report.Refused, class: cause.Socket,
			text: fmt.Sprintf("%s (%s): nothing listens on port %d", pod, e.Endpoint, c.Endpoint.Port())}
		ev := x.facts(cause.Sockets, c.Endpoint.Addr())
		code, says := listenerSays(x.net(cause.Sockets, c.Endpoint.Addr(), ""), c.Endpoint, proto)
		if code != "" {
			b.code = code
		}
		target := x.code(port, report.TargetPortNotExposed, report.TargetPortWrongProtocol)
		switch v4 := x.samePodIPv4(c.Endpoint); {
		case strings.HasPrefix(says, "yet "):
			b.text = fmt.Sprintf("%s (%s) reset the connection on port %d, %s", pod, e.Endpoint, c.Endpoint.Port(), says)
		case target != nil:
			f := target
			b.code = f.Code
			b.text += "; " + f.Summary
			if says != "" {
				b.text += "; " + says
			}
		case v4.IsValid():
			b.text = fmt.Sprintf("%s (%s): nothing listens on port %d over IPv6; the Pod's IPv4 endpoint is %s: ", pod, e.Endpoint, c.Endpoint.Port(), v4)
			if says != "" {
				b.text += says + ": have it listen on [::] (both families)"
			} else {
				b.text += "if that answers, its server is bound to 0.0.0.0 (IPv4 only): have it listen on [::] (both families)"
			}
		case says != "":
			b.text += "; " + says
		}
		b.evidence = ev
		return b
	case flow.NoReply:
		b := blamed{code: report.NoAnswer, text: fmt.Sprintf("%s (%s) did not answer on port %d", pod, e.Endpoint, c.Endpoint.Port())}
		if f, ok := x.endpointFacts(c, pod+" ("+e.Endpoint+")", c.Endpoint.Port(), proto); ok {
			return f
		} else if f.evidence != nil {
			b.evidence = f.evidence
		}
		return b
	}
	return blamed{}
}

// withFindings adds to b what the findings say of the endpoint ep: the
// object at fault behind what the packets showed.
func (x *Explainer) withFindings(b blamed, ep netip.AddrPort) blamed {
	if !ep.IsValid() {
		return b
	}
	// A fact already quoted, read again since ("tc qdisc on veth3: …",
	// "ip neigh: …"), is quoted once: as read last.
	quoted := func(l string) bool {
		key, _, _ := strings.Cut(l, ": ")
		return slices.ContainsFunc(b.evidence, func(e string) bool { return strings.HasPrefix(e, key+": ") })
	}
	for _, f := range x.findings {
		// A finding the blame already is (its code) is not said twice.
		if f.Endpoint == ep.String() && f.Code != b.code && (f.Severity == report.Problem || f.Severity == report.Warning) {
			b.text += "; " + f.Object + ": " + f.Summary
			for _, l := range f.Evidence {
				if !quoted(l) {
					b.evidence = append(b.evidence, l)
				}
			}
		}
	}
	return b
}

// dropBlame blames a drop by the kernel's reason for it, else by where
// the kernel placed it: in conntrack itself, at its confirmation, or in a
// bridge sending a Pod's packet back to it; false if none of these. to is
// where the packet was going, who names it.
func (x *Explainer) dropBlame(c *flow.Conn, d *flow.Drop, to netip.AddrPort, who string) (blamed, bool) {
	if d == nil {
		return blamed{}, false
	}
	if b, ok := x.kernelDrop(c, d, to, who); ok {
		return b, true
	}
	switch {
	case d.InNode && d.Placed && d.Gap.After == nf.StagePreConntrack:
		return blamed{code: report.ConntrackDrop, class: cause.Netfilter, text: x.conntrackDrop(c, d), evidence: x.facts(cause.Conntrack, to.Addr())}, true
	case d.AtConfirm():
		return blamed{code: report.InsertClash, class: cause.Netfilter, text: x.insertClash(c, d), evidence: x.facts(cause.Conntrack, to.Addr())}, true
	}
	if h := x.hairpin(c, to); h != "" {
		return blamed{code: report.Hairpin, class: cause.Link, text: h}, true
	}
	return blamed{}, false
}

// retried blames the drops an answered connection's first tries met: what
// dropped them, or, when svctrace cannot tell, where the kernel did.
func (x *Explainer) retried(c *flow.Conn, tries []*flow.Drop) blamed {
	d := tries[0]
	what := fmt.Sprintf("the %s was dropped before a retransmission got through", c.PacketName(d.Packet))
	if len(tries) > 1 {
		what = fmt.Sprintf("%d %ss were dropped before a retransmission got through", len(tries), c.PacketName(d.Packet))
	}
	if d.Endpoint.IsValid() && d.Endpoint != c.Endpoint {
		what += " to another endpoint"
	}
	if b, ok := x.dropBlame(c, d, d.Endpoint, ""); ok {
		b.text = what + ": " + b.text
		return b
	}
	if rule, traced, ok := x.ruleAt(c, d); ok {
		b := blamed{code: report.RuleDrop, class: cause.Netfilter, text: fmt.Sprintf("%s: a rule %s dropped them", what, rule)}
		if traced != nil {
			b.evidence = traced.evidence()
		}
		return b
	}
	return blamed{code: report.UnplacedDrop, class: cause.Other,
		text: fmt.Sprintf("%s; the kernel dropped them %s, where no rule svctrace read sits: look at what runs there (%s)", what, describe.Place(*d), d.Location)}
}

// samePodIPv4 is the IPv4 endpoint of the Pod behind the IPv6 endpoint a
// (a dual-stack Service's), or invalid.
func (x *Explainer) samePodIPv4(a netip.AddrPort) netip.AddrPort {
	ep, ok := x.eps[a]
	if !a.Addr().Is6() || !ok || ep.ep.Pod.Name == "" {
		return netip.AddrPort{}
	}
	for b, other := range x.eps {
		if b.Addr().Is4() && other.ep.Pod == ep.ep.Pod && b.Port() == a.Port() {
			return b
		}
	}
	return netip.AddrPort{}
}

// notes: where session affinity sent the connection, and what
// externalTrafficPolicy did to the client's address for a connection that
// reached an endpoint through an address from outside the cluster
// (NodePort, external IP, load-balancer IP).
func (x *Explainer) notes(c *flow.Conn, ad resolve.Address) []string {
	var notes []string
	if n := x.affinity(c, ad.Port); n != "" {
		notes = append(notes, n)
	}
	if ad.Kind == "ClusterIP" || !c.Endpoint.IsValid() {
		return notes
	}
	switch {
	case c.SNAT.IsValid():
		policy := "Cluster:"
		if x.in.Service.ExternalLocal {
			policy = "Local, but" // e.g. a hairpin from the node itself
		}
		notes = append(notes, fmt.Sprintf("externalTrafficPolicy: %s the connection was masqueraded to %s: the Pod sees that address, not the client's %s",
			policy, c.SNAT.Addr(), c.Client.Addr()))
	case x.in.Service.ExternalLocal:
		notes = append(notes, fmt.Sprintf("externalTrafficPolicy: Local: the Pod sees the client's own address %s (no SNAT); only endpoints on this node serve %s",
			c.Client.Addr(), ad.Addr))
	}
	return notes
}

// affinity explains where sessionAffinity: ClientIP sent the connection:
// where kube-proxy's memory, as read with its rules or as earlier traced
// connections left it, pinned the client.
func (x *Explainer) affinity(c *flow.Conn, port *resolve.Port) string {
	if !x.in.Service.ClientAffinity || !c.Endpoint.IsValid() || x.in.Rules == nil {
		return ""
	}
	pr := x.in.Rules.Port(port.String(), port.Protocol.String())
	if pr == nil || pr.AffinityTimeout == 0 {
		return ""
	}
	client := c.Client.Addr()
	key := stickyKey{port, client}
	// The client's latest earlier connection explained; explaining a
	// connection again gives the same note.
	var prev stuck
	traced := false
	for _, s := range x.sticky[key] {
		if s.conn < c.ID && s.conn > prev.conn {
			prev, traced = s, true
		}
	}
	if hist := x.sticky[key]; !slices.ContainsFunc(hist, func(s stuck) bool { return s.conn == c.ID }) && (hist != nil || len(x.sticky) < maxSticky) {
		if len(hist) == 4 {
			hist = hist[1:]
		}
		x.sticky[key] = append(hist, stuck{c.Endpoint, c.ID})
	}
	head := fmt.Sprintf("sessionAffinity: ClientIP (%s): ", duration(pr.AffinityTimeout))
	switch pin := pr.Pin(client); {
	case traced && prev.endpoint == c.Endpoint:
		return head + fmt.Sprintf("%s went to %s again, as its connection #%d did", client, c.Endpoint, prev.conn)
	case traced:
		return head + fmt.Sprintf("%s went to %s, not to %s as its connection #%d did: that pin had expired or its endpoint left", client, c.Endpoint, prev.endpoint, prev.conn)
	case pin != nil && pin.Endpoint == c.Endpoint:
		return head + "kube-proxy had pinned " + pinned(*pin, "") + ", and sent it there again"
	case pin != nil:
		return head + "kube-proxy had pinned " + pinned(*pin, "") + fmt.Sprintf(", yet it went to %s: that pin had expired or its endpoint left", c.Endpoint)
	}
	return head + fmt.Sprintf("%s was not pinned when svctrace read kube-proxy's rules; its new connections now go to %s", client, c.Endpoint)
}

// hairpin explains a dropped connection of a Pod to itself through its
// Service: the DNAT sends the packet back to the bridge port it came in
// on, which the bridge does only with that port's hairpin_mode on.
func (x *Explainer) hairpin(c *flow.Conn, to netip.AddrPort) string {
	if !to.IsValid() || to.Addr() != c.Client.Addr() {
		return ""
	}
	pod := "the endpoint " + c.Client.Addr().String()
	if ep, ok := x.eps[to]; ok && ep.ep.Pod.Name != "" {
		pod = "Pod " + ep.ep.Pod.String()
	}
	s := "hairpin: " + pod + " reached itself through the Service"
	b := resolve.BridgeOf(x.in.Bridges, c.Client.Addr())
	if b == nil {
		return s + ", and the packet, sent back to the Pod it came from, was dropped: with a bridge, the Pod's port needs hairpin_mode on (kubelet --hairpin-mode=hairpin-veth, or the CNI bridge plugin's \"hairpinMode\": true)"
	}
	if p := b.Port(c.Client.Addr()); p != nil && !p.Hairpin {
		return s + fmt.Sprintf("; the DNAT sent its packet back out port %s of bridge %s, the port it came in on, and that port's hairpin_mode is off, so the bridge dropped it: turn it on (kubelet --hairpin-mode=hairpin-veth, the CNI bridge plugin's \"hairpinMode\": true, or by hand: bridge link set dev %s hairpin on)",
			p.Name, b.Name, p.Name)
	}
	if len(b.Ports) > 0 && !slices.ContainsFunc(b.Ports, func(p resolve.BridgePort) bool { return p.Hairpin }) {
		return s + fmt.Sprintf("; the DNAT sent its packet back to the bridge port it came in on, and no port of bridge %s has hairpin_mode on, so the bridge dropped it: turn it on (kubelet --hairpin-mode=hairpin-veth, or the CNI bridge plugin's \"hairpinMode\": true)", b.Name)
	}
	return ""
}

// problem is the first Problem finding about port (or the whole Service).
func (x *Explainer) problem(port *resolve.Port) *report.Finding {
	for i, f := range x.findings {
		if f.Severity == report.Problem && (f.Port == "" || port == nil || f.Port == port.String()) {
			return &x.findings[i]
		}
	}
	return nil
}

func (x *Explainer) code(port *resolve.Port, codes ...report.Code) *report.Finding {
	for i, f := range x.findings {
		for _, c := range codes {
			if f.Code == c && (port == nil || f.Port == port.String()) {
				return &x.findings[i]
			}
		}
	}
	return nil
}

// rule names the rule that turned the connection away: kube-proxy's reject
// or drop for the port when the verdict matches it (ownRule), else the
// iptables rule the packet was followed to (traced; kube-proxy's own or
// not), else the base chains registered where the packet died.
func (x *Explainer) rule(c *flow.Conn, port *resolve.Port) (rule string, ownRule bool, traced *tracedRule) {
	r := x.in.Rules
	if c.Drop == nil || r == nil || (c.Verdict != flow.Rejected && c.Verdict != flow.Dropped) {
		return "", false, nil
	}
	if port != nil {
		if pr := r.Port(port.String(), port.Protocol.String()); pr != nil {
			for _, rj := range pr.Rejects {
				if (rj.Verdict == "REJECT") == (c.Verdict == flow.Rejected) {
					return fmt.Sprintf("%s: %s %s (kube-proxy, %s)", rj.Verdict, port.String(), rj.Why, rj.Where), true, nil
				}
			}
		}
	}
	if rd := r.RangeDrop(c.VIP.Addr()); rd != nil && c.Verdict == flow.Dropped && !c.Endpoint.IsValid() {
		return fmt.Sprintf("DROP: %s is in the service range %s, but kube-proxy has no ClusterIP %s (kube-proxy, %s: %q)",
			c.VIP, rd.Prefix, c.VIP.Addr(), rd.Where, rd.Why), true, nil
	}
	rule, traced, _ = x.ruleAt(c, c.Drop)
	return rule, traced != nil && traced.kubeProxys(), traced
}

// ruleAt names where drop d happened among the rules: the iptables rule
// its packet was followed to ("in table ip filter (iptables-nft), chain
// POLICY, rule 3: …", with traced set), else the base chains registered
// there ("in table ip filter, chain FORWARD (…)"); false if none is known
// there.
func (x *Explainer) ruleAt(c *flow.Conn, d *flow.Drop) (string, *tracedRule, bool) {
	r := x.in.Rules
	if r == nil || !d.InNode || !d.Placed {
		return "", nil, false
	}
	// The kernel said why, and it was not a rule (a neighbour that never
	// answered, a route): no table sits where it dropped.
	if why, ok := cause.Drop(d.Reason); ok && !why.Unspecific() {
		return "", nil, false
	}
	if tr, ok := x.traceRule(c, d); ok {
		return "in " + tr.where(), &tr, true
	}
	lo, hi := d.Gap.Bounds()
	var chains []string
	// Only the packet's family's chains saw it: an IPv4 packet the ip and
	// inet tables', an IPv6 one the ip6 and inet tables'.
	family := familyOf(c.VIP.Addr())
	for _, b := range r.BaseChains {
		if (b.Family == family || b.Family == "inet") && strings.EqualFold(b.Hook, d.Gap.Hook.String()) && int64(b.Priority) > lo && int64(b.Priority) < hi {
			chains = append(chains, b.String())
		}
	}
	if len(chains) == 0 {
		// A legacy table's stage (the gap between the observers around it)
		// names it; a drop elsewhere (the bridge's) is not the tables'.
		if r.Mode == kubeproxy.ModeIPTablesLegacy && len(d.Gap.Pieces) > 0 {
			return fmt.Sprintf("in iptables-legacy's %s on %s", d.Gap.What(), d.Gap.Hook), nil, true
		}
		return "", nil, false
	}
	return "in " + strings.Join(chains, " or "), nil, true
}
