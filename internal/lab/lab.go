// Package lab builds a throwaway Kubernetes-like node in network namespaces:
// a node namespace with a bridge and kube-proxy-style iptables rules, pod
// namespaces serving HTTP, and a client namespace. Each scenario is a Service
// with one classic failure (or none), for svctrace to trace.
package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/topo"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Namespace is the Kubernetes namespace the lab's objects pretend to live in.
const Namespace = "lab"

// Pod is a pod namespace with its server.
type Pod struct {
	Name   string
	IP     netip.Addr
	IP6    netip.Addr
	Labels map[string]string
	NS     nf.NetNS
	mode   string
	ports  []int
}

// Addr is the pod's address of the family of to.
func (p Pod) Addr(to netip.Addr) netip.Addr {
	if to.Is6() {
		return p.IP6
	}
	return p.IP
}

// Scenario is a Service set up to show one outcome.
type Scenario struct {
	Name  string // short id, e.g. "no-endpoints"
	Title string // one line: what is wrong
	// Selector and TargetPort are the Service's; Service is the port as
	// kube-proxy sees it, with the endpoints the selector gives.
	Selector   map[string]string
	TargetPort intstr.IntOrString
	Service    kubeproxy.ServicePort
	// Programmed is false when kube-proxy wrote no rule for the Service.
	Programmed bool
	// Finding is the first finding svctrace's diagnosis gives.
	Finding report.Code
	Expect  flow.Verdict
	// ExpectHook is where the first packet dies for rejected and dropped.
	ExpectHook nf.Hook
	// From is the pod the connection comes from; "" : the client outside.
	From string
	// Stale is a Pod address that was the Service's endpoint before the
	// lab's objects were as they are: the client's flow to the Service,
	// from ClientPort, began then, and its conntrack entry still sends it
	// there. The address is gone (a blackhole route, as Calico leaves for
	// a released Pod address).
	Stale      netip.AddrPort `json:",omitzero"`
	ClientPort uint16         `json:",omitempty"`
	// IPv4 is the IPv4 port of a dual-stack Service, whose IPv6 port is
	// Service, the one the client uses; no ClusterIP: single-stack.
	IPv4 kubeproxy.ServicePort `json:",omitzero"`
	// Forget: the client's connection is answered, then its conntrack
	// entry is deleted and it asks again on the same connection. The lab
	// node has nf_conntrack_tcp_loose=0, so that packet is INVALID.
	Forget bool `json:",omitempty"`
	// Query is the name the client asks the Service (a DNS server) for
	// (an A record); "": no DNS.
	Query string `json:",omitempty"`
}

// Ports are the Service's ports as kube-proxy sees them: one per family.
func (s Scenario) Ports() []kubeproxy.ServicePort {
	if s.IPv4.ClusterIP.IsValid() {
		return []kubeproxy.ServicePort{s.IPv4, s.Service}
	}
	return []kubeproxy.ServicePort{s.Service}
}

// VIP is the Service address the client connects to.
func (s Scenario) VIP() netip.AddrPort {
	return netip.AddrPortFrom(s.Service.ClusterIP, s.Service.Port)
}

var (
	web1    = netip.MustParseAddr("10.244.0.11")
	web2    = netip.MustParseAddr("10.244.0.12")
	hung    = netip.MustParseAddr("10.244.0.13")
	guarded = netip.MustParseAddr("10.244.0.14")
	legacy  = netip.MustParseAddr("10.244.0.15")
	dns1    = netip.MustParseAddr("10.244.0.16")
	// gone was Pod dns-old's address; no Pod has it now.
	gone = netip.MustParseAddr("10.244.0.19")
)

// podPort is the one container port every lab pod declares, named "http".
const podPort = 8080

// v6 is a lab pod's IPv6 address: in bridgeNet6, ending in the digits its
// IPv4 address ends in (10.244.0.11: fd00:10:244::11).
func v6(a netip.Addr) netip.Addr {
	b := bridgeNet6.Addr().As16()
	last := a.As4()[3]
	b[15] = last/10*16 + last%10
	return netip.AddrFrom16(b)
}

