// Package netpol decides whether the network policies of a cluster admit
// a connection, as the policy APIs define it: NetworkPolicy
// (networking.k8s.io/v1) and the cluster-wide AdminNetworkPolicy and
// BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1). It says
// which policy and rule decided each direction, which policies isolate a
// Pod, and for a denied connection what each of their rules lacked. Plain
// functions over API objects: nothing here reads the API or the node.
package netpol

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Endpoint is one end of a connection as the policies see it.
type Endpoint struct {
	IP netip.Addr
	// Pod holds IP; nil for a node's own address or one outside the
	// cluster. Policies neither select nor match a hostNetwork Pod: it is
	// its node.
	Pod *corev1.Pod
	// Namespace is the labels of Pod's namespace.
	Namespace map[string]string
	// Node names the node whose address IP is (the node itself, a
	// hostNetwork Pod), with its labels; "" otherwise.
	Node       string
	NodeLabels map[string]string
}

// pod is e's Pod if policies govern it.
func (e Endpoint) pod() *corev1.Pod {
	if e.Pod == nil || e.Pod.Spec.HostNetwork {
		return nil
	}
	return e.Pod
}

// Name is e in words: "Pod ns/name", "node w2", or its address.
func (e Endpoint) Name() string {
	switch {
	case e.pod() != nil:
		return "Pod " + e.Pod.Namespace + "/" + e.Pod.Name
	case e.Node != "":
		return "node " + e.Node
	}
	return e.IP.String()
}

// Connection is what the policies judge: the destination as its Pod
// receives it (a Service's endpoint and target port, after DNAT).
type Connection struct {
	From, To Endpoint
	Protocol corev1.Protocol
	Port     uint16
}

// Policies are the objects that may judge a connection: the NetworkPolicies
// of both ends' namespaces (others are ignored), the AdminNetworkPolicies and
// the BaselineAdminNetworkPolicy (nil: none).
type Policies struct {
	Network  []networkingv1.NetworkPolicy
	Admin    []AdminNetworkPolicy
	Baseline *BaselineAdminNetworkPolicy
}

// Direction is a policy direction: the ingress of the destination's Pod or
// the egress of the source's.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Tier is what decided a direction.
type Tier string

const (
	// Unselected: no policy selects the Pod for the direction, or that end
	// is no Pod: the connection is admitted.
	Unselected Tier = "unselected"
	// FromNode: ingress from the Pod's own node, which NetworkPolicy always
	// admits (kubelet probes).
	FromNode Tier = "node"
	Admin    Tier = "admin"    // an AdminNetworkPolicy's rule
	Network  Tier = "network"  // the NetworkPolicies that isolate the Pod
	Baseline Tier = "baseline" // the BaselineAdminNetworkPolicy's rule
)

// Verdict is the policies' decision on a connection: it passes if both the
// source's egress and the destination's ingress admit it.
type Verdict struct {
	Allowed bool
	Egress  Decision
	Ingress Decision
}

// Decision is one direction's verdict and what made it.
type Decision struct {
	Direction Direction
	Allowed   bool
	By        Tier
	// Rule decided (By Admin or Baseline, or Network when admitted); nil
	// when no rule did: not selected, from the node, or isolated by
	// NetworkPolicies none of whose rules admits the connection.
	Rule *Rule
	// Isolating are the NetworkPolicies that select the Pod for the
	// direction (namespace/name, sorted): none, and the Pod is not isolated.
	Isolating []string
	// Passed are the AdminNetworkPolicy rules that passed the connection on
	// to the NetworkPolicies (action Pass).
	Passed *Rule
	// Misses, when NetworkPolicies isolate the Pod and none admits the
	// connection: each of their rules for the direction with what it did
	// not match, nearest first. A policy without rules for the direction
	// denies all: it has none here.
	Misses []Miss
	// Unknown says what could not be evaluated (a peer by domain name).
	Unknown []string
}

// Rule names a policy's rule.
type Rule struct {
	Tier      Tier
	Policy    string // namespace/name of a NetworkPolicy; the name of an admin policy
	Direction Direction
	Index     int    // its place among the policy's rules for Direction, from 0
	Name      string // an admin rule's name
	Action    string // Allow, Deny or Pass; NetworkPolicy rules allow
	Priority  int32  // an AdminNetworkPolicy's
}

