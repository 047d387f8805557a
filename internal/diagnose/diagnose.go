// Package diagnose finds what is wrong with a Service before any packet
// flows, from its objects and the node's kube-proxy rules, and explains
// traced connections with the same knowledge. Plain functions over data.
package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Input is what Check looks at.
type Input struct {
	View    *resolve.View
	Service *resolve.Service
	// Rules are kube-proxy's rules on this node; nil when they could not be
	// read (RulesErr says why).
	Rules    *kubeproxy.Ruleset
	RulesErr error
	// KubeProxy are the kube-proxy processes in the node's network
	// namespace; KubeProxyKnown is false when svctrace cannot see the
	// node's processes.
	KubeProxy      []int
	KubeProxyKnown bool
	// NodeAddrs are the node's addresses, where its NodePorts are reached.
	NodeAddrs []netip.Addr
	// Bridges are the node's bridges (NodeFacts.Bridges).
	Bridges []resolve.Bridge
	// Conntrack is the node's conntrack table (nil: unread).
	Conntrack *conntrack.Table
	// Net is the node's network: routes, neighbours, sysctls, the
	// endpoint Pods' sockets (nil: unread).
	Net *node.Facts
}

// Check diagnoses the Service: the classic reasons a Service does not work,
// most important first.
func Check(in Input) []report.Finding {
	c := &checker{Input: in, svc: in.Service, ns: in.Service.Namespace}
	c.object = "Service " + c.ns + "/" + c.svc.Name
	switch {
	case c.svc.ExternalName != "":
		c.add(report.Finding{Severity: report.Info, Code: report.ExternalName, Object: c.object,
			Summary: fmt.Sprintf("ExternalName Service: DNS answers with a CNAME to %s; no netfilter path on the node translates it, so there is nothing to trace here", c.svc.ExternalName),
			Next:    []string{"dig " + c.svc.ExternalName, "svctrace trace --addr <address of " + c.svc.ExternalName + ">:PORT"}})
		return c.out
	case c.svc.Headless:
		c.add(report.Finding{Severity: report.Info, Code: report.Headless, Object: c.object,
			Summary: "headless Service (clusterIP: None): no virtual IP and no kube-proxy rules; clients get the Pod IPs from DNS and connect to them directly, so svctrace traces the endpoints themselves",
			Next:    []string{fmt.Sprintf("kubectl get endpointslices -n %s -l kubernetes.io/service-name=%s", c.ns, c.svc.Name)}})
	}
	c.pods()
	c.targetPorts()
	c.namedPorts()
	c.endpoints()
	c.rules()
	c.localPolicy()
	c.policies()
	c.conntrackFull()
	c.staleConntrack()
	sort.SliceStable(c.out, func(i, j int) bool { return rank(c.out[i].Severity) < rank(c.out[j].Severity) })
	// Healthy only when nothing needs a look: a warning is not healthy.
	if len(c.out) == 0 || (c.out[0].Severity != report.Problem && c.out[0].Severity != report.Warning) {
		c.healthy()
	}
	// Notes on how the Service is reached come after the verdict on it.
	c.nodePortAddrs()
	c.affinity()
	c.workloads()
	return c.out
}

func rank(s report.Severity) int {
	return slices.Index([]report.Severity{report.Problem, report.Warning, report.Info, report.OK}, s)
}

type checker struct {
	Input
	svc    *resolve.Service
	ns     string
	object string
	out    []report.Finding
}

func (c *checker) add(f report.Finding) { c.out = append(c.out, f) }

func selectorString(sel map[string]string) string { return labels.SelectorFromSet(sel).String() }

