// Package topo builds test topologies in network namespaces: named
// namespaces, bridges, veth pairs, addresses, routes and sysctls, and removes
// them again. The lab and the end-to-end test harness share it.
package topo

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// CreateNetNS creates a named network namespace (bind-mounted under
// /run/netns like `ip netns add`) without moving the caller into it.
func CreateNetNS(name string) (nf.NetNS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nf.NetNS{}, err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return nf.NetNS{}, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		// Keep the thread locked: it must not be reused in the wrong namespace.
		runtime.LockOSThread()
		return nf.NetNS{}, fmt.Errorf("leaving network namespace %s: %w", name, err)
	}
	return nf.ResolveNetNS(name)
}

// DeleteNetNS unmounts and removes a named namespace. Interfaces in it go
// with it once no process holds it.
func DeleteNetNS(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Iface configures one end of a link: loopback and the link up, addresses,
// default routes.
type Iface struct {
	NS    nf.NetNS
	Name  string
	Addrs []netip.Prefix
	// Gateways: a default route via each (one per family); none: no route.
	Gateways []netip.Addr
}

func (i Iface) Configure() error {
	return withHandle(i.NS, func(h *netlink.Handle) error {
		for _, name := range []string{"lo", i.Name} {
			l, err := h.LinkByName(name)
			if err != nil {
				return fmt.Errorf("%s in %s: %w", name, i.NS.Spec, err)
			}
			if name == i.Name {
				for _, a := range i.Addrs {
					// No duplicate address detection: an IPv6 address is
					// usable at once, not seconds later.
					if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}); err != nil {
						return fmt.Errorf("adding %s to %s: %w", a, name, err)
					}
				}
			}
			if err := h.LinkSetUp(l); err != nil {
				return fmt.Errorf("setting %s up: %w", name, err)
			}
		}
		l, err := h.LinkByName(i.Name)
		if err != nil {
			return err
		}
		for _, gw := range i.Gateways {
			if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(gw.AsSlice())}); err != nil {
				return fmt.Errorf("adding default route via %s in %s: %w", gw, i.NS.Spec, err)
			}
		}
		return nil
	})
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Veth creates a veth pair with one end in each namespace.
func Veth(a nf.NetNS, aName string, b nf.NetNS, bName string, master string) error {
	peer, err := netns.GetFromPath(b.Path)
	if err != nil {
		return err
	}
	defer peer.Close()
	return withHandle(a, func(h *netlink.Handle) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = aName
		if master != "" {
			br, err := h.LinkByName(master)
			if err != nil {
				return err
			}
			attrs.MasterIndex = br.Attrs().Index
		}
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: bName, PeerNamespace: netlink.NsFd(peer)}); err != nil {
			return fmt.Errorf("creating veth %s/%s: %w", aName, bName, err)
		}
		l, err := h.LinkByName(aName)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
}

// withHandle runs f with a netlink handle in ns.
func withHandle(ns nf.NetNS, f func(h *netlink.Handle) error) error {
	return withHandleFor(ns, unix.NETLINK_ROUTE, f)
}

// withHandleFor is withHandle for another netlink family (conntrack's:
// NETLINK_NETFILTER).
func withHandleFor(ns nf.NetNS, family int, f func(h *netlink.Handle) error) error {
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return err
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd, family)
	if err != nil {
		return err
	}
	defer h.Close()
	return f(h)
}

// AddLink creates a link (a bridge) in ns.
func AddLink(ns nf.NetNS, l netlink.Link) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		if err := h.LinkAdd(l); err != nil {
			return fmt.Errorf("creating %s %s: %w", l.Type(), l.Attrs().Name, err)
		}
		return nil
	})
}

