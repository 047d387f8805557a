package plugin

import (
	"bytes"
	"testing"

	corev1 "k8s.io/api/core/v1"
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
