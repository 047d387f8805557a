// Package cluster brings up a throwaway single-node Kubernetes data plane in
// network namespaces for svctrace's end-to-end tests: real etcd,
// kube-apiserver, kube-controller-manager (EndpointSlice and ServiceAccount
// controllers) and kube-proxy in the node's namespace, pods as namespaces on
// a bridge, a client namespace. There is no kubelet: tests create Pods with a
// node name and set their status themselves. Used by tests only.
//
// The binaries come from the separate build module test/k8s (make k8s-bins).
package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Prefix starts the name of every network namespace a cluster creates.
const Prefix = "svctrace-k8s-"

const (
	// APIServerPort is where the API server listens, on the node.
	APIServerPort = 6443
	// ServiceCIDR is where the apiserver allocates ClusterIPs.
	ServiceCIDR = "10.96.0.0/16"
	// ClusterCIDR holds every cluster's pod addresses (kube-proxy
	// --cluster-cidr: traffic from outside it is masqueraded).
	ClusterCIDR = "10.244.0.0/16"
	// The cluster is dual-stack, IPv4 first: these are the IPv6 ranges
	// (unique local addresses).
	ServiceCIDR6 = "fd00:10:96::/112"
	ClusterCIDR6 = "fd00:10:244::/56"
	// NodeName is the one node's name.
	NodeName = "node-1"
)

// Mode is a kube-proxy mode.
type Mode string

const (
	IPTables Mode = "iptables" // iptables mode, with Debian's default iptables (nf_tables backend)
	// IPTablesLegacy is iptables mode with the legacy (x_tables) backend.
	IPTablesLegacy Mode = "iptables-legacy"
	NFTables       Mode = "nftables"
)

// Options configure Up.
type Options struct {
	Mode Mode
	// Policies runs a NetworkPolicy engine on the node: kube-router's
	// firewall alone (iptables and ipset), as it runs on a node, against
	// the API server. RequirePolicyEngine says where its binary comes from.
	Policies bool
}

// Cluster is a running cluster.
type Cluster struct {
	ID       string
	Mode     Mode
	Node     nf.NetNS // the node: control plane, kube-proxy, bridge
	ClientNS nf.NetNS // a client outside the cluster, routed via the node
	// Upstream is where the node's default route leads, as on a real node;
	// it forwards nothing, so nothing leaves.
	Upstream nf.NetNS
	NodeIP   netip.Addr // the node's address, on the client's network
	ClientIP netip.Addr
	PodNet   netip.Prefix // this cluster's pod subnet (a /24 of ClusterCIDR)
	// NodeIP6, ClientIP6 and PodNet6 are their IPv6 counterparts.
	NodeIP6, ClientIP6 netip.Addr
	PodNet6            netip.Prefix // a /64 of ClusterCIDR6
	// Kubeconfig is the admin kubeconfig. Its server is 127.0.0.1 of the node:
	// use it from inside the node's namespace.
	Kubeconfig string
	Client     kubernetes.Interface // admin client; dials inside the node
	Dir        string               // certificates, data, logs

	procs   []*proc // in start order
	pods    []*Pod
	nextPod int
	remote  map[string]*remoteNode // other nodes, by name
	data    *DataNode              // the second node with a data path (JoinNode), if any
	// policies: kube-router enforces NetworkPolicies (Options.Policies).
	policies bool
	mu       sync.Mutex
	down     sync.Once
}

var (
	clusters   sync.Map // *Cluster → struct{}, for teardown on a signal
	counter    atomic.Int32
	signalOnce sync.Once
)

