package record

import (
	"net"
	"net/netip"
	"slices"

	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ConntrackSnapshot lists the conntrack entries of ns whose original
// destination, or reply source, is one of targets (over netlink, as
// conntrack -L would). It returns nothing when the table cannot be read.
func ConntrackSnapshot(ns tracer.NetNS, targets []tracer.Target) []Conntrack {
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil
	}
	defer h.Close()
	var out []Conntrack
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, _ := h.ConntrackTableList(netlink.ConntrackTable, fam)
		for _, f := range flows {
			c := Conntrack{Proto: tracer.Proto(f.Forward.Protocol).String(), Mark: f.Mark, Zone: f.Zone, Timeout: f.TimeOut,
				Orig:  [2]netip.AddrPort{addrPort(f.Forward.SrcIP, f.Forward.SrcPort), addrPort(f.Forward.DstIP, f.Forward.DstPort)},
				Reply: [2]netip.AddrPort{addrPort(f.Reverse.SrcIP, f.Reverse.SrcPort), addrPort(f.Reverse.DstIP, f.Reverse.DstPort)}}
			if slices.ContainsFunc(targets, func(t tracer.Target) bool { return t.Addr == c.Orig[1] || t.Addr == c.Reply[0] }) {
				out = append(out, c)
			}
		}
	}
	return out
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