func (c *checker) pods() {
	v := c.View
	sel := selectorString(c.svc.Selector)
	if len(c.svc.Selector) == 0 {
		if len(v.Slices) == 0 {
			c.add(report.Finding{Severity: report.Problem, Code: report.NoSelectorNoEndpointSlices, Object: c.object,
				Summary: "the Service has no selector and no EndpointSlice: nothing tells kube-proxy where to send its traffic",
				Next: []string{fmt.Sprintf("create an EndpointSlice labelled kubernetes.io/service-name=%s in namespace %s", c.svc.Name, c.ns),
					fmt.Sprintf("kubectl get endpointslices -n %s -l kubernetes.io/service-name=%s", c.ns, c.svc.Name)}})
		} else {
			c.add(report.Finding{Severity: report.Info, Code: report.ManualEndpoints, Object: c.object,
				Summary: fmt.Sprintf("the Service has no selector: its endpoints come from %d EndpointSlice(s) managed by someone else", len(v.Slices))})
		}
		return
	}
	if len(v.Pods) == 0 {
		f := report.Finding{Severity: report.Problem, Code: report.SelectorMatchesNoPod, Object: c.object,
			Summary: fmt.Sprintf("the selector %s matches no Pod in namespace %s", sel, c.ns),
			Next:    []string{fmt.Sprintf("kubectl get pods -n %s --show-labels", c.ns)}}
		for _, m := range v.NearMisses {
			f.Evidence = append(f.Evidence, "near miss: "+m.String())
		}
		if len(v.NearMisses) > 0 {
			f.Next = append(f.Next, fmt.Sprintf("fix the labels or the selector: kubectl edit service -n %s %s", c.ns, c.svc.Name))
		}
		c.add(f)
		if len(v.Elsewhere) > 0 {
			var where []string
			var ev []string
			for _, p := range v.Elsewhere {
				if !slices.Contains(where, p.Namespace) {
					where = append(where, p.Namespace)
				}
				ev = append(ev, fmt.Sprintf("pod %s/%s matches the selector", p.Namespace, p.Name))
			}
			c.add(report.Finding{Severity: report.Problem, Code: report.PodsInOtherNamespace, Object: c.object,
				Summary: fmt.Sprintf("Pods matching %s run in namespace %s, but a Service only selects Pods in its own namespace %s",
					sel, strings.Join(where, ", "), c.ns),
				Evidence: ev,
				Next: []string{fmt.Sprintf("kubectl get pods -A -l %s", sel),
					fmt.Sprintf("create the Service in namespace %s, or run the Pods in %s", where[0], c.ns)}})
		}
		return
	}
	var notReady []corev1.Pod
	for _, p := range v.Pods {
		if !podReady(&p) {
			notReady = append(notReady, p)
		}
	}
	if len(notReady) == 0 {
		return
	}
	f := report.Finding{Severity: report.Warning, Code: report.SomePodsNotReady, Object: c.object,
		Summary: fmt.Sprintf("%d of %d Pods matching %s are not Ready: the EndpointSlice controller marks their endpoints not ready, and kube-proxy sends new connections only to ready ones", len(notReady), len(v.Pods), sel)}
	anyReady := slices.ContainsFunc(c.svc.Ports, func(p resolve.Port) bool { return len(p.Ready()) > 0 })
	if len(notReady) == len(v.Pods) && !anyReady {
		f.Severity, f.Code = report.Problem, report.NoReadyPods
		f.Summary = fmt.Sprintf("the selector %s matches %d Pod(s), but none is Ready: the Service has no endpoint to send traffic to", sel, len(v.Pods))
		f.Object = "Pod " + c.ns + "/" + notReady[0].Name
	}
	for i, p := range notReady {
		if i == 5 {
			f.Evidence = append(f.Evidence, fmt.Sprintf("… and %d more", len(notReady)-i))
			break
		}
		f.Evidence = append(f.Evidence, whyNotReady(&p))
	}
	f.Next = []string{fmt.Sprintf("kubectl describe pod -n %s %s", c.ns, notReady[0].Name),
		fmt.Sprintf("kubectl get pods -n %s -l %s", c.ns, sel)}
	c.add(f)
}

