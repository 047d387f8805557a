package netpol

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Describe says in words what rule i of np for d admits: "from Pods
// labelled app=frontend in namespace shop, on 8080/TCP".
func Describe(np *networkingv1.NetworkPolicy, d Direction, i int) string {
	var peers []networkingv1.NetworkPolicyPeer
	var ports []networkingv1.NetworkPolicyPort
	word := "from"
	switch {
	case d == Ingress && i < len(np.Spec.Ingress):
		peers, ports = np.Spec.Ingress[i].From, np.Spec.Ingress[i].Ports
	case d == Egress && i < len(np.Spec.Egress):
		peers, ports, word = np.Spec.Egress[i].To, np.Spec.Egress[i].Ports, "to"
	default:
		return ""
	}
	var who []string
	for _, p := range peers {
		who = append(who, describePeer(np.Namespace, p))
	}
	if len(who) == 0 {
		who = []string{"anyone"}
	}
	var on []string
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		on = append(on, describePort(p, proto))
	}
	if len(on) == 0 {
		on = []string{"every port"}
	}
	return fmt.Sprintf("%s %s, on %s", word, strings.Join(who, " or "), strings.Join(on, ", "))
}

func describePeer(ns string, p networkingv1.NetworkPolicyPeer) string {
	if b := p.IPBlock; b != nil {
		if len(b.Except) > 0 {
			return fmt.Sprintf("addresses in %s except %s", b.CIDR, strings.Join(b.Except, ", "))
		}
		return "addresses in " + b.CIDR
	}
	pods := "every Pod"
	if p.PodSelector != nil && !emptySelector(p.PodSelector) {
		pods = "Pods labelled " + selectorText(p.PodSelector)
	}
	switch {
	case p.NamespaceSelector == nil:
		return pods + " in namespace " + ns
	case emptySelector(p.NamespaceSelector):
		return pods + " in every namespace"
	}
	return pods + " in namespaces labelled " + selectorText(p.NamespaceSelector)
}

func emptySelector(s *metav1.LabelSelector) bool {
	return len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

func selectorText(s *metav1.LabelSelector) string {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return "(invalid selector)"
	}
	return sel.String()
}

// ForPort returns the rules for d of the policies among ps that isolate
// self (the destination's Pod for ingress, the source's for egress) whose
// ports take proto and port on to, whatever their peers: where none does,
// the policies admit nothing on that port.
func ForPort(ps []networkingv1.NetworkPolicy, self, to Endpoint, d Direction, proto corev1.Protocol, port uint16) []Rule {
	var out []Rule
	c := Connection{To: to, Protocol: proto, Port: port}
	for i := range ps {
		np := &ps[i]
		if !selects(np, self.pod(), d) {
			continue
		}
		var all [][]networkingv1.NetworkPolicyPort
		if d == Ingress {
			for _, r := range np.Spec.Ingress {
				all = append(all, r.Ports)
			}
		} else {
			for _, r := range np.Spec.Egress {
				all = append(all, r.Ports)
			}
		}
		for j, ports := range all {
			if len(ports) == 0 || len(nearest(len(ports), func(k int) []string { return portMisses(ports[k], c) })) == 0 {
				out = append(out, Rule{Tier: Network, Policy: np.Namespace + "/" + np.Name, Direction: d, Index: j, Action: Allow})
			}
		}
	}
	return out
}
