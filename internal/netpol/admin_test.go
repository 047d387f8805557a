package netpol

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The tiers of the network-policy-api (its conformance suite's cases, on
// the same matrix): AdminNetworkPolicies by priority, each rule in order,
// Pass handing over to NetworkPolicy, and the baseline where NetworkPolicy
// does not isolate.

func anp(name string, prio int32, subjectNS string, ingress, egress []AdminRule) AdminNetworkPolicy {
	return AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: AdminSpec{Priority: prio, Subject: AdminSubject{Namespaces: labelsSel(map[string]string{"ns": subjectNS})},
			Ingress: ingress, Egress: egress}}
}

func banp(subjectNS string, ingress ...AdminRule) *BaselineAdminNetworkPolicy {
	return &BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: AdminSpec{Subject: AdminSubject{Namespaces: labelsSel(map[string]string{"ns": subjectNS})}, Ingress: ingress}}
}

func fromNS(name, action, ns string) AdminRule {
	return AdminRule{Name: name, Action: action, From: []AdminPeer{{Namespaces: labelsSel(map[string]string{"ns": ns})}}}
}

func fromPod(name, action, ns, pod string) AdminRule {
	return AdminRule{Name: name, Action: action, From: []AdminPeer{{Pods: &NamespacedPod{
		NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"ns": ns}},
		PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}}}}}}
}

func TestAdminTiers(t *testing.T) {
	allowAllX := withIngress(np("x", "allow-all", nil), networkingv1.NetworkPolicyIngressRule{})
	allowYIntoX := withIngress(np("x", "from-y", nil), from(nsPeer(map[string]string{"ns": "y"})))
	denyX := np("x", "deny-ingress", nil, ingressOnly)
	cases := []struct {
		name     string
		p        Policies
		from, to string
		port     uint16
		allowed  bool
		by       Tier
		rule     string // the deciding rule, "" for none
	}{
		{"an admin Deny beats a NetworkPolicy's allow",
			Policies{Network: []networkingv1.NetworkPolicy{allowAllX}, Admin: []AdminNetworkPolicy{anp("no-y", 10, "x", []AdminRule{fromNS("deny-y", Deny, "y")}, nil)}},
			"y/a", "x/a", 80, false, Admin, `AdminNetworkPolicy no-y (priority 10) ingress rule "deny-y" (Deny)`},
		{"an admin Allow beats a NetworkPolicy's deny",
			Policies{Network: []networkingv1.NetworkPolicy{denyX}, Admin: []AdminNetworkPolicy{anp("yes-y", 10, "x", []AdminRule{fromNS("allow-y", Allow, "y")}, nil)}},
			"y/a", "x/a", 80, true, Admin, `AdminNetworkPolicy yes-y (priority 10) ingress rule "allow-y" (Allow)`},
		{"an admin rule for other peers leaves it to NetworkPolicy",
			Policies{Network: []networkingv1.NetworkPolicy{denyX}, Admin: []AdminNetworkPolicy{anp("yes-z", 10, "x", []AdminRule{fromNS("allow-z", Allow, "z")}, nil)}},
			"y/a", "x/a", 80, false, Network, ""},
		{"the lower priority number first",
			Policies{Admin: []AdminNetworkPolicy{
				anp("deny-10", 10, "x", []AdminRule{fromNS("deny-y", Deny, "y")}, nil),
				anp("allow-5", 5, "x", []AdminRule{fromNS("allow-y", Allow, "y")}, nil)}},
			"y/a", "x/a", 80, true, Admin, `AdminNetworkPolicy allow-5 (priority 5) ingress rule "allow-y" (Allow)`},
		{"rules in order: the first that matches",
			Policies{Admin: []AdminNetworkPolicy{anp("ordered", 10, "x", []AdminRule{fromPod("allow-y-b", Allow, "y", "b"), fromNS("deny-y", Deny, "y")}, nil)}},
			"y/b", "x/a", 80, true, Admin, `AdminNetworkPolicy ordered (priority 10) ingress rule "allow-y-b" (Allow)`},
		{"rules in order: the second",
			Policies{Admin: []AdminNetworkPolicy{anp("ordered", 10, "x", []AdminRule{fromPod("allow-y-b", Allow, "y", "b"), fromNS("deny-y", Deny, "y")}, nil)}},
			"y/a", "x/a", 80, false, Admin, `AdminNetworkPolicy ordered (priority 10) ingress rule "deny-y" (Deny)`},
		{"Pass skips the admin policies after it: NetworkPolicy decides",
			Policies{Network: []networkingv1.NetworkPolicy{allowYIntoX}, Admin: []AdminNetworkPolicy{
				anp("pass-y", 5, "x", []AdminRule{fromNS("pass-y", Pass, "y")}, nil),
				anp("deny-y", 10, "x", []AdminRule{fromNS("deny-y", Deny, "y")}, nil)}},
			"y/a", "x/a", 80, true, Network, "NetworkPolicy x/from-y ingress rule 1"},
		{"Pass with no NetworkPolicy: the baseline decides",
			Policies{Admin: []AdminNetworkPolicy{anp("pass-y", 5, "x", []AdminRule{fromNS("pass-y", Pass, "y")}, nil)},
				Baseline: banp("x", fromNS("deny-y", Deny, "y"))},
			"y/a", "x/a", 80, false, Baseline, `BaselineAdminNetworkPolicy default ingress rule "deny-y" (Deny)`},
		{"a NetworkPolicy that isolates overrides the baseline",
			Policies{Network: []networkingv1.NetworkPolicy{allowYIntoX}, Baseline: banp("x", fromNS("deny-y", Deny, "y"))},
			"y/a", "x/a", 80, true, Network, "NetworkPolicy x/from-y ingress rule 1"},
		{"the baseline for another namespace",
			Policies{Baseline: banp("z", fromNS("deny-y", Deny, "y"))},
			"y/a", "x/a", 80, true, Unselected, ""},
		{"admin ports: outside the range",
			Policies{Admin: []AdminNetworkPolicy{anp("deny-web", 10, "x", []AdminRule{func() AdminRule {
				r := fromNS("deny-web", Deny, "y")
				r.Ports = &[]AdminPort{{PortRange: &AdminPortRange{Start: 8000, End: 8100}}}
				return r
			}()}, nil)}},
			"y/a", "x/a", 80, true, Unselected, ""},
		{"admin ports: a named port",
			Policies{Admin: []AdminNetworkPolicy{anp("deny-named", 10, "x", []AdminRule{func() AdminRule {
				r := fromNS("deny-80", Deny, "y")
				name := "serve-80-tcp"
				r.Ports = &[]AdminPort{{NamedPort: &name}}
				return r
			}()}, nil)}},
			"y/a", "x/a", 80, false, Admin, `AdminNetworkPolicy deny-named (priority 10) ingress rule "deny-80" (Deny)`},
		{"admin egress to a network",
			Policies{Admin: []AdminNetworkPolicy{anp("no-z-net", 10, "x", nil, []AdminRule{{Name: "z-net", Action: Deny, To: []AdminPeer{{Networks: []string{"10.0.2.0/24"}}}}})}},
			"x/a", "z/c", 80, false, Admin, `AdminNetworkPolicy no-z-net (priority 10) egress rule "z-net" (Deny)`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := Evaluate(tc.p, Connection{From: endpointOf(tc.from), To: endpointOf(tc.to), Protocol: tcp, Port: tc.port})
			d := v.Ingress
			if tc.from == "x/a" {
				d = v.Egress
			}
			rule := ""
			if d.Rule != nil {
				rule = d.Rule.String()
			}
			if v.Allowed != tc.allowed || d.By != tc.by || rule != tc.rule {
				t.Errorf("allowed %v by %s, rule %q;\nwant %v by %s, rule %q", v.Allowed, d.By, rule, tc.allowed, tc.by, tc.rule)
			}
		})
	}
}