// BinDir is where the Kubernetes binaries are: $SVCTRACE_K8S_BIN, or the
// cache directory that `make k8s-bins` fills.
func BinDir() string {
	if d := os.Getenv("SVCTRACE_K8S_BIN"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	k8s, etcd := Versions()
	return filepath.Join(home, ".cache", "svctrace", "k8s-"+k8s+"-etcd-"+etcd)
}

// Versions reads the versions the build module pins, from test/k8s/go.mod
// found above the working directory.
func Versions() (k8s, etcd string) {
	dir, _ := os.Getwd()
	for ; dir != "/"; dir = filepath.Dir(dir) {
		b, err := os.ReadFile(filepath.Join(dir, "test", "k8s", "go.mod"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(strings.TrimPrefix(l, "require "))
			switch {
			case len(f) >= 2 && f[0] == "k8s.io/kubernetes":
				k8s = f[1]
			case len(f) >= 2 && f[0] == "go.etcd.io/etcd/server/v3":
				etcd = f[1]
			}
		}
		return k8s, etcd
	}
	return "unknown", "unknown"
}

// RequireBinaries skips the test when the Kubernetes binaries are not built,
// or fails it with SVCTRACE_REQUIRE_E2E=1 (make e2e, CI).
func RequireBinaries(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t)
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(BinDir(), b)); err != nil {
			msg := fmt.Sprintf("Kubernetes binaries not found in %s: run `make k8s-bins` (the first build takes ~6 min)", BinDir())
			if os.Getenv("SVCTRACE_REQUIRE_E2E") == "1" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// Up brings up a cluster; it is torn down when the test ends, on failure
// too, and when the test binary is interrupted.
func Up(t testing.TB, opts Options) *Cluster {
	t.Helper()
	RequireBinaries(t)
	signalOnce.Do(teardownOnSignal)
	n := int(counter.Add(1))
	c := &Cluster{
		ID:       fmt.Sprintf("%d-%d", os.Getpid(), n),
		Mode:     opts.Mode,
		NodeIP:   netip.AddrFrom4([4]byte{10, 99, byte(n), 1}),
		ClientIP: netip.AddrFrom4([4]byte{10, 99, byte(n), 2}),
		PodNet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(n), 0}), 24),
		Dir:      t.TempDir(),
		policies: opts.Policies,
	}
	c.NodeIP6, c.ClientIP6 = ula(0x99, n, 1), ula(0x99, n, 2)
	c.PodNet6 = netip.PrefixFrom(ula(0x244, n, 0), 64)
	clusters.Store(c, struct{}{})
	t.Cleanup(func() {
		if t.Failed() {
			c.dumpLogs(t)
		}
		c.Down()
	})
	start := time.Now()
	if err := c.up(); err != nil {
		t.Fatalf("bringing up the %s cluster: %v", opts.Mode, err)
	}
	t.Logf("cluster %s (kube-proxy %s) up in %s", c.ID, c.Mode, time.Since(start).Round(time.Millisecond))
	return c
}

// ula is fd00:10:<net>:<n>::<host>, an address in the cluster's IPv6
// ranges.
func ula(net uint16, n int, host byte) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, byte(net >> 8), byte(net), byte(n >> 8), byte(n), 15: host})
}

func (c *Cluster) nsName(role string) string { return Prefix + c.ID + "-" + role }

func (c *Cluster) up() error {
	var err error
	if c.Node, err = topo.CreateNetNS(c.nsName("node")); err != nil {
		return err
	}
	if c.ClientNS, err = topo.CreateNetNS(c.nsName("client")); err != nil {
		return err
	}
	if c.Upstream, err = topo.CreateNetNS(c.nsName("upstream")); err != nil {
		return err
	}
	if err := c.net().Wire(); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	p, err := newPKI(c.Dir, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv4(10, 96, 0, 1), net.IP(c.NodeIP.AsSlice())})
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	c.Kubeconfig = p.path("admin.kubeconfig")
	if err := c.startControlPlane(p); err != nil {
		return err
	}
	if err := c.connect(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.bootstrap(ctx); err != nil {
		return err
	}
	if err := c.startKubeProxy(ctx, p); err != nil {
		return err
	}
	if c.policies {
		return c.startKubeRouter(ctx)
	}
	return nil
}

// net is the cluster's node topology. The uplink subnet, like the others,
// differs from cluster to cluster.
func (c *Cluster) net() topo.NodeNet {
	return topo.NodeNet{Node: c.Node, Client: c.ClientNS, Upstream: c.Upstream,
		Bridge:   netip.PrefixFrom(c.PodNet.Addr().Next(), c.PodNet.Bits()),
		NodeAddr: netip.PrefixFrom(c.NodeIP, 24), ClientAddr: netip.PrefixFrom(c.ClientIP, 24),
		Uplink: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 98, c.NodeIP.As4()[2], 1}), 30),
		IPv6: &topo.NodeNet6{Bridge: netip.PrefixFrom(c.PodNet6.Addr().Next(), 64),
			NodeAddr: netip.PrefixFrom(c.NodeIP6, 64), ClientAddr: netip.PrefixFrom(c.ClientIP6, 64),
			Uplink: netip.PrefixFrom(ula(0x98, int(c.NodeIP.As4()[2]), 1), 126)}}
}

