package lab

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/internal/tracer"
)

var updateFixtures = flag.Bool("update-fixtures", false, "rewrite internal/flow/testdata/lab.jsonl from this run")

func TestMain(m *testing.M) {
	ServeIfChild() // the lab's pod servers are this test binary, started again
	os.Exit(m.Run())
}

// up builds a lab that is removed when the test ends, also when it fails.
func up(t *testing.T) *Lab {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := Up(Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(); err != nil {
			t.Errorf("tearing the lab down: %v", err)
		}
		if left := topo.List(Prefix + l.ID + "-"); len(left) > 0 {
			t.Errorf("namespaces left behind: %v", left)
		}
	})
	return l
}

// blames start the blame line of each scenario's connection, with the
// node's rules in this kube-proxy mode (iptables' nf_tables or legacy
// backend, whichever iptables-restore is).
func blames(mode kubeproxy.Mode) map[string]string {
	backend := "iptables-nft"
	if mode == kubeproxy.ModeIPTablesLegacy {
		backend = "iptables-legacy"
	}
	// The stand-in rule is blamed on the policy it enforces: the lab's
	// client is no Pod, and deny-guarded admits nothing.
	policy := "NetworkPolicy lab/deny-guarded denies 10.99.0.2 → Pod lab/guarded on lab-node, port 8080/TCP, at the Pod's ingress: lab/deny-guarded has no ingress rule; " +
		"the SYN was dropped by a rule in table ip filter (" + backend + `), chain LAB-POLICY, rule 1: -d 10.244.0.14/32 -p tcp -m tcp --dport 8080 -m comment --comment "lab/deny-guarded: stands in for a NetworkPolicy" -j DROP`
	return map[string]string{
		"healthy":           "",
		"no-endpoints":      "Service lab/empty: the selector app=wbe matches no Pod in namespace lab",
		"wrong-targetport":  "Pod lab/web-1 on lab-node (ready): nothing listens on port 9090; targetPort 9090 of lab/wrongport:http is not a port the Pods' containers declare: connections will likely be reset; it listens on",
		"hung-pod":          "Pod lab/hung on lab-node (ready) did not answer on port 8080: its server does not accept connections; the accept queue of 0.0.0.0:8080 is full",
		"policy-drop":       policy,
		"no-proxy-rules":    "kube-proxy on lab-node: kube-proxy (" + string(mode) + " mode) has no rules for lab/unproxied:http on this node",
		"hairpin":           "hairpin: Pod lab/web-2 reached itself through the Service; the DNAT sent its packet back out port veth2 of bridge cbr0",
		"stale-conntrack":   "a conntrack entry made before this trace sends the flow to 10.244.0.19:8080, which is not a serving endpoint of lab/dns:dns now",
		"conntrack-invalid": "conntrack found the client's PSH,ACK INVALID: it had no entry, as its connection's entry was gone",
		"ipv6":              "",
		"ipv4-only-server":  "Pod lab/legacy on lab-node (ready): nothing listens on port 8080 over IPv6; the Pod's IPv4 endpoint is 10.244.0.15:8080: its server listens on port 8080 only on 0.0.0.0:8080",
		"dns-nxdomain":      "",
	}
}

