package session

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolvconf"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
)

// clusterDNS is the cluster's DNS as --probe=dns finds it: the kubelet's
// clusterDNS and clusterDomain where its process is readable, else the
// kube-system/kube-dns Service; and that Service's assessment, traced
// beside the Service's own.
type clusterDNS struct {
	resolvconf.Cluster
	from string               // where Cluster was read
	a    *diagnose.Assessment // the DNS Service's; nil: none found
}

// findDNS finds the cluster's DNS and assesses its Service.
func (s Service) findDNS(ctx context.Context) (*clusterDNS, error) {
	d := &clusterDNS{}
	cl, from, err := resolvconf.Kubelet("")
	if err != nil {
		s.logf("the kubelet's DNS settings: %v; using the kube-dns Service", err)
	} else {
		d.Cluster, d.from = cl, from
	}
	ns, name, err := s.dnsService(ctx, d.DNS)
	if err != nil {
		return nil, err
	}
	if name != "" {
		facts := diagnose.ReadNode(s.Node, s.Local, ns+"/"+name)
		if d.a, err = diagnose.Assess(ctx, s.Source, ns, name, nil, facts); err != nil {
			return nil, err
		}
		if len(d.DNS) == 0 {
			d.DNS, d.from = d.a.Service.ClusterIPs, "Service "+ns+"/"+name
		}
	}
	if len(d.DNS) == 0 {
		return nil, fmt.Errorf("no cluster DNS found: no kubelet here says its clusterDNS, and kube-system has no kube-dns Service (kubectl -n kube-system get services)")
	}
	return d, nil
}

// servesClusterDNS reports whether svc is the cluster's DNS Service: one
// of its ClusterIPs is the kubelet's clusterDNS, or it is
// kube-system/kube-dns.
func servesClusterDNS(svc *resolve.Service) bool {
	if cl, _, err := resolvconf.Kubelet(""); err == nil &&
		slices.ContainsFunc(cl.DNS, func(a netip.Addr) bool { return slices.Contains(svc.ClusterIPs, a) }) {
		return true
	}
	return svc.Namespace == "kube-system" && svc.Name == "kube-dns"
}

// dnsService is the Service holding the cluster DNS's address (any of
// addrs), or kube-system/kube-dns when addrs is empty; "" when none is.
func (s Service) dnsService(ctx context.Context, addrs []netip.Addr) (ns, name string, err error) {
	const sys, kubeDNS = "kube-system", "kube-dns"
	holds := func(svc *corev1.Service) bool {
		return len(addrs) == 0 || slices.ContainsFunc(svc.Spec.ClusterIPs, func(ip string) bool {
			a, err := netip.ParseAddr(ip)
			return err == nil && slices.Contains(addrs, a)
		})
	}
	if svc, err := s.Source.Service(ctx, sys, kubeDNS); err == nil && holds(svc) {
		return sys, kubeDNS, nil
	}
	if len(addrs) == 0 {
		return "", "", nil
	}
	names, err := s.Source.ServiceNames(ctx, sys, "")
	if err != nil {
		return "", "", err
	}
	for _, n := range names {
		if svc, err := s.Source.Service(ctx, n.Namespace, n.Name); err == nil && holds(svc) {
			return n.Namespace, n.Name, nil
		}
	}
	return "", "", nil
}

// Describe is the cluster's DNS in one line, for the resolution's report.
func (d *clusterDNS) Describe() string {
	s := fmt.Sprintf("%s", joinAddrs(d.DNS))
	if d.a != nil {
		s += fmt.Sprintf(" (%s/%s)", d.a.Service.Namespace, d.a.Service.Name)
	}
	return s + fmt.Sprintf(", domain %s, from %s", d.Domain, d.from)
}

// isDNS reports whether a connection asked for the DNS Service (or went
// straight to one of its endpoints).
func (d *clusterDNS) isDNS(proto nf.Proto, to netip.AddrPort) bool {
	return d != nil && d.a != nil && slices.Contains(d.a.Service.Targets(d.a.NodeAddrs), nf.Target{Addr: to, Proto: proto})
}

// explainers explains each connection with its Service's explainer: the
// traced Service's, or the DNS Service's for the queries.
type explainers struct {
	main report.Explainer
	dns  *clusterDNS
}

func (x explainers) Explain(c *flow.Conn) report.Explanation {
	if x.dns.isDNS(c.Proto, c.VIP) {
		return x.dns.a.Explainer.Explain(c)
	}
	return x.main.Explain(c)
}

func (x explainers) Name(a netip.AddrPort) string {
	if n := x.main.Name(a); n != "" || x.dns == nil || x.dns.a == nil {
		return n
	}
	return x.dns.a.Explainer.Name(a)
}

// resolver is how --probe=dns resolves: as the client Pod does, with its
// files, or from the node as a Pod of the Service's namespace with
// dnsPolicy ClusterFirst would.
type resolver struct {
	probe.Resolver
	clientNS string
	conf     string // the configuration in one line, and where it was read
}

