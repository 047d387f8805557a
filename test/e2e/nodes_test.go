package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/debugpod"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
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
	bed := upAcross(ctx, t, c, overlay, service("web", "10.96.5.20", map[string]string{"app": "web"}, intstr.FromString("http")))
	d, web, client, ep := bed.d, bed.web, bed.client, bed.ep
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
	// Over VXLAN, each way: the packet leaves by the overlay's device, is
	// carried in a UDP packet between the nodes' addresses, which the
	// other node's overlay socket unpacks.
	carried := func(from, to string) []step {
		if overlay != topo.OverlayVXLAN {
			return nil
		}
		return []step{{from, "carried in VXLAN"}, {from, "leaves the node via "}, {to, fmt.Sprintf(":%d in via ", topo.VXLANPort)},
			{to, "VXLAN delivered to the overlay's socket"}}
	}
	var path []step
	path = append(path, step{cluster.NodeName, "DNAT " + vip.String() + " → " + ep.String()}, step{cluster.NodeName, "leaves the node via " + via[0]})
	path = append(path, carried(cluster.NodeName, d.Name)...)
	path = append(path, step{d.Name, " → " + ep.String() + " in via " + via[1]},
		step{d.Name, "leaves the node via cbr0"}, // into the Pod's bridge
		step{d.Name, "reply SYN,ACK " + ep.String()},
		step{d.Name, "leaves the node via " + via[1]})
	path = append(path, carried(d.Name, cluster.NodeName)...)
	path = append(path, step{cluster.NodeName, "in via " + via[0]},
		step{cluster.NodeName, "un-DNAT src " + ep.String() + " → " + vip.String()})
	s.inOrder(t, path)
}

// datagram sends size bytes of UDP to to from ns, not to be fragmented
// (DF), and waits a second for an answer: nil if one came.
func datagram(ns nf.NetNS, to netip.AddrPort, size int) error {
	return nf.InNetNS(ns, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		raw, err := c.SyscallConn()
		if err != nil {
			return err
		}
		raw.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO)
		})
		if err != nil {
			return err
		}
		if _, err := c.Write(make([]byte, size)); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = c.Read(make([]byte, 2048))
		return err
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

// across is the two-node bed with a Service across it: node-2 joined
// over overlay, Pod web-2 there the only endpoint of s (each of its
// ports), a client Pod client-1 on the first node.
type across struct {
	d           *cluster.DataNode
	web, client *cluster.Pod
	ep          netip.AddrPort // web-2's port 8080
}

