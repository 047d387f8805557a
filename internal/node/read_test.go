package node_test

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	lab.ServeIfChild()
	os.Exit(m.Run())
}

func netNS(t *testing.T) nf.NetNS {
	ns, err := nf.ResolveNetNS(testutil.NewNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// Read finds, on a node wired like the lab's: the route to a Pod through
// the bridge, an unreachable route, a neighbour that never answered, the
// forwarding sysctl, and a Pod's listener with its full accept queue.
func TestRead(t *testing.T) {
	testutil.RequireRoot(t)
	n := topo.NodeNet{Node: netNS(t), Client: netNS(t), Upstream: netNS(t),
		Bridge: netip.MustParsePrefix("10.250.0.1/24"), NodeAddr: netip.MustParsePrefix("10.250.1.1/24"),
		ClientAddr: netip.MustParsePrefix("10.250.1.2/24"), Uplink: netip.MustParsePrefix("10.250.2.1/30")}
	if err := n.Wire(); err != nil {
		t.Fatal(err)
	}
	pod := netNS(t)
	podIP, nobody, far := netip.MustParseAddr("10.250.0.11"), netip.MustParseAddr("10.250.0.99"), netip.MustParseAddr("10.250.9.5")
	if err := n.AttachPod(pod, 1, podIP); err != nil {
		t.Fatal(err)
	}
	srv, err := lab.StartServer(pod, "p", lab.ModeHung, []int{8080})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	if _, err := topo.Run(n.Node, "", "ip", "route", "add", "unreachable", "10.250.9.0/24"); err != nil {
		t.Fatal(err)
	}
	// A lossy qdisc on the Pod's link, and an IPsec policy blocking
	// what the node forwards to an address.
	if _, err := topo.Run(n.Node, "", "tc", "qdisc", "add", "dev", "veth1", "root", "pfifo", "limit", "0"); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Run(n.Node, "", "ip", "xfrm", "policy", "add", "dst", "10.250.0.11/32", "dir", "fwd", "action", "block"); err != nil {
		t.Fatal(err)
	}
	// A tc filter on the bridge that drops IPv6 (this test sends none),
	// and a second Pod whose own interface is down.
	if err := testutil.TCDrop(n.Node, "cbr0", false, unix.ETH_P_IPV6); err != nil {
		t.Fatal(err)
	}
	down, downIP := netNS(t), netip.MustParseAddr("10.250.0.12")
	if err := n.AttachPod(down, 2, downIP); err != nil {
		t.Fatal(err)
	}
	downSrv, err := lab.StartServer(down, "d", lab.ModeHTTP, []int{8080})
	if err != nil {
		t.Fatal(err)
	}
	defer downSrv.Stop()
	if _, err := topo.Run(down, "", "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	// Ask the bridge's link for an address nobody holds.
	nf.InNetNS(n.Node, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(nobody, 9).String())
		if err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
		return err
	})
	// And the Pod, whose packets the lossy qdisc drops: its MAC is in the
	// bridge's forwarding table from its own packets, the node's
	// neighbour table has it from the node's.
	nf.InNetNS(pod, func() error {
		c, err := net.Dial("udp", "10.250.0.1:9")
		if err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
		return err
	})
	nf.InNetNS(n.Node, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(podIP, 9).String())
		if err == nil {
			c.Write([]byte("x"))
			c.Close()
		}
		return err
	})
	time.Sleep(100 * time.Millisecond)

	f := node.Read(n.Node, node.Want{Addrs: []netip.Addr{podIP, nobody, far, downIP}, Devs: []string{"client0"},
		Pods: []node.Pod{{Name: "shop/p", Addr: podIP}, {Name: "shop/gone", Addr: netip.MustParseAddr("10.250.0.77")}, {Name: "shop/down", Addr: downIP}}})
	if len(f.Unread) > 0 {
		t.Errorf("unread: %q", f.Unread)
	}
	if r, ok := f.Route(podIP); !ok || !r.Usable() || r.Dev != topo.BridgeName || r.String() != "10.250.0.11 dev cbr0 src 10.250.0.1 (bridge port veth1)" {
		t.Errorf("route to the Pod: %+v (%s)", r, r)
	}
	if r, ok := f.Route(far); !ok || r.Usable() || r.Type != "unreachable" {
		t.Errorf("route to %s: %+v, want unreachable", far, r)
	}
	if nb, ok := f.Neighbour(nobody); !ok || nb.Answered() || nb.Dev != topo.BridgeName {
		t.Errorf("neighbour %s: %+v %v, want one that never answered", nobody, nb, ok)
	}
	if v, ok := f.Sysctl("net.ipv4.ip_forward"); v != "1" || !ok {
		t.Errorf("ip_forward %q", v)
	}
	if v, ok := f.Sysctl("net.ipv4.conf.client0.rp_filter"); !ok || v == "" {
		t.Errorf("client0's rp_filter not read: %v", f.Sysctls)
	}
	if v, ok := f.Sysctl("net.ipv4.conf.cbr0.rp_filter"); !ok || v == "" {
		t.Errorf("cbr0's rp_filter not read: %v", f.Sysctls)
	}
	if l := f.Links[topo.BridgeName]; l.MTU != 1500 {
		t.Errorf("cbr0: %+v", l)
	}
	if r, _ := f.Route(podIP); r.Port != "veth1" {
		t.Errorf("the bridge port to the Pod: %+v", r)
	}
	if qs := f.QdiscsOn("veth1"); len(qs) != 1 || qs[0].Kind != "pfifo" || !qs[0].Root || qs[0].Dropped == 0 {
		t.Errorf("qdiscs of veth1: %+v", qs)
	}
	if qs := f.QdiscsOn("cbr0"); !slices.ContainsFunc(qs, func(q node.Qdisc) bool {
		return strings.HasPrefix(q.String(), "tc qdisc on cbr0: clsact [ingress: bpf drop_ipv6 direct-action id ")
	}) {
		t.Errorf("qdiscs of cbr0: %+v", qs)
	}
	if dev, l, ok := f.LinkDown(downIP); !ok || dev != "veth2" || l.String(dev) != "ip link show veth2: state DOWN" {
		t.Errorf("the down Pod's link: %q %+v %v", dev, l, ok)
	}
	if dev, _, ok := f.LinkDown(podIP); ok {
		t.Errorf("the Pod's link %s down", dev)
	}
	if ps := f.PoliciesFor(podIP); len(ps) != 1 || ps[0].String() != "ip xfrm policy: src 0.0.0.0/0 dst 10.250.0.11/32 dir fwd action block" {
		t.Errorf("xfrm policies for the Pod: %+v", ps)
	}
	l, ok := f.ListenersOf(podIP)
	want := node.Socket{Proto: nf.TCP, Local: netip.MustParseAddrPort("0.0.0.0:8080"), Queue: 2, Backlog: 1}
	if !ok || l.Err != "" || !slices.Contains(l.Sockets, want) {
		t.Errorf("listeners of the Pod: %+v, want %+v", l, want)
	}
	if !want.Takes(nf.TCP, netip.AddrPortFrom(podIP, 8080)) || want.Takes(nf.TCP, netip.AddrPortFrom(podIP, 9090)) || want.Takes(nf.UDP, netip.AddrPortFrom(podIP, 8080)) {
		t.Error("Takes")
	}
	if l.Link != "veth1" || !slices.Equal(f.Toward(podIP), []string{"cbr0", "veth1"}) {
		t.Errorf("the node's end of the Pod's link %q, interfaces toward it %q", l.Link, f.Toward(podIP))
	}
	if l, _ := f.ListenersOf(netip.MustParseAddr("10.250.0.77")); l.Err == "" || l.Sockets != nil {
		t.Errorf("a Pod with no namespace here: %+v", l)
	}
}
