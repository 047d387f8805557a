// Package cause is svctrace's model of why traffic fails, as data: the
// classes of evidence the kernel gives (its drop reasons, ICMP errors,
// resets), what each means for an operator, and which fact of the node
// confirms it. diagnose turns these, with the facts it read, into
// findings and blame; nothing here reads the node or the API.
package cause

// Class is the part of the packet path that decided a packet's fate.
type Class string

// The classes. Every drop reason of the kernel has one (a test holds the
// running kernel's enum to it).
const (
	Routing   Class = "routing"   // no route, unreachable, prohibited, reverse-path filter, martians
	Neighbour Class = "neighbour" // the next hop never answered ARP or NDP
	Netfilter Class = "netfilter" // a rule's DROP or REJECT, or conntrack
	Socket    Class = "socket"    // no listener, a closed socket, a full backlog or buffer
	TCPState  Class = "tcp-state" // a segment TCP refused: old data, sequence, window, flags, auth
	Link      Class = "link"      // the bridge or the device's link layer (STP state, MAC checks, not ours)
	Size      Class = "mtu"       // too big for the path, fragments
	XFRM      Class = "xfrm"      // IPsec (or PSP) policy
	Qdisc     Class = "qdisc"     // a queueing discipline dropped (overlimit, congestion)
	Program   Class = "program"   // an eBPF or tc program, or a security module, said drop
	Tunnel    Class = "tunnel"    // an overlay's encapsulation (VXLAN, IP tunnels)
	Malformed Class = "malformed" // a bad checksum or header
	Resources Class = "resources" // memory, a per-CPU backlog, a device ring
	Device    Class = "device"    // the device is down, or the packet was not for it
	Teardown  Class = "teardown"  // queued when its socket or device went away
	Other     Class = "other"     // the kernel gave no specific reason
)

// Fact is a fact of the node that confirms a cause: svctrace reads the
// ones it can (diagnose) and otherwise says what it would check.
type Fact uint8

const (
	NoFact     Fact = iota
	Route           // the route the kernel picks (ip route get)
	Neighbours      // the neighbour table's entry (ip neigh)
	RPFilter        // net.ipv4.conf.*.rp_filter
	Forwarding      // net.ipv4.ip_forward, bridge-nf-call-iptables
	Sockets         // the sockets the endpoint's Pod listens on (ss -ltn in its namespace)
	Rules           // the netfilter rules at the drop's hook
	Conntrack       // conntrack's table and counters (conntrack -S)
	Bridge          // the bridge's ports (hairpin, STP state)
	MTU             // the interfaces' MTUs on the path
	Policy          // xfrm policies (ip xfrm policy)
	Qdiscs          // the interfaces' qdiscs and their drops (tc -s qdisc)
	Programs        // tc and XDP programs, cgroup programs (bpftool net, bpftool cgroup tree)
	Counters        // the kernel's SNMP counters (nstat -az)
)

// Check is what an operator runs to see fact f; svctrace says it where it
// could not read the fact itself.
func (f Fact) Check() string {
	return checks[f]
}

var checks = map[Fact]string{
	Route:      "ip route get <address>",
	Neighbours: "ip neigh show <address>",
	RPFilter:   "sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.<interface>.rp_filter",
	Forwarding: "sysctl net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables",
	Sockets:    "ss -ltnu in the Pod's network namespace (nsenter -n -t <pid of the Pod's container>)",
	Rules:      "nft list ruleset (or iptables-save) for the chains on the drop's hook",
	Conntrack:  "conntrack -S",
	Bridge:     "bridge -d link show",
	MTU:        "ip link show (the mtu of each interface on the path)",
	Policy:     "ip xfrm policy",
	Qdiscs:     "tc -s qdisc show",
	Programs:   "bpftool net; bpftool cgroup tree",
	Counters:   "nstat -az",
}
