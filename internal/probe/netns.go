package probe

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/vishvananda/netlink"
)

// PodNetNS finds the network namespace of a Pod on this node by its IP:
// the namespace, among those of the node's processes (/proc/PID/ns/net),
// that holds the address. A Pod's processes all share it; the first
// process found in it names it.
func PodNetNS(ip netip.Addr, procRoot string) (tracer.NetNS, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return tracer.NetNS{}, err
	}
	seen := map[uint32]bool{}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		ns, err := tracer.ResolveNetNS(filepath.Join(procRoot, e.Name(), "ns", "net"))
		if err != nil || seen[ns.Inode] {
			continue // gone, not ours to see, or looked at
		}
		seen[ns.Inode] = true
		if holds(ns, ip) {
			return ns, nil
		}
	}
	return tracer.NetNS{}, fmt.Errorf("no network namespace on this node holds %s (%d looked at): is the Pod running on this node?", ip, len(seen))
}

func holds(ns tracer.NetNS, ip netip.Addr) bool {
	found := false
	tracer.InNetNS(ns, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
				found = true
			}
		}
		return err
	})
	return found
}
