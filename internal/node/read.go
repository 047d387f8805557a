package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/probe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Pod is an endpoint Pod on this node whose listening sockets to read.
type Pod struct {
	Name string // "shop/web-1"
	Addr netip.Addr
}

// MaxPods bounds the Pods whose sockets one Read looks at.
const MaxPods = 32

// Want is what Read reads.
type Want struct {
	// Addrs: the routes to these (the endpoints, a client) and the
	// neighbour entries of their next hops.
	Addrs []netip.Addr
	// Pods: the listening sockets of these endpoint Pods.
	Pods []Pod
	// Devs: the rp_filter of these interfaces too (where a packet came in).
	Devs []string
}

// Read reads the node's facts in its network namespace ns: the routes to
// the addresses wanted and the neighbour entries of their next hops, the
// interfaces, the sysctls that decide forwarding and reverse-path
// filtering, and the listening sockets of the Pods wanted, each found as
// --from pod/NAME finds it (the namespace of a process of this node that
// holds the Pod's address).
func Read(ns nf.NetNS, want Want) *Facts {
	f := &Facts{Sysctls: map[string]string{}, Links: map[string]Link{}}
	pods := want.Pods
	err := nf.InNetNS(ns, func() error {
		f.readLinks()
		for _, a := range want.Addrs {
			f.readRoute(a)
		}
		f.readNeighbours()
		f.readBridgePorts()
		f.readSysctls(want.Devs)
		f.readQdiscs()
		f.readPolicies(want.Addrs)
		return nil
	})
	if err != nil {
		f.Unread = append(f.Unread, "the node's routes, neighbours and sysctls: "+err.Error())
	}
	if len(pods) > MaxPods {
		f.Unread = append(f.Unread, fmt.Sprintf("the sockets of %d more endpoint Pods on this node (svctrace reads %d)", len(pods)-MaxPods, MaxPods))
		pods = pods[:MaxPods]
	}
	if len(pods) > 0 {
		addrs := make([]netip.Addr, len(pods))
		for i, p := range pods {
			addrs[i] = p.Addr
		}
		found, err := probe.PodNetNSes(addrs, ns, "")
		for _, p := range pods {
			f.Listeners = append(f.Listeners, listeners(found, err, p))
		}
	}
	// The node's ends of the Pods' links, and their qdiscs.
	if slices.ContainsFunc(f.Listeners, func(l Listeners) bool { return l.peer > 0 }) {
		nf.InNetNS(ns, func() error {
			for i := range f.Listeners {
				if l := &f.Listeners[i]; l.peer > 0 {
					if link, err := netlink.LinkByIndex(l.peer); err == nil {
						l.Link = link.Attrs().Name
						f.readQdiscsOf(l.Link)
					}
				}
			}
			return nil
		})
	}
	return f
}

func (f *Facts) readLinks() {
	links, err := dump(netlink.LinkList())
	if err != nil {
		f.Unread = append(f.Unread, "the node's interfaces: "+err.Error())
		return
	}
	for _, l := range links {
		a := l.Attrs()
		f.Links[a.Name] = Link{MTU: a.MTU, Up: a.OperState == netlink.OperUp || a.Flags&net.FlagUp != 0 && a.OperState == netlink.OperUnknown,
			State: strings.ToUpper(strings.ReplaceAll(a.OperState.String(), "-", ""))}
	}
}

// routeErrors: what the kernel answers a route lookup that meets no
// usable route, as the route's type.
var routeErrors = map[syscall.Errno]string{
	unix.ENETUNREACH: "", unix.EHOSTUNREACH: "unreachable", unix.EACCES: "prohibit", unix.EINVAL: "blackhole",
}

func (f *Facts) readRoute(a netip.Addr) {
	if _, ok := f.Route(a); ok {
		return
	}
	r := Route{To: a}
	rs, err := netlink.RouteGet(a.AsSlice())
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		r.Type, r.Err = routeErrors[errno], errno.Error()
	case err != nil:
		r.Err = err.Error()
	case len(rs) == 0:
		r.Err = "no route"
	default:
		r.Type = routeType(rs[0].Type)
		if l, err := netlink.LinkByIndex(rs[0].LinkIndex); err == nil {
			r.Dev = l.Attrs().Name
		}
		if gw, ok := netip.AddrFromSlice(rs[0].Gw); ok {
			r.Via = gw.Unmap()
		}
		if src, ok := netip.AddrFromSlice(rs[0].Src); ok {
			r.Src = src.Unmap()
		}
		r.MTU = rs[0].MTU
		r.Prefix = mainRoute(a)
	}
	f.Routes = append(f.Routes, r)
}

