package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/testutil"
)

// upLab builds a lab removed when the test ends.
func upLab(t *testing.T) *lab.Lab {
	t.Helper()
	testutil.RequireRoot(t)
	l, err := lab.Up(lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Down() })
	return l
}

// liveAndRecorded runs svctrace with args and -w while the lab's client
// connects to every scenario's Service once, and returns what it printed
// and the recording.
func liveAndRecorded(t *testing.T, l *lab.Lab, args ...string) (string, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "trace.svctrace")
	var out, errb syncBuffer
	root := newRoot(&out, &errb)
	root.SetArgs(append(args, "-w", file, "--timeout", "1500ms", "--duration", "30s"))
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	waitFor(t, &errb, "Ctrl-C to stop")
	var wg sync.WaitGroup
	for _, s := range l.Scenarios {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Request(context.Background(), s, 1500*time.Millisecond)
		}()
	}
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	return out.String(), file
}

// analyze prints the recording and checks that it begins with exactly
// what the live run printed.
func analyze(t *testing.T, live, file string, args ...string) string {
	t.Helper()
	got, errOut, err := run(context.Background(), append([]string{"analyze", file}, args...)...)
	if err != nil {
		t.Fatalf("analyze: %v\n%s", err, errOut)
	}
	if !strings.HasPrefix(got, live) {
		t.Fatalf("analyze printed something else than the live run.\nlive:\n%s\nanalyze:\n%s", live, got)
	}
	return strings.TrimPrefix(got, live)
}

// Recording every lab scenario with svctrace trace -w, and analysing the
// file, gives what the live run printed, then the analysis.
func TestRecordTraceAnalyze(t *testing.T) {
	l := upLab(t)
	args := []string{"trace", "--netns", l.Node.Spec, "--count", strconv.Itoa(len(l.Scenarios))}
	for _, s := range l.Scenarios {
		args = append(args, "--addr", s.VIP().String())
	}
	live, file := liveAndRecorded(t, l, args...)
	for _, s := range l.Scenarios {
		if !strings.Contains(live, string(s.Expect)) {
			t.Errorf("live run lacks a %s connection:\n%s", s.Expect, live)
		}
	}
	rest := analyze(t, live, file)
	cutAnywhere(t, file)
	// The client by each of its addresses, and the hairpin scenario's
	// pod; the healthy and the IPv6 scenarios answer.
	for _, w := range []string{"\nanalysis: 3 client(s)\n", "connect latency, first packet to first answer, 2 answered: p50 ",
		// The conntrack entry of the answered connection, DNAT'ed.
		"conntrack at the end of the trace: ", "→ 10.96.0.10:80, reply 10.244.0.1"} {
		if !strings.Contains(rest, w) {
			t.Errorf("analysis lacks %q:\n%s", w, rest)
		}
	}
	// Filters: only the rejected connection.
	got, _, err := run(context.Background(), "analyze", file, "--verdict", "rejected", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	lines := parseLines(t, got)
	if len(lines) != 3 || lines[0].Verdict != "rejected" || lines[1].Kind != "summary" || lines[1].Conns != 1 || lines[2].Kind != "analysis" {
		t.Errorf("--verdict rejected -o json:\n%s", got)
	}
	// By default the kernel keeps each packet's headers, never its payload.
	for _, d := range packetData(t, file) {
		if len(d) >= 20 && d[0]>>4 == 4 && d[9] == 6 { // IPv4, TCP
			ip := int(d[0]&0xf) * 4
			if len(d) < ip+13 || len(d) != ip+int(d[ip+12]>>4)*4 {
				t.Fatalf("%d bytes recorded of a TCP packet whose headers are %d: % x", len(d), ip+int(d[ip+12]>>4)*4, d)
			}
		}
	}
	checkPcapNG(t, file)
	// Several recordings are one per node.
	if out, _, err := run(context.Background(), "analyze", file, file); err == nil || !strings.Contains(err.Error(), "are both recordings of node") || out != "" {
		t.Errorf("analyze of one recording twice: %v, printed %q", err, out)
	}
}

// packetData are the packet bytes a recording's events carry.
func packetData(t *testing.T, file string) [][]byte {
	t.Helper()
	rec, err := record.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range rec.Entries {
		if e.Type == record.TypeEvent && len(e.Event.Data) > 0 {
			out = append(out, e.Event.Data)
		}
	}
	if len(out) == 0 {
		t.Fatal("no recorded event carries packet bytes")
	}
	return out
}

// --snaplen bounds what is kept of each packet.
func TestRecordSnaplen(t *testing.T) {
	l := upLab(t)
	l.Scenarios = l.Scenarios[:1] // healthy
	_, file := liveAndRecorded(t, l, "trace", "--netns", l.Node.Spec, "--addr", l.Scenarios[0].VIP().String(), "--count", "1", "--snaplen", "20")
	for _, d := range packetData(t, file) {
		if len(d) != 20 {
			t.Fatalf("%d bytes recorded with --snaplen 20", len(d))
		}
	}
}

// checkPcapNG writes the recording as pcapng and reads it with Debian's
// tshark: an interface per observation point, the packet as it entered
// the node's hooks and after DNAT, svctrace's annotations as comments.
func checkPcapNG(t *testing.T, file string) {
	t.Helper()
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("SVCTRACE_REQUIRE_ROOT") == "1" {
			t.Fatal("tshark not found: CI installs it (apt-get install tshark)")
		}
		t.Skip("tshark not found (apt-get install tshark): the pcapng check needs it")
	}
	out, errOut, err := run(context.Background(), "analyze", file, "-o", "pcapng")
	if err != nil {
		t.Fatalf("-o pcapng: %v\n%s", err, errOut)
	}
	pcap := filepath.Join(t.TempDir(), "trace.pcapng")
	if err := os.WriteFile(pcap, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := exec.Command(tshark, "-r", pcap, "-T", "fields",
		"-e", "frame.interface_name", "-e", "ip.dst", "-e", "tcp.dstport", "-e", "frame.comment").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, b)
	}
	var dnat, rejected, preDNAT bool
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.SplitN(l, "\t", 4)
		if len(f) != 4 {
			continue
		}
		preDNAT = preDNAT || (f[0] == "PREROUTING pre-conntrack" && f[1] == "10.96.0.10" && f[2] == "80")
		dnat = dnat || (f[0] == "PREROUTING post-dnat" && strings.HasPrefix(f[1], "10.244.0.") && f[2] == "8080" &&
			strings.Contains(f[3], "DNAT 10.96.0.10:80 → 10.244.0.1") && strings.Contains(f[3], ": answered"))
		rejected = rejected || strings.Contains(f[3], "10.96.0.20:80: rejected")
	}
	if !preDNAT || !dnat || !rejected {
		t.Errorf("tshark shows pre-DNAT %v, DNAT %v, rejected %v:\n%s", preDNAT, dnat, rejected, b)
	}
	// Each packet says how long it was: the headers kept are a truncated
	// packet, not a malformed one.
	b, err = exec.Command(tshark, "-r", pcap, "-Y", "_ws.malformed || _ws.expert.severity == error", "-T", "fields", "-e", "frame.number", "-e", "_ws.expert.message").Output()
	if err != nil || strings.TrimSpace(string(b)) != "" {
		t.Errorf("tshark finds malformed packets (%v):\n%s", err, b)
	}
}

