package netpol

import (
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// What a denial says: the isolating policies, the direction, and each rule's
// nearest miss in words an operator can act on.

func TestDenialNamesPoliciesAndMisses(t *testing.T) {
	cases := []struct {
		name      string
		policies  []networkingv1.NetworkPolicy
		from, to  string
		port      uint16
		dir       Direction
		isolating []string
		miss      string // the nearest miss's first reason
	}{
		{"default deny: no rule at all",
			[]networkingv1.NetworkPolicy{np("x", "default-deny", nil, ingressOnly)},
			"y/a", "x/a", 80, Ingress, []string{"x/default-deny"}, ""},
		{"a namespace label one value off",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "from-frontend", nil), from(nsPeer(map[string]string{"ns": "yy"})))},
			"y/a", "x/a", 80, Ingress, []string{"x/from-frontend"},
			`namespace y has label ns=y; the selector wants ns=yy`},
		{"a label the namespace lacks",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "from-team", nil), from(nsPeer(map[string]string{"team": "web"})))},
			"y/a", "x/a", 80, Ingress, []string{"x/from-team"},
			`namespace y has no label team; the selector wants team=web`},
		{"a port by a name no container declares",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "web-port", nil), ingressPorts(from(nsPeer(nil)), port(tcp, "http")))},
			"y/a", "x/a", 80, Ingress, []string{"x/web-port"},
			`the rule's port "http"/TCP: no container of Pod x/a declares a port by that name (it declares serve-80-sctp 80/SCTP, `},
		{"a podSelector alone admits its own namespace's Pods",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "from-b", nil), from(podPeer(map[string]string{"pod": "b"})))},
			"y/b", "x/a", 80, Ingress, []string{"x/from-b"},
			`Pod y/b is in namespace y; a podSelector without namespaceSelector admits Pods of x only`},
		{"an except that covers the client",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "from-y-net", nil), from(cidrPeer("10.0.1.0/24", "10.0.1.0/30")))},
			"y/a", "x/a", 80, Ingress, []string{"x/from-y-net"},
			`10.0.1.1 is in ipBlock 10.0.1.0/24 but in its except 10.0.1.0/30`},
		{"egress: the wrong port",
			[]networkingv1.NetworkPolicy{withEgress(np("x", "egress-81", nil, egressOnly), egressPorts(to(), port(tcp, 81)))},
			"x/a", "y/a", 80, Egress, []string{"x/egress-81"},
			`port 80/TCP: the rule's port is 81/TCP`},
		{"the nearest of two rules comes first",
			[]networkingv1.NetworkPolicy{withIngress(np("x", "two", nil),
				ingressPorts(from(nsPeer(map[string]string{"ns": "z"})), port(tcp, 81)),
				ingressPorts(from(nsPeer(map[string]string{"ns": "y"})), port(tcp, 81)))},
			"y/a", "x/a", 80, Ingress, []string{"x/two"},
			`port 80/TCP: the rule's port is 81/TCP`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Connection{From: endpointOf(tc.from), To: endpointOf(tc.to), Protocol: tcp, Port: tc.port}
			v := Evaluate(Policies{Network: tc.policies}, c)
			d := v.Ingress
			if tc.dir == Egress {
				d = v.Egress
			}
			if v.Allowed || d.Allowed || d.By != Network {
				t.Fatalf("%s: allowed %v, %s allowed %v by %s; want denied by NetworkPolicy", tc.name, v.Allowed, tc.dir, d.Allowed, d.By)
			}
			if !slices.Equal(d.Isolating, tc.isolating) {
				t.Errorf("isolating %v, want %v", d.Isolating, tc.isolating)
			}
			if tc.miss == "" {
				if len(d.Misses) != 0 {
					t.Errorf("misses %+v, want none: the policy has no rule", d.Misses)
				}
				return
			}
			if len(d.Misses) == 0 || len(d.Misses[0].Why) == 0 {
				t.Fatalf("no miss given")
			}
			if got := d.Misses[0].Why[0]; !strings.HasPrefix(got, tc.miss) {
				t.Errorf("nearest miss %q,\nwant %q", got, tc.miss)
			}
		})
	}
}

func TestRuleNames(t *testing.T) {
	for _, tc := range []struct {
		r    Rule
		want string
	}{
		{Rule{Tier: Network, Policy: "x/allow-web", Direction: Ingress, Index: 1, Action: Allow}, "NetworkPolicy x/allow-web ingress rule 2"},
		{Rule{Tier: Admin, Policy: "cluster-deny", Direction: Egress, Index: 0, Name: "no-db", Action: Deny, Priority: 10},
			`AdminNetworkPolicy cluster-deny (priority 10) egress rule "no-db" (Deny)`},
		{Rule{Tier: Baseline, Policy: "default", Direction: Ingress, Index: 2, Action: Deny}, "BaselineAdminNetworkPolicy default ingress rule 3 (Deny)"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%q, want %q", got, tc.want)
		}
	}
}