// mainRoute is the destination of the main table's most specific unicast
// route to a (rules and other tables aside: what a CNI's routes to other
// nodes' Pod ranges are in); invalid if none.
func mainRoute(a netip.Addr) netip.Prefix {
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	rs, err := dump(netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE))
	if err != nil {
		return netip.Prefix{}
	}
	best := netip.Prefix{}
	for _, r := range rs {
		p := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if a.Is6() {
			p = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if r.Dst != nil {
			p = prefix(r.Dst)
		}
		if r.Type == unix.RTN_UNICAST && p.Contains(a) && (!best.IsValid() || p.Bits() > best.Bits()) {
			best = p
		}
	}
	return best
}

func routeType(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_BROADCAST:
		return "broadcast"
	}
	return fmt.Sprintf("type %d", t)
}

// readNeighbours keeps the entries of the routes' next hops.
func (f *Facts) readNeighbours() {
	var hops []netip.Addr
	for _, r := range f.Routes {
		if r.Usable() && r.Type == "unicast" {
			hops = append(hops, r.NextHop())
		}
	}
	if len(hops) == 0 {
		return
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := dump(netlink.NeighList(0, family))
		if err != nil {
			f.Unread = append(f.Unread, "the neighbour table: "+err.Error())
			return
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok || !slices.Contains(hops, a.Unmap()) {
				continue
			}
			e := Neighbour{Addr: a.Unmap(), State: neighState(n.State)}
			if l, err := netlink.LinkByIndex(n.LinkIndex); err == nil {
				e.Dev = l.Attrs().Name
			}
			if len(n.HardwareAddr) > 0 {
				e.MAC = n.HardwareAddr.String()
			}
			f.Neighbours = append(f.Neighbours, e)
		}
	}
}

func neighState(s int) string {
	for _, st := range []struct {
		bit  int
		name string
	}{{netlink.NUD_FAILED, "FAILED"}, {netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_REACHABLE, "REACHABLE"},
		{netlink.NUD_STALE, "STALE"}, {netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"},
		{netlink.NUD_PERMANENT, "PERMANENT"}, {netlink.NUD_NOARP, "NOARP"}} {
		if s&st.bit != 0 {
			return st.name
		}
	}
	return "NONE"
}

// Sysctls read, with the interfaces' rp_filter added for the devices on
// the routes and the bridges.
var sysctls = []string{
	"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
	"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
	"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
	"net.netfilter.nf_conntrack_tcp_be_liberal", "net.netfilter.nf_conntrack_tcp_loose",
}

func (f *Facts) readSysctls(devs []string) {
	names := slices.Clone(sysctls)
	for _, d := range devs {
		names = append(names, "net.ipv4.conf."+d+".rp_filter")
	}
	for _, r := range f.Routes {
		if r.Dev != "" && r.To.Is4() {
			names = append(names, "net.ipv4.conf."+r.Dev+".rp_filter")
		}
	}
	for _, n := range names {
		if _, ok := f.Sysctls[n]; ok {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(n, ".", "/")))
		if err == nil {
			f.Sysctls[n] = strings.TrimSpace(string(b))
		}
	}
}

// listeners reads the sockets listening in Pod p's network namespace,
// among those found (unless finding them failed: lookErr).
func listeners(found probe.Found, lookErr error, p Pod) Listeners {
	l := Listeners{Pod: p.Name, Addr: p.Addr}
	ns, err := found.NetNS(p.Addr)
	if lookErr != nil {
		err = lookErr
	}
	if err != nil {
		l.Err = err.Error()
		return l
	}
	err = nf.InNetNS(ns, func() error {
		l.peer = peerOf(p.Addr)
		var err error
		l.Sockets, l.Held, err = sockets()
		return err
	})
	if err != nil {
		l.Sockets, l.Held, l.Err = nil, nil, err.Error()
	}
	return l
}

// Sockets are the listening TCP sockets and bound UDP sockets of network
// namespace ns: what takes a connection or a datagram there.
func Sockets(ns nf.NetNS) ([]Socket, error) {
	var ss []Socket
	err := nf.InNetNS(ns, func() error {
		var err error
		ss, _, err = sockets()
		return err
	})
	return ss, err
}

