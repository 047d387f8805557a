package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
)

// blamed is a connection's blame as data: the cause's code, the class of
// the kernel's evidence, the line, and the facts that show it.
type blamed struct {
	code     report.Code
	class    cause.Class
	text     string
	evidence []string
}

func (b blamed) into(e *report.Explanation) {
	e.Blame, e.Cause, e.Class, e.Evidence = b.text, b.code, string(b.class), b.evidence
}

// fromFinding blames what a finding says.
func fromFinding(f *report.Finding) blamed {
	return blamed{code: f.Code, text: f.Object + ": " + f.Summary, evidence: f.Evidence}
}

// maxRechecked bounds the addresses whose facts an Explainer reads again.
const maxRechecked = 1024

// AddFacts takes in facts read again (a recording's): they answer before
// those read earlier.
func (x *Explainer) AddFacts(f *node.Facts) { x.known = node.Merge(f, x.view()) }

// view are the node's facts as known now: the diagnosis's, and those read
// again since.
func (x *Explainer) view() *node.Facts {
	if x.known != nil {
		return x.known
	}
	return x.in.Net
}

// net are the node's facts about address a for fact kind f: read again
// (Recheck) when the diagnosis did not read them, once per address.
func (x *Explainer) net(f cause.Fact, a netip.Addr, dev string) *node.Facts {
	net := x.view()
	needs := f == cause.Route || f == cause.Neighbours || f == cause.RPFilter || f == cause.MTU || f == cause.Qdiscs || f == cause.Policy || f == cause.Sockets
	if !needs || x.Recheck == nil || x.rechecked[a] || len(x.rechecked) >= maxRechecked {
		return net
	}
	want := node.Want{Addrs: []netip.Addr{a}}
	if net != nil {
		r, ok := net.Route(a)
		_, hop := net.Neighbour(r.NextHop())
		_, rp := net.Sysctl("net.ipv4.conf." + dev + ".rp_filter")
		if f == cause.Sockets {
			l, pod := net.ListenersOf(a)
			if !pod {
				return net // not an endpoint Pod on this node
			}
			want.Pods = []node.Pod{{Name: l.Pod, Addr: a}}
		}
		// A qdisc's drop count, a policy, a socket's queues are read
		// again for the connection; a route the diagnosis read serves as
		// it is.
		fresh := f == cause.Qdiscs || f == cause.Policy || f == cause.Sockets
		if ok && !fresh && (f != cause.Neighbours || hop || r.Type != "unicast") && (f != cause.RPFilter || rp || dev == "") {
			return net
		}
	}
	if x.rechecked == nil {
		x.rechecked = map[netip.Addr]bool{}
	}
	x.rechecked[a] = true
	if dev != "" {
		want.Devs = []string{dev}
	}
	got := x.Recheck(want)
	if got == nil {
		return net
	}
	x.AddFacts(got)
	if x.Rechecked != nil {
		x.Rechecked(got)
	}
	return x.view()
}

