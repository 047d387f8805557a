// End-to-end tests: svctrace against the rules the real kube-proxy writes,
// in each of its modes, on a throwaway control plane (test/cluster).
package e2e

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestMain(m *testing.M) {
	lab.ServeIfChild() // pod servers are this binary, started again
	cluster.Cleanup()  // what crashed runs left behind
	os.Exit(m.Run())
}

const shop = "shop" // the Services' namespace

// story is one classic failure (or none) set up in a real cluster.
type story struct {
	name string
	// orExpect is another verdict the story may give (when the node's ICMP
	// error, rate-limited, may not come).
	orExpect flow.Verdict
	// expect is the traced connection's verdict; "" when the client's
	// connection is not traced by the in-process tracer (nothing to
	// translate: headless, ExternalName).
	expect flow.Verdict
	// rejected: kube-proxy rejects the client's packet in FORWARD's filter
	// stage (the expected hook for a rejected story).
	rejected bool
	// droppedIn: for a Dropped story, the hook in whose filter stage
	// kube-proxy drops the client's packet.
	droppedIn nf.Hook
	svc       *corev1.Service
	pods      []cluster.PodSpec
	// to is where the client connects (nil: the ClusterIP), and via the
	// kind of Service address that is ("" : ClusterIP).
	to  func(c *cluster.Cluster, s *story) netip.AddrPort
	via string
	// untranslated: nothing DNATs the client's packets, whatever the
	// verdict (a NodePort on an address kube-proxy ignores).
	untranslated bool
	// keepsClient: the Pod sees the client's own address (no SNAT).
	keepsClient bool
	// hairpin: the story's only Pod is the client, calling its own
	// Service; from is that Pod, once added.
	hairpin bool
	from    *cluster.Pod
	// client, if set, is a Pod the story's request comes from (from, once
	// added), in a namespace of its own.
	client *cluster.PodSpec
	// ipv6: the Service is dual-stack, and the client uses its IPv6
	// ClusterIP, to the Pods' IPv6 addresses.
	ipv6 bool
	// forget: the client asks twice on one connection, and the node's
	// conntrack entry of it is deleted in between, with
	// nf_conntrack_tcp_loose=0: the second request is INVALID.
	forget bool
	// notes must each be part of the traced connection's explanation notes.
	notes []string
	// await waits until the cluster has done its part; nil waits for
	// kube-proxy to DNAT to the ready endpoints or, with none, reject.
	await func(ctx context.Context, c *cluster.Cluster, s *story, ready []netip.AddrPort) error
	// finding is the first finding svctrace check must report, and
	// summary a part of its summary ("" : any).
	finding report.Code
	summary string
	// rule must start the rule that turned the connection away ("" : none
	// expected; a rejected story expects kube-proxy's "has no endpoints").
	rule string
	// blame must start the traced connection's blame line ("" : no blame).
	blame string
	// cause is the blame's code ("" : not checked), and evidence a part of
	// one of its evidence lines ("" : none needed).
	cause    report.Code
	evidence string
	// setup, if set, changes the cluster once the story's objects exist
	// (a hand-made EndpointSlice, a route, a sysctl).
	setup func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error
	// endpointNode is the node of the Pod behind the endpoint ("" : this
	// node); noPod: the endpoint is an address no Pod holds.
	endpointNode string
	noPod        bool
	// request, if set, is the story's client instead of an HTTP GET.
	request func(ctx context.Context, c *cluster.Cluster, addr netip.AddrPort, timeout time.Duration)
	// source, if set, is the client's source address for the story's
	// request (a second address of the client).
	source func(c *cluster.Cluster) netip.Addr
	// afterDNAT: a Dropped story's packet dies after kube-proxy's DNAT to
	// a ready endpoint (a rule, a qdisc, a policy on the way to the Pod).
	afterDNAT bool
	// handMade are the endpoints of the story's hand-made EndpointSlice,
	// set by its setup: kube-proxy's DNAT goes there.
	handMade []netip.AddrPort
}

func service(name, vip string, selector map[string]string, target intstr.IntOrString) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: shop},
		Spec: corev1.ServiceSpec{ClusterIP: vip, Selector: selector,
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: target}}},
	}
}