// sockets reads the current namespace's listening and bound sockets, and
// its TCP connections holding unread data (at most MaxHeld).
func sockets() (ss []Socket, held []Held, err error) {
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := retried(func() ([]*netlink.Socket, error) { return netlink.SocketDiagTCP(family) })
		if err != nil {
			return nil, nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, s := range tcp {
			switch local := sockAddr(family, s.ID.Source, s.ID.SourcePort); {
			case s.State == 10: // TCP_LISTEN
				ss = append(ss, Socket{Proto: nf.TCP, Local: local, Queue: s.RQueue, Backlog: s.WQueue})
			case s.RQueue > 0 && len(held) < MaxHeld:
				held = append(held, Held{Local: local, Remote: sockAddr(family, s.ID.Destination, s.ID.DestinationPort), RecvQ: s.RQueue})
			}
		}
		udp, err := retried(func() ([]*netlink.Socket, error) { return netlink.SocketDiagUDP(family) })
		if err != nil {
			return nil, nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, s := range udp {
			if s.ID.DestinationPort == 0 {
				ss = append(ss, Socket{Proto: nf.UDP, Local: sockAddr(family, s.ID.Source, s.ID.SourcePort)})
			}
		}
	}
	return ss, held, nil
}

func sockAddr(family uint8, ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	if family == unix.AF_INET {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, port)
}

// readBridgePorts finds, for routes into a bridge, the port the bridge
// sends the next hop to: the forwarding entry of its MAC address; for
// routes into a VXLAN device, the node it sends the next hop to, by the
// same table.
func (f *Facts) readBridgePorts() {
	fdb, err := dump(netlink.NeighList(0, unix.AF_BRIDGE))
	if err != nil {
		return
	}
	for i, r := range f.Routes {
		n, ok := f.Neighbour(r.NextHop())
		if !ok || n.MAC == "" || r.Dev == "" {
			continue
		}
		br, err := netlink.LinkByName(r.Dev)
		if err == nil && br.Type() == "vxlan" {
			f.Routes[i].VXLAN = true
			for _, e := range fdb {
				if e.LinkIndex == br.Attrs().Index && e.HardwareAddr.String() == n.MAC && e.IP != nil {
					f.Routes[i].Remote, _ = netip.AddrFromSlice(e.IP)
					f.Routes[i].Remote = f.Routes[i].Remote.Unmap()
					break
				}
			}
		}
		if err != nil || br.Type() != "bridge" {
			continue
		}
		for _, e := range fdb {
			if e.HardwareAddr.String() != n.MAC || e.Flags&netlink.NTF_SELF != 0 {
				continue
			}
			if l, err := netlink.LinkByIndex(e.LinkIndex); err == nil && l.Attrs().MasterIndex == br.Attrs().Index {
				f.Routes[i].Port = l.Attrs().Name
				break
			}
		}
	}
}

// readQdiscs reads the qdiscs of the devices the routes leave by (and of
// the bridge ports they go on through).
func (f *Facts) readQdiscs() {
	for _, r := range f.Routes {
		for _, d := range []string{r.Dev, r.Port} {
			if d != "" {
				f.readQdiscsOf(d)
			}
		}
	}
}

// readQdiscsOf reads the qdiscs of interface d, once.
func (f *Facts) readQdiscsOf(d string) {
	if slices.ContainsFunc(f.Qdiscs, func(q Qdisc) bool { return q.Dev == d }) {
		return
	}
	l, err := netlink.LinkByName(d)
	if err != nil {
		return
	}
	qs, err := dump(netlink.QdiscList(l))
	if err != nil {
		f.Unread = append(f.Unread, "the qdiscs of "+d+": "+err.Error())
		return
	}
	for _, q := range qs {
		a := q.Attrs()
		e := Qdisc{Dev: d, Kind: q.Type(), Root: a.Parent == netlink.HANDLE_ROOT}
		if a.Statistics != nil && a.Statistics.Queue != nil {
			e.Dropped = a.Statistics.Queue.Drops
		}
		switch q := q.(type) {
		case *netlink.Netem:
			if q.Loss > 0 {
				e.Detail = fmt.Sprintf("loss %.4g%%", float64(q.Loss)*100/float64(^uint32(0)))
			}
		case *netlink.Tbf:
			e.Detail = fmt.Sprintf("rate %dbit limit %d", q.Rate*8, q.Limit)
		case *netlink.Clsact, *netlink.Ingress:
			e.Detail = filters(l, q.Type() == "clsact")
		}
		f.Qdiscs = append(f.Qdiscs, e)
	}
}

// filters describes the tc filters (eBPF programs, actions) a clsact or
// ingress qdisc runs on l: "ingress: bpf cil_from_container direct-action
// id 42; egress: matchall action drop".
func filters(l netlink.Link, egress bool) string {
	dirs := []struct {
		name   string
		parent uint32
	}{{"ingress", netlink.HANDLE_MIN_INGRESS}, {"egress", netlink.HANDLE_MIN_EGRESS}}
	if !egress {
		dirs = dirs[:1] // an ingress qdisc has no egress side
	}
	var out []string
	for _, d := range dirs {
		fs, err := dump(netlink.FilterList(l, d.parent))
		if err != nil {
			out = append(out, d.name+": not read ("+err.Error()+")")
			continue
		}
		var each []string
		for _, f := range fs {
			each = append(each, filterString(f))
		}
		if len(each) > 0 {
			out = append(out, d.name+": "+strings.Join(each, ", "))
		}
	}
	if len(out) == 0 {
		return "no filters"
	}
	return strings.Join(out, "; ")
}

func filterString(f netlink.Filter) string {
	s := f.Type()
	switch f.Attrs().Protocol {
	case unix.ETH_P_IP:
		s += " protocol ip"
	case unix.ETH_P_IPV6:
		s += " protocol ipv6"
	case unix.ETH_P_ARP:
		s += " protocol arp"
	}
	var actions []netlink.Action
	switch f := f.(type) {
	case *netlink.BpfFilter:
		s += " " + f.Name
		if f.DirectAction {
			s += " direct-action"
		}
		s += fmt.Sprintf(" id %d", f.Id)
	case *netlink.MatchAll:
		actions = f.Actions
	case *netlink.U32:
		actions = f.Actions
	case *netlink.Flower:
		actions = f.Actions
	}
	for _, a := range actions {
		act := a.Attrs().Action
		switch a.(type) {
		case *netlink.GenericAction:
			name := act.String()
			if act == netlink.TC_ACT_SHOT {
				name = "drop"
			}
			s += " action " + name
		default:
			s += " action " + a.Type()
		}
	}
	return s
}

// readPolicies reads the xfrm policies that cover the addresses.
func (f *Facts) readPolicies(addrs []netip.Addr) {
	ps, err := dump(netlink.XfrmPolicyList(netlink.FAMILY_ALL))
	if err != nil {
		return // no xfrm in this kernel: nothing to read
	}
	for _, p := range ps {
		e := Policy{Src: prefix(p.Src), Dst: prefix(p.Dst), Dir: strings.TrimPrefix(p.Dir.String(), "dir "), Action: "allow"}
		if p.Action == netlink.XFRM_POLICY_BLOCK {
			e.Action = "block"
		}
		if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return e.Src.Contains(a) || e.Dst.Contains(a) }) {
			f.Policies = append(f.Policies, e)
		}
	}
}

