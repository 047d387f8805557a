package diagnose

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The stories of the seeds, as objects, each with the finding it must give.

const shop = "shop"

func svc(name, vip string, sel map[string]string, target intstr.IntOrString) corev1.Service {
	s := corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: vip, ClusterIPs: []string{vip}, Selector: sel,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: target}}}}
	return s
}

func pod(ns, name, app, ip, node string, ready bool) corev1.Pod {
	st := corev1.ConditionTrue
	if !ready {
		st = corev1.ConditionFalse
	}
	return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "app",
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: st}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: ready, RestartCount: 3}}}}
}

// slice publishes the pods as endpoints of service name on port, as
// the EndpointSlice controller would.
func slice(name string, port int32, pods ...corev1.Pod) discoveryv1.EndpointSlice {
	pname, proto := "http", corev1.ProtocolTCP
	sl := discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: name + "-abcde",
		Labels: map[string]string{discoveryv1.LabelServiceName: name}}, AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}}}
	for _, p := range pods {
		ready := p.Status.Conditions[0].Status == corev1.ConditionTrue
		node := p.Spec.NodeName
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name}})
	}
	return sl
}

func nodeObj(name, ip string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}}
}

type story struct {
	name     string
	objs     resolve.Objects
	rules    *kubeproxy.Ruleset // nil: a ruleset with correct rules for the Service
	noProxy  bool               // no kube-proxy process
	want     report.Code        // the first finding's code
	severity report.Severity
	evidence string // must appear in the first finding's summary or evidence
	net      *node.Facts
	tables   string // iptables-save output of the node's other rules
	nft      string // a file of other writers' nftables tables, as svctrace reads them
}

var (
	web1 = pod(shop, "web-1", "web", "10.244.0.11", "node-1", true)
	web2 = pod(shop, "web-2", "web", "10.244.0.12", "node-1", true)
)

