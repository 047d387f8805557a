package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/test/cluster"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// explainStory holds a traced connection's Kubernetes explanation — the
// objects svctrace gathers from the API and the rules it reads on the node
// — against what the story set up.
func explainStory(t *testing.T, c *cluster.Cluster, s *story, conn *flow.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	api := &resolve.API{Client: c.Client, Credentials: "admin", Host: "test"}
	local := resolve.LocalNode{Name: cluster.NodeName, Addrs: resolve.LocalAddrs(c.Node)}
	facts := diagnose.ReadNode(c.Node, local, shop+"/"+s.svc.Name)
	if facts.RulesErr != nil {
		t.Fatal(facts.RulesErr)
	}
	a, err := diagnose.Assess(ctx, api, shop, s.svc.Name, nil, facts)
	if err != nil {
		t.Fatal(err)
	}
	x := a.Explainer
	e := x.Explain(conn)
	if e.Service != shop+"/"+s.svc.Name+":http ("+s.kind()+")" {
		t.Errorf("service %q", e.Service)
	}
	node := cluster.NodeName
	if s.endpointNode != "" {
		node = s.endpointNode
	}
	if conn.Endpoint.IsValid() && !s.noPod {
		if !strings.HasPrefix(e.Pod, shop+"/") || e.Node != node {
			t.Errorf("DNAT to %s not named: pod %q node %q", conn.Endpoint, e.Pod, e.Node)
		}
		if n := x.Name(conn.Endpoint); !strings.HasPrefix(n, "pod "+e.Pod+" on "+node) {
			t.Errorf("endpoint named %q", n)
		}
	}
	if s.cause != "" && e.Cause != s.cause {
		t.Errorf("cause %q, want %q (blame %q)", e.Cause, s.cause, e.Blame)
	}
	if s.evidence != "" && !slices.ContainsFunc(e.Evidence, func(l string) bool { return strings.Contains(l, s.evidence) }) {
		t.Errorf("evidence %q, want a line with %q", e.Evidence, s.evidence)
	}
	if !strings.HasPrefix(e.Blame, s.blame) || (s.blame == "" && e.Blame != "") {
		t.Errorf("blame %q, want it to start with %q", e.Blame, s.blame)
	}
	if !strings.HasPrefix(e.Rule, s.rule) || (s.rule == "" && e.Rule != "") {
		t.Errorf("turned away by %q, want %q", e.Rule, s.rule)
	}
	for _, n := range s.notes {
		if !strings.Contains(strings.Join(e.Notes, "\n"), n) {
			t.Errorf("notes %q, want %q", e.Notes, n)
		}
	}
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// svctrace builds the command once per test binary.
func svctrace(t testing.TB) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "svctrace-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		os.Chmod(dir, 0o755) // analysis runs as nobody too
		binary = filepath.Join(dir, "svctrace")
		out, err := exec.Command("go", "build", "-o", binary, "github.com/svctrace/svctrace/cmd/svctrace").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building svctrace: %v", buildErr)
	}
	return binary
}

