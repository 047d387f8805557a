// Package node holds the facts of the node's network that decide where a
// packet goes and whether something takes it: the route the kernel picks
// to each endpoint, the neighbour entries on the way, the sysctls that
// decide forwarding and reverse-path filtering, and the sockets each
// endpoint Pod on this node listens on. Read reads them through netlink in
// the node's (and the Pods') network namespaces; the rest are plain
// functions over the values, which recordings keep.
package node

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
)

// Facts are what Read found. What it could not read is in Unread, so that
// nothing is stated as fact that was not.
type Facts struct {
	Routes     []Route     `json:"routes,omitempty"`
	Neighbours []Neighbour `json:"neighbours,omitempty"`
	// Sysctls by name ("net.ipv4.ip_forward"); a missing name was not
	// readable (no bridge netfilter module, say).
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// Links are the node's interfaces by name: their MTU and state.
	Links map[string]Link `json:"links,omitempty"`
	// Qdiscs are the queueing disciplines of the interfaces the routes
	// leave by.
	Qdiscs []Qdisc `json:"qdiscs,omitempty"`
	// Policies are the xfrm (IPsec) policies whose selector covers an
	// address asked about.
	Policies []Policy `json:"xfrm_policies,omitempty"`
	// Listeners are the sockets the endpoint Pods on this node listen
	// on, one entry per Pod address asked about.
	Listeners []Listeners `json:"listeners,omitempty"`
	// Unread says what could not be read, and why.
	Unread []string `json:"unread,omitempty"`
}

// Route is the route the kernel picks to one address, as ip route get
// shows it.
type Route struct {
	To netip.Addr `json:"to"`
	// Type is the route's type: "unicast", "local", "unreachable",
	// "blackhole", "prohibit", "throw"; "" when the kernel found none
	// (Err says what it answered).
	Type string `json:"type,omitempty"`
	Dev  string `json:"dev,omitempty"`
	// Port: when Dev is a bridge, the bridge port its forwarding table
	// sends the next hop's MAC address to.
	Port string `json:"port,omitempty"`
	// VXLAN: Dev is a VXLAN device; Remote is the node its forwarding
	// table (bridge fdb) sends the next hop's MAC address to, invalid if
	// it has no entry for it.
	VXLAN  bool       `json:"vxlan,omitempty"`
	Remote netip.Addr `json:"remote,omitzero"`
	Via    netip.Addr `json:"via,omitzero"`
	Src    netip.Addr `json:"src,omitzero"`
	// Prefix is the destination of the main table's route the address
	// falls under (0.0.0.0/0: the default route); invalid if not read.
	Prefix netip.Prefix `json:"prefix,omitzero"`
	// MTU is the route's own MTU, when it sets one (else the device's).
	MTU int    `json:"mtu,omitempty"`
	Err string `json:"error,omitempty"`
}

// Usable reports whether the kernel can send a packet to r.To: a route
// that is neither missing nor of a refusing type.
func (r Route) Usable() bool {
	return r.Err == "" && (r.Type == "unicast" || r.Type == "local")
}

// NextHop is the address whose neighbour entry the packet needs: the
// gateway, else the destination itself (on a local link).
func (r Route) NextHop() netip.Addr {
	if r.Via.IsValid() {
		return r.Via
	}
	return r.To
}

// String says the route as ip route get does: "10.244.0.12 dev br0 src
// 10.244.0.1", "unreachable 10.244.7.2", or the kernel's answer.
func (r Route) String() string {
	if r.Err != "" {
		return fmt.Sprintf("ip route get %s: %s", r.To, r.Err)
	}
	var b strings.Builder
	if r.Type != "unicast" {
		b.WriteString(r.Type + " ")
	}
	b.WriteString(r.To.String())
	if r.Via.IsValid() {
		b.WriteString(" via " + r.Via.String())
	}
	if r.Dev != "" {
		b.WriteString(" dev " + r.Dev)
	}
	if r.Src.IsValid() {
		b.WriteString(" src " + r.Src.String())
	}
	if r.MTU != 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	if r.Prefix.IsValid() && r.Prefix.Bits() == 0 {
		b.WriteString(" (the default route)")
	}
	if r.Port != "" {
		b.WriteString(" (bridge port " + r.Port + ")")
	}
	switch {
	case r.VXLAN && r.Remote.IsValid():
		b.WriteString(" (VXLAN, forwarded to " + r.Remote.String() + ")")
	case r.VXLAN:
		b.WriteString(" (VXLAN: its forwarding table has no entry for the next hop's MAC address)")
	}
	return b.String()
}

