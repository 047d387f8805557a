package flow_test

import (
	"flag"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/describe"
	. "github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

var verbose = flag.Bool("show", false, "print the assembled connections")

// testdata/lab.jsonl holds the events of one run of every lab scenario at
// once, recorded on kernel 6.18 (regenerate with
// sudo go test ./internal/lab -run TestScenarios -update-fixtures).
func loadEvents(t testing.TB, name string) []nf.Event {
	evs, err := tracetest.ReadEvents(filepath.Join("testdata", name+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// nodeNetNS is the namespace of the first observer event.
func nodeNetNS(evs []nf.Event) uint32 {
	for _, ev := range evs {
		if ev.Kind == nf.KindHook {
			return ev.NetNS
		}
	}
	return 0
}

// assemble replays events as the lab traced them.
func assemble(evs []nf.Event, opts Options) []*Conn {
	if opts.NodeNetNS == 0 {
		opts.NodeNetNS = nodeNetNS(evs)
	}
	if opts.Timeout == 0 {
		opts.Timeout = 1500 * time.Millisecond // as the lab
	}
	conns, _ := tracetest.Replay(evs, opts)
	return conns
}

// scenario assembles the lab recording and returns the connections to vip.
func scenario(t *testing.T, vip string, opts Options) []*Conn {
	t.Helper()
	var out []*Conn
	for _, c := range assemble(loadEvents(t, "lab"), opts) {
		if c.VIP == netip.MustParseAddrPort(vip) {
			out = append(out, c)
		}
	}
	return out
}

func only(t *testing.T, conns []*Conn) *Conn {
	t.Helper()
	if len(conns) != 1 {
		for _, c := range conns {
			t.Logf("#%d %s→%s %s: %s", c.ID, c.Client, c.VIP, c.Verdict, describe.Reason(c))
		}
		t.Fatalf("got %d connections, want 1", len(conns))
	}
	if *verbose {
		show(t, conns[0])
	}
	return conns[0]
}

func show(t *testing.T, c *Conn) {
	t.Logf("#%d %s → %s %s endpoint=%s snat=%s", c.ID, c.Client, c.VIP, c.Proto, c.Endpoint, c.SNAT)
	for _, s := range c.Steps {
		if s.Shown() {
			t.Logf("  +%-10s %-11s %-14s %s", time.Duration(s.Time-c.Start), s.Hook, s.Stage, describe.Step(s))
		}
	}
	t.Logf("  %s: %s", c.Verdict, describe.Reason(c))
}

func hasNote(c *Conn, sub string) bool {
	for _, s := range c.Steps {
		if strings.Contains(describe.Step(s), sub) {
			return true
		}
	}
	return false
}

var (
	client = netip.MustParseAddr("10.99.0.2")
	snat   = netip.MustParseAddr("10.244.0.1")
)

func TestHealthyIsAnsweredThroughDNATAndMasquerade(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.10:80", Options{}))
	if c.Verdict != Answered {
		t.Fatalf("verdict %s (%s), want answered", c.Verdict, describe.Reason(c))
	}
	if c.VIP != netip.MustParseAddrPort("10.96.0.10:80") || c.Client.Addr() != client {
		t.Errorf("client %s vip %s", c.Client, c.VIP)
	}
	if ep := c.Endpoint; ep != netip.MustParseAddrPort("10.244.0.11:8080") && ep != netip.MustParseAddrPort("10.244.0.12:8080") {
		t.Errorf("endpoint %s is not one of the Service's endpoints", ep)
	}
	if c.SNAT.Addr() != snat {
		t.Errorf("SNAT %s, want the bridge address %s", c.SNAT, snat)
	}
	if c.Closed != "FIN" {
		t.Errorf("closed %q, want FIN", c.Closed)
	}
	for _, want := range []string{
		"DNAT 10.96.0.10:80 → " + c.Endpoint.String(),
		"SNAT src " + c.Client.String() + " → " + c.SNAT.String() + " (packet mark 0x4000)",
		"un-SNAT dst " + c.SNAT.String() + " → " + c.Client.String(),
		"un-DNAT src " + c.Endpoint.String() + " → 10.96.0.10:80",
		"accepted by the filter table",
	} {
		if !hasNote(c, want) {
			t.Errorf("no step says %q", want)
		}
	}
}

func TestNoEndpointsIsRejectedInForward(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.20:80", Options{}))
	if c.Verdict != Rejected {
		t.Fatalf("verdict %s (%s), want rejected", c.Verdict, describe.Reason(c))
	}
	if c.Endpoint.IsValid() {
		t.Errorf("endpoint %s, want none (no DNAT)", c.Endpoint)
	}
	if c.Drop == nil || c.Drop.Gap.Hook != nf.Forward || c.Drop.Gap.After != nf.StagePreFilter {
		t.Fatalf("drop %+v, want FORWARD after pre-filter", c.Drop)
	}
	if c.Drop.Reason != "NETFILTER_DROP" {
		t.Errorf("drop reason %q", c.Drop.Reason)
	}
	if !strings.Contains(describe.Reason(c), "ICMP port-unreachable") || !strings.Contains(describe.Reason(c), "filter table (0)") {
		t.Errorf("why %q", describe.Reason(c))
	}
}

func TestWrongTargetPortIsReset(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.30:80", Options{}))
	if c.Verdict != Reset {
		t.Fatalf("verdict %s (%s), want reset", c.Verdict, describe.Reason(c))
	}
	if c.Endpoint != netip.MustParseAddrPort("10.244.0.11:9090") {
		t.Errorf("endpoint %s", c.Endpoint)
	}
	if !strings.Contains(describe.Reason(c), "nothing listens on port 9090") {
		t.Errorf("why %q", describe.Reason(c))
	}
}

func TestHungPodIsNoReply(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.40:80", Options{}))
	if c.Verdict != NoReply {
		t.Fatalf("verdict %s (%s), want no-reply", c.Verdict, describe.Reason(c))
	}
	if c.Endpoint != netip.MustParseAddrPort("10.244.0.13:8080") {
		t.Errorf("endpoint %s", c.Endpoint)
	}
	if c.SYNs != 2 || !hasNote(c, "SYN retransmitted (1)") {
		t.Errorf("SYNs %d, want the retransmission noted", c.SYNs)
	}
}

func TestPolicyDropIsDroppedInForwardFilter(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.50:80", Options{}))
	if c.Verdict != Dropped {
		t.Fatalf("verdict %s (%s), want dropped", c.Verdict, describe.Reason(c))
	}
	if c.Endpoint != netip.MustParseAddrPort("10.244.0.14:8080") {
		t.Errorf("endpoint %s", c.Endpoint)
	}
	d := c.Drop
	if d == nil || !d.InNode || d.Gap.Hook != nf.Forward || d.Gap.After != nf.StagePreFilter || d.Gap.Before != nf.StagePostFilter {
		t.Fatalf("drop %+v, want FORWARD between pre-filter and post-filter", d)
	}
	if d.Gap.What() != "filter table (0)" || d.Reason != "NETFILTER_DROP" || !strings.HasPrefix(d.Location, "nft_do_chain+") {
		t.Errorf("drop %s", describe.Drop(*d))
	}
	if len(c.Drops) != 2 {
		t.Errorf("%d drops, want both SYNs dropped", len(c.Drops))
	}
}

func TestNoProxyRulesIsNotTranslated(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.60:80", Options{}))
	if c.Verdict != NotTranslated {
		t.Fatalf("verdict %s (%s), want not-translated", c.Verdict, describe.Reason(c))
	}
	if c.Endpoint.IsValid() {
		t.Errorf("endpoint %s, want none", c.Endpoint)
	}
}

// A packet to an address that is not a Service (a pod IP traced directly)
// leaving untranslated is just forwarded: no-reply, not not-translated.
func TestUntranslatedNonServiceIsNoReply(t *testing.T) {
	c := only(t, scenario(t, "10.96.0.60:80", Options{
		IsService: func(nf.Proto, netip.AddrPort) bool { return false }}))
	if c.Verdict == NotTranslated {
		t.Fatalf("verdict %s for an address that is no Service", c.Verdict)
	}
}

// The recorded fixture holds a connection of every lab scenario: a
// scenario added to the lab without re-recording (make fixtures) fails here.
func TestFixtureHoldsEveryScenario(t *testing.T) {
	seen := map[netip.AddrPort]bool{}
	for _, c := range assemble(loadEvents(t, "lab"), Options{}) {
		seen[c.VIP] = true
	}
	for _, s := range lab.Scenarios() {
		if !seen[s.VIP()] {
			t.Errorf("testdata/lab.jsonl has no connection of scenario %s (to %s): re-record it with make fixtures", s.Name, s.VIP())
		}
	}
}