func stories() []story {
	byName := intstr.FromString("http")
	nodes := []corev1.Node{nodeObj("node-1", "10.99.0.1"), nodeObj("node-2", "10.99.0.2")}
	notReady := pod(shop, "slow-1", "slow", "10.244.0.21", "node-1", false)
	remote := pod(shop, "far-1", "far", "10.244.1.5", "node-2", true)
	local := svc("far", "10.96.1.70", map[string]string{"app": "far"}, byName)
	local.Spec.Type, local.Spec.ExternalTrafficPolicy = corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal
	local.Spec.Ports[0].NodePort = 30080
	headless := svc("db", "None", map[string]string{"app": "web"}, byName)
	external := corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "ext"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}}
	otherProxy := svc("web", "10.96.1.10", map[string]string{"app": "web"}, byName)
	otherProxy.Labels = map[string]string{resolve.LabelServiceProxyName: "elsewhere"}
	typo := pod(shop, "typo-1", "web", "10.244.0.31", "node-1", true)
	typo.Labels = map[string]string{"apps": "cart"}
	ss := []story{
		{name: "healthy", want: "healthy", severity: report.OK,
			objs: resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, byName)},
				Pods: []corev1.Pod{web1, web2}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1, web2)}, Nodes: nodes}},
		{name: "selector-matches-no-pod", want: "selector-matches-no-pod", severity: report.Problem, evidence: "pod shop/typo-1 has apps=cart, the selector wants app=cart",
			objs: resolve.Objects{Services: []corev1.Service{svc("cart", "10.96.1.20", map[string]string{"app": "cart"}, byName)},
				Pods: []corev1.Pod{web1, typo}, Nodes: nodes}},
		{name: "only-pod-not-ready", want: "no-ready-pods", severity: report.Problem, evidence: "container app not ready (readiness probe HTTP GET :8080/healthz), 3 restarts",
			objs: resolve.Objects{Services: []corev1.Service{svc("slow", "10.96.1.30", map[string]string{"app": "slow"}, byName)},
				Pods: []corev1.Pod{notReady}, Slices: []discoveryv1.EndpointSlice{slice("slow", 8080, notReady)}, Nodes: nodes}},
		{name: "wrong-targetport", want: "targetport-not-exposed", severity: report.Problem, evidence: "8080/TCP (http)",
			objs: resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.40", map[string]string{"app": "web"}, intstr.FromInt32(9090))},
				Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{slice("web", 9090, web1)}, Nodes: nodes}},
		{name: "unknown-targetport-name", want: "targetport-name-unknown", severity: report.Problem, evidence: `targetPort "web"`,
			objs: resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.41", map[string]string{"app": "web"}, intstr.FromString("web"))},
				Pods: []corev1.Pod{web1}, Nodes: nodes}},
		{name: "pods-in-other-namespace", want: "selector-matches-no-pod", severity: report.Problem,
			objs: resolve.Objects{Services: []corev1.Service{svc("api", "10.96.1.50", map[string]string{"app": "api"}, byName)},
				Pods: []corev1.Pod{pod("default", "api-1", "api", "10.244.0.41", "node-1", true)}, Nodes: nodes}},
		{name: "no-kube-proxy", want: "no-rules-for-service", severity: report.Problem, noProxy: true, evidence: "kube-proxy is not running here",
			rules: &kubeproxy.Ruleset{Mode: kubeproxy.ModeIPTables},
			objs: resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, byName)},
				Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: nodes}},
		// Another proxy's Service: kube-proxy rightly has no rules for it.
		{name: "other-proxy", want: "other-proxy", severity: report.Info, evidence: "service.kubernetes.io/service-proxy-name=elsewhere: kube-proxy leaves it to that proxy",
			rules: &kubeproxy.Ruleset{Mode: kubeproxy.ModeIPTables},
			objs:  resolve.Objects{Services: []corev1.Service{otherProxy}, Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: nodes}},
		{name: "stale-dnat", want: "stale-dnat", severity: report.Problem, evidence: "10.244.0.99:8080",
			rules: &kubeproxy.Ruleset{Mode: kubeproxy.ModeIPTables, Ports: map[kubeproxy.PortKey]*kubeproxy.PortRules{
				{Name: "shop/web:http", Proto: "tcp"}: {Endpoints: []kubeproxy.EndpointRule{{Addr: netip.MustParseAddrPort("10.244.0.11:8080")}, {Addr: netip.MustParseAddrPort("10.244.0.99:8080")}}}}},
			objs: resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, byName)},
				Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: nodes}},
		{name: "external-traffic-policy-local", want: "external-local-no-endpoint", severity: report.Problem, evidence: "run on: node-2",
			objs: resolve.Objects{Services: []corev1.Service{local}, Pods: []corev1.Pod{remote},
				Slices: []discoveryv1.EndpointSlice{slice("far", 8080, remote)}, Nodes: nodes}},
		{name: "selector-less-without-slices", want: "no-selector-no-endpointslices", severity: report.Problem,
			objs: resolve.Objects{Services: []corev1.Service{svc("manual", "10.96.1.80", nil, byName)}, Nodes: nodes}},
		{name: "headless", want: "headless", severity: report.Info,
			objs: resolve.Objects{Services: []corev1.Service{headless}, Pods: []corev1.Pod{web1},
				Slices: []discoveryv1.EndpointSlice{slice("db", 8080, web1)}, Nodes: nodes}},
		{name: "externalname", want: "externalname", severity: report.Info, evidence: "db.example.com",
			objs: resolve.Objects{Services: []corev1.Service{external}, Nodes: nodes}},
	}
	return append(ss, nodeStories(nodes)...)
}