func TestAdmittedNamesTheRule(t *testing.T) {
	ps := []networkingv1.NetworkPolicy{
		withIngress(np("x", "from-z", nil), from(nsPeer(map[string]string{"ns": "z"}))),
		withIngress(np("x", "from-y", nil), from(nsPeer(map[string]string{"ns": "z"})), from(nsPeer(map[string]string{"ns": "y"}))),
	}
	v := Evaluate(Policies{Network: ps}, Connection{From: endpointOf("y/a"), To: endpointOf("x/a"), Protocol: tcp, Port: 80})
	if !v.Allowed || v.Ingress.Rule == nil || v.Ingress.Rule.String() != "NetworkPolicy x/from-y ingress rule 2" {
		t.Fatalf("allowed %v by %v; want NetworkPolicy x/from-y ingress rule 2", v.Allowed, v.Ingress.Rule)
	}
	if !slices.Equal(v.Ingress.Isolating, []string{"x/from-y", "x/from-z"}) {
		t.Errorf("isolating %v", v.Ingress.Isolating)
	}
	if v.Egress.By != Unselected || !v.Egress.Allowed {
		t.Errorf("egress %+v, want admitted, no policy selecting y/a", v.Egress)
	}
}

// NetworkPolicy admits a Pod's own node whatever isolates the Pod (kubelet
// probes); another node is a peer like any address. A hostNetwork Pod is
// its node: no policy selects it.
func TestNodesAndHostNetwork(t *testing.T) {
	deny := Policies{Network: []networkingv1.NetworkPolicy{np("x", "deny-all", nil, ingressOnly, egressOnly)}}
	xa := endpointOf("x/a")
	if v := Evaluate(deny, Connection{From: node("n1"), To: xa, Protocol: tcp, Port: 80}); !v.Allowed || v.Ingress.By != FromNode {
		t.Errorf("from its own node: allowed %v by %s, want allowed by %s", v.Allowed, v.Ingress.By, FromNode)
	}
	v := Evaluate(deny, Connection{From: node("n2"), To: xa, Protocol: tcp, Port: 80})
	if v.Allowed || v.Ingress.By != Network {
		t.Errorf("from another node: allowed %v by %s, want denied by %s", v.Allowed, v.Ingress.By, Network)
	}
	host := endpointOf("x/b")
	host.Pod.Spec.HostNetwork = true
	host.IP, host.Node = node("n1").IP, "n1"
	if v := Evaluate(deny, Connection{From: host, To: endpointOf("y/a"), Protocol: tcp, Port: 80}); !v.Allowed || v.Egress.By != Unselected {
		t.Errorf("from a hostNetwork Pod of x: allowed %v, egress by %s; want allowed, the Pod unselected", v.Allowed, v.Egress.By)
	}
	if got := Isolating(deny.Network, host.Pod, Egress); len(got) != 0 {
		t.Errorf("a hostNetwork Pod isolated by %v", got)
	}
}

func TestDescribe(t *testing.T) {
	p := withIngress(np("x", "web", map[string]string{"pod": "a"}),
		ingressPorts(from(podPeer(map[string]string{"app": "frontend"}), nsPeer(map[string]string{"team": "web"})), port(tcp, 8080), port(tcp, "http")),
		from(networkingv1.NetworkPolicyPeer{NamespaceSelector: labelsSel(nil), PodSelector: labelsSel(map[string]string{"role": "probe"})}),
		ingressPorts(from(cidrPeer("10.0.0.0/8", "10.1.0.0/16")), portRange(udp, 5000, 5010)),
		networkingv1.NetworkPolicyIngressRule{})
	for i, want := range []string{
		"from Pods labelled app=frontend in namespace x or every Pod in namespaces labelled team=web, on 8080/TCP, \"http\"/TCP",
		"from Pods labelled role=probe in every namespace, on every port",
		"from addresses in 10.0.0.0/8 except 10.1.0.0/16, on 5000-5010/UDP",
		"from anyone, on every port",
	} {
		if got := Describe(&p, Ingress, i); got != want {
			t.Errorf("rule %d: %q,\nwant %q", i+1, got, want)
		}
	}
}

func TestForPort(t *testing.T) {
	ps := []networkingv1.NetworkPolicy{
		np("x", "deny", nil, ingressOnly),
		withIngress(np("x", "web", nil), ingressPorts(from(), port(tcp, 81)), ingressPorts(from(), port(tcp, "serve-80-tcp"))),
	}
	xa := endpointOf("x/a")
	if got := ForPort(ps, xa, xa, Ingress, tcp, 80); len(got) != 1 || got[0].String() != "NetworkPolicy x/web ingress rule 2" {
		t.Errorf("port 80: %v", got)
	}
	if got := ForPort(ps, xa, xa, Ingress, tcp, 8080); len(got) != 0 {
		t.Errorf("port 8080: %v, want none", got)
	}
}