// Neighbour is one entry of the neighbour table (ARP, NDP).
type Neighbour struct {
	Addr netip.Addr `json:"addr"`
	Dev  string     `json:"dev"`
	// State as ip neigh shows it: "REACHABLE", "STALE", "DELAY",
	// "PROBE", "INCOMPLETE", "FAILED", "PERMANENT", "NOARP".
	State string `json:"state"`
	MAC   string `json:"mac,omitempty"`
}

// Answered reports whether the neighbour answered ARP or NDP at some
// point (or needs not).
func (n Neighbour) Answered() bool {
	return n.State != "INCOMPLETE" && n.State != "FAILED" && n.State != "NONE"
}

func (n Neighbour) String() string {
	s := fmt.Sprintf("%s dev %s", n.Addr, n.Dev)
	if n.MAC != "" {
		s += " lladdr " + n.MAC
	}
	return s + " " + n.State
}

// Qdisc is one queueing discipline, as tc -s qdisc shows it.
type Qdisc struct {
	Dev     string `json:"dev"`
	Kind    string `json:"kind"`             // "netem", "fq_codel", "noqueue", …
	Root    bool   `json:"root,omitempty"`   // attached at the root (egress)
	Detail  string `json:"detail,omitempty"` // what makes it drop: "loss 100%", "limit 1000"
	Dropped uint32 `json:"dropped,omitempty"`
}

func (q Qdisc) String() string {
	s := fmt.Sprintf("tc qdisc on %s: %s", q.Dev, q.Kind)
	if q.Root {
		s += " root"
	}
	if q.Kind == "clsact" || q.Kind == "ingress" {
		// Its filters (tc programs) drop; it counts their drops.
		s += " [" + q.Detail + "]"
	} else if q.Detail != "" {
		s += " " + q.Detail
	}
	return s + fmt.Sprintf(" (dropped %d)", q.Dropped)
}

// Policy is one xfrm policy.
type Policy struct {
	Src    netip.Prefix `json:"src"`
	Dst    netip.Prefix `json:"dst"`
	Dir    string       `json:"dir"`    // "in", "out", "fwd"
	Action string       `json:"action"` // "allow", "block"
}

func (p Policy) String() string {
	return fmt.Sprintf("ip xfrm policy: src %s dst %s dir %s action %s", p.Src, p.Dst, p.Dir, p.Action)
}

// QdiscsOn are the qdiscs of interface dev.
func (f *Facts) QdiscsOn(dev string) []Qdisc {
	var out []Qdisc
	for _, q := range f.Qdiscs {
		if q.Dev == dev {
			out = append(out, q)
		}
	}
	return out
}

// PoliciesFor are the xfrm policies whose source or destination covers a.
func (f *Facts) PoliciesFor(a netip.Addr) []Policy {
	var out []Policy
	for _, p := range f.Policies {
		if p.Dst.Contains(a) || p.Src.Contains(a) {
			out = append(out, p)
		}
	}
	return out
}

// Link is one interface of the node.
type Link struct {
	MTU int  `json:"mtu"`
	Up  bool `json:"up"`
	// State is its operational state as ip link shows it: "DOWN",
	// "LOWERLAYERDOWN" (a veth whose peer is down), "UP".
	State string `json:"state,omitempty"`
}

