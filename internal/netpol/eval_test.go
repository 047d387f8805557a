package netpol

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The cluster of Kubernetes' own NetworkPolicy conformance tests
// (test/e2e/network/netpol): namespaces x, y and z, each with Pods a, b and
// c that serve ports 80 and 81 over TCP, UDP and SCTP under names like
// serve-80-tcp. All run on node n1; n2 is another node.

var (
	namespaces = []string{"x", "y", "z"}
	podNames   = []string{"a", "b", "c"}
)

func nsLabels(ns string) map[string]string {
	return map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}
}

func matrixPod(ns, name string) Endpoint {
	var ports []corev1.ContainerPort
	for _, port := range []int32{80, 81} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))),
				ContainerPort: port, Protocol: proto})
		}
	}
	nsIndex := strings.Index("xyz", ns)
	podIndex := strings.Index("abc", name)
	return Endpoint{
		IP: netip.AddrFrom4([4]byte{10, 0, byte(nsIndex), byte(podIndex + 1)}),
		Pod: &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		},
		Namespace: nsLabels(ns),
	}
}

func node(name string) Endpoint {
	ip := map[string]netip.Addr{"n1": netip.MustParseAddr("192.168.0.1"), "n2": netip.MustParseAddr("192.168.0.2")}[name]
	return Endpoint{IP: ip, Node: name, NodeLabels: map[string]string{"kubernetes.io/hostname": name}}
}

// Policy builders, in the words of the API.

func np(ns, name string, podSel map[string]string, types ...networkingv1.PolicyType) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: podSel}, PolicyTypes: types}}
}

func withIngress(p networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyIngressRule) networkingv1.NetworkPolicy {
	p.Spec.Ingress = append(p.Spec.Ingress, rules...)
	return p
}

func withEgress(p networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyEgressRule) networkingv1.NetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, rules...)
	return p
}

func from(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers}
}

func to(peers ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers}
}

func ingressPorts(r networkingv1.NetworkPolicyIngressRule, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	r.Ports = ports
	return r
}

func egressPorts(r networkingv1.NetworkPolicyEgressRule, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	r.Ports = ports
	return r
}

func labelsSel(l map[string]string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: l}
}

func exprSel(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func podPeer(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: labelsSel(l)}
}

func nsPeer(l map[string]string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: labelsSel(l)}
}

func cidrPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p any) networkingv1.NetworkPolicyPort {
	out := networkingv1.NetworkPolicyPort{Protocol: &proto}
	switch v := p.(type) {
	case int:
		ip := intstr.FromInt32(int32(v))
		out.Port = &ip
	case string:
		sp := intstr.FromString(v)
		out.Port = &sp
	}
	return out
}

func portRange(proto corev1.Protocol, lo, hi int32) networkingv1.NetworkPolicyPort {
	p := port(proto, int(lo))
	p.EndPort = &hi
	return p
}