func pod(ns, name, app, serve string, ready bool) cluster.PodSpec {
	return cluster.PodSpec{Namespace: ns, Name: name, Labels: map[string]string{"app": app},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		Serve: serve, Listen: []int{8080}, Ready: ready}
}

// otherNode is a second node: endpoints there are what traffic policy
// Local stories need.
const otherNode = "node-2"

func onOtherNode(p cluster.PodSpec) cluster.PodSpec {
	p.Node, p.Serve, p.Listen = otherNode, "", nil
	return p
}

func waitLocalDrop(ctx context.Context, c *cluster.Cluster, s *story, _ []netip.AddrPort) error {
	return c.WaitLocalDrop(ctx, s.svc)
}

// waitSlices waits for the EndpointSlice controller only: kube-proxy writes
// nothing for the story.
func waitSlices(ctx context.Context, c *cluster.Cluster, s *story, ready []netip.AddrPort) error {
	return c.WaitEndpoints(ctx, s.svc, len(ready))
}

// Where a story's client connects, other than the ClusterIP.
func toNodePort(c *cluster.Cluster, s *story) netip.AddrPort {
	return netip.AddrPortFrom(c.NodeIP, uint16(s.svc.Spec.Ports[0].NodePort))
}

// toNodePortOnUplink: the NodePort on the node's other address, the one
// facing its upstream router.
func toNodePortOnUplink(c *cluster.Cluster, s *story) netip.AddrPort {
	return netip.AddrPortFrom(c.UplinkIP(), uint16(s.svc.Spec.Ports[0].NodePort))
}

func toExternalIP(_ *cluster.Cluster, s *story) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(s.svc.Spec.ExternalIPs[0]), uint16(s.svc.Spec.Ports[0].Port))
}

func toLoadBalancerIP(_ *cluster.Cluster, s *story) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(s.svc.Status.LoadBalancer.Ingress[0].IP), uint16(s.svc.Spec.Ports[0].Port))
}

// waitAddress waits for the endpoints' DNAT and for kube-proxy's rules to
// name the external or load-balancer IP the client connects to (a
// load-balancer IP comes in a status update after the Service).
func waitAddress(ctx context.Context, c *cluster.Cluster, s *story, ready []netip.AddrPort) error {
	if err := c.WaitService(ctx, s.svc, map[string][]netip.AddrPort{"http": ready}); err != nil {
		return err
	}
	ip := dest(c, s).Addr().String()
	return c.WaitRules(ctx, "the rules for "+ip, func(rules string) bool { return strings.Contains(rules, ip) })
}

// dualStack is a Service that requires both families, with these
// ClusterIPs.
func dualStack(name, vip4, vip6 string) *corev1.Service {
	s := service(name, vip4, map[string]string{"app": name}, intstr.FromString("http"))
	policy := corev1.IPFamilyPolicyRequireDualStack
	s.Spec.IPFamilyPolicy, s.Spec.ClusterIPs = &policy, []string{vip4, vip6}
	return s
}

// nodePortService is a Service of type NodePort (LoadBalancer with lb) on
// a fixed node port.
func nodePortService(name, vip string, port int32, lb bool) *corev1.Service {
	s := service(name, vip, map[string]string{"app": name}, intstr.FromString("http"))
	s.Spec.Type = corev1.ServiceTypeNodePort
	if lb {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
	}
	s.Spec.Ports[0].NodePort = port
	return s
}

// Test addresses (RFC 5737) for an external IP and a load balancer: the
// client's packets reach the node through its default route and go no
// further than the node's upstream namespace.
const (
	externalIP     = "192.0.2.10"
	loadBalancerIP = "198.51.100.10"
)