func prefix(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// peerOf is the index, in the namespace at its other end, of the veth
// peer of the interface that holds a here; 0 if none.
func peerOf(a netip.Addr) int {
	addrs, err := dump(netlink.AddrList(nil, netlink.FAMILY_ALL))
	if err != nil {
		return 0
	}
	for _, ad := range addrs {
		if got, ok := netip.AddrFromSlice(ad.IP); !ok || got.Unmap() != a {
			continue
		}
		l, err := netlink.LinkByIndex(ad.LinkIndex)
		if v, ok := l.(*netlink.Veth); err == nil && ok {
			if idx, err := netlink.VethPeerIndex(v); err == nil {
				return idx
			}
		}
	}
	return 0
}

// dump takes a netlink dump's results as they are when the kernel says it
// was interrupted (the table changed while it was read): what was read is
// still what the node held.
func dump[T any](v T, err error) (T, error) {
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		err = nil
	}
	return v, err
}

// retried reads sockets again when the dump was interrupted (sockets come
// and go while a Pod serves), then takes the last read as it is.
func retried(read func() ([]*netlink.Socket, error)) ([]*netlink.Socket, error) {
	var ss []*netlink.Socket
	var err error
	for range 5 {
		if ss, err = read(); !errors.Is(err, netlink.ErrDumpInterrupted) {
			return ss, err
		}
	}
	return ss, nil
}