func pods() []Pod {
	ps := []Pod{
		{Name: "web-1", IP: web1, Labels: map[string]string{"app": "web", "track": "stable"}, mode: ModeHTTP, ports: []int{podPort}},
		{Name: "web-2", IP: web2, Labels: map[string]string{"app": "web", "track": "canary"}, mode: ModeHTTP, ports: []int{podPort}},
		{Name: "hung", IP: hung, Labels: map[string]string{"app": "hung"}, mode: ModeHung, ports: []int{podPort}},
		{Name: "guarded", IP: guarded, Labels: map[string]string{"app": "guarded"}, mode: ModeHTTP, ports: []int{podPort}},
		{Name: "legacy", IP: legacy, Labels: map[string]string{"app": "legacy"}, mode: ModeHTTP4, ports: []int{podPort}},
		{Name: "dns-1", IP: dns1, Labels: map[string]string{"app": "dns"}, mode: ModeDNS, ports: []int{53}},
	}
	for i := range ps {
		ps[i].IP6 = v6(ps[i].IP)
	}
	return ps
}

// scenario completes s with its Service: selector, target port, and as
// endpoints the lab pods the selector matches, at the target port (a
// number, or "http").
func scenario(s Scenario, service, vip string, selector map[string]string, target intstr.IntOrString) Scenario {
	s.Selector, s.TargetPort = selector, target
	s.Service = servicePort(service, netip.MustParseAddr(vip), selector, target)
	return s
}

// servicePort is a Service port at vip with the endpoints of its family
// that the selector gives.
func servicePort(service string, vip netip.Addr, selector map[string]string, target intstr.IntOrString) kubeproxy.ServicePort {
	sp := kubeproxy.ServicePort{Namespace: Namespace, Name: service, PortName: "http", Protocol: "tcp", ClusterIP: vip, Port: 80}
	port := uint16(target.IntValue())
	if target.Type == intstr.String {
		port = podPort
	}
	for _, p := range pods() {
		if labels.SelectorFromSet(selector).Matches(labels.Set(p.Labels)) {
			sp.Endpoints = append(sp.Endpoints, netip.AddrPortFrom(p.Addr(vip), port))
		}
	}
	return sp
}

// dualStack makes s's Service dual-stack: its IPv4 ClusterIP vip4 besides
// the IPv6 one the client uses.
func dualStack(s Scenario, vip4 string) Scenario {
	s.IPv4 = servicePort(s.Service.Name, netip.MustParseAddr(vip4), s.Selector, s.TargetPort)
	return s
}

// udp makes s's Service port UDP: "dns", port 53.
func udp(s Scenario) Scenario {
	s.Service.Protocol, s.Service.PortName, s.Service.Port = "udp", "dns", 53
	return s
}

// query makes s's client ask its Service, a DNS server, for name.
func query(s Scenario, name string) Scenario {
	s.Query = name
	return s
}

