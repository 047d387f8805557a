package diagnose

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/netpol"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// What check says of the network policies around a Service's Pods: the
// stories of issue 23 as objects, each with the finding and fact it must
// give.

func namespace(name string, labels map[string]string) corev1.Namespace {
	return corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

func netpolicy(ns, name string, sel map[string]string, ingress []networkingv1.NetworkPolicyIngressRule, types ...networkingv1.PolicyType) networkingv1.NetworkPolicy {
	return networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, Ingress: ingress, PolicyTypes: types}}
}

func fromNamespace(labels map[string]string, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: labels}}}, Ports: ports}
}

func tcpPort(p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	tcp := corev1.ProtocolTCP
	return networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &p}
}

// policyCheck diagnoses the healthy web Service (Pods web-1 and web-2 on
// node-1, port 8080 named http) with these policies and a client Pod
// front-1 in namespace front.
func policyCheck(t *testing.T, policies ...networkingv1.NetworkPolicy) []report.Finding {
	t.Helper()
	return adminCheck(t, nil, nil, policies...)
}

// adminCheck is policyCheck with the cluster's admin policies too.
func adminCheck(t *testing.T, admin []netpol.AdminNetworkPolicy, baseline *netpol.BaselineAdminNetworkPolicy, policies ...networkingv1.NetworkPolicy) []report.Finding {
	t.Helper()
	client := pod("front", "front-1", "frontend", "10.244.0.31", "node-1", true)
	objs := resolve.Objects{
		Services:        []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Slices:          []discoveryv1.EndpointSlice{slice("web", 8080, web1, web2)},
		Pods:            []corev1.Pod{web1, web2, client},
		Nodes:           []corev1.Node{nodeObj("node-1", "10.99.0.1")},
		Namespaces:      []corev1.Namespace{namespace(shop, map[string]string{"team": "shop"}), namespace("front", map[string]string{"team": "frontend"})},
		NetworkPolicies: policies, AdminNetworkPolicies: admin,
	}
	if baseline != nil {
		objs.Baselines = []netpol.BaselineAdminNetworkPolicy{*baseline}
	}
	src := resolve.FileSource{Objects: &objs, Path: "test"}
	v, err := resolve.Gather(context.Background(), src, shop, "web", resolve.LocalNode{Name: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	v.SetClient(context.Background(), src, &client)
	in := Input{View: v, Service: resolve.NewService(v), KubeProxyKnown: true, KubeProxy: []int{42}}
	in.Rules = rulesFor(in.Service)
	return Check(in)
}

func finding(fs []report.Finding, code report.Code) *report.Finding {
	for i := range fs {
		if fs[i].Code == code {
			return &fs[i]
		}
	}
	return nil
}

func TestPolicyFindings(t *testing.T) {
	cases := []struct {
		name     string
		policies []networkingv1.NetworkPolicy
		code     report.Code
		severity report.Severity
		says     []string // in the finding's summary or evidence
		absent   []report.Code
	}{
		{"default-deny ingress, nothing else",
			[]networkingv1.NetworkPolicy{netpolicy(shop, "default-deny", nil, nil, networkingv1.PolicyTypeIngress)},
			report.PolicyDenies, report.Problem,
			[]string{"NetworkPolicy shop/default-deny denies Pod front/front-1's connections", "on 8080/TCP", "the ingress of the endpoint Pods", "no rule of shop/default-deny admits it"},
			nil},
		{"default-deny: no rule admits the port",
			[]networkingv1.NetworkPolicy{netpol1("default-deny")},
			report.PolicyAdmitsNothing, report.Warning,
			[]string{"no rule of shop/default-deny admits traffic to the endpoint Pods of shop/web:http (web-1, web-2) on 8080/TCP", "NetworkPolicy shop/default-deny: no ingress rule"},
			[]report.Code{report.PolicyIsolates}},
		{"a namespace label one value off",
			[]networkingv1.NetworkPolicy{netpolicy(shop, "from-frontend", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(map[string]string{"team": "fronted"})})},
			report.PolicyDenies, report.Problem,
			[]string{"NetworkPolicy shop/from-frontend ingress rule 1 misses: namespace front has label team=frontend; the selector wants team=fronted"},
			[]report.Code{report.PolicyAdmitsNothing}},
		{"a port by a name the Pods do not declare",
			[]networkingv1.NetworkPolicy{netpolicy(shop, "web-port", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(nil, tcpPort(intstr.FromString("web")))})},
			report.PolicyDenies, report.Problem,
			[]string{`the rule's port "web"/TCP: no container of Pod shop/web-1 declares a port by that name (it declares http 8080/TCP)`},
			nil},
		{"an admitting policy",
			[]networkingv1.NetworkPolicy{netpolicy(shop, "from-frontend", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(map[string]string{"team": "frontend"}, tcpPort(intstr.FromString("http")))})},
			report.PolicyIsolates, report.Info,
			[]string{"NetworkPolicy shop/from-frontend isolates the endpoint Pods of shop/web:http (web-1, web-2) for ingress",
				`NetworkPolicy shop/from-frontend ingress rule 1: from every Pod in namespaces labelled team=frontend, on "http"/TCP`,
				"other Pods of namespace shop: not admitted, unless a rule names them",
				"Pod front/front-1 (--from): admitted by NetworkPolicy shop/from-frontend ingress rule 1"},
			[]report.Code{report.PolicyDenies, report.PolicyAdmitsNothing}},
		{"a policy for other Pods",
			[]networkingv1.NetworkPolicy{netpolicy(shop, "db-only", map[string]string{"app": "db"}, nil, networkingv1.PolicyTypeIngress)},
			report.Healthy, report.OK, nil,
			[]report.Code{report.PolicyIsolates, report.PolicyDenies, report.PolicyAdmitsNothing}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := policyCheck(t, tc.policies...)
			f := finding(fs, tc.code)
			if f == nil || f.Severity != tc.severity {
				t.Fatalf("no %s finding %s in %+v", tc.severity, tc.code, fs)
			}
			text := f.Summary + "\n" + strings.Join(f.Evidence, "\n")
			for _, s := range tc.says {
				if !strings.Contains(text, s) {
					t.Errorf("%s does not say %q:\n%s", tc.code, s, text)
				}
			}
			for _, c := range tc.absent {
				if g := finding(fs, c); g != nil {
					t.Errorf("unexpected %s: %s", c, g.Summary)
				}
			}
			if f.Severity == report.Problem && len(f.Next) == 0 {
				t.Errorf("problem %s has no next step", f.Code)
			}
		})
	}
}

