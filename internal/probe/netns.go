package probe

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

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
	found, err := PodNetNSes([]netip.Addr{ip}, node, procRoot)
	if err != nil {
		return nf.NetNS{}, err
	}
	return found.NetNS(ip)
}

// Found are the Pods' namespaces PodNetNSes found, by address.
type Found struct {
	ns     map[netip.Addr]nf.NetNS
	pids   map[uint32]int // a process of each namespace, by its inode
	looked int            // namespaces looked at
}

// PID is a process of the Pod with address ip (0: none found): one whose
// root holds the Pod's files (/proc/PID/root/etc/resolv.conf), an
// application's rather than the sandbox's pause process where there is
// one.
func (f Found) PID(ip netip.Addr) int { return f.pids[f.ns[ip].Inode] }

// NetNS is the namespace of the Pod with address ip, or why there is none.
func (f Found) NetNS(ip netip.Addr) (nf.NetNS, error) {
	if ns, ok := f.ns[ip]; ok {
		return ns, nil
	}
	return nf.NetNS{}, fmt.Errorf("no network namespace on this node holds %s (%d looked at): is the Pod running on this node?", ip, f.looked)
}

// PodNetNSes is PodNetNS for several Pods at once: the node's processes
// and their namespaces are looked at once for all of them.
func PodNetNSes(ips []netip.Addr, node nf.NetNS, procRoot string) (Found, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return Found{}, err
	}
	seen := map[uint32]bool{}
	pids := map[uint32]int{}
	found := map[netip.Addr]nf.NetNS{}
	wiredFound := map[netip.Addr]bool{}
	for _, e := range entries {
		if len(wiredFound) == len(ips) {
			break
		}
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		ns, err := nf.ResolveNetNS(filepath.Join(procRoot, e.Name(), "ns", "net"))
		if err != nil || ns.Inode == node.Inode {
			continue // gone, not ours to see, or the node itself
		}
		if pid, _ := strconv.Atoi(e.Name()); pids[ns.Inode] == 0 || isPause(pids[ns.Inode], procRoot) {
			pids[ns.Inode] = pid
		}
		if seen[ns.Inode] {
			continue
		}
		seen[ns.Inode] = true
		for ip, wired := range holds(ns, ips, node) {
			_, first := found[ip]
			switch {
			case wired && !wiredFound[ip]:
				found[ip], wiredFound[ip] = ns, true
			case !first:
				found[ip] = ns
			}
		}
	}
	return Found{ns: found, pids: pids, looked: len(seen)}, nil
}

// isPause: process pid is a Pod sandbox's pause process.
func isPause(pid int, procRoot string) bool {
	comm, _ := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "comm"))
	return strings.TrimSpace(string(comm)) == "pause"
}

// holds are the addresses among ips that ns has, each with whether the
// interface with it is wired to the node namespace (its link's peer lives
// there).
func holds(ns nf.NetNS, ips []netip.Addr, node nf.NetNS) map[netip.Addr]bool {
	nodeFd := -1
	if node.Path != "" {
		if f, err := os.Open(node.Path); err == nil {
			defer f.Close()
			nodeFd = int(f.Fd())
		}
	}
	held := map[netip.Addr]bool{}
	nf.InNetNS(ns, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		for _, a := range addrs {
			got, ok := netip.AddrFromSlice(a.IP)
			if !ok || !slices.Contains(ips, got.Unmap()) {
				continue
			}
			ip := got.Unmap()
			if _, ok := held[ip]; !ok {
				held[ip] = false // held; wired if an interface with it is
			}
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil || nodeFd < 0 {
				continue
			}
			// The peer's namespace id, as this namespace numbers it, is
			// assigned by the link dump above.
			if id, err := netlink.GetNetNsIdByFd(nodeFd); err == nil && id >= 0 && l.Attrs().NetNsID == id {
				held[ip] = true
			}
		}
		return err
	})
	return held
}
