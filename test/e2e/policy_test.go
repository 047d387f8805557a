package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// NetworkPolicies enforced by a real engine, kube-router's firewall on the
// node (iptables and ipset; it REJECTs what no policy admits): which policy
// turned the connection away, in which direction, and the rule it lacked.
// Each story's blame was written down before svctrace explained it, and the
// engine's verdict checked without svctrace (the client's connection fails
// only once the policy exists).
func TestPolicyStories(t *testing.T) {
	cluster.RequirePolicyEngine(t)
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := cluster.Up(t, cluster.Options{Mode: mode, Policies: true})
			play(t, c, policyStories(c))
		})
	}
}

func policyStories(c *cluster.Cluster) []*story {
	byName := intstr.FromString("http")
	client := c.ClientIP.String()
	// kube-router REJECTs in its Pod firewall chains (filter table,
	// FORWARD); where the node's ICMP error is rate-limited, the SYN is
	// only seen dropped.
	rejected := func(s *story) *story {
		s.expect, s.orExpect, s.rejected, s.afterDNAT = flow.Rejected, flow.Dropped, true, true
		s.cause, s.rule = report.PolicyDenies, "in table ip filter (iptables-nft), chain KUBE-POD-FW-"
		return s
	}
	guard := func(name, vip string) (*corev1.Service, []cluster.PodSpec) {
		return service(name, vip, map[string]string{"app": name}, byName), []cluster.PodSpec{pod(shop, name+"-1", name, lab.ModeHTTP, true)}
	}
	denied := func(ns, name, to string) string {
		return fmt.Sprintf("NetworkPolicy %s/%s denies %s → Pod shop/%s-1 on node-1, port 8080/TCP, ", ns, name, client, to)
	}
	ss := []*story{}

	svc, pods := guard("guarded", "10.96.3.10")
	ss = append(ss, rejected(&story{name: "policy-default-deny-ingress", svc: svc, pods: pods,
		finding: report.PolicyAdmitsNothing,
		setup:   policies(networkPolicy(shop, "default-deny", map[string]string{"app": "guarded"}, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress})),
		blame:   denied(shop, "default-deny", "guarded") + "at the Pod's ingress: shop/default-deny has no ingress rule; the SYN was rejected by a rule in table ip filter (iptables-nft), chain KUBE-POD-FW-"}))

	svc, pods = guard("fapi", "10.96.3.20")
	front := pod("front", "front-1", "frontend", "", true)
	offByOne := networkPolicy(shop, "from-frontend", map[string]string{"app": "fapi"}, nil)
	offByOne.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "fronted"}}}}}}
	ss = append(ss, rejected(&story{name: "policy-namespace-label-one-value-off", svc: svc, pods: pods, client: &front,
		finding: report.PolicyIsolates,
		setup:   labelled("front", map[string]string{"team": "frontend"}, policies(offByOne)),
		blame: "NetworkPolicy shop/from-frontend denies Pod front/front-1 → Pod shop/fapi-1 on node-1, port 8080/TCP, at the Pod's ingress: no rule admits this client; " +
			"nearest, NetworkPolicy shop/from-frontend ingress rule 1: namespace front has label team=frontend; the selector wants team=fronted"}))

	svc, pods = guard("named", "10.96.3.30")
	webPort := networkPolicy(shop, "web-port", map[string]string{"app": "named"}, nil)
	web := intstr.FromString("web")
	webPort.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &web}}}}
	ss = append(ss, rejected(&story{name: "policy-port-by-an-undeclared-name", svc: svc, pods: pods,
		finding: report.PolicyAdmitsNothing,
		setup:   policies(webPort),
		blame: denied(shop, "web-port", "named") + `at the Pod's ingress: no rule admits this client; nearest, NetworkPolicy shop/web-port ingress rule 1: ` +
			`the rule's port "web"/TCP: no container of Pod shop/named-1 declares a port by that name (it declares http 8080/TCP)`}))

	svc, pods = guard("open", "10.96.3.40")
	back := pod("back", "back-1", "backend", "", true)
	ss = append(ss, rejected(&story{name: "policy-egress-deny-from-the-client", svc: svc, pods: pods, client: &back,
		finding: "healthy",
		setup:   policies(networkPolicy("back", "no-egress", nil, []networkingv1.PolicyType{networkingv1.PolicyTypeEgress})),
		blame:   "NetworkPolicy back/no-egress denies Pod back/back-1 → Pod shop/open-1 on node-1, port 8080/TCP, at the egress of Pod back/back-1: back/no-egress has no egress rule"}))

	svc, pods = guard("edge", "10.96.3.50")
	except := networkPolicy(shop, "from-clients", map[string]string{"app": "edge"}, nil)
	except.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{IPBlock: &networkingv1.IPBlock{CIDR: "10.99.0.0/16", Except: []string{client + "/32"}}}}}}
	ss = append(ss, rejected(&story{name: "policy-ipblock-except-covers-the-client", svc: svc, pods: pods,
		finding: report.PolicyIsolates,
		setup:   policies(except),
		blame:   denied(shop, "from-clients", "edge") + fmt.Sprintf("at the Pod's ingress: no rule admits this client; nearest, NetworkPolicy shop/from-clients ingress rule 1: %s is in ipBlock 10.99.0.0/16 but in its except %s/32", client, client)}))

	// The policy admits the client; the Pod's server accepts no
	// connection: the blame is the Pod, and the policies are said to admit.
	hung := service("stuck", "10.96.3.60", map[string]string{"app": "stuck"}, byName)
	admits := networkPolicy(shop, "from-clients", map[string]string{"app": "stuck"}, nil)
	admits.Name = "stuck-from-clients"
	admits.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.99.0.0/16"}}}}}
	ss = append(ss, &story{name: "policy-admits-while-the-pod-hangs", expect: flow.NoReply, svc: hung,
		pods:    []cluster.PodSpec{pod(shop, "stuck-1", "stuck", lab.ModeHung, true)},
		finding: "backlog-full", setup: policies(admits), cause: report.BacklogFull,
		evidence: fmt.Sprintf("network policies: %s → Pod shop/stuck-1 on node-1, port 8080/TCP: admitted by NetworkPolicy shop/stuck-from-clients ingress rule 1; they are not what stopped it", client),
		blame:    "Pod shop/stuck-1 on node-1 (ready) did not answer on port 8080"})
	return ss
}

