package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/debugpod"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/test/cluster"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The fake kubelet's containers, by image.
const (
	imageOK      = "test.invalid/svctrace:ok"      // writes its lines, exits 0
	imageHold    = "test.invalid/svctrace:hold"    // runs until deleted
	imageMissing = "test.invalid/svctrace:missing" // cannot be pulled
)

// kubectl svctrace against a real API server, with a fake kubelet (there is
// none in the test bed): the debug Pods it creates, what it makes of their
// output, and that it deletes them — when svctrace ends, when it is
// interrupted, when the Pod cannot start; and that it creates none when it
// should not.
func TestPlugin(t *testing.T) {
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Service web: one endpoint on this node, one on node-2.
	if err := c.AddNode(ctx, otherNode); err != nil {
		t.Fatal(err)
	}
	var eps []netip.AddrPort
	for _, ps := range []cluster.PodSpec{pod(shop, "web-1", "web", lab.ModeHTTP, true), onOtherNode(pod(shop, "web-2", "web", "", true))} {
		p, err := c.AddPod(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, netip.AddrPortFrom(p.IP, 8080))
	}
	svc, err := c.CreateService(ctx, service("web", "10.96.1.30", map[string]string{"app": "web"}, intstr.FromString("http")))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEndpoints(ctx, svc, 2); err != nil {
		t.Fatal(err)
	}
	// svctrace check in the subtests reads kube-proxy's rules: a check
	// before kube-proxy wrote them finds none (no-rules-for-service), and
	// its rules before it saw the endpoints ("has no endpoints") are not
	// them either.
	if err := c.WaitService(ctx, svc, map[string][]netip.AddrPort{"http": eps}); err != nil {
		t.Fatal(err)
	}
	// The one-time set-up the plugin's defaults expect.
	if err := c.Apply(ctx, filepath.Join("..", "..", "deploy", "rbac.yaml")); err != nil {
		t.Fatal(err)
	}
	allowed(ctx, t, c)
	for _, ns := range []string{"svctrace", "debug", "locked"} { // and their default service accounts
		if err := c.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	locked, err := c.Client.CoreV1().Namespaces().Get(ctx, "locked", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	locked.Labels["pod-security.kubernetes.io/enforce"] = "baseline"
	if _, err := c.Client.CoreV1().Namespaces().Update(ctx, locked, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	k := c.StartKubelet(t, "app.kubernetes.io/managed-by="+debugpod.ManagedBy, func(p *corev1.Pod) cluster.Container {
		// Each line says which node's Pod wrote it.
		on := fmt.Sprintf(`"written_on":%q`, p.Spec.NodeName)
		switch p.Spec.Containers[0].Image {
		case imageOK:
			if slices.Contains(p.Spec.Containers[0].Command, string(output.FormatParts)) {
				return cluster.Container{Lines: partsOf(p.Spec.NodeName)}
			}
			return cluster.Container{Lines: []string{`{"kind":"diagnosis",` + on + `}`, "svctrace: warning: from " + p.Spec.NodeName, `{"kind":"connection",` + on + `}`}}
		case imageHold:
			return cluster.Container{Lines: []string{"tracing on " + p.Spec.NodeName}, Hold: true, Final: []string{"summary of " + p.Spec.NodeName}}
		}
		return cluster.Container{Waiting: "ErrImagePull"}
	})
	plugin := pluginBinary(t)
	run := func(args ...string) *exec.Cmd {
		args = append([]string{"netns", "exec", filepath.Base(c.Node.Path), plugin}, args...)
		cmd := exec.Command("ip", append(args, "--kubeconfig", c.Kubeconfig)...)
		cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "SVCTRACE_IMAGE=") })
		return cmd
	}
	created := func() []*corev1.Pod {
		var ps []*corev1.Pod
		for {
			select {
			case p := <-k.Created:
				ps = append(ps, p)
			default:
				slices.SortFunc(ps, func(a, b *corev1.Pod) int { return strings.Compare(a.Spec.NodeName, b.Spec.NodeName) })
				return ps
			}
		}
	}
	// ran runs kubectl svctrace to its end, failing t unless it exits 0:
	// its standard output and error, and the debug Pods it made.
	ran := func(t *testing.T, args ...string) (out []byte, stderr *bytes.Buffer, pods []*corev1.Pod) {
		t.Helper()
		cmd := run(args...)
		stderr = &bytes.Buffer{}
		cmd.Stderr = stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v\n%s%s", err, out, stderr)
		}
		return out, stderr, created()
	}

	t.Run("endpoint nodes, json", func(t *testing.T) {
		out, stderr, pods := ran(t, "web", "-n", shop, "-o", "json", "--image", imageOK)
		if len(pods) != 2 || pods[0].Spec.NodeName != cluster.NodeName || pods[1].Spec.NodeName != otherNode {
			t.Fatalf("debug pods %v, want one on %s and one on %s, where web's endpoints are", podNodes(pods), cluster.NodeName, otherNode)
		}
		for _, p := range pods {
			if err := debugpod.CheckSysadmin(p); err != nil {
				t.Errorf("pod %s as the API server stored it: %v", p.Name, err)
			}
			// Several nodes: each reports in full, to be stitched here.
			want := []string{"svctrace", "web", "-n", shop, "-o", "parts", "--timeout", "5s", "--duration", "1h0m0s"}
			if cmd := p.Spec.Containers[0].Command; !slices.Equal(cmd, want) {
				t.Errorf("pod %s runs %q, want %q", p.Name, cmd, want)
			}
			if p.Namespace != "svctrace" || p.Spec.ServiceAccountName != "default" || !*p.Spec.AutomountServiceAccountToken || p.Spec.Containers[0].Image != imageOK {
				t.Errorf("pod %s/%s: service account %q (token mounted: %v), image %s; want deploy/rbac.yaml's namespace and service account",
					p.Namespace, p.Name, p.Spec.ServiceAccountName, *p.Spec.AutomountServiceAccountToken, p.Spec.Containers[0].Image)
			}
			if d := p.Spec.ActiveDeadlineSeconds; d == nil || *d != 3600+120+120 {
				t.Errorf("pod %s: activeDeadlineSeconds %v, want the trace's hour and the start's and stop's time", p.Name, d)
			}
		}
		// Printed here, as -o json: each node's diagnosis, each node's
		// connection (no other node saw it) marked with its node, the
		// summary of both.
		var kinds, nodes []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var o struct {
				Kind        string
				Node        string
				Nodes       []string
				Connections int
			}
			if err := json.Unmarshal([]byte(l), &o); err != nil {
				t.Fatalf("stdout line %s: %v", l, err)
			}
			kinds = append(kinds, o.Kind)
			switch o.Kind {
			case "diagnosis":
				nodes = append(nodes, "diagnosis on "+o.Node)
			case "connection":
				nodes = append(nodes, "connection across "+strings.Join(o.Nodes, ","))
			case "summary":
				if o.Connections != 2 {
					t.Errorf("summary of %d connections, want 2", o.Connections)
				}
			}
		}
		slices.Sort(nodes)
		if want := []string{"connection across " + cluster.NodeName, "connection across " + otherNode, "diagnosis on " + cluster.NodeName, "diagnosis on " + otherNode}; !slices.Equal(nodes, want) || kinds[len(kinds)-1] != "summary" {
			t.Errorf("stdout: %q (%q), want %q, then the summary:\n%s", nodes, kinds, want, out)
		}
		for _, want := range []string{"svctrace: shop/web on nodes node-1, node-2 (where its endpoints run); each connection stitched across them",
			"[node-1] svctrace: warning: from node-1", "[node-2] svctrace: warning: from node-2", "svctrace: debug pod svctrace/svctrace-node-2-"} {
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr does not say %q:\n%s", want, stderr)
			}
		}
		waitGone(ctx, t, c)
	})

	// -A has no Service to pick nodes by: it runs svctrace -A on the
	// nodes named, and passes on what each prints.
	t.Run("every service on a node", func(t *testing.T) {
		out, stderr, pods := ran(t, "-A", "--node", otherNode, "--summary-every", "30s", "-o", "json", "--image", imageOK)
		if len(pods) != 1 || pods[0].Spec.NodeName != otherNode {
			t.Fatalf("debug pods %v, want one on %s", podNodes(pods), otherNode)
		}
		want := []string{"svctrace", "-A", "-o", "json", "--summary-every", "30s", "--timeout", "5s", "--duration", "1h0m0s"}
		if cmd := pods[0].Spec.Containers[0].Command; !slices.Equal(cmd, want) {
			t.Errorf("pod runs %q, want %q", cmd, want)
		}
		if !strings.Contains(string(out), `"traced_on":"`+otherNode+`"`) || !strings.Contains(stderr.String(), "every Service of every namespace on node "+otherNode) {
			t.Errorf("stdout:\n%s\nstderr:\n%s", out, stderr)
		}
		waitGone(ctx, t, c)
	})

	t.Run("interrupted", func(t *testing.T) {
		cmd := run("web", "-n", shop, "--node", cluster.NodeName, "--image", imageHold, "--duration", "0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		var lines []string
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if len(lines) == 1 {
				cmd.Process.Signal(syscall.SIGINT) // once svctrace runs
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("interrupted: %v, want exit status 0\n%s", err, &stderr)
		}
		want := []string{"tracing on node-1", "summary of node-1"} // what svctrace prints as it stops, too
		if !slices.Equal(lines, want) {
			t.Errorf("stdout %q, want %q", lines, want)
		}
		if pods := created(); len(pods) != 1 || pods[0].Spec.ActiveDeadlineSeconds != nil {
			t.Errorf("debug pods %v, want one, without a deadline (--duration 0)", podNodes(pods))
		}
		waitGone(ctx, t, c)
	})

	t.Run("image cannot be pulled", func(t *testing.T) {
		out, err := run("check", "web", "-n", shop, "--node", otherNode, "--image", imageMissing).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "svctrace: node node-2 cannot pull image "+imageMissing+" (ErrImagePull: fake kubelet: ErrImagePull): build it from the Dockerfile") {
			t.Errorf("%v, want exit status 1 and why:\n%s", err, out)
		}
		if pods := created(); len(pods) != 1 || !slices.Equal(pods[0].Spec.Containers[0].Command[:3], []string{"svctrace", "check", "web"}) {
			t.Errorf("debug pods %v, want one running svctrace check", podNodes(pods))
		}
		waitGone(ctx, t, c)
	})

	// kubectl's own flags reach the API server: --as impersonates (the
	// admin may; oncall is bound by deploy/rbac.yaml, alice by nothing),
	// --request-timeout is taken, and --server with --token needs no
	// kubeconfig at all.
	t.Run("kubectl's flags", func(t *testing.T) {
		out, err := run("check", "web", "-n", shop, "--node", cluster.NodeName, "--image", imageOK, "--as", "oncall", "--request-timeout", "5s", "-v").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "svctrace: shop/web on node node-1") {
			t.Errorf("--as oncall: %v, want the plugin to run as oncall:\n%s", err, out)
		}
		if pods := created(); len(pods) != 1 {
			t.Errorf("--as oncall: debug pods %v, want one", podNodes(pods))
		}
		waitGone(ctx, t, c)
		out, err = run("web", "-n", shop, "--as", "alice", "--request-timeout", "5s").CombinedOutput()
		want := `as alice: not allowed to list services in namespace "shop"`
		if err == nil || !strings.Contains(string(out), want) || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
			t.Errorf("--as alice: %v, want exit status 1 and one line saying %q:\n%s", err, want, out)
		}
		if pods := created(); len(pods) > 0 {
			t.Errorf("--as alice: created debug pods %v", podNodes(pods))
		}

		tok, err := c.Client.CoreV1().ServiceAccounts("svctrace").CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		server := fmt.Sprintf("https://127.0.0.1:%d", cluster.APIServerPort)
		ca := filepath.Join(filepath.Dir(c.Kubeconfig), "ca.crt")
		bare := func(token string) *exec.Cmd {
			cmd := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), svctrace(t), "check", "web", "-n", shop, "--node", cluster.NodeName,
				"--host-root", t.TempDir(), "--server", server, "--token", token, "--certificate-authority", ca, "-o", "json", "-v")
			cmd.Env = append(slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "KUBECONFIG=") }), "HOME="+t.TempDir())
			return cmd
		}
		cmd := bare(tok.Status.Token)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err = cmd.Output()
		if err != nil || !strings.Contains(string(out), `"kind":"diagnosis"`) ||
			!strings.Contains(stderr.String(), "objects from the credentials given on the command line, for "+server) {
			t.Errorf("--server --token: %v, want the diagnosis read with the token:\n%s%s", err, out, &stderr)
		}
		out, err = bare("not-a-token").CombinedOutput()
		if want := "the credentials given on the command line, for " + server + ": the API server at " + server + " rejected these credentials"; err == nil || !strings.Contains(string(out), want) {
			t.Errorf("--token not-a-token: %v, want %q:\n%s", err, want, out)
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"web", "-n", shop, "--image", imageOK, "--pod-namespace", "locked", "--service-account", ""},
				`svctrace: namespace locked does not allow privileged Pods (Pod Security admission enforces "baseline:latest" there)`},
			{[]string{"web", "-n", shop, "--pod-namespace", "debug", "--service-account", "nobody"}, "svctrace: service account debug/nobody not found"},
			{[]string{"web", "-n", shop, "--pod-namespace", "nowhere"}, "svctrace: namespace nowhere not found: create it with kubectl apply -f deploy/rbac.yaml"},
			{[]string{"nosuch", "-n", shop}, `svctrace: service "nosuch" not found in namespace "shop"`},
			{[]string{"web", "-n", shop, "--node", "node-9"}, `svctrace: node "node-9" not found: kubectl get nodes`},
			{[]string{"web", "-n", shop, "--from", "pod/nobody"}, "svctrace: pod shop/nobody not found"},
		} {
			out, err := run(tc.args...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) || strings.Count(strings.TrimSpace(string(out)), "\n") > 0 {
				t.Errorf("%q: %v, want exit status 1 and one line saying %q:\n%s", tc.args, err, tc.want, out)
			}
			if pods := created(); len(pods) > 0 {
				t.Errorf("%q: created debug pods %v", tc.args, podNodes(pods))
			}
		}
	})
}