// beyondClusterIP are the stories of the other ways in: NodePorts on each
// node address, external and load-balancer IPs, externalTrafficPolicy
// Local with a local endpoint; and session affinity.
func beyondClusterIP(mode cluster.Mode) []*story {
	np := nodePortService("np", "10.96.1.110", 30080, false)
	np2 := nodePortService("np2", "10.96.1.120", 30081, false)
	ext := service("ext", "10.96.1.130", map[string]string{"app": "ext"}, intstr.FromString("http"))
	ext.Spec.ExternalIPs = []string{externalIP}
	lb := nodePortService("lb", "10.96.1.140", 30082, true)
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: loadBalancerIP}}
	sticky := service("sticky", "10.96.1.160", map[string]string{"app": "sticky"}, intstr.FromString("http"))
	sticky.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
	local := nodePortService("local", "10.96.1.150", 30083, false)
	local.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	one := func(name string) []cluster.PodSpec {
		return []cluster.PodSpec{pod(shop, name+"-1", name, lab.ModeHTTP, true)}
	}
	ss := []*story{
		{name: "nodeport", expect: flow.Answered, finding: "healthy", svc: np, pods: one("np"), to: toNodePort, via: "NodePort",
			notes: []string{"externalTrafficPolicy: Cluster: the connection was masqueraded to "}},
		// iptables mode accepts NodePorts on every local address; nftables
		// mode by default only on the node's primary address.
		{name: "nodeport-on-another-node-address", expect: flow.Answered, finding: "healthy", svc: np2, pods: one("np2"),
			to: toNodePortOnUplink, via: "NodePort"},
		{name: "external-ip", expect: flow.Answered, finding: "healthy", svc: ext, pods: one("ext"), to: toExternalIP, via: "external IP",
			await: waitAddress},
		{name: "load-balancer-ip", expect: flow.Answered, finding: "healthy", svc: lb, pods: one("lb"), to: toLoadBalancerIP,
			via: "load-balancer IP", await: waitAddress},
		{name: "external-traffic-policy-local-served-here", expect: flow.Answered, finding: "healthy", svc: local, pods: one("local"),
			to: toNodePort, via: "NodePort", keepsClient: true,
			notes: []string{"externalTrafficPolicy: Local: the Pod sees the client's own address "}},
		// The node's bridge ports have hairpin_mode off, as with the CNI
		// bridge plugin's default: the bridge drops the DNAT'ed SYN.
		{name: "hairpin", expect: flow.Dropped, hairpin: true, finding: "healthy", svc: service("self", "10.96.1.170", map[string]string{"app": "self"}, intstr.FromString("http")),
			pods:  []cluster.PodSpec{pod(shop, "self-1", "self", lab.ModeHTTP, true)},
			blame: "hairpin: Pod shop/self-1 reached itself through the Service; the DNAT sent its packet back"},
		// Traced first by the test itself, then by svctrace, which reads
		// kube-proxy's memory of that first connection.
		{name: "session-affinity", expect: flow.Answered, finding: "healthy", svc: sticky,
			pods:  []cluster.PodSpec{pod(shop, "sticky-1", "sticky", lab.ModeHTTP, true), pod(shop, "sticky-2", "sticky", lab.ModeHTTP, true)},
			notes: []string{"sessionAffinity: ClientIP (3h): kube-proxy had pinned ", "and sent it there again"}},
	}
	ss = append(ss,
		&story{name: "dual-stack-over-ipv6", expect: flow.Answered, finding: "healthy", svc: dualStack("dual", "10.96.1.180", "fd00:10:96::b4"),
			pods: one("dual"), ipv6: true},
		// The Pod's server is bound to 0.0.0.0: its IPv6 address refuses.
		&story{name: "ipv4-only-server", expect: flow.Reset, finding: "listens-elsewhere", summary: "its server listens on 0.0.0.0:8080, IPv4 only",
			svc:  dualStack("legacy", "10.96.1.190", "fd00:10:96::be"),
			pods: []cluster.PodSpec{pod(shop, "legacy-1", "legacy", lab.ModeHTTP4, true)}, ipv6: true,
			cause: report.ListensElsewhere, evidence: "tcp 0.0.0.0:8080",
			blame: "Pod shop/legacy-1 on node-1 (ready): nothing listens on port 8080 over IPv6; the Pod's IPv4 endpoint is 10.244."})
	if mode == cluster.NFTables {
		s := ss[1]
		s.expect, s.untranslated = flow.Reset, true
		s.blame = "kube-proxy does not accept NodePorts on "
	}
	return ss
}

