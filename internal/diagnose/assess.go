package diagnose

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
)

// NodeFacts are what svctrace found on the node it runs on.
type NodeFacts struct {
	Local resolve.LocalNode
	// Rules are kube-proxy's rules there (nil: unread, RulesErr says why).
	Rules    *kubeproxy.Ruleset
	RulesErr error
	// KubeProxy are kube-proxy's processes in the node's network namespace;
	// KubeProxyKnown is false when svctrace cannot see them.
	KubeProxy      []int
	KubeProxyKnown bool
	// Bridges are the node's bridges with their ports' hairpin mode.
	Bridges []resolve.Bridge
	// Conntrack is the node's connection tracking table (nil: unread).
	Conntrack *conntrack.Table
	// Net is the node's network as far as the Service's endpoints need
	// it (routes, neighbours, sysctls, the endpoint Pods' sockets); nil
	// until read. ReadNet, if set, reads it for the endpoints' addresses
	// and this node's endpoint Pods.
	Net     *node.Facts
	ReadNet func(node.Want) *node.Facts
}

// ReadNode reads the node's facts from its network namespace ns: kube-proxy's
// rules (those of services in detail, see kubeproxy.Read) and processes, its
// bridges, its conntrack table. What needs root and cannot be read says so
// in RulesErr, or is left out.
func ReadNode(ns nf.NetNS, local resolve.LocalNode, services ...string) NodeFacts {
	facts := NodeFacts{Local: local, Bridges: resolve.Bridges(ns)}
	if os.Geteuid() != 0 {
		facts.RulesErr = errors.New("reading kube-proxy's rules needs root (run with sudo)")
		facts.Net = &node.Facts{Unread: []string{"the node's routes, neighbours and the endpoint Pods' sockets: reading them needs root (run with sudo)"}}
		return facts
	}
	facts.ReadNet = func(w node.Want) *node.Facts { return node.Read(ns, w) }
	facts.Rules, facts.RulesErr = kubeproxy.Read(ns, services...)
	facts.KubeProxy, facts.KubeProxyKnown = kubeproxy.KubeProxyPIDs(ns), true
	facts.Conntrack, _ = conntrack.Read(ns)
	return facts
}

// Assessment is a Service as svctrace sees it at one moment: its objects,
// its model, the findings, and what explains its connections.
type Assessment struct {
	Source    string // where the objects came from (resolve.Source.Describe)
	View      *resolve.View
	Service   *resolve.Service
	Findings  []report.Finding
	Explainer *Explainer
	// Proxy is kube-proxy's mode on the node, or why it is unknown.
	Proxy string
	// NodeAddrs are the node's addresses: where its NodePorts are reached.
	NodeAddrs []netip.Addr
	// Node are the node's facts the assessment used, its network's
	// included.
	Node NodeFacts
}

// Assess gathers the Service's objects from src and diagnoses them with
// what the node holds; client, if not nil, is a client Pod to judge the
// network policies for (--from pod/NAME).
func Assess(ctx context.Context, src resolve.Source, namespace, name string, client *corev1.Pod, node NodeFacts) (*Assessment, error) {
	view, err := resolve.Gather(ctx, src, namespace, name, node.Local)
	if err != nil {
		return nil, err
	}
	if client != nil {
		view.SetClient(ctx, src, client)
	}
	a := AssessView(view, node)
	a.Explainer.Lookup = resolve.Memo(resolve.Lookup(src), nil)
	a.Explainer.Peer = resolve.Peers(src, nil)
	return a, nil
}

// AssessView diagnoses objects already gathered (a recording's). Its
// Explainer names only what the view holds until given a Lookup.
func AssessView(view *resolve.View, node NodeFacts) *Assessment {
	addrs := resolve.NodePortAddrsOf(view.Nodes[view.LocalNode], node.Local.Addrs)
	svc := resolve.NewService(view)
	if node.Net == nil && node.ReadNet != nil {
		node.Net = node.ReadNet(netTargets(svc, view.LocalNode))
	}
	in := Input{View: view, Service: svc, Rules: node.Rules, RulesErr: node.RulesErr,
		KubeProxy: node.KubeProxy, KubeProxyKnown: node.KubeProxyKnown, NodeAddrs: addrs, Bridges: node.Bridges,
		Conntrack: node.Conntrack, Net: node.Net}
	a := &Assessment{Source: view.Source, View: view, Service: in.Service, Findings: Check(in), Proxy: "not read", NodeAddrs: addrs, Node: node}
	switch {
	case node.Rules != nil:
		a.Proxy = fmt.Sprintf("%s mode (%s)", node.Rules.Mode, node.Rules.Note)
	case node.RulesErr != nil:
		a.Proxy = "not read: " + node.RulesErr.Error()
	}
	a.Explainer = NewExplainer(in, a.Findings, a.NodeAddrs)
	a.Explainer.Recheck = node.ReadNet
	return a
}

// netTargets are what the node's network is read for: the addresses of
// the Service's endpoints, and the endpoint Pods on this node (local)
// whose sockets to read.
func netTargets(s *resolve.Service, local string) node.Want {
	var addrs []netip.Addr
	var pods []node.Pod
	for _, p := range s.Ports {
		for _, e := range p.Endpoints {
			a := e.Addr.Addr()
			if slices.Contains(addrs, a) {
				continue
			}
			addrs = append(addrs, a)
			if e.Node == local || e.Node == "" {
				name := e.Pod.String()
				if e.Pod.Name == "" {
					name = "the endpoint " + a.String()
				}
				pods = append(pods, node.Pod{Name: name, Addr: a})
			}
		}
	}
	return node.Want{Addrs: addrs, Pods: pods}
}

// Diagnosis is what the assessment shows before any packet.
func (a *Assessment) Diagnosis() report.Diagnosis {
	return report.Diagnosis{Service: a.Service.Summary(), Source: a.Source, Node: a.View.LocalNode, Proxy: a.Proxy, Read: a.Node.Net.Read(), Findings: a.Findings}
}