// partsOf is what svctrace -o parts on node writes of one connection that
// no other node saw.
func partsOf(node string) []string {
	var lines []string
	var b bytes.Buffer
	clock := time.Now().Add(-time.Hour)
	p, _ := output.New(output.FormatParts, &b, output.Options{Wall: func(m uint64) time.Time { return clock.Add(time.Duration(m)) }})
	p.Diagnosis(report.Diagnosis{Service: "shop/web", Node: node})
	client := map[string]string{cluster.NodeName: "10.244.0.50:40000", otherNode: "10.244.99.50:40000"}[node]
	start := uint64(time.Hour - time.Second)
	p.Conn(report.Conn{Conn: &flow.Conn{ID: 1, Proto: nf.TCP, Client: netip.MustParseAddrPort(client), VIP: netip.MustParseAddrPort("10.96.1.30:80"),
		Verdict: flow.Answered, Outcome: flow.Outcome{Kind: flow.Translated}, Start: start, End: start + 1000,
		Steps: []flow.Step{{Time: start, Packet: 1, Kind: nf.KindHook, Hook: nf.PreRouting}}}})
	lines = append(lines, strings.Split(strings.TrimSpace(b.String()), "\n")...)
	return append(lines[:2:2], append([]string{"svctrace: warning: from " + node}, lines[2:]...)...)
}

