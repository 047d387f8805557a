package netpol

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// selectorMisses says which of sel's requirements set does not meet, who
// naming the labels' owner ("namespace y", "Pod y/b"): none if sel selects
// it. A nil selector selects nothing; an empty one everything.
func selectorMisses(sel *metav1.LabelSelector, set map[string]string, who string) []string {
	if sel == nil {
		return []string{who + ": the selector is missing and selects nothing"}
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		// The API server validates selectors: this one did not come from it.
		return []string{fmt.Sprintf("%s: the selector is invalid (%v)", who, err)}
	}
	reqs, _ := s.Requirements()
	var why []string
	for _, r := range reqs {
		if r.Matches(labels.Set(set)) {
			continue
		}
		why = append(why, requirementMiss(r, set, who))
	}
	return why
}

// requirementMiss says how set fails r: the value it has beside the one
// wanted, which is how a label one value off shows.
func requirementMiss(r labels.Requirement, set map[string]string, who string) string {
	key := r.Key()
	have, ok := set[key]
	vals := r.ValuesUnsorted()
	switch r.Operator() {
	case selection.Equals, selection.DoubleEquals, selection.In:
		want := fmt.Sprintf("%s=%s", key, strings.Join(vals, " or "))
		if !ok {
			return fmt.Sprintf("%s has no label %s; the selector wants %s", who, key, want)
		}
		return fmt.Sprintf("%s has label %s=%s; the selector wants %s", who, key, have, want)
	case selection.Exists:
		return fmt.Sprintf("%s has no label %s; the selector wants one", who, key)
	case selection.DoesNotExist:
		return fmt.Sprintf("%s has label %s=%s; the selector wants none", who, key, have)
	}
	return fmt.Sprintf("%s has label %s=%s; the selector wants %s", who, key, have, r.String())
}

// peerMisses says what peer lacks to be a NetworkPolicy peer pe of a policy
// in namespace ns: none if it is one.
func peerMisses(ns string, pe networkingv1.NetworkPolicyPeer, peer Endpoint) []string {
	if pe.IPBlock != nil {
		return ipBlockMisses(pe.IPBlock, peer.IP)
	}
	pod := peer.pod()
	if pod == nil {
		return []string{fmt.Sprintf("%s is not a Pod: a peer by podSelector or namespaceSelector admits Pods only", peer.Name())}
	}
	var why []string
	if pe.NamespaceSelector != nil {
		why = append(why, selectorMisses(pe.NamespaceSelector, peer.Namespace, "namespace "+pod.Namespace)...)
	} else if pod.Namespace != ns {
		why = append(why, fmt.Sprintf("%s is in namespace %s; a podSelector without namespaceSelector admits Pods of %s only", peer.Name(), pod.Namespace, ns))
	}
	if pe.PodSelector != nil {
		why = append(why, selectorMisses(pe.PodSelector, pod.Labels, peer.Name())...)
	}
	return why
}

func ipBlockMisses(b *networkingv1.IPBlock, ip netip.Addr) []string {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return []string{fmt.Sprintf("ipBlock %s is not a CIDR", b.CIDR)}
	}
	if !ip.IsValid() || !cidr.Contains(ip.Unmap()) {
		return []string{fmt.Sprintf("%s is outside ipBlock %s", ip, b.CIDR)}
	}
	for _, e := range b.Except {
		if ex, err := netip.ParsePrefix(e); err == nil && ex.Contains(ip.Unmap()) {
			return []string{fmt.Sprintf("%s is in ipBlock %s but in its except %s", ip, b.CIDR, e)}
		}
	}
	return nil
}

// portMisses says how c's destination port fails a NetworkPolicy port: none
// if it matches. A named port is looked up among the destination Pod's
// container ports.
func portMisses(p networkingv1.NetworkPolicyPort, c Connection) []string {
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	have := fmt.Sprintf("%d/%s", c.Port, c.Protocol)
	if proto != c.Protocol {
		return []string{fmt.Sprintf("port %s: the rule's port is %s", have, describePort(p, proto))}
	}
	if p.Port == nil {
		return nil
	}
	if p.Port.Type == 0 { // a number
		lo, hi := p.Port.IntVal, p.Port.IntVal
		if p.EndPort != nil {
			hi = *p.EndPort
		}
		if int32(c.Port) >= lo && int32(c.Port) <= hi {
			return nil
		}
		return []string{fmt.Sprintf("port %s: the rule's port is %s", have, describePort(p, proto))}
	}
	n, why := namedPort(c.To, p.Port.StrVal, proto)
	if why != "" {
		return []string{why}
	}
	if n != c.Port {
		return []string{fmt.Sprintf("port %s: the rule's port %q is %d/%s on %s", have, p.Port.StrVal, n, proto, c.To.Name())}
	}
	return nil
}

