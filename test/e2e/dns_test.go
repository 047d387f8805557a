package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/test/cluster"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// dnsOut is what `svctrace SERVICE --probe=dns -o json` prints: the
// resolution and the connections (the queries', then the probe's).
type dnsOut struct {
	Resolution struct {
		Names []struct {
			Name    string
			Addrs   []netip.Addr
			Queries []struct {
				Name, Type, Rcode, Failure string
				Endpoint                   string
			}
		}
		Findings []report.Finding
	}
	Conns []dnsConn
}

// dnsConn is what the stories read of a connection.
type dnsConn struct {
	Verdict      string
	VIP          string `json:"vip"`
	EndpointName string `json:"endpoint_name"`
	Cause        string
	Blame        string
	DNS          []dnsMessage
}

// dnsMessage is a DNS message a connection carried (--dns-questions).
type dnsMessage struct {
	Name, Type, Rcode   string
	Response, Truncated bool
	Answers             int
}

// carried reports whether a connection of conns carried the DNS message m.
func carried(conns []dnsConn, m dnsMessage) bool {
	for _, c := range conns {
		if slices.Contains(c.DNS, m) {
			return true
		}
	}
	return false
}

// finding is the resolution's finding with code, or nil.
func (o dnsOut) finding(code report.Code) *report.Finding {
	for i, f := range o.Resolution.Findings {
		if f.Code == code {
			return &o.Resolution.Findings[i]
		}
	}
	return nil
}

// TestDNSStories: a Service's name resolved from a client Pod as its
// resolver does, against real CoreDNS serving the cluster domain from the
// API server as kube-system/kube-dns, each query traced through kube-dns's
// DNAT. Each story's fault is checked without svctrace first (a query from
// the client's namespace), and its finding written before svctrace ran.
func TestDNSStories(t *testing.T) {
	cluster.RequireCoreDNS(t)
	for _, mode := range []cluster.Mode{cluster.IPTables, cluster.NFTables} {
		t.Run(string(mode), func(t *testing.T) {
			c := cluster.Up(t, cluster.Options{Mode: mode})
			dnsStories(t, c)
		})
	}
}

