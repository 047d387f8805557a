package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/test/cluster"
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
				AnsweredBy                 string `json:"answered_by"`
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
	coredns, kubeDNS, err := c.StartDNS(ctx)
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
		return probeDNS(t, c, from)
	}
	// The fault without svctrace: the short name from front is NXDOMAIN,
	// web.shop is the ClusterIP.
	if rcode, addrs := ask(t, front.NS, "web.front.svc.cluster.local."); rcode != "NXDOMAIN" {
		t.Fatalf("web.front.svc.cluster.local from front: %s %v, want NXDOMAIN", rcode, addrs)
	}
	if rcode, addrs := ask(t, front.NS, "web.shop.svc.cluster.local."); rcode != "NOERROR" || !slices.Equal(addrs, []netip.Addr{netip.MustParseAddr("10.96.5.10")}) {
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
			answered = answered || strings.Contains(q.AnsweredBy, "kube-system/coredns-0 ")
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
		if err := c.SetReady(ctx, coredns, false); err != nil {
			t.Fatal(err)
		}
		defer func() {
			c.SetReady(ctx, coredns, true)
			ep := []netip.AddrPort{netip.AddrPortFrom(coredns.IP, 53)}
			c.WaitService(ctx, kubeDNS, map[string][]netip.AddrPort{"dns": ep, "dns-tcp": ep})
		}()
		// kube-proxy rejects what is sent to a Service without endpoints.
		if err := c.WaitService(ctx, kubeDNS, nil); err != nil {
			t.Fatal(err)
		}
		if rcode, _ := ask(t, front.NS, "web.shop.svc.cluster.local."); rcode != "" {
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
}

// ask sends one A query for name from ns to the cluster DNS: its rcode
// ("" without an answer) and addresses.
func ask(t *testing.T, ns nf.NetNS, name string) (string, []netip.Addr) {
	t.Helper()
	var rcode string
	var addrs []netip.Addr
	nf.InNetNS(ns, func() error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		cl := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := cl.Exchange(m, cluster.DNSClusterIP+":53")
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

// probeDNS runs svctrace web --probe=dns from Pod from, as an operator
// would on the node, and reads its JSON lines.
func probeDNS(t *testing.T, c *cluster.Cluster, from *cluster.Pod) dnsOut {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), svctrace(t), "web", "-n", shop, "--node", cluster.NodeName,
		"--kubeconfig", c.Kubeconfig, "--probe=dns", "--from", fmt.Sprintf("pod/%s/%s", from.Namespace, from.Name),
		"--timeout", "1500ms", "--duration", "60s", "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1) {
		t.Fatalf("svctrace: %v\n%s%s", err, raw, stderr.String())
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
	t.Logf("svctrace --probe=dns from %s/%s:\n%s%s", from.Namespace, from.Name, raw, stderr.String())
	return out
}