// Neighbour sets a permanent neighbour entry for addr on dev in ns, as if a
// host with that MAC address answered there, and returns its removal. It is
// netlink rather than `ip neigh`: the kernel VMs have busybox's ip, which
// cannot.
func Neighbour(ns nf.NetNS, dev string, addr netip.Addr, mac net.HardwareAddr) (remove func() error, err error) {
	var n netlink.Neigh
	err = withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", dev, ns.Spec, err)
		}
		n = netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: net.IP(addr.AsSlice()), HardwareAddr: mac, Family: family(addr)}
		if err := h.NeighSet(&n); err != nil {
			return fmt.Errorf("neighbour %s on %s in %s: %w", addr, dev, ns.Spec, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() error {
		return withHandle(ns, func(h *netlink.Handle) error { return h.NeighDel(&n) })
	}, nil
}

// Blackhole adds a blackhole route to addr alone in ns: what Calico leaves
// behind for an address it has released.
func Blackhole(ns nf.NetNS, addr netip.Addr) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		r := netlink.Route{Dst: ipnet(netip.PrefixFrom(addr, addr.BitLen())), Type: unix.RTN_BLACKHOLE}
		if err := h.RouteAdd(&r); err != nil {
			return fmt.Errorf("blackhole route to %s in %s: %w", addr, ns.Spec, err)
		}
		return nil
	})
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// Sysctl writes /proc/sys/<key> inside ns.
func Sysctl(ns nf.NetNS, key, value string) error {
	return nf.InNetNS(ns, func() error {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in %s: %w", key, value, ns.Spec, err)
		}
		return nil
	})
}

// ReadSysctl reads /proc/sys/<key> inside ns.
func ReadSysctl(ns nf.NetNS, key string) (string, error) {
	var out []byte
	err := nf.InNetNS(ns, func() (err error) {
		out, err = os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		return err
	})
	return strings.TrimSpace(string(out)), err
}

// List returns the names of the namespaces under /run/netns that start
// with prefix.
func List(prefix string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// killProcessesIn sends SIGKILL to every process whose network namespace is
// one of inodes (servers, also those a crashed run left behind).
func killProcessesIn(inodes map[uint64]bool) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid := p.Name()
		if pid[0] < '0' || pid[0] > '9' {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", pid, "ns/net"), &st) != nil || !inodes[st.Ino] {
			continue
		}
		var n int
		fmt.Sscan(pid, &n)
		if n != os.Getpid() {
			syscall.Kill(n, syscall.SIGKILL)
		}
	}
}

