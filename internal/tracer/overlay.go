package tracer

import (
	"math/bits"

	"github.com/vishvananda/netlink"

	"github.com/svctrace/svctrace/internal/nf"
)

// overlay is a VXLAN device of the traced namespace: its packets (UDP to
// port) carry Pod packets between nodes, and the kernel side follows them
// by the packet they carry.
type overlay struct {
	name string
	port uint16
}

// overlays are the VXLAN devices in ns; none if they cannot be read (the
// trace then follows the packets they carry once unpacked only).
func overlays(ns nf.NetNS) []overlay {
	var os []overlay
	nf.InNetNS(ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if v, ok := l.(*netlink.Vxlan); ok {
				port := uint16(v.Port)
				if port == 0 {
					port = 8472 // the kernel's default (the pre-IANA port)
				}
				os = append(os, overlay{v.Name, port})
			}
		}
		return nil
	})
	return os
}

// htons is v in network byte order, as the kernel side compares ports, on
// the little-endian hosts the object is built for (bpf2go -target amd64).
func htons(v uint16) uint16 { return bits.ReverseBytes16(v) }
