package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/test/cluster"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestTwoNodes: the multi-node test bed. A second node with its own
// namespace, Pod bridge, Pod range and kube-proxy joins the first over
// an overlay laid out as flannel's vxlan backend does, or over plain
// routes; a client Pod on the first node reaches a Service whose only
// endpoint runs on the second, and svctrace on the first node traces the
// connection out through the overlay and the answer back.
func TestTwoNodes(t *testing.T) {
	cluster.RequireBinaries(t)
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables} {
		for _, overlay := range []topo.Overlay{topo.OverlayVXLAN, topo.OverlayRouted} {
			t.Run(fmt.Sprintf("%s/%s", mode, overlay), func(t *testing.T) {
				twoNodes(t, cluster.Up(t, cluster.Options{Mode: mode}), overlay)
			})
		}
	}
}

func twoNodes(t *testing.T, c *cluster.Cluster, overlay topo.Overlay) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := c.JoinNode(ctx, otherNode, overlay)
	if err != nil {
		t.Fatal(err)
	}
	spec := pod(shop, "web-2", "web", lab.ModeHTTP, true)
	spec.Node = d.Name
	web, err := c.AddPod(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	client, err := c.AddPod(ctx, pod(shop, "client-1", "client", lab.ModeHTTP, true))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := c.CreateService(ctx, service("web", "10.96.5.20", map[string]string{"app": "web"}, intstr.FromString("http")))
	if err != nil {
		t.Fatal(err)
	}
	ep := netip.AddrPortFrom(web.IP, 8080)
	if !d.PodNet.Contains(web.IP) {
		t.Fatalf("web-2 has %s, not an address of %s's Pod range %s", web.IP, d.Name, d.PodNet)
	}
	if err := c.WaitService(ctx, svc, map[string][]netip.AddrPort{"http": {ep}}); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddrPort("10.96.5.20:80")
	// Without svctrace: the answer comes from the other node's Pod, over
	// the overlay.
	body, err := lab.HTTPGet(ctx, client.NS, vip, "/", 3*time.Second)
	if err != nil || !strings.Contains(string(body), "hello from web-2") {
		t.Fatalf("GET %s from client-1: %q, %v", vip, body, err)
	}
	route, err := c.Exec("ip", "route", "get", web.IP.String())
	want := map[topo.Overlay]string{topo.OverlayVXLAN: "dev " + topo.VXLANDevice, topo.OverlayRouted: "via " + d.IP.String()}[overlay]
	if err != nil || !strings.Contains(route, want) {
		t.Fatalf("the first node's route to %s: %q (%v), want %q", web.IP, route, err, want)
	}

	out := tracing(t, c, []string{"web", "-n", shop, "--kubeconfig", c.Kubeconfig, "--count", "1", "--duration", "30s", "--timeout", "1500ms", "-o", "json"}, func() {
		if _, err := lab.HTTPGet(ctx, client.NS, vip, "/", 3*time.Second); err != nil {
			t.Errorf("GET %s from client-1 while tracing: %v", vip, err)
		}
	})
	var conn struct {
		Verdict  string
		Endpoint netip.AddrPort
		Events   []struct{ Note string }
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"kind":"connection"`) {
			if err := json.Unmarshal([]byte(line), &conn); err != nil {
				t.Fatal(err)
			}
		}
	}
	leaves := map[topo.Overlay]string{topo.OverlayVXLAN: "leaves the node via " + topo.VXLANDevice, topo.OverlayRouted: "leaves the node via nodes0"}[overlay]
	left := false
	for _, e := range conn.Events {
		left = left || strings.Contains(e.Note, leaves)
	}
	if conn.Verdict != "answered" || conn.Endpoint != ep || !left {
		t.Errorf("traced %s to %s (want answered, to %s), %q said: %v\n%s", conn.Verdict, conn.Endpoint, ep, leaves, left, out)
	}
}