func describePort(p networkingv1.NetworkPolicyPort, proto corev1.Protocol) string {
	switch {
	case p.Port == nil:
		return "any " + string(proto) + " port"
	case p.Port.Type != 0:
		return fmt.Sprintf("%q/%s", p.Port.StrVal, proto)
	case p.EndPort != nil:
		return fmt.Sprintf("%d-%d/%s", p.Port.IntVal, *p.EndPort, proto)
	}
	return fmt.Sprintf("%d/%s", p.Port.IntVal, proto)
}

// namedPort resolves a port name on the destination Pod: its container
// port of that name and protocol. why says why it does not resolve.
func namedPort(to Endpoint, name string, proto corev1.Protocol) (uint16, string) {
	pod := to.pod()
	if pod == nil {
		return 0, fmt.Sprintf("the rule's port %q is a name, and %s is not a Pod that could declare it", name, to.Name())
	}
	var declared []string
	for _, ctr := range pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			cproto := cp.Protocol
			if cproto == "" {
				cproto = corev1.ProtocolTCP
			}
			if cp.Name == name && cproto == proto {
				return uint16(cp.ContainerPort), ""
			}
			if cp.Name != "" {
				declared = append(declared, fmt.Sprintf("%s %d/%s", cp.Name, cp.ContainerPort, cproto))
			}
		}
	}
	slices.Sort(declared)
	has := "no named port"
	if len(declared) > 0 {
		has = strings.Join(declared, ", ")
	}
	return 0, fmt.Sprintf("the rule's port %q/%s: no container of %s declares a port by that name (it declares %s)", name, proto, to.Name(), has)
}

// subjectSelects reports whether an admin policy's subject selects self.
func subjectSelects(s AdminSubject, self Endpoint) bool {
	pod := self.pod()
	if pod == nil {
		return false
	}
	switch {
	case s.Namespaces != nil:
		return len(selectorMisses(s.Namespaces, self.Namespace, "")) == 0
	case s.Pods != nil:
		return len(selectorMisses(&s.Pods.NamespaceSelector, self.Namespace, "")) == 0 &&
			len(selectorMisses(&s.Pods.PodSelector, pod.Labels, "")) == 0
	}
	return false
}

// adminPeerMatches reports whether peer is the admin rule's peer pe;
// unknown says why it could not be told (domain names: svctrace resolves
// none).
func adminPeerMatches(pe AdminPeer, peer Endpoint) (bool, string) {
	switch {
	case pe.Namespaces != nil, pe.Pods != nil:
		return subjectSelects(AdminSubject{Namespaces: pe.Namespaces, Pods: pe.Pods}, peer), ""
	case pe.Nodes != nil:
		return peer.Node != "" && len(selectorMisses(pe.Nodes, peer.NodeLabels, "")) == 0, ""
	case len(pe.Networks) > 0:
		for _, n := range pe.Networks {
			if p, err := netip.ParsePrefix(n); err == nil && peer.IP.IsValid() && p.Contains(peer.IP.Unmap()) {
				return true, ""
			}
		}
		return false, ""
	case len(pe.DomainNames) > 0:
		return false, fmt.Sprintf("a peer by domain name (%s) is not evaluated: which names %s answers to is not known", strings.Join(pe.DomainNames, ", "), peer.IP)
	}
	return false, ""
}

// adminPortsMatch reports whether c's destination port is among an admin
// rule's ports (nil: every port).
func adminPortsMatch(ports *[]AdminPort, c Connection) bool {
	if ports == nil {
		return true
	}
	for _, p := range *ports {
		switch {
		case p.PortNumber != nil:
			if orTCP(p.PortNumber.Protocol) == c.Protocol && p.PortNumber.Port == int32(c.Port) {
				return true
			}
		case p.PortRange != nil:
			if orTCP(p.PortRange.Protocol) == c.Protocol && int32(c.Port) >= p.PortRange.Start && int32(c.Port) <= p.PortRange.End {
				return true
			}
		case p.NamedPort != nil:
			if n, why := namedPort(c.To, *p.NamedPort, c.Protocol); why == "" && n == c.Port {
				return true
			}
		}
	}
	return false
}

func orTCP(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}