// LinkDown is the first interface on the way to a (the route's device,
// then the bridge port behind it) that is not up, if any.
func (f *Facts) LinkDown(a netip.Addr) (string, Link, bool) {
	for _, d := range f.Toward(a) {
		if l, ok := f.Links[d]; ok && !l.Up {
			return d, l, true
		}
	}
	return "", Link{}, false
}

// String: "ip link show veth1: state LOWERLAYERDOWN".
func (l Link) String(dev string) string {
	state := l.State
	if state == "" {
		state = "not up"
	}
	return fmt.Sprintf("ip link show %s: state %s", dev, state)
}

// Listeners are the sockets listening in one Pod's network namespace.
type Listeners struct {
	Pod  string     `json:"pod"` // "shop/web-1"
	Addr netip.Addr `json:"addr"`
	// Link is the node's end of the Pod's link (its veth peer), where
	// what the node sends the Pod is queued; "" if not found.
	Link string `json:"link,omitempty"`
	peer int    // Link's index in the node's namespace, while reading
	// Sockets are its listening TCP sockets and bound UDP sockets; nil
	// with Err set when its namespace could not be read.
	Sockets []Socket `json:"sockets,omitempty"`
	// Held are its TCP connections holding data its application has not
	// read (Recv-Q), at most MaxHeld: a receive window that closes.
	Held []Held `json:"held,omitempty"`
	Err  string `json:"error,omitempty"`
}

// MaxHeld bounds the connections with unread data kept per Pod.
const MaxHeld = 16

// Held is one connection with data its application has not read.
type Held struct {
	Local  netip.AddrPort `json:"local"`
	Remote netip.AddrPort `json:"remote"`
	RecvQ  uint32         `json:"recv_q"`
}

func (h Held) String() string {
	return fmt.Sprintf("tcp %s ↔ %s: %d bytes received and not read by its application (Recv-Q)", h.Local, h.Remote, h.RecvQ)
}

// HeldBy is the connection between local and remote, if it holds unread
// data.
func (l Listeners) HeldBy(local, remote netip.AddrPort) (Held, bool) {
	for _, h := range l.Held {
		if h.Local == local && h.Remote == remote {
			return h, true
		}
	}
	return Held{}, false
}

// Socket is one listening socket.
type Socket struct {
	Proto nf.Proto       `json:"proto"`
	Local netip.AddrPort `json:"local"`
	// Queue and Backlog: for a TCP listener, the connections waiting to
	// be accepted and how many may.
	Queue   uint32 `json:"queue,omitempty"`
	Backlog uint32 `json:"backlog,omitempty"`
}

func (s Socket) String() string {
	str := fmt.Sprintf("%s %s", s.Proto, s.Local)
	if s.Proto == nf.TCP {
		str += fmt.Sprintf(" (accept queue %d of %d)", s.Queue, s.Backlog)
	}
	return str
}

// Takes reports whether the socket takes connections to a: the same
// protocol and port, and its address a's or a wildcard of a's family (an
// IPv6 wildcard takes IPv4 too unless it is v6only, which sock_diag does
// not say: svctrace assumes the default, dual-stack).
func (s Socket) Takes(p nf.Proto, a netip.AddrPort) bool {
	if s.Proto != p || s.Local.Port() != a.Port() {
		return false
	}
	l := s.Local.Addr()
	return l == a.Addr() || (l.IsUnspecified() && (l.Is6() || a.Addr().Is4()))
}

// Route is the route read to a, if any.
func (f *Facts) Route(a netip.Addr) (Route, bool) {
	for _, r := range f.Routes {
		if r.To == a {
			return r, true
		}
	}
	return Route{}, false
}

// Neighbour is the neighbour entry of a, if any.
func (f *Facts) Neighbour(a netip.Addr) (Neighbour, bool) {
	for _, n := range f.Neighbours {
		if n.Addr == a {
			return n, true
		}
	}
	return Neighbour{}, false
}

// ListenersOf are the listeners read for the Pod address a, if any.
func (f *Facts) ListenersOf(a netip.Addr) (Listeners, bool) {
	for _, l := range f.Listeners {
		if l.Addr == a {
			return l, true
		}
	}
	return Listeners{}, false
}

