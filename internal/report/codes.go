package report

// Code names a kind of finding. docs/json.md lists every code; a test keeps
// the two in step.
type Code string

// The findings' codes.
const (
	// The Service's selector and its Pods.
	SelectorMatchesNoPod       Code = "selector-matches-no-pod"       // no Pod in the namespace has the selector's labels
	PodsInOtherNamespace       Code = "pods-in-other-namespace"       // Pods with those labels exist, in another namespace
	NoReadyPods                Code = "no-ready-pods"                 // every endpoint is not ready
	SomePodsNotReady           Code = "some-pods-not-ready"           // some endpoints are not ready
	NoSelectorNoEndpointSlices Code = "no-selector-no-endpointslices" // no selector and no EndpointSlice of one's own
	ManualEndpoints            Code = "manual-endpoints"              // no selector: EndpointSlices written by hand
	Headless                   Code = "headless"                      // clusterIP: None, nothing to translate
	ExternalName               Code = "externalname"                  // a DNS alias, no address
	SessionAffinity            Code = "session-affinity"              // ClientIP affinity keeps a client on one endpoint
	ExternalLocalNoEndpoint    Code = "external-local-no-endpoint"    // externalTrafficPolicy: Local, no ready endpoint here
	InternalLocalNoEndpoint    Code = "internal-local-no-endpoint"    // internalTrafficPolicy: Local, no ready endpoint here
	TargetPortNotExposed       Code = "targetport-not-exposed"        // a numeric targetPort no container declares
	TargetPortNameUnknown      Code = "targetport-name-unknown"       // a named targetPort no container declares
	TargetPortWrongProtocol    Code = "targetport-wrong-protocol"     // the targetPort is declared with another protocol
	TargetPortNotDeclared      Code = "targetport-not-declared"       // the Pods declare no container port at all
	// kube-proxy's rules on this node.
	NoKubeProxyRules       Code = "no-kube-proxy-rules"      // no kube-proxy rules at all
	NoRulesForService      Code = "no-rules-for-service"     // rules, but none for this Service
	KubeProxyRejects       Code = "kube-proxy-rejects"       // kube-proxy rejects or drops the Service's traffic
	StaleDNAT              Code = "stale-dnat"               // a rule translates to an address that is no endpoint
	EndpointsNotProgrammed Code = "endpoints-not-programmed" // an endpoint has no rule yet
	RulesetUnreadable      Code = "ruleset-unreadable"       // the rules could not be read
	IPVS                   Code = "ipvs"                     // kube-proxy's ipvs mode, not read
	NodePortAddresses      Code = "nodeport-addresses"       // NodePorts accepted on some addresses only
	OtherProxy             Code = "other-proxy"              // the Service names another proxy than kube-proxy
	// conntrack on this node.
	ConntrackFull     Code = "conntrack-full"     // the table is at its limit
	ConntrackStale    Code = "conntrack-stale"    // UDP entries still send to an address that is no serving endpoint
	ConntrackUnlisted Code = "conntrack-unlisted" // the table could not be listed
	// The endpoints: their slices, their Pods, the node's way to them.
	EndpointConditions Code = "endpoint-conditions"  // an endpoint's conditions contradict each other or its Pod
	EndpointNotAPod    Code = "endpoint-not-a-pod"   // an endpoint address no Pod (or another Pod) holds
	NamedPortDiffers   Code = "named-port-differs"   // a named targetPort is different numbers in different Pods
	NoRouteToEndpoint  Code = "no-route-to-endpoint" // the node has no usable route to an endpoint
	PodRangeUnrouted   Code = "pod-range-unrouted"   // an endpoint on another node is reached by the default route, not one for that node's Pod range
	EndpointUnanswered Code = "endpoint-unanswered"  // nothing answers ARP/NDP for an endpoint on the node's link
	NotListening       Code = "not-listening"        // the endpoint's Pod listens on no socket that takes the Service's traffic
	ListensElsewhere   Code = "listens-elsewhere"    // it listens on the port, but on another address (loopback)
	BacklogFull        Code = "backlog-full"         // its listener's accept queue is full
	ForwardingOff      Code = "forwarding-off"       // net.ipv4.ip_forward is 0
	RuleDropsEndpoint  Code = "rule-drops-endpoint"  // a rule not kube-proxy's drops new connections to an endpoint
	QdiscDrops         Code = "qdisc-drops"          // a qdisc on the way to an endpoint has dropped packets
	LinkDown           Code = "endpoint-link-down"   // the node's link toward an endpoint (its Pod's veth) is down
	// The selector's reach.
	SelectorSpansWorkloads Code = "selector-spans-workloads" // the selector matches the Pods of several controllers
	NodeFactsUnread        Code = "node-facts-unread"        // some of the node's facts could not be read
	// Network policies around the endpoints.
	PolicyIsolates      Code = "network-policy-isolates"       // NetworkPolicies isolate the endpoint Pods: what their rules admit
	PolicyAdmitsNothing Code = "network-policy-admits-nothing" // no rule of those admits anything on the target port
	PolicyDenies        Code = "network-policy-denies"         // the policies deny the client named by --from
	PoliciesUnread      Code = "policies-unread"               // some policies could not be read
	// Nothing wrong.
	Healthy Code = "healthy"
)