// UplinkIP is the node's second address, on the link to its upstream
// router.
func (c *Cluster) UplinkIP() netip.Addr { return c.net().Uplink.Addr() }

func (c *Cluster) bin(name string) string { return filepath.Join(BinDir(), name) }

func (c *Cluster) startControlPlane(p *pki) error {
	etcd, err := start(c.Node, c.Dir, "etcd", c.bin("etcd"), nil,
		"--name=svctrace", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=svctrace=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, etcd)
	if err := waitTCP(c.Node, "127.0.0.1:2379", etcd, 30*time.Second); err != nil {
		return err
	}
	api, err := start(c.Node, c.Dir, "kube-apiserver", c.bin("kube-apiserver"), nil,
		"--etcd-servers=http://127.0.0.1:2379", fmt.Sprintf("--secure-port=%d", APIServerPort),
		"--advertise-address="+c.NodeIP.String(),
		"--tls-cert-file="+p.path("apiserver.crt"), "--tls-private-key-file="+p.path("apiserver.key"),
		"--client-ca-file="+p.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p.path("sa.pub"), "--service-account-signing-key-file="+p.path("sa.key"),
		"--service-cluster-ip-range="+ServiceCIDR+","+ServiceCIDR6, "--authorization-mode=RBAC",
		// Kubelets (StartKubelet's) by their address, not their host name;
		// privileged Pods allowed, as kubeadm's clusters do.
		"--kubelet-preferred-address-types=InternalIP", "--allow-privileged=true")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, api)
	if err := waitTCP(c.Node, fmt.Sprintf("127.0.0.1:%d", APIServerPort), api, time.Minute); err != nil {
		return err
	}
	kcm, err := start(c.Node, c.Dir, "kube-controller-manager", c.bin("kube-controller-manager"), nil,
		"--kubeconfig="+p.path("kube-controller-manager.kubeconfig"),
		"--controllers=endpointslice-controller,serviceaccount-controller",
		"--leader-elect=false", "--use-service-account-credentials=false", "--secure-port=0")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kcm)
	return nil
}

// connect makes the admin client; its connections are opened inside the
// node's namespace, where the apiserver listens.
func (c *Cluster) connect() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.Dial = c.DialContext
	cfg.QPS, cfg.Burst = 100, 200
	c.Client, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	// The apiserver listens before it serves; wait for /readyz.
	deadline := time.Now().Add(time.Minute)
	for {
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(context.Background())
		if err == nil && string(body) == "ok" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apiserver not ready after a minute: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DialContext dials from inside the node's network namespace.
func (c *Cluster) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := nf.InNetNS(c.Node, func() (err error) {
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// bootstrap creates what a real cluster's installer would: RBAC for the
// controller manager (which runs with its own identity), the Node with its
// address, and waits for the default ServiceAccount.
func (c *Cluster) bootstrap(ctx context.Context) error {
	for _, role := range []string{"system:controller:endpointslice-controller", "system:controller:service-account-controller"} {
		_, err := c.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "svctrace-" + strings.ReplaceAll(role, ":", "-")},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:kube-controller-manager"}},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("binding %s: %w", role, err)
		}
	}
	if err := c.createNode(ctx, NodeName, []netip.Addr{c.NodeIP, c.NodeIP6}, []netip.Prefix{c.PodNet, c.PodNet6}); err != nil {
		return err
	}
	return c.waitServiceAccount(ctx, "default")
}

// createNode creates a Ready Node object with its address and pod range.
// The first of ips and podNets is the primary family's.
func (c *Cluster) createNode(ctx context.Context, name string, ips []netip.Addr, podNets []netip.Prefix) error {
	spec := corev1.NodeSpec{PodCIDR: podNets[0].String()}
	for _, p := range podNets {
		spec.PodCIDRs = append(spec.PodCIDRs, p.String())
	}
	node, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
		Spec:       spec,
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", name, err)
	}
	var addrs []corev1.NodeAddress
	for _, ip := range ips {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	node.Status = corev1.NodeStatus{
		Addresses:  append(addrs, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name}),
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of node %s: %w", name, err)
	}
	return nil
}