// allowed checks that deploy/rbac.yaml grants what its comments say: the
// user in its example bindings may run kubectl svctrace, and svctrace in the
// debug Pods may read the Service with the service account.
func allowed(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	type access struct{ verb, group, resource, sub, ns string }
	read := []access{{"get", "", "services", "", shop}, {"list", "discovery.k8s.io", "endpointslices", "", shop},
		{"watch", "", "pods", "", shop}, {"get", "", "nodes", "", ""}, {"list", "", "pods", "", ""},
		{"get", "", "namespaces", "", ""}, {"list", "networking.k8s.io", "networkpolicies", "", shop},
		{"list", "policy.networking.k8s.io", "adminnetworkpolicies", "", ""}}
	// The debug Pods' life, as debugpod.Runner lives it.
	debug := []access{{"create", "", "pods", "", "svctrace"}, {"list", "", "pods", "", "svctrace"}, {"watch", "", "pods", "", "svctrace"},
		{"get", "", "pods", "log", "svctrace"}, {"delete", "", "pods", "", "svctrace"}}
	for user, want := range map[string][]access{"oncall": append(read, debug...), "system:serviceaccount:svctrace:default": read} {
		for _, a := range want {
			r, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
				User:               user,
				ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource, Subresource: a.sub, Namespace: a.ns},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !r.Status.Allowed {
				t.Errorf("deploy/rbac.yaml: %s may not %+v", user, a)
			}
		}
	}
}

// pluginBinary is svctrace under the name kubectl runs it by.
func pluginBinary(t *testing.T) string {
	link := filepath.Join(t.TempDir(), "kubectl-svctrace")
	if err := os.Symlink(svctrace(t), link); err != nil {
		t.Fatal(err)
	}
	return link
}

func podNodes(pods []*corev1.Pod) []string {
	var s []string
	for _, p := range pods {
		s = append(s, p.Namespace+"/"+p.Name+" on "+p.Spec.NodeName)
	}
	return s
}

// waitGone waits until no debug pod is left: the plugin deleted them, and
// the kubelet finished deleting those that ran.
func waitGone(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=" + debugpod.ManagedBy})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range l.Items {
				t.Errorf("debug pod %s/%s left behind (deletion requested: %v)", p.Namespace, p.Name, p.DeletionTimestamp != nil)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