// Scenarios are the lab's stories, in the order they are shown.
func Scenarios() []Scenario {
	http := intstr.FromString("http")
	return []Scenario{
		scenario(Scenario{Name: "healthy", Title: "a healthy Service with two ready endpoints",
			Programmed: true, Finding: "healthy", Expect: flow.Answered},
			"web", "10.96.0.10", map[string]string{"app": "web"}, http),
		scenario(Scenario{Name: "no-endpoints", Title: "the selector has a typo (app=wbe) and matches no Pod: kube-proxy REJECTs",
			Programmed: true, Finding: "selector-matches-no-pod", Expect: flow.Rejected, ExpectHook: nf.Forward},
			"empty", "10.96.0.20", map[string]string{"app": "wbe"}, intstr.FromInt32(podPort)),
		scenario(Scenario{Name: "wrong-targetport", Title: "targetPort 9090, but the Pod listens on 8080",
			Programmed: true, Finding: "targetport-not-exposed", Expect: flow.Reset},
			"wrongport", "10.96.0.30", map[string]string{"app": "web", "track": "stable"}, intstr.FromInt32(9090)),
		scenario(Scenario{Name: "hung-pod", Title: "the Pod's server stopped accepting connections",
			Programmed: true, Finding: "backlog-full", Expect: flow.NoReply},
			"hung", "10.96.0.40", map[string]string{"app": "hung"}, http),
		scenario(Scenario{Name: "policy-drop", Title: "NetworkPolicy deny-guarded admits nothing to the Pod; a DROP rule in a chain FORWARD jumps to stands in for its engine",
			Programmed: true, Finding: "rule-drops-endpoint", Expect: flow.Dropped, ExpectHook: nf.Forward},
			"guarded", "10.96.0.50", map[string]string{"app": "guarded"}, http),
		scenario(Scenario{Name: "hairpin", Title: "the only Pod calls its own Service; the bridge's hairpin_mode is off",
			Programmed: true, Finding: "healthy", Expect: flow.Dropped, ExpectHook: nf.PreRouting, From: "web-2"},
			"self", "10.96.0.70", map[string]string{"app": "web", "track": "canary"}, http),
		udp(scenario(Scenario{Name: "stale-conntrack", Title: "a UDP client keeps sending to a Pod that left: its conntrack entry outlived the endpoint",
			Programmed: true, Finding: "conntrack-stale", Expect: flow.Dropped, ExpectHook: nf.PreRouting,
			Stale: netip.AddrPortFrom(gone, podPort), ClientPort: 40053},
			"dns", "10.96.0.80", map[string]string{"app": "web", "track": "stable"}, intstr.FromInt32(podPort))),
		scenario(Scenario{Name: "conntrack-invalid", Title: "an open connection's conntrack entry is deleted: its next packet is INVALID, and kube-proxy's KUBE-FORWARD drops it",
			Programmed: true, Finding: "healthy", Expect: flow.Dropped, ExpectHook: nf.Forward, Forget: true},
			"kept", "10.96.0.100", map[string]string{"app": "web", "track": "stable"}, http),
		dualStack(scenario(Scenario{Name: "ipv6", Title: "a dual-stack Service, reached over IPv6",
			Programmed: true, Finding: "healthy", Expect: flow.Answered},
			"dual", "fd00:10:96::90", map[string]string{"app": "web", "track": "stable"}, http), "10.96.0.90"),
		dualStack(scenario(Scenario{Name: "ipv4-only-server", Title: "a dual-stack Service whose Pod's server listens on IPv4 only (0.0.0.0)",
			Programmed: true, Finding: "listens-elsewhere", Expect: flow.Reset},
			"legacy", "fd00:10:96::a0", map[string]string{"app": "legacy"}, http), "10.96.0.160"),
		query(udp(scenario(Scenario{Name: "dns-nxdomain", Title: "a client asks the cluster DNS for web.front.svc.cluster.local.; Service web is in namespace lab: NXDOMAIN, read from the query's own packets",
			Programmed: true, Finding: "healthy", Expect: flow.Answered},
			"kube-dns", "10.96.0.110", map[string]string{"app": "dns"}, intstr.FromInt32(53))), "web.front.svc.cluster.local."),
		scenario(Scenario{Name: "no-proxy-rules", Title: "kube-proxy wrote no rules for the Service (not running, or not synced)",
			Programmed: false, Finding: "no-rules-for-service", Expect: flow.NotTranslated},
			"unproxied", "10.96.0.60", map[string]string{"app": "web", "track": "canary"}, intstr.FromInt32(podPort)),
	}
}

// policyRules are the lab's stand-in for the engine that would enforce
// NetworkPolicy deny-guarded (guardedPolicy), denying ingress to the
// guarded pod: a chain of its own, reached through a jump from FORWARD, as
// policy engines write them.
var policyRules = []string{
	":LAB-POLICY - [0:0]",
	"-A FORWARD -j LAB-POLICY",
	fmt.Sprintf(`-A LAB-POLICY -d %s/32 -p tcp -m tcp --dport 8080 -m comment --comment "%s/deny-guarded: stands in for a NetworkPolicy" -j DROP`, guarded, Namespace),
}