func podReady(p *corev1.Pod) bool {
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// whyNotReady describes a Pod that is not Ready: phase, the containers not
// ready with their readiness probe, restarts and waiting reasons.
func whyNotReady(p *corev1.Pod) string {
	parts := []string{fmt.Sprintf("pod %s/%s: phase %s", p.Namespace, p.Name, orUnknown(string(p.Status.Phase)))}
	if p.DeletionTimestamp != nil {
		parts = append(parts, "terminating")
	}
	probes := map[string]*corev1.Probe{}
	for _, ctr := range p.Spec.Containers {
		probes[ctr.Name] = ctr.ReadinessProbe
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Ready {
			continue
		}
		s := fmt.Sprintf("container %s not ready", cs.Name)
		if pr := probes[cs.Name]; pr != nil {
			s += " (readiness probe " + describeProbe(pr) + ")"
		}
		if cs.RestartCount > 0 {
			s += fmt.Sprintf(", %d restarts", cs.RestartCount)
		}
		if w := cs.State.Waiting; w != nil {
			s += ", waiting: " + w.Reason
		}
		if t := cs.LastTerminationState.Terminated; t != nil {
			s += fmt.Sprintf(", last exit %d (%s)", t.ExitCode, t.Reason)
		}
		parts = append(parts, s)
	}
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			parts = append(parts, fmt.Sprintf("%s: %s", cond.Type, cond.Message))
		}
	}
	return strings.Join(parts, "; ")
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func describeProbe(p *corev1.Probe) string {
	switch h := p.ProbeHandler; {
	case h.HTTPGet != nil:
		return fmt.Sprintf("HTTP GET :%s%s", h.HTTPGet.Port.String(), h.HTTPGet.Path)
	case h.TCPSocket != nil:
		return "TCP :" + h.TCPSocket.Port.String()
	case h.GRPC != nil:
		return fmt.Sprintf("gRPC :%d", h.GRPC.Port)
	case h.Exec != nil:
		return "exec " + strings.Join(h.Exec.Command, " ")
	}
	return "unknown"
}

// targetPorts checks each port's targetPort against the selected Pods'
// containers: by number (and protocol) or by name.
func (c *checker) targetPorts() {
	if len(c.View.Pods) == 0 {
		return
	}
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		proto := corev1.Protocol(strings.ToUpper(p.Protocol.String()))
		var declared []string
		var matched, wrongProto int
		var missing []string
		for _, pod := range c.View.Pods {
			ok := false
			for _, ctr := range pod.Spec.Containers {
				for _, cp := range ctr.Ports {
					cpProto := cp.Protocol
					if cpProto == "" {
						cpProto = corev1.ProtocolTCP
					}
					d := fmt.Sprintf("%d/%s", cp.ContainerPort, cpProto)
					if cp.Name != "" {
						d += " (" + cp.Name + ")"
					}
					if !slices.Contains(declared, d) {
						declared = append(declared, d)
					}
					hit := (p.TargetPort.Type == intstr.Int && cp.ContainerPort == p.TargetPort.IntVal) ||
						(p.TargetPort.Type == intstr.String && cp.Name == p.TargetPort.StrVal)
					if hit && cpProto != proto {
						wrongProto++
					} else if hit {
						ok = true
					}
				}
			}
			if ok {
				matched++
			} else {
				missing = append(missing, pod.Namespace+"/"+pod.Name)
			}
		}
		if len(missing) == 0 {
			continue
		}
		f := report.Finding{Object: c.object, Port: p.String(),
			Evidence: []string{"the selected Pods' containers declare " + orNone(declared)},
			Next: []string{fmt.Sprintf("kubectl get pods -n %s -l %s -o jsonpath='{..containerPort}'", c.ns, selectorString(c.svc.Selector)),
				fmt.Sprintf("kubectl edit service -n %s %s   # spec.ports[].targetPort", c.ns, c.svc.Name)}}
		switch {
		case p.TargetPort.Type == intstr.String:
			f.Severity, f.Code = report.Problem, report.TargetPortNameUnknown
			f.Summary = fmt.Sprintf("targetPort %q of %s is not the name of a container port in %s: those Pods get no endpoint for this port",
				p.TargetPort.StrVal, p.String(), strings.Join(missing, ", "))
		case wrongProto > 0:
			f.Severity, f.Code = report.Problem, report.TargetPortWrongProtocol
			f.Summary = fmt.Sprintf("targetPort %d of %s is declared by the Pods with another protocol than %s", p.TargetPort.IntVal, p.String(), proto)
		case len(declared) == 0:
			f.Severity, f.Code = report.Info, report.TargetPortNotDeclared
			f.Summary = fmt.Sprintf("the Pods declare no container ports; make sure they listen on targetPort %d of %s", p.TargetPort.IntVal, p.String())
		default:
			f.Severity, f.Code = report.Problem, report.TargetPortNotExposed
			f.Summary = fmt.Sprintf("targetPort %d of %s is not a port the Pods' containers declare: connections will likely be reset", p.TargetPort.IntVal, p.String())
		}
		if matched > 0 && f.Severity == report.Problem {
			f.Severity = report.Warning
		}
		c.add(f)
	}
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "no ports"
	}
	return strings.Join(s, ", ")
}