func stories() []*story {
	byName := intstr.FromString("http")
	local := corev1.ServiceInternalTrafficPolicyLocal
	itp := service("itp", "10.96.1.80", map[string]string{"app": "itp"}, byName)
	itp.Spec.InternalTrafficPolicy = &local
	etp := service("etp", "10.96.1.90", map[string]string{"app": "etp"}, byName)
	etp.Spec.Type, etp.Spec.ExternalTrafficPolicy = corev1.ServiceTypeNodePort, corev1.ServiceExternalTrafficPolicyLocal
	etp.Spec.Ports[0].NodePort = 30090
	headless := service("headless", corev1.ClusterIPNone, map[string]string{"app": "headless"}, byName)
	external := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "external", Namespace: shop},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.invalid"}}
	ss := []*story{
		{name: "healthy", expect: flow.Answered, finding: "healthy",
			svc:  service("web", "10.96.1.10", map[string]string{"app": "web"}, byName),
			pods: []cluster.PodSpec{pod(shop, "web-1", "web", lab.ModeHTTP, true), pod(shop, "web-2", "web", lab.ModeHTTP, true)}},
		{name: "selector-matches-no-pod", expect: flow.Rejected, rejected: true, finding: "selector-matches-no-pod",
			blame: "Service shop/nomatch: the selector app=nobody matches no Pod in namespace shop",
			svc:   service("nomatch", "10.96.1.20", map[string]string{"app": "nobody"}, intstr.FromInt32(8080))},
		{name: "only-endpoint-not-ready", expect: flow.Rejected, rejected: true, finding: "no-ready-pods",
			blame: "Pod shop/notready-1: the selector app=notready matches 1 Pod(s), but none is Ready",
			svc:   service("notready", "10.96.1.30", map[string]string{"app": "notready"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "notready-1", "notready", lab.ModeHTTP, false)}},
		{name: "wrong-targetport", expect: flow.Reset, finding: "targetport-not-exposed",
			cause: report.TargetPortNotExposed, evidence: "tcp [::]:8080",
			blame: "Pod shop/wrongport-1 on node-1 (ready): nothing listens on port 9090; targetPort 9090 of shop/wrongport:http is not a port",
			svc:   service("wrongport", "10.96.1.40", map[string]string{"app": "wrongport"}, intstr.FromInt32(9090)),
			pods:  []cluster.PodSpec{pod(shop, "wrongport-1", "wrongport", lab.ModeHTTP, true)}},
		{name: "pod-in-another-namespace", expect: flow.Rejected, rejected: true, finding: "selector-matches-no-pod",
			blame: "Service shop/api: the selector app=api matches no Pod in namespace shop",
			svc:   service("api", "10.96.1.50", map[string]string{"app": "api"}, byName),
			pods:  []cluster.PodSpec{pod("default", "api-1", "api", lab.ModeHTTP, true)}},
		{name: "pod-stops-answering", expect: flow.NoReply, finding: "backlog-full", summary: "its accept queue is full (2 waiting, backlog 1)",
			cause: report.BacklogFull, evidence: "tcp 0.0.0.0:8080 (accept queue 2 of 1)",
			blame: "Pod shop/hung-1 on node-1 (ready) did not answer on port 8080: its server does not accept connections; the accept queue of 0.0.0.0:8080 is full",
			svc:   service("hung", "10.96.1.60", map[string]string{"app": "hung"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "hung-1", "hung", lab.ModeHung, true)}},
		{name: "selector-less-without-endpointslices", expect: flow.Rejected, rejected: true, finding: "no-selector-no-endpointslices",
			blame: "Service shop/manual: the Service has no selector and no EndpointSlice",
			svc:   service("manual", "10.96.1.70", nil, intstr.FromInt32(8080))},
		{name: "internal-traffic-policy-local", expect: flow.Dropped, droppedIn: nf.Forward, finding: "internal-local-no-endpoint",
			rule:  "DROP: shop/itp:http has no local endpoints (kube-proxy",
			blame: "Service shop/itp: internalTrafficPolicy: Local, and no ready endpoint of shop/itp:http runs on node node-1",
			svc:   itp, pods: []cluster.PodSpec{onOtherNode(pod(shop, "itp-1", "itp", "", true))}, await: waitLocalDrop},
		{name: "external-traffic-policy-local", expect: flow.Dropped, droppedIn: nf.LocalIn, finding: "external-local-no-endpoint",
			rule:  "DROP: shop/etp:http has no local endpoints (kube-proxy",
			blame: "Service shop/etp: externalTrafficPolicy: Local, and no ready endpoint of shop/etp:http runs on node node-1",
			svc:   etp, to: toNodePort, via: "NodePort", pods: []cluster.PodSpec{onOtherNode(pod(shop, "etp-1", "etp", "", true))}, await: waitLocalDrop},
		{name: "headless", finding: "headless", svc: headless, await: waitSlices,
			pods: []cluster.PodSpec{pod(shop, "headless-1", "headless", lab.ModeHTTP, true)}},
		{name: "externalname", finding: "externalname", svc: external,
			await: func(context.Context, *cluster.Cluster, *story, []netip.AddrPort) error { return nil }},
	}
	for _, s := range ss {
		if s.rejected {
			s.rule = "REJECT: shop/" + s.svc.Name + ":http has no endpoints (kube-proxy"
		}
	}
	return ss
}