// checkStories runs `svctrace check` on the node, as an operator would —
// with the kubeconfig, and with an object dump instead — and holds each
// story's first finding.
func checkStories(t *testing.T, c *cluster.Cluster, ss []*story) {
	bin := svctrace(t)
	dump := filepath.Join(t.TempDir(), "dump.yaml")
	writeDump(t, c, dump)
	traceStories(t, c, ss, dump)
	for _, s := range ss {
		for _, src := range [][]string{{"--kubeconfig", c.Kubeconfig}, {"--objects", dump}} {
			args := append([]string{"netns", "exec", filepath.Base(c.Node.Path), bin, "check", s.svc.Name, "-n", shop, "--node", cluster.NodeName, "-o", "json"}, src...)
			out, err := exec.Command("ip", args...).Output()
			if err != nil && s.finding == "healthy" {
				t.Errorf("%s %s: %v", s.name, src[0], err)
			}
			var d struct {
				Node     string
				Proxy    string `json:"kube_proxy"`
				Read     string `json:"node_facts"`
				Findings []report.Finding
			}
			if err := json.Unmarshal(out, &d); err != nil {
				t.Fatalf("%s %s: %v\n%s", s.name, src[0], err, out)
			}
			// A problem found before any packet is check's exit status 1.
			var exit *exec.ExitError
			if problem := len(d.Findings) > 0 && d.Findings[0].Severity == report.Problem; problem != (errors.As(err, &exit) && exit.ExitCode() == 1) {
				t.Errorf("%s %s: first finding %+v, exit %v", s.name, src[0], d.Findings[0], err)
			}
			// It says what it read on the node: routes to the endpoints
			// of a Service that answered.
			if d.Read == "" || d.Read == "none read" || (s.expect == flow.Answered && !strings.Contains(d.Read, "routes to ")) {
				t.Errorf("%s %s: node facts read %q", s.name, src[0], d.Read)
			}
			if len(d.Findings) == 0 || d.Findings[0].Code != s.finding || !strings.Contains(d.Findings[0].Summary, s.summary) {
				t.Errorf("%s %s: findings %+v, want first %s (%q)", s.name, src[0], d.Findings, s.finding, s.summary)
			}
			if d.Node != cluster.NodeName || !strings.HasPrefix(d.Proxy, string(c.Mode)+" mode") {
				t.Errorf("%s %s: node %q, kube-proxy %q", s.name, src[0], d.Node, d.Proxy)
			}
		}
	}
}

// writeDump saves what `kubectl get
// svc,endpointslices,pods,nodes,namespaces,networkpolicies -A -o yaml` would.
func writeDump(t *testing.T, c *cluster.Cluster, path string) {
	ctx := context.Background()
	var items []any
	add := func(kind, api string, list any, err error) {
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(list)
		var l struct{ Items []map[string]any }
		json.Unmarshal(b, &l)
		for _, it := range l.Items {
			it["kind"], it["apiVersion"] = kind, api
			items = append(items, it)
		}
	}
	svcs, err := c.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	add("Service", "v1", svcs, err)
	sls, err := c.Client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	add("EndpointSlice", "discovery.k8s.io/v1", sls, err)
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	add("Pod", "v1", pods, err)
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	add("Node", "v1", nodes, err)
	nss, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	add("Namespace", "v1", nss, err)
	nps, err := c.Client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	add("NetworkPolicy", "networking.k8s.io/v1", nps, err)
	b, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// traceStory runs `svctrace SERVICE` on the node while the client connects
// once to addr, and returns what it printed. With rec, it also records to
// that file.
func traceStory(t *testing.T, c *cluster.Cluster, s *story, addr netip.AddrPort, src []string, rec string) string {
	t.Helper()
	args := append([]string{s.svc.Name, "-n", shop, "--count", "1", "--duration", "30s", "--timeout", "1500ms"}, src...)
	if rec != "" {
		args = append(args, "-w", rec)
	}
	return tracing(t, c, args, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.get(ctx, c, addr, 1500*time.Millisecond)
	})
}

// tracing runs svctrace with args on the cluster's node, acts once it
// traces, and returns what it printed.
func tracing(t *testing.T, c *cluster.Cluster, args []string, act func()) string {
	t.Helper()
	return tracingOn(t, []nodeRun{{filepath.Base(c.Node.Path), cluster.NodeName, args}}, act)[0]
}

// nodeRun is svctrace run on one node: in its network namespace, as that
// node.
type nodeRun struct {
	netns, node string
	args        []string
}