func dnsStories(t *testing.T, c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	kubeDNS, err := c.StartDNS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddPod(ctx, pod(shop, "web-1", "web", lab.ModeHTTP, true)); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CreateService(ctx, service("web", "10.96.5.10", map[string]string{"app": "web"}, intstr.FromString("http")))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEndpoints(ctx, svc, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitRules(ctx, "Service shop/web", func(rules string) bool { return strings.Contains(rules, "10.96.5.10") }); err != nil {
		t.Fatal(err)
	}
	client := func(ns, name string, etc map[string]string) *cluster.Pod {
		spec := pod(ns, name, "client", lab.ModeHTTP, true)
		spec.Etc = etc
		p, err := c.AddPod(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	front := client("front", "client-1", map[string]string{"resolv.conf": cluster.PodResolvConf("front")})
	stale := client(shop, "client-2", map[string]string{"resolv.conf": cluster.PodResolvConf(shop), "hosts": "10.96.5.99 web.shop\n"})
	hardCoded := client(shop, "client-3", map[string]string{"resolv.conf": "nameserver 10.96.5.77\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"})
	run := func(t *testing.T, from *cluster.Pod) dnsOut {
		t.Helper()
		return probeDNS(t, c, "web", from)
	}
	// The fault without svctrace: the short name from front is NXDOMAIN,
	// web.shop is the ClusterIP.
	if rcode, addrs := ask(t, front.NS, "web.front.svc.cluster.local.", cluster.DNSClusterIP, ""); rcode != "NXDOMAIN" {
		t.Fatalf("web.front.svc.cluster.local from front: %s %v, want NXDOMAIN", rcode, addrs)
	}
	if rcode, addrs := ask(t, front.NS, "web.shop.svc.cluster.local.", cluster.DNSClusterIP, ""); rcode != "NOERROR" || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("10.96.5.10")}) {
		t.Fatalf("web.shop.svc.cluster.local from front: %s %v, want the ClusterIP", rcode, addrs)
	}

	t.Run("dns-short-name-from-another-namespace", func(t *testing.T) {
		out := run(t, front)
		f := out.finding(report.DNSOtherNamespace)
		if f == nil || !strings.Contains(f.Summary, `from namespace front, "web" does not resolve`) || !strings.Contains(f.Summary, "ask for web.shop") {
			t.Errorf("want %s saying front and web.shop: %+v", report.DNSOtherNamespace, out.Resolution.Findings)
		}
		if got := out.Resolution.Names[1].Addrs; !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.96.5.10")}) {
			t.Errorf("web.shop resolved to %v, want the ClusterIP", got)
		}
		answered := false
		for _, q := range out.Resolution.Names[1].Queries {
			answered = answered || strings.Contains(q.Endpoint, "kube-system/coredns-0 ")
		}
		if !answered {
			t.Errorf("no query of web.shop says CoreDNS's Pod answered it: %+v", out.Resolution.Names[1].Queries)
		}
		queries, probed := 0, 0
		for _, cn := range out.Conns {
			switch {
			case cn.VIP == cluster.DNSClusterIP+":53" && cn.Verdict == "answered" && strings.Contains(cn.EndpointName, "kube-system/coredns-0 "):
				queries++
			case cn.VIP == "10.96.5.10:80" && cn.Verdict == "answered":
				probed++
			}
		}
		if queries == 0 || probed != 1 {
			t.Errorf("%d queries traced through kube-dns to coredns-0 and %d probes answered, want some and 1: %+v", queries, probed, out.Conns)
		}
		// The kernel read the queries' questions and answers' codes.
		for _, m := range []dnsMessage{{Name: "web.front.svc.cluster.local.", Type: "A"}, {Name: "web.front.svc.cluster.local.", Type: "A", Rcode: "NXDOMAIN", Response: true},
			{Name: "web.shop.svc.cluster.local.", Type: "A", Rcode: "NOERROR", Response: true, Answers: 1}} {
			if !carried(out.Conns, m) {
				t.Errorf("no query traced carried %+v: %+v", m, out.Conns)
			}
		}
	})

	t.Run("dns-recorded-then-analyzed", func(t *testing.T) {
		// -w keeps what --probe=dns printed: analyze prints it again.
		rec := filepath.Join(t.TempDir(), "dns.svctrace")
		live := probeDNS(t, c, "web", front, "-w", rec)
		analyzed := runDNS(t, exec.Command(svctrace(t), "analyze", rec, "-o", "json"))
		if !reflect.DeepEqual(analyzed, live) {
			t.Errorf("analyze printed\n%+v\nthe live run\n%+v", analyzed, live)
		}
		if live.finding(report.DNSOtherNamespace) == nil || len(live.Conns) < 2 {
			t.Errorf("the live run found no %s or traced too little: %+v", report.DNSOtherNamespace, live)
		}
	})

	t.Run("dns-tracing-kube-dns-names-its-queries", func(t *testing.T) {
		for _, questions := range []bool{true, false} {
			args := []string{"kube-dns", "-n", "kube-system", "--kubeconfig", c.Kubeconfig, "--count", "1", "--duration", "30s",
				"--timeout", "1500ms", "-o", "json", fmt.Sprintf("--dns-questions=%v", questions)}
			out := tracing(t, c, args, func() {
				if rcode, _ := ask(t, front.NS, "web.shop.svc.cluster.local.", cluster.DNSClusterIP, ""); rcode != "NOERROR" {
					t.Errorf("the query got %q, want NOERROR", rcode)
				}
			})
			var conns []dnsConn
			for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
				var cn dnsConn
				if strings.Contains(line, `"kind":"connection"`) && json.Unmarshal([]byte(line), &cn) == nil {
					conns = append(conns, cn)
				}
			}
			want := []dnsMessage{{Name: "web.shop.svc.cluster.local.", Type: "A"}, {Name: "web.shop.svc.cluster.local.", Type: "A", Rcode: "NOERROR", Response: true, Answers: 1}}
			if len(conns) != 1 || conns[0].Verdict != "answered" || !strings.Contains(conns[0].EndpointName, "kube-system/coredns-0 ") {
				t.Fatalf("--dns-questions=%v: want one query answered by coredns-0:\n%s", questions, out)
			}
			if got := conns[0].DNS; questions && !slices.Equal(got, want) || !questions && got != nil {
				t.Errorf("--dns-questions=%v: the connection carried %+v\n%s", questions, got, out)
			}
		}
	})

	t.Run("dns-stale-hosts-entry", func(t *testing.T) {
		out := run(t, stale)
		f := out.finding(report.DNSWrongAddress)
		if f == nil || f.Object != "the Pod's /etc/hosts" || !slices.Contains(f.Evidence, "/etc/hosts line 1: 10.96.5.99 web.shop") ||
			!strings.HasPrefix(f.Summary, "web.shop resolves to 10.96.5.99, not to its ClusterIP (10.96.5.10)") {
			t.Errorf("want %s blaming the Pod's /etc/hosts line 1: %+v", report.DNSWrongAddress, out.Resolution.Findings)
		}
	})

	t.Run("dns-nameserver-not-the-cluster-dns", func(t *testing.T) {
		out := run(t, hardCoded)
		f := out.finding(report.DNSNameserverNotCluster)
		if f == nil || !strings.Contains(f.Summary, "the nameserver is 10.96.5.77, not the cluster DNS Service (10.96.0.10)") || f.Severity != report.Problem {
			t.Errorf("want %s: %+v", report.DNSNameserverNotCluster, out.Resolution.Findings)
		}
		if f := out.finding(report.DNSNoAnswer); f == nil || f.Object != "nameserver 10.96.5.77" {
			t.Errorf("want %s on nameserver 10.96.5.77: %+v", report.DNSNoAnswer, out.Resolution.Findings)
		}
	})

	t.Run("dns-kube-dns-without-ready-endpoints", func(t *testing.T) {
		if err := c.SetReady(ctx, kubeDNS.Pod, false); err != nil {
			t.Fatal(err)
		}
		defer func() {
			c.SetReady(ctx, kubeDNS.Pod, true)
			kubeDNS.WaitReady(ctx)
		}()
		// kube-proxy rejects what is sent to a Service without endpoints.
		if err := c.WaitService(ctx, kubeDNS.Service, nil); err != nil {
			t.Fatal(err)
		}
		if rcode, _ := ask(t, front.NS, "web.shop.svc.cluster.local.", cluster.DNSClusterIP, ""); rcode != "" {
			t.Fatalf("a query with kube-dns unready got %s, want no answer", rcode)
		}
		out := run(t, front)
		f := out.finding(report.DNSNoAnswer)
		if f == nil || f.Object != "Service kube-system/kube-dns" || !strings.Contains(f.Summary, "has no ready endpoint on udp 53") {
			t.Errorf("want %s blaming kube-dns's endpoints: %+v", report.DNSNoAnswer, out.Resolution.Findings)
		}
		rejected := 0
		for _, cn := range out.Conns {
			if cn.VIP == cluster.DNSClusterIP+":53" && cn.Verdict == "rejected" {
				rejected++
			}
		}
		if rejected == 0 {
			t.Errorf("no query traced as rejected: %+v", out.Conns)
		}
	})

	t.Run("dns-coredns-pod-does-not-answer", func(t *testing.T) {
		// CoreDNS hangs while its Pod stays Ready: the readiness probe
		// has not caught it yet.
		if err := kubeDNS.Pause(); err != nil {
			t.Fatal(err)
		}
		defer kubeDNS.Resume()
		if rcode, _ := ask(t, front.NS, "web.shop.svc.cluster.local.", cluster.DNSClusterIP, ""); rcode != "" {
			t.Fatalf("a query with CoreDNS stopped got %s, want no answer", rcode)
		}
		out := run(t, front)
		f := out.finding(report.DNSNoAnswer)
		if f == nil || f.Object != "Pod kube-system/coredns-0" ||
			!strings.Contains(f.Summary, fmt.Sprintf("kube-dns's DNAT sent them to Pod kube-system/coredns-0 (%s:53), which is ready yet did not answer", kubeDNS.Pod.IP)) {
			t.Errorf("want %s blaming Pod kube-system/coredns-0: %+v", report.DNSNoAnswer, out.Resolution.Findings)
		}
		silent := 0
		for _, cn := range out.Conns {
			if cn.VIP == cluster.DNSClusterIP+":53" && cn.Verdict == "no-reply" && strings.Contains(cn.EndpointName, "kube-system/coredns-0 ") {
				silent++
			}
		}
		if silent == 0 {
			t.Errorf("no query traced to coredns-0 without a reply: %+v", out.Conns)
		}
	})

	t.Run("dns-truncated-answer-tcp-fallback-fails", func(t *testing.T) {
		// A headless Service with 40 endpoints: its A answer (about 660
		// bytes) is more than UDP without EDNS carries (512), and kube-dns
		// without its TCP port leaves the resolver's retry nowhere to go.
		big, err := c.CreateService(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: shop, Name: "big"},
			Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}})
		if err != nil {
			t.Fatal(err)
		}
		var addrs []netip.Addr
		for a, i := c.PodRange(cluster.NodeName).Addr(), 0; i < 240; i++ {
			if a = a.Next(); i >= 200 {
				addrs = append(addrs, a)
			}
		}
		ready := true
		if err := c.HandMadeSlice(ctx, big, "statefulset-demo", 80, addrs, &ready, &ready, ""); err != nil {
			t.Fatal(err)
		}
		udpOnly := kubeDNS.Service.DeepCopy()
		udpOnly.Spec.Ports = udpOnly.Spec.Ports[:1]
		if _, err := c.Client.CoreV1().Services("kube-system").Update(ctx, udpOnly, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			svc, err := c.Client.CoreV1().Services("kube-system").Get(ctx, "kube-dns", metav1.GetOptions{})
			if err == nil {
				svc.Spec.Ports = kubeDNS.Service.Spec.Ports
				_, err = c.Client.CoreV1().Services("kube-system").Update(ctx, svc, metav1.UpdateOptions{})
			}
			if err == nil {
				err = kubeDNS.WaitReady(ctx)
			}
			if err != nil {
				t.Errorf("restoring kube-dns's TCP port: %v", err)
			}
		}()
		// The fault without svctrace: over UDP the answer is truncated;
		// over TCP nothing answers, once kube-proxy has taken the port away.
		name := "big.shop.svc.cluster.local."
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			rcode, _ := ask(t, front.NS, name, cluster.DNSClusterIP, "tcp")
			if rcode == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a TCP query to kube-dns without its TCP port still got %s", rcode)
			}
		}
		if rcode, got := ask(t, front.NS, name, cluster.DNSClusterIP, "udp-truncated"); rcode != "NOERROR" || len(got) >= len(addrs) {
			t.Fatalf("%s over UDP: %s with %d of %d addresses, want a truncated NOERROR", name, rcode, len(got), len(addrs))
		}
		out := probeDNS(t, c, "big", front)
		f := out.finding(report.DNSTruncatedTCPFails)
		if f == nil || f.Object != "Service kube-system/kube-dns" || !slices.Contains(f.Evidence, "Service kube-system/kube-dns has no TCP port 53") ||
			!strings.Contains(f.Summary, "the answer for "+name+" A was too big for UDP (truncated) and the resolver's TCP retry to 10.96.0.10:53 failed") {
			t.Errorf("want %s blaming kube-dns's missing TCP port: %+v", report.DNSTruncatedTCPFails, out.Resolution.Findings)
		}
		if f := out.finding(report.DNSNoAnswer); f != nil {
			t.Errorf("the failed TCP retry is also called %s: %+v", report.DNSNoAnswer, f)
		}
		// The kernel read the truncated answer's header: TC, and how
		// many records fit.
		truncated := false
		for _, cn := range out.Conns {
			for _, m := range cn.DNS {
				truncated = truncated || (m.Name == name && m.Type == "A" && m.Response && m.Truncated && m.Answers > 0 && m.Answers < len(addrs))
			}
		}
		if !truncated {
			t.Errorf("no query traced carried the truncated answer for %s: %+v", name, out.Conns)
		}
	})

	t.Run("dns-nodelocal-dnscache", func(t *testing.T) {
		cache, err := c.StartNodeLocalDNS(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conf := strings.Replace(cluster.PodResolvConf(shop), cluster.DNSClusterIP, cluster.NodeLocalDNS, 1)
		viaCache := client(shop, "client-4", map[string]string{"resolv.conf": conf})
		if rcode, _ := ask(t, viaCache.NS, "web.shop.svc.cluster.local.", cluster.NodeLocalDNS, ""); rcode != "NOERROR" {
			t.Fatalf("NodeLocal DNSCache answered %q, want NOERROR", rcode)
		}
		out := run(t, viaCache)
		f := out.finding(report.DNSNodeLocal)
		if f == nil || !strings.Contains(f.Summary, "the Pod asks "+cluster.NodeLocalDNS+", a link-local address: NodeLocal DNSCache on the node") ||
			strings.Contains(f.Summary, "(it answered 0 of") {
			t.Errorf("want %s, its queries answered: %+v", report.DNSNodeLocal, out.Resolution.Findings)
		}
		if got := out.Resolution.Names[1].Addrs; !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.96.5.10")}) {
			t.Errorf("web.shop through the cache resolved to %v, want the ClusterIP", got)
		}
		if out.finding(report.DNSNameserverNotCluster) != nil {
			t.Errorf("the cache's address is called not the cluster DNS: %+v", out.Resolution.Findings)
		}

		// The cache's Pod is gone: its address stays, nothing listens.
		cache.Stop()
		if rcode, _ := ask(t, viaCache.NS, "web.shop.svc.cluster.local.", cluster.NodeLocalDNS, ""); rcode != "" {
			t.Fatalf("a query to the stopped cache got %s, want none", rcode)
		}
		out = run(t, viaCache)
		f = out.finding(report.DNSNoAnswer)
		if f == nil || f.Object != "NodeLocal DNSCache "+cluster.NodeLocalDNS ||
			!strings.Contains(f.Summary, "nothing on the node listens on udp "+cluster.NodeLocalDNS+":53: the cache is not running here") {
			t.Errorf("want %s saying nothing listens on the cache's address: %+v", report.DNSNoAnswer, out.Resolution.Findings)
		}
	})
}

