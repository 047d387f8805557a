package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
)

// View is everything svctrace knows about one Service: the objects that
// decide where its packets go. It is plain data, gathered once per change.
type View struct {
	Source  string // where the objects came from (Source.Describe)
	Service *corev1.Service
	Slices  []discoveryv1.EndpointSlice
	// Pods are the Pods the Service's selector matches in its namespace.
	Pods []corev1.Pod
	// Elsewhere are Pods the selector matches in other namespaces.
	Elsewhere []corev1.Pod
	// NearMisses, when the selector matches no Pod, are Pods in the
	// Service's namespace one label away from matching.
	NearMisses []NearMiss
	// Holders are Pods the selector does not match that hold an
	// endpoint's address (a hand-made or stale slice's), and Orphans the
	// endpoint addresses no Pod holds: both looked up by IP.
	Holders []corev1.Pod `json:",omitempty"`
	Orphans []netip.Addr `json:",omitempty"`
	// Nodes are the endpoints' Nodes and this node, by name.
	Nodes map[string]*corev1.Node
	// LocalNode is this node's name, "" when no Node object matches it.
	LocalNode string
	// Policies are the network policies around the Service's Pods; nil
	// in recordings made before svctrace read them.
	Policies *Policies `json:",omitempty"`
	// Client is the client Pod named by --from pod/NAME, whose traffic
	// the policies are judged for; nil without one.
	Client *corev1.Pod `json:",omitempty"`
}

// NearMiss is a Pod whose labels differ from the selector in one key.
type NearMiss struct {
	Pod  types.NamespacedName
	Have string // the Pod's label, e.g. "app=web-v2" or "" when it has none that fits
	Want string // what the selector asks for, e.g. "app=web"
}

func (m NearMiss) String() string {
	if m.Have == "" {
		return fmt.Sprintf("pod %s has no label %s", m.Pod, m.Want)
	}
	return fmt.Sprintf("pod %s has %s, the selector wants %s", m.Pod, m.Have, m.Want)
}

// LocalNode says how to find this node's Node object: by name, else by one
// of its addresses.
type LocalNode struct {
	Name  string
	Addrs []netip.Addr
}

// NodeName is this node's name: flag (--node), else $NODE_NAME, else the
// host name in hostRoot's /etc/hostname (the node's own, inside kubectl
// debug node/…), else this host's.
func NodeName(flag, hostRoot string) string {
	if flag != "" {
		return flag
	}
	if n := os.Getenv("NODE_NAME"); n != "" {
		return n
	}
	if b, err := os.ReadFile(hostRoot + "/etc/hostname"); err == nil {
		return strings.TrimSpace(string(b))
	}
	h, _ := os.Hostname()
	return h
}

// NotFoundError is a Service that does not exist, with the names the user
// may have meant.
type NotFoundError struct {
	Namespace, Name string
	Similar         []string // Services in the namespace with a similar name
	Elsewhere       []string // namespaces that have a Service of this name
}

func (e *NotFoundError) Error() string {
	msg := fmt.Sprintf("service %q not found in namespace %q", e.Name, e.Namespace)
	var hints []string
	if len(e.Similar) > 0 {
		hints = append(hints, "did you mean "+quoteList(e.Similar)+"?")
	}
	if len(e.Elsewhere) > 0 {
		hints = append(hints, fmt.Sprintf("a Service %q exists in namespace %s: add -n %s", e.Name, quoteList(e.Elsewhere), e.Elsewhere[0]))
	}
	if len(hints) == 0 {
		hints = append(hints, fmt.Sprintf("list them with: kubectl get services -n %s", e.Namespace))
	}
	return msg + "; " + strings.Join(hints, "; ")
}

func quoteList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

// Limits on what one View holds, so that a Service with very many Pods does
// not make svctrace hold the cluster.
const (
	maxNearMisses = 10
	maxLookups    = 64 // Nodes fetched one by one
)

// EndpointNodes are the nodes the Service's endpoints run on, each once,
// in the order the EndpointSlices name them.
func (v *View) EndpointNodes() []string {
	nodes := []string{}
	for _, sl := range v.Slices {
		for _, ep := range sl.Endpoints {
			if ep.NodeName != nil && *ep.NodeName != "" && !slices.Contains(nodes, *ep.NodeName) {
				nodes = append(nodes, *ep.NodeName)
			}
		}
	}
	return nodes
}

