package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// CoreDNSVersion is the CoreDNS the DNS stories run as the cluster's DNS
// (github.com/coredns/coredns, its kubernetes plugin reading the real API
// server). `make k8s-bins` builds it next to the Kubernetes binaries, as a
// module of its own.
const CoreDNSVersion = "v1.15.0"

// DNSClusterIP is the kube-dns Service's ClusterIP, the kubelet's
// clusterDNS; ClusterDomain its clusterDomain.
const (
	DNSClusterIP  = "10.96.0.10"
	ClusterDomain = "cluster.local"
)

// RequireCoreDNS skips the test when CoreDNS is missing, or fails it with
// SVCTRACE_REQUIRE_E2E=1 (make e2e, CI).
func RequireCoreDNS(t testing.TB) {
	t.Helper()
	RequireBinaries(t)
	if _, err := os.Stat(filepath.Join(BinDir(), "coredns")); err == nil {
		return
	}
	msg := fmt.Sprintf("CoreDNS %s is missing in %s (make k8s-bins)", CoreDNSVersion, BinDir())
	if os.Getenv("SVCTRACE_REQUIRE_E2E") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// PodResolvConf is the resolv.conf the kubelet writes for a Pod of
// namespace ns with dnsPolicy ClusterFirst.
func PodResolvConf(ns string) string {
	return fmt.Sprintf("search %s.svc.%s svc.%s %s\nnameserver %s\noptions ndots:5\n", ns, ClusterDomain, ClusterDomain, ClusterDomain, DNSClusterIP)
}

// DNS is the cluster's DNS StartDNS runs: its Service and its Pod.
type DNS struct {
	Service *corev1.Service
	Pod     *Pod
	proc    *proc
	c       *Cluster
}

// Pause stops CoreDNS's process (SIGSTOP): it keeps its sockets and
// answers nothing, as a hung DNS server does, while its Pod stays Ready.
// It returns once every thread is stopped: the signal is delivered after
// kill returns, and a query sent meanwhile was answered (a CI run).
func (d *DNS) Pause() error {
	pid := d.proc.cmd.Process.Pid
	if err := d.proc.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(time.Millisecond) {
		if stopped(pid) {
			return nil
		}
	}
	d.Resume() // not left half stopped for the stories after
	return fmt.Errorf("CoreDNS (pid %d) did not stop in 5s", pid)
}

// stopped reports whether every thread of pid is stopped (state T).
func stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			return false
		}
		// The state follows the command's closing parenthesis.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}

// Resume lets it run again (SIGCONT).
func (d *DNS) Resume() error { return d.proc.cmd.Process.Signal(syscall.SIGCONT) }

// StartDNS runs the cluster's DNS as a kubeadm cluster has it: the
// Service kube-system/kube-dns at DNSClusterIP (53 over UDP and TCP) and
// a Pod of it, coredns-0, running CoreDNS in its own network namespace. It
// answers the cluster domain from the API server and NXDOMAIN for the
// rest (there is no upstream), and is Ready once it answers.
func (c *Cluster) StartDNS(ctx context.Context) (*DNS, error) {
	labels := map[string]string{"k8s-app": "kube-dns"}
	pod, err := c.AddPod(ctx, PodSpec{Namespace: "kube-system", Name: "coredns-0", Labels: labels,
		Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP}}})
	if err != nil {
		return nil, err
	}
	// CoreDNS reaches the API server on the node's address, as a Pod does.
	kubeconfig, err := c.kubeconfigVia("admin", "coredns")
	if err != nil {
		return nil, err
	}
	corefile := filepath.Join(c.Dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`%[1]s:53 in-addr.arpa:53 ip6.arpa:53 {
    errors
    log
    kubernetes %[1]s in-addr.arpa ip6.arpa {
        kubeconfig %[2]s
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
.:53 {
    log
    template ANY ANY {
        rcode NXDOMAIN
    }
}
`, ClusterDomain, kubeconfig)), 0o644); err != nil {
		return nil, err
	}
	p, err := start(pod.NS, c.Dir, "coredns", c.bin("coredns"), nil, "-conf", corefile, "-dns.port", "53")
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	svc, err := c.CreateService(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns", Labels: labels},
		Spec: corev1.ServiceSpec{ClusterIP: DNSClusterIP, Selector: labels, Ports: []corev1.ServicePort{
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
			{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)}}},
	})
	if err != nil {
		return nil, err
	}
	d := &DNS{Service: svc, Pod: pod, proc: p, c: c}
	if err := c.waitAnswers(ctx, netip.AddrPortFrom(pod.IP, 53), pod.NS); err != nil {
		return nil, err
	}
	if err := c.SetReady(ctx, pod, true); err != nil {
		return nil, err
	}
	return d, d.WaitReady(ctx)
}

