package resolve

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"github.com/svctrace/svctrace/internal/netpol"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Listed serves what many Services' views read (svctrace check -A gathers
// one per Service) from reads made once: every Pod, listed on the first
// question about Pods (one paged list, where each Service's selector and
// each selector-less endpoint's address cost a request of their own), and
// each Node, Namespace, namespace's NetworkPolicies, the admin policies and
// a node address's Node as first read. For one run: nothing is read again.
// Where listing every Pod is denied, Pods are asked of Source as before.
type Listed struct {
	Source

	mu         sync.Mutex
	pods       *podIndex // nil: not listed yet
	podsDenied bool
	nodes      map[string]read[*corev1.Node]
	nodesByIP  map[netip.Addr]read[*corev1.Node]
	namespaces map[string]read[*corev1.Namespace]
	policies   map[string]read[[]networkingv1.NetworkPolicy]
	admin      *read[adminPolicies]
}

// NewListed wraps src.
func NewListed(src Source) *Listed {
	return &Listed{Source: src, nodes: map[string]read[*corev1.Node]{}, nodesByIP: map[netip.Addr]read[*corev1.Node]{},
		namespaces: map[string]read[*corev1.Namespace]{}, policies: map[string]read[[]networkingv1.NetworkPolicy]{}}
}

// read is one answer kept: a value or the error reading it.
type read[V any] struct {
	v   V
	err error
}

// once is m's answer for k, read with fn the first time.
func once[K comparable, V any](m map[K]read[V], k K, fn func() (V, error)) (V, error) {
	r, ok := m[k]
	if !ok {
		r.v, r.err = fn()
		m[k] = r
	}
	return r.v, r.err
}

type adminPolicies struct {
	admin    []netpol.AdminNetworkPolicy
	baseline *netpol.BaselineAdminNetworkPolicy
}

// podIndex is every Pod, by namespace and by address.
type podIndex struct {
	byNS map[string][]*corev1.Pod
	byIP map[netip.Addr][]*corev1.Pod
}

// listPods lists every Pod once (l.mu held); false: denied, ask Source.
func (l *Listed) listPods(ctx context.Context) (bool, error) {
	if l.pods != nil || l.podsDenied {
		return l.pods != nil, nil
	}
	x := &podIndex{byNS: map[string][]*corev1.Pod{}, byIP: map[netip.Addr][]*corev1.Pod{}}
	err := l.Source.Pods(ctx, "", labels.Everything(), func(p *corev1.Pod) {
		p = p.DeepCopy()
		dropUnread(p)
		x.byNS[p.Namespace] = append(x.byNS[p.Namespace], p)
		for _, ip := range podAddrs(p) {
			x.byIP[ip] = append(x.byIP[ip], p)
		}
	})
	switch {
	case denied(err):
		l.podsDenied = true
		return false, nil
	case err != nil:
		return false, err
	}
	l.pods = x
	return true, nil
}

// podAddrs are a Pod's addresses, each once.
func podAddrs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if a := parseAddr(s); a.IsValid() && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	add(p.Status.PodIP)
	for _, a := range p.Status.PodIPs {
		add(a.IP)
	}
	return out
}

func (l *Listed) Pods(ctx context.Context, ns string, sel labels.Selector, fn func(*corev1.Pod)) error {
	l.mu.Lock()
	ok, err := l.listPods(ctx)
	l.mu.Unlock()
	if err != nil || !ok {
		if err == nil {
			err = l.Source.Pods(ctx, ns, sel, fn)
		}
		return err
	}
	visit := func(ps []*corev1.Pod) {
		for _, p := range ps {
			if sel.Matches(labels.Set(p.Labels)) {
				fn(p)
			}
		}
	}
	if ns != "" {
		visit(l.pods.byNS[ns])
		return nil
	}
	// In the API's order: by namespace, then name.
	nss := make([]string, 0, len(l.pods.byNS))
	for ns := range l.pods.byNS {
		nss = append(nss, ns)
	}
	slices.Sort(nss)
	for _, ns := range nss {
		visit(l.pods.byNS[ns])
	}
	return nil
}

func (l *Listed) PodsByIP(ctx context.Context, ip netip.Addr) ([]corev1.Pod, error) {
	l.mu.Lock()
	ok, err := l.listPods(ctx)
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if !ok {
		return l.Source.PodsByIP(ctx, ip)
	}
	var out []corev1.Pod
	for _, p := range l.pods.byIP[ip] {
		out = append(out, *p.DeepCopy())
	}
	return out, nil
}

// Each view gets a copy of its own, as from the API.

func (l *Listed) Node(ctx context.Context, name string) (*corev1.Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := once(l.nodes, name, func() (*corev1.Node, error) { return l.Source.Node(ctx, name) })
	return n.DeepCopy(), err
}

func (l *Listed) NodeByIP(ctx context.Context, ip netip.Addr) (*corev1.Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := once(l.nodesByIP, ip, func() (*corev1.Node, error) { return l.Source.NodeByIP(ctx, ip) })
	return n.DeepCopy(), err
}

func (l *Listed) Namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := once(l.namespaces, name, func() (*corev1.Namespace, error) { return l.Source.Namespace(ctx, name) })
	return n.DeepCopy(), err
}

func (l *Listed) NetworkPolicies(ctx context.Context, ns string) ([]networkingv1.NetworkPolicy, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps, err := once(l.policies, ns, func() ([]networkingv1.NetworkPolicy, error) { return l.Source.NetworkPolicies(ctx, ns) })
	var out []networkingv1.NetworkPolicy
	for i := range ps {
		out = append(out, *ps[i].DeepCopy())
	}
	return out, err
}

func (l *Listed) AdminPolicies(ctx context.Context) ([]netpol.AdminNetworkPolicy, *netpol.BaselineAdminNetworkPolicy, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.admin == nil {
		var r read[adminPolicies]
		r.v.admin, r.v.baseline, r.err = l.Source.AdminPolicies(ctx)
		l.admin = &r
	}
	return l.admin.v.admin, l.admin.v.baseline, l.admin.err
}
