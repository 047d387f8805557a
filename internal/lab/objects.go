package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// NodeName is the lab node's name in its objects.
const NodeName = "lab-node"

// Objects are the Kubernetes objects the lab stands for — the Services,
// the EndpointSlices the controller would write for them, the Pods and
// the Node — as `kubectl get -o yaml` would show them. svctrace explains
// the lab's connections with them, as it does on a real node.
func Objects() *resolve.Objects {
	o := &resolve.Objects{}
	for _, p := range pods() {
		o.Pods = append(o.Pods, corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: p.Name, Labels: p.Labels},
			Spec:       corev1.PodSpec{NodeName: NodeName, Containers: []corev1.Container{{Name: "app", Ports: p.containerPorts()}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IP.String(), PodIPs: []corev1.PodIP{{IP: p.IP.String()}, {IP: p.IP6.String()}},
				HostIP:            nodeNet.Addr().String(),
				Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
				ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Ready: true}}},
		})
	}
	for _, s := range Scenarios() {
		sp := s.Service
		proto := corev1.Protocol(strings.ToUpper(sp.Protocol))
		svc := corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: sp.Name},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Selector: s.Selector,
				Ports: []corev1.ServicePort{{Name: sp.PortName, Port: int32(sp.Port), Protocol: proto, TargetPort: s.TargetPort}}},
		}
		for _, fp := range s.Ports() {
			svc.Spec.ClusterIPs = append(svc.Spec.ClusterIPs, fp.ClusterIP.String())
			svc.Spec.IPFamilies = append(svc.Spec.IPFamilies, family(fp.ClusterIP))
			o.Slices = append(o.Slices, endpointSlice(fp, proto))
		}
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
		policy := corev1.IPFamilyPolicySingleStack
		if len(svc.Spec.ClusterIPs) > 1 {
			policy = corev1.IPFamilyPolicyRequireDualStack
		}
		svc.Spec.IPFamilyPolicy = &policy
		o.Services = append(o.Services, svc)
	}
	o.Namespaces = []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: Namespace,
		Labels: map[string]string{"kubernetes.io/metadata.name": Namespace}}}}
	o.NetworkPolicies = []networkingv1.NetworkPolicy{guardedPolicy}
	o.Nodes = []corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: NodeName},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeNet.Addr().String()},
			{Type: corev1.NodeInternalIP, Address: nodeNet6.Addr().String()}}}}}
	return o
}

// containerPorts are the ports p's container declares: DNS's for the DNS
// server, else "http" (and "echo" over UDP) on podPort.
func (p Pod) containerPorts() []corev1.ContainerPort {
	if p.mode == ModeDNS {
		return []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}, {Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP}}
	}
	return []corev1.ContainerPort{{Name: "http", ContainerPort: podPort, Protocol: corev1.ProtocolTCP},
		{Name: "echo", ContainerPort: podPort, Protocol: corev1.ProtocolUDP}}
}

// guardedPolicy isolates the guarded Pod for ingress and admits nothing:
// what the lab's policyRules enforce, standing in for a NetworkPolicy
// engine (none runs without an API server).
var guardedPolicy = networkingv1.NetworkPolicy{
	ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: "deny-guarded"},
	Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "guarded"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
}

func family(a netip.Addr) corev1.IPFamily {
	if a.Is6() {
		return corev1.IPv6Protocol
	}
	return corev1.IPv4Protocol
}

// endpointSlice is the EndpointSlice the controller writes for one
// family's port of a Service: a slice holds addresses of one type.
func endpointSlice(sp kubeproxy.ServicePort, proto corev1.Protocol) discoveryv1.EndpointSlice {
	ready, node, name := true, NodeName, sp.PortName
	sl := discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: Namespace, Name: sp.Name + "-lab",
			Labels: map[string]string{discoveryv1.LabelServiceName: sp.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if sp.ClusterIP.Is6() {
		sl.Name, sl.AddressType = sp.Name+"-lab6", discoveryv1.AddressTypeIPv6
	}
	for _, ep := range sp.Endpoints {
		port := int32(ep.Port())
		sl.Ports = []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}}
		pod := ""
		for _, p := range pods() {
			if p.IP == ep.Addr() || p.IP6 == ep.Addr() {
				pod = p.Name
			}
		}
		sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ep.Addr().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: Namespace, Name: pod}})
	}
	return sl
}

// Assess diagnoses every scenario's Service the way `svctrace SERVICE`
// does on a node — from the lab's objects and the rules in the lab node —
// and returns the assessments by scenario name, and what the node held.
func (l *Lab) Assess(ctx context.Context) (map[string]*diagnose.Assessment, diagnose.NodeFacts, error) {
	src := resolve.FileSource{Objects: Objects(), Path: "svctrace lab"}
	facts := diagnose.ReadNode(l.Node, resolve.LocalNode{Name: NodeName})
	out := map[string]*diagnose.Assessment{}
	for _, s := range l.Scenarios {
		a, err := diagnose.Assess(ctx, src, Namespace, s.Service.Name, nil, facts)
		if err != nil {
			return nil, facts, fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		out[s.Name] = a
	}
	return out, facts, nil
}

// ObjectsYAML is Objects as `kubectl get svc,endpointslices,pods,nodes,namespaces,networkpolicies -o
// yaml` prints them: what --objects reads.
func ObjectsYAML() ([]byte, error) {
	o := Objects()
	var items []any
	add := func(kind, api string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		m["kind"], m["apiVersion"] = kind, api
		items = append(items, m)
		return nil
	}
	var err error
	for _, s := range o.Services {
		err = errors.Join(err, add("Service", "v1", s))
	}
	for _, s := range o.Slices {
		err = errors.Join(err, add("EndpointSlice", "discovery.k8s.io/v1", s))
	}
	for _, p := range o.Pods {
		err = errors.Join(err, add("Pod", "v1", p))
	}
	for _, n := range o.Nodes {
		err = errors.Join(err, add("Node", "v1", n))
	}
	for _, n := range o.Namespaces {
		err = errors.Join(err, add("Namespace", "v1", n))
	}
	for _, p := range o.NetworkPolicies {
		err = errors.Join(err, add("NetworkPolicy", "networking.k8s.io/v1", p))
	}
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
}
