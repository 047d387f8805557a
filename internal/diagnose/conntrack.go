package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
)

// conntrackFull: a table at its limit drops the first packet of every new
// connection (unless the kernel can evict an entry not yet assured), for
// every Service on the node at once.
func (c *checker) conntrackFull() {
	t := c.Conntrack
	if t == nil || t.Max == 0 || t.Count*10 < t.Max*9 {
		return
	}
	f := report.Finding{Severity: report.Warning, Code: report.ConntrackFull, Object: "conntrack on " + c.nodeName(),
		Summary: fmt.Sprintf("the node's conntrack table is nearly full (%d of %d entries): at the limit, new connections are dropped", t.Count, t.Max)}
	if t.Full() {
		f.Severity = report.Problem
		f.Summary = fmt.Sprintf("the node's conntrack table is full (%d of %d entries): the kernel drops the first packet of every new connection it cannot evict an unassured entry for", t.Count, t.Max)
	}
	f.Evidence = []string{fmt.Sprintf("nf_conntrack_count %d, nf_conntrack_max %d", t.Count, t.Max)}
	if s := counters(t, "drop", "early_drop", "insert_failed"); s != "" {
		f.Evidence = append(f.Evidence, "conntrack statistics of the node's namespace: "+s)
	}
	f.Next = []string{
		"conntrack -C; conntrack -S  (entries, and drop= on each CPU)",
		`conntrack -L | grep -o 'src=[^ ]*' | sort | uniq -c | sort -rn | head  (who holds the entries)`,
		"raise the limit: sysctl -w net.netfilter.nf_conntrack_max=N (kube-proxy sets it at start from conntrack.maxPerCore × CPUs, --conntrack-max-per-core)",
	}
	c.add(f)
}

// counters: "drop 12, early_drop 0" for the named statistics.
func counters(t *conntrack.Table, names ...string) string {
	var parts []string
	for _, n := range names {
		if v, ok := t.Stats[n]; ok {
			parts = append(parts, fmt.Sprintf("%s %d", n, v))
		}
	}
	return strings.Join(parts, ", ")
}

// staleConntrack: a UDP flow whose entry sends it to an address that is no
// longer a serving endpoint keeps going there for as long as its client
// keeps sending, each datagram renewing the entry. kube-proxy deletes such
// entries when an endpoint goes; these survived.
func (c *checker) staleConntrack() {
	if c.Conntrack == nil {
		return
	}
	for _, ad := range c.svc.Addresses(c.NodeAddrs) {
		if ad.Port.Protocol != nf.UDP {
			continue
		}
		if c.Conntrack.Unlisted != "" {
			c.add(report.Finding{Severity: report.Info, Code: report.ConntrackUnlisted, Object: "conntrack on " + c.nodeName(),
				Summary:  "the node's conntrack entries were not read, so stale UDP entries to the Service were not looked for",
				Evidence: []string{c.Conntrack.Unlisted},
				Next:     []string{fmt.Sprintf("conntrack -L -p udp -d %s  (the entries to the Service; a reply source that is not an endpoint is stale)", ad.Addr.Addr())}})
			return
		}
		byTarget := map[netip.AddrPort][]conntrack.Entry{}
		var targets []netip.AddrPort
		for _, e := range c.Conntrack.Entries {
			if e.Orig[1] != ad.Addr || serving(ad.Port, e.Reply[0]) {
				continue
			}
			if byTarget[e.Reply[0]] == nil {
				targets = append(targets, e.Reply[0])
			}
			byTarget[e.Reply[0]] = append(byTarget[e.Reply[0]], e)
		}
		for _, to := range targets {
			es := byTarget[to]
			f := report.Finding{Severity: report.Warning, Code: report.ConntrackStale, Object: c.object, Port: ad.Port.String(),
				Summary: fmt.Sprintf("%d conntrack entr%s still send%s UDP to %s (%s) on to %s, which is not a serving endpoint of %s: those clients get no answer while they keep sending",
					len(es), plural(len(es), "y", "ies"), plural(len(es), "s", ""), ad.Addr, ad.Kind, to, ad.Port.String()),
				Next: []string{fmt.Sprintf("conntrack -D -p udp -d %s --dport %d -r %s  (deletes them; kube-proxy does so when an endpoint goes: if they survive, look in its log for conntrack errors)",
					ad.Addr.Addr(), ad.Addr.Port(), to.Addr())}}
			for i, e := range es {
				if i == 5 {
					f.Evidence = append(f.Evidence, fmt.Sprintf("… and %d more", len(es)-i))
					break
				}
				f.Evidence = append(f.Evidence, fmt.Sprintf("udp %s → %s, reply from %s, expires in %ds", e.Orig[0], e.Orig[1], e.Reply[0], e.Timeout))
			}
			c.add(f)
		}
	}
}

