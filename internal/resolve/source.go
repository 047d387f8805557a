package resolve

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/svctrace/svctrace/internal/netpol"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Source is where Kubernetes objects come from: the API server (API) or
// objects read from files (Objects). Every method asks for a narrow slice of
// the cluster, so what svctrace holds does not grow with the cluster.
type Source interface {
	// Describe says where the objects come from, e.g. "kubeconfig
	// /root/.kube/config (context kind-dev)".
	Describe() string
	// Service returns one Service; a missing one is a NotFound error.
	Service(ctx context.Context, ns, name string) (*corev1.Service, error)
	// ServiceNames lists Services by namespace ("": all) and name ("": all).
	ServiceNames(ctx context.Context, ns, name string) ([]types.NamespacedName, error)
	// ServicesAndSlices lists every Service and EndpointSlice of ns ("":
	// all): svctrace -A's catalog.
	ServicesAndSlices(ctx context.Context, ns string) ([]*corev1.Service, []*discoveryv1.EndpointSlice, error)
	// EndpointSlices returns the EndpointSlices of a Service.
	EndpointSlices(ctx context.Context, ns, service string) ([]discoveryv1.EndpointSlice, error)
	// Pods calls fn for each Pod in ns ("": all) that sel matches, a page at
	// a time: fn must copy what it keeps.
	Pods(ctx context.Context, ns string, sel labels.Selector, fn func(*corev1.Pod)) error
	// PodsByIP returns the Pods that have ip.
	PodsByIP(ctx context.Context, ip netip.Addr) ([]corev1.Pod, error)
	// Node returns one Node; a missing one is a NotFound error.
	Node(ctx context.Context, name string) (*corev1.Node, error)
	// NodeByIP returns the Node that has ip among its addresses, or nil.
	NodeByIP(ctx context.Context, ip netip.Addr) (*corev1.Node, error)
	// NetworkPolicies returns the NetworkPolicies of namespace ns.
	NetworkPolicies(ctx context.Context, ns string) ([]networkingv1.NetworkPolicy, error)
	// Namespace returns one Namespace; a missing one is a NotFound error.
	Namespace(ctx context.Context, name string) (*corev1.Namespace, error)
	// AdminPolicies returns the cluster's AdminNetworkPolicies and its
	// BaselineAdminNetworkPolicy: none where the API does not serve them.
	AdminPolicies(ctx context.Context) ([]netpol.AdminNetworkPolicy, *netpol.BaselineAdminNetworkPolicy, error)
}

var (
	servicesResource   = schema.GroupResource{Resource: "services"}
	nodesResource      = schema.GroupResource{Resource: "nodes"}
	namespacesResource = schema.GroupResource{Resource: "namespaces"}
)

// FileSource serves Objects read with ReadObjects.
type FileSource struct {
	*Objects
	Path string
}

func (s FileSource) Describe() string { return "objects from " + s.Path }

