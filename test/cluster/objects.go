package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/internal/tracer"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is a pod: a network namespace on the node's bridge, maybe a server,
// and its Pod object.
type Pod struct {
	Namespace, Name string
	IP              netip.Addr
	NS              tracer.NetNS
	server          *lab.Server
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
	Ready  bool
}

// AddPod creates the pod's namespace, starts its server, creates the Pod
// object on the node and sets its status (Running; Ready as asked).
func (c *Cluster) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	c.mu.Lock()
	c.nextPod++
	n := c.nextPod
	c.mu.Unlock()
	ip := c.PodNet.Addr().As4()
	ip[3] = byte(10 + n)
	p := &Pod{Namespace: spec.Namespace, Name: spec.Name, IP: netip.AddrFrom4(ip)}
	var err error
	if p.NS, err = topo.CreateNetNS(c.nsName(fmt.Sprintf("pod%d", n))); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	if err := c.net().AttachPod(p.NS, n, p.IP); err != nil {
		return nil, err
	}
	if spec.Serve != "" {
		if p.server, err = lab.StartServer(p.NS, spec.Name, spec.Serve, spec.Listen); err != nil {
			return nil, err
		}
	}
	if err := c.EnsureNamespace(ctx, spec.Namespace); err != nil {
		return nil, err
	}
	no := false
	_, err = c.Client.CoreV1().Pods(spec.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: spec.Name, Namespace: spec.Namespace, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                     NodeName,
			AutomountServiceAccountToken: &no,
			Containers:                   []corev1.Container{{Name: "app", Image: "svctrace.invalid/app", Ports: spec.Ports}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", spec.Namespace, spec.Name, err)
	}
	return p, c.SetReady(ctx, p, spec.Ready)
}

// SetReady sets the pod's status the way a kubelet would: Running, with its
// IP, and Ready or not.
func (c *Cluster) SetReady(ctx context.Context, p *Pod, ready bool) error {
	pods := c.Client.CoreV1().Pods(p.Namespace)
	obj, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return err
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
		PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}},
		HostIP: c.NodeIP.String(), HostIPs: []corev1.HostIP{{IP: c.NodeIP.String()}},
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
func (c *Cluster) CreateService(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	if err := c.EnsureNamespace(ctx, svc.Namespace); err != nil {
		return nil, err
	}
	return c.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
}

// Ruleset returns what kube-proxy programmed in the node, as its mode's own
// tool prints it: iptables-save, or nft list ruleset.
func (c *Cluster) Ruleset() (string, error) {
	var cmd []string
	switch c.Mode {
	case IPTables:
		cmd = []string{"iptables-save"}
	case IPTablesLegacy:
		cmd = []string{"iptables-legacy-save"}
	case NFTables:
		cmd = []string{"nft", "list", "ruleset"}
	}
	return c.Exec(cmd...)
}

// Exec runs a command inside the node's network namespace and returns its
// output.
func (c *Cluster) Exec(args ...string) (string, error) { return topo.Run(c.Node, "", args...) }

// WaitRules polls the ruleset until ok accepts it.
func (c *Cluster) WaitRules(ctx context.Context, what string, ok func(rules string) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		rules, err := c.Ruleset()
		if err == nil && ok(rules) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-proxy (%s) did not program %s: %v", c.Mode, what, err)
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
