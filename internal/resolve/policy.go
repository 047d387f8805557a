package resolve

import (
	"context"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/netpol"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