// nodeStories are stories the node's facts tell, and the endpoints'
// slices against their Pods.
func nodeStories(nodes []corev1.Node) []story {
	web := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	objs := resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: nodes}
	pod1 := netip.MustParseAddr("10.244.0.11")
	toPod := node.Route{To: pod1, Type: "unicast", Dev: "cbr0", Src: netip.MustParseAddr("10.244.0.1")}
	listening := func(ss ...node.Socket) *node.Facts {
		return &node.Facts{Routes: []node.Route{toPod}, Sysctls: map[string]string{"net.ipv4.ip_forward": "1"},
			Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: pod1, Sockets: ss}}}
	}
	tcp := func(a string, queue, backlog uint32) node.Socket {
		return node.Socket{Proto: nf.TCP, Local: netip.MustParseAddrPort(a), Queue: queue, Backlog: backlog}
	}
	notServing := slice("web", 8080, web1)
	no := false
	notServing.Endpoints[0].Conditions.Serving = &no
	slow := pod(shop, "web-3", "web", "10.244.0.13", "node-1", false)
	handMade := slice("web", 8080, slow)
	yes := true
	handMade.Labels[discoveryv1.LabelManagedBy] = "someone"
	handMade.Endpoints[0].Conditions.Ready = &yes
	orphan := slice("manual", 8080)
	orphan.Labels[discoveryv1.LabelManagedBy] = "someone"
	orphan.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"10.244.0.99"}}}
	// The API server's endpoint of default/kubernetes: beyond the Nodes'
	// Pod ranges, not a problem.
	ranged := []corev1.Node{nodeObj("node-1", "10.99.0.1"), nodeObj("node-2", "10.99.0.2")}
	ranged[0].Spec.PodCIDRs, ranged[1].Spec.PodCIDRs = []string{"10.244.0.0/24"}, []string{"10.244.1.0/24"}
	apiServer := slice("manual", 6443)
	apiServer.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"10.99.0.1"}}}
	other := web2
	other.Spec.Containers = []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8081}}}}
	return []story{
		{name: "healthy-listening-on-both-families", want: "healthy", severity: report.OK, objs: objs, net: listening(tcp("[::]:8080", 0, 4096))},
		{name: "listens-on-loopback", want: "listens-elsewhere", severity: report.Problem, evidence: "tcp 127.0.0.1:8080 (accept queue 0 of 4096)",
			objs: objs, net: listening(tcp("127.0.0.1:8080", 0, 4096))},
		{name: "listens-on-another-port", want: "not-listening", severity: report.Problem, evidence: "it listens on 0.0.0.0:9000",
			objs: objs, net: listening(tcp("0.0.0.0:9000", 0, 4096))},
		{name: "udp-only", want: "not-listening", severity: report.Problem, evidence: "udp 0.0.0.0:8080",
			objs: objs, net: listening(node.Socket{Proto: nf.UDP, Local: netip.MustParseAddrPort("0.0.0.0:8080")})},
		{name: "backlog-full", want: "backlog-full", severity: report.Problem, evidence: "(2 waiting, backlog 1)",
			objs: objs, net: listening(tcp("0.0.0.0:8080", 2, 1))},
		{name: "no-route", want: "no-route-to-endpoint", severity: report.Problem, evidence: "ip route get 10.244.0.11: no route to host (route type unreachable)",
			objs: objs, net: &node.Facts{Routes: []node.Route{{To: pod1, Type: "unreachable", Err: "no route to host"}}}},
		{name: "neighbour-failed", want: "endpoint-unanswered", severity: report.Problem, evidence: "ip neigh: 10.244.0.11 dev cbr0 FAILED",
			objs: objs, net: &node.Facts{Routes: []node.Route{toPod}, Neighbours: []node.Neighbour{{Addr: pod1, Dev: "cbr0", State: "FAILED"}}}},
		{name: "qdisc drops, ARP failed", want: "qdisc-drops", severity: report.Problem, evidence: "tc qdisc on veth3: pfifo root (dropped 7)",
			objs: objs, net: &node.Facts{Routes: []node.Route{toPod}, Neighbours: []node.Neighbour{{Addr: pod1, Dev: "cbr0", State: "FAILED"}},
				Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: pod1, Link: "veth3", Sockets: []node.Socket{tcp("0.0.0.0:8080", 0, 4096)}}},
				Qdiscs:    []node.Qdisc{{Dev: "cbr0", Kind: "noqueue", Root: true}, {Dev: "veth3", Kind: "pfifo", Root: true, Dropped: 7}}}},
		{name: "qdisc drops", want: "qdisc-drops", severity: report.Warning, evidence: "tc qdisc on veth3: pfifo root (dropped 7)",
			objs: objs, net: &node.Facts{Routes: []node.Route{toPod},
				Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: pod1, Link: "veth3", Sockets: []node.Socket{tcp("0.0.0.0:8080", 0, 4096)}}},
				Qdiscs:    []node.Qdisc{{Dev: "veth3", Kind: "pfifo", Root: true, Dropped: 7}}}},
		{name: "forwarding-off", want: "forwarding-off", severity: report.Problem, evidence: "net.ipv4.ip_forward = 0",
			objs: objs, net: &node.Facts{Routes: []node.Route{toPod}, Sysctls: map[string]string{"net.ipv4.ip_forward": "0"}}},
		{name: "sockets-unread", want: "node-facts-unread", severity: report.Info, evidence: "svctrace did not check not-listening, listens-elsewhere, backlog-full",
			objs: objs, net: &node.Facts{Routes: []node.Route{toPod}, Listeners: []node.Listeners{{Pod: "shop/web-1", Addr: pod1, Err: "no network namespace on this node holds 10.244.0.11"}}}},
		{name: "ready-but-not-serving", want: "endpoint-conditions", severity: report.Problem, evidence: "ready=true serving=false",
			objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1}, Slices: []discoveryv1.EndpointSlice{notServing}, Nodes: nodes}},
		{name: "hand-made-slice-calls-a-not-ready-pod-ready", want: "endpoint-conditions", severity: report.Problem, evidence: "managed by someone",
			objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{slow}, Slices: []discoveryv1.EndpointSlice{handMade}, Nodes: nodes}},
		{name: "address-of-no-pod", want: "endpoint-not-a-pod", severity: report.Problem, evidence: "no Pod has status.podIP 10.244.0.99",
			objs: resolve.Objects{Services: []corev1.Service{svc("manual", "10.96.1.80", nil, intstr.FromInt32(8080))}, Slices: []discoveryv1.EndpointSlice{orphan}, Nodes: nodes}},
		{name: "address-of-no-pod-in-a-pod-range", want: "endpoint-not-a-pod", severity: report.Problem, evidence: "no Pod has status.podIP 10.244.0.99",
			objs: resolve.Objects{Services: []corev1.Service{svc("manual", "10.96.1.80", nil, intstr.FromInt32(8080))}, Slices: []discoveryv1.EndpointSlice{orphan}, Nodes: ranged}},
		// No problem comes first: only what the Service is.
		{name: "address-beyond-the-pod-ranges", want: "manual-endpoints", severity: report.Info,
			objs: resolve.Objects{Services: []corev1.Service{svc("manual", "10.96.1.80", nil, intstr.FromInt32(6443))}, Slices: []discoveryv1.EndpointSlice{apiServer}, Nodes: ranged}},
		{name: "a rule drops the endpoint", want: "rule-drops-endpoint", severity: report.Problem, objs: objs,
			evidence: `a rule, not kube-proxy's, drops new connections to the endpoint 10.244.0.11:8080 forwarded by this node: table ip filter (iptables-nft), chain NP, rule 1`,
			tables:   "*filter\n:FORWARD ACCEPT [0:0]\n:NP - [0:0]\n-A FORWARD -j NP\n-A NP -d 10.244.0.11/32 -p tcp -m tcp --dport 8080 -j DROP\nCOMMIT\n"},
		{name: "a rule drops the endpoint from some sources", want: "rule-drops-endpoint", severity: report.Warning, objs: objs,
			evidence: "not evaluated, assumed not to match (it may have decided instead): chain NP, rule 1 (-s 10.99.0.0/24",
			tables:   "*filter\n:FORWARD ACCEPT [0:0]\n:NP - [0:0]\n-A FORWARD -j NP\n-A NP -s 10.99.0.0/24 -j ACCEPT\n-A NP -d 10.244.0.11/32 -j DROP\nCOMMIT\n"},
		{name: "a kube-router policy chain drops the endpoint", want: "rule-drops-endpoint", severity: report.Problem, objs: objs,
			evidence: "chain KUBE-NWPLCY-LC7BVXTLHQAU3HZE is written by kube-router (a NetworkPolicy's chain), by its name",
			tables:   "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-NWPLCY-LC7BVXTLHQAU3HZE - [0:0]\n-A FORWARD -j KUBE-NWPLCY-LC7BVXTLHQAU3HZE\n-A KUBE-NWPLCY-LC7BVXTLHQAU3HZE -d 10.244.0.11/32 -j DROP\nCOMMIT\n"},
		// kubeproxy's TestNFTTraceKernel read these: the set holds
		// 10.244.0.0/24; rule 1 tests the interface, unknown before packets.
		{name: "an nftables rule drops the endpoint", want: "rule-drops-endpoint", severity: report.Warning, objs: objs,
			evidence: `table inet e2e-fw (nftables), chain pods, rule 2: ip daddr @blocked tcp dport 8080 counter drop comment "shop/deny-walled" # handle 9`,
			nft:      "../kubeproxy/testdata/nft-other/tables.json"},
		{name: "kube-proxy's own drop is not another writer's", want: "healthy", severity: report.OK, objs: objs,
			tables: "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n-A FORWARD -j KUBE-FORWARD\n-A KUBE-FORWARD -d 10.244.0.11/32 -j DROP\nCOMMIT\n"},
		{name: "a rule drops another port", want: "healthy", severity: report.OK, objs: objs,
			tables: "*filter\n:FORWARD ACCEPT [0:0]\n:NP - [0:0]\n-A FORWARD -j NP\n-A NP -d 10.244.0.11/32 -p tcp -m tcp --dport 9090 -j DROP\nCOMMIT\n"},
		{name: "named-port-differs", want: "named-port-differs", severity: report.Warning, evidence: "http = 8081 in web-2",
			objs: resolve.Objects{Services: []corev1.Service{web}, Pods: []corev1.Pod{web1, other}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, web1)}, Nodes: nodes}},
	}
}

