// Package kubeproxy holds what svctrace knows about kube-proxy's rule layout:
// chain names, comments, and the iptables-mode ruleset for a set of Services
// (used by the lab to program a node the way kube-proxy would).
package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
)

// Mark is kube-proxy's masquerade mark (KUBE-MARK-MASQ, --masquerade-bit 14).
const Mark = 0x4000

// ServicePort is one port of one Service with its ready endpoints, the unit
// kube-proxy writes rules for.
type ServicePort struct {
	Namespace, Name string
	PortName        string // spec.ports[].name; may be empty
	Protocol        string // "tcp", "udp" or "sctp"
	ClusterIP       netip.Addr
	Port            uint16
	Endpoints       []netip.AddrPort
}

// String is the name kube-proxy uses in chains and comments:
// "namespace/name:port", or "namespace/name" for an unnamed port.
func (sp ServicePort) String() string {
	s := sp.Namespace + "/" + sp.Name
	if sp.PortName != "" {
		s += ":" + sp.PortName
	}
	return s
}

// hash16 is kube-proxy's chain-name hash: the first 16 characters of the
// base32 SHA-256 (pkg/proxy/iptables: portProtoHash).
func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// SvcChain is the KUBE-SVC-… chain of a service port.
func (sp ServicePort) SvcChain() string {
	return "KUBE-SVC-" + hash16(sp.String()+sp.Protocol)
}

// SepChain is the KUBE-SEP-… chain of one endpoint of a service port.
func (sp ServicePort) SepChain(ep netip.AddrPort) string {
	return "KUBE-SEP-" + hash16(sp.String()+sp.Protocol+ep.String())
}

// nftBase is how kube-proxy's nftables mode names a service port in its
// chains: "namespace/name/protocol/portname".
func (sp ServicePort) nftBase() string {
	return sp.Namespace + "/" + sp.Name + "/" + sp.Protocol + "/" + sp.PortName
}

// hashed prefixes name with the first 8 characters of its hash, as
// kube-proxy's nftables mode does to keep chain names unique.
func hashed(name string) string {
	sum := sha256.Sum256([]byte(name))
	return base32.StdEncoding.EncodeToString(sum[:])[:8] + "-" + name
}

// NFTServiceChain is the nftables-mode chain of a service port, e.g.
// "service-2QRHZV4L-default/kubernetes/tcp/https".
func (sp ServicePort) NFTServiceChain() string { return "service-" + hashed(sp.nftBase()) }

// NFTEndpointChain is the nftables-mode chain of one endpoint, e.g.
// "endpoint-ZIPUHSU7-default/kubernetes/tcp/https__10.99.3.1/6443".
func (sp ServicePort) NFTEndpointChain(ep netip.AddrPort) string {
	// An IPv6 address's colons are not allowed in a chain name: kube-proxy
	// writes them as dots.
	ip := strings.ReplaceAll(ep.Addr().String(), ":", ".")
	return "endpoint-" + hashed(fmt.Sprintf("%s__%s/%d", sp.nftBase(), ip, ep.Port()))
}

// NoEndpointsComment is the comment of the REJECT rule for a Service port
// without endpoints.
func (sp ServicePort) NoEndpointsComment() string {
	return sp.String() + " has no endpoints"
}

// Ruleset options.
type Options struct {
	// ClusterCIDR: traffic to a ClusterIP from outside it is masqueraded
	// (kube-proxy --cluster-cidr). Invalid: no such rule.
	ClusterCIDR netip.Prefix
	// ExtraFilter are iptables-restore lines inserted at the top of the
	// filter table's rules (the lab's stand-in for a NetworkPolicy).
	ExtraFilter []string
}

// IPTablesRestore returns an iptables-restore input with the filter and nat
// tables kube-proxy's iptables mode writes for these service ports
// (ClusterIP only). The ports are of one family: for IPv6 ClusterIPs the
// input is ip6tables-restore's, as kube-proxy writes one ruleset per
// family.
func IPTablesRestore(sps []ServicePort, opts Options) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	host, unreachable := "/32", "icmp-port-unreachable"
	if len(sps) > 0 && sps[0].ClusterIP.Is6() {
		host, unreachable = "/128", "icmp6-port-unreachable"
	}

	w("*filter")
	w(":KUBE-FORWARD - [0:0]")
	w(":KUBE-SERVICES - [0:0]")
	for _, l := range opts.ExtraFilter {
		w("%s", l)
	}
	w(`-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD`)
	w(`-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A KUBE-FORWARD -m conntrack --ctstate INVALID -m comment --comment "kubernetes forwarding rules: drop invalid" -j DROP`)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark %#x/%#x -j ACCEPT`, Mark, Mark)
	w(`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`)
	for _, sp := range sps {
		if len(sp.Endpoints) == 0 {
			w(`-A KUBE-SERVICES -d %s%s -p %s -m comment --comment "%s" -m %s --dport %d -j REJECT --reject-with %s`,
				sp.ClusterIP, host, sp.Protocol, sp.NoEndpointsComment(), sp.Protocol, sp.Port, unreachable)
		}
	}
	w("COMMIT")

	w("*nat")
	w(":KUBE-MARK-MASQ - [0:0]")
	w(":KUBE-NODEPORTS - [0:0]")
	w(":KUBE-POSTROUTING - [0:0]")
	w(":KUBE-SERVICES - [0:0]")
	for _, sp := range sps {
		if len(sp.Endpoints) == 0 {
			continue
		}
		w(":%s - [0:0]", sp.SvcChain())
		for _, ep := range sp.Endpoints {
			w(":%s - [0:0]", sp.SepChain(ep))
		}
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A KUBE-MARK-MASQ -j MARK --set-xmark %#x/%#x`, Mark, Mark)
	w(`-A KUBE-POSTROUTING -m mark ! --mark %#x/%#x -j RETURN`, Mark, Mark)
	w(`-A KUBE-POSTROUTING -j MARK --set-xmark %#x/0x0`, Mark)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, sp := range sps {
		if len(sp.Endpoints) == 0 {
			continue
		}
		svc := sp.SvcChain()
		w(`-A KUBE-SERVICES -d %s%s -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j %s`,
			sp.ClusterIP, host, sp.Protocol, sp, sp.Protocol, sp.Port, svc)
		if opts.ClusterCIDR.IsValid() {
			w(`-A %s ! -s %s -d %s%s -p %s -m comment --comment "%s cluster IP" -m %s --dport %d -j KUBE-MARK-MASQ`,
				svc, opts.ClusterCIDR, sp.ClusterIP, host, sp.Protocol, sp, sp.Protocol, sp.Port)
		}
		for i, ep := range sp.Endpoints {
			// kube-proxy picks endpoint i with probability 1/(n-i), so each
			// is chosen with probability 1/n overall.
			stat := ""
			if left := len(sp.Endpoints) - i; left > 1 {
				stat = fmt.Sprintf(" -m statistic --mode random --probability %0.11f", 1.0/float64(left))
			}
			w(`-A %s -m comment --comment "%s -> %s"%s -j %s`, svc, sp, ep, stat, sp.SepChain(ep))
		}
		for _, ep := range sp.Endpoints {
			sep := sp.SepChain(ep)
			w(`-A %s -s %s%s -m comment --comment "%s" -j KUBE-MARK-MASQ`, sep, ep.Addr(), host, sp)
			w(`-A %s -p %s -m comment --comment "%s" -m %s -j DNAT --to-destination %s`, sep, sp.Protocol, sp, sp.Protocol, ep)
		}
	}
	w(`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`)
	w("COMMIT")
	return b.String()
}
