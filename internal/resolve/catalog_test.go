package resolve

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func catalogService(ns, name, vip string, port, nodePort int32) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		Annotations:   map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{…}"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.ServiceSpec{ClusterIP: vip, Ports: []corev1.ServicePort{{Name: "http", Port: port, Protocol: corev1.ProtocolTCP, NodePort: nodePort}}}}
	if nodePort != 0 {
		s.Spec.Type = corev1.ServiceTypeNodePort
	}
	return s
}

func catalogSlice(ns, svc string, port int32, addrs ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc + "-abc",
		Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}}}
	for _, a := range addrs {
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}})
	}
	return sl
}

// The catalog is every Service's addresses and endpoints; a connection is
// put down to its Service port by the address it was sent to, else (it
// arrived translated) by its endpoint.
func TestCatalogIndexesEveryService(t *testing.T) {
	node := netip.MustParseAddr("192.168.1.5")
	cat := NewCatalog("", []*corev1.Service{
		catalogService("shop", "web", "10.96.0.10", 80, 0),
		catalogService("bank", "api", "10.96.0.20", 443, 30443),
		catalogService("bank", "admin", "10.96.0.21", 444, 0),
	}, []*discoveryv1.EndpointSlice{
		catalogSlice("shop", "web", 8080, "10.244.0.5", "10.244.1.6"),
		catalogSlice("bank", "api", 8443, "10.244.0.7"),
		catalogSlice("bank", "admin", 8443, "10.244.0.7"),
		catalogSlice("bank", "web", 9999, "10.244.9.9"), // another namespace's Service of that name
	})
	if got := []string{cat.Services[0].Key(), cat.Services[1].Key(), cat.Services[2].Key()}; !slices.Equal(got, []string{"bank/admin", "bank/api", "shop/web"}) {
		t.Fatalf("services %v", got)
	}
	want := []string{"10.96.0.21:444/tcp", "10.244.0.7:8443/tcp", "10.96.0.20:443/tcp", "192.168.1.5:30443/tcp", "10.96.0.10:80/tcp", "10.244.0.5:8080/tcp", "10.244.1.6:8080/tcp"}
	var got []string
	for _, tg := range cat.Targets([]netip.Addr{node}) {
		got = append(got, tg.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("targets %v, want %v", got, want)
	}
	x := cat.Index([]netip.Addr{node})
	for _, c := range []struct {
		dst     string
		port    string
		service bool
	}{
		{"10.96.0.10:80", "shop/web:http", true},
		{"192.168.1.5:30443", "bank/api:http", true},
		{"10.244.1.6:8080", "shop/web:http", false},
		{"10.244.9.9:9999", "", false},                              // no Service bank/web
		{"10.244.0.7:8443", "bank/admin:http,bank/api:http", false}, // two Services select the Pod
		{"10.96.0.10:81", "", false},
	} {
		dst := netip.MustParseAddrPort(c.dst)
		var names []string
		for _, p := range x.Ports(nf.TCP, dst) {
			names = append(names, p.String())
		}
		got := strings.Join(names, ",")
		if got != c.port || x.IsService(nf.TCP, dst) != c.service {
			t.Errorf("%s: port %q, service %v; want %q, %v", c.dst, got, x.IsService(nf.TCP, dst), c.port, c.service)
		}
	}
	if x.Ports(nf.UDP, netip.MustParseAddrPort("10.96.0.10:80")) != nil {
		t.Error("a UDP connection to a TCP port is put down to it")
	}
	if k := cat.Kinds(); k != "2 ClusterIP, 1 NodePort" {
		t.Errorf("kinds %q", k)
	}
}

// The next catalog builds again only the models of Services whose objects
// changed: the others keep their model, the same pointer (what -A's
// assessments of them hold on to), and a changed one is read anew.
func TestCatalogNextBuildsWhatChanged(t *testing.T) {
	web, api := catalogService("shop", "web", "10.96.0.10", 80, 0), catalogService("shop", "api", "10.96.0.11", 80, 0)
	webEPs, apiEPs := catalogSlice("shop", "web", 8080, "10.244.0.5"), catalogSlice("shop", "api", 8080, "10.244.0.6")
	svcs, sls := []*corev1.Service{web, api}, []*discoveryv1.EndpointSlice{webEPs, apiEPs}
	first := NewCatalog("shop", svcs, sls)
	model := func(c *Catalog, name string) *Service {
		for _, s := range c.Services {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no Service %s in the catalog", name)
		return nil
	}
	same := first.Next(svcs, sls)
	if model(same, "web") != model(first, "web") || model(same, "api") != model(first, "api") {
		t.Errorf("nothing changed, and a model was built again")
	}
	moved := catalogSlice("shop", "web", 8080, "10.244.0.7")
	next := same.Next(svcs, []*discoveryv1.EndpointSlice{apiEPs, moved})
	if model(next, "api") != model(first, "api") {
		t.Errorf("api's model built again for web's change")
	}
	w := model(next, "web")
	if w == model(first, "web") || len(w.Ports) != 1 || len(w.Ports[0].Endpoints) != 1 || w.Ports[0].Endpoints[0].Addr != netip.MustParseAddrPort("10.244.0.7:8080") {
		t.Errorf("web after its slice changed: %+v", w.Ports)
	}
	if gone := next.Next([]*corev1.Service{api}, sls); len(gone.Services) != 1 || gone.Services[0] != model(first, "api") {
		t.Errorf("web deleted: %d Services left", len(gone.Services))
	}
}

// From the API, the catalog is listed once and then watched: a Service
// created later comes as a changed catalog, and what the informers hold is
// trimmed of what svctrace never reads.
func TestWatchCatalog(t *testing.T) {
	cs := fake.NewClientset(catalogService("shop", "web", "10.96.0.10", 80, 0), catalogSlice("shop", "web", 8080, "10.244.0.5"),
		catalogService("bank", "api", "10.96.0.20", 443, 0))
	a := &API{Client: cs, Credentials: "test", Host: "https://test"}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	changed := make(chan *Catalog, 10)
	cw, err := a.WatchCatalog(ctx, "shop", func(c *Catalog) { changed <- c }, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat := cw.Catalog()
	if len(cat.Services) != 1 || cat.Services[0].Key() != "shop/web" || len(cat.Services[0].Ports[0].Endpoints) != 1 {
		t.Fatalf("first catalog of namespace shop: %+v", cat.Services)
	}
	for _, o := range cw.svcs.GetStore().List() {
		if m := o.(metav1.Object); len(m.GetManagedFields()) > 0 || len(m.GetAnnotations()) > 0 {
			t.Errorf("the informer keeps %s's managed fields or annotations", m.GetName())
		}
	}
	if _, err := cs.CoreV1().Services("shop").Create(ctx, catalogService("shop", "cart", "10.96.0.30", 80, 0), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-changed:
		if len(c.Services) != 2 || c.Services[0].Key() != "shop/cart" {
			t.Errorf("after a Service was created: %d Services", len(c.Services))
		}
	case <-ctx.Done():
		t.Fatal("no change reported")
	}
}