func netpol1(name string) networkingv1.NetworkPolicy {
	return netpolicy(shop, name, nil, nil, networkingv1.PolicyTypeIngress)
}

// A rule not kube-proxy's drops the SYN to web-1: the blame is the policy
// that denies the client, ingress or egress, with its missing rule; a
// policy that admits the client is said to, and the rule stays to blame.
func TestPolicyBlame(t *testing.T) {
	client := pod("front", "front-1", "frontend", "10.244.0.31", "node-1", true)
	egressDeny := networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "front", Name: "no-egress"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}}
	offByOne := netpolicy(shop, "from-frontend", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(map[string]string{"team": "fronted"})})
	admits := netpolicy(shop, "from-frontend", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(map[string]string{"team": "frontend"})})
	drop := "*filter\n:FORWARD ACCEPT [0:0]\n:NP - [0:0]\n-A FORWARD -j NP\n-A NP -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n"
	queue := "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -j NFQUEUE --queue-num 100\nCOMMIT\n"
	for _, tc := range []struct {
		name     string
		policies []networkingv1.NetworkPolicy
		tables   string // "": drop
		location string // the kernel's drop location
		cause    report.Code
		blame    string
		evidence string
	}{
		{"ingress: a namespace label one value off", []networkingv1.NetworkPolicy{offByOne}, "", "", report.PolicyDenies,
			"NetworkPolicy shop/from-frontend denies Pod front/front-1 → Pod shop/web-1 on node-1, port 8080/TCP, at the Pod's ingress: no rule admits this client; " +
				"nearest, NetworkPolicy shop/from-frontend ingress rule 1: namespace front has label team=frontend; the selector wants team=fronted; " +
				"the SYN was dropped by a rule in table ip filter (iptables-nft), chain NP, rule 1: -d 10.244.0.11/32",
			"ip filter: FORWARD 1 → NP → chain NP, rule 1"},
		{"egress: the client's namespace denies it", []networkingv1.NetworkPolicy{egressDeny}, "", "", report.PolicyDenies,
			"NetworkPolicy front/no-egress denies Pod front/front-1 → Pod shop/web-1 on node-1, port 8080/TCP, at the egress of Pod front/front-1: front/no-egress has no egress rule; the SYN was dropped",
			""},
		{"admitted: the rule is to blame", []networkingv1.NetworkPolicy{admits}, "", "", report.RuleDrop,
			"a rule in table ip filter (iptables-nft), chain NP, rule 1",
			"network policies: Pod front/front-1 → Pod shop/web-1 on node-1, port 8080/TCP: admitted by NetworkPolicy shop/from-frontend ingress rule 1; they are not what stopped it"},
		// A policy engine that queues to userspace (kube-network-policies)
		// and is not running: the queue has no reader.
		{"queued: no program reads the queue", []networkingv1.NetworkPolicy{offByOne}, queue, "nf_queue+0x240", report.PolicyDenies,
			"NetworkPolicy shop/from-frontend denies Pod front/front-1 → Pod shop/web-1 on node-1, port 8080/TCP, at the Pod's ingress: no rule admits this client; " +
				"nearest, NetworkPolicy shop/from-frontend ingress rule 1: namespace front has label team=frontend; the selector wants team=fronted; " +
				"the SYN was queued to userspace (queue 100) by a rule in table ip filter (iptables-nft), chain FORWARD, rule 1: -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -j NFQUEUE --queue-num 100, " +
				"and no program reads that queue: the kernel dropped it (nf_queue+0x240)", ""},
		{"queued: the program's verdict, no policy", nil, queue, "nf_reinject+0x1a0", report.RuleDrop,
			"The SYN was queued to userspace (queue 100) by a rule in table ip filter (iptables-nft), chain FORWARD, rule 1: -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -j NFQUEUE --queue-num 100, " +
				"and the program reading that queue dropped it (nf_reinject+0x1a0): look for the policy engine that reads it", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := resolve.Objects{
				Services:        []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
				Slices:          []discoveryv1.EndpointSlice{slice("web", 8080, web1)},
				Pods:            []corev1.Pod{web1, client},
				Nodes:           []corev1.Node{nodeObj("node-1", "10.99.0.1")},
				Namespaces:      []corev1.Namespace{namespace(shop, map[string]string{"team": "shop"}), namespace("front", map[string]string{"team": "frontend"})},
				NetworkPolicies: tc.policies,
			}
			tables := tc.tables
			if tables == "" {
				tables = drop
			}
			in, _ := check(t, story{objs: objs, tables: tables})
			x := NewExplainer(in, Check(in), nil)
			x.Peer = resolve.Peers(resolve.FileSource{Objects: &objs}, nil)
			ap := netip.MustParseAddrPort
			e := x.Explain(&flow.Conn{Proto: nf.TCP, Client: ap("10.244.0.31:40000"), VIP: ap("10.96.1.10:80"), Endpoint: ap("10.244.0.11:8080"),
				Verdict: flow.Dropped, Drop: &flow.Drop{Packet: 1, InNode: true, Placed: true, Gap: nf.GapAfter(nf.Forward, nf.StagePreFilter), Location: tc.location},
				Steps: []flow.Step{{Packet: 1, Kind: nf.KindHook, Flags: "SYN"}}})
			if e.Cause != tc.cause || !strings.HasPrefix(e.Blame, tc.blame) {
				t.Errorf("cause %s, blame %q;\nwant %s, %q…", e.Cause, e.Blame, tc.cause, tc.blame)
			}
			if tc.evidence != "" && !slices.ContainsFunc(e.Evidence, func(l string) bool { return strings.Contains(l, tc.evidence) }) {
				t.Errorf("evidence %q lacks %q", e.Evidence, tc.evidence)
			}
		})
	}
}