// facts quotes the node's facts of kind f about address a (where a packet
// was going, or came from; dev: the interface it came in on, if known):
// what svctrace read, or what it would check.
func (x *Explainer) facts(f cause.Fact, a netip.Addr, dev ...string) []string {
	in := ""
	if len(dev) > 0 && !strings.HasPrefix(dev[0], "ifindex ") {
		in = dev[0]
	}
	net := x.net(f, a, in)
	unread := func(what string) []string {
		return []string{fmt.Sprintf("not read: %s; would check: %s", what, strings.ReplaceAll(f.Check(), "<address>", a.String()))}
	}
	switch f {
	case cause.NoFact:
		return nil
	case cause.Route, cause.Neighbours, cause.MTU:
		if net == nil {
			return unread("the node's routes")
		}
		r, ok := net.Route(a)
		if !ok {
			return unread("the route to " + a.String())
		}
		ev := []string{"ip route get " + a.String() + ": " + routeSays(r)}
		if f == cause.Neighbours && r.Type == "unicast" {
			if n, ok := net.Neighbour(r.NextHop()); ok {
				ev = append(ev, "ip neigh: "+n.String())
			} else {
				ev = append(ev, fmt.Sprintf("ip neigh: no entry for %s when svctrace read the table", r.NextHop()))
			}
		}
		if l, ok := net.Links[r.Dev]; ok && f == cause.MTU {
			ev = append(ev, fmt.Sprintf("%s: mtu %d", r.Dev, l.MTU))
		}
		return ev
	case cause.Qdiscs, cause.Programs:
		if net == nil {
			return unread("the node's qdiscs")
		}
		r, ok := net.Route(a)
		if !ok {
			return unread("the route to " + a.String())
		}
		ev := []string{"ip route get " + a.String() + ": " + routeSays(r)}
		for _, d := range net.Toward(a) {
			qs := net.QdiscsOn(d)
			for _, q := range qs {
				ev = append(ev, q.String())
			}
			if d != "" && len(qs) == 0 {
				ev = append(ev, "no qdisc read on "+d)
			}
		}
		if f == cause.Programs {
			ev = append(ev, "not read: the cgroups' eBPF programs; would check: bpftool cgroup tree")
		}
		return ev
	case cause.Policy:
		if net == nil {
			return unread("the node's xfrm policies")
		}
		var ev []string
		for _, p := range net.PoliciesFor(a) {
			ev = append(ev, p.String())
		}
		if len(ev) == 0 {
			ev = append(ev, "no xfrm policy svctrace read covers "+a.String())
		}
		return ev
	case cause.RPFilter, cause.Forwarding:
		if net == nil {
			return unread("the node's sysctls")
		}
		var ev []string
		for _, name := range sortedKeys(net.Sysctls) {
			dev, isDev := strings.CutSuffix(strings.TrimPrefix(name, "net.ipv4.conf."), ".rp_filter")
			if f == cause.RPFilter && isDev && dev != "all" && dev != "default" && dev != in {
				continue // another interface's
			}
			if (f == cause.RPFilter && isDev) ||
				(f == cause.Forwarding && (strings.Contains(name, "forward") || strings.Contains(name, "bridge-nf"))) {
				ev = append(ev, name+" = "+net.Sysctls[name])
			}
		}
		if r, ok := net.Route(a); ok && f == cause.RPFilter {
			ev = append(ev, "the route back: ip route get "+a.String()+": "+routeSays(r))
		}
		return ev
	case cause.Sockets:
		if net == nil {
			return unread("the endpoint Pod's sockets")
		}
		l, ok := net.ListenersOf(a)
		switch {
		case !ok:
			return unread(fmt.Sprintf("the sockets of %s (no endpoint Pod on this node has it)", a))
		case l.Err != "":
			return unread(fmt.Sprintf("the sockets of %s: %s", l.Pod, l.Err))
		}
		return []string{fmt.Sprintf("sockets listening in %s's network namespace (sock_diag): %s", l.Pod, socketList(l.Sockets))}
	case cause.Conntrack:
		if t := x.in.Conntrack; t != nil {
			return []string{fmt.Sprintf("conntrack: %d of %d entries; %s", t.Count, t.Max, counters(t, "drop", "early_drop", "insert_failed", "invalid"))}
		}
	}
	return []string{"would check: " + strings.ReplaceAll(f.Check(), "<address>", a.String())}
}