func TestAdminEgressToNodesAndNames(t *testing.T) {
	p := Policies{Admin: []AdminNetworkPolicy{anp("egress", 10, "x", nil, []AdminRule{
		{Name: "no-names", Action: Deny, To: []AdminPeer{{DomainNames: []string{"*.example.com"}}}},
		{Name: "no-n2", Action: Deny, To: []AdminPeer{{Nodes: labelsSel(map[string]string{"kubernetes.io/hostname": "n2"})}}},
	})}}
	v := Evaluate(p, Connection{From: endpointOf("x/a"), To: node("n2"), Protocol: tcp, Port: 10250})
	if v.Allowed || v.Egress.Rule == nil || v.Egress.Rule.Name != "no-n2" {
		t.Errorf("to node n2: allowed %v by %v, want denied by rule no-n2", v.Allowed, v.Egress.Rule)
	}
	if len(v.Egress.Unknown) != 1 || !strings.Contains(v.Egress.Unknown[0], "*.example.com") {
		t.Errorf("unknown %q, want the domain-name peer said to be unevaluated", v.Egress.Unknown)
	}
	if v := Evaluate(p, Connection{From: endpointOf("x/a"), To: node("n1"), Protocol: tcp, Port: 10250}); !v.Allowed {
		t.Errorf("to node n1: denied by %v", v.Egress.Rule)
	}
}
