package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

var updateFixtures = flag.Bool("update-fixtures", false, "capture kube-proxy's rulesets into internal/kubeproxy/testdata (make k8s-fixtures)")

// fixtureNS holds the Service shapes whose rules are captured.
const fixtureNS = "fixtures"

// shapes are the Service shapes the fixtures cover. Fixed ClusterIPs and
// NodePorts keep the files stable from one capture to the next.
func shapes() []*corev1.Service {
	svc := func(name, vip string, sel string, mod func(*corev1.ServiceSpec)) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fixtureNS},
			Spec: corev1.ServiceSpec{ClusterIP: vip, Selector: map[string]string{"app": sel},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}}}}
		if mod != nil {
			mod(&s.Spec)
		}
		return s
	}
	return []*corev1.Service{
		svc("single", "10.96.2.10", "web", nil),
		svc("multi", "10.96.2.20", "multi", func(s *corev1.ServiceSpec) {
			s.Ports = append(s.Ports, corev1.ServicePort{Name: "metrics", Port: 9090, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("metrics")})
		}),
		svc("empty", "10.96.2.30", "nobody", nil),
		svc("nodeport", "10.96.2.40", "web", func(s *corev1.ServiceSpec) {
			s.Type, s.Ports[0].NodePort = corev1.ServiceTypeNodePort, 30080
		}),
		svc("local", "10.96.2.50", "web", func(s *corev1.ServiceSpec) {
			s.Type, s.Ports[0].NodePort = corev1.ServiceTypeNodePort, 30081
			s.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}),
		svc("sticky", "10.96.2.60", "web", func(s *corev1.ServiceSpec) {
			s.SessionAffinity = corev1.ServiceAffinityClientIP
		}),
		// A documentation address: it only appears in rules, no traffic goes there.
		svc("external", "10.96.2.70", "web", func(s *corev1.ServiceSpec) {
			s.ExternalIPs = []string{"203.0.113.10"}
		}),
	}
}

func fixturePods() []cluster.PodSpec {
	ports := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
	return []cluster.PodSpec{
		{Namespace: fixtureNS, Name: "web-1", Labels: map[string]string{"app": "web"}, Ports: ports, Ready: true},
		{Namespace: fixtureNS, Name: "web-2", Labels: map[string]string{"app": "web"}, Ports: ports, Ready: true},
		{Namespace: fixtureNS, Name: "web-3", Labels: map[string]string{"app": "web"}, Ports: ports, Ready: false},
		{Namespace: fixtureNS, Name: "multi-1", Labels: map[string]string{"app": "multi"}, Ready: true,
			Ports: append(ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9100, Protocol: corev1.ProtocolTCP})},
	}
}

// TestCaptureFixtures writes kube-proxy's ruleset for every shape, in every
// mode, with the objects it was made from (make k8s-fixtures).
func TestCaptureFixtures(t *testing.T) {
	if !*updateFixtures {
		t.Skip("captures fixtures only with -update-fixtures (make k8s-fixtures)")
	}
	k8s, _ := cluster.Versions()
	root := filepath.Join("..", "..", "internal", "kubeproxy", "testdata", "kube-proxy-"+k8s)
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.IPTablesLegacy, cluster.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := cluster.Up(t, cluster.Options{Mode: mode})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, p := range fixturePods() {
				if _, err := c.AddPod(ctx, p); err != nil {
					t.Fatal(err)
				}
			}
			for _, s := range shapes() {
				if _, err := c.CreateService(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			// Every shape is programmed once its address appears, and the
			// multi-port Service's second port too.
			if err := c.WaitRules(ctx, "every shape", func(rules string) bool {
				for _, s := range shapes() {
					if !strings.Contains(rules, s.Spec.ClusterIP) {
						return false
					}
				}
				return strings.Contains(rules, ":9100")
			}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // let kube-proxy finish the sync it is in
			dir := filepath.Join(root, string(mode))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if mode == cluster.NFTables {
				write(t, dir, "nft.json", capture(t, c, "nft", "-j", "list", "ruleset"))
				write(t, dir, "nft.txt", capture(t, c, "nft", "list", "ruleset"))
			} else {
				save := "iptables-save"
				if mode == cluster.IPTablesLegacy {
					save = "iptables-legacy-save"
				}
				write(t, dir, "iptables-save.txt", stable(capture(t, c, save)))
			}
			write(t, dir, "objects.yaml", objects(t, ctx, c))
			t.Logf("wrote %s", dir)
		})
	}
}

func capture(t *testing.T, c *cluster.Cluster, args ...string) string {
	out, err := c.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func write(t *testing.T, dir, name, content string) {
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

var generatedLine = regexp.MustCompile(`(?m)^# (Generated by|Completed on) .*\n`)

// stable drops what changes on every run: iptables-save's time stamps and
// packet counters.
func stable(s string) string {
	s = generatedLine.ReplaceAllString(s, "")
	return regexp.MustCompile(`\[\d+:\d+\]`).ReplaceAllString(s, "[0:0]")
}

// objects returns the Node and the fixture namespace's Services,
// EndpointSlices and Pods as one YAML List, as `kubectl get -o yaml` prints.
func objects(t *testing.T, ctx context.Context, c *cluster.Cluster) string {
	var items []runtime.Object
	add := func(o runtime.Object, apiVersion, kind string) {
		// Without what changes on every capture.
		m := o.(metav1.Object)
		m.SetManagedFields(nil)
		m.SetUID("")
		m.SetResourceVersion("")
		m.SetCreationTimestamp(metav1.Time{})
		o.GetObjectKind().SetGroupVersionKind(schema.FromAPIVersionAndKind(apiVersion, kind))
		items = append(items, o)
	}
	node, err := c.Client.CoreV1().Nodes().Get(ctx, cluster.NodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	add(node, "v1", "Node")
	svcs, err := c.Client.CoreV1().Services(fixtureNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range svcs.Items {
		add(&svcs.Items[i], "v1", "Service")
	}
	slices, err := c.Client.DiscoveryV1().EndpointSlices(fixtureNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range slices.Items {
		add(&slices.Items[i], discoveryv1.SchemeGroupVersion.String(), "EndpointSlice")
	}
	pods, err := c.Client.CoreV1().Pods(fixtureNS).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		add(&pods.Items[i], "v1", "Pod")
	}
	list := struct {
		APIVersion string           `json:"apiVersion"`
		Kind       string           `json:"kind"`
		Items      []runtime.Object `json:"items"`
	}{"v1", "List", items}
	b, err := yaml.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("# kube-proxy %s mode, captured by make k8s-fixtures\n%s", c.Mode, b)
}