// tracingOn runs svctrace on each node at once, acts once all of them
// trace, and returns what each printed.
func tracingOn(t *testing.T, runs []nodeRun, act func()) []string {
	t.Helper()
	type running struct {
		cmd    *exec.Cmd
		stdout strings.Builder
		errOut strings.Builder
		done   chan struct{}
	}
	rs := make([]*running, len(runs))
	for i, on := range runs {
		args := append(append([]string{"netns", "exec", on.netns, svctrace(t)}, on.args...), "--node", on.node)
		r := &running{cmd: exec.Command("ip", args...), done: make(chan struct{})}
		rs[i] = r
		r.cmd.Stdout = &r.stdout
		stderr, err := r.cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Act once the observers are attached.
		buf := make([]byte, 4096)
		for !strings.Contains(r.errOut.String(), "Ctrl-C to stop") {
			n, err := stderr.Read(buf)
			r.errOut.Write(buf[:n])
			if err != nil {
				r.cmd.Wait()
				t.Fatalf("svctrace on %s ended before tracing: %s", on.node, r.errOut.String())
			}
		}
		go func() { // keep draining stderr
			defer close(r.done)
			for {
				n, err := stderr.Read(buf)
				r.errOut.Write(buf[:n])
				if err != nil {
					return
				}
			}
		}()
	}
	act()
	outs := make([]string, len(rs))
	for i, r := range rs {
		<-r.done // read to the end before Wait closes the pipe
		err := r.cmd.Wait()
		if err != nil {
			t.Fatalf("svctrace %v on %s: %v\n%s", runs[i].args, runs[i].node, err, r.errOut.String())
		}
		outs[i] = r.stdout.String()
	}
	return outs
}

// traceStories: for every story, the command an operator runs prints the
// story's finding first, then the connection with its verdict, the Pod
// behind the DNAT, the rule that turned it away and the object to blame —
// with objects from the API or from a dump. For a headless Service it
// traces the connection to the Pod itself.
func traceStories(t *testing.T, c *cluster.Cluster, ss []*story, dump string) {
	for _, s := range ss {
		if s.expect == "" && s.finding != "headless" {
			continue // nothing to trace
		}
		want := []string{"\n" + mark(s.finding) + " " + string(s.finding) + ":"}
		if s.orExpect != "" { // the finding's severity may differ with the verdict
			want[0] = " " + string(s.finding) + ":"
		}
		var addr netip.AddrPort
		switch s.expect {
		case "":
			pod, err := c.Client.CoreV1().Pods(shop).Get(context.Background(), s.pods[0].Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			addr = netip.AddrPortFrom(netip.MustParseAddr(pod.Status.PodIP), 8080)
			want = append(want, "✓ answered", "(pod shop/"+s.pods[0].Name+" on "+cluster.NodeName+", ready)")
		case flow.Answered:
			want = append(want, "✓ answered")
		default:
			if s.orExpect == "" { // either verdict: not checked here
				want = append(want, "✗ "+string(s.expect))
			}
		}
		if ((s.expect == flow.Answered || s.expect == flow.Reset || s.expect == flow.NoReply) && !s.untranslated && s.handMade == nil) || s.hairpin || s.forget {
			want = append(want, "(pod shop/"+s.svc.Name+"-", " on "+cluster.NodeName+", ready)")
		}
		if s.expect != "" {
			addr = dest(c, s)
			want = append(want, "service: shop/"+s.svc.Name+":http ("+s.kind()+")")
		}
		if s.rule != "" {
			want = append(want, "rule:   "+s.rule)
		}
		if s.blame != "" {
			want = append(want, "blame:  "+s.blame)
		}
		want = append(want, s.notes...)
		if s.summary != "" {
			want = append(want, s.summary)
		}
		for _, src := range [][]string{{"--kubeconfig", c.Kubeconfig}, {"--objects", dump}} {
			rec := ""
			if src[0] == "--kubeconfig" {
				rec = recordingPath(t)
			}
			out := traceStory(t, c, s, addr, src, rec)
			if rec != "" {
				analyzeAsNobody(t, s, rec, out)
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Errorf("%s %s: output lacks %q:\n%s", s.name, src[0], w, out)
				}
			}
		}
	}
}