// WaitReady waits until kube-proxy sends kube-dns's ports to its Pod.
func (d *DNS) WaitReady(ctx context.Context) error {
	ep := []netip.AddrPort{netip.AddrPortFrom(d.Pod.IP, 53)}
	return d.c.WaitService(ctx, d.Service, map[string][]netip.AddrPort{"dns": ep, "dns-tcp": ep})
}

// waitAnswers waits until the DNS server at a (in namespace ns) answers
// for the kubernetes Service: it has read the API.
func (c *Cluster) waitAnswers(ctx context.Context, a netip.AddrPort, ns nf.NetNS) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	name := "kubernetes.default.svc." + ClusterDomain + "."
	var last error
	for ctx.Err() == nil {
		last = nf.InNetNS(ns, func() error {
			m := new(dns.Msg)
			m.SetQuestion(name, dns.TypeA)
			r, err := dns.Exchange(m, a.String())
			if err == nil && len(r.Answer) == 0 {
				err = fmt.Errorf("%s: %s", name, dns.RcodeToString[r.Rcode])
			}
			return err
		})
		if last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the DNS server at %s did not answer in 30s (%v): see its log in %s", a, last, c.Dir)
}

// NodeLocalDNS is NodeLocal DNSCache's link-local listener address, the
// one its manifest uses.
const NodeLocalDNS = "169.254.20.10"

// NodeLocal is a NodeLocal DNSCache StartNodeLocalDNS runs on the node.
type NodeLocal struct {
	proc *proc
}

// Stop stops the cache: its address stays on the node with nothing
// listening, as when node-local-dns's Pod is gone.
func (n *NodeLocal) Stop() { n.proc.stop(5 * time.Second) }

// StartNodeLocalDNS runs NodeLocal DNSCache as its manifest lays it out:
// CoreDNS in the node's network namespace bound to NodeLocalDNS (on the
// node's loopback: no dummy device here), rules in the raw table that
// leave its queries untracked (NOTRACK), and the cluster's DNS Service
// asked over TCP on a cache miss. The cluster's DNS must run (StartDNS).
func (c *Cluster) StartNodeLocalDNS(ctx context.Context) (*NodeLocal, error) {
	addr := NodeLocalDNS
	cmds := [][]string{{"ip", "addr", "add", addr + "/32", "dev", "lo"}}
	for _, proto := range []string{"udp", "tcp"} {
		cmds = append(cmds,
			[]string{"iptables", "-t", "raw", "-A", "PREROUTING", "-d", addr, "-p", proto, "--dport", "53", "-j", "NOTRACK"},
			[]string{"iptables", "-t", "raw", "-A", "OUTPUT", "-s", addr, "-p", proto, "--sport", "53", "-j", "NOTRACK"})
	}
	for _, cmd := range cmds {
		if out, err := c.Exec(cmd...); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(cmd, " "), err, out)
		}
	}
	corefile := filepath.Join(c.Dir, "Corefile.nodelocal")
	if err := os.WriteFile(corefile, []byte(fmt.Sprintf(`.:53 {
    errors
    log
    bind %s
    cache 30
    forward . %s {
        force_tcp
    }
}
`, addr, DNSClusterIP)), 0o644); err != nil {
		return nil, err
	}
	p, err := start(c.Node, c.Dir, "node-local-dns", c.bin("coredns"), nil, "-conf", corefile)
	if err != nil {
		return nil, err
	}
	c.procs = append(c.procs, p)
	return &NodeLocal{proc: p}, c.waitAnswers(ctx, netip.AddrPortFrom(netip.MustParseAddr(addr), 53), c.Node)
}