func networkPolicy(ns, name string, sel map[string]string, types []networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types}}
}

// policies is a story's setup: create the policies, then wait until
// kube-router runs the Pods' traffic through them.
func policies(nps ...*networkingv1.NetworkPolicy) func(context.Context, *cluster.Cluster, *story, []*cluster.Pod) error {
	return func(ctx context.Context, c *cluster.Cluster, _ *story, _ []*cluster.Pod) error {
		for _, np := range nps {
			if err := c.EnsureNamespace(ctx, np.Namespace); err != nil {
				return err
			}
			if _, err := c.Client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		for _, np := range nps {
			if err := c.WaitPolicy(ctx, np.Namespace, np.Name); err != nil {
				return err
			}
		}
		return nil
	}
}

// labelled labels namespace ns before the rest of the setup.
func labelled(ns string, labels map[string]string, then func(context.Context, *cluster.Cluster, *story, []*cluster.Pod) error) func(context.Context, *cluster.Cluster, *story, []*cluster.Pod) error {
	return func(ctx context.Context, c *cluster.Cluster, s *story, pods []*cluster.Pod) error {
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			return err
		}
		n, err := c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		for k, v := range labels {
			n.Labels[k] = v
		}
		if _, err := c.Client.CoreV1().Namespaces().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			return err
		}
		return then(ctx, c, s, pods)
	}
}
