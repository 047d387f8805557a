package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
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

	dir := t.TempDir()
	rec := func(node string) string { return filepath.Join(dir, node+".svctrace") }
	args := func(node, kubeconfig string) []string {
		return []string{"web", "-n", shop, "--kubeconfig", kubeconfig, "--count", "1", "--duration", "30s", "--timeout", "1500ms", "-o", "json", "-w", rec(node)}
	}
	outs := tracingOn(t, []nodeRun{
		{filepath.Base(c.Node.Path), cluster.NodeName, args(cluster.NodeName, c.Kubeconfig)},
		{filepath.Base(d.NS.Path), d.Name, args(d.Name, d.Kubeconfig)},
	}, func() {
		if _, err := lab.HTTPGet(ctx, client.NS, vip, "/", 3*time.Second); err != nil {
			t.Errorf("GET %s from client-1 while tracing: %v", vip, err)
		}
	})
	var conn stitchedConn
	for _, line := range strings.Split(outs[0], "\n") {
		if strings.Contains(line, `"kind":"connection"`) {
			if err := json.Unmarshal([]byte(line), &conn); err != nil {
				t.Fatal(err)
			}
		}
	}
	via := map[topo.Overlay][2]string{topo.OverlayVXLAN: {topo.VXLANDevice, topo.VXLANDevice}, topo.OverlayRouted: {"nodes0", "eth0"}}[overlay]
	if conn.Verdict != "answered" || conn.Endpoint != ep || conn.find(0, "", "leaves the node via "+via[0]) < 0 {
		t.Errorf("traced on %s: %s to %s, want answered, to %s, leaving via %s\n%s", cluster.NodeName, conn.Verdict, conn.Endpoint, ep, via[0], outs[0])
	}

	// Both recordings analysed together: one connection, one timeline
	// across both nodes, in the order the packets went.
	cs := analyzeNodes(t, rec(cluster.NodeName), rec(d.Name))
	if len(cs) != 1 {
		t.Fatalf("analyze %s %s: %d connections, want 1 stitched", cluster.NodeName, d.Name, len(cs))
	}
	s := cs[0]
	if s.Verdict != "answered" || strings.Join(s.Nodes, ",") != cluster.NodeName+","+d.Name || s.Endpoint != ep {
		t.Errorf("stitched: %s across %v to %s; want answered across %s,%s to %s", s.Verdict, s.Nodes, s.Endpoint, cluster.NodeName, d.Name, ep)
	}
	s.inOrder(t, []step{
		{cluster.NodeName, "DNAT " + vip.String() + " → " + ep.String()},
		{cluster.NodeName, "leaves the node via " + via[0]},
		{d.Name, " → " + ep.String() + " in via " + via[1]},
		{d.Name, "leaves the node via cbr0"}, // into the Pod's bridge
		{d.Name, "reply SYN,ACK " + ep.String()},
		{d.Name, "leaves the node via " + via[1]},
		{cluster.NodeName, "in via " + via[0]},
		{cluster.NodeName, "un-DNAT src " + ep.String() + " → " + vip.String()},
	})
}

// stitchedConn is a connection of svctrace's JSON output, with the node
// of each event.
type stitchedConn struct {
	Verdict     string
	Endpoint    netip.AddrPort
	Nodes       []string
	Cause       string
	Blame       string
	Evidence    []string
	LostBetween *struct{ From, To, Dir string } `json:"lost_between"`
	Drop        *struct{ Node, Reason string }
	Events      []struct {
		Node, Note string
		T          int64 `json:"t_us"`
	}
}

type step struct{ node, note string }

// find is the index of the first event from i on, on node (any if ""),
// whose note has note; -1 if none.
func (c stitchedConn) find(i int, node, note string) int {
	for ; i < len(c.Events); i++ {
		if e := c.Events[i]; (node == "" || e.Node == node) && strings.Contains(e.Note, note) {
			return i
		}
	}
	return -1
}

// inOrder fails t unless the events show each step, in order.
func (c stitchedConn) inOrder(t *testing.T, steps []step) {
	t.Helper()
	i := 0
	for _, s := range steps {
		j := c.find(i, s.node, s.note)
		if j < 0 {
			var got []string
			for _, e := range c.Events {
				if e.Note != "" {
					got = append(got, fmt.Sprintf("%6dµs %s %s", e.T, e.Node, e.Note))
				}
			}
			t.Errorf("no %q on %s after event %d; the stitched timeline:\n%s", s.note, s.node, i, strings.Join(got, "\n"))
			return
		}
		i = j + 1
	}
}

// analyzeNodes is what svctrace analyze prints of recordings made on
// several nodes at once: its connections.
func analyzeNodes(t *testing.T, recs ...string) []stitchedConn {
	t.Helper()
	out, err := exec.Command(svctrace(t), append(append([]string{"analyze"}, recs...), "-o", "json")...).Output()
	if err != nil {
		t.Fatalf("svctrace analyze %v: %v", recs, err)
	}
	var cs []stitchedConn
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, `"kind":"connection"`) {
			var c stitchedConn
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
	}
	return cs
}
