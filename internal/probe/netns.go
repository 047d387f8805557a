package probe

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
)

// PodNetNS finds the network namespace of a Pod on this node by its IP:
// the namespace, among those of the node's processes (/proc/PID/ns/net),
// that holds the address. A Pod's processes all share it; the first
// process found in it names it. Where several hold the address (nested
// nodes, test beds), the one whose interface with it is wired to the node
// namespace node (a veth peer there) is the Pod's.
func PodNetNS(ip netip.Addr, node nf.NetNS, procRoot string) (nf.NetNS, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nf.NetNS{}, err
	}
	seen := map[uint32]bool{}
	var first *nf.NetNS
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		ns, err := nf.ResolveNetNS(filepath.Join(procRoot, e.Name(), "ns", "net"))
		if err != nil || seen[ns.Inode] || ns.Inode == node.Inode {
			continue // gone, not ours to see, looked at, or the node itself
		}
		seen[ns.Inode] = true
		held, wired := holds(ns, ip, node)
		if held && wired {
			return ns, nil
		}
		if held && first == nil {
			first = &ns
		}
	}
	if first != nil {
		return *first, nil
	}
	return nf.NetNS{}, fmt.Errorf("no network namespace on this node holds %s (%d looked at): is the Pod running on this node?", ip, len(seen))
}

// holds reports whether ns has address ip, and whether the interface with
// it is wired to the node namespace (its link's peer lives there).
func holds(ns nf.NetNS, ip netip.Addr, node nf.NetNS) (held, wired bool) {
	nodeFd := -1
	if node.Path != "" {
		if f, err := os.Open(node.Path); err == nil {
			defer f.Close()
			nodeFd = int(f.Fd())
		}
	}
	nf.InNetNS(ns, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); !ok || got.Unmap() != ip {
				continue
			}
			held = true
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil || nodeFd < 0 {
				continue
			}
			// The peer's namespace id, as this namespace numbers it, is
			// assigned by the link dump above.
			if id, err := netlink.GetNetNsIdByFd(nodeFd); err == nil && id >= 0 && l.Attrs().NetNsID == id {
				wired = true
			}
		}
		return err
	})
	return held, wired
}
