package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
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
	if resolved == 0 && !slices.ContainsFunc(l.Names, func(r probe.Resolution) bool { return len(r.Addrs) > 0 }) &&
		!slices.ContainsFunc(fs, func(f report.Finding) bool { return f.Code == report.DNSNoAnswer }) {
		last := l.Names[len(l.Names)-1]
		add(report.Finding{Severity: report.Problem, Code: report.DNSNotFound, Object: l.service(),
			Summary: fmt.Sprintf("no form of the name resolves: %s answered %s for %s, though the Service exists (%s)",
				servers(last), rcodes(last), last.Name, l.Service.Summary()),
			Next: []string{"the cluster DNS's configuration (its zone, the cluster domain " + l.Cluster.Domain + ") and its logs"}})
	}
	if f, ok := l.searchCost(); ok {
		add(f)
	}
	if ns := slices.IndexFunc(l.Conf.Nameservers, resolvconf.NodeLocal); ns >= 0 {
		add(report.Finding{Severity: report.Info, Code: report.DNSNodeLocal, Object: conf,
			Summary: fmt.Sprintf("the Pod asks %s, a link-local address: NodeLocal DNSCache on the node answers, not kube-dns through its DNAT; the cache's queries to kube-dns are the ones to trace (its rules mark the Pod's NOTRACK)", l.Conf.Nameservers[ns])})
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
// Service's state on the way.
func (l Lookup) unanswered() (report.Finding, bool) {
	var failed []probe.Query
	total := 0
	for _, r := range l.Names {
		for _, q := range r.Queries {
			total++
			if q.Rcode == "" {
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
		}
	}
	f.Next = append(f.Next, fmt.Sprintf("the connections to %s below: where each query stopped", q.Server))
	return f, true
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
