package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/lab"
)

// svctrace SERVICE --probe opens its own connection, from the node or from
// a Pod's network namespace (found by the Pod's IP), traces it, says how
// it went and stops; a failed probe is exit status 1.
func TestProbe(t *testing.T) {
	l := upLab(t)
	objects := filepath.Join(t.TempDir(), "objects.yaml")
	writeObjects(t, objects)
	for _, tc := range []struct {
		name    string
		args    []string
		probe   string // the probe's line, after "svctrace: probe from "
		outcome string // and how it ended
		verdict string // the traced connection's
		failed  bool
		client  string // the connection's client address; "": the node's
	}{
		{"from the node", []string{"web", "--probe"}, "node: TCP ", ": connected in ", "answered", false, ""},
		// Not from a pod of web itself: the lab's bridge has no hairpin
		// mode, so a pod cannot reach itself through its Service.
		{"HTTP from a pod", []string{"web", "--probe=http", "--from", "pod/guarded"}, "pod lab/guarded: TCP ", ": HTTP 200 OK in ", "answered", false, "10.244.0.14"},
		{"to a Service kube-proxy rejects, from a pod", []string{"empty", "--probe", "--from", "pod/web-1"}, "pod lab/web-1: TCP ", ": connection refused", "rejected", true, "10.244.0.11"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(tc.args, "-n", lab.Namespace, "--objects", objects, "--netns", l.Node.Spec, "--node", lab.NodeName,
				"--timeout", "2s", "-o", "json")
			out, stderr, err := run(context.Background(), args...)
			if tc.failed != errors.Is(err, errSilent) || (err != nil && !errors.Is(err, errSilent)) {
				t.Fatalf("err %v, want a failed probe: %v\n%s", err, tc.failed, stderr)
			}
			line := ""
			for _, l := range strings.Split(stderr, "\n") {
				if s, ok := strings.CutPrefix(l, "svctrace: probe from "); ok {
					line = s
				}
			}
			if !strings.HasPrefix(line, tc.probe) || !strings.Contains(line, tc.outcome) {
				t.Fatalf("probe line %q, want %q … %q\n%s", line, tc.probe, tc.outcome, stderr)
			}
			var conn *jsonLine
			for _, c := range parseLines(t, out) {
				if c.Kind == "connection" {
					conn = &c
				}
			}
			if conn == nil || conn.Verdict != tc.verdict {
				t.Fatalf("traced connection %+v, want %s\n%s", conn, tc.verdict, out)
			}
			// The probe line names the connection's client address.
			if !strings.Contains(line, conn.Client.String()+" → ") {
				t.Errorf("probe %q is not the traced connection from %s", line, conn.Client)
			}
			if tc.client != "" && conn.Client.Addr().String() != tc.client {
				t.Errorf("client %s, want the pod's address %s", conn.Client, tc.client)
			}
			if tc.client == "" && strings.HasPrefix(conn.Client.Addr().String(), "10.244.") {
				t.Errorf("client %s: a pod's address, not the node's", conn.Client)
			}
		})
	}
}