// The same for svctrace SERVICE: the diagnosis, names and blame come back
// from the recorded objects and rules, with no cluster.
func TestRecordServiceAnalyze(t *testing.T) {
	l := upLab(t)
	objects := filepath.Join(t.TempDir(), "objects.yaml")
	writeObjects(t, objects)
	live, file := liveAndRecorded(t, l, "empty", "-n", lab.Namespace, "--objects", objects, "--netns", l.Node.Spec,
		"--node", lab.NodeName, "--count", "1")
	for _, w := range []string{"✗ selector-matches-no-pod:", "✗ rejected", "blame:  Service lab/empty: the selector app=wbe matches no Pod"} {
		if !strings.Contains(live, w) {
			t.Errorf("live run lacks %q:\n%s", w, live)
		}
	}
	analyze(t, live, file)
	cutAnywhere(t, file)
	// A recording cut short is analysed up to where it ends: here inside
	// its last record, past the objects and rules at its start.
	b, _ := os.ReadFile(file)
	cut := filepath.Join(t.TempDir(), "cut.svctrace")
	os.WriteFile(cut, b[:len(b)-20], 0o644)
	got, errOut, err := run(context.Background(), "analyze", cut)
	if err != nil || !strings.Contains(errOut, "cut short") || !strings.Contains(got, "selector-matches-no-pod") {
		t.Errorf("cut recording: %v\n%s\n%s", err, errOut, got)
	}
	// Not a recording: one line, with the offset and what to do.
	_, _, err = run(context.Background(), "analyze", objects)
	if err == nil || !strings.Contains(err.Error(), "byte 0: not an svctrace recording") || strings.Contains(err.Error(), "\n") {
		t.Errorf("foreign file: %v", err)
	}
}

// writeObjects saves the lab's objects as kubectl get -o yaml would.
func writeObjects(t *testing.T, path string) {
	b, err := lab.ObjectsYAML()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// svctrace lab -w: the analysis prints the lab's report as it was, every
// scenario with its diagnosis, names and blame, then the analysis.
func TestRecordLabAnalyze(t *testing.T) {
	testutil.RequireRoot(t)
	file := filepath.Join(t.TempDir(), "lab.svctrace")
	live, errOut, err := run(context.Background(), "lab", "-w", file)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !strings.Contains(live, fmt.Sprintf("all %d scenarios gave the expected verdict", len(lab.Scenarios()))) {
		t.Fatalf("lab:\n%s", live)
	}
	rest := analyze(t, live, file)
	if !strings.Contains(rest, "\nanalysis: 3 client(s)\n") {
		t.Errorf("analysis:\n%s", rest)
	}
	cutAnywhere(t, file)
}

// cutAnywhere checks that the recording, cut after any whole record or
// inside one (a killed trace, a full disk), still analyses: exit 0, what it
// holds printed, the cut noted.
func cutAnywhere(t *testing.T, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := record.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	var cuts []int
	for i, e := range rec.Entries {
		// Every boundary of the first records (where what the run is
		// comes), then every 7th; and inside a record, here and there.
		if i < 60 || i%7 == 0 {
			cuts = append(cuts, int(e.Offset))
		}
		if i%13 == 0 {
			cuts = append(cuts, int(e.Offset)+5, int(e.Offset)+17)
		}
	}
	cuts = append(cuts, len(b)-1)
	dir := t.TempDir()
	for _, n := range cuts {
		cut := filepath.Join(dir, fmt.Sprintf("cut-%d.svctrace", n))
		os.WriteFile(cut, b[:n], 0o644)
		out, errOut, err := run(context.Background(), "analyze", cut)
		if err != nil || !strings.Contains(out, "connection(s)") || !strings.Contains(errOut, "abruptly") {
			t.Fatalf("cut at byte %d of %d: %v\nstdout:\n%s\nstderr:\n%s", n, len(b), err, out, errOut)
		}
		os.Remove(cut)
	}
	t.Logf("%s analysed when cut at %d places", filepath.Base(file), len(cuts))
}
