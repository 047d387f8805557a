package resolve

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Service is what a Service asks of the data path: its addresses, ports and
// endpoints, from the Service and its EndpointSlices.
type Service struct {
	Namespace, Name string
	Type            corev1.ServiceType
	ClusterIPs      []netip.Addr // both families for dual-stack; none if headless
	Headless        bool
	ExternalName    string
	ExternalIPs     []netip.Addr
	LoadBalancerIPs []netip.Addr
	ClientAffinity  bool // sessionAffinity: ClientIP
	ExternalLocal   bool // externalTrafficPolicy: Local
	InternalLocal   bool // internalTrafficPolicy: Local
	Selector        map[string]string
	// PublishNotReady: publishNotReadyAddresses, so the EndpointSlice
	// controller calls every selected Pod's address ready.
	PublishNotReady bool
	// ProxyName is the Service's label service.kubernetes.io/service-proxy-name:
	// another proxy than kube-proxy handles it, and kube-proxy leaves it
	// alone ("": kube-proxy's).
	ProxyName string
	Ports     []Port
}

// LabelServiceProxyName names the proxy that handles a Service, where it
// is not kube-proxy (kube-proxy watches only Services without it).
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// Port is one Service port and its endpoints.
type Port struct {
	Service    *Service
	Name       string
	Protocol   nf.Proto
	Port       uint16
	TargetPort intstr.IntOrString
	NodePort   uint16
	Endpoints  []Endpoint
}

// String is kube-proxy's name for the port: "namespace/name:port", or
// "namespace/name" for an unnamed port.
func (p *Port) String() string {
	s := p.Service.Namespace + "/" + p.Service.Name
	if p.Name != "" {
		s += ":" + p.Name
	}
	return s
}

// Endpoint is one endpoint of a Service port.
type Endpoint struct {
	Addr                        netip.AddrPort
	Ready, Serving, Terminating bool
	Node                        string
	Pod                         types.NamespacedName // zero without a Pod targetRef
	Slice                       string
	// Manager is the slice's endpointslice.kubernetes.io/managed-by label:
	// "endpointslice-controller.k8s.io" for the Service's own, else
	// whoever wrote it ("" : nobody said).
	Manager string
}

// Controller is the EndpointSlice controller's manager label.
const Controller = "endpointslice-controller.k8s.io"

// HandMade reports whether the endpoint's slice was written by someone
// other than the EndpointSlice controller.
func (e Endpoint) HandMade() bool { return e.Manager != Controller }

// State is the endpoint's conditions in words: "ready", "not ready",
// "terminating (still serving)", …
func (e Endpoint) State() string {
	switch {
	case e.Terminating && e.Serving:
		return "terminating, still serving"
	case e.Terminating:
		return "terminating"
	case e.Ready && !e.Serving:
		return "ready but not serving (contradictory conditions)"
	case e.Ready:
		return "ready"
	case e.Serving:
		return "not ready, serving"
	}
	return "not ready"
}

