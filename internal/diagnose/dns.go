package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolvconf"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Lookup is a Service's name resolved from one place (--probe=dns): what
// the resolution's findings are judged from.
type Lookup struct {
	Service *resolve.Service // the Service whose name was resolved
	// ClientNS is the namespace of the Pod that resolved it: what its
	// search list starts with.
	ClientNS string
	Conf     resolvconf.Conf
	Cluster  resolvconf.Cluster
	// DNS is the cluster's DNS Service (kube-system/kube-dns), nil when
	// none was found.
	DNS *resolve.Service
	// Names are the forms resolved, in order: name, name.namespace, FQDN.
	Names []probe.Resolution
	// SentTo is the DNS endpoint each query was sent on to, by the
	// query's own address: what the node's conntrack entry of it says the
	// DNS Service's DNAT chose. A query without one was not translated.
	SentTo map[netip.AddrPort]netip.AddrPort
	// Node is what listens on the node where the Pod asks one of the
	// node's own addresses (NodeLocal DNSCache's link-local listener):
	// the node's sockets; nil when not read.
	Node *Sockets
}

// Sockets are the sockets read in one network namespace, or why they
// could not be.
type Sockets struct {
	Sockets []node.Socket
	Err     error
}

// ServiceNames are the forms of s's name a client may use, in the order
// Kubernetes' "Debug Services" tries them: web, web.shop, and
// web.shop.svc.cluster.local. (ending with a dot: no search).
func ServiceNames(s *resolve.Service, domain string) []string {
	return []string{s.Name, s.Name + "." + s.Namespace, s.Name + "." + s.Namespace + ".svc." + domain + "."}
}

// Findings are what the resolution shows, most important first: each
// from what the resolver's files, the queries' answers and the objects
// say, never from a guess at what the application asks.
func (l Lookup) Findings() []report.Finding {
	var fs []report.Finding
	add := func(f report.Finding) { fs = append(fs, f) }
	conf := "the Pod's resolv.conf"
	for _, p := range l.Conf.Check(l.Cluster, l.ClientNS) {
		f := report.Finding{Object: conf, Summary: p.Text}
		switch p.Code {
		case "nameserver-not-cluster-dns":
			f.Severity, f.Code = report.Problem, report.DNSNameserverNotCluster
			f.Next = []string{"the Pod's dnsPolicy (ClusterFirst gives the cluster DNS) and dnsConfig.nameservers"}
		case "search-incomplete":
			f.Severity, f.Code = report.Warning, report.DNSSearchIncomplete
			f.Next = []string{"the Pod's dnsPolicy and dnsConfig.searches"}
		case "ndots-low":
			f.Severity, f.Code = report.Warning, report.DNSNdotsLow
			f.Next = []string{"the Pod's dnsConfig.options ndots"}
		}
		add(f)
	}
	if f, ok := l.unanswered(); ok {
		add(f)
	}
	if f, ok := l.tcpFallback(); ok {
		add(f)
	}
	addrs := l.Service.ClusterIPs
	what := "its ClusterIP"
	if l.Service.Headless {
		addrs, what = l.endpointAddrs(), "its endpoints"
	}
	resolved := 0
	for i, r := range l.Names {
		switch {
		case len(r.Addrs) == 0:
			if i == 0 && l.ClientNS != l.Service.Namespace && allNX(r) && len(l.Names) > 1 && len(l.Names[1].Addrs) > 0 {
				add(report.Finding{Severity: report.Warning, Code: report.DNSOtherNamespace, Object: l.service(),
					Summary: fmt.Sprintf("from namespace %s, %q does not resolve: the search list makes %s, and every one is NXDOMAIN; the Service is in namespace %s: ask for %s or %s",
						l.ClientNS, r.Name, asked(r), l.Service.Namespace, l.Names[1].Name, l.Names[len(l.Names)-1].Name)})
			}
		case !slices.ContainsFunc(r.Addrs, func(a netip.Addr) bool { return slices.Contains(addrs, a) }):
			add(l.wrongAddress(r, addrs, what))
		default:
			resolved++
		}
	}
	// Not found, when every query was answered and none with an address.
	unanswered := slices.ContainsFunc(fs, func(f report.Finding) bool {
		return f.Code == report.DNSNoAnswer || f.Code == report.DNSTruncatedTCPFails
	})
	if resolved == 0 && !unanswered && !slices.ContainsFunc(l.Names, func(r probe.Resolution) bool { return len(r.Addrs) > 0 }) {
		last := l.Names[len(l.Names)-1]
		add(report.Finding{Severity: report.Problem, Code: report.DNSNotFound, Object: l.service(),
			Summary: fmt.Sprintf("no form of the name resolves: %s answered %s for %s, though the Service exists (%s)",
				servers(last), rcodes(last), last.Name, l.Service.Summary()),
			Next: []string{"the cluster DNS's configuration (its zone, the cluster domain " + l.Cluster.Domain + ") and its logs"}})
	}
	if f, ok := l.searchCost(); ok {
		add(f)
	}
	if f, ok := l.nodeLocal(); ok {
		add(f)
	}
	if resolved == len(l.Names) && len(fs) == 0 {
		add(report.Finding{Severity: report.OK, Code: report.DNSResolved, Object: l.service(),
			Summary: fmt.Sprintf("every form of the name resolves to %s (%s)", what, join(addrs))})
	}
	slices.SortStableFunc(fs, func(a, b report.Finding) int { return severityRank(a.Severity) - severityRank(b.Severity) })
	return fs
}

