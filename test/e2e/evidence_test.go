package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/test/cluster"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// unroutedNode is a node whose Pod range this node has an unreachable
// route to, as when the CNI never programmed it.
const unroutedNode = "node-3"

// ghost is the host part of an address on this node's Pod bridge that no
// Pod holds.
const ghost = 200

// evidenceStories are failures whose cause only evidence shows: the node's
// routes and neighbours, the Pods' sockets, the EndpointSlices'
// conditions. Each story's blame was written down, and the fault checked
// by hand, before svctrace explained it.
func evidenceStories(mode cluster.Mode) []*story {
	byName := intstr.FromString("http")
	yes, no := true, false
	named2 := pod(shop, "named-2", "named", lab.ModeHTTP, true)
	named2.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8081, Protocol: corev1.ProtocolTCP}}
	iptables := "iptables-nft"
	if mode == cluster.IPTablesLegacy {
		iptables = "iptables-legacy"
	}
	return []*story{
		// A policy engine's chain, reached through a jump from FORWARD,
		// drops the Pod's ingress (with iptables-nft beside kube-proxy's
		// nftables table in nftables mode): svctrace follows the jump to
		// the rule and quotes it.
		{name: "rule-in-a-user-chain", expect: flow.Dropped, droppedIn: nf.Forward, afterDNAT: true, finding: "rule-drops-endpoint", summary: "chain E2E-POLICY, rule 1",
			svc:  service("fenced", "10.96.2.60", map[string]string{"app": "fenced"}, byName),
			pods: []cluster.PodSpec{pod(shop, "fenced-1", "fenced", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				for _, args := range [][]string{{"-N", "E2E-POLICY"}, {"-I", "FORWARD", "1", "-j", "E2E-POLICY"},
					{"-A", "E2E-POLICY", "-d", pods[0].IP.String() + "/32", "-p", "tcp", "--dport", "8080", "-m", "comment", "--comment", "shop/deny-fenced", "-j", "DROP"}} {
					if _, err := c.Exec(append([]string{iptables, "-w"}, args...)...); err != nil {
						return err
					}
				}
				return nil
			},
			rule:  "in table ip filter (" + iptables + "), chain E2E-POLICY, rule 1: -d 10.244.",
			cause: report.RuleDrop, evidence: `the rule's comment: "shop/deny-fenced"`,
			blame: "a rule in table ip filter (" + iptables + "), chain E2E-POLICY, rule 1: -d 10.244."},
		// A policy engine's nftables table (no iptables involved) jumps
		// from its forward chain to a chain that drops the Pod's address,
		// held in a set: svctrace evaluates the table as the kernel does
		// and quotes the rule with its handle and comment.
		{name: "rule-in-an-nftables-chain", expect: flow.Dropped, droppedIn: nf.Forward, afterDNAT: true, finding: "rule-drops-endpoint", summary: "chain ingress, rule 2",
			svc:  service("walled", "10.96.2.110", map[string]string{"app": "walled"}, byName),
			pods: []cluster.PodSpec{pod(shop, "walled-1", "walled", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				_, err := topo.Run(c.Node, fmt.Sprintf(`table inet e2e-policy {
	set walled { type ipv4_addr; elements = { %s } }
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related accept
		ip daddr %s jump ingress
	}
	chain ingress {
		tcp dport 22 accept
		ip daddr @walled tcp dport 8080 counter drop comment "shop/deny-walled"
	}
}`, pods[0].IP, c.PodRange("")), "nft", "-f", "-")
				return err
			},
			rule:  "in table inet e2e-policy (nftables), chain ingress, rule 2: ip daddr @walled tcp dport 8080 counter drop",
			cause: report.RuleDrop, evidence: `the rule's comment: "shop/deny-walled"`,
			blame: "a rule in table inet e2e-policy (nftables), chain ingress, rule 2: ip daddr @walled tcp dport 8080 counter drop"},
		// The Pod's bridge port has a qdisc that queues nothing (pfifo
		// limit 0): the SYN is dropped there, after POSTROUTING
		// (QDISC_DROP), and the blame quotes the qdisc and its drops.
		// The Pod's neighbour entry is pinned first so that the SYN itself
		// meets the qdisc; where the node asks for the Pod's MAC anyway
		// (seen once in CI, with the entry gone), the qdisc swallows its
		// ARP requests: the SYN dies in the neighbour layer and the node
		// answers ICMP host-unreachable, and the blame adds the qdisc.
		{name: "qdisc-drops", expect: flow.Dropped, orExpect: flow.Rejected, afterDNAT: true, finding: "qdisc-drops", summary: "on the way to the endpoint 10.244.",
			svc:  service("queued", "10.96.2.70", map[string]string{"app": "queued"}, byName),
			pods: []cluster.PodSpec{pod(shop, "queued-1", "queued", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				// The node knows the Pod's MAC for good: past the qdisc its
				// ARP requests would be dropped too (NEIGH_FAILED).
				var mac net.HardwareAddr
				if err := nf.InNetNS(pods[0].NS, func() error {
					l, err := net.InterfaceByName("eth0")
					if err == nil {
						mac = l.HardwareAddr
					}
					return err
				}); err != nil {
					return err
				}
				if _, err := topo.Neighbour(c.Node, topo.BridgeName, pods[0].IP, mac); err != nil {
					return err
				}
				_, err := c.Exec("tc", "qdisc", "add", "dev", pods[0].Veth, "root", "pfifo", "limit", "0")
				return err
			},
			cause: report.KernelDrop, evidence: " root (dropped ",
			blame: "Pod shop/queued-1 on node-1: the kernel dropped the client's SYN to it after POSTROUTING, in the "},
		// An IPsec policy blocks what the node forwards to the Service:
		// the SYN is dropped between routing and FORWARD (XFRM_POLICY).
		// xfrm matches a DNAT'ed packet by its addresses before NAT
		// (nf_nat_decode_session): a policy on the Pod's address would not
		// apply, one on the ClusterIP does.
		{name: "xfrm-policy-blocks", expect: flow.Dropped, afterDNAT: true, finding: "healthy",
			svc:  service("sealed", "10.96.2.80", map[string]string{"app": "sealed"}, byName),
			pods: []cluster.PodSpec{pod(shop, "sealed-1", "sealed", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				_, err := c.Exec("ip", "xfrm", "policy", "add", "dst", s.svc.Spec.ClusterIP+"/32", "dir", "fwd", "action", "block")
				return err
			},
			cause: report.KernelDrop, evidence: "dst 10.96.2.80/32 dir fwd action block",
			blame: "Pod shop/sealed-1 on node-1: the kernel dropped the client's SYN to it after PREROUTING, in routing and forwarding's checks (before FORWARD or INPUT): an xfrm (IPsec) policy refused it"},
		// The client sends from a second address the node routes back
		// out another interface (uplink0), and client0 filters reverse
		// paths strictly: routing drops the DNAT'ed SYN (IP_RPFILTER).
		{name: "rp-filter", expect: flow.Dropped, afterDNAT: true, finding: "healthy",
			svc:    service("rpf", "10.96.2.90", map[string]string{"app": "rpf"}, byName),
			pods:   []cluster.PodSpec{pod(shop, "rpf-1", "rpf", lab.ModeHTTP, true)},
			source: secondClientAddr,
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				src := secondClientAddr(c).String()
				if _, err := topo.Run(c.ClientNS, "", "ip", "addr", "add", src+"/24", "dev", "eth0"); err != nil {
					return err
				}
				if _, err := c.Exec("ip", "route", "add", src+"/32", "dev", "uplink0"); err != nil {
					return err
				}
				return topo.Sysctl(c.Node, "net.ipv4.conf.client0.rp_filter", "1")
			},
			cause: report.KernelDrop, evidence: "the route back: ip route get 10.99.",
			blame: "Pod shop/rpf-1 on node-1: the kernel dropped the client's SYN to it after PREROUTING, in routing and forwarding's checks (before FORWARD or INPUT): reverse-path filter"},
		// The route to the Pod has an MTU of 1000, and the client sends
		// a 1400-byte UDP datagram that may not be fragmented: the node
		// drops it before FORWARD (PKT_TOO_BIG) and answers ICMP
		// fragmentation-needed.
		{name: "packet-too-big", expect: flow.Rejected, finding: "healthy",
			svc:     udpService("big", "10.96.2.100"),
			pods:    []cluster.PodSpec{udpPod(pod(shop, "big-1", "big", lab.ModeHTTP, true))},
			request: bigDatagram,
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				_, err := c.Exec("ip", "route", "add", pods[0].IP.String()+"/32", "dev", topo.BridgeName, "mtu", "lock", "1000")
				return err
			},
			cause: report.KernelDrop, evidence: " mtu 1000",
			blame: "Pod shop/big-1 on node-1: the kernel dropped the client's packet to it after PREROUTING, in routing and forwarding's checks (before FORWARD or INPUT): larger than the path's MTU"},
		// The node has an unreachable route to node-3's Pods: routing
		// drops the DNAT'ed SYN and the node answers ICMP
		// host-unreachable. The kernel gives no specific reason there
		// (ip_error's NOT_SPECIFIED for EHOSTUNREACH): the route read on
		// the node is the evidence. ip_error rate-limits its ICMP errors
		// per source: without one, the SYNs are dropped, and the blame
		// is the same.
		{name: "no-route-to-endpoint", expect: flow.Rejected, orExpect: flow.Dropped, finding: "no-route-to-endpoint", summary: "this node has no usable route to the endpoint",
			svc: service("unrouted", "10.96.2.10", map[string]string{"app": "unrouted"}, byName), endpointNode: unroutedNode,
			pods: []cluster.PodSpec{onNode(pod(shop, "unrouted-1", "unrouted", "", true), unroutedNode)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, _ []*cluster.Pod) error {
				_, err := c.Exec("ip", "route", "add", "unreachable", c.PodRange(unroutedNode).String())
				return err
			},
			cause: report.NoRouteToEndpoint, evidence: "no route to host (route type unreachable)",
			blame: "Pod shop/unrouted-1 on node-3: this node has no usable route to 10.244."},
		// A hand-made EndpointSlice lists an address on the Pod bridge
		// that no Pod holds: ARP for it fails (NEIGH_FAILED) and the node
		// answers ICMP host-unreachable.
		{name: "endpoint-nobody-answers", expect: flow.Rejected, finding: "endpoint-not-a-pod", summary: "is an address no Pod holds",
			svc: service("ghost", "10.96.2.20", nil, intstr.FromInt32(8080)), noPod: true,
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, _ []*cluster.Pod) error {
				// Give up on ARP within the client's wait.
				for k, v := range map[string]string{"net.ipv4.neigh.cbr0.retrans_time_ms": "100", "net.ipv4.neigh.cbr0.mcast_solicit": "2"} {
					if err := topo.Sysctl(c.Node, k, v); err != nil {
						return err
					}
				}
				s.handMade = []netip.AddrPort{netip.AddrPortFrom(ghostAddr(c), 8080)}
				return c.HandMadeSlice(ctx, s.svc, "e2e-test", 8080, []netip.Addr{ghostAddr(c)}, &yes, nil, "")
			},
			cause: report.KernelDrop, evidence: "no Pod has status.podIP",
			blame: "the endpoint 10.244."},
		// The Pod's server listens on 127.0.0.1:8080 only: its kernel
		// resets the SYN to its own address.
		{name: "server-listens-on-loopback", expect: flow.Reset, finding: "listens-elsewhere", summary: "only on 127.0.0.1:8080",
			svc:   service("loopback", "10.96.2.30", map[string]string{"app": "loopback"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "loopback-1", "loopback", lab.ModeLoopback, true)},
			cause: report.ListensElsewhere, evidence: "tcp 127.0.0.1:8080",
			blame: "Pod shop/loopback-1 on node-1 (ready): nothing listens on port 8080; its server listens on port 8080 only on 127.0.0.1:8080"},
		// named-2 calls port 8081 "http" (named-1 calls 8080 so), but its
		// server listens on 8080; named-1 is not ready, so the connection
		// goes to named-2:8081 and is reset.
		{name: "named-port-differs", expect: flow.Reset, finding: "not-listening", summary: "nothing listens on",
			svc:   service("named", "10.96.2.40", map[string]string{"app": "named"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "named-1", "named", lab.ModeHTTP, false), named2},
			cause: report.NotListening, evidence: "tcp [::]:8080",
			blame: "Pod shop/named-2 on node-1 (ready): nothing listens on port 8081; it listens on [::]:8080"},
		// An eBPF tc program on the Pod's link drops every IPv4 packet the
		// node sends the Pod (ARP passes, so the neighbour resolves): the
		// SYN dies after POSTROUTING (TC_EGRESS), and the blame quotes the
		// program, which check finds by the drops its clsact qdisc counts
		// (those of the SYNs traced before check runs).
		{name: "tc-program-drops", expect: flow.Dropped, afterDNAT: true, finding: "qdisc-drops", summary: "or tc program on the way",
			svc:  service("filtered", "10.96.2.120", map[string]string{"app": "filtered"}, byName),
			pods: []cluster.PodSpec{pod(shop, "filtered-1", "filtered", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				return testutil.TCDrop(c.Node, pods[0].Veth, true, unix.ETH_P_IP)
			},
			cause: report.KernelDrop, evidence: "egress: bpf drop_ipv4 direct-action id ",
			blame: "Pod shop/filtered-1 on node-1: the kernel dropped the client's SYN to it after POSTROUTING, in an eBPF program or tc action on the way out"},
		// The Pod's own interface is down: the node's end of its veth
		// has no carrier, ARP for the Pod fails (NEIGH_FAILED) and the
		// node answers ICMP host-unreachable (or, rate-limited, drops).
		{name: "pod-link-down", expect: flow.Rejected, orExpect: flow.Dropped, afterDNAT: true, finding: "endpoint-link-down", summary: "is down",
			svc:  service("unplugged", "10.96.2.130", map[string]string{"app": "unplugged"}, byName),
			pods: []cluster.PodSpec{pod(shop, "unplugged-1", "unplugged", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				_, err := topo.Run(pods[0].NS, "", "ip", "link", "set", "eth0", "down")
				return err
			},
			cause: report.LinkDown, evidence: "state DOWN",
			blame: "Pod shop/unplugged-1 on node-1: the node's link toward it, "},
		// The Pod's server listens and never accepts: its accept queue
		// fills, and its kernel drops new SYNs.
		{name: "backlog-full", expect: flow.NoReply, finding: "backlog-full", summary: "accept queue",
			svc:   service("stuck", "10.96.2.140", map[string]string{"app": "stuck"}, byName),
			pods:  []cluster.PodSpec{pod(shop, "stuck-1", "stuck", lab.ModeHung, true)},
			cause: report.BacklogFull, evidence: "0.0.0.0:8080 (accept queue 2 of 1)",
			blame: "Pod shop/stuck-1 on node-1 (ready) did not answer on port 8080: its server does not accept connections; the accept queue of "},
		// The Pod's server accepts and never reads: the client's upload
		// fills the Pod's small receive window, and the Pod's kernel drops
		// the client's zero-window probes (TCP_OLD_SEQUENCE, at growing
		// intervals). The handshake was answered; the blame names the
		// drops and quotes the connection's unread bytes, read again
		// through sock_diag in the Pod's namespace.
		{name: "window-closed", expect: flow.Answered, finding: "healthy",
			svc:     service("stalled", "10.96.2.150", map[string]string{"app": "stalled"}, byName),
			pods:    []cluster.PodSpec{pod(shop, "stalled-1", "stalled", lab.ModeStall, true)},
			request: bigUpload,
			cause:   report.KernelDrop, evidence: "sock_diag in shop/stalled-1's network namespace: ",
			blame: "Pod shop/stalled-1 on node-1 answered, then its kernel dropped "},
		// A hand-made slice says ready and not serving: kube-proxy goes by
		// ready, and the connection is answered.
		{name: "ready-but-not-serving", expect: flow.Answered, finding: "endpoint-conditions", summary: "is ready yet says it is not serving",
			svc:  service("contrary", "10.96.2.50", nil, intstr.FromInt32(8080)),
			pods: []cluster.PodSpec{pod(shop, "contrary-1", "contrary-pod", lab.ModeHTTP, true)},
			setup: func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
				s.handMade = []netip.AddrPort{netip.AddrPortFrom(pods[0].IP, 8080)}
				return c.HandMadeSlice(ctx, s.svc, "e2e-test", 8080, []netip.Addr{pods[0].IP}, &yes, &no, pods[0].Name)
			}},
	}
}

func onNode(p cluster.PodSpec, node string) cluster.PodSpec {
	p.Node, p.Serve, p.Listen = node, "", nil
	return p
}

func ghostAddr(c *cluster.Cluster) netip.Addr {
	a := c.PodRange("").Addr().As4()
	a[3] = ghost
	return netip.AddrFrom4(a)
}

// secondClientAddr is an address the rp-filter story adds to the client.
func secondClientAddr(c *cluster.Cluster) netip.Addr {
	a := c.ClientIP.As4()
	a[3] = 3
	return netip.AddrFrom4(a)
}

// udpService is a Service of one UDP port, 80 → 8080, by number (a named
// targetPort resolves only against container ports of its protocol).
func udpService(name, vip string) *corev1.Service {
	s := service(name, vip, map[string]string{"app": name}, intstr.FromInt32(8080))
	s.Spec.Ports[0].Protocol = corev1.ProtocolUDP
	return s
}

// bigDatagram sends a 1400-byte UDP datagram with DF set (no
// fragmentation on the way) and waits for an answer.
func bigDatagram(ctx context.Context, c *cluster.Cluster, addr netip.AddrPort, timeout time.Duration) {
	nf.InNetNS(c.ClientNS, func() error {
		conn, err := net.Dial("udp", addr.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		if raw, err := conn.(*net.UDPConn).SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE)
			})
		}
		conn.Write(make([]byte, 1400))
		conn.SetReadDeadline(time.Now().Add(timeout))
		conn.Read(make([]byte, 64))
		return nil
	})
}

// bigUpload sends 1 MiB and waits for an answer: more than a server that
// does not read can hold.
func bigUpload(ctx context.Context, c *cluster.Cluster, addr netip.AddrPort, timeout time.Duration) {
	nf.InNetNS(c.ClientNS, func() error {
		d := net.Dialer{Timeout: timeout}
		conn, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(timeout))
		conn.Write(make([]byte, 1<<20))
		conn.Read(make([]byte, 64))
		return nil
	})
}

// udpPod declares port 8080 for UDP too (the lab's server answers both).
func udpPod(p cluster.PodSpec) cluster.PodSpec {
	p.Ports = append(p.Ports, corev1.ContainerPort{Name: "udp", ContainerPort: 8080, Protocol: corev1.ProtocolUDP})
	return p
}