// String names the rule as an operator finds it in the object: the rule's
// number counts from 1, as a reader counts the YAML list.
func (r Rule) String() string {
	switch r.Tier {
	case Admin:
		return fmt.Sprintf("AdminNetworkPolicy %s (priority %d) %s rule %s (%s)", r.Policy, r.Priority, r.Direction, r.label(), r.Action)
	case Baseline:
		return fmt.Sprintf("BaselineAdminNetworkPolicy %s %s rule %s (%s)", r.Policy, r.Direction, r.label(), r.Action)
	}
	return fmt.Sprintf("NetworkPolicy %s %s rule %d", r.Policy, r.Direction, r.Index+1)
}

func (r Rule) label() string {
	if r.Name != "" {
		return fmt.Sprintf("%q", r.Name)
	}
	return fmt.Sprint(r.Index + 1)
}

// Miss is a rule that did not admit a connection and why: each part of it
// the connection did not meet, in words.
type Miss struct {
	Rule Rule
	Why  []string
}

// Denial is the direction that denied the connection: the source's egress
// if it did, else the destination's ingress (allowed when neither did).
func (v Verdict) Denial() Decision {
	if !v.Egress.Allowed {
		return v.Egress
	}
	return v.Ingress
}

// Evaluate judges c under p.
func Evaluate(p Policies, c Connection) Verdict {
	v := Verdict{Egress: decide(p, c, Egress), Ingress: decide(p, c, Ingress)}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// Isolating names the NetworkPolicies among ps that select pod for d.
func Isolating(ps []networkingv1.NetworkPolicy, pod *corev1.Pod, d Direction) []string {
	var names []string
	for i := range ps {
		if selects(&ps[i], pod, d) {
			names = append(names, ps[i].Namespace+"/"+ps[i].Name)
		}
	}
	slices.Sort(names)
	return names
}

func decide(p Policies, c Connection, d Direction) Decision {
	self, peer := c.To, c.From
	if d == Egress {
		self, peer = c.From, c.To
	}
	dec := Decision{Direction: d, Allowed: true, By: Unselected}
	if self.pod() == nil {
		return dec
	}
	r, unknown := adminTier(p.Admin, c, self, peer, d)
	dec.Unknown = unknown
	if r != nil && r.Action != Pass {
		dec.By, dec.Rule, dec.Allowed = Admin, r, r.Action == Allow
		return dec
	}
	dec.Passed = r
	if d == Ingress && peer.Node != "" && peer.Node == self.Pod.Spec.NodeName {
		dec.By = FromNode
		return dec
	}
	if isolated := networkTier(p.Network, c, self, peer, d, &dec); isolated {
		return dec
	}
	if b := p.Baseline; b != nil && subjectSelects(b.Spec.Subject, self) {
		r, unknown := firstRule(Baseline, b.Name, 0, rules(&b.Spec, d), c, peer, d)
		dec.Unknown = append(dec.Unknown, unknown...)
		if r != nil {
			dec.By, dec.Rule, dec.Allowed = Baseline, r, r.Action == Allow
		}
	}
	return dec
}

// adminTier returns the first AdminNetworkPolicy rule that matches, the
// policies taken by priority (lowest number first; by name where two share
// one, which the API leaves undefined).
func adminTier(anps []AdminNetworkPolicy, c Connection, self, peer Endpoint, d Direction) (*Rule, []string) {
	order := make([]*AdminNetworkPolicy, 0, len(anps))
	for i := range anps {
		if subjectSelects(anps[i].Spec.Subject, self) {
			order = append(order, &anps[i])
		}
	}
	slices.SortStableFunc(order, func(a, b *AdminNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), cmp.Compare(a.Name, b.Name))
	})
	var unknown []string
	for _, a := range order {
		r, u := firstRule(Admin, a.Name, a.Spec.Priority, rules(&a.Spec, d), c, peer, d)
		unknown = append(unknown, u...)
		if r != nil {
			return r, unknown
		}
	}
	return nil, unknown
}

func rules(s *AdminSpec, d Direction) []AdminRule {
	if d == Egress {
		return s.Egress
	}
	return s.Ingress
}