// NewService builds the model of v's Service.
func NewService(v *View) *Service {
	spec := v.Service.Spec
	s := &Service{Namespace: v.Service.Namespace, Name: v.Service.Name, Type: spec.Type,
		ExternalName:   spec.ExternalName,
		ClientAffinity: spec.SessionAffinity == corev1.ServiceAffinityClientIP,
		ExternalLocal:  spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal,
		InternalLocal:  spec.InternalTrafficPolicy != nil && *spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
		Selector:       spec.Selector, PublishNotReady: spec.PublishNotReadyAddresses,
		ProxyName: v.Service.Labels[LabelServiceProxyName]}
	if s.Type == "" {
		s.Type = corev1.ServiceTypeClusterIP
	}
	ips := spec.ClusterIPs
	if len(ips) == 0 && spec.ClusterIP != "" {
		ips = []string{spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone {
			s.Headless = true
		} else if a := parseAddr(ip); a.IsValid() {
			s.ClusterIPs = append(s.ClusterIPs, a)
		}
	}
	for _, ip := range spec.ExternalIPs {
		if a := parseAddr(ip); a.IsValid() {
			s.ExternalIPs = append(s.ExternalIPs, a)
		}
	}
	for _, in := range v.Service.Status.LoadBalancer.Ingress {
		if a := parseAddr(in.IP); a.IsValid() {
			s.LoadBalancerIPs = append(s.LoadBalancerIPs, a)
		}
	}
	for _, sp := range spec.Ports {
		proto, err := nf.ParseProto(strings.ToLower(string(sp.Protocol)))
		if err != nil {
			proto = nf.TCP
		}
		p := Port{Service: s, Name: sp.Name, Protocol: proto, Port: uint16(sp.Port), TargetPort: sp.TargetPort, NodePort: uint16(sp.NodePort)}
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal == 0 {
			p.TargetPort = intstr.FromInt32(sp.Port) // the API server's default
		}
		p.Endpoints = endpoints(v, sp)
		s.Ports = append(s.Ports, p)
	}
	return s
}

// endpoints are the EndpointSlice endpoints of one Service port, with the
// port the slice resolved for it.
func endpoints(v *View, sp corev1.ServicePort) []Endpoint {
	var out []Endpoint
	for _, sl := range v.Slices {
		for _, slp := range sl.Ports {
			name, proto := "", corev1.ProtocolTCP
			if slp.Name != nil {
				name = *slp.Name
			}
			if slp.Protocol != nil {
				proto = *slp.Protocol
			}
			if name != sp.Name || proto != sp.Protocol || slp.Port == nil {
				continue
			}
			for _, ep := range sl.Endpoints {
				e := Endpoint{Slice: sl.Name, Manager: sl.Labels[discoveryv1.LabelManagedBy],
					Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
					Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
					Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating}
				if ep.NodeName != nil {
					e.Node = *ep.NodeName
				}
				if r := ep.TargetRef; r != nil && r.Kind == "Pod" {
					e.Pod = types.NamespacedName{Namespace: r.Namespace, Name: r.Name}
					if e.Pod.Namespace == "" {
						e.Pod.Namespace = sl.Namespace
					}
				}
				for _, a := range ep.Addresses {
					if ip := parseAddr(a); ip.IsValid() {
						e.Addr = netip.AddrPortFrom(ip, uint16(*slp.Port))
						out = append(out, e)
					}
				}
			}
		}
	}
	return out
}

// Ready are the endpoints kube-proxy sends new connections to: the ready
// ones, or, when none is ready, the serving terminating ones.
func (p *Port) Ready() []Endpoint {
	var ready, serving []Endpoint
	for _, e := range p.Endpoints {
		switch {
		case e.Ready:
			ready = append(ready, e)
		case e.Serving && e.Terminating:
			serving = append(serving, e)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return serving
}

// Endpoint is p's endpoint at a, if it has one.
func (p *Port) Endpoint(a netip.AddrPort) (Endpoint, bool) {
	for _, e := range p.Endpoints {
		if e.Addr == a {
			return e, true
		}
	}
	return Endpoint{}, false
}

// Address is one address at which a Service port is reachable.
type Address struct {
	Addr netip.AddrPort
	Kind string // "ClusterIP", "external IP", "load-balancer IP", "NodePort"
	Port *Port
}

// Addresses are where clients reach the Service's ports: ClusterIPs,
// external IPs, load-balancer IPs and, on nodeAddrs, NodePorts.
func (s *Service) Addresses(nodeAddrs []netip.Addr) []Address {
	var out []Address
	for i := range s.Ports {
		p := &s.Ports[i]
		add := func(kind string, ips []netip.Addr, port uint16) {
			for _, ip := range ips {
				out = append(out, Address{Addr: netip.AddrPortFrom(ip, port), Kind: kind, Port: p})
			}
		}
		add("ClusterIP", s.ClusterIPs, p.Port)
		add("external IP", s.ExternalIPs, p.Port)
		add("load-balancer IP", s.LoadBalancerIPs, p.Port)
		if p.NodePort != 0 {
			add("NodePort", s.NodePortAddrs(nodeAddrs), p.NodePort)
		}
	}
	return out
}

// NodePortAddrs are the node addresses of the Service's IP families:
// kube-proxy serves a single-stack Service's NodePorts on the node's
// addresses of that family only.
func (s *Service) NodePortAddrs(addrs []netip.Addr) []netip.Addr {
	if len(s.ClusterIPs) == 0 {
		return addrs
	}
	var out []netip.Addr
	for _, a := range addrs {
		if slices.ContainsFunc(s.ClusterIPs, func(c netip.Addr) bool { return c.Is4() == a.Is4() }) {
			out = append(out, a)
		}
	}
	return out
}

// Targets are what the tracer must watch for this Service: every address
// of Addresses and every endpoint (a headless Service has only those).
func (s *Service) Targets(nodeAddrs []netip.Addr) []nf.Target {
	var out []nf.Target
	add := func(a netip.AddrPort, p nf.Proto) {
		t := nf.Target{Addr: a, Proto: p}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	for _, a := range s.Addresses(nodeAddrs) {
		add(a.Addr, a.Port.Protocol)
	}
	for _, p := range s.Ports {
		for _, e := range p.Endpoints {
			add(e.Addr, p.Protocol)
		}
	}
	return out
}

// Summary is the Service in one line: "shop/web ClusterIP 10.96.1.10
// 80/TCP→http, 2 endpoints (1 ready)".
func (s *Service) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%s %s", s.Namespace, s.Name, s.Type)
	switch {
	case s.ExternalName != "":
		fmt.Fprintf(&b, " → %s", s.ExternalName)
	case s.Headless:
		b.WriteString(" (headless)")
	}
	for _, ip := range s.ClusterIPs {
		fmt.Fprintf(&b, " %s", ip)
	}
	for _, p := range s.Ports {
		fmt.Fprintf(&b, "  %d/%s", p.Port, strings.ToUpper(p.Protocol.String()))
		if p.NodePort != 0 {
			fmt.Fprintf(&b, " (NodePort %d)", p.NodePort)
		}
		fmt.Fprintf(&b, " → %s: %d endpoint(s), %d ready", p.TargetPort.String(), len(p.Endpoints), countReady(p.Endpoints))
	}
	return b.String()
}

func countReady(eps []Endpoint) int {
	n := 0
	for _, e := range eps {
		if e.Ready {
			n++
		}
	}
	return n
}