// Sysctl is the value of sysctl name, and whether it was read.
func (f *Facts) Sysctl(name string) (string, bool) {
	v, ok := f.Sysctls[name]
	return v, ok
}

// Merge is the facts of fs together (nil ones skipped), each address's,
// interface's and sysctl's from the first that has it; nil if there are
// none.
func Merge(fs ...*Facts) *Facts {
	var out *Facts
	routes, neighbours, listeners := map[netip.Addr]bool{}, map[netip.Addr]bool{}, map[netip.Addr]bool{}
	qdiscs := map[string]bool{} // an interface's qdiscs come from one read
	for _, f := range fs {
		if f == nil {
			continue
		}
		if out == nil {
			out = &Facts{Sysctls: map[string]string{}, Links: map[string]Link{}}
		}
		for _, r := range f.Routes {
			if !routes[r.To] {
				routes[r.To] = true
				out.Routes = append(out.Routes, r)
			}
		}
		for _, n := range f.Neighbours {
			if !neighbours[n.Addr] {
				neighbours[n.Addr] = true
				out.Neighbours = append(out.Neighbours, n)
			}
		}
		for _, l := range f.Listeners {
			if !listeners[l.Addr] {
				listeners[l.Addr] = true
				out.Listeners = append(out.Listeners, l)
			}
		}
		read := map[string]bool{}
		for _, q := range f.Qdiscs {
			if !qdiscs[q.Dev] {
				read[q.Dev] = true
				out.Qdiscs = append(out.Qdiscs, q)
			}
		}
		for d := range read {
			qdiscs[d] = true
		}
		for _, p := range f.Policies {
			if !slices.Contains(out.Policies, p) {
				out.Policies = append(out.Policies, p)
			}
		}
		for k, v := range f.Sysctls {
			if _, ok := out.Sysctls[k]; !ok {
				out.Sysctls[k] = v
			}
		}
		for k, v := range f.Links {
			if _, ok := out.Links[k]; !ok {
				out.Links[k] = v
			}
		}
		for _, u := range f.Unread {
			if !slices.Contains(out.Unread, u) {
				out.Unread = append(out.Unread, u)
			}
		}
	}
	return out
}

// Read says which facts were read: "routes to 2 endpoints, 1 neighbour
// entry, 5 sysctls, the listening sockets of 1 Pod (sock_diag)"; "" for
// nil facts.
func (f *Facts) Read() string {
	if f == nil {
		return ""
	}
	var parts []string
	if n := len(f.Routes); n > 0 {
		parts = append(parts, fmt.Sprintf("routes to %d endpoint address%s (ip route get)", n, plural(n, "", "es")))
	}
	if n := len(f.Neighbours); n > 0 {
		parts = append(parts, fmt.Sprintf("%d neighbour entr%s", n, plural(n, "y", "ies")))
	}
	if n := len(f.Sysctls); n > 0 {
		parts = append(parts, fmt.Sprintf("%d sysctls", n))
	}
	read := 0
	for _, l := range f.Listeners {
		if l.Err == "" {
			read++
		}
	}
	if read > 0 {
		parts = append(parts, fmt.Sprintf("the listening sockets of %d Pod%s (sock_diag)", read, plural(read, "", "s")))
	}
	if len(parts) == 0 {
		return "none read"
	}
	return strings.Join(parts, ", ")
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Toward are the interfaces a packet to a leaves the node by: the route's
// device, the bridge port behind it, the node's end of the Pod's link.
func (f *Facts) Toward(a netip.Addr) []string {
	var devs []string
	add := func(d string) {
		if d != "" && !slices.Contains(devs, d) {
			devs = append(devs, d)
		}
	}
	if r, ok := f.Route(a); ok {
		add(r.Dev)
		add(r.Port)
	}
	if l, ok := f.ListenersOf(a); ok {
		add(l.Link)
	}
	return devs
}
