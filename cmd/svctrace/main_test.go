package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
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

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/tracer"
)

func TestMain(m *testing.M) {
	// The signal tests run this binary as svctrace itself.
	if os.Getenv("SVCTRACE_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	lab.ServeIfChild()
	os.Exit(m.Run())
}

// syncBuffer is a bytes.Buffer safe to poll while a command writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func run(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out, errb syncBuffer
	root := newRoot(&out, &errb)
	root.SetArgs(args)
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// Bad input gets one line saying what to do, and no trace is started.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"trace"}, "give at least one --addr IP:PORT"},
		{[]string{"trace", "--addr", "10.96.0.10"}, "want IP:PORT"},
		{[]string{"trace", "--addr", "10.96.0.10:80", "-o", "yaml"}, "use -o text or -o json"},
		{[]string{"trace", "--addr", "10.96.0.10:80", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"web-service", "--kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig"},
		{[]string{"web-service", "--objects", "/nonexistent/dump.yaml"}, "--objects"},
		{[]string{"check"}, "name one Service"},
		{[]string{"web-service", "-A"}, "name no Service"},
		{[]string{"check", "web-service", "-A"}, "svctrace check -A"},
		{[]string{"-A", "-n", "shop"}, "does not go with -n"},
		{[]string{"-A", "-w", "/tmp/x.svctrace"}, "record the failing Service's"},
		{[]string{"-A", "--probe"}, "--probe connects to one Service"},
		{[]string{"-A", "--summary-every", "-1s"}, "want a positive interval"},
		{[]string{"web-service", "--all-verdicts"}, "go with -A or -n NAMESPACE"},
		{[]string{"check", "-A", "--from", "pod/x"}, "name the Service"},
		{[]string{"-A", "--objects", "/nonexistent/dump.yaml"}, "--objects"},
		{[]string{"web-service", "--from", "pod/x"}, "add --probe"},
		{[]string{"web-service", "--probe=ftp"}, "unknown probe \"ftp\""},
		{[]string{"web-service", "--probe", "--from", "deploy/x"}, "use node or pod/NAME"},
		{[]string{"a", "b"}, "accepts at most 1 arg"},
		{[]string{"lab", "-o", "yaml"}, "use -o text or -o json"},
		{[]string{"trace", "--addr", "10.0.0.1:80", "--bogus"}, "unknown flag: --bogus"},
	} {
		_, _, err := run(context.Background(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: err %q, want one line containing %q", tc.args, err, tc.want)
		}
	}
}

func TestHelpTeachesTheVerdicts(t *testing.T) {
	out, _, err := run(context.Background(), "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"answered", "rejected", "dropped", "reset", "no-reply", "not-translated", "sudo svctrace lab"} {
		if !strings.Contains(out, v) {
			t.Errorf("--help does not mention %q", v)
		}
	}
}

// lab --help lists every scenario the lab runs.
func TestLabHelpListsTheScenarios(t *testing.T) {
	out, _, err := run(context.Background(), "lab", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range lab.Scenarios() {
		if !strings.Contains(out, "  "+s.Name+" ") {
			t.Errorf("lab --help does not list scenario %s", s.Name)
		}
	}
}

type jsonLine struct {
	Kind     string          `json:"kind"`
	Scenario string          `json:"scenario"`
	Verdict  string          `json:"verdict"`
	Client   netip.AddrPort  `json:"client"`
	Endpoint *netip.AddrPort `json:"endpoint"`
	SNAT     *netip.AddrPort `json:"snat"`
	Drop     *struct {
		Hook  string `json:"hook"`
		Stage string `json:"stage"`
	} `json:"drop"`
	Events []struct {
		Hook string `json:"hook"`
		Note string `json:"note"`
	} `json:"events"`
	Conns    int    `json:"connections"`
	Blame    string `json:"blame"`
	Findings []struct {
		Code report.Code `json:"code"`
	} `json:"findings"`
}

func scenario(name string) *lab.Scenario {
	for _, s := range lab.Scenarios() {
		if s.Name == name {
			return &s
		}
	}
	return nil
}

func parseLines(t *testing.T, out string) []jsonLine {
	t.Helper()
	var lines []jsonLine
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l jsonLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not JSON: %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	return lines
}

// `svctrace lab -o json`: one object per connection with the scenario and
// its verdict, a summary last.
func TestLabCommandJSON(t *testing.T) {
	testutil.RequireRoot(t)
	out, errOut, err := run(context.Background(), "lab", "-o", "json")
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	lines := parseLines(t, out)
	want := map[string]string{}
	for _, s := range lab.Scenarios() {
		want[s.Name] = string(s.Expect)
	}
	got := map[string]string{}
	for _, l := range lines[:len(lines)-1] {
		if l.Kind == "diagnosis" {
			if s := scenario(l.Scenario); s == nil || len(l.Findings) == 0 || l.Findings[0].Code != s.Finding {
				t.Errorf("%s: findings %+v", l.Scenario, l.Findings)
			}
			continue
		}
		if l.Kind != "connection" {
			t.Errorf("kind %q", l.Kind)
		}
		if (l.Blame == "") != (l.Verdict == "answered") {
			t.Errorf("%s: %s, blame %q", l.Scenario, l.Verdict, l.Blame)
		}
		got[l.Scenario] = l.Verdict
		if s := scenario(l.Scenario); l.Verdict == "dropped" && (l.Drop == nil || l.Drop.Hook != s.ExpectHook.String()) {
			t.Errorf("%s: drop %+v, want one in %s", l.Scenario, l.Drop, s.ExpectHook)
		}
	}
	if len(got) != len(want) {
		t.Errorf("scenarios %v, want %v", got, want)
	}
	for s, v := range want {
		if got[s] != v {
			t.Errorf("%s: verdict %q, want %q", s, got[s], v)
		}
	}
	if last := lines[len(lines)-1]; last.Kind != "summary" || last.Conns != len(want) {
		t.Errorf("last line %+v, want a summary of %d connections", last, len(want))
	}
}

// `svctrace trace` on a lab node shows a live request's DNAT to a pod and
// the reply's reverse translation.
func TestTraceCommandFollowsARequest(t *testing.T) {
	l := upLab(t)
	s := l.Scenarios[0] // healthy
	vip := s.VIP()

	var out, errb syncBuffer
	root := newRoot(&out, &errb)
	root.SetArgs([]string{"trace", "--netns", l.Node.Spec, "--addr", vip.String(), "--count", "1", "-o", "json", "--duration", "20s"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	waitFor(t, &errb, "tracing "+vip.String())

	if _, err := l.Get(context.Background(), vip, "/", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	lines := parseLines(t, out.String())
	if len(lines) != 2 || lines[0].Kind != "connection" || lines[1].Kind != "summary" {
		t.Fatalf("output %q", out.String())
	}
	c := lines[0]
	if c.Verdict != "answered" || c.Endpoint == nil || !slices.Contains(s.Service.Endpoints, *c.Endpoint) || c.SNAT == nil {
		t.Fatalf("connection %+v", c)
	}
	var dnat, undnat bool
	for _, e := range c.Events {
		dnat = dnat || (e.Hook == "PREROUTING" && e.Note == "DNAT "+vip.String()+" → "+c.Endpoint.String())
		undnat = undnat || (e.Hook == "POSTROUTING" && e.Note == "un-DNAT src "+c.Endpoint.String()+" → "+vip.String())
	}
	if !dnat || !undnat {
		t.Errorf("DNAT shown: %v, reverse translation shown: %v; events %+v", dnat, undnat, c.Events)
	}
}

func waitFor(t *testing.T, b *syncBuffer, s string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q after 10s; got %q", s, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// SIGINT and SIGTERM end a trace cleanly: a summary, exit 0, every link
// gone. SIGKILL gives no summary, but leaves nothing behind either: links
// go with the process's file descriptors, and svctrace pins nothing.
func TestSignalsDetachEverything(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	pinned := func() []string {
		var names []string
		filepath.Walk("/sys/fs/bpf", func(p string, _ os.FileInfo, _ error) error {
			names = append(names, p)
			return nil
		})
		return names
	}
	pinsBefore := pinned()
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			before := testutil.Links(t)
			cmd := exec.Command(os.Args[0], "trace", "--netns", ns, "--addr", "127.0.0.1:7777")
			cmd.Env = append(os.Environ(), "SVCTRACE_TEST_MAIN=1")
			var out, errb syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, &errb, "tracing 127.0.0.1:7777")
			var ours []link.ID
			for id := range testutil.Links(t) {
				if _, ok := before[id]; !ok {
					ours = append(ours, id)
				}
			}
			if len(ours) < 42 {
				t.Fatalf("%d new links while tracing, want 42 observers and a tracepoint", len(ours))
			}
			cmd.Process.Signal(sig)
			err := cmd.Wait()
			if sig == syscall.SIGKILL {
				if err == nil {
					t.Fatal("exit 0 after SIGKILL")
				}
			} else {
				if err != nil {
					t.Fatalf("exit: %v\n%s", err, errb.String())
				}
				if !strings.Contains(out.String(), "0 connection(s)") {
					t.Errorf("no summary after %s: %q", sig, out.String())
				}
			}
			// The kernel releases a dead process's links as it closes its
			// descriptors; allow it a moment.
			deadline := time.Now().Add(5 * time.Second)
			for {
				after := testutil.Links(t)
				var left []link.ID
				for _, id := range ours {
					if _, ok := after[id]; ok {
						left = append(left, id)
					}
				}
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("links %v left attached after %s", left, sig)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if p := pinned(); !slices.Equal(p, pinsBefore) {
				t.Errorf("/sys/fs/bpf after %s: %v, before: %v", sig, p, pinsBefore)
			}
		})
	}
}

// --backend names a backend; an unknown one, or one this kernel cannot run,
// is a one-line error that says what to do.
func TestBackendFlag(t *testing.T) {
	testutil.RequireRoot(t)
	_, _, err := run(context.Background(), "trace", "--addr", "10.96.0.10:80", "--backend", "ebpf-magic")
	if err == nil || !strings.Contains(err.Error(), `unknown backend "ebpf-magic": use netfilter-link, fentry or kprobe`) {
		t.Errorf("unknown backend: %v", err)
	}
	for _, b := range tracer.Backends {
		if tracer.Probe().Backend == b {
			continue // the one that works here
		}
		_, _, err := run(context.Background(), "trace", "--addr", "10.96.0.10:80", "--backend", b, "--duration", "1s")
		if err == nil {
			continue // works here too
		}
		if !strings.Contains(err.Error(), "backend "+b+" does not work here: ") || !strings.Contains(err.Error(), "svctrace kernel-support") || strings.Contains(err.Error(), "\n") {
			t.Errorf("backend %s: %v", b, err)
		}
	}
}

// The traced namespace deleted while tracing: a clean one-line error, the
// connections seen so far reported, nothing left attached.
func TestNetNSDeletedWhileTracing(t *testing.T) {
	testutil.RequireRoot(t)
	ns := testutil.NewNetNS(t)
	before := testutil.Links(t)
	var out, errb syncBuffer
	root := newRoot(&out, &errb)
	root.SetArgs([]string{"trace", "--netns", ns, "--addr", "127.0.0.1:7777", "--duration", "30s"})
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	waitFor(t, &errb, "tracing 127.0.0.1:7777")
	if err := netns.DeleteNamed(ns); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second): // checked every 5 s while idle (live.idleDrain)
		t.Fatal("still tracing 10s after the namespace was deleted")
	}
	if err == nil || !strings.Contains(err.Error(), "the traced network namespace "+ns+" was deleted") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %v", err)
	}
	if !strings.Contains(out.String(), "0 connection(s)") {
		t.Errorf("no summary: %q", out.String())
	}
	for id := range testutil.Links(t) {
		if _, ok := before[id]; !ok {
			t.Errorf("link %d left attached", id)
		}
	}
}
