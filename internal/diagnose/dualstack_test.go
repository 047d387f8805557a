package diagnose

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A dual-stack Service: one EndpointSlice per family, the IPv6 ClusterIP
// explained like the IPv4 one, and a server that listens on IPv4 only
// named as the reason an IPv6 connection is reset.
func TestDualStack(t *testing.T) {
	web := pod(shop, "web-1", "web", "10.244.0.11", "node-1", true)
	web.Status.PodIPs = append(web.Status.PodIPs, corev1.PodIP{IP: "fd00:10:244::11"})
	s := svc("web", "10.96.1.10", map[string]string{"app": "web"}, intstr.FromString("http"))
	s.Spec.ClusterIPs = append(s.Spec.ClusterIPs, "fd00:10:96::10")
	s.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol}
	v4 := slice("web", 8080, web)
	v6 := slice("web", 8080, web)
	v6.Name, v6.AddressType = "web-v6", discoveryv1.AddressTypeIPv6
	v6.Endpoints[0].Addresses = []string{"fd00:10:244::11"}
	in, fs := check(t, story{objs: resolve.Objects{Services: []corev1.Service{s}, Pods: []corev1.Pod{web}, Slices: []discoveryv1.EndpointSlice{v4, v6}}})
	if len(fs) != 1 || fs[0].Code != "healthy" {
		t.Errorf("findings %v, want healthy", findingCodes(fs))
	}
	x := NewExplainer(in, fs, nil)
	ap := netip.MustParseAddrPort
	c := &flow.Conn{Proto: nf.TCP, Client: ap("[fd00:10:99::2]:40000"), VIP: ap("[fd00:10:96::10]:80"),
		Endpoint: ap("[fd00:10:244::11]:8080"), Verdict: flow.Answered}
	if e := x.Explain(c); e.Service != "shop/web:http (ClusterIP)" || e.Pod != "shop/web-1" || e.Blame != "" {
		t.Errorf("answered over IPv6: %+v", e)
	}
	c.Verdict = flow.Reset
	want := "Pod shop/web-1 on node-1 (ready): nothing listens on port 8080 over IPv6; the Pod's IPv4 endpoint is 10.244.0.11:8080: if that answers, its server is bound to 0.0.0.0 (IPv4 only)"
	if e := x.Explain(c); !strings.HasPrefix(e.Blame, want) {
		t.Errorf("reset over IPv6: blame %q, want %q…", e.Blame, want)
	}
	c = &flow.Conn{Proto: nf.TCP, Client: ap("10.99.0.2:40000"), VIP: ap("10.96.1.10:80"), Endpoint: ap("10.244.0.11:8080"), Verdict: flow.Reset}
	if e := x.Explain(c); strings.Contains(e.Blame, "IPv6") {
		t.Errorf("reset over IPv4: blame %q", e.Blame)
	}
}