// rulesFor is what a healthy kube-proxy writes for the Service.
func rulesFor(s *resolve.Service) *kubeproxy.Ruleset {
	r := &kubeproxy.Ruleset{Mode: kubeproxy.ModeIPTables, Ports: map[kubeproxy.PortKey]*kubeproxy.PortRules{}}
	for i := range s.Ports {
		p := &s.Ports[i]
		pr := &kubeproxy.PortRules{PortKey: kubeproxy.PortKey{Name: p.String(), Proto: p.Protocol.String()}}
		for _, e := range p.Ready() {
			pr.Endpoints = append(pr.Endpoints, kubeproxy.EndpointRule{Addr: e.Addr})
		}
		if len(pr.Endpoints) == 0 {
			pr.Rejects = []kubeproxy.Reject{{Why: "has no endpoints", Verdict: "REJECT", Where: "filter table, chain KUBE-SERVICES"}}
		}
		r.Ports[pr.PortKey] = pr
	}
	return r
}

func check(t *testing.T, s story) (Input, []report.Finding) {
	t.Helper()
	src := resolve.FileSource{Objects: &s.objs, Path: "test"}
	name := s.objs.Services[0].Name
	v, err := resolve.Gather(context.Background(), src, shop, name, resolve.LocalNode{Name: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	in := Input{View: v, Service: resolve.NewService(v), Rules: s.rules, KubeProxyKnown: true, KubeProxy: []int{42}, Net: s.net}
	if s.rules == nil {
		in.Rules = rulesFor(in.Service)
	}
	if s.noProxy {
		in.KubeProxy = nil
	}
	if s.tables != "" {
		in.Rules.Tables = kubeproxy.ParseTables("ip", "iptables-nft", s.tables)
	}
	if s.nft != "" {
		b, err := os.ReadFile(s.nft)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &in.Rules.NFT); err != nil {
			t.Fatal(err)
		}
	}
	return in, Check(in)
}

func TestStories(t *testing.T) {
	for _, s := range stories() {
		t.Run(s.name, func(t *testing.T) {
			_, fs := check(t, s)
			if len(fs) == 0 {
				t.Fatal("no finding")
			}
			f := fs[0]
			if f.Code != s.want || f.Severity != s.severity {
				t.Fatalf("first finding %s/%s: %s, want %s/%s (all: %+v)", f.Severity, f.Code, f.Summary, s.severity, s.want, fs)
			}
			text := f.Summary + "\n" + strings.Join(f.Evidence, "\n")
			if s.evidence != "" && !strings.Contains(text, s.evidence) {
				t.Errorf("finding does not say %q:\n%s", s.evidence, text)
			}
			if f.Severity == report.Problem && len(f.Next) == 0 {
				t.Errorf("problem %s has no next step", f.Code)
			}
		})
	}
}

// A selector that matches two workloads' Pods says so after the verdict,
// naming each Deployment.
func TestSelectorSpansWorkloads(t *testing.T) {
	yes := true
	a, b := web1, web2
	a.Labels = map[string]string{"app": "web", "pod-template-hash": "6c8f9d"}
	a.OwnerReferences = []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "web-6c8f9d", Controller: &yes}}
	b.OwnerReferences = []metav1.OwnerReference{{Kind: "StatefulSet", Name: "cache", Controller: &yes}}
	objs := resolve.Objects{Services: []corev1.Service{svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Pods: []corev1.Pod{a, b}, Slices: []discoveryv1.EndpointSlice{slice("web", 8080, a, b)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}
	_, fs := check(t, story{objs: objs})
	if len(fs) < 2 || fs[0].Code != report.Healthy || fs[len(fs)-1].Code != report.SelectorSpansWorkloads ||
		!slices.Equal(fs[len(fs)-1].Evidence, []string{"Deployment web: 1 Pod(s)", "StatefulSet cache: 1 Pod(s)"}) {
		t.Errorf("findings %+v", fs)
	}
}

// The namespace story names the namespace where the Pods are.
func TestPodsInOtherNamespace(t *testing.T) {
	for _, s := range stories() {
		if s.name != "pods-in-other-namespace" {
			continue
		}
		_, fs := check(t, s)
		i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "pods-in-other-namespace" })
		if i < 0 || !strings.Contains(fs[i].Summary, "run in namespace default") || !strings.Contains(fs[i].Summary, "own namespace shop") {
			t.Fatalf("findings %+v", fs)
		}
	}
}