func sortedKeys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// kernelDrop blames a drop by the kernel's own reason, where that reason
// says why: the class, the operator's cause, and the node's fact that
// confirms it, about the address the packet was going to (the client, for
// a reply; rp_filter is about the packet's source). false when the reason
// says nothing specific (NOT_SPECIFIED, a netfilter verdict): where it
// was dropped must.
func (x *Explainer) kernelDrop(c *flow.Conn, d *flow.Drop, to netip.AddrPort, who string) (blamed, bool) {
	r, known := cause.Drop(d.Reason)
	if !known || r.Unspecific() {
		return blamed{}, false
	}
	about := to.Addr()
	if c.PacketDir(d.Packet) == flow.Reply {
		about = c.Client.Addr()
	}
	if r.Confirm == cause.RPFilter {
		about = c.Client.Addr()
		if c.PacketDir(d.Packet) == flow.Reply {
			about = to.Addr()
		}
	}
	place := describe.In(*d)
	text := fmt.Sprintf("the kernel dropped %s %s: %s (%s at %s)", describe.Whose(c, d.Packet), place, r.Cause, d.Reason, d.Location)
	named := who != "" && to.IsValid() && c.PacketDir(d.Packet) == flow.Original
	if named {
		text = fmt.Sprintf("the kernel dropped %s to it %s: %s (%s at %s)", describe.Whose(c, d.Packet), place, r.Cause, d.Reason, d.Location)
	}
	b := blamed{code: report.KernelDrop, class: r.Class, text: text}
	if r.Confirm == cause.Policy && d.InNode {
		// xfrm looks policies up by the addresses before NAT
		// (nf_nat_decode_session): the Service address, then the
		// endpoint's.
		b.evidence = x.facts(r.Confirm, c.VIP.Addr())
		if to.IsValid() && to.Addr() != c.VIP.Addr() {
			b.evidence = append(b.evidence, x.facts(r.Confirm, to.Addr())...)
		}
	} else if d.InNode || r.Confirm == cause.Sockets {
		b.evidence = x.facts(r.Confirm, about, d.In)
	} else {
		b.evidence = []string{fmt.Sprintf("outside the node's network namespace (net:[%d]): would check there: %s", d.NetNS, r.Confirm.Check())}
	}
	// A neighbour that never answered, a device that would not send: a
	// link toward the address that is down says why.
	if d.InNode && (r.Class == cause.Neighbour || r.Class == cause.Device) {
		if net := x.net(cause.Neighbours, about, ""); net != nil {
			if dev, l, down := net.LinkDown(about); down {
				link := fmt.Sprintf("the node's link toward it, %s, is down", dev)
				if named {
					b.text = link + "; " + b.text
				} else {
					b.text += "; " + link
				}
				b.code, b.class = report.LinkDown, cause.Link
				b.evidence = append([]string{l.String(dev)}, b.evidence...)
			}
		}
	}
	if named {
		if r.Class == cause.Tunnel {
			who = "the overlay toward " + who // the node's own, not the Pod's
		}
		b.text = who + ": " + b.text
	}
	return b, true
}

// refusal blames an answer that refused the connection: an ICMP error by
// its type and code, a reset by whether the node or the endpoint sent
// it, with the facts of where the packet was going.
func (x *Explainer) refusal(c *flow.Conn, who string) blamed {
	a := c.Outcome.Answer
	fromNode := c.Outcome.Kind == flow.NodeRejected
	var r cause.Refusal
	if a.Error {
		r = cause.ICMP(a.ICMP.Proto, a.ICMP.Type, a.ICMP.Code)
	} else {
		r = cause.Reset(fromNode)
	}
	sender := a.From.Addr().String()
	if fromNode {
		sender = "the node"
	}
	about := c.Endpoint.Addr()
	if !about.IsValid() {
		about = c.VIP.Addr()
	}
	text := fmt.Sprintf("%s answered %s: %s", sender, describe.Answer(a), r.Cause)
	if who != "" {
		text = who + ": " + text
	}
	return blamed{code: report.Refused, class: r.Class, text: text, evidence: x.facts(r.Confirm, about)}
}

// endpointFacts blames a connection its endpoint never answered, or
// reset, by what the node knows of that endpoint: no usable route, no
// ARP answer, its Pod's listeners. false if they show nothing wrong, or
// were not read.
func (x *Explainer) endpointFacts(c *flow.Conn, who string, port uint16, proto nf.Proto) (blamed, bool) {
	a := c.Endpoint.Addr()
	if !a.IsValid() {
		return blamed{}, false
	}
	net := x.net(cause.Neighbours, a, "")
	if net == nil {
		return blamed{}, false
	}
	if r, ok := net.Route(a); ok && !r.Usable() {
		return blamed{code: report.NoRouteToEndpoint, class: cause.Routing,
			text:     fmt.Sprintf("%s: this node has no usable route to %s", who, a),
			evidence: []string{"ip route get " + a.String() + ": " + routeSays(r)}}, true
	} else if dev, l, down := net.LinkDown(a); down {
		return blamed{code: report.LinkDown, class: cause.Link,
			text:     fmt.Sprintf("%s: the node's link toward it, %s, is down, so the node cannot deliver to it", who, dev),
			evidence: []string{l.String(dev)}}, true
	} else if ok && r.Type == "unicast" {
		if n, ok := net.Neighbour(r.NextHop()); ok && !n.Answered() {
			return blamed{code: report.EndpointUnanswered, class: cause.Neighbour,
				text:     fmt.Sprintf("%s: nothing on %s answers ARP/NDP for %s, so the node cannot deliver to it", who, n.Dev, r.NextHop()),
				evidence: []string{"ip route get " + a.String() + ": " + r.String(), "ip neigh: " + n.String()}}, true
		}
	}
	l, ok := net.ListenersOf(a)
	if !ok || l.Err != "" {
		return blamed{}, false
	}
	ev := x.facts(cause.Sockets, a)
	for _, s := range l.Sockets {
		if s.Takes(proto, c.Endpoint) && s.Proto == nf.TCP && s.Queue > s.Backlog {
			return blamed{code: report.BacklogFull, class: cause.Socket,
				text: fmt.Sprintf("%s did not answer on port %d: its server does not accept connections; the accept queue of %s is full (%d waiting, backlog %d), so the kernel drops new SYNs",
					who, port, s.Local, s.Queue, s.Backlog),
				evidence: ev}, true
		}
	}
	return blamed{evidence: ev}, false
}

