package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

// Pod is a pod: a network namespace on the node's bridge, maybe a server,
// and its Pod object.
type Pod struct {
	Namespace, Name string
	IP              netip.Addr
	IP6             netip.Addr // invalid on other nodes
	HostIP          netip.Addr // its node's address
	NS              nf.NetNS
	// Veth is its link's end on the node, a port of the node's bridge
	// ("" on other nodes).
	Veth   string
	server *lab.Server
}

// PodSpec describes a pod to add.
type PodSpec struct {
	Namespace, Name string
	Labels          map[string]string
	// Ports are the container ports the Pod object declares (named ports
	// are what a Service's targetPort name resolves against).
	Ports []corev1.ContainerPort
	// Serve is the server mode (lab.ModeHTTP, lab.ModeHung) on the Listen
	// ports; "" runs no server.
	Serve  string
	Listen []int
	// Etc are the server's /etc files by name (resolv.conf, hosts), as
	// the kubelet and the runtime give a Pod's; nil: the node's.
	Etc   map[string]string
	Ready bool
	// Node is where the Pod runs: "" is this cluster's node. Pods on other
	// nodes (see AddNode) are API objects only: an address in that node's
	// pod range, no namespace and no server — what this node's kube-proxy
	// sees of a remote endpoint.
	Node string
}

// AddPod creates the pod's namespace, starts its server, creates the Pod
// object on the node and sets its status (Running; Ready as asked).
func (c *Cluster) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	d := c.data
	if spec.Node != "" && spec.Node != NodeName && (d == nil || spec.Node != d.Name) {
		return c.addRemotePod(ctx, spec)
	}
	c.mu.Lock()
	c.nextPod++
	n := c.nextPod
	p := &Pod{Namespace: spec.Namespace, Name: spec.Name}
	nodeNet, node := c.net(), NodeName
	if d != nil && spec.Node == d.Name {
		d.pods++
		ip := d.PodNet.Addr().As4()
		ip[3] = byte(10 + d.pods)
		p.IP, p.HostIP = netip.AddrFrom4(ip), d.IP
		nodeNet, node = d.net(), d.Name
	} else {
		ip, ip6 := c.PodNet.Addr().As4(), c.PodNet6.Addr().As16()
		ip[3], ip6[15] = byte(10+n), byte(10+n)
		p.IP, p.IP6, p.HostIP = netip.AddrFrom4(ip), netip.AddrFrom16(ip6), c.NodeIP
	}
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	var err error
	if p.NS, err = topo.CreateNetNS(c.nsName(fmt.Sprintf("pod%d", n))); err != nil {
		return nil, err
	}
	p.Veth = fmt.Sprintf("veth%d", n) // as AttachPod names it
	addrs := []netip.Addr{p.IP}
	if p.IP6.IsValid() {
		addrs = append(addrs, p.IP6)
	}
	if err := nodeNet.AttachPod(p.NS, n, addrs...); err != nil {
		return nil, err
	}
	if spec.Serve != "" {
		if p.server, err = lab.StartPodServer(p.NS, spec.Name, spec.Serve, spec.Listen, spec.Etc); err != nil {
			return nil, err
		}
	}
	return p, c.createPod(ctx, p, spec, node)
}

// addRemotePod adds a Pod object on another node.
func (c *Cluster) addRemotePod(ctx context.Context, spec PodSpec) (*Pod, error) {
	c.mu.Lock()
	r, ok := c.remote[spec.Node]
	if ok {
		r.pods++
	}
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("pod %s/%s: no node %s (AddNode first)", spec.Namespace, spec.Name, spec.Node)
	}
	ip := r.podNet.Addr().As4()
	ip[3] = byte(10 + r.pods)
	p := &Pod{Namespace: spec.Namespace, Name: spec.Name, IP: netip.AddrFrom4(ip), HostIP: r.ip}
	return p, c.createPod(ctx, p, spec, spec.Node)
}

func (c *Cluster) createPod(ctx context.Context, p *Pod, spec PodSpec, node string) error {
	if err := c.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return err
	}
	no := false
	_, err := c.Client.CoreV1().Pods(spec.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                     node,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "app", Image: "svctrace.invalid/app", Ports: spec.Ports}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	return c.SetReady(ctx, p, spec.Ready)
}

// remoteNode is a Node object for another node of the cluster: nothing
// runs there.
type remoteNode struct {
	ip     netip.Addr
	podNet netip.Prefix
	pods   int
}

// AddNode adds another Node, Ready, with an address and a pod range of its
// own. Only its objects exist: Pods placed there (PodSpec.Node) are
// endpoints this node's kube-proxy knows but cannot reach.
func (c *Cluster) AddNode(ctx context.Context, name string) error {
	c.mu.Lock()
	if c.remote == nil {
		c.remote = map[string]*remoteNode{}
	}
	k := len(c.remote) + 1
	ip, podNet := c.NodeIP.As4(), c.PodNet.Addr().As4()
	ip[3] += byte(100 + k)
	podNet[2] += byte(100 + 10*k)
	r := &remoteNode{ip: netip.AddrFrom4(ip), podNet: netip.PrefixFrom(netip.AddrFrom4(podNet), 24)}
	c.remote[name] = r
	c.mu.Unlock()
	return c.createNode(ctx, name, []netip.Addr{r.ip}, []netip.Prefix{r.podNet})
}