// Every scenario gives its verdict, with the translated endpoint and, where
// the packet dies on the node, the hook. $SVCTRACE_BACKEND picks the
// tracer's backend (make test-kernels runs every one a kernel has).
func TestScenarios(t *testing.T) {
	l := up(t)
	var events []nf.Event
	backend := os.Getenv("SVCTRACE_BACKEND")
	results, info, res, err := l.Run(context.Background(), RunOptions{Backend: backend, Record: func(ev nf.Event) { events = append(events, ev) }})
	if err != nil {
		t.Fatal(err)
	}
	if (backend != "" && info.Backend != backend) || info.Drops == "" {
		t.Errorf("backend %q (want %q), drops %q", info.Backend, backend, info.Drops)
	}
	t.Logf("backend %s, %d links, probed %v, skipped %v", info.Backend, info.Links, info.Functions, info.Skipped)
	if res.Lost != 0 {
		t.Errorf("%d events lost", res.Lost)
	}
	as, _, err := l.Assess(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	rules, err := kubeproxy.Read(l.Node)
	if err != nil {
		t.Fatal(err)
	}
	blames := blames(rules.Mode)
	for _, r := range results {
		s := r.Scenario
		t.Run(s.Name, func(t *testing.T) {
			if len(r.Conns) != 1 {
				t.Fatalf("%d connections traced, want 1 (client: %s)", len(r.Conns), r.Client)
			}
			c := r.Conns[0]
			if c.Verdict != s.Expect {
				t.Fatalf("verdict %s (%s), want %s", c.Verdict, describe.Reason(c), s.Expect)
			}
			if c.VIP != s.VIP() || c.Client.Addr() != l.ClientIP(s) {
				t.Errorf("connection %s → %s, want %s → %s", c.Client, c.VIP, l.ClientIP(s), s.VIP())
			}
			translated := s.Programmed && len(s.Service.Endpoints) > 0
			endpoints := s.Service.Endpoints
			if s.Stale.IsValid() {
				endpoints = []netip.AddrPort{s.Stale} // where the old entry sends it
			}
			if translated && !slices.Contains(endpoints, c.Endpoint) {
				t.Errorf("DNAT to %s, not one of %v", c.Endpoint, endpoints)
			}
			if !translated && c.Endpoint.IsValid() {
				t.Errorf("DNAT to %s, want none", c.Endpoint)
			}
			// Masqueraded in POSTROUTING, which the dropped SYN never reaches.
			masq := bridgeNet.Addr()
			if s.VIP().Addr().Is6() {
				masq = bridgeNet6.Addr()
			}
			if translated && s.Expect != flow.Dropped && c.SNAT.Addr() != masq {
				t.Errorf("SNAT to %s, want the masquerade address %s", c.SNAT, masq)
			}
			if s.Expect == flow.Rejected || s.Expect == flow.Dropped {
				if c.Drop == nil || !c.Drop.Placed || c.Drop.Gap.Hook != s.ExpectHook {
					var steps []string
					for _, st := range c.Steps {
						steps = append(steps, fmt.Sprintf("%s %s %s", st.Hook, st.Stage, describe.Step(st)))
					}
					for _, ev := range events {
						if ev.Kind == nf.KindDrop || ev.Tuple.Dst == s.VIP() {
							b, _ := json.Marshal(ev)
							steps = append(steps, string(b))
						}
					}
					t.Fatalf("drop %+v, want one in %s (%s; drops %+v; steps and events:\n%s)", c.Drop, s.ExpectHook, describe.Reason(c), c.Drops, strings.Join(steps, "\n"))
				}
				switch {
				case s.Name == "stale-conntrack":
					// The node's routing discards it: the address is gone.
					if c.Drop.Gap.After != nf.StageLast {
						t.Errorf("drop %s, want one after PREROUTING (routing)", describe.Drop(*c.Drop))
					}
				case s.Name == "hairpin":
					// The bridge drops it, after the DNAT, refusing to send it
					// back out the port it came in on.
					if !strings.HasPrefix(c.Drop.Location, "br_") {
						t.Errorf("drop %s, want one by the bridge", describe.Drop(*c.Drop))
					}
				case c.Drop.Gap.What() != "filter table (0)" || c.Drop.Reason != "NETFILTER_DROP":
					t.Errorf("drop %s, want NETFILTER_DROP in the filter table", describe.Drop(*c.Drop))
				}
			}
			// The Kubernetes explanation: the diagnosis, and what to blame.
			a := as[s.Name]
			if f := a.Findings[0]; f.Code != s.Finding {
				t.Errorf("first finding %s (%s), want %s", f.Code, f.Summary, s.Finding)
			}
			e := a.Explainer.Explain(c)
			if e.Service != Namespace+"/"+s.Service.Name+":"+s.Service.PortName+" (ClusterIP)" {
				t.Errorf("service %q", e.Service)
			}
			if translated && !s.Stale.IsValid() && (e.Pod == "" || e.Node != NodeName || e.Endpoint != "ready") {
				t.Errorf("endpoint %s: pod %q on %q, %q", c.Endpoint, e.Pod, e.Node, e.Endpoint)
			}
			if !strings.HasPrefix(e.Blame, blames[s.Name]) || (blames[s.Name] == "") != (e.Blame == "") {
				t.Errorf("blame %q, want %q…", e.Blame, blames[s.Name])
			}
			// The query's question and answer, read in the kernel.
			if s.Query != "" {
				if got, want := describe.DNS(c), "A "+s.Query+" → NXDOMAIN"; got != want || r.Client != "answer: \"NXDOMAIN\"" {
					t.Errorf("DNS %q (the client saw %s), want %q", got, r.Client, want)
				}
				if !slices.ContainsFunc(e.Notes, func(n string) bool { return strings.HasPrefix(n, "the DNS answered NXDOMAIN for A "+s.Query) }) {
					t.Errorf("notes %q: want the NXDOMAIN said", e.Notes)
				}
			}
		})
	}
	if *updateFixtures {
		writeFixture(t, events)
	}
}

func writeFixture(t *testing.T, events []nf.Event) {
	path := filepath.Join("..", "flow", "testdata", "lab.jsonl")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, ev := range events {
		enc.Encode(ev)
	}
	t.Logf("wrote %d events to %s", len(events), path)
}

// The tracer observes and never changes traffic: the same requests give
// the same bytes with and without it.
func TestTracingChangesNothing(t *testing.T) {
	l := up(t)
	vip := l.Scenarios[0].VIP()
	sizes := []int{0, 1, 1460, 65536, 1 << 20}
	const rounds = 3
	fetch := func() []string {
		var sums []string
		for r := 0; r < rounds; r++ {
			for _, n := range sizes {
				body, err := l.Get(context.Background(), vip, fmt.Sprintf("/bytes/%d", n), 5*time.Second)
				if err != nil {
					t.Fatalf("GET /bytes/%d: %v", n, err)
				}
				sums = append(sums, fmt.Sprintf("%d:%x", len(body), sha256.Sum256(body)))
			}
		}
		return sums
	}
	without := fetch()

	tr, err := tracer.Open(tracer.Options{NetNS: l.Node.Path, Targets: l.Targets()})
	if err != nil {
		t.Fatal(err)
	}
	// Collect returns once every connection the requests made is reported:
	// cutting the trace short after a fixed pause lost the last one's
	// events, still in the ring buffer, on a slow machine.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var with []string
	seen, res, err := live.Collect(ctx, tr, live.Options{Flow: l.FlowOptions(time.Second)}, func() { with = fetch() })
	tr.Close()
	if err != nil {
		t.Fatal(err)
	}

	if !slices.Equal(without, with) {
		t.Errorf("responses differ with tracing:\nwithout %v\nwith    %v", without, with)
	}
	// The tracer must really have watched them, or this proves nothing.
	answered := 0
	var others []string
	for _, c := range seen {
		if c.Verdict == flow.Answered {
			answered++
		} else {
			others = append(others, fmt.Sprintf("%s: %s", c.Verdict, describe.Reason(c)))
		}
	}
	if want := rounds * len(sizes); answered != want || res.Lost != 0 {
		t.Errorf("tracer saw %d answered connections (lost %d events), want %d; the others: %q", answered, res.Lost, want, others)
	}
}

// Cleanup never touches a lab whose svctrace still runs, rejects what
// cannot be a lab id, and removes a lab kept (or left) by a process that is
// gone; Down leaves nothing behind.
func TestCleanupLeavesLabsInUse(t *testing.T) {
	l := up(t)
	if ls := List(); !slices.Contains(ls, Listed{ID: l.ID, PID: os.Getpid()}) {
		t.Fatalf("List() = %v, want %s in use by pid %d", ls, l.ID, os.Getpid())
	}
	for _, id := range []string{l.ID, ""} {
		removed, err := Cleanup(id)
		if !errors.Is(err, ErrInUse) || len(removed) > 0 || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
			t.Errorf("Cleanup(%q) of a lab in use: removed %v, %v", id, removed, err)
		}
	}
	if left := topo.List(Prefix + l.ID + "-"); len(left) != len(l.Pods)+3 {
		t.Fatalf("namespaces of the lab in use: %v", left)
	}
	for _, bad := range []string{"*", "../../etc", "4F2A9C", "4f2a9", ""} {
		if bad == "" {
			continue
		}
		if _, err := Cleanup(bad); err == nil || !strings.Contains(err.Error(), "invalid lab id") {
			t.Errorf("Cleanup(%q): %v", bad, err)
		}
	}
	if _, err := Cleanup("abcdef"); err == nil || !strings.Contains(err.Error(), "no lab abcdef is up") {
		t.Errorf("Cleanup of a lab that is not up: %v", err)
	}

	// The lab's process is gone (as after svctrace lab --keep): its lock
	// is free, its servers run on.
	l.owner.Close()
	l.owner = nil
	if ls := List(); !slices.Contains(ls, Listed{ID: l.ID}) {
		t.Fatalf("List() = %v, want %s not in use", ls, l.ID)
	}
	removed, err := Cleanup(Prefix + l.ID + "-node")
	if err != nil || len(removed) != len(l.Pods)+3 {
		t.Fatalf("Cleanup of a kept lab: removed %v, %v", removed, err)
	}
	if left := topo.List(Prefix + l.ID + "-"); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
	if _, err := os.Stat(lockPath(l.ID)); !os.IsNotExist(err) {
		t.Errorf("lock file: %v", err)
	}
	for _, p := range l.Pods {
		if _, err := os.Stat(p.NS.Path); !os.IsNotExist(err) {
			t.Errorf("%s still exists", p.NS.Path)
		}
	}
}