// EnsureNamespace creates a Kubernetes namespace (if needed) and waits for
// its default ServiceAccount, without which Pods are refused.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return c.waitServiceAccount(ctx, name)
}

func (c *Cluster) waitServiceAccount(ctx context.Context, ns string) error {
	for {
		_, err := c.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no default ServiceAccount in %s (is the controller manager running?): %w", ns, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) startKubeProxy(ctx context.Context, p *pki) error {
	if err := c.runKubeProxy(c.Node, NodeName, p.path("kube-proxy.kubeconfig")); err != nil {
		return err
	}
	// kube-proxy has synced once the default/kubernetes Service's rules exist.
	return c.WaitRules(ctx, "the kubernetes Service", func(rules string) bool {
		return strings.Contains(rules, c.NodeIP.String()+":"+fmt.Sprint(APIServerPort))
	})
}

// runKubeProxy starts kube-proxy for node name in ns, in the cluster's
// mode.
func (c *Cluster) runKubeProxy(ns nf.NetNS, name, kubeconfig string) error {
	mode, env := string(c.Mode), []string(nil)
	if c.Mode == IPTablesLegacy {
		// kube-proxy runs `iptables`, `iptables-restore`, …: give it the
		// legacy ones under those names.
		dir, err := legacyIPTables(c.Dir)
		if err != nil {
			return err
		}
		mode, env = string(IPTables), []string{"PATH=" + dir + ":" + os.Getenv("PATH")}
	}
	log := "kube-proxy"
	if name != NodeName {
		log += "-" + name
	}
	kp, err := start(ns, c.Dir, log, c.bin("kube-proxy"), env,
		"--kubeconfig="+kubeconfig, "--proxy-mode="+mode, "--hostname-override="+name,
		"--cluster-cidr="+ClusterCIDR+","+ClusterCIDR6, "--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0", "--conntrack-tcp-timeout-close-wait=0",
		"--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kp)
	return nil
}

func legacyIPTables(dir string) (string, error) {
	bin := filepath.Join(dir, "iptables-legacy-bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		target := "/usr/sbin/" + strings.Replace(name, "tables", "tables-legacy", 1)
		if _, err := os.Stat(target); err != nil {
			return "", fmt.Errorf("iptables-legacy not installed: %s missing", target)
		}
		if err := os.Symlink(target, filepath.Join(bin, name)); err != nil && !os.IsExist(err) {
			return "", err
		}
	}
	return bin, nil
}

// Down stops everything in reverse order (kube-proxy, controller manager,
// apiserver, etcd: an apiserver without etcd hangs on shutdown) and removes
// the namespaces. Safe to call more than once.
func (c *Cluster) Down() {
	c.down.Do(func() {
		clusters.Delete(c)
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].stop(5 * time.Second)
		}
		for _, p := range c.pods {
			if p.server != nil {
				p.server.Stop()
			}
		}
		topo.Remove(topo.List(Prefix + c.ID + "-"))
	})
}

func (c *Cluster) dumpLogs(t testing.TB) {
	for _, p := range c.procs {
		t.Logf("--- last lines of %s:\n%s", p.name, p.tail(15))
	}
}

// teardownOnSignal removes every cluster when the test binary is
// interrupted (go test forwards Ctrl-C), then exits.
func teardownOnSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-ch
		clusters.Range(func(k, _ any) bool {
			k.(*Cluster).Down()
			return true
		})
		fmt.Fprintf(os.Stderr, "clusters removed after %s\n", sig)
		os.Exit(1)
	}()
}

// Cleanup removes clusters that crashed test runs left behind: those whose
// test process (the first part of their ID) is gone.
func Cleanup() error {
	var stale []string
	for _, n := range topo.List(Prefix) {
		pid, _, _ := strings.Cut(strings.TrimPrefix(n, Prefix), "-")
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			stale = append(stale, n)
		}
	}
	return topo.Remove(stale)
}

func tcpOpen(ns nf.NetNS, addr string) bool {
	err := nf.InNetNS(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	return err == nil
}