func (l Lookup) service() string { return "Service " + l.Service.Namespace + "/" + l.Service.Name }

// unanswered is the finding for queries that got no answer, with the DNS
// Service's state on the way; a TCP retry after a truncated answer is
// tcpFallback's.
func (l Lookup) unanswered() (report.Finding, bool) {
	var failed []probe.Query
	total := 0
	for _, r := range l.Names {
		for _, q := range r.Queries {
			total++
			if q.Rcode == "" && !q.TCP {
				failed = append(failed, q)
			}
		}
	}
	if len(failed) == 0 {
		return report.Finding{}, false
	}
	q := failed[0]
	f := report.Finding{Severity: report.Problem, Code: report.DNSNoAnswer, Object: "nameserver " + q.Server.Addr().String(),
		Summary: fmt.Sprintf("%d of %d queries got no answer: %s %s to %s: %s", len(failed), total, q.Name, q.Type, q.Server, q.Failure)}
	if resolvconf.NodeLocal(q.Server.Addr()) {
		return l.nodeLocalSilent(f, q), true
	}
	if l.DNS == nil || !slices.Contains(l.DNS.ClusterIPs, q.Server.Addr()) {
		f.Next = []string{"the nameserver's address and whether anything answers DNS there"}
		return f, true
	}
	f.Object = "Service " + l.DNS.Namespace + "/" + l.DNS.Name
	for i := range l.DNS.Ports {
		p := &l.DNS.Ports[i]
		if p.Port != q.Server.Port() || (p.Protocol == nf.TCP) != q.TCP {
			continue
		}
		ready := len(p.Ready())
		f.Evidence = append(f.Evidence, fmt.Sprintf("%s (%s %d): %d endpoint(s), %d ready", p, p.Protocol, p.Port, len(p.Endpoints), ready))
		if ready == 0 {
			f.Summary += fmt.Sprintf("; %s has no ready endpoint on %s %d: kube-proxy's rules reject or drop what is sent to it", f.Object, p.Protocol, p.Port)
			f.Next = append(f.Next, fmt.Sprintf("kubectl -n %s get pods -l %s", l.DNS.Namespace, selectorString(l.DNS.Selector)))
			continue
		}
		// The queries that went on to an endpoint: that endpoint is
		// what did not answer.
		var silent []resolve.Endpoint
		for _, q := range failed {
			to, ok := l.SentTo[q.From]
			if !ok {
				continue
			}
			if e, ok := p.Endpoint(to); ok && !slices.Contains(silent, e) {
				silent = append(silent, e)
			}
		}
		for i, e := range silent {
			object, who := "endpoint "+e.Addr.String(), "endpoint "+e.Addr.String()
			if e.Pod.Name != "" {
				object = "Pod " + e.Pod.String()
				who = fmt.Sprintf("%s (%s)", object, e.Addr)
				f.Next = append(f.Next, fmt.Sprintf("kubectl -n %s logs %s", e.Pod.Namespace, e.Pod.Name))
			}
			f.Evidence = append(f.Evidence, fmt.Sprintf("the node's conntrack: the DNAT sent queries to %s, %s, and no reply came back", who, e.State()))
			if i == 0 {
				f.Object = object
				f.Summary += fmt.Sprintf("; %s's DNAT sent them to %s, which is %s yet did not answer", l.DNS.Name, who, e.State())
			}
		}
	}
	f.Next = append(f.Next, fmt.Sprintf("the connections to %s below: where each query stopped", q.Server))
	return f, true
}