// afterKubeProxyDies are the stories told once kube-proxy has died: a
// Service created then has endpoints, but no rules on the node. In
// iptables mode its ClusterIP leaves the node untranslated; in nftables
// mode kube-proxy's older rules drop it as an unallocated ClusterIP.
func afterKubeProxyDies(mode cluster.Mode) []*story {
	s := &story{name: "kube-proxy-not-running", expect: flow.NotTranslated, finding: "no-rules-for-service", summary: "kube-proxy is not running here",
		blame: "kube-proxy on node-1: kube-proxy (" + string(mode) + " mode) has no rules for shop/late:http on this node",
		svc:   service("late", "10.96.1.100", map[string]string{"app": "late"}, intstr.FromString("http")),
		pods:  []cluster.PodSpec{pod(shop, "late-1", "late", lab.ModeHTTP, true)}, await: waitSlices}
	if mode == cluster.NFTables {
		s.expect, s.droppedIn = flow.Dropped, nf.Forward
		s.rule = "DROP: 10.96.1.100:80 is in the service range 10.96.0.0/16, but kube-proxy has no ClusterIP 10.96.1.100 (kube-proxy, table ip kube-proxy, chain cluster-ips-check"
	}
	return []*story{s}
}

// conntrackInvalid is the story of a connection whose conntrack entry is
// deleted while it is open. iptables mode drops the INVALID packet that
// follows in KUBE-FORWARD; nftables mode has no such rule, and the packet
// leaves the node untranslated.
func conntrackInvalid(mode cluster.Mode) *story {
	s := &story{name: "conntrack-invalid", expect: flow.Dropped, droppedIn: nf.Forward, finding: "healthy", forget: true,
		svc:   service("kept", "10.96.1.200", map[string]string{"app": "kept"}, intstr.FromString("http")),
		pods:  []cluster.PodSpec{pod(shop, "kept-1", "kept", lab.ModeHTTP, true)},
		rule:  "DROP: conntrack state INVALID (kube-proxy, filter table, chain KUBE-FORWARD)",
		blame: "conntrack found the client's PSH,ACK INVALID: it had no entry, as its connection's entry was gone"}
	if mode == cluster.NFTables {
		s.expect, s.droppedIn, s.rule = flow.NotTranslated, 0, ""
	}
	return s
}

// get makes the story's request: from the client outside the cluster, or
// for a hairpin from the Pod itself.
func (s *story) get(ctx context.Context, c *cluster.Cluster, addr netip.AddrPort, timeout time.Duration) {
	if s.forget {
		lab.KeptAlive(ctx, c.ClientNS, addr, timeout, func(local netip.AddrPort) error {
			return topo.ForgetConnection(c.Node, local, addr)
		})
		return
	}
	if s.from != nil {
		lab.HTTPGet(ctx, s.from.NS, addr, "/", timeout)
		return
	}
	if s.request != nil {
		s.request(ctx, c, addr, timeout)
		return
	}
	if s.source != nil {
		nf.InNetNS(c.ClientNS, func() error {
			d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{IP: s.source(c).AsSlice()}}
			conn, err := d.DialContext(ctx, "tcp", addr.String())
			if err == nil {
				conn.Close()
			}
			return err
		})
		return
	}
	c.Get(ctx, addr, "/", timeout)
}

