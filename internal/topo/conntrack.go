package topo

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ForgetConnection deletes ns's conntrack entry of the TCP connection from
// client to server (its original direction), as conntrack -D would.
func ForgetConnection(ns nf.NetNS, client, server netip.AddrPort) error {
	f := &netlink.ConntrackFilter{}
	for _, err := range []error{
		f.AddProtocol(unix.IPPROTO_TCP),
		f.AddIP(netlink.ConntrackOrigSrcIP, client.Addr().AsSlice()),
		f.AddPort(netlink.ConntrackOrigSrcPort, client.Port()),
		f.AddIP(netlink.ConntrackOrigDstIP, server.Addr().AsSlice()),
		f.AddPort(netlink.ConntrackOrigDstPort, server.Port()),
	} {
		if err != nil {
			return err
		}
	}
	return withHandleFor(ns, unix.NETLINK_NETFILTER, func(h *netlink.Handle) error {
		n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(family(client.Addr())), f)
		if err == nil && n == 0 {
			err = errors.New("no such entry")
		}
		if err != nil {
			return fmt.Errorf("deleting the conntrack entry of %s → %s in %s: %w", client, server, ns.Spec, err)
		}
		return nil
	})
}