// ask sends one A query for name from ns to the DNS server at server
// (port 53): its rcode ("" without an answer) and addresses. how is ""
// (UDP, a truncated answer asked again over TCP), "tcp", or
// "udp-truncated" (UDP only, a truncated answer taken as it is).
func ask(t *testing.T, ns nf.NetNS, name, server, how string) (string, []netip.Addr) {
	t.Helper()
	var rcode string
	var addrs []netip.Addr
	nf.InNetNS(ns, func() error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		cl := &dns.Client{Timeout: 2 * time.Second}
		if how == "tcp" {
			cl.Net = "tcp"
		}
		r, _, err := cl.Exchange(m, net.JoinHostPort(server, "53"))
		if err == nil && r.Truncated && how == "" {
			cl.Net = "tcp"
			r, _, err = cl.Exchange(m, net.JoinHostPort(server, "53"))
		}
		if err != nil {
			return err
		}
		rcode = dns.RcodeToString[r.Rcode]
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				ip, _ := netip.AddrFromSlice(a.A)
				addrs = append(addrs, ip.Unmap())
			}
		}
		return nil
	})
	return rcode, addrs
}

// probeDNS runs svctrace SERVICE --probe=dns from Pod from, as an operator
// would on the node, and reads its JSON lines.
func probeDNS(t *testing.T, c *cluster.Cluster, service string, from *cluster.Pod, extra ...string) dnsOut {
	t.Helper()
	args := append([]string{"netns", "exec", filepath.Base(c.Node.Path), svctrace(t), service, "-n", shop, "--node", cluster.NodeName,
		"--kubeconfig", c.Kubeconfig, "--probe=dns", "--from", fmt.Sprintf("pod/%s/%s", from.Namespace, from.Name),
		"--timeout", "1500ms", "--duration", "60s", "-o", "json"}, extra...)
	out := runDNS(t, exec.Command("ip", args...))
	t.Logf("svctrace --probe=dns from %s/%s: %d connections", from.Namespace, from.Name, len(out.Conns))
	return out
}

// runDNS runs cmd, svctrace printing JSON lines, and reads the resolution
// and the connections from them.
func runDNS(t *testing.T, cmd *exec.Cmd) dnsOut {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("%s: %v\n%s%s", cmd, err, raw, stderr.String())
	}
	var out dnsOut
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var kind struct{ Kind string }
		json.Unmarshal([]byte(line), &kind)
		switch kind.Kind {
		case "resolution":
			if err := json.Unmarshal([]byte(line), &out.Resolution); err != nil {
				t.Fatal(err)
			}
		case "connection":
			var cn dnsConn
			if err := json.Unmarshal([]byte(line), &cn); err != nil {
				t.Fatal(err)
			}
			out.Conns = append(out.Conns, cn)
		}
	}
	if len(out.Resolution.Names) != 3 {
		t.Fatalf("no resolution of the name's three forms:\n%s\n%s", raw, stderr.String())
	}
	t.Logf("%s:\n%s%s", cmd, raw, stderr.String())
	return out
}