// A traced connection is explained with the Service port, the Pod behind
// the DNAT and the object to blame.
func TestExplain(t *testing.T) {
	ss := stories()
	vip := netip.MustParseAddrPort("10.96.1.10:80")
	client := netip.MustParseAddrPort("10.99.0.2:40000")

	healthy := ss[0]
	in, fs := check(t, healthy)
	x := NewExplainer(in, fs, nil)
	x.Lookup = resolve.Lookup(resolve.FileSource{Objects: &healthy.objs})
	c := &flow.Conn{Proto: nf.TCP, Client: client, VIP: vip, Endpoint: netip.MustParseAddrPort("10.244.0.12:8080"), Verdict: flow.Answered}
	e := x.Explain(c)
	if e.Service != "shop/web:http (ClusterIP)" || e.Pod != "shop/web-2" || e.Node != "node-1" || e.Endpoint != "ready" || e.Blame != "" {
		t.Errorf("answered: %+v", e)
	}
	if n := x.Name(client); n != "node node-2" {
		t.Errorf("client named %q, want node node-2", n)
	}
	if n := x.Name(c.Endpoint); n != "pod shop/web-2 on node-1, ready" {
		t.Errorf("endpoint named %q", n)
	}

	wrong := ss[3]
	in, fs = check(t, wrong)
	x = NewExplainer(in, fs, nil)
	c = &flow.Conn{Proto: nf.TCP, Client: client, VIP: netip.MustParseAddrPort("10.96.1.40:80"), Endpoint: netip.MustParseAddrPort("10.244.0.11:9090"), Verdict: flow.Reset}
	if e := x.Explain(c); !strings.Contains(e.Blame, "Pod shop/web-1 on node-1 (ready): nothing listens on port 9090; targetPort 9090") {
		t.Errorf("reset blame %q", e.Blame)
	}

	none := ss[1]
	in, fs = check(t, none)
	x = NewExplainer(in, fs, nil)
	d := &flow.Drop{InNode: true, Placed: true, Gap: nf.GapAfter(nf.Forward, nf.StagePreFilter)}
	c = &flow.Conn{Proto: nf.TCP, Client: client, VIP: netip.MustParseAddrPort("10.96.1.20:80"), Verdict: flow.Rejected, Drop: d}
	e = x.Explain(c)
	if e.Rule != "REJECT: shop/cart:http has no endpoints (kube-proxy, filter table, chain KUBE-SERVICES)" {
		t.Errorf("rule %q", e.Rule)
	}
	if !strings.HasPrefix(e.Blame, "Service shop/cart: the selector app=cart matches no Pod") {
		t.Errorf("blame %q", e.Blame)
	}
}

