package resolve

import (
	"context"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Catalog is every Service of a scope (a namespace, or all of them) with
// its EndpointSlices, as models: what svctrace -A traces. It holds only
// what kube-proxy reads (no Pods): a Service's Pods, Nodes and policies
// are gathered when one of its connections is explained.
type Catalog struct {
	// Namespace is the scope; "": all namespaces.
	Namespace string
	// Services by namespace/name.
	Services []*Service
	// from is what each Service's model was built from, by key: Next
	// builds again only the models whose objects changed.
	from map[string]builtFrom
}

type builtFrom struct {
	svc    *corev1.Service
	slices []*discoveryv1.EndpointSlice // by name
	model  *Service
}

// NewCatalog builds the models of svcs from their EndpointSlices
// (kubernetes.io/service-name); ExternalName Services are kept (check
// -A judges them) though they have no address to trace.
func NewCatalog(ns string, svcs []*corev1.Service, sls []*discoveryv1.EndpointSlice) *Catalog {
	return build(ns, svcs, sls, nil)
}

// Next is the catalog of svcs and sls in c's scope. A Service whose
// Service and EndpointSlice objects are the very ones c's model was built
// from keeps that model (an informer's store keeps an object until it
// changes): at 10,000 Services a change to one builds one model, not all,
// and its model stays the same pointer.
func (c *Catalog) Next(svcs []*corev1.Service, sls []*discoveryv1.EndpointSlice) *Catalog {
	return build(c.Namespace, svcs, sls, c.from)
}

func build(ns string, svcs []*corev1.Service, sls []*discoveryv1.EndpointSlice, prev map[string]builtFrom) *Catalog {
	bySvc := slicesByService(sls)
	c := &Catalog{Namespace: ns, Services: make([]*Service, 0, len(svcs)), from: make(map[string]builtFrom, len(svcs))}
	for _, s := range svcs {
		k := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		own := bySvc[k]
		key := k.String()
		b, ok := prev[key]
		if !ok || b.svc != s || !slices.Equal(b.slices, own) {
			v := &View{Service: s, Slices: make([]discoveryv1.EndpointSlice, len(own))}
			for i, sl := range own {
				v.Slices[i] = *sl
			}
			b = builtFrom{svc: s, slices: own, model: NewService(v)}
		}
		c.from[key] = b
		c.Services = append(c.Services, b.model)
	}
	sort.Slice(c.Services, func(i, j int) bool { return c.Services[i].Key() < c.Services[j].Key() })
	return c
}

// SlicesByService groups EndpointSlices by their Service
// (kubernetes.io/service-name), each Service's by name.
func SlicesByService(sls []*discoveryv1.EndpointSlice) map[types.NamespacedName][]discoveryv1.EndpointSlice {
	by := map[types.NamespacedName][]discoveryv1.EndpointSlice{}
	for k, own := range slicesByService(sls) {
		for _, sl := range own {
			by[k] = append(by[k], *sl)
		}
	}
	return by
}

// slicesByService is SlicesByService without copies.
func slicesByService(sls []*discoveryv1.EndpointSlice) map[types.NamespacedName][]*discoveryv1.EndpointSlice {
	by := map[types.NamespacedName][]*discoveryv1.EndpointSlice{}
	for _, sl := range sls {
		k := types.NamespacedName{Namespace: sl.Namespace, Name: sl.Labels[discoveryv1.LabelServiceName]}
		by[k] = append(by[k], sl)
	}
	for _, own := range by {
		slices.SortFunc(own, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	}
	return by
}

// Key is the Service's "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Targets are every Service's targets (Service.Targets), each once.
func (c *Catalog) Targets(nodeAddrs []netip.Addr) []nf.Target {
	seen := map[nf.Target]bool{}
	var out []nf.Target
	for _, s := range c.Services {
		for _, t := range s.Targets(nodeAddrs) {
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
	}
	return out
}

// Index finds the Service port behind a connection's address.
type Index struct {
	// Addrs are the Service addresses (ClusterIP, external, load-balancer
	// and NodePort on this node), each the port it reaches.
	Addrs map[nf.Target]*Port
	// Endpoints are the endpoints' addresses, each with the Service ports
	// that have it (by namespace/name): a connection that arrives already
	// translated (from another node) is put down to them.
	Endpoints map[nf.Target][]*Port
}

// Index is c's addresses, with NodePorts on nodeAddrs.
func (c *Catalog) Index(nodeAddrs []netip.Addr) Index {
	x := Index{Addrs: map[nf.Target]*Port{}, Endpoints: map[nf.Target][]*Port{}}
	for _, s := range c.Services {
		for _, a := range s.Addresses(nodeAddrs) {
			t := nf.Target{Addr: a.Addr, Proto: a.Port.Protocol}
			if x.Addrs[t] == nil {
				x.Addrs[t] = a.Port
			}
		}
		for i := range s.Ports {
			p := &s.Ports[i]
			for _, e := range p.Endpoints {
				t := nf.Target{Addr: e.Addr, Proto: p.Protocol}
				if !slices.Contains(x.Endpoints[t], p) {
					x.Endpoints[t] = append(x.Endpoints[t], p)
				}
			}
		}
	}
	return x
}

// Ports are the Service ports a connection to dst belongs to: the one of
// its Service address, else those that have it as an endpoint (several
// Services may select the same Pods); none if neither.
func (x Index) Ports(proto nf.Proto, dst netip.AddrPort) []*Port {
	t := nf.Target{Addr: dst, Proto: proto}
	if p := x.Addrs[t]; p != nil {
		return []*Port{p}
	}
	return x.Endpoints[t]
}

// IsService reports whether a is a Service address (not an endpoint).
func (x Index) IsService(proto nf.Proto, a netip.AddrPort) bool {
	return x.Addrs[nf.Target{Addr: a, Proto: proto}] != nil
}

// ReadCatalog lists the Services of ns ("": all) and their EndpointSlices
// from src, a page at a time.
func ReadCatalog(ctx context.Context, src Source, ns string) (*Catalog, error) {
	svcs, sls, err := src.ServicesAndSlices(ctx, ns)
	if err != nil {
		return nil, err
	}
	return NewCatalog(ns, svcs, sls), nil
}

// trim drops what a catalog never reads from an object it keeps (the
// fields' managers, annotations such as kubectl's last applied
// configuration): informers hold every Service and EndpointSlice of the
// cluster, so each byte counts tens of thousands of times.
func trim(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		dropUnread(m)
	}
	return obj, nil
}

// dropUnread is trim for an object svctrace holds as such.
func dropUnread(m metav1.Object) {
	m.SetManagedFields(nil)
	m.SetAnnotations(nil)
}

// ServicesAndSlices lists the Services and EndpointSlices of ns ("": all).
func (s FileSource) ServicesAndSlices(_ context.Context, ns string) ([]*corev1.Service, []*discoveryv1.EndpointSlice, error) {
	var svcs []*corev1.Service
	var sls []*discoveryv1.EndpointSlice
	for i := range s.Services {
		if v := &s.Services[i]; ns == "" || v.Namespace == ns {
			svcs = append(svcs, v.DeepCopy())
		}
	}
	for i := range s.Slices {
		if v := &s.Slices[i]; ns == "" || v.Namespace == ns {
			sls = append(sls, v.DeepCopy())
		}
	}
	return svcs, sls, nil
}

// ServicesAndSlices lists the Services and EndpointSlices of ns ("": all),
// a page at a time.
func (a *API) ServicesAndSlices(ctx context.Context, ns string) ([]*corev1.Service, []*discoveryv1.EndpointSlice, error) {
	var svcs []*corev1.Service
	var sls []*discoveryv1.EndpointSlice
	err := each(ctx, a, "services", ns, metav1.ListOptions{}, a.listServices(ns), func(s *corev1.Service) error {
		dropUnread(s)
		svcs = append(svcs, s)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	listSlices := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return a.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, o)
	}
	err = each(ctx, a, "endpointslices", ns, metav1.ListOptions{}, listSlices, func(sl *discoveryv1.EndpointSlice) error {
		dropUnread(sl)
		sls = append(sls, sl)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return svcs, sls, nil
}

// Kinds counts the catalog's Services by type: "12 ClusterIP, 2 NodePort".
func (c *Catalog) Kinds() string {
	n := map[corev1.ServiceType]int{}
	for _, s := range c.Services {
		n[s.Type]++
	}
	var parts []string
	for _, t := range []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeExternalName} {
		if n[t] > 0 {
			parts = append(parts, strconv.Itoa(n[t])+" "+string(t))
		}
	}
	return strings.Join(parts, ", ")
}