// serving reports whether a is an endpoint of p that takes new flows.
func serving(p *resolve.Port, a netip.AddrPort) bool {
	e, ok := p.Endpoint(a)
	return ok && (e.Ready || e.Serving)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// staleEntry blames a UDP flow that an entry from before the trace sent to
// an address that is not a serving endpoint now.
func staleEntry(c *flow.Conn, port *resolve.Port) string {
	if c.Proto != nf.UDP || !c.Prior || port == nil || !c.Endpoint.IsValid() || serving(port, c.Endpoint) {
		return ""
	}
	e := conntrack.Entry{Proto: "udp", Orig: [2]netip.AddrPort{c.Client, c.VIP}}
	return fmt.Sprintf("a conntrack entry made before this trace sends the flow to %s, which is not a serving endpoint of %s now (an endpoint that left, whose entry survived); every datagram renews it, so the client never reaches the Service's endpoints: delete it: %s",
		c.Endpoint, port.String(), e.DeleteCommand())
}

// conntrackDrop blames a packet conntrack itself dropped, before any rule
// saw it: when the table is full, the packet that would make a new entry.
func (x *Explainer) conntrackDrop(c *flow.Conn, d *flow.Drop) string {
	what := fmt.Sprintf("conntrack dropped the %s before any rule saw it", c.PacketName(d.Packet))
	t := x.in.Conntrack
	switch {
	case t.Full():
		s := fmt.Sprintf("%s: the node's conntrack table is full (%d of %d entries", what, t.Count, t.Max)
		if n, ok := t.Stats["drop"]; ok {
			s += fmt.Sprintf("; %d packets dropped so far", n)
		}
		return s + "): no new connection gets through until entries expire or the limit is raised (net.netfilter.nf_conntrack_max)"
	case t != nil:
		return fmt.Sprintf("%s; when svctrace read it the table held %d of %d entries (%s): look at conntrack -S", what, t.Count, t.Max, counters(t, "drop", "early_drop", "invalid"))
	}
	return what + ": is its table full? (conntrack -C; sysctl net.netfilter.nf_conntrack_max)"
}

// invalid explains a connection that broke on a packet conntrack found
// INVALID (flow.Conn.Invalid): the rule that dropped it, if kube-proxy's,
// and the blame; "" if that is not what happened. pod names the endpoint.
func (x *Explainer) invalid(c *flow.Conn, pod string) (rule, blame string) {
	n := c.Invalid
	switch {
	case n == 0:
		return "", ""
	case c.Verdict == flow.Dropped && c.Drop != nil && c.Drop.Invalid:
		n = c.Drop.Packet
	case c.Verdict != flow.NotTranslated || !c.Endpoint.IsValid():
		return "", ""
	}
	if via, ok := oneWay(c); ok {
		rule, then := x.afterInvalid(c)
		return rule, fmt.Sprintf("conntrack found %s INVALID: this node passed the SYN on (it left via %s) and saw no answer to it, yet the client acknowledged one: "+
			"the answer came back another way than through this node (asymmetric routing), and conntrack, which saw the connection one way only, takes no ACK before it has seen the SYN,ACK%s: "+
			"the answer must come back the way the SYN went: look at the route from %s back to %s, or have this node SNAT what it passes on there",
			describe.Whose(c, c.Invalid), via, then, pod, c.Client.Addr())
	}
	var stats, sysctls map[string]uint64
	if t := x.in.Conntrack; t != nil {
		stats, sysctls = t.Stats, t.Sysctls
	}
	loose, known := sysctls["nf_conntrack_tcp_loose"]
	strict := known && loose == 0
	blame = "conntrack found " + describe.Whose(c, n) + " INVALID"
	if strict {
		blame += ": it had no entry, as its connection's entry was gone (deleted, e.g. by conntrack -D or -F, or expired) and net.netfilter.nf_conntrack_tcp_loose=0 here keeps conntrack from taking up a connection mid-stream"
	} else {
		blame += ": outside the connection's TCP window, or its entry was gone (deleted or expired)"
		if v, ok := stats["invalid"]; ok {
			blame += fmt.Sprintf(" (conntrack -S: invalid=%d so far)", v)
		}
	}
	rule, then := x.afterInvalid(c)
	blame += then
	if strict {
		return rule, blame + ": find what deletes the entries of open connections, or set net.netfilter.nf_conntrack_tcp_loose=1"
	}
	return rule, blame + ": net.netfilter.nf_conntrack_tcp_be_liberal=1 keeps out-of-window packets from being INVALID"
}

// afterInvalid is what became of the INVALID packet: kube-proxy's rule
// that dropped it (and the clause saying so), or that it went on without
// NAT.
func (x *Explainer) afterInvalid(c *flow.Conn) (rule, then string) {
	if r := x.in.Rules; c.Verdict == flow.Dropped && r != nil && r.InvalidDrop != "" && c.Drop.Placed && c.Drop.Gap.Hook == nf.Forward {
		return fmt.Sprintf("DROP: conntrack state INVALID (kube-proxy, %s)", r.InvalidDrop), "; kube-proxy drops INVALID packets (" + r.InvalidDrop + ")"
	}
	if c.Verdict == flow.NotTranslated {
		return "", "; so no NAT applied, and the node routed it on still addressed to " + c.VIP.String()
	}
	return "", ""
}

// oneWay reports whether conntrack here saw the connection one way only,
// and the interface its SYN left by: a TCP connection whose SYN the node
// passed on and whose answer it never saw, while the client's first packet
// conntrack found INVALID acknowledges one (the SYN,ACK reached the client
// by another way).
func oneWay(c *flow.Conn) (via string, ok bool) {
	if c.Proto != nf.TCP || c.Invalid == 0 || c.Packets[flow.Reply] > 0 || c.PacketDir(c.Invalid) != flow.Original {
		return "", false
	}
	first := strings.Split(c.PacketName(1), ",")
	acks := strings.Split(c.PacketName(c.Invalid), ",")
	if !slices.Equal(first, []string{"SYN"}) || !slices.Contains(acks, "ACK") || slices.Contains(acks, "SYN") || slices.Contains(acks, "RST") {
		return "", false
	}
	via = c.LeftVia(flow.Original)
	return via, via != ""
}

// insertClash explains a packet conntrack dropped at confirmation: another
// packet of the same new flow had confirmed its entry first.
func (x *Explainer) insertClash(c *flow.Conn, d *flow.Drop) string {
	s := fmt.Sprintf("conntrack dropped %s when confirming its new entry: another packet of the same flow (same addresses and ports) had made the entry first, an insert clash", describe.Whose(c, d.Packet))
	if t := x.in.Conntrack; t != nil {
		if n := counters(t, "insert_failed", "clashres"); n != "" {
			s += " (conntrack -S: " + n + ")"
		}
	}
	if qs := dnsUnanswered(c); len(qs) > 0 {
		s += fmt.Sprintf("; the connection's DNS questions without an answer: %s", strings.Join(qs, ", "))
	}
	s += "; the usual cause is a client sending two packets of a new UDP flow at once, like a resolver's parallel A and AAAA queries on one socket"
	if c.Proto == nf.UDP {
		s += ": kernels from 5.7 resolve most UDP clashes; else have the client send them one after the other (resolv.conf: options single-request-reopen) or use NodeLocal DNSCache"
	}
	return s
}