// rules compares kube-proxy's rules on this node with the Service.
func (c *checker) rules() {
	if c.svc.Headless || len(c.svc.ClusterIPs) == 0 {
		return
	}
	proxy := "kube-proxy on " + c.nodeName()
	if name := c.svc.ProxyName; name != "" {
		// kube-proxy watches only Services without the label: no rules
		// of its are right, and what the named proxy does is not read.
		c.add(report.Finding{Severity: report.Info, Code: report.OtherProxy, Object: c.object,
			Summary: fmt.Sprintf("%s/%s carries the label %s=%s: kube-proxy leaves it to that proxy, so none of kube-proxy's rules are for it; svctrace reads kube-proxy's rules only, not what %s does with its traffic",
				c.svc.Namespace, c.svc.Name, resolve.LabelServiceProxyName, name, name),
			Next: []string{fmt.Sprintf("kubectl get service -n %s %s --show-labels", c.svc.Namespace, c.svc.Name)}})
		return
	}
	if c.Rules == nil {
		why := "no reason was given"
		if c.RulesErr != nil {
			why = c.RulesErr.Error()
		}
		c.add(report.Finding{Severity: report.Warning, Code: report.RulesetUnreadable, Object: proxy,
			Summary: "kube-proxy's rules on this node could not be read: " + why})
		return
	}
	r := c.Rules
	switch r.Mode {
	case kubeproxy.ModeIPVS:
		c.add(report.Finding{Severity: report.Info, Code: report.IPVS, Object: proxy, Summary: "kube-proxy runs in ipvs mode: " + r.Note,
			Next: []string{"ipvsadm -Ln"}})
		return
	case kubeproxy.ModeNone:
		f := report.Finding{Severity: report.Problem, Code: report.NoKubeProxyRules, Object: proxy,
			Summary:  "kube-proxy has programmed no Service rules on this node",
			Evidence: []string{r.Note},
			Next:     []string{"kubectl -n kube-system get pods -l k8s-app=kube-proxy -o wide" + c.onThisNode()}}
		c.proxyEvidence(&f)
		c.add(f)
		return
	}
	var missingPorts []string
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		pr := r.Port(p.String(), p.Protocol.String())
		if pr == nil {
			missingPorts = append(missingPorts, p.String())
			continue
		}
		for _, rj := range pr.Rejects {
			sev := report.Problem
			if len(p.Ready()) > 0 {
				// kube-proxy is behind, or only some addresses reject.
				sev = report.Warning
			}
			c.add(report.Finding{Severity: sev, Code: report.KubeProxyRejects, Object: c.object, Port: p.String(),
				Summary:  fmt.Sprintf("kube-proxy %ss traffic to %s: %s %s", strings.ToLower(rj.Verdict), rj.Dest, p.String(), rj.Why),
				Evidence: []string{rj.Where + ": " + rj.Rule}})
		}
		want := map[netip.AddrPort]bool{}
		for _, e := range c.reachable(p) {
			want[e.Addr] = true
		}
		var stale, programmed []string
		for _, e := range pr.Endpoints {
			if !want[e.Addr] {
				stale = append(stale, fmt.Sprintf("%s (%s)", e.Addr, e.Chain))
			}
			programmed = append(programmed, e.Addr.String())
		}
		if len(stale) > 0 {
			c.add(report.Finding{Severity: report.Problem, Code: report.StaleDNAT, Object: proxy, Port: p.String(),
				Summary:  fmt.Sprintf("kube-proxy still DNATs %s to addresses that are not ready endpoints: %s", p.String(), strings.Join(stale, ", ")),
				Evidence: []string{"ready endpoints: " + strings.Join(addrs(p.Ready()), ", ")},
				Next:     c.proxyNext()})
		}
		var unprogrammed []string
		for a := range want {
			if !slices.Contains(programmed, a.String()) {
				unprogrammed = append(unprogrammed, a.String())
			}
		}
		sort.Strings(unprogrammed)
		if len(unprogrammed) > 0 && (r.Mode != kubeproxy.ModeNFTables || len(pr.Endpoints) > 0 || len(pr.Rejects) > 0) {
			c.add(report.Finding{Severity: report.Warning, Code: report.EndpointsNotProgrammed, Object: proxy, Port: p.String(),
				Summary: fmt.Sprintf("ready endpoints of %s have no DNAT rule on this node yet: %s", p.String(), strings.Join(unprogrammed, ", ")),
				Next:    c.proxyNext()})
		}
	}
	if len(missingPorts) > 0 {
		f := report.Finding{Severity: report.Problem, Code: report.NoRulesForService, Object: proxy,
			Summary:  fmt.Sprintf("kube-proxy (%s mode) has no rules for %s on this node: its ClusterIP is not translated here", r.Mode, strings.Join(missingPorts, ", ")),
			Evidence: []string{r.Note},
			Next:     c.proxyNext()}
		if rd := r.RangeDrop(c.svc.ClusterIPs[0]); rd != nil {
			f.Evidence = append(f.Evidence, fmt.Sprintf("kube-proxy drops traffic to %s as to any address of %s that it knows no ClusterIP for (%s: %q)",
				c.svc.ClusterIPs[0], rd.Prefix, rd.Where, rd.Why))
		}
		c.proxyEvidence(&f)
		c.add(f)
	}
}

