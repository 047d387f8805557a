package netpol

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The cluster-wide policies of policy.networking.k8s.io/v1alpha1, as their
// JSON reads: only the fields the evaluation uses. Declared here rather
// than imported from sigs.k8s.io/network-policy-api, whose releases follow
// newer Kubernetes modules than svctrace's.

// AdminNetworkPolicyGroup is the API group and version of both kinds.
const AdminNetworkPolicyGroup = "policy.networking.k8s.io/v1alpha1"

// AdminNetworkPolicy is a cluster administrator's policy: evaluated before
// any NetworkPolicy, lowest priority number first.
type AdminNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              AdminSpec `json:"spec"`
}

// BaselineAdminNetworkPolicy is the cluster's default, evaluated where no
// NetworkPolicy isolates a Pod. There is one, named "default".
type BaselineAdminNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              AdminSpec `json:"spec"`
}

// AdminSpec is the spec of both kinds (a baseline has no priority, and
// its rules no Pass).
type AdminSpec struct {
	Priority int32        `json:"priority,omitempty"`
	Subject  AdminSubject `json:"subject"`
	Ingress  []AdminRule  `json:"ingress,omitempty"`
	Egress   []AdminRule  `json:"egress,omitempty"`
}

// AdminSubject selects the Pods a policy applies to: every Pod of the
// namespaces it selects, or the Pods it selects in them.
type AdminSubject struct {
	Namespaces *metav1.LabelSelector `json:"namespaces,omitempty"`
	Pods       *NamespacedPod        `json:"pods,omitempty"`
}

// NamespacedPod selects Pods by their labels and their namespace's.
type NamespacedPod struct {
	NamespaceSelector metav1.LabelSelector `json:"namespaceSelector"`
	PodSelector       metav1.LabelSelector `json:"podSelector"`
}

// AdminRule is one ingress or egress rule: the first whose peers and ports
// match a connection decides it with its action.
type AdminRule struct {
	Name   string       `json:"name,omitempty"`
	Action string       `json:"action"` // Allow, Deny, or (AdminNetworkPolicy only) Pass
	From   []AdminPeer  `json:"from,omitempty"`
	To     []AdminPeer  `json:"to,omitempty"`
	Ports  *[]AdminPort `json:"ports,omitempty"` // nil: every port
}

// AdminPeer is one peer of a rule: exactly one field is set. Nodes,
// Networks and DomainNames appear in egress rules only.
type AdminPeer struct {
	Namespaces  *metav1.LabelSelector `json:"namespaces,omitempty"`
	Pods        *NamespacedPod        `json:"pods,omitempty"`
	Nodes       *metav1.LabelSelector `json:"nodes,omitempty"`
	Networks    []string              `json:"networks,omitempty"`
	DomainNames []string              `json:"domainNames,omitempty"`
}

// AdminPort is one port of a rule: exactly one field is set.
type AdminPort struct {
	PortNumber *AdminPortNumber `json:"portNumber,omitempty"`
	NamedPort  *string          `json:"namedPort,omitempty"`
	PortRange  *AdminPortRange  `json:"portRange,omitempty"`
}

// AdminPortNumber is a port and its protocol.
type AdminPortNumber struct {
	Protocol corev1.Protocol `json:"protocol"`
	Port     int32           `json:"port"`
}

// AdminPortRange is a range of ports, both ends included.
type AdminPortRange struct {
	Protocol corev1.Protocol `json:"protocol,omitempty"`
	Start    int32           `json:"start"`
	End      int32           `json:"end"`
}

// The rule actions.
const (
	Allow = "Allow"
	Deny  = "Deny"
	Pass  = "Pass"
)
