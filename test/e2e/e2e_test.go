// End-to-end tests: svctrace against the rules the real kube-proxy writes,
// in each of its modes, on a throwaway control plane (test/cluster).
package e2e

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
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
	name   string
	expect flow.Verdict
	// rejected: kube-proxy rejects the client's packet in FORWARD's filter
	// stage (the expected hook for a rejected story).
	rejected bool
	svc      *corev1.Service
	pods     []cluster.PodSpec
	// finding is the first finding svctrace check must report.
	finding string
	// blame must start the traced connection's blame line ("" : no blame).
	blame string
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

func stories() []*story {
	byName := intstr.FromString("http")
	return []*story{
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
			blame: "Pod shop/wrongport-1 on node-1 (ready): nothing listens on port 9090; targetPort 9090 of shop/wrongport:http is not a port",
			svc:   service("wrongport", "10.96.1.40", map[string]string{"app": "wrongport"}, intstr.FromInt32(9090)),
			pods:  []cluster.PodSpec{pod(shop, "wrongport-1", "wrongport", lab.ModeHTTP, true)}},
		{name: "pod-in-another-namespace", expect: flow.Rejected, rejected: true, finding: "selector-matches-no-pod",
			blame: "Service shop/api: the selector app=api matches no Pod in namespace shop",
			svc:   service("api", "10.96.1.50", map[string]string{"app": "api"}, byName),
			pods:  []cluster.PodSpec{pod("default", "api-1", "api", lab.ModeHTTP, true)}},
		{name: "pod-stops-answering", expect: flow.NoReply, finding: "healthy",
			blame: "Pod shop/hung-1 on node-1 (ready) did not answer on port 8080",
			svc:   service("hung", "10.96.1.60", map[string]string{"app": "hung"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "hung-1", "hung", lab.ModeHung, true)}},
	}
}

func vip(s *corev1.Service) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(s.Spec.ClusterIP), uint16(s.Spec.Ports[0].Port))
}

// endpoints are the ready endpoints kube-proxy should use for s: the ready
// pods in the Service's namespace that its selector matches, at its target
// port (by number, or the pod's port of that name).
func endpoints(s *story, pods []*cluster.Pod) []netip.AddrPort {
	var eps []netip.AddrPort
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
		eps = append(eps, netip.AddrPortFrom(pods[i].IP, uint16(port)))
	}
	return eps
}

func TestStories(t *testing.T) {
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables, cluster.IPTablesLegacy} {
		t.Run(string(mode), func(t *testing.T) { runStories(t, mode) })
	}
}

func runStories(t *testing.T, mode cluster.Mode) {
	c := cluster.Up(t, cluster.Options{Mode: mode})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	ss := stories()
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
		ready[s] = endpoints(s, pods)
	}
	for _, s := range ss {
		if err := c.WaitService(ctx, s.svc, map[string][]netip.AddrPort{"http": ready[s]}); err != nil {
			t.Fatal(err)
		}
	}

	var targets []tracer.Target
	vips := map[netip.AddrPort]bool{}
	for _, s := range ss {
		targets = append(targets, tracer.Target{Addr: vip(s.svc), Proto: tracer.TCP})
		vips[vip(s.svc)] = true
	}
	tr, err := tracer.Open(tracer.Options{NetNS: c.Node.Path, Targets: targets})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	const timeout = 1500 * time.Millisecond
	conns, res, err := live.Collect(ctx, tr, live.Options{Flow: flow.Options{
		NodeNetNS: c.Node.Inode, Timeout: timeout,
		IsService: func(_ tracer.Proto, a netip.AddrPort) bool { return vips[a] },
	}}, func() {
		var wg sync.WaitGroup
		for _, s := range ss {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Get(ctx, vip(s.svc), "/", timeout)
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

	for _, s := range ss {
		t.Run(s.name, func(t *testing.T) {
			var got []*flow.Conn
			for _, conn := range conns {
				if conn.VIP == vip(s.svc) {
					got = append(got, conn)
				}
			}
			if len(got) != 1 {
				t.Fatalf("%d connections to %s traced, want 1", len(got), vip(s.svc))
			}
			conn := got[0]
			if conn.Verdict != s.expect {
				t.Fatalf("verdict %s (%s), want %s", conn.Verdict, conn.Why, s.expect)
			}
			eps := ready[s]
			if len(eps) > 0 && !slices.Contains(eps, conn.Endpoint) {
				t.Errorf("DNAT to %s, not one of the ready endpoints %v", conn.Endpoint, eps)
			}
			if len(eps) == 0 && conn.Endpoint.IsValid() {
				t.Errorf("DNAT to %s, but the Service has no ready endpoint", conn.Endpoint)
			}
			if len(eps) > 0 && !conn.SNAT.IsValid() {
				t.Error("not masqueraded, but the client is outside the cluster CIDR")
			}
			// For a forwarded client, kube-proxy rejects in the filter stage of
			// FORWARD in every mode: iptables' filter table (KUBE-SERVICES from
			// FORWARD), nftables' filter-forward chain at priority 0.
			if s.rejected {
				if d := conn.Drop; d == nil || !d.Placed || d.Gap.Hook != tracer.Forward || d.Gap.What() != "filter table (0)" {
					t.Errorf("rejected packet %s, want dropped in FORWARD's filter stage", d)
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
			body, err := c.Get(ctx, vip(svc), "/", 5*time.Second)
			if err != nil || string(body) != "hello from web-1\n" {
				t.Fatalf("GET through %s: %q %v", mode, body, err)
			}
		})
	}
}