// reachable are the ready endpoints kube-proxy programs on this node: all
// of them, unless internalTrafficPolicy is Local and no external address
// of the Service uses the Cluster policy — then only the ones on this node
// (kube-proxy's "cluster policy chain" is not written).
func (c *checker) reachable(p *resolve.Port) []resolve.Endpoint {
	s := c.svc
	external := p.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
	if !s.InternalLocal || (external && !s.ExternalLocal) {
		return p.Ready()
	}
	var local []resolve.Endpoint
	for _, e := range p.Ready() {
		if e.Node == c.View.LocalNode {
			local = append(local, e)
		}
	}
	return local
}

func addrs(eps []resolve.Endpoint) []string {
	var s []string
	for _, e := range eps {
		s = append(s, e.Addr.String())
	}
	if len(s) == 0 {
		return []string{"none"}
	}
	return s
}

func (c *checker) proxyEvidence(f *report.Finding) {
	if !c.KubeProxyKnown {
		return
	}
	if len(c.KubeProxy) == 0 {
		f.Evidence = append(f.Evidence, "no kube-proxy process runs in this node's network namespace")
		f.Summary += "; kube-proxy is not running here"
	} else {
		f.Evidence = append(f.Evidence, fmt.Sprintf("kube-proxy runs (pid %v) but has not synced this Service", c.KubeProxy))
	}
}

// onThisNode is the field selector of this node's Pods, when its Node is
// known: " --field-selector spec.nodeName=NODE".
func (c *checker) onThisNode() string {
	if c.View.LocalNode == "" {
		return ""
	}
	return " --field-selector spec.nodeName=" + c.View.LocalNode
}

