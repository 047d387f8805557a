package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
)

// DataNode is a node of the cluster with a data path of its own (JoinNode):
// a network namespace with its Pod bridge, its kube-proxy and its Pods,
// joined to the first node over an overlay.
type DataNode struct {
	Name   string
	NS     nf.NetNS
	IP     netip.Addr // its address: the Node's InternalIP, on the link between the nodes
	PodNet netip.Prefix
	// Overlay is how the nodes' Pod ranges reach each other.
	Overlay topo.Overlay
	// Kubeconfig is the cluster admin's, for a process on this node (the
	// API server reached at the first node's address).
	Kubeconfig string
	pods       int
}

// The link between the nodes: "nodes0" on the first, eth0 on the others,
// in 10.97.<cluster>.0/24; the first node is .1.
const nodesLink = "nodes0"

// JoinNode adds a node with a data path to the cluster, as a CNI joins
// nodes: its own namespace with a Pod bridge and a Pod range of its own
// (10.244.<200+cluster>.0/24), a link to the first node (the nodes'
// network: the first node is its gateway, and the API server's address is
// the first node's), its own kube-proxy in the cluster's mode, a Node
// object, and the overlay o both ways. Pods placed on it (PodSpec.Node)
// run there. One such node per cluster.
func (c *Cluster) JoinNode(ctx context.Context, name string, o topo.Overlay) (*DataNode, error) {
	k := c.NodeIP.As4()[2]
	d := &DataNode{Name: name, Overlay: o,
		IP:     netip.AddrFrom4([4]byte{10, 97, k, 2}),
		PodNet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, 200 + k, 0}), 24)}
	if c.data != nil {
		return nil, fmt.Errorf("node %s: the cluster has a second node already (%s)", name, c.data.Name)
	}
	var err error
	if d.NS, err = topo.CreateNetNS(c.nsName("node2")); err != nil {
		return nil, err
	}
	c.data = d
	first := netip.AddrFrom4([4]byte{10, 97, k, 1})
	steps := []func() error{
		func() error { return topo.Veth(c.Node, nodesLink, d.NS, "eth0", "") },
		topo.Iface{NS: c.Node, Name: nodesLink, Addrs: []netip.Prefix{netip.PrefixFrom(first, 24)}}.Configure,
		topo.Iface{NS: d.NS, Name: "eth0", Addrs: []netip.Prefix{netip.PrefixFrom(d.IP, 24)}, Gateways: []netip.Addr{first}}.Configure,
		d.net().WireBridge,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
	}
	// The first node's side is its node address (the API server's, on the
	// client's network), reached over the link between the nodes.
	mac := func(host byte) net.HardwareAddr { return net.HardwareAddr{0x0e, 0x5c, 0x97, k, 0, host} }
	a := topo.OverlayNode{NS: c.Node, Addr: c.NodeIP, PodNet: c.PodNet, MAC: mac(1)}
	b := topo.OverlayNode{NS: d.NS, Addr: d.IP, PodNet: d.PodNet, MAC: mac(2)}
	if o == topo.OverlayRouted {
		a.Addr = first
	}
	if o == topo.OverlayVXLAN {
		for _, n := range []topo.OverlayNode{a, b} {
			if err := n.Device(); err != nil {
				return nil, err
			}
		}
	}
	if err := a.Reach(b, o); err != nil {
		return nil, err
	}
	if err := b.Reach(a, o); err != nil {
		return nil, err
	}
	if err := c.createNode(ctx, name, []netip.Addr{d.IP}, []netip.Prefix{d.PodNet}); err != nil {
		return nil, err
	}
	kubeconfig, err := c.kubeconfigVia("kube-proxy", name)
	if err != nil {
		return nil, err
	}
	if err := c.runKubeProxy(d.NS, name, kubeconfig); err != nil {
		return nil, err
	}
	if d.Kubeconfig, err = c.kubeconfigVia("admin", name); err != nil {
		return nil, err
	}
	found, err := pollRules(ctx, func() (string, error) { return c.rulesetIn(d.NS) }, func(rules string) bool {
		return strings.Contains(rules, c.NodeIP.String()+":"+fmt.Sprint(APIServerPort))
	})
	if !found {
		return nil, fmt.Errorf("kube-proxy on node %s did not program the kubernetes Service: %v", name, err)
	}
	return d, nil
}

// net is the data node's own network: its bridge (nothing else: its link
// is to the first node).
func (d *DataNode) net() topo.NodeNet {
	return topo.NodeNet{Node: d.NS, Bridge: netip.PrefixFrom(d.PodNet.Addr().Next(), d.PodNet.Bits())}
}

// RulesetOn is what kube-proxy programmed on data node d, as Ruleset.
func (c *Cluster) RulesetOn(d *DataNode) (string, error) { return c.rulesetIn(d.NS) }

// kubeconfigVia writes a copy of the client certificate <cert>'s
// kubeconfig for a process outside the first node's namespace (on node
// name): its server is the first node's address, as a node reaches the
// API server.
func (c *Cluster) kubeconfigVia(cert, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, cert+".kubeconfig"))
	if err != nil {
		return "", err
	}
	server := fmt.Sprintf("https://%s", net.JoinHostPort(c.NodeIP.String(), fmt.Sprint(APIServerPort)))
	path := filepath.Join(c.Dir, cert+"-"+name+".kubeconfig")
	return path, os.WriteFile(path, []byte(strings.Replace(string(b), fmt.Sprintf("https://127.0.0.1:%d", APIServerPort), server, 1)), 0o600)
}