// Remove kills the processes in the named namespaces and deletes them.
func Remove(names []string) error {
	inodes := map[uint64]bool{}
	for _, n := range names {
		var st syscall.Stat_t
		if syscall.Stat("/run/netns/"+n, &st) == nil {
			inodes[st.Ino] = true
		}
	}
	killProcessesIn(inodes)
	var errs []error
	for _, n := range names {
		if err := DeleteNetNS(n); err != nil {
			errs = append(errs, fmt.Errorf("removing network namespace %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// BridgeName is NodeNet's bridge.
const BridgeName = "cbr0"

// NodeNet is a Kubernetes-node-like topology: a bridge (cbr0) whose address
// is the pods' gateway, a client namespace routed via the node, and an
// upstream namespace that the node's default route leads to, as on a real
// node. A packet to a Service address nothing translated is therefore routed
// (into FORWARD) instead of failing routing. Upstream does not forward, and
// with forwarding off the kernel discards packets for other hosts without
// answering: whatever the node sends there vanishes and nothing leaves.
type NodeNet struct {
	Node, Client, Upstream nf.NetNS
	Bridge                 netip.Prefix // cbr0's address: the pods' gateway
	NodeAddr, ClientAddr   netip.Prefix // the two ends of the client link
	Uplink                 netip.Prefix // the node's end of the upstream link; upstream has the next address
	// IPv6 has the same roles' IPv6 addresses, for a dual-stack node;
	// nil: IPv4 only.
	IPv6 *NodeNet6
}

// NodeNet6 is a NodeNet's IPv6 addressing.
type NodeNet6 struct {
	Bridge, NodeAddr, ClientAddr, Uplink netip.Prefix
}

// Wire creates the bridge and the client and upstream links, and turns on
// forwarding in the node.
func (n NodeNet) Wire() error {
	nodeAddr, clientAddr, uplink := []netip.Prefix{n.NodeAddr}, []netip.Prefix{n.ClientAddr}, []netip.Prefix{n.Uplink}
	if n.IPv6 != nil {
		nodeAddr = append(nodeAddr, n.IPv6.NodeAddr)
		clientAddr, uplink = append(clientAddr, n.IPv6.ClientAddr), append(uplink, n.IPv6.Uplink)
	}
	// upstream has the next address of each uplink prefix; it is the
	// node's gateway, and the node the client's.
	var upstream []netip.Prefix
	var upstreamGW, clientGW []netip.Addr
	for i, u := range uplink {
		upstream = append(upstream, netip.PrefixFrom(u.Addr().Next(), u.Bits()))
		upstreamGW = append(upstreamGW, u.Addr().Next())
		clientGW = append(clientGW, nodeAddr[i].Addr())
	}
	steps := []func() error{
		n.WireBridge,
		func() error { return Veth(n.Node, "uplink0", n.Upstream, "eth0", "") },
		Iface{NS: n.Node, Name: "uplink0", Addrs: uplink, Gateways: upstreamGW}.Configure,
		Iface{NS: n.Upstream, Name: "eth0", Addrs: upstream}.Configure,
		func() error { return Veth(n.Node, "client0", n.Client, "eth0", "") },
		Iface{NS: n.Node, Name: "client0", Addrs: nodeAddr}.Configure,
		Iface{NS: n.Client, Name: "eth0", Addrs: clientAddr, Gateways: clientGW}.Configure,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// WireBridge makes the node's Pod bridge, with its addresses, and has the
// node forward (and answer with ICMP errors unlimited: kube-proxy REJECTs
// with ICMP, and rate limiting would make that flaky).
func (n NodeNet) WireBridge() error {
	bridge := []netip.Prefix{n.Bridge}
	if n.IPv6 != nil {
		bridge = append(bridge, n.IPv6.Bridge)
	}
	steps := []func() error{
		func() error { return AddLink(n.Node, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}}) },
		Iface{NS: n.Node, Name: BridgeName, Addrs: bridge}.Configure,
		func() error { return Sysctl(n.Node, "net.ipv4.ip_forward", "1") },
		func() error { return Sysctl(n.Node, "net.ipv4.icmp_ratelimit", "0") },
	}
	if n.IPv6 != nil {
		steps = append(steps,
			func() error { return Sysctl(n.Node, "net.ipv6.conf.all.forwarding", "1") },
			func() error { return Sysctl(n.Node, "net.ipv6.icmp.ratelimit", "0") })
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// AttachPod connects pod to the bridge as veth<i> on the node and eth0 in
// the pod, with addrs in the bridge's subnets (one per family) and a
// default route via the bridge for each.
func (n NodeNet) AttachPod(pod nf.NetNS, i int, addrs ...netip.Addr) error {
	if err := Veth(n.Node, fmt.Sprintf("veth%d", i), pod, "eth0", BridgeName); err != nil {
		return err
	}
	iface := Iface{NS: pod, Name: "eth0"}
	for _, a := range addrs {
		br := n.Bridge
		if a.Is6() {
			if n.IPv6 == nil {
				return fmt.Errorf("pod address %s: the node has no IPv6 network", a)
			}
			br = n.IPv6.Bridge
		}
		iface.Addrs = append(iface.Addrs, netip.PrefixFrom(a, br.Bits()))
		iface.Gateways = append(iface.Gateways, br.Addr())
	}
	return iface.Configure()
}

// Run runs a command inside ns, with stdin as its input, and returns its
// combined output; a failure's error carries the output.
func Run(ns nf.NetNS, stdin string, args ...string) (string, error) {
	var out []byte
	err := nf.InNetNS(ns, func() (err error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdin = strings.NewReader(stdin)
		// The child starts in the namespace of this (locked) thread.
		out, err = cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return err
	})
	return string(out), err
}