// An unknown Service names the Services the user may have meant.
func TestNotFound(t *testing.T) {
	objs := &resolve.Objects{Services: []corev1.Service{
		svc("web-frontend", "10.96.0.1", nil, intstr.FromInt32(80)),
		svc("api", "10.96.0.2", nil, intstr.FromInt32(80))}}
	other := svc("web", "10.96.0.3", nil, intstr.FromInt32(80))
	other.Namespace = "prod"
	objs.Services = append(objs.Services, other)
	_, err := resolve.Gather(context.Background(), resolve.FileSource{Objects: objs}, shop, "web", resolve.LocalNode{})
	want := `service "web" not found in namespace "shop"; did you mean "web-frontend"?; a Service "web" exists in namespace "prod": add -n prod`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

// With internalTrafficPolicy: Local and nothing external, kube-proxy
// programs only this node's endpoints: a remote one without a DNAT rule is
// expected, not "not programmed yet".
func TestInternalLocalProgramsLocalEndpointsOnly(t *testing.T) {
	remote := pod(shop, "far-1", "far", "10.244.1.5", "node-2", true)
	s := svc("far", "10.96.1.70", map[string]string{"app": "far"}, intstr.FromString("http"))
	local := corev1.ServiceInternalTrafficPolicyLocal
	s.Spec.InternalTrafficPolicy = &local
	rules := &kubeproxy.Ruleset{Mode: kubeproxy.ModeIPTables, Ports: map[kubeproxy.PortKey]*kubeproxy.PortRules{
		{Name: "shop/far:http", Proto: "tcp"}: {Rejects: []kubeproxy.Reject{{Why: "has no local endpoints", Verdict: "DROP"}}}}}
	objs := resolve.Objects{Services: []corev1.Service{s}, Pods: []corev1.Pod{remote},
		Slices: []discoveryv1.EndpointSlice{slice("far", 8080, remote)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1"), nodeObj("node-2", "10.99.0.2")}}
	_, fs := check(t, story{objs: objs, rules: rules})
	if codes := findingCodes(fs); !slices.Equal(codes, []report.Code{report.InternalLocalNoEndpoint, report.KubeProxyRejects}) {
		t.Errorf("findings %v, want internal-local-no-endpoint and kube-proxy-rejects only", codes)
	}
}

// kube-proxy accepts NodePorts only on the node's primary address (nftables
// mode's default): a NodePort Service says so, and a connection to the
// NodePort on another address of the node is blamed on it.
func TestNodePortOnAnAddressKubeProxyIgnores(t *testing.T) {
	web := pod(shop, "web-1", "web", "10.244.0.11", "node-1", true)
	s := svc("np", "10.96.1.90", map[string]string{"app": "web"}, intstr.FromString("http"))
	s.Spec.Type, s.Spec.Ports[0].NodePort = corev1.ServiceTypeNodePort, 30090
	objs := resolve.Objects{Services: []corev1.Service{s}, Pods: []corev1.Pod{web},
		Slices: []discoveryv1.EndpointSlice{slice("np", 8080, web)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}
	in, _ := check(t, story{objs: objs})
	in.Rules.Mode, in.Rules.NodePortWhere = kubeproxy.ModeNFTables, "table ip kube-proxy, set nodeport-ips"
	in.Rules.NodePortAddrs = []netip.Prefix{netip.MustParsePrefix("10.99.0.1/32"), netip.MustParsePrefix("fd00:10:99::1/128")}
	second := netip.MustParseAddr("10.98.0.1")
	// The node is dual-stack, the Service IPv4 only: its NodePort is not
	// served on the IPv6 addresses at all, accepted or not.
	in.NodeAddrs = []netip.Addr{netip.MustParseAddr("10.99.0.1"), second, netip.MustParseAddr("fd00:10:99::1"), netip.MustParseAddr("fd00:10:98::1")}
	fs := Check(in)
	i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "nodeport-addresses" })
	if i < 0 || !strings.Contains(fs[i].Summary, "accepts NodePort 30090 only on 10.99.0.1; on this node's other addresses (10.98.0.1)") {
		t.Fatalf("findings %+v", fs)
	}
	if fs[0].Code != "healthy" {
		t.Errorf("first finding %s, want healthy: the Service works on its NodePort addresses", fs[0].Code)
	}

	x := NewExplainer(in, fs, in.NodeAddrs)
	c := &flow.Conn{Proto: nf.TCP, Client: netip.MustParseAddrPort("10.99.0.2:40000"),
		VIP: netip.AddrPortFrom(second, 30090), Verdict: flow.Reset}
	e := x.Explain(c)
	if e.Service != "shop/np:http (NodePort)" ||
		!strings.HasPrefix(e.Blame, "kube-proxy does not accept NodePorts on 10.98.0.1, so nothing translated 10.98.0.1:30090; use one of its NodePort addresses (nftables mode, table ip kube-proxy, set nodeport-ips: 10.99.0.1") {
		t.Errorf("%+v", e)
	}
	// On the accepted address the NodePort is explained as usual.
	c = &flow.Conn{Proto: nf.TCP, Client: c.Client, VIP: netip.MustParseAddrPort("10.99.0.1:30090"),
		Endpoint: netip.MustParseAddrPort("10.244.0.11:8080"), Verdict: flow.Answered}
	if e := x.Explain(c); e.Blame != "" || e.Pod != "shop/web-1" {
		t.Errorf("%+v", e)
	}
}

// sessionAffinity: ClientIP: the finding lists the clients kube-proxy
// remembers, and each connection's note says where its pin sent it, from
// the state read with the rules and then from the connections before it.
func TestSessionAffinity(t *testing.T) {
	web1, web2 := pod(shop, "web-1", "web", "10.244.0.11", "node-1", true), pod(shop, "web-2", "web", "10.244.0.12", "node-1", true)
	s := svc("sticky", "10.96.1.60", map[string]string{"app": "web"}, intstr.FromString("http"))
	s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	objs := resolve.Objects{Services: []corev1.Service{s}, Pods: []corev1.Pod{web1, web2},
		Slices: []discoveryv1.EndpointSlice{slice("sticky", 8080, web1, web2)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}
	in, _ := check(t, story{objs: objs})
	ep1, ep2 := netip.MustParseAddrPort("10.244.0.11:8080"), netip.MustParseAddrPort("10.244.0.12:8080")
	pr := in.Rules.Port("shop/sticky:http", "tcp")
	pr.AffinityTimeout = 3 * time.Hour
	pr.Affinity = []kubeproxy.Affinity{{Client: netip.MustParseAddr("10.99.0.2"), Endpoint: ep1, Idle: 5 * time.Second, Where: "recent list KUBE-SEP-A"}}
	fs := Check(in)
	i := slices.IndexFunc(fs, func(f report.Finding) bool { return f.Code == "session-affinity" })
	if i < 0 || !strings.Contains(fs[i].Summary, "until the client has been idle for 3h; it remembers 1 client(s)") ||
		!slices.Equal(fs[i].Evidence, []string{"10.99.0.2 → 10.244.0.11:8080 (pod shop/web-1), last connected 5s before svctrace read it (recent list KUBE-SEP-A)"}) {
		t.Fatalf("findings %+v", fs)
	}

	x := NewExplainer(in, fs, nil)
	vip := netip.MustParseAddrPort("10.96.1.60:80")
	conn := func(id int, client string, ep netip.AddrPort) *flow.Conn {
		return &flow.Conn{ID: id, Proto: nf.TCP, Client: netip.MustParseAddrPort(client), VIP: vip, Endpoint: ep, Verdict: flow.Answered}
	}
	const head = "sessionAffinity: ClientIP (3h): "
	for _, c := range []struct {
		conn *flow.Conn
		note string
	}{
		{conn(1, "10.99.0.2:40000", ep1), "kube-proxy had pinned 10.99.0.2 → 10.244.0.11:8080, last connected 5s before svctrace read it (recent list KUBE-SEP-A), and sent it there again"},
		{conn(2, "10.99.0.2:40001", ep1), "10.99.0.2 went to 10.244.0.11:8080 again, as its connection #1 did"},
		{conn(3, "10.99.0.2:40002", ep2), "10.99.0.2 went to 10.244.0.12:8080, not to 10.244.0.11:8080 as its connection #2 did: that pin had expired or its endpoint left"},
		{conn(4, "10.99.0.3:40000", ep2), "10.99.0.3 was not pinned when svctrace read kube-proxy's rules; its new connections now go to 10.244.0.12:8080"},
		// Explained again (another output), a connection keeps its note.
		{conn(2, "10.99.0.2:40001", ep1), "10.99.0.2 went to 10.244.0.11:8080 again, as its connection #1 did"},
	} {
		if e := x.Explain(c.conn); !slices.Equal(e.Notes, []string{head + c.note}) {
			t.Errorf("connection #%d: notes %q\nwant %q", c.conn.ID, e.Notes, head+c.note)
		}
	}
}

// A Pod reaching itself through its Service, dropped by the bridge: blamed
// on its port's hairpin_mode when the port is known and off, on the
// bridge's when every port has it off. (The diagnosis does not warn
// beforehand: with kubenet's promiscuous-bridge mode, hairpin works with
// hairpin_mode off, and most Pods never call their own Service.)
func TestHairpin(t *testing.T) {
	web := pod(shop, "web-2", "web", "10.244.0.12", "node-1", true)
	objs := resolve.Objects{Services: []corev1.Service{svc("self", "10.96.1.70", map[string]string{"app": "web"}, intstr.FromString("http"))},
		Pods: []corev1.Pod{web}, Slices: []discoveryv1.EndpointSlice{slice("self", 8080, web)}, Nodes: []corev1.Node{nodeObj("node-1", "10.99.0.1")}}
	in, _ := check(t, story{objs: objs})
	ep := netip.MustParseAddrPort("10.244.0.12:8080")
	self := &flow.Conn{Proto: nf.TCP, Client: netip.MustParseAddrPort("10.244.0.12:41000"), VIP: netip.MustParseAddrPort("10.96.1.70:80"),
		Endpoint: ep, Verdict: flow.Dropped, Drop: &flow.Drop{InNode: true, Placed: true, Reason: "NOT_SPECIFIED", Location: "br_handle_frame_finish+0x380"}}
	cbr0 := func(ports ...resolve.BridgePort) []resolve.Bridge {
		return []resolve.Bridge{{Name: "cbr0", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}, Ports: ports}}
	}
	const head = "hairpin: Pod shop/web-2 reached itself through the Service; "
	for _, c := range []struct {
		name    string
		bridges []resolve.Bridge
		blame   string // "" : not a hairpin blame
	}{
		{"port known", cbr0(resolve.BridgePort{Name: "veth1"}, resolve.BridgePort{Name: "veth2", Addrs: []netip.Addr{ep.Addr()}}),
			head + "the DNAT sent its packet back out port veth2 of bridge cbr0, the port it came in on, and that port's hairpin_mode is off"},
		{"port unknown, every port off", cbr0(resolve.BridgePort{Name: "veth1"}, resolve.BridgePort{Name: "veth2"}),
			head + "the DNAT sent its packet back to the bridge port it came in on, and no port of bridge cbr0 has hairpin_mode on"},
		{"hairpin on", cbr0(resolve.BridgePort{Name: "veth2", Hairpin: true, Addrs: []netip.Addr{ep.Addr()}}), ""},
		{"no bridge", nil, "hairpin: Pod shop/web-2 reached itself through the Service, and the packet"},
	} {
		t.Run(c.name, func(t *testing.T) {
			in.Bridges = c.bridges
			e := NewExplainer(in, Check(in), nil).Explain(self)
			if hairpin := strings.HasPrefix(e.Blame, "hairpin"); (c.blame == "" && hairpin) || !strings.HasPrefix(e.Blame, c.blame) {
				t.Errorf("blame %q, want %q…", e.Blame, c.blame)
			}
		})
	}
}