func (c *checker) proxyNext() []string {
	sel := "-l k8s-app=kube-proxy" + c.onThisNode()
	// kubectl logs takes no field selector: name the node's pod through get.
	next := []string{"kubectl -n kube-system get pods " + sel,
		"kubectl -n kube-system logs --tail=50 $(kubectl -n kube-system get pods " + sel + " -o name)"}
	switch c.Rules.Mode {
	case kubeproxy.ModeNFTables:
		next = append(next, "nft list table ip kube-proxy")
	case kubeproxy.ModeIPTablesLegacy:
		next = append(next, "iptables-legacy-save | grep "+c.svc.Namespace+"/"+c.svc.Name)
	default:
		next = append(next, "iptables-save | grep "+c.svc.Namespace+"/"+c.svc.Name)
	}
	return next
}

// localPolicy: traffic policy Local with no ready endpoint on this node.
func (c *checker) localPolicy() {
	node := c.View.LocalNode
	if node == "" || (!c.svc.ExternalLocal && !c.svc.InternalLocal) {
		return
	}
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		local := 0
		for _, e := range p.Ready() {
			if e.Node == node {
				local++
			}
		}
		if local > 0 {
			continue
		}
		var nodes []string
		for _, e := range p.Ready() {
			if !slices.Contains(nodes, e.Node) {
				nodes = append(nodes, e.Node)
			}
		}
		if c.svc.ExternalLocal && (p.NodePort != 0 || len(c.svc.LoadBalancerIPs) > 0 || len(c.svc.ExternalIPs) > 0) {
			c.add(report.Finding{Severity: report.Problem, Code: report.ExternalLocalNoEndpoint, Object: c.object, Port: p.String(),
				Summary:  fmt.Sprintf("externalTrafficPolicy: Local, and no ready endpoint of %s runs on node %s: kube-proxy drops NodePort, external and load-balancer traffic arriving here", p.String(), node),
				Evidence: []string{"ready endpoints run on: " + orNone(nodes)},
				Next: []string{"send the traffic to a node that runs an endpoint, or set externalTrafficPolicy: Cluster",
					fmt.Sprintf("kubectl get pods -n %s -l %s -o wide", c.ns, selectorString(c.svc.Selector))}})
		}
		if c.svc.InternalLocal {
			c.add(report.Finding{Severity: report.Problem, Code: report.InternalLocalNoEndpoint, Object: c.object, Port: p.String(),
				Summary:  fmt.Sprintf("internalTrafficPolicy: Local, and no ready endpoint of %s runs on node %s: connections from this node's Pods to the ClusterIP are dropped", p.String(), node),
				Evidence: []string{"ready endpoints run on: " + orNone(nodes)},
				Next:     []string{"run an endpoint on every node that has clients (e.g. a DaemonSet), or set internalTrafficPolicy: Cluster"}})
		}
	}
}

// nodePortAddrs: kube-proxy accepts NodePorts only on some of the node's
// addresses (--nodeport-addresses; in nftables mode by default the
// primary ones). On the others nothing translates them.
func (c *checker) nodePortAddrs() {
	if c.Rules == nil || len(c.Rules.NodePortAddrs) == 0 {
		return
	}
	var ports []string
	for _, p := range c.svc.Ports {
		if p.NodePort != 0 {
			ports = append(ports, strconv.Itoa(int(p.NodePort)))
		}
	}
	var accepted, refused []string
	for _, a := range c.svc.NodePortAddrs(c.NodeAddrs) {
		if c.Rules.AcceptsNodePort(a) {
			accepted = append(accepted, a.String())
		} else {
			refused = append(refused, a.String())
		}
	}
	if len(ports) == 0 || len(refused) == 0 {
		return
	}
	c.add(report.Finding{Severity: report.Info, Code: report.NodePortAddresses, Object: "kube-proxy on " + c.nodeName(),
		Summary: fmt.Sprintf("kube-proxy accepts NodePort %s only on %s; on this node's other addresses (%s) nothing translates it",
			strings.Join(ports, ", "), orNone(accepted), strings.Join(refused, ", ")),
		Evidence: []string{nodePortRule(c.Rules)},
		Next:     []string{"connect to the NodePort on " + orNone(accepted) + ", or widen kube-proxy's --nodeport-addresses (KubeProxyConfiguration nodePortAddresses)"}})
}