// StopKubeProxy kills kube-proxy the way a crash would: its rules stay as
// they were, and nothing updates them any more.
func (c *Cluster) StopKubeProxy() { c.kill("kube-proxy") }

// StopAPIServer kills the API server: clients lose their watches, the node
// keeps running.
func (c *Cluster) StopAPIServer() { c.kill("kube-apiserver") }

func (c *Cluster) kill(name string) {
	for _, p := range c.procs {
		if p.name == name && !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
	}
}

// SetReady sets the pod's status the way a kubelet would: Running, with its
// IP, and Ready or not.
func (c *Cluster) SetReady(ctx context.Context, p *Pod, ready bool) error {
	pods := c.Client.CoreV1().Pods(p.Namespace)
	obj, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	podIPs := []corev1.PodIP{{IP: p.IP.String()}}
	if p.IP6.IsValid() {
		podIPs = append(podIPs, corev1.PodIP{IP: p.IP6.String()})
	}
	now := metav1.NewTime(time.Now())
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionTrue
		if !ok {
			s = corev1.ConditionFalse
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: now}
	}
	obj.Status = corev1.PodStatus{
		Phase: corev1.PodRunning, StartTime: &now,
		PodIP: p.IP.String(), PodIPs: podIPs,
		HostIP: p.HostIP.String(), HostIPs: []corev1.HostIP{{IP: p.HostIP.String()}},
		Conditions: []corev1.PodCondition{cond(corev1.PodScheduled, true), cond(corev1.PodInitialized, true),
			cond(corev1.ContainersReady, ready), cond(corev1.PodReady, ready)},
		ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: ready, Image: "svctrace.invalid/app",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
	}
	if _, err := pods.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("setting the status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// CreateService creates svc and returns it with its ClusterIP.
// A load-balancer status in svc is written after it is created, as a cloud
// controller would.
func (c *Cluster) CreateService(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	if err := c.EnsureNamespace(ctx, svc.Namespace); err != nil {
		return nil, err
	}
	created, err := c.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil || len(svc.Status.LoadBalancer.Ingress) == 0 {
		return created, err
	}
	created.Status.LoadBalancer = svc.Status.LoadBalancer
	return c.Client.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
}

// Ruleset returns what kube-proxy programmed in the node, as its mode's own
// tools print it: iptables-save then ip6tables-save, or nft list ruleset.
func (c *Cluster) Ruleset() (string, error) { return c.rulesetIn(c.Node) }

// rulesetIn is Ruleset for the node whose namespace is ns.
func (c *Cluster) rulesetIn(ns nf.NetNS) (string, error) {
	var cmds [][]string
	switch c.Mode {
	case IPTables:
		cmds = [][]string{{"iptables-save"}, {"ip6tables-save"}}
	case IPTablesLegacy:
		cmds = [][]string{{"iptables-legacy-save"}, {"ip6tables-legacy-save"}}
	case NFTables:
		cmds = [][]string{{"nft", "list", "ruleset"}}
	}
	var out strings.Builder
	for _, cmd := range cmds {
		s, err := topo.Run(ns, "", cmd...)
		if err != nil {
			return "", err
		}
		out.WriteString(s)
	}
	return out.String(), nil
}

// Exec runs a command inside the node's network namespace and returns its
// output.
func (c *Cluster) Exec(args ...string) (string, error) { return topo.Run(c.Node, "", args...) }

// WaitRules polls the ruleset until ok accepts it.
func (c *Cluster) WaitRules(ctx context.Context, what string, ok func(rules string) bool) error {
	if found, err := pollRules(ctx, c.Ruleset, ok); !found {
		return fmt.Errorf("kube-proxy (%s) did not program %s: %v", c.Mode, what, err)
	}
	return nil
}

// pollRules reads rules every 50 ms, for 30 s at most, until ok accepts
// them: false if it never did, with the last read's error.
func pollRules(ctx context.Context, read func() (string, error), ok func(rules string) bool) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		rules, err := read()
		if err == nil && ok(rules) {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitService waits until kube-proxy's rules for every port of svc send to
// exactly endpoints (ready endpoint addresses with the port's target port),
// or, with none, reject.
func (c *Cluster) WaitService(ctx context.Context, svc *corev1.Service, endpoints map[string][]netip.AddrPort) error {
	return c.WaitRules(ctx, "Service "+svc.Namespace+"/"+svc.Name, func(rules string) bool {
		for _, port := range svc.Spec.Ports {
			sp := kubeproxy.ServicePort{Namespace: svc.Namespace, Name: svc.Name, PortName: port.Name,
				Protocol: strings.ToLower(string(port.Protocol))}
			eps := endpoints[port.Name]
			if len(eps) == 0 && !strings.Contains(rules, c.noEndpoints(sp, svc.Spec.ClusterIP, port.Port)) {
				return false
			}
			for _, ep := range eps {
				if !strings.Contains(rules, c.dnat(ep)) {
					return false
				}
			}
		}
		return true
	})
}

// WaitLocalDrop waits until kube-proxy drops traffic for every port of svc
// as having no local endpoints (a traffic policy Local with all endpoints
// on other nodes).
func (c *Cluster) WaitLocalDrop(ctx context.Context, svc *corev1.Service) error {
	return c.WaitRules(ctx, "the no-local-endpoints drop of "+svc.Namespace+"/"+svc.Name, func(rules string) bool {
		for _, port := range svc.Spec.Ports {
			sp := kubeproxy.ServicePort{Namespace: svc.Namespace, Name: svc.Name, PortName: port.Name}
			want := fmt.Sprintf("%q", sp.String()+" has no local endpoints")
			if c.Mode == NFTables {
				want = fmt.Sprintf("comment %q : drop", sp.String())
			}
			if !strings.Contains(rules, want) {
				return false
			}
		}
		return true
	})
}

// WaitEndpoints waits until the EndpointSlices of svc list ready endpoints
// (addresses) — for what kube-proxy does not program, or no longer does.
func (c *Cluster) WaitEndpoints(ctx context.Context, svc *corev1.Service, ready int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		sls, err := c.Client.DiscoveryV1().EndpointSlices(svc.Namespace).List(ctx,
			metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=" + svc.Name})
		n := 0
		if err == nil {
			for _, sl := range sls.Items {
				for _, ep := range sl.Endpoints {
					if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
						n += len(ep.Addresses)
					}
				}
			}
			if n == ready {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("Service %s/%s: %d ready endpoint(s) in its EndpointSlices, want %d (%v)", svc.Namespace, svc.Name, n, ready, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *Cluster) dnat(ep netip.AddrPort) string {
	if c.Mode == NFTables {
		return "dnat to " + ep.String()
	}
	return "--to-destination " + ep.String()
}

func (c *Cluster) noEndpoints(sp kubeproxy.ServicePort, vip string, port int32) string {
	if c.Mode == NFTables {
		return fmt.Sprintf("%s . %s . %d comment %q : goto reject-chain", vip, sp.Protocol, port, sp.String())
	}
	return fmt.Sprintf("%q", sp.NoEndpointsComment())
}

// Get fetches http://addr/path from the client namespace.
func (c *Cluster) Get(ctx context.Context, addr netip.AddrPort, path string, timeout time.Duration) ([]byte, error) {
	return lab.HTTPGet(ctx, c.ClientNS, addr, path, timeout)
}

// Apply creates what a manifest holds, as kubectl apply -f does on a
// cluster that has none of it: namespaces, service accounts and RBAC.
func (c *Cluster) Apply(ctx context.Context, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	opts := metav1.CreateOptions{}
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		obj, _, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch o := obj.(type) {
		case *corev1.Namespace:
			_, err = c.Client.CoreV1().Namespaces().Create(ctx, o, opts)
		case *corev1.ServiceAccount:
			_, err = c.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
		case *rbacv1.ClusterRole:
			_, err = c.Client.RbacV1().ClusterRoles().Create(ctx, o, opts)
		case *rbacv1.ClusterRoleBinding:
			_, err = c.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
		case *rbacv1.Role:
			_, err = c.Client.RbacV1().Roles(o.Namespace).Create(ctx, o, opts)
		case *rbacv1.RoleBinding:
			_, err = c.Client.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, opts)
		default:
			return fmt.Errorf("%s: Apply does not know a %T", path, obj)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// PodRange is the Pod range of node name: this cluster's node's, or one
// added with AddNode.
func (c *Cluster) PodRange(name string) netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, ok := c.remote[name]; ok {
		return r.podNet
	}
	return c.PodNet
}

// HandMadeSlice creates an EndpointSlice for the Service svc as someone
// other than the EndpointSlice controller would (managed-by manager): one
// endpoint per address, on port with svc's first port's name, with the
// conditions given (nil: unset) and, if pod is set, a targetRef to it on
// this node.
func (c *Cluster) HandMadeSlice(ctx context.Context, svc *corev1.Service, manager string, port int32, addrs []netip.Addr, ready, serving *bool, pod string) error {
	name, proto := svc.Spec.Ports[0].Name, corev1.ProtocolTCP
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: svc.Name + "-" + manager, Namespace: svc.Namespace,
			Labels: map[string]string{discoveryv1.LabelServiceName: svc.Name, discoveryv1.LabelManagedBy: manager}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	for _, a := range addrs {
		ep := discoveryv1.Endpoint{Addresses: []string{a.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving}}
		if pod != "" {
			node := NodeName
			ep.TargetRef, ep.NodeName = &corev1.ObjectReference{Kind: "Pod", Namespace: svc.Namespace, Name: pod}, &node
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	_, err := c.Client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(ctx, sl, metav1.CreateOptions{})
	return err
}