// dest is where the story's client connects: the ClusterIP, or another
// address of the Service.
func dest(c *cluster.Cluster, s *story) netip.AddrPort {
	if s.to != nil {
		return s.to(c, s)
	}
	vip := netip.MustParseAddr(s.svc.Spec.ClusterIP)
	if s.ipv6 {
		vip = netip.MustParseAddr(s.svc.Spec.ClusterIPs[1])
	}
	return netip.AddrPortFrom(vip, uint16(s.svc.Spec.Ports[0].Port))
}

// endpoints are the ready endpoints kube-proxy should use for s: the ready
// pods in the Service's namespace that its selector matches, at its target
// port (by number, or the pod's port of that name).
func endpoints(s *story, pods []*cluster.Pod) []netip.AddrPort {
	var eps []netip.AddrPort
	if len(s.svc.Spec.Ports) == 0 {
		return nil
	}
	target := s.svc.Spec.Ports[0].TargetPort
	for i, spec := range s.pods {
		if !spec.Ready || spec.Namespace != s.svc.Namespace || spec.Labels["app"] != s.svc.Spec.Selector["app"] {
			continue
		}
		port := int(target.IntVal)
		if target.Type == intstr.String {
			for _, p := range spec.Ports {
				if p.Name == target.StrVal {
					port = int(p.ContainerPort)
				}
			}
		}
		ip := pods[i].IP
		if s.ipv6 {
			ip = pods[i].IP6
		}
		eps = append(eps, netip.AddrPortFrom(ip, uint16(port)))
	}
	return eps
}