// nodeLocalSilent says what is known of a NodeLocal DNSCache listener
// that did not answer: whether anything on the node takes its queries.
func (l Lookup) nodeLocalSilent(f report.Finding, q probe.Query) report.Finding {
	a := q.Server
	f.Object = "NodeLocal DNSCache " + a.Addr().String()
	proto := nf.UDP
	if q.TCP {
		proto = nf.TCP
	}
	switch {
	case l.Node == nil:
		f.Next = append(f.Next, fmt.Sprintf("whether anything on the node listens on %s %s (ss -lnup)", proto, a))
	case l.Node.Err != nil:
		f.Evidence = append(f.Evidence, fmt.Sprintf("the node's sockets: %v", l.Node.Err))
	default:
		i := slices.IndexFunc(l.Node.Sockets, func(s node.Socket) bool { return s.Takes(proto, a) })
		if i < 0 {
			f.Summary += fmt.Sprintf("; nothing on the node listens on %s %s: the cache is not running here", proto, a)
			f.Evidence = append(f.Evidence, fmt.Sprintf("the node's sockets (sock_diag): none takes %s %s", proto, a))
		} else {
			f.Summary += fmt.Sprintf("; the node's %s takes them: the cache runs, and did not answer", l.Node.Sockets[i])
			f.Evidence = append(f.Evidence, fmt.Sprintf("the node's sockets (sock_diag): %s", l.Node.Sockets[i]))
		}
	}
	f.Next = append(f.Next, "kubectl -n kube-system get pods -l k8s-app=node-local-dns -o wide: the cache's Pod on this node, and its logs")
	return f
}

// nodeLocal is the finding for a Pod that asks NodeLocal DNSCache: its
// link-local listener on the node answers, not the DNS Service.
func (l Lookup) nodeLocal() (report.Finding, bool) {
	ns := slices.IndexFunc(l.Conf.Nameservers, resolvconf.NodeLocal)
	if ns < 0 {
		return report.Finding{}, false
	}
	a := l.Conf.Nameservers[ns]
	answered, total := 0, 0
	for _, r := range l.Names {
		for _, q := range r.Queries {
			if q.Server.Addr() == a {
				total++
				if q.Rcode != "" {
					answered++
				}
			}
		}
	}
	return report.Finding{Severity: report.Info, Code: report.DNSNodeLocal, Object: "the Pod's resolv.conf",
		Summary: fmt.Sprintf("the Pod asks %s, a link-local address: NodeLocal DNSCache on the node, not the DNS Service through its DNAT (it answered %d of %d queries); NodeLocal DNSCache sets up the node to leave these queries untracked (NOTRACK in the raw table) and asks the DNS Service itself on a cache miss: those queries are the ones traced", a, answered, total)}, true
}

