package plugin

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/report"
)

func TestMergerSortsAndLabelsLines(t *testing.T) {
	for _, tc := range []struct {
		json, prefix   bool
		stdout, stderr string
	}{
		{json: true, prefix: true,
			stdout: `{"traced_on":"w1","kind":"connection"}` + "\n" + `{"traced_on":"w1"}` + "\n",
			stderr: "[w1] svctrace: warning: x\n[w1] nothing to trace\n"},
		{json: true,
			stdout: `{"traced_on":"w1","kind":"connection"}` + "\n" + `{"traced_on":"w1"}` + "\n",
			stderr: "svctrace: warning: x\nnothing to trace\n"},
		{prefix: true,
			stdout: "[w1] {\"kind\":\"connection\"}\n[w1] {}\n[w1] nothing to trace\n",
			stderr: "[w1] svctrace: warning: x\n"},
		{stdout: "{\"kind\":\"connection\"}\n{}\nnothing to trace\n", stderr: "svctrace: warning: x\n"},
	} {
		var out, errs bytes.Buffer
		sink := (&merger{stdout: &out, stderr: &errs, json: tc.json, prefix: tc.prefix}).sink("w1")
		for _, l := range []string{`{"kind":"connection"}`, "svctrace: warning: x", "{}", "nothing to trace"} {
			sink(l)
		}
		if out.String() != tc.stdout || errs.String() != tc.stderr {
			t.Errorf("json %v, prefix %v:\nstdout %q, want %q\nstderr %q, want %q", tc.json, tc.prefix, &out, tc.stdout, &errs, tc.stderr)
		}
	}
}

func TestReadyNode(t *testing.T) {
	node := func(name string, ready, cordoned bool) corev1.Node {
		s := corev1.ConditionFalse
		if ready {
			s = corev1.ConditionTrue
		}
		return corev1.Node{Spec: corev1.NodeSpec{Unschedulable: cordoned},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: s}}}}
	}
	nodes := []corev1.Node{node("c", true, false), node("a", false, false), node("b", true, true)}
	nodes[0].Name, nodes[1].Name, nodes[2].Name = "c", "a", "b"
	if got := readyNode(nodes); got != "c" {
		t.Errorf("readyNode = %q, want c (a is not Ready, b is cordoned)", got)
	}
}

// With several nodes, each debug Pod's -o parts lines are stitched: one
// connection its two nodes reported is printed once, across both, after
// each node's diagnosis; other lines go to stderr with their node.
func TestStitchedLines(t *testing.T) {
	client, vip, pod := netip.MustParseAddrPort("10.244.1.12:40000"), netip.MustParseAddrPort("10.96.5.20:80"), netip.MustParseAddrPort("10.244.201.11:8080")
	clock := time.Date(2026, 12, 6, 22, 0, 0, 0, time.UTC)
	lines := func(node string, c *flow.Conn) []string {
		var b bytes.Buffer
		p, _ := output.New(output.FormatParts, &b, output.Options{Wall: func(m uint64) time.Time { return clock.Add(time.Duration(m)) }})
		p.Diagnosis(report.Diagnosis{Service: "shop/web", Node: node})
		p.Conn(report.Conn{Conn: c})
		return strings.Split(strings.TrimSpace(b.String()), "\n")
	}
	step := func(t uint64, dir flow.Dir) flow.Step {
		return flow.Step{Time: t, Packet: 1, Dir: dir, Kind: nf.KindHook, Hook: nf.PreRouting}
	}
	at := uint64(time.Hour)
	first := &flow.Conn{ID: 1, Proto: nf.TCP, Client: client, VIP: vip, Endpoint: pod, Verdict: flow.Answered, Outcome: flow.Outcome{Kind: flow.Translated},
		Start: at, End: at + 400_000, Steps: []flow.Step{step(at, flow.Original), step(at+100_000, flow.Original), step(at+300_000, flow.Reply)}}
	second := &flow.Conn{ID: 1, Proto: nf.TCP, Client: client, VIP: pod, Verdict: flow.Answered, Outcome: flow.Outcome{Kind: flow.Translated},
		Start: at + 150_000, End: at + 250_000, Steps: []flow.Step{step(at+150_000, flow.Original), step(at+250_000, flow.Reply)}}
	var out, errs bytes.Buffer
	stitched, err := NewStitched(func(o output.Options) (output.Printer, error) { return output.New(output.FormatJSON, &out, o) }, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m := &merger{stdout: &out, stderr: &errs, json: true, prefix: true, stitched: stitched}
	for _, l := range lines("node-1", first) {
		m.sink("node-1")(l)
	}
	m.sink("node-2")("svctrace: warning: x")
	for _, l := range lines("node-2", second) {
		m.sink("node-2")(l)
	}
	stitched.End()
	got := out.String()
	if n := strings.Count(got, `"kind":"connection"`); n != 1 || !strings.Contains(got, `"nodes":["node-1","node-2"]`) ||
		strings.Count(got, `"kind":"diagnosis"`) != 2 || !strings.Contains(got, `"kind":"summary","connections":1`) {
		t.Errorf("stdout:\n%s\nwant both diagnoses, one connection across node-1 and node-2, the summary", got)
	}
	if errs.String() != "[node-2] svctrace: warning: x\n" {
		t.Errorf("stderr %q", errs.String())
	}
}
