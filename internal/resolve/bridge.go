package resolve

import (
	"net/netip"
	"slices"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Bridge is a Linux bridge in the node's namespace that Pods hang off (the
// CNI bridge plugin's cni0, kubenet's cbr0), with its ports.
type Bridge struct {
	Name     string         `json:"name"`
	Prefixes []netip.Prefix `json:"prefixes,omitempty"` // its addresses: the Pod subnet
	Ports    []BridgePort   `json:"ports,omitempty"`
}

// BridgePort is one port of a bridge: a Pod's veth, usually.
type BridgePort struct {
	Name string `json:"name"`
	// Hairpin is the port's hairpin_mode: whether the bridge may send a
	// frame back out the port it came in on - what a Pod reaching itself
	// through its Service needs.
	Hairpin bool `json:"hairpin"`
	// Addrs are the addresses the node's neighbour table and the bridge's
	// forwarding table place behind the port (known once they talked).
	Addrs []netip.Addr `json:"addrs,omitempty"`
}

// BridgeOf is the bridge whose subnet holds a, if any.
func BridgeOf(bridges []Bridge, a netip.Addr) *Bridge {
	for i, b := range bridges {
		if slices.ContainsFunc(b.Prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return &bridges[i]
		}
	}
	return nil
}

// Port is the bridge port a is behind, if known.
func (b *Bridge) Port(a netip.Addr) *BridgePort {
	for i, p := range b.Ports {
		if slices.Contains(p.Addrs, a) {
			return &b.Ports[i]
		}
	}
	return nil
}

// Bridges reads the bridges in the node's namespace ns: their addresses,
// their ports' hairpin mode, and which addresses sit behind each port.
func Bridges(ns nf.NetNS) []Bridge {
	var out []Bridge
	nf.InNetNS(ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		byIndex := map[int]int{} // bridge ifindex → index in out
		for _, l := range links {
			if l.Type() != "bridge" {
				continue
			}
			b := Bridge{Name: l.Attrs().Name}
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_ALL)
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && a.IPNet != nil {
					ones, _ := a.Mask.Size()
					b.Prefixes = append(b.Prefixes, netip.PrefixFrom(ip.Unmap(), ones).Masked())
				}
			}
			byIndex[l.Attrs().Index] = len(out)
			out = append(out, b)
		}
		ports := map[int][2]int{} // port ifindex → bridge, port index
		for _, l := range links {
			bi, ok := byIndex[l.Attrs().MasterIndex]
			if !ok {
				continue
			}
			pi, _ := netlink.LinkGetProtinfo(l)
			ports[l.Attrs().Index] = [2]int{bi, len(out[bi].Ports)}
			out[bi].Ports = append(out[bi].Ports, BridgePort{Name: l.Attrs().Name, Hairpin: pi.Hairpin})
		}
		// MAC → port from the forwarding table, address → MAC from the
		// neighbour table of each bridge.
		fdb, _ := netlink.NeighList(0, unix.AF_BRIDGE)
		portOf := map[string][2]int{}
		for _, n := range fdb {
			if p, ok := ports[n.LinkIndex]; ok && n.Flags&netlink.NTF_SELF == 0 {
				portOf[n.HardwareAddr.String()] = p
			}
		}
		for idx, bi := range byIndex {
			neigh, _ := netlink.NeighList(idx, netlink.FAMILY_ALL)
			for _, n := range neigh {
				p, ok := portOf[n.HardwareAddr.String()]
				ip, ok2 := netip.AddrFromSlice(n.IP)
				if !ok || !ok2 || p[0] != bi {
					continue
				}
				port := &out[bi].Ports[p[1]]
				if a := ip.Unmap(); !slices.Contains(port.Addrs, a) {
					port.Addrs = append(port.Addrs, a)
				}
			}
		}
		return nil
	})
	return out
}