// tcpFallback is the finding for an answer too big for UDP whose TCP
// retry failed.
func (l Lookup) tcpFallback() (report.Finding, bool) {
	for _, r := range l.Names {
		for _, q := range r.Queries {
			if !q.TCP || q.Rcode != "" {
				continue
			}
			f := report.Finding{Severity: report.Problem, Code: report.DNSTruncatedTCPFails, Object: "nameserver " + q.Server.Addr().String(),
				Summary: fmt.Sprintf("the answer for %s %s was too big for UDP (truncated) and the resolver's TCP retry to %s failed: %s", q.Name, q.Type, q.Server, q.Failure)}
			if l.DNS != nil && slices.Contains(l.DNS.ClusterIPs, q.Server.Addr()) {
				f.Object = "Service " + l.DNS.Namespace + "/" + l.DNS.Name
				if !slices.ContainsFunc(l.DNS.Ports, func(p resolve.Port) bool { return p.Protocol == nf.TCP && p.Port == q.Server.Port() }) {
					f.Evidence = append(f.Evidence, fmt.Sprintf("%s has no TCP port %d", f.Object, q.Server.Port()))
				}
			}
			return f, true
		}
	}
	return report.Finding{}, false
}

// wrongAddress is the finding for a name that resolved to addresses that
// are not the Service's, with where the answer came from.
func (l Lookup) wrongAddress(r probe.Resolution, want []netip.Addr, what string) report.Finding {
	f := report.Finding{Severity: report.Problem, Code: report.DNSWrongAddress, Object: l.service(),
		Summary: fmt.Sprintf("%s resolves to %s, not to %s (%s)", r.Name, join(r.Addrs), what, join(want))}
	switch {
	case len(r.Hosts) > 0:
		f.Object = "the Pod's /etc/hosts"
		f.Summary += ": the Pod's /etc/hosts answers it, and the resolver asks no nameserver"
		for _, h := range r.Hosts {
			f.Evidence = append(f.Evidence, fmt.Sprintf("/etc/hosts line %d: %s %s", h.Line, h.Addr, strings.Join(h.Names, " ")))
		}
		f.Next = []string{"the Pod's spec.hostAliases, or the image's /etc/hosts"}
	default:
		f.Summary += fmt.Sprintf(": answered by %s for %s", servers(r), r.Answered)
		if l.DNS == nil || !slices.ContainsFunc(r.Queries, func(q probe.Query) bool { return slices.Contains(l.DNS.ClusterIPs, q.Server.Addr()) }) {
			f.Object = "the Pod's resolv.conf"
			f.Next = []string{"the nameserver the Pod asks: it is not the cluster DNS"}
		}
	}
	return f
}

// searchCost is the finding for names the search list made the resolver
// ask before the one that answered.
func (l Lookup) searchCost() (report.Finding, bool) {
	var lines []string
	for _, r := range l.Names {
		if r.Answered == "" || len(r.Queries) == 0 || r.Queries[0].Name == r.Answered {
			continue
		}
		before := slices.IndexFunc(r.Queries, func(q probe.Query) bool { return q.Name == r.Answered })
		lines = append(lines, fmt.Sprintf("%s: %d queries before the answer (%s), answered as %s", r.Name, before, asked(probe.Resolution{Queries: r.Queries[:before]}), r.Answered))
	}
	if len(lines) == 0 {
		return report.Finding{}, false
	}
	return report.Finding{Severity: report.Info, Code: report.DNSSearchCost, Object: "the Pod's resolv.conf",
		Summary:  fmt.Sprintf("with ndots %d, the search list makes the resolver ask other names first: each lookup costs these queries, and their wait when one is lost", l.Conf.Ndots),
		Evidence: lines,
		Next:     []string{"a name that ends with a dot (web.shop.svc." + l.Cluster.Domain + ".) is asked as it is"}}, true
}