const (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

var (
	ingressOnly = networkingv1.PolicyTypeIngress
	egressOnly  = networkingv1.PolicyTypeEgress
)

// reach is one expected denial pattern: whether a connection from one Pod
// ("x/a") to another is admitted. The matrix leaves out a Pod to itself.
type reach func(from, to string) bool

func all(string, string) bool { return true }

func into(ns string) reach { return func(_, to string) bool { return !strings.HasPrefix(to, ns+"/") } }

func TestMatrix(t *testing.T) {
	x := func(s string) bool { return strings.HasPrefix(s, "x/") }
	cases := []struct {
		name     string
		policies Policies
		proto    corev1.Protocol
		port     uint16
		want     reach
	}{
		{"no policies", Policies{}, tcp, 80, all},
		{"default-deny-ingress", Policies{Network: []networkingv1.NetworkPolicy{np("x", "deny-ingress", nil, ingressOnly)}}, tcp, 80,
			into("x")},
		{"default-deny-all", Policies{Network: []networkingv1.NetworkPolicy{np("x", "deny-all", nil, ingressOnly, egressOnly)}}, tcp, 80,
			func(f, to string) bool { return !x(f) && !x(to) }},
		{"allow from pods within the namespace by podSelector", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "allow-b", map[string]string{"pod": "a"}), from(podPeer(map[string]string{"pod": "b"})))}}, tcp, 80,
			func(f, to string) bool { return to != "x/a" || f == "x/b" }},
		{"allow from all namespaces", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "allow-all-ns", nil), from(nsPeer(nil)))}}, tcp, 80, all},
		{"allow only from another namespace by namespaceSelector", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "allow-y", nil), from(nsPeer(map[string]string{"ns": "y"})))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || strings.HasPrefix(f, "y/") }},
		{"podSelector with matchExpressions", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "allow-b-expr", nil), from(networkingv1.NetworkPolicyPeer{PodSelector: exprSel("pod", metav1.LabelSelectorOpIn, "b")}))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || f == "x/b" }},
		{"namespaceSelector with matchExpressions", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "allow-y-expr", nil), from(networkingv1.NetworkPolicyPeer{NamespaceSelector: exprSel("ns", metav1.LabelSelectorOpIn, "y")}))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || strings.HasPrefix(f, "y/") }},
		{"podSelector or namespaceSelector", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "either", nil), from(
				networkingv1.NetworkPolicyPeer{NamespaceSelector: exprSel("ns", metav1.LabelSelectorOpNotIn, "x")},
				networkingv1.NetworkPolicyPeer{PodSelector: exprSel("pod", metav1.LabelSelectorOpIn, "b")}))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || !x(f) || f == "x/b" }},
		{"podSelector and namespaceSelector", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "both", nil), from(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: exprSel("ns", metav1.LabelSelectorOpNotIn, "x"),
				PodSelector:       exprSel("pod", metav1.LabelSelectorOpIn, "b")}))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || f == "y/b" || f == "z/b" }},
		{"by ports: 81 only, connecting to 80", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "port-81", nil), ingressPorts(from(nsPeer(nil)), port(tcp, 81)))}}, tcp, 80, into("x")},
		{"by ports: 81 only, connecting to 81", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "port-81", nil), ingressPorts(from(nsPeer(nil)), port(tcp, 81)))}}, tcp, 81, all},
		{"stacked policies: the union of their allows", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "from-y", nil), from(nsPeer(map[string]string{"ns": "y"}))),
			withIngress(np("x", "from-z", nil), from(nsPeer(map[string]string{"ns": "z"})))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || !x(f) }},
		{"allow-all ingress wins over a deny", Policies{Network: []networkingv1.NetworkPolicy{
			np("x", "deny-ingress", nil, ingressOnly),
			withIngress(np("x", "allow-all", nil), networkingv1.NetworkPolicyIngressRule{})}}, tcp, 80, all},
		{"named port, declared", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "named-81", nil), ingressPorts(from(nsPeer(nil)), port(tcp, "serve-81-tcp")))}}, tcp, 81, all},
		{"named port, another port", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "named-81", nil), ingressPorts(from(nsPeer(nil)), port(tcp, "serve-81-tcp")))}}, tcp, 80, into("x")},
		{"named port of UDP, connecting over TCP", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "named-81-udp", nil), ingressPorts(from(nsPeer(nil)), port(udp, "serve-81-udp")))}}, tcp, 81, into("x")},
		{"a TCP rule naming a UDP port", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "tcp-named-udp", nil), ingressPorts(from(nsPeer(nil)), port(tcp, "serve-81-udp")))}}, tcp, 81, into("x")},
		{"egress by named port of the destination", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "egress-80", map[string]string{"pod": "a"}, egressOnly), egressPorts(to(), port(tcp, "serve-80-tcp")))}}, tcp, 80, all},
		{"egress by named port, another port", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "egress-80", map[string]string{"pod": "a"}, egressOnly), egressPorts(to(), port(tcp, "serve-80-tcp")))}}, tcp, 81,
			func(f, _ string) bool { return f != "x/a" }},
		{"deny egress by podSelector", Policies{Network: []networkingv1.NetworkPolicy{np("x", "deny-egress-a", map[string]string{"pod": "a"}, egressOnly)}}, tcp, 80,
			func(f, _ string) bool { return f != "x/a" }},
		{"policyTypes left out: egress rules make it an egress policy", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "egress-to-y", nil), to(nsPeer(map[string]string{"ns": "y"})))}}, tcp, 80,
			// Ingress too (the default), with no rules: nothing into x.
			func(f, to string) bool { return !x(to) && (!x(f) || strings.HasPrefix(to, "y/")) }},
		{"egress denied at the client although the server admits", Policies{Network: []networkingv1.NetworkPolicy{
			np("x", "deny-egress", nil, egressOnly),
			withIngress(np("y", "allow-all", nil), networkingv1.NetworkPolicyIngressRule{})}}, tcp, 80,
			func(f, _ string) bool { return !x(f) }},
		{"egress to a server in another namespace by podSelector and namespaceSelector", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "to-y-b", map[string]string{"pod": "a"}, egressOnly), to(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: labelsSel(map[string]string{"ns": "y"}), PodSelector: labelsSel(map[string]string{"pod": "b"})}))}}, tcp, 80,
			func(f, to string) bool { return f != "x/a" || to == "y/b" }},
		{"any port of one protocol: TCP", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "tcp-only", nil), ingressPorts(networkingv1.NetworkPolicyIngressRule{}, port(tcp, nil)))}}, tcp, 81, all},
		{"any port of one protocol: UDP refused", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "tcp-only", nil), ingressPorts(networkingv1.NetworkPolicyIngressRule{}, port(tcp, nil)))}}, udp, 81, into("x")},
		{"SCTP is not TCP", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "sctp-80", nil), ingressPorts(networkingv1.NetworkPolicyIngressRule{}, port(sctp, 80)))}}, tcp, 80, into("x")},
		{"SCTP admitted by an SCTP rule", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "sctp-80", nil), ingressPorts(networkingv1.NetworkPolicyIngressRule{}, port(sctp, 80)))}}, sctp, 80, all},
		{"only UDP: TCP refused", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "udp-80", nil), ingressPorts(networkingv1.NetworkPolicyIngressRule{}, port(udp, 80)))}}, tcp, 80, into("x")},
		{"egress to a CIDR", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "to-y-cidr", map[string]string{"pod": "a"}, egressOnly), to(cidrPeer("10.0.1.0/24")))}}, tcp, 80,
			func(f, to string) bool { return f != "x/a" || strings.HasPrefix(to, "y/") }},
		{"egress to a CIDR with an except", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "to-y-but-b", map[string]string{"pod": "a"}, egressOnly), to(cidrPeer("10.0.1.0/24", "10.0.1.2/32")))}}, tcp, 80,
			func(f, to string) bool { return f != "x/a" || (strings.HasPrefix(to, "y/") && to != "y/b") }},
		{"an except another policy admits", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "to-y-but-b", map[string]string{"pod": "a"}, egressOnly), to(cidrPeer("10.0.1.0/24", "10.0.1.2/32"))),
			withEgress(np("x", "to-y-b", map[string]string{"pod": "a"}, egressOnly), to(cidrPeer("10.0.1.2/32")))}}, tcp, 80,
			func(f, to string) bool { return f != "x/a" || strings.HasPrefix(to, "y/") }},
		{"ingress and egress controlled independently", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(withEgress(np("x", "a-both", map[string]string{"pod": "a"}, ingressOnly, egressOnly),
				to(podPeer(map[string]string{"pod": "b"}))), from(podPeer(map[string]string{"pod": "c"})))}}, tcp, 80,
			func(f, to string) bool {
				return (f != "x/a" || to == "x/b") && (to != "x/a" || f == "x/c")
			}},
		{"egress endPort: 80-81", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "range", map[string]string{"pod": "a"}, egressOnly), egressPorts(to(), portRange(tcp, 80, 81)))}}, tcp, 81, all},
		{"egress endPort: 82-90", Policies{Network: []networkingv1.NetworkPolicy{
			withEgress(np("x", "range", map[string]string{"pod": "a"}, egressOnly), egressPorts(to(), portRange(tcp, 82, 90)))}}, tcp, 81,
			func(f, _ string) bool { return f != "x/a" }},
		{"namespaceSelector by the default kubernetes.io/metadata.name label", Policies{Network: []networkingv1.NetworkPolicy{
			withIngress(np("x", "from-y", nil), from(nsPeer(map[string]string{"kubernetes.io/metadata.name": "y"})))}}, tcp, 80,
			func(f, to string) bool { return !x(to) || strings.HasPrefix(f, "y/") }},
		{"a policy of another namespace selects nothing here", Policies{Network: []networkingv1.NetworkPolicy{np("y", "deny-ingress", map[string]string{"pod": "a"}, ingressOnly)}}, tcp, 80,
			func(_, to string) bool { return to != "y/a" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var wrong []string
			for _, f := range pods() {
				for _, d := range pods() {
					if f == d {
						continue
					}
					c := Connection{From: endpointOf(f), To: endpointOf(d), Protocol: tc.proto, Port: tc.port}
					got, want := Evaluate(tc.policies, c).Allowed, tc.want(f, d)
					if got != want {
						wrong = append(wrong, fmt.Sprintf("%s → %s: allowed %v, want %v", f, d, got, want))
					}
				}
			}
			if len(wrong) > 0 {
				t.Errorf("%d of 72 connections judged wrong:\n%s", len(wrong), strings.Join(wrong, "\n"))
			}
		})
	}
}

func pods() []string {
	var out []string
	for _, ns := range namespaces {
		for _, p := range podNames {
			out = append(out, ns+"/"+p)
		}
	}
	return out
}

func endpointOf(s string) Endpoint {
	ns, name, _ := strings.Cut(s, "/")
	return matrixPod(ns, name)
}