// Gather reads the Service ns/name and the objects around it.
func Gather(ctx context.Context, src Source, ns, name string, local LocalNode) (*View, error) {
	svc, err := src.Service(ctx, ns, name)
	if apierrors.IsNotFound(err) {
		return nil, notFound(ctx, src, ns, name)
	}
	if err != nil {
		return nil, err
	}
	sls, err := src.EndpointSlices(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return GatherFrom(ctx, src, svc, sls, local)
}

// GatherFrom reads the objects around a Service already read with its
// EndpointSlices (svctrace check -A lists them all at once).
func GatherFrom(ctx context.Context, src Source, svc *corev1.Service, sls []discoveryv1.EndpointSlice, local LocalNode) (*View, error) {
	ns := svc.Namespace
	v := &View{Source: src.Describe(), Service: svc, Slices: sls, Nodes: map[string]*corev1.Node{}}
	sort.Slice(v.Slices, func(i, j int) bool { return v.Slices[i].Name < v.Slices[j].Name })
	if len(svc.Spec.Selector) > 0 {
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		err := src.Pods(ctx, ns, sel, func(p *corev1.Pod) { v.Pods = append(v.Pods, *p.DeepCopy()) })
		if err != nil {
			return nil, err
		}
		if len(v.Pods) == 0 {
			// Other namespaces only help explain an empty selection; access
			// limited to one namespace is fine for everything else.
			err := src.Pods(ctx, "", sel, func(p *corev1.Pod) {
				if p.Namespace != ns && len(v.Elsewhere) < maxNearMisses {
					v.Elsewhere = append(v.Elsewhere, *p.DeepCopy())
				}
			})
			if err != nil && !denied(err) {
				return nil, err
			}
		}
		if len(v.Pods) == 0 {
			err := src.Pods(ctx, ns, labels.Everything(), func(p *corev1.Pod) {
				if m, ok := nearMiss(svc.Spec.Selector, p); ok && len(v.NearMisses) < maxNearMisses {
					v.NearMisses = append(v.NearMisses, m)
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	if err := v.lookUpHolders(ctx, src); err != nil {
		return nil, err
	}
	v.gatherPolicies(ctx, src, ns)
	nodes := v.EndpointNodes()
	if local.Name != "" {
		nodes = append(nodes, local.Name)
	}
	for i, n := range nodes {
		if _, ok := v.Nodes[n]; ok || i >= maxLookups {
			continue
		}
		node, err := src.Node(ctx, n)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		v.Nodes[n] = node
	}
	if _, ok := v.Nodes[local.Name]; ok {
		v.LocalNode = local.Name
	} else {
		for _, a := range local.Addrs {
			node, err := src.NodeByIP(ctx, a)
			if err != nil {
				return nil, err
			}
			if node != nil {
				v.Nodes[node.Name], v.LocalNode = node, node.Name
				break
			}
		}
	}
	return v, nil
}

// lookUpHolders finds who holds the endpoints' addresses that no selected
// Pod holds.
func (v *View) lookUpHolders(ctx context.Context, src Source) error {
	n := 0
	for _, a := range v.EndpointAddrs() {
		if v.Holder(a) != nil {
			continue
		}
		if n++; n > maxLookups {
			return nil
		}
		pods, err := src.PodsByIP(ctx, a)
		if denied(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(pods) == 0 {
			v.Orphans = append(v.Orphans, a)
		}
		v.Holders = append(v.Holders, pods...)
	}
	return nil
}

// EndpointAddrs are the addresses in the Service's EndpointSlices.
func (v *View) EndpointAddrs() []netip.Addr {
	var out []netip.Addr
	for _, sl := range v.Slices {
		for _, ep := range sl.Endpoints {
			for _, s := range ep.Addresses {
				if a := parseAddr(s); a.IsValid() && !slices.Contains(out, a) {
					out = append(out, a)
				}
			}
		}
	}
	return out
}

// Holder is the Pod, selected or looked up, whose addresses include a;
// nil if none is known.
func (v *View) Holder(a netip.Addr) *corev1.Pod {
	for _, pods := range [][]corev1.Pod{v.Pods, v.Holders} {
		for i := range pods {
			for _, ip := range pods[i].Status.PodIPs {
				if parseAddr(ip.IP) == a {
					return &pods[i]
				}
			}
			if parseAddr(pods[i].Status.PodIP) == a {
				return &pods[i]
			}
		}
	}
	return nil
}

func denied(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Denied
}

// nearMiss reports whether p's labels are one key off sel: a different
// value (for a selector of one key, only a similar one — else every Pod
// with that key would count), or the wanted value under a different key (a
// typo in the key), or, for a selector of several keys, one key missing.
func nearMiss(sel map[string]string, p *corev1.Pod) (NearMiss, bool) {
	var off []string
	for k, want := range sel {
		if p.Labels[k] != want {
			off = append(off, k)
		}
	}
	if len(off) != 1 {
		return NearMiss{}, false
	}
	k := off[0]
	m := NearMiss{Pod: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}, Want: k + "=" + sel[k]}
	if have, ok := p.Labels[k]; ok {
		m.Have = k + "=" + have
		return m, len(sel) > 1 || similar(sel[k], have)
	}
	for lk, lv := range p.Labels {
		if lv == sel[k] {
			m.Have = lk + "=" + lv
			return m, true
		}
	}
	return m, len(sel) > 1
}

// notFound explains a missing Service with the names the user may have
// meant.
func notFound(ctx context.Context, src Source, ns, name string) error {
	e := &NotFoundError{Namespace: ns, Name: name}
	if names, err := src.ServiceNames(ctx, ns, ""); err == nil {
		for _, n := range names {
			if similar(name, n.Name) {
				e.Similar = append(e.Similar, n.Name)
			}
		}
	}
	if names, err := src.ServiceNames(ctx, "", name); err == nil {
		for _, n := range names {
			if n.Namespace != ns {
				e.Elsewhere = append(e.Elsewhere, n.Namespace)
			}
		}
	}
	sort.Strings(e.Similar)
	sort.Strings(e.Elsewhere)
	if len(e.Similar) > 5 {
		e.Similar = e.Similar[:5]
	}
	return e
}

// similar: one name contains the other, or they are at most two edits
// apart.
func similar(a, b string) bool {
	if a == b {
		return false
	}
	if len(a) >= 3 && len(b) >= 3 && (strings.Contains(a, b) || strings.Contains(b, a)) {
		return true
	}
	return editDistance(a, b) <= 2
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// FromPod reads --from pod/NAME (in namespace ns) or pod/NAMESPACE/NAME;
// ok is false for anything else.
func FromPod(from, ns string) (podNS, name string, ok bool) {
	name, ok = strings.CutPrefix(from, "pod/")
	if n, rest, found := strings.Cut(name, "/"); found {
		return n, rest, ok
	}
	return ns, name, ok
}

// PodNotFound says so, with the next step.
func PodNotFound(ns, name string) error {
	return fmt.Errorf("pod %s/%s not found: check the name and -n (kubectl get pods -n %s)", ns, name, ns)
}
