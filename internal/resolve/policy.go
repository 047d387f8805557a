package resolve

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/svctrace/svctrace/internal/netpol"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Policies are the network policies that may judge traffic to the
// Service's Pods, read narrowly: the NetworkPolicies of the namespaces
// read (the Service's, a client's), the cluster's admin policies, and those
// namespaces' labels, which namespaceSelectors match.
type Policies struct {
	Network  []networkingv1.NetworkPolicy       `json:",omitempty"`
	Admin    []netpol.AdminNetworkPolicy        `json:",omitempty"`
	Baseline *netpol.BaselineAdminNetworkPolicy `json:",omitempty"`
	// Namespaces are the labels of the namespaces read, by name.
	Namespaces map[string]map[string]string
	// Unread says what could not be read and why, a line each: what is
	// missing judges nothing, and a verdict said without it says so.
	Unread []string `json:",omitempty"`
}

// Set is what netpol evaluates.
func (p *Policies) Set() netpol.Policies {
	return netpol.Policies{Network: p.Network, Admin: p.Admin, Baseline: p.Baseline}
}

// gatherPolicies reads the admin policies and namespace ns's policies and
// labels into v.Policies.
func (v *View) gatherPolicies(ctx context.Context, src Source, ns string) {
	p := &Policies{Namespaces: map[string]map[string]string{}}
	v.Policies = p
	admin, baseline, err := src.AdminPolicies(ctx)
	if err != nil {
		p.Unread = append(p.Unread, oneLine(err))
	}
	p.Admin, p.Baseline = admin, baseline
	v.AddNamespace(ctx, src, ns)
}

// AddNamespace reads namespace ns's labels and NetworkPolicies into
// v.Policies, once: a client's namespace, which its egress policies and the
// endpoints' namespaceSelectors judge.
func (v *View) AddNamespace(ctx context.Context, src Source, ns string) {
	p := v.Policies
	if p == nil || ns == "" {
		return
	}
	if _, ok := p.Namespaces[ns]; ok {
		return
	}
	p.Namespaces[ns] = nil
	n, err := src.Namespace(ctx, ns)
	switch {
	case err == nil:
		p.Namespaces[ns] = n.Labels
		if p.Namespaces[ns] == nil {
			p.Namespaces[ns] = map[string]string{}
		}
	case !apierrors.IsNotFound(err):
		p.Unread = append(p.Unread, oneLine(err))
	}
	nps, err := src.NetworkPolicies(ctx, ns)
	if err != nil {
		p.Unread = append(p.Unread, oneLine(err))
		return
	}
	slices.SortFunc(nps, func(a, b networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Name, b.Name)
	})
	p.Network = append(p.Network, nps...)
}

// NamespaceLabels are the labels of namespace ns as read; ok is false when
// they were not (a namespace svctrace did not read, or could not).
func (p *Policies) NamespaceLabels(ns string) (map[string]string, bool) {
	if p == nil {
		return nil, false
	}
	l, ok := p.Namespaces[ns]
	return l, ok && l != nil
}

// SetClient makes pod the View's client (--from pod/NAME): its namespace's
// labels and NetworkPolicies are read too, for its egress and the
// endpoints' namespaceSelectors.
func (v *View) SetClient(ctx context.Context, src Source, pod *corev1.Pod) {
	v.Client = pod
	v.AddNamespace(ctx, src, pod.Namespace)
}

// FindPod finds one Pod by name.
func FindPod(ctx context.Context, src Source, ns, name string) (*corev1.Pod, error) {
	var found *corev1.Pod
	err := src.Pods(ctx, ns, labels.Everything(), func(p *corev1.Pod) {
		if p.Name == name {
			found = p.DeepCopy()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("looking for pod %s/%s: %w", ns, name, err)
	}
	if found == nil {
		return nil, PodNotFound(ns, name)
	}
	return found, nil
}

// Peer is who a client address is as network policies see it: its Pod
// (with its namespace's labels), a Node, or neither (an address outside the
// cluster); with a Pod, its namespace's NetworkPolicies, which judge its
// egress.
type Peer struct {
	netpol.Endpoint
	Policies []networkingv1.NetworkPolicy `json:",omitempty"`
}

// Peers says who client addresses are, from src; false when src could not
// tell (an API error). Each answer is remembered (up to maxNamed
// addresses), a failure too, and learned, if set, hears each answer once,
// for recordings. Asked only for failed connections whose policies matter,
// so each lookup may wait on the API (2 s at most), once per address.
func Peers(src Source, learned func(netip.Addr, Peer)) func(netip.Addr) (Peer, bool) {
	known := map[netip.Addr]Peer{}
	failed := map[netip.Addr]bool{}
	namespaces := map[string]Peer{} // a namespace's labels and policies
	var mu sync.Mutex
	return func(a netip.Addr) (Peer, bool) {
		mu.Lock()
		defer mu.Unlock()
		if e, ok := known[a]; ok {
			return e, true
		}
		if failed[a] {
			return Peer{}, false
		}
		if len(known)+len(failed) >= maxNamed {
			clear(known)
			clear(failed)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e, ok := peer(ctx, src, a, namespaces)
		if !ok {
			failed[a] = true
			return e, false
		}
		known[a] = e
		if learned != nil {
			learned(a, e)
		}
		return e, true
	}
}

func peer(ctx context.Context, src Source, a netip.Addr, namespaces map[string]Peer) (Peer, bool) {
	e := Peer{Endpoint: netpol.Endpoint{IP: a}}
	pods, err := src.PodsByIP(ctx, a)
	if err != nil {
		return e, false
	}
	for i := range pods {
		p := &pods[i]
		if p.Spec.HostNetwork {
			continue
		}
		ns, ok := namespaces[p.Namespace]
		if !ok {
			n, err := src.Namespace(ctx, p.Namespace)
			if err != nil {
				return e, false
			}
			nps, err := src.NetworkPolicies(ctx, p.Namespace)
			if err != nil {
				return e, false
			}
			ns = Peer{Endpoint: netpol.Endpoint{Namespace: n.Labels}, Policies: nps}
			namespaces[p.Namespace] = ns
		}
		e.Pod, e.Namespace, e.Policies = slimPod(p), ns.Namespace, ns.Policies
		return e, true
	}
	n, err := src.NodeByIP(ctx, a)
	if err != nil {
		return e, false
	}
	if n != nil {
		e.Node, e.NodeLabels = n.Name, n.Labels
	}
	return e, true
}

// slimPod keeps what policies judge a client Pod by: its name, labels,
// node and whether it is on the host's network (its destination's ports,
// not its own, resolve named ports).
func slimPod(p *corev1.Pod) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{PodIP: p.Status.PodIP}}
}