// listenerSays completes "nothing listens on port N" with what the Pod
// listens on instead, from its sockets, and the finding's code that says
// so; "" if they were not read, and no code if a socket does take it.
func listenerSays(net *node.Facts, ep netip.AddrPort, proto nf.Proto) (report.Code, string) {
	if net == nil {
		return "", ""
	}
	l, ok := net.ListenersOf(ep.Addr())
	if !ok || l.Err != "" {
		return "", ""
	}
	var same, other []string
	for _, s := range l.Sockets {
		switch {
		case s.Takes(proto, ep):
			return "", fmt.Sprintf("yet %s listens there (%s): the server reset the connection itself", l.Pod, s)
		case s.Proto == proto && s.Local.Port() == ep.Port():
			same = append(same, s.Local.String())
		case s.Proto == proto:
			other = append(other, s.Local.String())
		}
	}
	switch {
	case len(same) > 0:
		return report.ListensElsewhere, fmt.Sprintf("its server listens on port %d only on %s, not on %s", ep.Port(), strings.Join(same, ", "), ep.Addr())
	case len(other) > 0:
		return report.NotListening, "it listens on " + strings.Join(other, ", ")
	}
	return report.NotListening, "it listens on no " + proto.String() + " port"
}

// droppedAfter blames what the endpoint's kernel dropped of what the client
// sent once the connection was answered: TCP's own checks (an old
// sequence, a closed window) refusing segments, with the endpoint's
// socket for the connection read again.
func (x *Explainer) droppedAfter(c *flow.Conn, pod string) (blamed, bool) {
	var last *flow.Drop
	n := 0
	for i := range c.Drops {
		d := &c.Drops[i]
		r, _ := cause.Drop(d.Reason)
		if !d.InNode && c.PacketDir(d.Packet) == flow.Original && (r.Class == cause.TCPState || r.Class == cause.Socket) {
			last, n = d, n+1
		}
	}
	if last == nil || !c.Endpoint.IsValid() {
		return blamed{}, false
	}
	r, _ := cause.Drop(last.Reason)
	b := blamed{code: report.KernelDrop, class: r.Class,
		text: fmt.Sprintf("%s answered, then its kernel dropped %d of the client's packets: %s (%s at %s)", pod, n, r.Cause, last.Reason, last.Location)}
	a := c.Endpoint.Addr()
	b.evidence = x.facts(cause.Sockets, a)
	remote := c.Client
	if c.SNAT.IsValid() {
		remote = c.SNAT
	}
	net := x.net(cause.Sockets, a, "")
	if net == nil {
		return b, true
	}
	if l, ok := net.ListenersOf(a); ok && l.Err == "" {
		if h, held := l.HeldBy(c.Endpoint, remote); held {
			b.text += fmt.Sprintf("; its application has not read the %d bytes it received on this connection, so its receive window closes and what the client sends on is dropped", h.RecvQ)
			b.evidence = append(b.evidence, "sock_diag in "+l.Pod+"'s network namespace: "+h.String())
		} else {
			b.evidence = append(b.evidence, fmt.Sprintf("sock_diag in %s's network namespace: no unread data on %s ↔ %s when svctrace read it", l.Pod, c.Endpoint, remote))
		}
	}
	return b, true
}