// kind is the kind of Service address the story's client connects to.
func (s *story) kind() string {
	if s.via == "" {
		return "ClusterIP"
	}
	return s.via
}

// mark is the text output's mark of a story's first finding.
func mark(finding report.Code) string {
	switch finding {
	case "healthy":
		return "✓"
	case "headless", "externalname":
		return "i"
	case "qdisc-drops": // a warning: the qdisc story pins the Pod's neighbour entry
		return "!"
	}
	return "✗" // a problem
}

// recordingPath is a file a user without privileges can read.
func recordingPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "svctrace-e2e-rec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "story.svctrace")
}

// analyzeAsNobody analyses a recording of the real cluster as an
// unprivileged user, away from the node, and holds it to what the live
// run printed.
func analyzeAsNobody(t *testing.T, s *story, rec, live string) {
	t.Helper()
	if err := os.Chmod(rec, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(svctrace(t), "analyze", rec)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: svctrace analyze as nobody: %v\n%s\n%s", s.name, err, stderr.String(), out)
	}
	if !strings.HasPrefix(string(out), live) {
		t.Errorf("%s: the analysis differs from the live run.\nlive:\n%s\nanalysis:\n%s", s.name, live, out)
	}
}

// The API server goes away while svctrace SERVICE traces: one warning,
// and tracing goes on, naming what it sees with the objects known before.
func TestAPIServerGoesAway(t *testing.T) {
	cluster.RequireBinaries(t)
	c := cluster.Up(t, cluster.Options{Mode: cluster.IPTables})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := healthy(ctx, t, c)
	cmd := exec.Command("ip", "netns", "exec", filepath.Base(c.Node.Path), svctrace(t), s.svc.Name, "-n", shop,
		"--node", cluster.NodeName, "--count", "1", "--duration", "60s", "--timeout", "1500ms", "--kubeconfig", c.Kubeconfig)
	var stdout strings.Builder
	var stderr syncBuilder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor := func(what string) {
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(stderr.String(), what) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q on stderr after 30s:\n%s", what, stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("Ctrl-C to stop")
	c.StopAPIServer()
	waitFor("svctrace: warning: watching the API server failed (")
	if n := strings.Count(stderr.String(), "watching the API server failed"); n != 1 {
		t.Errorf("%d warnings, want one:\n%s", n, stderr.String())
	}
	c.Get(ctx, dest(c, s), "/", 1500*time.Millisecond)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("svctrace: %v\n%s", err, stderr.String())
	}
	for _, w := range []string{"✓ answered", "(pod shop/web-", " on " + cluster.NodeName + ", ready)", "service: shop/web:http (ClusterIP)"} {
		if !strings.Contains(stdout.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, stdout.String())
		}
	}
	if strings.Contains(stderr.String(), "reflector") {
		t.Errorf("client-go's own logging reached stderr:\n%s", stderr.String())
	}
}

// healthy sets up the first story, a Service with two ready pods, and
// waits until kube-proxy sends its traffic to them.
func healthy(ctx context.Context, t testing.TB, c *cluster.Cluster) *story {
	t.Helper()
	s := stories()[0]
	var ready []netip.AddrPort
	for _, ps := range s.pods {
		p, err := c.AddPod(ctx, ps)
		if err != nil {
			t.Fatal(err)
		}
		ready = append(ready, netip.AddrPortFrom(p.IP, 8080))
	}
	svc, err := c.CreateService(ctx, s.svc)
	if err != nil {
		t.Fatal(err)
	}
	s.svc = svc
	if err := c.WaitService(ctx, svc, map[string][]netip.AddrPort{"http": ready}); err != nil {
		t.Fatal(err)
	}
	return s
}

// syncBuilder is a strings.Builder safe for a writer and a reader.
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuilder) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuilder) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
