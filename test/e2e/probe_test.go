package e2e

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// svctrace SERVICE --probe through the rules the real kube-proxy writes:
// from the node (OUTPUT) and from a Pod's namespace (FORWARD), to a
// Service that answers and to one kube-proxy rejects.
func TestProbeThroughKubeProxy(t *testing.T) {
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := cluster.Up(t, cluster.Options{Mode: mode})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			web := healthy(ctx, t, c)
			client, err := c.AddPod(ctx, pod(shop, "client", "client", lab.ModeHTTP, true))
			if err != nil {
				t.Fatal(err)
			}
			nomatch := service("nomatch", "10.96.1.20", map[string]string{"app": "nobody"}, intstr.FromInt32(8080))
			if _, err := c.CreateService(ctx, nomatch); err != nil {
				t.Fatal(err)
			}
			if err := c.WaitService(ctx, nomatch, nil); err != nil {
				t.Fatal(err)
			}
			pods, err := c.Client.CoreV1().Pods(shop).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name    string
				args    []string
				outcome string
				verdict string
				client  netip.Addr // the traced connection's client; zero: the node's
				failed  bool
			}{
				{"from the node", []string{web.svc.Name, "--probe"}, "from node: TCP ", "answered", netip.Addr{}, false},
				{"HTTP from a pod", []string{web.svc.Name, "--probe=http", "--from", "pod/client"}, "from pod shop/client: TCP ", "answered", client.IP, false},
				{"rejected, from the node", []string{"nomatch", "--probe"}, "from node: TCP ", "rejected", netip.Addr{}, true},
				{"rejected, from a pod", []string{"nomatch", "--probe", "--from", "pod/client"}, "from pod shop/client: TCP ", "rejected", client.IP, true},
			} {
				t.Run(tc.name, func(t *testing.T) {
					args := append([]string{"netns", "exec", filepath.Base(c.Node.Path), svctrace(t)}, tc.args...)
					args = append(args, "-n", shop, "--node", cluster.NodeName, "--kubeconfig", c.Kubeconfig, "--timeout", "2s", "-o", "json")
					cmd := exec.Command("ip", args...)
					var stdout, stderr strings.Builder
					cmd.Stdout, cmd.Stderr = &stdout, &stderr
					err := cmd.Run()
					if failed := cmd.ProcessState.ExitCode() == 1; failed != tc.failed || (err != nil && !failed) {
						t.Fatalf("exit %v, want a failed probe: %v\n%s", err, tc.failed, stderr.String())
					}
					if !strings.Contains(stderr.String(), "svctrace: probe "+tc.outcome) {
						t.Fatalf("no probe line %q:\n%s", tc.outcome, stderr.String())
					}
					conn := probedConn(t, stdout.String())
					if conn.Verdict != tc.verdict || (tc.client.IsValid() && conn.Client.Addr() != tc.client) {
						t.Fatalf("connection %+v, want %s from %v\n%s", conn, tc.verdict, tc.client, stdout.String())
					}
					if tc.verdict == "answered" && !endpointOf(conn.Endpoint, pods.Items) {
						t.Errorf("answered by %v, not a web pod", conn.Endpoint)
					}
				})
			}
		})
	}
}

// probed is the part of a traced connection's JSON line a probe test reads.
type probed struct {
	Kind     string          `json:"kind"`
	Verdict  string          `json:"verdict"`
	Client   netip.AddrPort  `json:"client"`
	Endpoint *netip.AddrPort `json:"endpoint"`
}

func probedConn(t *testing.T, out string) probed {
	t.Helper()
	var found []probed
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var p probed
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if p.Kind == "connection" {
			found = append(found, p)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d connections traced, want the probe's:\n%s", len(found), out)
	}
	return found[0]
}

func endpointOf(ep *netip.AddrPort, pods []corev1.Pod) bool {
	for _, p := range pods {
		if ep != nil && p.Status.PodIP == ep.Addr().String() {
			return true
		}
	}
	return false
}