// Lab is a running lab.
type Lab struct {
	ID        string
	Node      nf.NetNS
	Client    nf.NetNS
	Upstream  nf.NetNS // "the rest of the network": silently discards
	Pods      []Pod
	Scenarios []Scenario
	// Rules and Rules6 are the iptables-restore and ip6tables-restore
	// inputs programmed into the node.
	Rules, Rules6 string
	// Left are the scenarios this machine cannot show, with why.
	Left     []string
	servers  []*Server
	ipv4Only bool // the machine has no IPv6 (or no ip6tables)
	// owner is the lab's lock file, locked while this process runs it.
	owner *os.File
}

// noIPv6 says why the lab cannot be dual-stack here, or "".
var noIPv6 = func() string {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		return "IPv6 is disabled in this kernel (ipv6.disable=1)"
	}
	if _, err := exec.LookPath("ip6tables-restore"); err != nil {
		return "ip6tables-restore not found: install iptables"
	}
	return ""
}

// Options configure Up.
type Options struct {
	// Keep: servers outlive the process (svctrace lab --keep); remove the
	// lab with Cleanup.
	Keep bool
}

// Preflight checks what Up needs, with the next step for each failure.
func Preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab creates network namespaces and iptables rules: run it as root (sudo)")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return errors.New("iptables-restore not found: install iptables (Debian/Ubuntu: apt-get install iptables)")
	}
	return nil
}

// Up builds a lab. On error, whatever was built is removed again.
func Up(opts Options) (l *Lab, err error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	l = &Lab{ID: newID(), Scenarios: Scenarios(), Pods: pods()}
	if why := noIPv6(); why != "" {
		// An IPv4-only machine still shows every other scenario.
		l.ipv4Only = true
		for _, s := range l.Scenarios {
			if s.VIP().Addr().Is6() {
				l.Left = append(l.Left, s.Name+" ("+why+")")
			}
		}
		l.Scenarios = slices.DeleteFunc(l.Scenarios, func(s Scenario) bool { return s.VIP().Addr().Is6() })
	}
	if l.owner, err = claim(l.ID); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			l.Down()
			l = nil
		}
	}()
	if l.Node, err = topo.CreateNetNS(nsName(l.ID, "node")); err != nil {
		return l, err
	}
	if l.Client, err = topo.CreateNetNS(nsName(l.ID, "client")); err != nil {
		return l, err
	}
	if l.Upstream, err = topo.CreateNetNS(nsName(l.ID, "upstream")); err != nil {
		return l, err
	}
	for i := range l.Pods {
		if l.Pods[i].NS, err = topo.CreateNetNS(nsName(l.ID, l.Pods[i].Name)); err != nil {
			return l, err
		}
	}
	if err := l.wire(); err != nil {
		return l, fmt.Errorf("building the lab network: %w", err)
	}
	if !bridgeNetfilter(l.Node) {
		// Without br_netfilter the node routes the hairpin's packet and
		// the bridge delivers it: nothing to show.
		l.Scenarios = slices.DeleteFunc(l.Scenarios, func(s Scenario) bool { return s.Name == "hairpin" })
		l.Left = append(l.Left, "hairpin (br_netfilter is not loaded: modprobe br_netfilter, as Kubernetes nodes with a bridge do)")
	}
	if err := l.program(); err != nil {
		return l, err
	}
	// Strict, as some nodes are: a TCP packet without an entry is INVALID
	// rather than taken up as a connection mid-stream. Only the
	// conntrack-invalid scenario sends one.
	if err := topo.Sysctl(l.Node, "net.netfilter.nf_conntrack_tcp_loose", "0"); err != nil {
		l.Scenarios = slices.DeleteFunc(l.Scenarios, func(s Scenario) bool { return s.Forget })
		l.Left = append(l.Left, "conntrack-invalid ("+err.Error()+")")
	}
	for _, p := range l.Pods {
		s, err := startServer(serverSpec{NetNS: p.NS.Path, Name: p.Name, Mode: p.mode, Ports: p.ports, WatchStdin: !opts.Keep})
		if err != nil {
			return l, err
		}
		l.servers = append(l.servers, s)
	}
	if err := l.history(); err != nil {
		return l, fmt.Errorf("making the lab's conntrack history: %w", err)
	}
	return l, nil
}