func upAcross(ctx context.Context, t *testing.T, c *cluster.Cluster, overlay topo.Overlay, s *corev1.Service) across {
	t.Helper()
	var a across
	var err error
	if a.d, err = c.JoinNode(ctx, otherNode, overlay); err != nil {
		t.Fatal(err)
	}
	spec := pod(shop, "web-2", "web", lab.ModeHTTP, true)
	spec.Node = a.d.Name
	if a.web, err = c.AddPod(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if !a.d.PodNet.Contains(a.web.IP) {
		t.Fatalf("web-2 has %s, not an address of %s's Pod range %s", a.web.IP, a.d.Name, a.d.PodNet)
	}
	if a.client, err = c.AddPod(ctx, pod(shop, "client-1", "client", lab.ModeHTTP, true)); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CreateService(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	a.ep = netip.AddrPortFrom(a.web.IP, 8080)
	eps := map[string][]netip.AddrPort{}
	for _, p := range s.Spec.Ports {
		eps[p.Name] = []netip.AddrPort{a.ep}
	}
	if err := c.WaitService(ctx, svc, eps); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestBetweenNodes: faults on the way between a client Pod on the first
// node and the only endpoint on the second, each checked without
// svctrace first, then traced on both nodes and analysed together: the
// stitched verdict names the node, the fact and the fix.
func TestBetweenNodes(t *testing.T) {
	cluster.RequireBinaries(t)
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	web2 := service("web", "10.96.5.21", map[string]string{"app": "web"}, intstr.FromString("http"))
	web2.Spec.Ports = append(web2.Spec.Ports, corev1.ServicePort{Name: "datagrams", Port: 81, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(8080)})
	bed := upAcross(ctx, t, c, topo.OverlayVXLAN, web2)
	d, client, ep := bed.d, bed.client, bed.ep
	vip := netip.MustParseAddrPort("10.96.5.21:80")
	// A datagram as large as the Pod's link takes (1500 bytes), which may
	// not be fragmented: the overlay's device takes 1450.
	udpVIP := netip.MustParseAddrPort("10.96.5.21:81")
	large := func() error { return datagram(client.NS, udpVIP, 1500-28) }
	on := func(ns nf.NetNS) func(args ...string) error {
		return func(args ...string) error {
			out, err := topo.Run(ns, "", args...)
			if err != nil {
				return fmt.Errorf("%v: %v: %s", args, err, out)
			}
			return nil
		}
	}
	node1, node2, outside := on(c.Node), on(d.NS), on(c.ClientNS)
	// at is a command on one of the test bed's namespaces.
	type at struct {
		on   func(args ...string) error
		args []string
	}
	vxlanMAC := fmt.Sprintf("0e:5c:97:%02x:00:02", c.NodeIP.As4()[2]) // node-2's flannel.1 (JoinNode)
	port := fmt.Sprint(topo.VXLANPort)
	// A link of node-2's own to the host outside the cluster (the client
	// namespace), in 10.95.<cluster>.0/30.
	direct := func(host byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 95, c.NodeIP.As4()[2], host}) }
	outsideGet := func() error { _, err := lab.HTTPGet(ctx, c.ClientNS, ep, "/", time.Second); return err }
	nodesFirst := netip.AddrFrom4([4]byte{10, 97, c.NodeIP.As4()[2], 1}) // node-1 on the nodes' link (JoinNode)
	// Each story: the fault on one node, and what the stitched connection
	// must say: its verdict, the node it died on (or the two it was lost
	// between), the cause, and the facts quoted (substrings of the blame
	// and of evidence lines).
	for _, story := range []struct {
		name string
		node func(args ...string) error
		// also, undone by undo, elsewhere.
		also, undo []at
		// act is what the client does, failing with the fault (default:
		// GET /).
		act           func() error
		fault, repair [][]string
		verdict       string
		diedOn        string
		lostBetween   string // "node-1→node-2"
		cause         string
		blame         []string
		facts         []string
		steps         []step
	}{
		{name: "forward-policy", node: node2,
			fault:   [][]string{{"iptables", "-P", "FORWARD", "DROP"}},
			repair:  [][]string{{"iptables", "-P", "FORWARD", "ACCEPT"}},
			verdict: "dropped", diedOn: d.Name, cause: "rule-drop",
			blame: []string{"on " + d.Name + ", ", "chain FORWARD's policy DROP"},
			facts: []string{d.Name + ": ip filter: the built-in chain → chain FORWARD's policy DROP"}},
		{name: "overlay-port-firewalled", node: node2,
			fault:   [][]string{{"iptables", "-I", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP"}},
			repair:  [][]string{{"iptables", "-D", "INPUT", "-p", "udp", "--dport", port, "-j", "DROP"}},
			verdict: "dropped", diedOn: d.Name, cause: "rule-drop",
			blame: []string{"on " + d.Name + ", ", "chain INPUT, rule 1: -p udp -m udp --dport " + port + " -j DROP", "dropped the VXLAN packet carrying the SYN",
				"in VXLAN on UDP port " + port + ": this firewall must let it pass between them"},
			facts: []string{d.Name + ": ip filter: the built-in chain → chain INPUT, rule 1"},
			steps: []step{{cluster.NodeName, "leaves the node via " + topo.VXLANDevice}, {cluster.NodeName, "carried in VXLAN"},
				{d.Name, ":" + port + " in via eth0"}, {d.Name, "dropped in INPUT"}}},
		{name: "overlay-port-firewalled-out", node: node1,
			fault:   [][]string{{"iptables", "-I", "OUTPUT", "-p", "udp", "--dport", port, "-j", "DROP"}},
			repair:  [][]string{{"iptables", "-D", "OUTPUT", "-p", "udp", "--dport", port, "-j", "DROP"}},
			verdict: "dropped", diedOn: cluster.NodeName, cause: "rule-drop",
			blame: []string{"chain OUTPUT, rule 1: -p udp -m udp --dport " + port + " -j DROP", "dropped the VXLAN packet carrying the SYN"},
			facts: []string{"ip filter: the built-in chain → chain OUTPUT, rule 1"},
			steps: []step{{cluster.NodeName, "leaves the node via " + topo.VXLANDevice}, {cluster.NodeName, "carried in VXLAN"}, {cluster.NodeName, "dropped in OUTPUT"}}},
		// The answer comes back another way than the overlay (node-2 routes
		// node-1's Pod range over the nodes' link), and node-1's strict
		// reverse-path filter, whose route back is the overlay, drops it.
		{name: "asymmetric-reply", node: node2,
			fault:   [][]string{{"ip", "route", "replace", c.PodNet.String(), "via", nodesFirst.String(), "dev", "eth0"}},
			repair:  [][]string{{"ip", "route", "replace", c.PodNet.String(), "via", c.PodNet.Addr().String(), "dev", topo.VXLANDevice, "onlink"}},
			also:    []at{{node1, []string{"sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"}}},
			undo:    []at{{node1, []string{"sysctl", "-w", "net.ipv4.conf.all.rp_filter=0"}}},
			verdict: "dropped", diedOn: cluster.NodeName, cause: "kernel-drop",
			blame: []string{"on " + cluster.NodeName + ", ", "reverse-path filter", "IP_RPFILTER"},
			facts: []string{cluster.NodeName + ": net.ipv4.conf.all.rp_filter = 1", "dev " + topo.VXLANDevice},
			steps: []step{{d.Name, "reply SYN,ACK"}, {d.Name, "leaves the node via eth0"}, {cluster.NodeName, "in via nodes0"}, {cluster.NodeName, "IP_RPFILTER"}}},
		// The answer goes back another way than the question came, and
		// conntrack sees one direction only: a host outside the cluster
		// reaches the Pod through node-1 (its gateway), and node-2 sends
		// the answer straight to it over a link of their own. node-1
		// passed the SYN on and never saw the SYN,ACK, so it finds the
		// client's ACK INVALID, and kube-proxy's rule drops it.
		{name: "asymmetric-reply-invalid", node: node2, act: outsideGet,
			fault: [][]string{{"ip", "link", "add", "direct0", "type", "veth", "peer", "name", "direct0", "netns", filepath.Base(c.ClientNS.Path)},
				{"ip", "addr", "add", direct(1).String() + "/30", "dev", "direct0"}, {"ip", "link", "set", "direct0", "up"},
				{"ip", "route", "add", c.ClientIP.String() + "/32", "via", direct(2).String(), "dev", "direct0"}},
			repair: [][]string{{"ip", "link", "del", "direct0"}},
			also: []at{{outside, []string{"ip", "addr", "add", direct(2).String() + "/30", "dev", "direct0"}},
				{outside, []string{"ip", "link", "set", "direct0", "up"}}},
			verdict: "dropped", diedOn: cluster.NodeName, cause: "ct-invalid",
			blame: []string{"conntrack found the client's ACK INVALID", "passed the SYN on (it left via " + topo.VXLANDevice + ") and saw no answer to it",
				"came back another way", "kube-proxy drops INVALID packets", "look at the route from Pod shop/web-2 on " + d.Name + " back to " + c.ClientIP.String()},
			facts: []string{d.Name + ": the endpoint's SYN,ACK left " + d.Name + " via direct0 and " + cluster.NodeName + " never saw it"},
			steps: []step{{cluster.NodeName, "leaves the node via " + topo.VXLANDevice}, {d.Name, "reply SYN,ACK"},
				{d.Name, "leaves the node via direct0"}, {cluster.NodeName, "dropped in FORWARD"}}},
		{name: "rp-filter", node: node2,
			fault:   [][]string{{"sysctl", "-w", "net.ipv4.conf.all.rp_filter=1"}, {"ip", "route", "del", c.PodNet.String()}},
			repair:  [][]string{{"sysctl", "-w", "net.ipv4.conf.all.rp_filter=0"}, {"ip", "route", "add", c.PodNet.String(), "via", c.PodNet.Addr().String(), "dev", topo.VXLANDevice, "onlink"}},
			verdict: "dropped", diedOn: d.Name, cause: "kernel-drop",
			blame: []string{"on " + d.Name + ", ", "reverse-path filter", "IP_RPFILTER"},
			facts: []string{d.Name + ": net.ipv4.conf.all.rp_filter = 1", d.Name + ": the route back: ip route get " + client.IP.String() + ": ", "dev eth0"}},
		{name: "no-fdb", node: node1,
			fault:   [][]string{{"bridge", "fdb", "del", vxlanMAC, "dev", topo.VXLANDevice, "dst", d.IP.String()}},
			repair:  [][]string{{"bridge", "fdb", "append", vxlanMAC, "dev", topo.VXLANDevice, "dst", d.IP.String()}},
			verdict: "dropped", diedOn: cluster.NodeName, cause: "kernel-drop",
			blame: []string{"the overlay toward Pod shop/web-2 on " + d.Name, "in the tunnel's encapsulation", "NO_TX_TARGET"},
			facts: []string{"dev " + topo.VXLANDevice, "(VXLAN: its forwarding table has no entry for the next hop's MAC address)", "lladdr " + vxlanMAC}},
		// No fault to make: the test bed's Pods have 1500 bytes, the
		// overlay's device 1450.
		{name: "mtu-df", node: node1, act: large,
			verdict: "rejected", diedOn: cluster.NodeName, cause: "kernel-drop",
			blame: []string{"Pod shop/web-2 on " + d.Name, "larger than the path's MTU, and it may not be fragmented", "PKT_TOO_BIG",
				"the node answered the client with ICMP fragmentation-needed"},
			facts: []string{"dev " + topo.VXLANDevice, topo.VXLANDevice + ": mtu 1450"}},
		{name: "no-route", node: node1,
			fault:   [][]string{{"ip", "route", "del", d.PodNet.String()}},
			repair:  [][]string{{"ip", "route", "add", d.PodNet.String(), "via", d.PodNet.Addr().String(), "dev", topo.VXLANDevice, "onlink"}},
			verdict: "no-reply", lostBetween: cluster.NodeName + "→" + d.Name, cause: "lost-between-nodes",
			blame: []string{"the network between " + cluster.NodeName + " and " + d.Name, "left " + cluster.NodeName + " via uplink0"},
			facts: []string{"(the default route)", "node " + d.Name + "'s podCIDRs: " + d.PodNet.String(), d.Name + " traced when it left " + cluster.NodeName + " and saw no packet of it arrive"}},
	} {
		t.Run(story.name, func(t *testing.T) {
			for _, cmd := range story.fault {
				if err := story.node(cmd...); err != nil {
					t.Fatal(err)
				}
			}
			for _, cmd := range story.also {
				if err := cmd.on(cmd.args...); err != nil {
					t.Fatal(err)
				}
			}
			defer func() {
				for _, cmd := range story.repair {
					if err := story.node(cmd...); err != nil {
						t.Error(err)
					}
				}
				for _, cmd := range story.undo {
					if err := cmd.on(cmd.args...); err != nil {
						t.Error(err)
					}
				}
			}()
			act := story.act
			if act == nil {
				act = func() error { _, err := lab.HTTPGet(ctx, client.NS, vip, "/", time.Second); return err }
			}
			if err := act(); err == nil {
				t.Fatalf("client-1 was answered: the fault did not take")
			}
			// What the client learned of the path (the MTU), forgotten.
			if out, err := topo.Run(client.NS, "", "ip", "route", "flush", "cache"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			dir := t.TempDir()
			rec := func(node string) string { return filepath.Join(dir, node+".svctrace") }
			args := func(node, kubeconfig string) []string {
				return []string{"web", "-n", shop, "--kubeconfig", kubeconfig, "--count", "1", "--duration", "8s", "--timeout", "1500ms", "-o", "json", "-w", rec(node)}
			}
			tracingOn(t, []nodeRun{
				{filepath.Base(c.Node.Path), cluster.NodeName, args(cluster.NodeName, c.Kubeconfig)},
				{filepath.Base(d.NS.Path), d.Name, args(d.Name, d.Kubeconfig)},
			}, func() { act() })
			cs := analyzeNodes(t, rec(cluster.NodeName), rec(d.Name))
			if len(cs) == 0 {
				t.Fatal("analyze of both recordings: no connection")
			}
			s := cs[0]
			diedOn, lost := "", ""
			if s.Drop != nil {
				diedOn = s.Drop.Node
			}
			if l := s.LostBetween; l != nil {
				lost = l.From + "→" + l.To
			}
			if s.Verdict != story.verdict || diedOn != story.diedOn || lost != story.lostBetween || s.Cause != story.cause {
				t.Errorf("stitched: %s, died on %q, lost between %q, cause %s; want %s, %q, %q, %s\nblame: %s\nfacts: %q",
					s.Verdict, diedOn, lost, s.Cause, story.verdict, story.diedOn, story.lostBetween, story.cause, s.Blame, s.Evidence)
			}
			for _, b := range story.blame {
				if !strings.Contains(s.Blame, b) {
					t.Errorf("blame lacks %q: %s", b, s.Blame)
				}
			}
			for _, f := range story.facts {
				if !slices.ContainsFunc(s.Evidence, func(e string) bool { return strings.Contains(e, f) }) {
					t.Errorf("no fact has %q: %q", f, s.Evidence)
				}
			}
			s.inOrder(t, story.steps)
			if t.Failed() {
				for _, recs := range [][]string{{rec(cluster.NodeName), rec(d.Name)}, {rec(cluster.NodeName)}, {rec(d.Name)}} {
					out, _ := exec.Command(svctrace(t), append([]string{"analyze"}, recs...)...).CombinedOutput()
					t.Logf("svctrace analyze %v:\n%s", recs, out)
				}
			}
		})
	}
}

// TestPluginAcrossNodes: kubectl svctrace --from a client Pod traces on the
// client's node and the endpoint's, each in a debug Pod (the fake kubelet
// runs the real svctrace in that node's namespace, recording), and prints
// the connection once, stitched across both; svctrace analyze of the two
// recordings prints the same connection.
func TestPluginAcrossNodes(t *testing.T) {
	cluster.RequireBinaries(t)
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bed := upAcross(ctx, t, c, topo.OverlayVXLAN, service("web", "10.96.5.22", map[string]string{"app": "web"}, intstr.FromString("http")))
	d, client, ep := bed.d, bed.client, bed.ep
	vip := netip.MustParseAddrPort("10.96.5.22:80")
	if err := c.Apply(ctx, filepath.Join("..", "..", "deploy", "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureNamespace(ctx, "svctrace"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rec := func(node string) string { return filepath.Join(dir, node+".svctrace") }
	c.StartKubelet(t, "app.kubernetes.io/managed-by="+debugpod.ManagedBy, func(p *corev1.Pod) cluster.Container {
		ns, kubeconfig := c.Node, c.Kubeconfig
		if p.Spec.NodeName == d.Name {
			ns, kubeconfig = d.NS, d.Kubeconfig
		}
		// The Pod's command, as svctrace in the Pod would find its node
		// and API server, and recording.
		args := append([]string{"netns", "exec", filepath.Base(ns.Path), svctrace(t)}, p.Spec.Containers[0].Command[1:]...)
		args = append(args, "--node", p.Spec.NodeName, "--kubeconfig", kubeconfig, "-w", rec(p.Spec.NodeName))
		return cluster.Container{Run: exec.Command("ip", args...)}
	})
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), pluginBinary(t), "web", "-n", shop, "--from", "pod/client-1",
		"-o", "json", "--count", "1", "--duration", "40s", "--timeout", "3s", "--image", "test.invalid/svctrace:real", "--kubeconfig", c.Kubeconfig)
	var stdout strings.Builder
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Once svctrace traces on both nodes, the client connects.
	var errOut strings.Builder
	sc := bufio.NewScanner(stderr)
	for tracing := 0; tracing < 2 && sc.Scan(); {
		errOut.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), "Ctrl-C to stop") {
			tracing++
		}
	}
	go func() {
		for sc.Scan() {
			errOut.WriteString(sc.Text() + "\n")
		}
	}()
	if _, err := lab.HTTPGet(ctx, client.NS, vip, "/", 3*time.Second); err != nil {
		t.Errorf("GET %s from client-1 while tracing: %v", vip, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("kubectl svctrace: %v\n%s%s", err, &stdout, &errOut)
	}
	var live []stitchedConn
	for _, line := range strings.Split(stdout.String(), "\n") {
		if strings.Contains(line, `"kind":"connection"`) {
			var c stitchedConn
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				t.Fatal(err)
			}
			live = append(live, c)
		}
	}
	if !strings.Contains(errOut.String(), "on nodes node-1, node-2 (where pod shop/client-1 runs, and its endpoints); each connection stitched across them") {
		t.Errorf("stderr does not say both nodes were traced, stitched:\n%s", &errOut)
	}
	// Both Pods end once they reported the connection (--count 1), well
	// within the 8 s the plugin holds one node's report for the other's.
	if len(live) != 1 || live[0].Verdict != "answered" || strings.Join(live[0].Nodes, ",") != cluster.NodeName+","+d.Name || live[0].Endpoint != ep {
		t.Fatalf("kubectl svctrace printed %d connections, want one answered across both nodes:\n%s", len(live), &stdout)
	}
	live[0].inOrder(t, []step{{cluster.NodeName, "DNAT " + vip.String()}, {cluster.NodeName, "carried in VXLAN"},
		{d.Name, "in via " + topo.VXLANDevice}, {d.Name, "reply SYN,ACK"}, {cluster.NodeName, "un-DNAT src " + ep.String()}})
	// The recordings say the same, analysed together.
	recorded := analyzeNodes(t, rec(cluster.NodeName), rec(d.Name))
	if len(recorded) != 1 {
		t.Fatalf("analyze of both recordings: %d connections, want 1", len(recorded))
	}
	var a, b []string
	for _, e := range live[0].Events {
		a = append(a, e.Node+" "+e.Note)
	}
	for _, e := range recorded[0].Events {
		b = append(b, e.Node+" "+e.Note)
	}
	if !slices.Equal(a, b) || recorded[0].Verdict != live[0].Verdict {
		t.Errorf("analyze differs from the live run:\nlive:\n%s\nanalyze:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
}
