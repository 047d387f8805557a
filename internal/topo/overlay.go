package topo

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Overlay is how nodes' Pod ranges reach each other.
type Overlay string

const (
	// OverlayVXLAN lays nodes out as flannel's vxlan backend does: a VXLAN
	// device per node (VXLANDevice, VNI 1, UDP VXLANPort, no learning)
	// holding the first address of its node's Pod range, and per remote
	// node a route to its Pod range via that address on the device
	// (onlink), a permanent neighbour entry giving it the remote device's
	// MAC address, and a forwarding entry sending that MAC address to the
	// remote node's address.
	OverlayVXLAN Overlay = "vxlan"
	// OverlayRouted is a route per remote Pod range via the remote node's
	// address, no encapsulation: flannel's host-gw, Calico without IPIP.
	OverlayRouted Overlay = "routed"
)

// The VXLAN device flannel creates, its VNI, UDP port and MTU (1500 less
// the 50 bytes of the outer headers).
const (
	VXLANDevice = "flannel.1"
	VXLANID     = 1
	VXLANPort   = 8472
	VXLANMTU    = 1450
)

// OverlayNode is a node as the overlay sees it.
type OverlayNode struct {
	NS nf.NetNS
	// Addr is its node address: where the others send its Pods' packets
	// (the outer destination, or the next hop).
	Addr   netip.Addr
	PodNet netip.Prefix
	// MAC is its VXLAN device's address.
	MAC net.HardwareAddr
}

// Device creates n's VXLAN device (OverlayVXLAN): up, with the first
// address of n's Pod range.
func (n OverlayNode) Device() error {
	return withHandle(n.NS, func(h *netlink.Handle) error {
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: VXLANMTU, HardwareAddr: n.MAC},
			VxlanId: VXLANID, SrcAddr: net.IP(n.Addr.AsSlice()), Port: VXLANPort, Learning: false}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("creating %s in %s: %w", VXLANDevice, n.NS.Spec, err)
		}
		l, err := h.LinkByName(VXLANDevice)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(n.PodNet.Addr(), n.PodNet.Addr().BitLen()))}); err != nil {
			return fmt.Errorf("%s's address in %s: %w", VXLANDevice, n.NS.Spec, err)
		}
		return h.LinkSetUp(l)
	})
}

// Reach makes n reach remote's Pod range over the overlay o (for
// OverlayVXLAN, once both have their Device).
func (n OverlayNode) Reach(remote OverlayNode, o Overlay) error {
	return withHandle(n.NS, func(h *netlink.Handle) error {
		switch o {
		case OverlayRouted:
			r := netlink.Route{Dst: ipnet(remote.PodNet), Gw: net.IP(remote.Addr.AsSlice())}
			if err := h.RouteAdd(&r); err != nil {
				return fmt.Errorf("route to %s via %s in %s: %w", remote.PodNet, remote.Addr, n.NS.Spec, err)
			}
			return nil
		case OverlayVXLAN:
		default:
			return fmt.Errorf("unknown overlay %q", o)
		}
		l, err := h.LinkByName(VXLANDevice)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", VXLANDevice, n.NS.Spec, err)
		}
		idx := l.Attrs().Index
		gw := net.IP(remote.PodNet.Addr().AsSlice())
		steps := []struct {
			what string
			do   func() error
		}{
			{"neighbour", func() error {
				return h.NeighSet(&netlink.Neigh{LinkIndex: idx, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: remote.MAC, Family: family(remote.PodNet.Addr())})
			}},
			{"forwarding entry", func() error {
				return h.NeighAppend(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
					IP: net.IP(remote.Addr.AsSlice()), HardwareAddr: remote.MAC})
			}},
			{"route", func() error {
				return h.RouteAdd(&netlink.Route{Dst: ipnet(remote.PodNet), Gw: gw, LinkIndex: idx, Flags: int(netlink.FLAG_ONLINK)})
			}},
		}
		for _, s := range steps {
			if err := s.do(); err != nil {
				return fmt.Errorf("%s for %s (node %s) on %s in %s: %w", s.what, remote.PodNet, remote.Addr, VXLANDevice, n.NS.Spec, err)
			}
		}
		return nil
	})
}