func TestScenarioAddressesAreUnique(t *testing.T) {
	seen := map[netip.AddrPort]string{}
	for _, s := range Scenarios() {
		if other, ok := seen[s.VIP()]; ok {
			t.Errorf("%s and %s share %s", s.Name, other, s.VIP())
		}
		seen[s.VIP()] = s.Name
	}
}

// The hairpin scenario fails for the reason svctrace gives: with the Pod's
// bridge port in hairpin mode, the same request is answered, and the port
// reads as such.
func TestHairpinModeOnAnswers(t *testing.T) {
	l := up(t)
	var s Scenario
	for _, sc := range l.Scenarios {
		if sc.Name == "hairpin" {
			s = sc
		}
	}
	if s.Name == "" {
		t.Skipf("no hairpin scenario here: %v", l.Left)
	}
	from := l.Pod(s.From)
	ctx := context.Background()
	if _, err := HTTPGet(ctx, from.NS, s.VIP(), "/", time.Second); err == nil {
		t.Fatal("answered with hairpin_mode off")
	}
	port := findPort(t, l, from.IP)
	if port.Hairpin {
		t.Fatalf("%s reads as hairpin on before it was set", port.Name)
	}
	if _, err := topo.Run(l.Node, "", "bridge", "link", "set", "dev", port.Name, "hairpin", "on"); err != nil {
		t.Fatal(err)
	}
	if body, err := HTTPGet(ctx, from.NS, s.VIP(), "/", time.Second); err != nil || !strings.Contains(string(body), s.From) {
		t.Fatalf("with hairpin_mode on: %q, %v", body, err)
	}
	if port := findPort(t, l, from.IP); !port.Hairpin {
		t.Errorf("%s reads as hairpin off after it was set", port.Name)
	}
}

