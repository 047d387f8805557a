package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network namespace a lab creates.
const Prefix = "svctrace-lab-"

// Addresses. They exist only inside the lab's namespaces: the node's default
// route leads into the lab's upstream namespace, which forwards nothing.
var (
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	bridgeNet   = netip.MustParsePrefix("10.244.0.1/24")   // cbr0, the pods' gateway
	clientNet   = netip.MustParsePrefix("10.99.0.2/24")    // the client
	nodeNet     = netip.MustParsePrefix("10.99.0.1/24")    // the node, client side
	uplinkNet   = netip.MustParsePrefix("10.255.255.1/30") // the node, upstream side
	upstreamNet = netip.MustParsePrefix("10.255.255.2/30")
)

// NodeIP is the node's address on the client's network.
var NodeIP = nodeNet.Addr()

// ClientIP is the lab client's address.
var ClientIP = clientNet.Addr()

// namespaceNames returns the namespace names of lab id.
func nsName(id, role string) string { return Prefix + id + "-" + role }

func newID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// createNetNS creates a named network namespace (bind-mounted under
// /run/netns like `ip netns add`) without moving the caller into it.
func createNetNS(name string) (tracer.NetNS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return tracer.NetNS{}, err
	}
	defer orig.Close()
	h, err := netns.NewNamed(name)
	if err != nil {
		return tracer.NetNS{}, fmt.Errorf("creating network namespace %s: %w", name, err)
	}
	h.Close()
	if err := netns.Set(orig); err != nil {
		// Keep the thread locked: it must not be reused in the wrong namespace.
		runtime.LockOSThread()
		return tracer.NetNS{}, fmt.Errorf("leaving network namespace %s: %w", name, err)
	}
	return tracer.ResolveNetNS(name)
}

// deleteNetNS unmounts and removes a named namespace. Interfaces in it go
// with it once no process holds it.
func deleteNetNS(name string) error {
	err := netns.DeleteNamed(name)
	if err != nil && errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// handle opens a netlink handle in ns.
func handle(ns tracer.NetNS) (*netlink.Handle, netns.NsHandle, error) {
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil, 0, err
	}
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_ROUTE)
	if err != nil {
		fd.Close()
		return nil, 0, err
	}
	return h, fd, nil
}

// iface configures one end of a link: address, up, default route.
type iface struct {
	ns      tracer.NetNS
	name    string
	addr    netip.Prefix
	gateway netip.Addr // default route via; invalid: none
}

func (i iface) configure() error {
	h, fd, err := handle(i.ns)
	if err != nil {
		return err
	}
	defer fd.Close()
	defer h.Close()
	for _, name := range []string{"lo", i.name} {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", name, i.ns.Spec, err)
		}
		if name == i.name && i.addr.IsValid() {
			if err := h.AddrAdd(l, &netlink.Addr{IPNet: ipnet(i.addr)}); err != nil {
				return fmt.Errorf("adding %s to %s: %w", i.addr, name, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("setting %s up: %w", name, err)
		}
	}
	if i.gateway.IsValid() {
		l, _ := h.LinkByName(i.name)
		if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.IP(i.gateway.AsSlice())}); err != nil {
			return fmt.Errorf("adding default route via %s in %s: %w", i.gateway, i.ns.Spec, err)
		}
	}
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// veth creates a veth pair with one end in each namespace.
func veth(a tracer.NetNS, aName string, b tracer.NetNS, bName string, master string) error {
	h, fd, err := handle(a)
	if err != nil {
		return err
	}
	defer fd.Close()
	defer h.Close()
	peer, err := netns.GetFromPath(b.Path)
	if err != nil {
		return err
	}
	defer peer.Close()
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
}

// addLink creates a link (a bridge) in ns.
func addLink(ns tracer.NetNS, l netlink.Link) error {
	h, fd, err := handle(ns)
	if err != nil {
		return err
	}
	defer fd.Close()
	defer h.Close()
	if err := h.LinkAdd(l); err != nil {
		return fmt.Errorf("creating %s %s: %w", l.Type(), l.Attrs().Name, err)
	}
	return nil
}

// sysctl writes /proc/sys/<key> inside ns.
func sysctl(ns tracer.NetNS, key, value string) error {
	return tracer.InNetNS(ns, func() error {
		path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("setting %s=%s in %s: %w", key, value, ns.Spec, err)
		}
		return nil
	})
}

// listLabNamespaces returns the names of lab namespaces under /run/netns,
// all of them or those of one lab id.
func listLabNamespaces(id string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, Prefix) && (id == "" || strings.HasPrefix(n, Prefix+id+"-")) {
			out = append(out, n)
		}
	}
	return out
}

// killProcessesIn sends SIGKILL to every process whose network namespace is
// one of inodes (the lab's servers, also those a crashed run left behind).
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
