// Package resolvconf is what a Pod's resolver does with a name: its
// /etc/resolv.conf as the resolver reads it, the names it queries for a
// name (search-list expansion under ndots, as glibc and musl do), and what
// in it is at odds with the cluster's DNS (the nameserver, the search list
// kubelet writes, ndots). Plain functions over the file's text.
package resolvconf

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// Conf is a resolv.conf as the resolver uses it.
type Conf struct {
	Nameservers []netip.Addr
	Search      []string // without the trailing dot, as written
	Ndots       int
	// Timeout (seconds) and Attempts: how long the resolver waits for a
	// nameserver's answer, and how many rounds of the nameservers it tries.
	Timeout, Attempts int
	// Options are the options lines' words as written (ndots:5,
	// single-request-reopen, use-vc…).
	Options []string
}

// Option reports whether the options lines hold the word o.
func (c Conf) Option(o string) bool { return slices.Contains(c.Options, o) }

// Parse reads a resolv.conf (github.com/miekg/dns reads it as the C
// resolver does: nameserver, search or domain, options ndots).
func Parse(r io.Reader) (Conf, error) {
	text, err := io.ReadAll(io.LimitReader(r, 64<<10))
	if err != nil {
		return Conf{}, fmt.Errorf("reading resolv.conf: %w", err)
	}
	cc, err := dns.ClientConfigFromReader(bytes.NewReader(text))
	if err != nil {
		return Conf{}, fmt.Errorf("reading resolv.conf: %w", err)
	}
	c := Conf{Search: cc.Search, Ndots: cc.Ndots, Timeout: cc.Timeout, Attempts: cc.Attempts}
	for _, line := range strings.Split(string(text), "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == "options" {
			c.Options = append(c.Options, f[1:]...)
		}
	}
	for _, s := range cc.Servers {
		if a, err := netip.ParseAddr(s); err == nil {
			c.Nameservers = append(c.Nameservers, a.Unmap())
		}
	}
	return c, nil
}

// Queries are the names the resolver asks for, in order, until one is
// answered: a name ending in a dot is asked as it is; a name with at least
// ndots dots is asked as it is first, then with each search domain; any
// other name with each search domain first, then as it is. Each is a
// fully qualified name (a trailing dot).
func (c Conf) Queries(name string) []string {
	if strings.HasSuffix(name, ".") {
		return []string{name}
	}
	var searched []string
	for _, d := range c.Search {
		searched = append(searched, dns.Fqdn(name+"."+strings.TrimSuffix(d, ".")))
	}
	if strings.Count(name, ".") >= c.Ndots {
		return append([]string{dns.Fqdn(name)}, searched...)
	}
	return append(searched, dns.Fqdn(name))
}

// Asked is how many names the resolver asks for name before fqdn, which
// answers, is asked: its place in Queries, from 1; 0 if it never is. Each
// is asked for A and AAAA (in parallel by glibc): the cost of the search
// list before a Service's name resolves.
func (c Conf) Asked(name, fqdn string) int {
	return slices.Index(c.Queries(name), dns.Fqdn(fqdn)) + 1
}

// Cluster is what kubelet writes into a Pod's resolv.conf (dnsPolicy
// ClusterFirst): the cluster DNS Service's addresses and the cluster domain.
type Cluster struct {
	DNS    []netip.Addr // the kube-dns Service's ClusterIPs (kubelet's clusterDNS)
	Domain string       // kubelet's clusterDomain, "cluster.local"
}

// Search is the search list kubelet writes for a Pod of namespace ns:
// "<ns>.svc.<domain>", "svc.<domain>", "<domain>" (the node's own search
// domains may follow).
func (cl Cluster) Search(ns string) []string {
	d := strings.TrimSuffix(cl.Domain, ".")
	return []string{ns + ".svc." + d, "svc." + d, d}
}

// KubeletNdots is the ndots kubelet writes for ClusterFirst Pods.
const KubeletNdots = 5

// Problem is one thing in a Pod's resolv.conf at odds with the cluster.
type Problem struct {
	Code string // nameserver-not-cluster-dns, search-incomplete, ndots-low
	Text string
}

// Check says what in c is at odds with the cluster for a Pod of namespace
// ns: a nameserver that is not the cluster DNS (a dnsPolicy other than
// ClusterFirst, a hard-coded resolver, NodeLocal DNSCache's link-local
// listener aside), a search list without the cluster's domains (short
// Service names will not resolve), an ndots below the dots of the names
// Pods use (name.namespace is then asked as a top-level name first).
func (c Conf) Check(cl Cluster, ns string) []Problem {
	var out []Problem
	if len(cl.DNS) > 0 && len(c.Nameservers) > 0 && !slices.ContainsFunc(c.Nameservers, func(a netip.Addr) bool {
		return slices.Contains(cl.DNS, a) || NodeLocal(a)
	}) {
		out = append(out, Problem{"nameserver-not-cluster-dns", fmt.Sprintf("the nameserver is %s, not the cluster DNS Service (%s): Service names resolve only if that server forwards them to it",
			join(c.Nameservers), join(cl.DNS))})
	}
	var missing []string
	for _, d := range cl.Search(ns) {
		if !slices.ContainsFunc(c.Search, func(s string) bool { return strings.TrimSuffix(s, ".") == d }) {
			missing = append(missing, d)
		}
	}
	if len(missing) > 0 {
		out = append(out, Problem{"search-incomplete", fmt.Sprintf("the search list (%s) lacks %s: a Service's short name (web, web.%s) does not resolve; only its full name does",
			strings.Join(orNone(c.Search), " "), strings.Join(missing, ", "), ns)})
	}
	// Without the cluster's domains in the search list, ndots does not
	// matter to Service names.
	if c.Ndots < 2 && !slices.Contains(missing, cl.Search(ns)[0]) {
		out = append(out, Problem{"ndots-low", fmt.Sprintf("ndots is %d (kubelet writes %d): name.namespace has enough dots to be asked as a top-level name first, and goes to the upstream resolvers before the cluster's domain",
			c.Ndots, KubeletNdots)})
	}
	return out
}

// NodeLocal: NodeLocal DNSCache's link-local listener (169.254.20.10 by
// default), which forwards the cluster's names to the cluster DNS.
func NodeLocal(a netip.Addr) bool {
	return a.Is4() && netip.MustParsePrefix("169.254.0.0/16").Contains(a)
}

func join(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

// Domain is the cluster domain the search list names: X of its "svc.X"
// entry, as the kubelet writes it; "" when it has none.
func (c Conf) Domain() string {
	for _, s := range c.Search {
		if d, ok := strings.CutPrefix(strings.TrimSuffix(s, "."), "svc."); ok {
			return d
		}
	}
	return ""
}