func (s FileSource) Service(_ context.Context, ns, name string) (*corev1.Service, error) {
	for i := range s.Services {
		if v := &s.Services[i]; v.Namespace == ns && v.Name == name {
			return v.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(servicesResource, name)
}

func (s FileSource) ServiceNames(_ context.Context, ns, name string) ([]types.NamespacedName, error) {
	var out []types.NamespacedName
	for _, v := range s.Services {
		if (ns == "" || v.Namespace == ns) && (name == "" || v.Name == name) {
			out = append(out, types.NamespacedName{Namespace: v.Namespace, Name: v.Name})
		}
	}
	return out, nil
}

func (s FileSource) EndpointSlices(_ context.Context, ns, service string) ([]discoveryv1.EndpointSlice, error) {
	var out []discoveryv1.EndpointSlice
	for _, v := range s.Slices {
		if v.Namespace == ns && v.Labels[discoveryv1.LabelServiceName] == service {
			out = append(out, *v.DeepCopy())
		}
	}
	return out, nil
}

func (s FileSource) Pods(_ context.Context, ns string, sel labels.Selector, fn func(*corev1.Pod)) error {
	for i := range s.Objects.Pods {
		if p := &s.Objects.Pods[i]; (ns == "" || p.Namespace == ns) && sel.Matches(labels.Set(p.Labels)) {
			fn(p)
		}
	}
	return nil
}

func (s FileSource) PodsByIP(_ context.Context, ip netip.Addr) ([]corev1.Pod, error) {
	var out []corev1.Pod
	for _, p := range s.Objects.Pods {
		if podHasIP(&p, ip) {
			out = append(out, *p.DeepCopy())
		}
	}
	return out, nil
}

func (s FileSource) Node(_ context.Context, name string) (*corev1.Node, error) {
	for i := range s.Nodes {
		if n := &s.Nodes[i]; n.Name == name {
			return n.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(nodesResource, name)
}

func (s FileSource) NodeByIP(_ context.Context, ip netip.Addr) (*corev1.Node, error) {
	for i := range s.Nodes {
		if n := &s.Nodes[i]; slices.Contains(NodeAddrs(n), ip) {
			return n.DeepCopy(), nil
		}
	}
	return nil, nil
}

func (s FileSource) NetworkPolicies(_ context.Context, ns string) ([]networkingv1.NetworkPolicy, error) {
	var out []networkingv1.NetworkPolicy
	for _, p := range s.Objects.NetworkPolicies {
		if p.Namespace == ns {
			out = append(out, *p.DeepCopy())
		}
	}
	return out, nil
}

func (s FileSource) Namespace(_ context.Context, name string) (*corev1.Namespace, error) {
	for i := range s.Namespaces {
		if n := &s.Namespaces[i]; n.Name == name {
			return n.DeepCopy(), nil
		}
	}
	return nil, apierrors.NewNotFound(namespacesResource, name)
}

func (s FileSource) AdminPolicies(context.Context) ([]netpol.AdminNetworkPolicy, *netpol.BaselineAdminNetworkPolicy, error) {
	var b *netpol.BaselineAdminNetworkPolicy
	if len(s.Baselines) > 0 {
		b = &s.Baselines[0]
	}
	return s.AdminNetworkPolicies, b, nil
}

func podHasIP(p *corev1.Pod, ip netip.Addr) bool {
	if parseAddr(p.Status.PodIP) == ip {
		return true
	}
	for _, a := range p.Status.PodIPs {
		if parseAddr(a.IP) == ip {
			return true
		}
	}
	return false
}

// NodeAddrs are a Node's IP addresses (InternalIP and ExternalIP).
func NodeAddrs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip := parseAddr(a.Address); ip.IsValid() {
			out = append(out, ip)
		}
	}
	return out
}

// NodePortAddrsOf are where this node's NodePorts are reached: its Node
// object's addresses (n nil: none known) and every other address the node
// has (own), kube-proxy's default in iptables mode.
func NodePortAddrsOf(n *corev1.Node, own []netip.Addr) []netip.Addr {
	var addrs []netip.Addr
	if n != nil {
		addrs = NodeAddrs(n)
	}
	for _, a := range own {
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs
}

// parseAddr parses an IP, or returns the zero Addr.
func parseAddr(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap()
}

// Lookup names addresses a Service's objects do not know (client Pods,
// Nodes) with one narrow query each, bounded in time.
func Lookup(src Source) func(netip.Addr) string {
	return func(a netip.Addr) string {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if pods, err := src.PodsByIP(ctx, a); err == nil {
			for _, p := range pods {
				if !p.Spec.HostNetwork {
					return fmt.Sprintf("pod %s/%s on %s", p.Namespace, p.Name, p.Spec.NodeName)
				}
			}
		}
		if n, err := src.NodeByIP(ctx, a); err == nil && n != nil {
			return "node " + n.Name
		}
		return ""
	}
}