// podResolver reads the resolver files of the Pod whose process is pid.
func podResolver(pid int, ns nf.NetNS, clientNS string) (resolver, error) {
	root := filepath.Join("/proc", fmt.Sprint(pid), "root", "etc")
	f, err := os.Open(filepath.Join(root, "resolv.conf"))
	if err != nil {
		return resolver{}, fmt.Errorf("reading the Pod's resolv.conf: %w", err)
	}
	defer f.Close()
	conf, err := resolvconf.Parse(f)
	if err != nil {
		return resolver{}, err
	}
	r := resolver{Resolver: probe.Resolver{NS: ns, Conf: conf}, clientNS: clientNS,
		conf: confLine(conf) + " (" + filepath.Join(root, "resolv.conf") + ")"}
	if h, err := os.Open(filepath.Join(root, "hosts")); err == nil {
		r.Hosts, _ = resolvconf.ParseHosts(h)
		h.Close()
	}
	return r, nil
}

// nodeResolver resolves from the node as a Pod of namespace ns with
// dnsPolicy ClusterFirst would: the kubelet's resolv.conf for it.
func nodeResolver(d *clusterDNS, node nf.NetNS, ns string) resolver {
	conf := resolvconf.Conf{Nameservers: d.DNS, Search: d.Search(ns), Ndots: resolvconf.KubeletNdots, Timeout: 5, Attempts: 2}
	return resolver{Resolver: probe.Resolver{NS: node, Conf: conf}, clientNS: ns,
		conf: confLine(conf) + fmt.Sprintf(" (what the kubelet writes for a Pod of namespace %s with dnsPolicy ClusterFirst)", ns)}
}

func confLine(c resolvconf.Conf) string {
	s := "nameserver " + joinAddrs(c.Nameservers)
	if len(c.Search) > 0 {
		s += ", search " + strings.Join(c.Search, " ")
	}
	s += fmt.Sprintf(", ndots %d", c.Ndots)
	for _, o := range c.Options {
		if !strings.HasPrefix(o, "ndots:") {
			s += ", " + o
		}
	}
	return s
}

// resolveService resolves the Service's name in its three forms, says who
// answered each query (conntrack's entry of the query: the DNS endpoint
// its DNAT chose), judges the result, and prints it. It returns the
// addresses the resolution gave.
func (p *prober) resolveService(ctx context.Context, print func(func(output.Printer))) []netip.Addr {
	r, d, svc := p.resolver, p.dns, p.service
	if r.Conf.Domain() == "" && d.Domain == "" {
		d.Domain = "cluster.local"
		d.from += "; domain cluster.local assumed (the Pod's search list names none)"
	} else if d.Domain == "" {
		d.Domain, d.from = r.Conf.Domain(), d.from+"; domain "+r.Conf.Domain()+" from the Pod's search list"
	}
	r.Timeout = p.timeout
	var names []probe.Resolution
	for _, n := range diagnose.ServiceNames(svc, d.Domain) {
		names = append(names, r.Resolve(ctx, n))
		if ctx.Err() != nil {
			return nil
		}
	}
	lookup := diagnose.Lookup{Service: svc, ClientNS: r.clientNS, Conf: r.Conf, Cluster: d.Cluster, Names: names, SentTo: p.sentTo(names)}
	if d.a != nil {
		lookup.DNS = d.a.Service
	}
	if slices.ContainsFunc(r.Conf.Nameservers, resolvconf.NodeLocal) {
		ss, err := node.Sockets(p.node)
		lookup.Node = &diagnose.Sockets{Sockets: ss, Err: err}
	}
	rep := report.Resolution{From: p.where, Conf: r.conf, Cluster: d.Describe(), Names: names,
		SentTo: p.endpointNames(lookup.SentTo), Findings: lookup.Findings()}
	print(func(pr output.Printer) { pr.Resolution(rep) })
	if p.record != nil {
		p.record(rep)
	}
	for _, n := range names {
		if len(n.Addrs) > 0 {
			return n.Addrs
		}
	}
	return nil
}

// sentTo is the DNS endpoint each query was sent on to, from the node's
// conntrack entries of the queries.
func (p *prober) sentTo(names []probe.Resolution) map[netip.AddrPort]netip.AddrPort {
	froms := map[netip.AddrPort]bool{}
	for _, n := range names {
		for _, q := range n.Queries {
			froms[q.From] = true
		}
	}
	if len(froms) == 0 {
		return nil
	}
	entries, err := conntrack.List(p.node, func(e conntrack.Entry) bool { return froms[e.Orig[0]] && e.Translated() })
	if err != nil {
		p.say("where the queries went: %v", err)
	}
	out := map[netip.AddrPort]netip.AddrPort{}
	for _, e := range entries {
		out[e.Orig[0]] = e.Reply[0]
	}
	return out
}

// endpointNames names each endpoint the queries were sent to with its Pod.
func (p *prober) endpointNames(sentTo map[netip.AddrPort]netip.AddrPort) map[netip.AddrPort]string {
	out := map[netip.AddrPort]string{}
	for from, to := range sentTo {
		out[from] = to.String()
		if p.dns.a != nil {
			if n := p.dns.a.Explainer.Name(to); n != "" {
				out[from] = n + " " + to.String()
			}
		}
	}
	return out
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