// findPort is the node's bridge port the pod at ip is behind.
func findPort(t *testing.T, l *Lab, ip netip.Addr) resolve.BridgePort {
	t.Helper()
	b := resolve.BridgeOf(resolve.Bridges(l.Node), ip)
	if b == nil || b.Name != "cbr0" {
		t.Fatalf("bridge of %s: %+v", ip, b)
	}
	p := b.Port(ip)
	if p == nil {
		t.Fatalf("no port of %s holds %s: %+v", b.Name, ip, b.Ports)
	}
	return *p
}

// A full conntrack table drops the SYN of every new connection inside
// conntrack, before any rule sees it: svctrace places the drop there, and
// the diagnosis and the blame say the table is full, with its counters.
func TestConntrackTableFull(t *testing.T) {
	l := up(t)
	before, err := conntrack.Read(l.Node)
	if err != nil {
		t.Fatal(err)
	}
	if before.Max > 1<<21 {
		t.Skipf("nf_conntrack_max is %d: too many entries to fill here", before.Max)
	}
	if err := tracetest.FillConntrack(l.Node, int(before.Max)); err != nil {
		t.Fatal(err)
	}
	l.Scenarios = l.Scenarios[:1] // healthy
	results, _, _, err := l.Run(context.Background(), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(results[0].Conns) == 0 {
		t.Fatalf("no connection traced (client: %s)", results[0].Client)
	}
	// The table stays full only as long as nothing in the node's own
	// table expires: when an entry goes (a lab connection's TIME_WAIT, an
	// early drop), a retransmission gets the slot, as on a real node whose
	// table hovers at its limit. Either way the first SYN died in conntrack
	// and the blame must say the table is full.
	c := results[0].Conns[0]
	if len(c.Drops) == 0 || (c.Verdict != flow.Dropped && c.Verdict != flow.Answered) {
		t.Fatalf("verdict %s (%s), want the SYN dropped by conntrack in PREROUTING", c.Verdict, describe.Reason(c))
	}
	if d := c.Drops[0]; !d.Placed || d.Gap.Hook != nf.PreRouting || d.Gap.After != nf.StagePreConntrack {
		t.Fatalf("verdict %s (%s), want the SYN dropped by conntrack in PREROUTING", c.Verdict, describe.Reason(c))
	}
	as, facts, err := l.Assess(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !facts.Conntrack.Full() || facts.Conntrack.Stats["drop"] == 0 {
		t.Errorf("conntrack %d of %d entries, drop counter %d: want full, with drops", facts.Conntrack.Count, facts.Conntrack.Max, facts.Conntrack.Stats["drop"])
	}
	a := as["healthy"]
	if f := a.Findings[0]; f.Code != "conntrack-full" || f.Severity != report.Problem {
		t.Errorf("first finding %s %s (%s), want the problem conntrack-full", f.Severity, f.Code, f.Summary)
	}
	want := "conntrack dropped the SYN before any rule saw it: the node's conntrack table is full"
	e := a.Explainer.Explain(c)
	if c.Verdict == flow.Answered {
		want = "the SYN was dropped before a retransmission got through: " + want
	}
	if !strings.HasPrefix(e.Blame, want) {
		t.Errorf("blame %q, want %q…", e.Blame, want)
	}
	t.Logf("%s: %s\nblame: %s", a.Findings[0].Code, a.Findings[0].Summary, e.Blame)
}

// On a machine without IPv6 the lab leaves out its IPv6 scenarios, says
// why, and shows the others.
func TestIPv4OnlyMachine(t *testing.T) {
	saved := noIPv6
	noIPv6 = func() string { return "IPv6 is disabled in this kernel (ipv6.disable=1)" }
	defer func() { noIPv6 = saved }()
	l := up(t)
	if len(l.Left) < 2 || !strings.HasPrefix(l.Left[len(l.Left)-1], "ipv4-only-server (IPv6 is disabled") {
		t.Errorf("left out %q", l.Left)
	}
	results, _, _, err := l.Run(context.Background(), RunOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range results {
		if r.Scenario.VIP().Addr().Is6() {
			t.Errorf("scenario %s run without IPv6", r.Scenario.Name)
		} else if r.Verdict() != r.Scenario.Expect {
			t.Errorf("%s: verdict %q, want %s", r.Scenario.Name, r.Verdict(), r.Scenario.Expect)
		}
	}
}

// A Pod calling its own Service's two endpoints: a SYN the DNAT sends back
// to the Pod itself dies in the bridge (hairpin_mode off), and its
// retransmission, translated anew, is answered by the other Pod. The answer
// hides neither: the drops, the change of endpoint and the blame are there.
func TestAnsweredAfterHairpinDrops(t *testing.T) {
	l := up(t)
	if !bridgeNetfilter(l.Node) {
		t.Skip("br_netfilter is not loaded: the bridge delivers the hairpin packet without netfilter")
	}
	healthy := l.Scenarios[0]
	vip := healthy.VIP()
	self, other := l.Pod("web-2"), l.Pod("web-1")
	tr, err := tracer.Open(tracer.Options{NetNS: l.Node.Path, Targets: l.Targets()})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var retried *flow.Conn
	var seen []string
	var found atomic.Bool
	_, _, err = live.Collect(ctx, tr, live.Options{Flow: l.FlowOptions(2 * time.Second), Conn: func(c *flow.Conn, _ uint64) {
		seen = append(seen, fmt.Sprintf("%s after %d SYNs to %v", c.Verdict, c.SYNs, c.Endpoints))
		if c.Verdict == flow.Answered && len(c.Retried()) > 0 && retried == nil {
			retried = c
			found.Store(true)
		}
	}}, func() {
		// Each SYN goes to either endpoint: within 16 requests one is all
		// but certain (1 - 2^-16) to go to the Pod itself first. A request
		// whose every SYN went there times out: that is the hairpin.
		for i := 0; i < 16 && !found.Load(); i++ {
			HTTPGet(ctx, self.NS, vip, "/", 4*time.Second)
			time.Sleep(100 * time.Millisecond) // the connection is reported
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if retried == nil {
		t.Fatalf("no connection answered after a dropped SYN: %q", seen)
	}
	c := retried
	selfEP, otherEP := netip.AddrPortFrom(self.IP, 8080), netip.AddrPortFrom(other.IP, 8080)
	if c.Endpoint != otherEP || len(c.Endpoints) != 2 || c.Endpoints[0] != selfEP || c.Endpoints[1] != otherEP {
		t.Errorf("endpoints %v (last %s), want %s then %s", c.Endpoints, c.Endpoint, selfEP, otherEP)
	}
	d := c.Retried()[0]
	if !d.InNode || !d.Placed || d.Gap.Hook != nf.PreRouting || d.Endpoint != selfEP || !strings.HasPrefix(d.Location, "br_") {
		t.Errorf("the first try's drop %+v, want in PREROUTING's bridge, on its way to %s", d, selfEP)
	}
	if !strings.Contains(describe.Reason(c), "answered (SYN,ACK) and the reply was translated back") || !strings.Contains(describe.Reason(c), "dropped in PREROUTING") ||
		!strings.Contains(describe.Reason(c), "the retransmission that got through to "+otherEP.String()) {
		t.Errorf("why %q", describe.Reason(c))
	}
	shown := false
	for _, s := range c.Steps {
		ch, ok := s.Has(flow.DNAT)
		shown = shown || (ok && ch.From == vip && ch.To == otherEP)
	}
	if !shown {
		t.Errorf("the retransmission's DNAT to %s is not in the timeline", otherEP)
	}
	as, _, err := l.Assess(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e := as[healthy.Name].Explainer.Explain(c)
	want := "the SYN was dropped before a retransmission got through to another endpoint: hairpin: Pod lab/web-2 reached itself through the Service; "
	if n := len(c.Retried()); n > 1 {
		want = fmt.Sprintf("%d SYNs were dropped before a retransmission got through to another endpoint: hairpin: Pod lab/web-2 reached itself through the Service; ", n)
	}
	if !strings.HasPrefix(e.Blame, want) || !strings.Contains(e.Blame, "hairpin_mode is off") {
		t.Errorf("blame %q\nwant %q…", e.Blame, want)
	}
}