// The admin tiers: an AdminNetworkPolicy's Deny comes before any
// NetworkPolicy; the baseline's only where none isolates the Pod.
func TestAdminPolicyFindings(t *testing.T) {
	fromFront := func(name, action string) netpol.AdminRule {
		return netpol.AdminRule{Name: name, Action: action, From: []netpol.AdminPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "frontend"}}}}}
	}
	all := netpol.AdminSubject{Namespaces: &metav1.LabelSelector{}}
	anp := netpol.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-front"},
		Spec: netpol.AdminSpec{Priority: 5, Subject: all, Ingress: []netpol.AdminRule{fromFront("front", netpol.Deny)}}}
	allow := netpolicy(shop, "from-frontend", map[string]string{"app": "web"}, []networkingv1.NetworkPolicyIngressRule{fromNamespace(map[string]string{"team": "frontend"})})
	f := finding(adminCheck(t, []netpol.AdminNetworkPolicy{anp}, nil, allow), report.PolicyDenies)
	want := `AdminNetworkPolicy no-front (priority 5) ingress rule "front" (Deny) denies Pod front/front-1's connections`
	if f == nil || !strings.HasPrefix(f.Summary, want) || !strings.Contains(strings.Join(f.Evidence, "\n"), "decides, before any NetworkPolicy") {
		t.Errorf("admin deny: %+v, want %q…", f, want)
	}
	banp := &netpol.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"},
		Spec: netpol.AdminSpec{Subject: all, Ingress: []netpol.AdminRule{fromFront("front", netpol.Deny)}}}
	f = finding(adminCheck(t, nil, banp), report.PolicyDenies)
	want = `BaselineAdminNetworkPolicy default ingress rule "front" (Deny) denies Pod front/front-1's connections`
	if f == nil || !strings.HasPrefix(f.Summary, want) || !strings.Contains(strings.Join(f.Evidence, "\n"), "no NetworkPolicy isolating the Pod") {
		t.Errorf("baseline deny: %+v, want %q…", f, want)
	}
	if f := finding(adminCheck(t, nil, banp, allow), report.PolicyDenies); f != nil {
		t.Errorf("a NetworkPolicy that admits overrides the baseline: %s", f.Summary)
	}
}