// affinity shows kube-proxy's session-affinity memory for a Service with
// sessionAffinity: ClientIP: which client goes to which endpoint.
func (c *checker) affinity() {
	if !c.svc.ClientAffinity || c.Rules == nil {
		return
	}
	for i := range c.svc.Ports {
		p := &c.svc.Ports[i]
		pr := c.Rules.Port(p.String(), p.Protocol.String())
		if pr == nil || pr.AffinityTimeout == 0 {
			continue
		}
		f := report.Finding{Severity: report.Info, Code: report.SessionAffinity, Object: c.object, Port: p.String(),
			Summary: fmt.Sprintf("sessionAffinity: ClientIP: kube-proxy sends each client's new connections to %s to the endpoint its last one went to, until the client has been idle for %s; it remembers %d client(s)",
				p.String(), duration(pr.AffinityTimeout), len(pr.Affinity))}
		for i, a := range pr.Affinity {
			if i == 10 {
				f.Evidence = append(f.Evidence, fmt.Sprintf("… and %d more", len(pr.Affinity)-i))
				break
			}
			f.Evidence = append(f.Evidence, pinned(a, endpointName(c.svc, a.Endpoint)))
		}
		if len(pr.Affinity) > 0 {
			f.Next = []string{"a client stuck on a bad endpoint moves on once it has been idle for " + duration(pr.AffinityTimeout) +
				", or when that endpoint leaves the EndpointSlice"}
		}
		c.add(f)
	}
}

// duration says d briefly: "3h", "10m30s".
func duration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// pinned describes one remembered client, its endpoint named by name if
// given: "10.99.0.2 → 10.244.0.11:8080 (pod shop/web-1), last connected 4s
// before svctrace read it (recent list KUBE-SEP-…)".
func pinned(a kubeproxy.Affinity, name string) string {
	s := fmt.Sprintf("%s → %s", a.Client, a.Endpoint)
	if name != "" {
		s += " (" + name + ")"
	}
	if a.Idle >= 0 {
		s += fmt.Sprintf(", last connected %s before svctrace read it", a.Idle.Round(time.Second))
	}
	return s + " (" + a.Where + ")"
}

// endpointName is "pod NS/NAME" of the Service's endpoint at a, or "".
func endpointName(s *resolve.Service, a netip.AddrPort) string {
	for _, p := range s.Ports {
		for _, e := range p.Endpoints {
			if e.Addr == a && e.Pod.Name != "" {
				return "pod " + e.Pod.String()
			}
		}
	}
	return ""
}

// nodePortRule says where kube-proxy limits NodePorts to some addresses.
func nodePortRule(r *kubeproxy.Ruleset) string {
	var addrs []string
	for _, p := range r.NodePortAddrs {
		if p.IsSingleIP() {
			addrs = append(addrs, p.Addr().String())
		} else {
			addrs = append(addrs, p.String())
		}
	}
	s := fmt.Sprintf("%s mode, %s: %s", r.Mode, r.NodePortWhere, strings.Join(addrs, ", "))
	if r.Mode == kubeproxy.ModeNFTables {
		s += " (the default in nftables mode is the node's primary addresses)"
	}
	return s
}

func (c *checker) nodeName() string {
	if c.View.LocalNode == "" {
		return "this node"
	}
	return c.View.LocalNode
}

func (c *checker) healthy() {
	var parts []string
	for _, p := range c.svc.Ports {
		parts = append(parts, fmt.Sprintf("%s: %d ready endpoint(s)", p.String(), len(p.Ready())))
	}
	summary := "no problem found in the objects"
	if c.Rules != nil && c.Rules.Mode != kubeproxy.ModeNone {
		summary += " or in kube-proxy's " + string(c.Rules.Mode) + " rules"
	}
	c.add(report.Finding{Severity: report.OK, Code: report.Healthy, Object: c.object, Summary: summary + "; " + strings.Join(parts, ", ")})
}