func (l Lookup) endpointAddrs() []netip.Addr {
	var out []netip.Addr
	for _, p := range l.Service.Ports {
		for _, e := range p.Endpoints {
			if !slices.Contains(out, e.Addr.Addr()) {
				out = append(out, e.Addr.Addr())
			}
		}
	}
	return out
}

// allNX: every answer of r was NXDOMAIN.
func allNX(r probe.Resolution) bool {
	return len(r.Queries) > 0 && !slices.ContainsFunc(r.Queries, func(q probe.Query) bool { return q.Rcode != "NXDOMAIN" })
}

// asked lists the names r asked, once each: "web.front.svc.cluster.local., web.svc.cluster.local.".
func asked(r probe.Resolution) string {
	var names []string
	for _, q := range r.Queries {
		if !slices.Contains(names, q.Name) {
			names = append(names, q.Name)
		}
	}
	return strings.Join(names, ", ")
}

func servers(r probe.Resolution) string {
	var s []string
	for _, q := range r.Queries {
		if a := q.Server.String(); !slices.Contains(s, a) {
			s = append(s, a)
		}
	}
	return strings.Join(s, ", ")
}

func rcodes(r probe.Resolution) string {
	var s []string
	for _, q := range r.Queries {
		if c := q.Rcode; c != "" && !slices.Contains(s, c) {
			s = append(s, c)
		}
	}
	return strings.Join(s, ", ")
}

func join(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func severityRank(s report.Severity) int {
	return slices.Index([]report.Severity{report.Problem, report.Warning, report.Info, report.OK}, s)
}

// dnsNotes say what the DNS answers a connection carried mean (Conn.DNS,
// read in the kernel): an answer that is not an address is the
// connection's news even when the connection itself is answered.
func dnsNotes(c *flow.Conn) []string {
	var notes []string
	said := map[string][]string{} // rcode or "truncated" → the questions
	var order []string
	for _, d := range c.DNS {
		if !d.Response {
			continue
		}
		var kinds []string
		if d.Rcode != "NOERROR" {
			kinds = append(kinds, d.Rcode)
		}
		if d.Truncated {
			kinds = append(kinds, "truncated")
		}
		for _, k := range kinds {
			if _, ok := said[k]; !ok {
				order = append(order, k)
			}
			if q := d.Type + " " + d.Name; !slices.Contains(said[k], q) {
				said[k] = append(said[k], q)
			}
		}
	}
	for _, k := range order {
		qs := strings.Join(said[k], ", ")
		switch k {
		case "NXDOMAIN":
			notes = append(notes, fmt.Sprintf("the DNS answered NXDOMAIN for %s: no such name there; a short name asked from another namespace than its Service's, or a Service that does not exist (svctrace SERVICE --probe=dns --from pod/NAME resolves a Service's name as that Pod does)", qs))
		case "SERVFAIL":
			notes = append(notes, fmt.Sprintf("the DNS answered SERVFAIL for %s: the server could not answer (for the cluster domain, its view of the API; else its upstream): its logs say why", qs))
		case "truncated":
			notes = append(notes, fmt.Sprintf("the answer for %s was truncated (too big for UDP): the client asks again over TCP, to the DNS Service's TCP port 53", qs))
		default:
			notes = append(notes, fmt.Sprintf("the DNS answered %s for %s", k, qs))
		}
	}
	return notes
}

// dnsUnanswered are the DNS questions of c that got no answer, in a line
// each: "AAAA web.shop.svc.cluster.local.".
func dnsUnanswered(c *flow.Conn) []string {
	var out []string
	for _, q := range c.DNS {
		if _, answered := q.AnswerIn(c.DNS); !q.Response && !answered {
			out = append(out, q.String())
		}
	}
	return out
}