func TestStories(t *testing.T) {
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables, cluster.IPTablesLegacy} {
		t.Run(string(mode), func(t *testing.T) {
			c := cluster.Up(t, cluster.Options{Mode: mode})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, n := range []string{otherNode, unroutedNode} {
				if err := c.AddNode(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
			ss := append(append(append(stories(), beyondClusterIP(mode)...), conntrackInvalid(mode)), evidenceStories(mode)...)
			play(t, c, ss)
			t.Run("every-service", func(t *testing.T) { everyService(t, c, ss) })
			c.StopKubeProxy()
			play(t, c, afterKubeProxyDies(mode))
		})
	}
}

// play sets the stories up, traces one connection of each client, holds
// each verdict and explanation, and runs svctrace itself as an operator
// would.
func play(t *testing.T, c *cluster.Cluster, ss []*story) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ready := map[*story][]netip.AddrPort{}
	for _, s := range ss {
		var pods []*cluster.Pod
		for _, ps := range s.pods {
			p, err := c.AddPod(ctx, ps)
			if err != nil {
				t.Fatal(err)
			}
			pods = append(pods, p)
		}
		svc, err := c.CreateService(ctx, s.svc)
		if err != nil {
			t.Fatal(err)
		}
		s.svc = svc
		if s.hairpin {
			s.from = pods[0]
		}
		if s.client != nil {
			if s.from, err = c.AddPod(ctx, *s.client); err != nil {
				t.Fatal(err)
			}
		}
		if s.forget {
			if err := topo.Sysctl(c.Node, "net.netfilter.nf_conntrack_tcp_loose", "0"); err != nil {
				t.Fatal(err)
			}
		}
		ready[s] = endpoints(s, pods)
		if s.setup != nil {
			if err := s.setup(ctx, c, s, pods); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			if s.handMade != nil {
				ready[s] = s.handMade
			}
		}
	}
	for _, s := range ss {
		var err error
		if s.await != nil {
			err = s.await(ctx, c, s, ready[s])
		} else {
			err = c.WaitService(ctx, s.svc, map[string][]netip.AddrPort{"http": ready[s]})
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	var targets []nf.Target
	dests := map[netip.AddrPort]bool{}
	var traced []*story
	for _, s := range ss {
		if s.expect == "" {
			continue
		}
		traced = append(traced, s)
		proto := nf.TCP
		if s.svc.Spec.Ports[0].Protocol == corev1.ProtocolUDP {
			proto = nf.UDP
		}
		targets = append(targets, nf.Target{Addr: dest(c, s), Proto: proto})
		// The endpoints too, as svctrace SERVICE watches them: what
		// happens to the client's packets inside the Pod.
		for _, ep := range ready[s] {
			targets = append(targets, nf.Target{Addr: ep, Proto: proto})
		}
		dests[dest(c, s)] = true
	}
	tr, err := tracer.Open(tracer.Options{NetNS: c.Node.Path, Targets: targets})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	const timeout = 1500 * time.Millisecond
	conns, res, err := live.Collect(ctx, tr, live.Options{Flow: flow.Options{
		NodeNetNS: c.Node.Inode, Timeout: timeout,
		IsService: func(_ nf.Proto, a netip.AddrPort) bool { return dests[a] },
	}}, func() {
		var wg sync.WaitGroup
		for _, s := range traced {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.get(ctx, c, dest(c, s), timeout)
			}()
		}
		wg.Wait()
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Lost != 0 {
		t.Errorf("%d events lost", res.Lost)
	}

	for _, s := range traced {
		t.Run(s.name, func(t *testing.T) {
			var got []*flow.Conn
			for _, conn := range conns {
				if conn.VIP == dest(c, s) {
					got = append(got, conn)
				}
			}
			if len(got) != 1 {
				t.Fatalf("%d connections to %s traced, want 1", len(got), dest(c, s))
			}
			conn := got[0]
			if conn.Verdict != s.expect && (s.orExpect == "" || conn.Verdict != s.orExpect) {
				t.Fatalf("verdict %s (%s), want %s", conn.Verdict, describe.Reason(conn), s.expect)
			}
			eps := ready[s]
			// kube-proxy DNATs to a ready endpoint: the bridge drops a
			// hairpin after that.
			translated := (s.expect != flow.Dropped && s.expect != flow.NotTranslated && !s.untranslated) || s.hairpin || s.forget || s.afterDNAT
			if translated && len(eps) > 0 && !slices.Contains(eps, conn.Endpoint) {
				t.Errorf("DNAT to %s, not one of the ready endpoints %v", conn.Endpoint, eps)
			}
			if (!translated || len(eps) == 0) && conn.Endpoint.IsValid() {
				t.Errorf("DNAT to %s, but no ready endpoint is reachable from this node", conn.Endpoint)
			}
			if translated && len(eps) > 0 && s.expect != flow.Dropped && s.expect != flow.Rejected && conn.SNAT.IsValid() == s.keepsClient {
				t.Errorf("SNAT to %s; want the client address kept: %v", conn.SNAT, s.keepsClient)
			}
			// For a forwarded client, kube-proxy rejects in the filter stage of
			// FORWARD in every mode: iptables' filter table (KUBE-SERVICES from
			// FORWARD), nftables' filter-forward chain at priority 0.
			hook := s.droppedIn
			if s.rejected && hook == 0 {
				hook = nf.Forward
			}
			switch {
			case s.hairpin:
				if d := conn.Drop; d == nil || !d.Placed || d.Gap.Hook != nf.PreRouting || !strings.HasPrefix(d.Location, "br_") {
					t.Errorf("packet %+v, want dropped by the bridge in PREROUTING", d)
				}
			case s.rejected || (s.expect == flow.Dropped && s.droppedIn != 0):
				if d := conn.Drop; d == nil || !d.Placed || d.Gap.Hook != hook || d.Gap.What() != "filter table (0)" {
					t.Errorf("packet %+v, want dropped in %s's filter stage", d, hook)
				}
			}
			explainStory(t, c, s, conn)
		})
	}
	checkStories(t, c, ss)
}

// Two clusters up at the same time do not collide: each answers through
// its own kube-proxy.
func TestClustersSideBySide(t *testing.T) {
	cluster.RequireBinaries(t)
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			c := cluster.Up(t, cluster.Options{Mode: mode})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p, err := c.AddPod(ctx, pod(shop, "web-1", "web", lab.ModeHTTP, true))
			if err != nil {
				t.Fatal(err)
			}
			svc, err := c.CreateService(ctx, service("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http")))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.WaitService(ctx, svc, map[string][]netip.AddrPort{"http": {netip.AddrPortFrom(p.IP, 8080)}}); err != nil {
				t.Fatal(err)
			}
			body, err := c.Get(ctx, netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80), "/", 5*time.Second)
			if err != nil || string(body) != "hello from web-1\n" {
				t.Fatalf("GET through %s: %q %v", mode, body, err)
			}
		})
	}
}