// firstRule returns the first of an admin policy's rules that matches.
func firstRule(t Tier, policy string, prio int32, rs []AdminRule, c Connection, peer Endpoint, d Direction) (*Rule, []string) {
	var unknown []string
	for i, r := range rs {
		peers := r.From
		if d == Egress {
			peers = r.To
		}
		ok := false
		for _, pe := range peers {
			m, u := adminPeerMatches(pe, peer)
			if u != "" {
				unknown = append(unknown, fmt.Sprintf("%s %q: %s", t, policy, u))
			}
			if m {
				ok = true
				break
			}
		}
		if ok && adminPortsMatch(r.Ports, c) {
			return &Rule{Tier: t, Policy: policy, Direction: d, Index: i, Name: r.Name, Action: r.Action, Priority: prio}, unknown
		}
	}
	return nil, unknown
}

// networkTier decides d by the NetworkPolicies that isolate self, if any:
// false when none does.
func networkTier(ps []networkingv1.NetworkPolicy, c Connection, self, peer Endpoint, d Direction, dec *Decision) bool {
	var misses []Miss
	for i := range ps {
		np := &ps[i]
		if !selects(np, self.Pod, d) {
			continue
		}
		name := np.Namespace + "/" + np.Name
		dec.Isolating = append(dec.Isolating, name)
		for j, why := range npRules(np, c, peer, d) {
			r := Rule{Tier: Network, Policy: name, Direction: d, Index: j, Action: Allow}
			if len(why) == 0 {
				if dec.Rule == nil {
					dec.Rule = &r
				}
				continue
			}
			misses = append(misses, Miss{Rule: r, Why: why})
		}
	}
	if len(dec.Isolating) == 0 {
		return false
	}
	slices.Sort(dec.Isolating)
	dec.By = Network
	dec.Allowed = dec.Rule != nil
	if !dec.Allowed {
		slices.SortStableFunc(misses, func(a, b Miss) int { return cmp.Compare(len(a.Why), len(b.Why)) })
		dec.Misses = misses
	}
	return true
}

// selects reports whether np applies to pod for d: the Pod is in np's
// namespace, matches its podSelector, and d is among its policy types.
func selects(np *networkingv1.NetworkPolicy, pod *corev1.Pod, d Direction) bool {
	if pod == nil || pod.Spec.HostNetwork || pod.Namespace != np.Namespace || !hasType(np, d) {
		return false
	}
	return len(selectorMisses(&np.Spec.PodSelector, pod.Labels, "")) == 0
}

// hasType: policyTypes, or where it is empty the API's default: Ingress
// always, Egress when the policy has egress rules.
func hasType(np *networkingv1.NetworkPolicy, d Direction) bool {
	if len(np.Spec.PolicyTypes) == 0 {
		return d == Ingress || len(np.Spec.Egress) > 0
	}
	want := networkingv1.PolicyTypeIngress
	if d == Egress {
		want = networkingv1.PolicyTypeEgress
	}
	return slices.Contains(np.Spec.PolicyTypes, want)
}

// npRules returns, for each of np's rules for d, what it lacks to admit c
// (nothing: it admits c).
func npRules(np *networkingv1.NetworkPolicy, c Connection, peer Endpoint, d Direction) [][]string {
	var out [][]string
	if d == Ingress {
		for _, r := range np.Spec.Ingress {
			out = append(out, ruleMisses(np.Namespace, r.From, r.Ports, c, peer))
		}
	} else {
		for _, r := range np.Spec.Egress {
			out = append(out, ruleMisses(np.Namespace, r.To, r.Ports, c, peer))
		}
	}
	return out
}

// ruleMisses is what a rule with these peers and ports lacks to admit c:
// the nearest peer's misses and the nearest port's.
func ruleMisses(ns string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, c Connection, peer Endpoint) []string {
	var why []string
	if len(peers) > 0 {
		why = append(why, nearest(len(peers), func(i int) []string { return peerMisses(ns, peers[i], peer) })...)
	}
	if len(ports) > 0 {
		why = append(why, nearest(len(ports), func(i int) []string { return portMisses(ports[i], c) })...)
	}
	return why
}

// nearest returns the shortest of n lists of misses: none if one is empty.
func nearest(n int, misses func(int) []string) []string {
	var best []string
	for i := range n {
		m := misses(i)
		if len(m) == 0 {
			return nil
		}
		if best == nil || len(m) < len(best) {
			best = m
		}
	}
	return best
}
