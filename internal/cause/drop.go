package cause

import "strings"

// DropReason is what one value of the kernel's enum skb_drop_reason means
// for an operator.
type DropReason struct {
	Name  string // without the SKB_DROP_REASON_ prefix: "NEIGH_FAILED"
	Class Class
	// Cause says what the kernel decided, completing "the kernel dropped
	// the packet: …".
	Cause string
	// Confirm is the fact of the node that shows why.
	Confirm Fact
}

// Drop is what the kernel's drop reason name (without its prefix) means;
// false for a reason this table does not know (a newer kernel's): show it
// verbatim with its location.
func Drop(name string) (DropReason, bool) {
	if r, ok := drops[name]; ok {
		r.Name = name
		return r, true
	}
	return DropReason{Name: name, Class: Other}, false
}

// Unspecific reports whether a drop reason says nothing about why: the
// place the kernel dropped the packet, and the facts there, must.
func (r DropReason) Unspecific() bool { return r.Class == Other || r.Name == "NETFILTER_DROP" }

// NotReason reports whether name, a member of enum skb_drop_reason, names
// no drop (the enum's bounds and subsystem masks).
func NotReason(name string) bool {
	return name == "MAX" || strings.HasPrefix(name, "SUBSYS_") || name == "SKB_NOT_DROPPED_YET" || name == "SKB_CONSUMED"
}