// Causes only a connection's packets show (report.Explanation.Cause);
// a connection that a finding explains has that finding's code.
const (
	KernelDrop    Code = "kernel-drop"    // the kernel dropped a packet, and its drop reason says why
	RuleDrop      Code = "rule-drop"      // a netfilter rule not kube-proxy's dropped or rejected it
	UnplacedDrop  Code = "unplaced-drop"  // dropped where no rule svctrace read sits, for no reason the kernel gave
	Refused       Code = "refused"        // the endpoint, or a host on the way, answered with a reset or an ICMP error
	NoAnswer      Code = "no-answer"      // the endpoint never answered
	Hairpin       Code = "hairpin"        // a Pod reached itself through the Service, and the bridge sent it nowhere
	ConntrackDrop Code = "conntrack-drop" // conntrack dropped the packet before any rule saw it
	InsertClash   Code = "insert-clash"   // conntrack dropped a packet of a new flow whose entry another packet made
	CTInvalid     Code = "ct-invalid"     // conntrack found a packet INVALID
	StaleEntry    Code = "stale-entry"    // a conntrack entry from before sends the flow to a gone endpoint
	NodePortAddr  Code = "nodeport-addr"  // a NodePort on an address kube-proxy does not accept NodePorts on
	// LostBetweenNodes: a packet left one traced node for another, which
	// never saw it (a timeline stitched from both).
	LostBetweenNodes Code = "lost-between-nodes"
)

// TraceCodes are the causes only packets show, in the order docs/json.md
// lists them.
var TraceCodes = []Code{KernelDrop, RuleDrop, UnplacedDrop, Refused, NoAnswer, Hairpin, ConntrackDrop, InsertClash, CTInvalid, StaleEntry, NodePortAddr, LostBetweenNodes}

// Codes are all the codes, in the order docs/json.md lists them.
var Codes = []Code{
	SelectorMatchesNoPod, PodsInOtherNamespace, NoReadyPods, SomePodsNotReady,
	TargetPortNotExposed, TargetPortNameUnknown, TargetPortWrongProtocol, TargetPortNotDeclared,
	NoKubeProxyRules, NoRulesForService, KubeProxyRejects, StaleDNAT, EndpointsNotProgrammed, OtherProxy,
	ExternalLocalNoEndpoint, InternalLocalNoEndpoint, NoSelectorNoEndpointSlices,
	ManualEndpoints, Headless, ExternalName, IPVS, RulesetUnreadable, Healthy,
	NodePortAddresses, SessionAffinity, ConntrackFull, ConntrackStale, ConntrackUnlisted,
	EndpointConditions, EndpointNotAPod, NamedPortDiffers, NoRouteToEndpoint, PodRangeUnrouted, EndpointUnanswered,
	NotListening, ListensElsewhere, BacklogFull, ForwardingOff, NodeFactsUnread, RuleDropsEndpoint,
	QdiscDrops, LinkDown, SelectorSpansWorkloads, PolicyIsolates, PolicyAdmitsNothing, PolicyDenies, PoliciesUnread,
}

// Findings of a name's resolution (--probe=dns, report.Resolution).
const (
	DNSNameserverNotCluster Code = "dns-nameserver-not-cluster" // the Pod's nameserver is not the cluster DNS
	DNSSearchIncomplete     Code = "dns-search-incomplete"      // its search list lacks the cluster's domains
	DNSNdotsLow             Code = "dns-ndots-low"              // its ndots sends name.namespace upstream first
	DNSOtherNamespace       Code = "dns-other-namespace"        // the short name does not resolve from the client's namespace
	DNSNoAnswer             Code = "dns-no-answer"              // a query got no answer (timeout, ICMP error)
	DNSNotFound             Code = "dns-not-found"              // no form of the name resolved
	DNSWrongAddress         Code = "dns-wrong-address"          // the name resolved to another address than the Service's
	DNSTruncatedTCPFails    Code = "dns-truncated-tcp-fails"    // an answer too big for UDP, and TCP to the DNS fails
	DNSSearchCost           Code = "dns-search-cost"            // queries the search list made before the answer
	DNSNodeLocal            Code = "dns-nodelocal"              // NodeLocal DNSCache answers the Pod's queries
	DNSResolved             Code = "dns-resolved"               // every form resolved to the Service's address
)

// DNSCodes are the resolution's codes, in the order docs/json.md lists them.
var DNSCodes = []Code{DNSNameserverNotCluster, DNSSearchIncomplete, DNSNdotsLow, DNSOtherNamespace, DNSNoAnswer,
	DNSNotFound, DNSWrongAddress, DNSTruncatedTCPFails, DNSSearchCost, DNSNodeLocal, DNSResolved}
