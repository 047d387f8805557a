package resolve

import (
	"net/netip"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
)

// LocalAddrs are the global unicast addresses in the node's namespace:
// where NodePorts are reached, and how the Node object is found when its
// name is not the host name.
func LocalAddrs(ns nf.NetNS) []netip.Addr {
	var out []netip.Addr
	nf.InNetNS(ns, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
		return nil
	})
	return out
}