// drops are the reasons of Linux up to 6.18; a test holds the running
// kernel's enum (from BTF) and bpf/vmlinux.h's to it.
var drops = map[string]DropReason{
	"NOT_SPECIFIED": {Class: Other, Cause: "at a place that gives no reason (see where it was dropped)", Confirm: NoFact},

	// Routing.
	"IP_OUTNOROUTES":    {Class: Routing, Cause: "no route to the destination when sending it (the routing table has none, or an unreachable, prohibit or blackhole route)", Confirm: Route},
	"IP_INNOROUTES":     {Class: Routing, Cause: "no route to forward it on (the routing table has none, or an unreachable, prohibit or blackhole route)", Confirm: Route},
	"IP_RPFILTER":       {Class: Routing, Cause: "reverse-path filter: the route back to its source does not leave through the interface it came in on (rp_filter strict), or there is none", Confirm: RPFilter},
	"IP_INADDRERRORS":   {Class: Routing, Cause: "no usable route to its destination: an unreachable route, or an address the node cannot route to (and it answers ICMP host-unreachable)", Confirm: Route},
	"IP_INVALID_SOURCE": {Class: Routing, Cause: "its source address is not a valid one here (a martian source: multicast, broadcast or zero)", Confirm: Route},
	"IP_LOCAL_SOURCE":   {Class: Routing, Cause: "its source is one of the node's own addresses, arriving from outside (a martian source)", Confirm: Route},
	"IP_LOCALNET":       {Class: Routing, Cause: "its source or destination is a loopback address arriving on a device that does not allow it (route_localnet=0)", Confirm: Route},
	"IP_INVALID_DEST":   {Class: Routing, Cause: "its destination is an invalid address (zero, or a loopback address from outside)", Confirm: Route},
	"IPV6DISABLED":      {Class: Routing, Cause: "IPv6 is disabled on the device it came in on or was sent out of (net.ipv6.conf.*.disable_ipv6)", Confirm: Forwarding},

	// Neighbours.
	"NEIGH_CREATEFAIL":        {Class: Neighbour, Cause: "no neighbour entry could be made for the next hop (the neighbour table is full: gc_thresh3)", Confirm: Neighbours},
	"NEIGH_FAILED":            {Class: Neighbour, Cause: "the next hop never answered ARP or NDP: nothing on that link holds its address", Confirm: Neighbours},
	"NEIGH_QUEUEFULL":         {Class: Neighbour, Cause: "too many packets waited for the next hop to answer ARP or NDP (its queue was full)", Confirm: Neighbours},
	"NEIGH_DEAD":              {Class: Neighbour, Cause: "the next hop's neighbour entry was being removed (its device went away)", Confirm: Neighbours},
	"NEIGH_HH_FILLFAIL":       {Class: Neighbour, Cause: "the link-layer header for the next hop could not be built", Confirm: Neighbours},
	"ARP_PVLAN_DISABLE":       {Class: Neighbour, Cause: "an ARP request was not answered by proxy ARP on a private VLAN (proxy_arp_pvlan off)", Confirm: Neighbours},
	"IPV6_NDISC_FRAG":         {Class: Neighbour, Cause: "a fragmented neighbour discovery message", Confirm: Neighbours},
	"IPV6_NDISC_HOP_LIMIT":    {Class: Neighbour, Cause: "a neighbour discovery message whose hop limit is not 255 (it came from off-link)", Confirm: Neighbours},
	"IPV6_NDISC_BAD_CODE":     {Class: Neighbour, Cause: "a neighbour discovery message with a bad code", Confirm: Neighbours},
	"IPV6_NDISC_BAD_OPTIONS":  {Class: Neighbour, Cause: "a neighbour discovery message with bad options", Confirm: Neighbours},
	"IPV6_NDISC_NS_OTHERHOST": {Class: Neighbour, Cause: "a neighbour solicitation for an address that is not the node's", Confirm: Neighbours},

	// Netfilter.
	"NETFILTER_DROP": {Class: Netfilter, Cause: "a netfilter verdict: a rule's DROP or REJECT, or conntrack itself", Confirm: Rules},

	// Sockets.
	"NO_SOCKET":           {Class: Socket, Cause: "no socket took it: nothing listens on that address and port", Confirm: Sockets},
	"SOCKET_CLOSE":        {Class: Socket, Cause: "its socket was closed", Confirm: Sockets},
	"SOCKET_FILTER":       {Class: Socket, Cause: "the socket's filter (SO_ATTACH_FILTER, a BPF socket filter) refused it", Confirm: Programs},
	"SOCKET_RCVBUFF":      {Class: Socket, Cause: "the socket's receive buffer was full: the application does not read fast enough", Confirm: Sockets},
	"SOCKET_BACKLOG":      {Class: Socket, Cause: "the socket's backlog was full while the application held its lock", Confirm: Sockets},
	"TCP_LISTEN_OVERFLOW": {Class: Socket, Cause: "the listener's accept queue was full: the server does not accept connections as fast as they come (its backlog)", Confirm: Sockets},
	"PROTO_MEM":           {Class: Socket, Cause: "the protocol's memory limit was reached (net.ipv4.tcp_mem, udp_mem)", Confirm: Counters},
	"IP_NOPROTO":          {Class: Socket, Cause: "no handler for its IP protocol on the node", Confirm: NoFact},
	"UNIX_DISCONNECT":     {Class: Socket, Cause: "a Unix socket's peer disconnected", Confirm: NoFact},
	"UNIX_SKIP_OOB":       {Class: Socket, Cause: "a Unix socket's out-of-band data was skipped", Confirm: NoFact},
	"PACKET_SOCK_ERROR":   {Class: Socket, Cause: "a packet socket's error queue was full", Confirm: NoFact},
	"QUEUE_PURGE":         {Class: Teardown, Cause: "it was still queued when its socket or device was torn down", Confirm: NoFact},

	// TCP.
	"TCP_AUTH_HDR":             {Class: TCPState, Cause: "TCP authentication: a segment with both MD5 and AO options", Confirm: Counters},
	"TCP_MD5NOTFOUND":          {Class: TCPState, Cause: "TCP-MD5: the segment lacks the MD5 signature the socket requires", Confirm: Counters},
	"TCP_MD5UNEXPECTED":        {Class: TCPState, Cause: "TCP-MD5: a signature on a socket that expects none", Confirm: Counters},
	"TCP_MD5FAILURE":           {Class: TCPState, Cause: "TCP-MD5: the signature does not match", Confirm: Counters},
	"TCP_AONOTFOUND":           {Class: TCPState, Cause: "TCP-AO: the segment lacks the option the socket requires", Confirm: Counters},
	"TCP_AOUNEXPECTED":         {Class: TCPState, Cause: "TCP-AO: an option on a socket that expects none", Confirm: Counters},
	"TCP_AOKEYNOTFOUND":        {Class: TCPState, Cause: "TCP-AO: no key matches", Confirm: Counters},
	"TCP_AOFAILURE":            {Class: TCPState, Cause: "TCP-AO: the MAC does not match", Confirm: Counters},
	"TCP_FLAGS":                {Class: TCPState, Cause: "its TCP flags are not valid in the connection's state", Confirm: Counters},
	"TCP_ABORT_ON_DATA":        {Class: TCPState, Cause: "data for a socket the application had closed: the connection is aborted (a reset follows)", Confirm: Counters},
	"TCP_ZEROWINDOW":           {Class: TCPState, Cause: "the receiver's window is zero: the application does not read", Confirm: Sockets},
	"TCP_OLD_DATA":             {Class: TCPState, Cause: "data already received (a retransmission of what was acknowledged)", Confirm: Counters},
	"TCP_OVERWINDOW":           {Class: TCPState, Cause: "data beyond the receiver's window", Confirm: Counters},
	"TCP_OFOMERGE":             {Class: TCPState, Cause: "out-of-order data already held", Confirm: Counters},
	"TCP_RFC7323_PAWS":         {Class: TCPState, Cause: "PAWS: its timestamp is older than the connection's (a reused port, or a NAT mixing clients)", Confirm: Counters},
	"TCP_RFC7323_PAWS_ACK":     {Class: TCPState, Cause: "PAWS: an ACK with an old timestamp", Confirm: Counters},
	"TCP_RFC7323_TW_PAWS":      {Class: TCPState, Cause: "PAWS in TIME-WAIT: a new connection's timestamp is older than the old connection's on the same ports", Confirm: Counters},
	"TCP_RFC7323_TSECR":        {Class: TCPState, Cause: "its timestamp echo does not match what was sent", Confirm: Counters},
	"TCP_OLD_SEQUENCE":         {Class: TCPState, Cause: "a sequence number before the receive window: an old segment", Confirm: Counters},
	"TCP_INVALID_SEQUENCE":     {Class: TCPState, Cause: "a sequence number outside the receive window", Confirm: Counters},
	"TCP_INVALID_END_SEQUENCE": {Class: TCPState, Cause: "a segment ending beyond the receive window", Confirm: Counters},
	"TCP_INVALID_ACK_SEQUENCE": {Class: TCPState, Cause: "an ACK for data never sent, or already acknowledged", Confirm: Counters},
	"TCP_RESET":                {Class: TCPState, Cause: "a reset: the connection was torn down", Confirm: NoFact},
	"TCP_INVALID_SYN":          {Class: TCPState, Cause: "a SYN in a connection that is already open (or a SYN with the wrong flags)", Confirm: Counters},
	"TCP_CLOSE":                {Class: TCPState, Cause: "a segment for a closed connection", Confirm: Sockets},
	"TCP_FASTOPEN":             {Class: TCPState, Cause: "TCP Fast Open data not accepted", Confirm: Counters},
	"TCP_OLD_ACK":              {Class: TCPState, Cause: "an ACK older than what was already acknowledged", Confirm: Counters},
	"TCP_TOO_OLD_ACK":          {Class: TCPState, Cause: "an ACK far older than the window", Confirm: Counters},
	"TCP_ACK_UNSENT_DATA":      {Class: TCPState, Cause: "an ACK for data not yet sent", Confirm: Counters},
	"TCP_OFO_QUEUE_PRUNE":      {Class: TCPState, Cause: "out-of-order data pruned for lack of memory", Confirm: Counters},
	"TCP_OFO_DROP":             {Class: TCPState, Cause: "out-of-order data beyond what the receive buffer can hold", Confirm: Counters},
	"TCP_MINTTL":               {Class: TCPState, Cause: "its TTL is below the socket's minimum (IP_MINTTL)", Confirm: NoFact},
	"TCP_CSUM":                 {Class: Malformed, Cause: "a bad TCP checksum (offload, or corruption on the way)", Confirm: Counters},

	// Link layer and bridges.
	"BRIDGE_INGRESS_STP_STATE": {Class: Link, Cause: "the bridge port it came in on is not forwarding (its STP state: blocking, listening or learning)", Confirm: Bridge},
	"UNICAST_IN_L2_MULTICAST":  {Class: Link, Cause: "an IP unicast packet in a link-layer multicast or broadcast frame", Confirm: NoFact},
	"OTHERHOST":                {Class: Link, Cause: "its link-layer destination is another host's (the device was promiscuous)", Confirm: Neighbours},
	"MAC_INVALID_SOURCE":       {Class: Link, Cause: "an invalid source MAC address", Confirm: NoFact},
	"MAC_IEEE_MAC_CONTROL":     {Class: Link, Cause: "an IEEE MAC control frame", Confirm: NoFact},
	"LOCAL_MAC":                {Class: Link, Cause: "its source MAC is the receiving device's own (a loop)", Confirm: Bridge},

	// Sizes and fragments.
	"PKT_TOO_BIG":        {Class: Size, Cause: "larger than the path's MTU, and it may not be fragmented (DF set, or IPv6): the sender should get ICMP fragmentation-needed / packet-too-big", Confirm: MTU},
	"DUP_FRAG":           {Class: Size, Cause: "a duplicate fragment", Confirm: Counters},
	"FRAG_REASM_TIMEOUT": {Class: Size, Cause: "its fragments were not all received in time to reassemble it", Confirm: Counters},
	"FRAG_TOO_FAR":       {Class: Size, Cause: "a fragment too far out of order (ipfrag_max_dist)", Confirm: Counters},
	"SKB_GSO_SEG":        {Class: Size, Cause: "it could not be segmented for a device that cannot take it whole (GSO)", Confirm: MTU},

	// IPsec and PSP.
	"XFRM_POLICY": {Class: XFRM, Cause: "an xfrm (IPsec) policy refused it, or required a transformation it lacked", Confirm: Policy},
	"PSP_INPUT":   {Class: XFRM, Cause: "PSP encryption: a received packet failed its policy", Confirm: Policy},
	"PSP_OUTPUT":  {Class: XFRM, Cause: "PSP encryption: a packet to send failed its policy", Confirm: Policy},

	// Queueing disciplines.
	"QDISC_DROP":        {Class: Qdisc, Cause: "a queueing discipline dropped it (its queue was full, or it drops by design: a limit, a loss)", Confirm: Qdiscs},
	"QDISC_OVERLIMIT":   {Class: Qdisc, Cause: "a queueing discipline's limit was exceeded", Confirm: Qdiscs},
	"QDISC_CONGESTED":   {Class: Qdisc, Cause: "a queueing discipline dropped it for congestion (AQM)", Confirm: Qdiscs},
	"CAKE_FLOOD":        {Class: Qdisc, Cause: "the CAKE qdisc's flood protection", Confirm: Qdiscs},
	"FQ_BAND_LIMIT":     {Class: Qdisc, Cause: "the fq qdisc's band limit", Confirm: Qdiscs},
	"FQ_HORIZON_LIMIT":  {Class: Qdisc, Cause: "the fq qdisc's horizon: its send time is too far ahead", Confirm: Qdiscs},
	"FQ_FLOW_LIMIT":     {Class: Qdisc, Cause: "the fq qdisc's per-flow limit", Confirm: Qdiscs},
	"DUALPI2_STEP_DROP": {Class: Qdisc, Cause: "the DualPI2 qdisc's step threshold", Confirm: Qdiscs},

	// Programs.
	"BPF_CGROUP_EGRESS":  {Class: Program, Cause: "a cgroup eBPF program refused to send it (a CNI's or a policy engine's)", Confirm: Programs},
	"TC_EGRESS":          {Class: Program, Cause: "a tc program or action on the egress device dropped it", Confirm: Programs},
	"TC_INGRESS":         {Class: Program, Cause: "a tc program or action on the ingress device dropped it", Confirm: Programs},
	"TC_COOKIE_ERROR":    {Class: Program, Cause: "a tc filter's cookie was wrong", Confirm: Programs},
	"TC_CHAIN_NOTFOUND":  {Class: Program, Cause: "a tc action jumped to a chain that does not exist", Confirm: Programs},
	"TC_RECLASSIFY_LOOP": {Class: Program, Cause: "tc reclassified it too many times", Confirm: Programs},
	"XDP":                {Class: Program, Cause: "an XDP program dropped it", Confirm: Programs},
	"SECURITY_HOOK":      {Class: Program, Cause: "a security module (SELinux, AppArmor, a BPF LSM) refused it", Confirm: NoFact},
	"TAP_FILTER":         {Class: Program, Cause: "a tun/tap device's filter refused it", Confirm: NoFact},
	"TAP_TXFILTER":       {Class: Program, Cause: "a tun/tap device's transmit filter refused it", Confirm: NoFact},

	// Tunnels.
	"VXLAN_INVALID_HDR":   {Class: Tunnel, Cause: "a VXLAN packet with an invalid header", Confirm: NoFact},
	"VXLAN_VNI_NOT_FOUND": {Class: Tunnel, Cause: "a VXLAN packet for a VNI no device here has", Confirm: NoFact},
	"VXLAN_ENTRY_EXISTS":  {Class: Tunnel, Cause: "a VXLAN forwarding entry already exists", Confirm: NoFact},
	"NO_TX_TARGET":        {Class: Tunnel, Cause: "the tunnel had no remote to send it to (no forwarding entry for the destination)", Confirm: Neighbours},
	"IP_TUNNEL_ECN":       {Class: Tunnel, Cause: "an IP tunnel's inner and outer ECN bits conflict", Confirm: NoFact},
	"TUNNEL_TXINFO":       {Class: Tunnel, Cause: "a metadata tunnel got no transmit information for it", Confirm: Programs},

	// Malformed packets.
	"PKT_TOO_SMALL":          {Class: Malformed, Cause: "shorter than its headers say", Confirm: Counters},
	"UDP_CSUM":               {Class: Malformed, Cause: "a bad UDP checksum (offload, or corruption on the way)", Confirm: Counters},
	"IP_CSUM":                {Class: Malformed, Cause: "a bad IP header checksum", Confirm: Counters},
	"IP_INHDR":               {Class: Malformed, Cause: "an invalid IP header (version, length, or a hop limit already zero)", Confirm: Counters},
	"ICMP_CSUM":              {Class: Malformed, Cause: "a bad ICMP checksum", Confirm: Counters},
	"SKB_CSUM":               {Class: Malformed, Cause: "its checksum could not be computed or was wrong", Confirm: Counters},
	"HDR_TRUNC":              {Class: Malformed, Cause: "a truncated header", Confirm: Counters},
	"INVALID_PROTO":          {Class: Malformed, Cause: "an invalid protocol for the device it came on", Confirm: NoFact},
	"UNHANDLED_PROTO":        {Class: Malformed, Cause: "a protocol nothing on the node handles", Confirm: NoFact},
	"IPV6_BAD_EXTHDR":        {Class: Malformed, Cause: "a bad IPv6 extension header", Confirm: Counters},
	"IPV6_TOO_MANY_EXTHDRS":  {Class: Malformed, Cause: "too many IPv6 extension headers", Confirm: Counters},
	"DEV_HDR":                {Class: Malformed, Cause: "the device could not parse or build its link-layer header", Confirm: NoFact},
	"CAN_RX_INVALID_FRAME":   {Class: Malformed, Cause: "an invalid CAN frame", Confirm: NoFact},
	"CANFD_RX_INVALID_FRAME": {Class: Malformed, Cause: "an invalid CAN FD frame", Confirm: NoFact},
	"CANXL_RX_INVALID_FRAME": {Class: Malformed, Cause: "an invalid CAN XL frame", Confirm: NoFact},

	// Resources.
	"NOMEM":           {Class: Resources, Cause: "the kernel was out of memory for it", Confirm: Counters},
	"PFMEMALLOC":      {Class: Resources, Cause: "memory reserved for memory reclaim cannot carry it", Confirm: Counters},
	"CPU_BACKLOG":     {Class: Resources, Cause: "the CPU's input backlog was full (net.core.netdev_max_backlog)", Confirm: Counters},
	"FULL_RING":       {Class: Resources, Cause: "the device's ring was full", Confirm: Qdiscs},
	"SKB_UCOPY_FAULT": {Class: Resources, Cause: "copying it from user space failed", Confirm: NoFact},
	"SKB_RX_HEADROOM": {Class: Resources, Cause: "not enough headroom to receive it", Confirm: NoFact},
	"RECURSION_LIMIT": {Class: Resources, Cause: "sending it recursed too deep (a loop through tunnels or redirects)", Confirm: Route},

	// Devices.
	"DEV_READY": {Class: Device, Cause: "the device is not up, or its carrier is down", Confirm: MTU},
}