// history makes what happened before the lab's objects were as they are:
// for a scenario with a Stale endpoint, the rules sent the Service there
// when the client's flow began, and that Pod's address is gone since.
func (l *Lab) history() error {
	old := map[string][]netip.AddrPort{}
	var stale []Scenario
	for _, s := range l.Scenarios {
		if s.Stale.IsValid() {
			old[s.Service.Name] = []netip.AddrPort{s.Stale}
			stale = append(stale, s)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	if err := l.programWith(old); err != nil {
		return err
	}
	for _, s := range stale {
		// The datagram leaves the node, so its entry is confirmed; the
		// neighbour entry stands for the Pod, and nothing answers.
		gone := s.Stale.Addr()
		remove, err := topo.Neighbour(l.Node, topo.BridgeName, gone, net.HardwareAddr{2, 0, 0, 0, 0, 0x19})
		if err != nil {
			return err
		}
		l.Request(context.Background(), s, 50*time.Millisecond)
		if err := remove(); err != nil {
			return err
		}
		if err := topo.Blackhole(l.Node, gone); err != nil {
			return err
		}
	}
	return l.program()
}

func (l *Lab) wire() error {
	n := topo.NodeNet{Node: l.Node, Client: l.Client, Upstream: l.Upstream,
		Bridge: bridgeNet, NodeAddr: nodeNet, ClientAddr: clientNet, Uplink: uplinkNet,
		IPv6: &topo.NodeNet6{Bridge: bridgeNet6, NodeAddr: nodeNet6, ClientAddr: clientNet6, Uplink: uplinkNet6}}
	if l.ipv4Only {
		n.IPv6 = nil
	}
	if err := n.Wire(); err != nil {
		return err
	}
	for i, p := range l.Pods {
		addrs := []netip.Addr{p.IP, p.IP6}
		if l.ipv4Only {
			addrs = addrs[:1]
		}
		if err := n.AttachPod(p.NS, i+1, addrs...); err != nil {
			return err
		}
	}
	return nil
}

// program writes the kube-proxy-style rules into the node.
func (l *Lab) program() error { return l.programWith(nil) }

// programWith writes the rules with some Services' endpoints replaced (by
// Service name): the rules as kube-proxy wrote them before.
func (l *Lab) programWith(endpoints map[string][]netip.AddrPort) error {
	var v4, v6 []kubeproxy.ServicePort
	for _, s := range l.Scenarios {
		if !s.Programmed {
			continue
		}
		for _, sp := range s.Ports() {
			if eps, ok := endpoints[sp.Name]; ok {
				sp.Endpoints = eps
			}
			if sp.ClusterIP.Is6() {
				v6 = append(v6, sp)
			} else {
				v4 = append(v4, sp)
			}
		}
	}
	// kube-proxy writes a ruleset per family.
	l.Rules = kubeproxy.IPTablesRestore(v4, kubeproxy.Options{ClusterCIDR: ClusterCIDR, ExtraFilter: policyRules})
	if _, err := topo.Run(l.Node, l.Rules, "iptables-restore"); err != nil {
		return fmt.Errorf("programming the node's iptables rules: %w", err)
	}
	if l.ipv4Only {
		return nil
	}
	l.Rules6 = kubeproxy.IPTablesRestore(v6, kubeproxy.Options{ClusterCIDR: ClusterCIDR6})
	if _, err := topo.Run(l.Node, l.Rules6, "ip6tables-restore"); err != nil {
		return fmt.Errorf("programming the node's ip6tables rules: %w", err)
	}
	return nil
}

// bridgeNetfilter reports whether bridged IPv4 traffic in ns goes through
// iptables (br_netfilter loaded; its sysctl is per namespace).
func bridgeNetfilter(ns nf.NetNS) bool {
	v, err := topo.ReadSysctl(ns, "net.bridge.bridge-nf-call-iptables")
	return err == nil && v == "1"
}

// Down stops the servers and removes the namespaces (and with them every
// interface and rule). Servers of a kept lab are stopped too.
func (l *Lab) Down() error {
	for _, s := range l.servers {
		s.Stop()
	}
	l.servers = nil
	_, err := remove(l.ID)
	if err == nil {
		os.Remove(lockPath(l.ID))
	}
	if l.owner != nil {
		l.owner.Close()
		l.owner = nil
	}
	return err
}
