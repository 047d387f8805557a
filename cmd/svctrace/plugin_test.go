package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/output"
)

func TestPluginByName(t *testing.T) {
	for argv0, want := range map[string]bool{
		"/usr/local/bin/kubectl-svctrace": true, "kubectl-svctrace.exe": true,
		"/usr/local/bin/svctrace": false, "kubectl-svctrace-old": false,
	} {
		if isPlugin(argv0) != want {
			t.Errorf("isPlugin(%q) = %v", argv0, !want)
		}
	}
}

func TestPluginPodArgs(t *testing.T) {
	o := &pluginOptions{globals: &globals{format: output.FormatJSON, backend: "fentry"}, namespace: "shop",
		timeout: 2 * time.Second, duration: time.Hour, count: 3, probe: "http", from: "pod/client", dnsQs: true}
	want := []string{"web", "-n", "shop", "-o", "json", "--timeout", "2s", "--duration", "1h0m0s", "--count", "3",
		"--probe=http", "--from", "pod/client", "--backend", "fentry"}
	if got := o.podArgs("web", false, o.format); !slices.Equal(got, want) {
		t.Errorf("trace: %q\nwant %q", got, want)
	}
	// --from without --probe only picks the node: svctrace there traces
	// every client.
	o.probe = ""
	want = []string{"web", "-n", "shop", "-o", "json", "--timeout", "2s", "--duration", "1h0m0s", "--count", "3", "--backend", "fentry"}
	if got := o.podArgs("web", false, o.format); !slices.Equal(got, want) {
		t.Errorf("trace without --probe: %q\nwant %q", got, want)
	}
	if got, want := o.podArgs("web", true, o.format), []string{"check", "web", "-n", "shop", "-o", "json", "--backend", "fentry"}; !slices.Equal(got, want) {
		t.Errorf("check: %q\nwant %q", got, want)
	}
	// --dns-questions=false goes on to svctrace; its default is svctrace's.
	o.dnsQs = false
	if got := o.podArgs("web", false, o.format); !slices.Contains(got, "--dns-questions=false") {
		t.Errorf("trace with --dns-questions=false: %q", got)
	}
}

// kubectl svctrace -A runs svctrace -A (or -n NAMESPACE alone) on each
// --node, with what goes with it.
func TestPluginEveryServicePodArgs(t *testing.T) {
	o := &pluginOptions{globals: &globals{format: output.FormatText}, namespace: "shop", timeout: 5 * time.Second,
		allNamespaces: true, allVerdicts: true, summaryEvery: time.Minute, dnsQs: true}
	want := []string{"-A", "-o", "text", "--all-verdicts", "--summary-every", "1m0s", "--timeout", "5s"}
	if got := o.podArgs("", false, o.format); !slices.Equal(got, want) {
		t.Errorf("-A: %q\nwant %q", got, want)
	}
	o.allNamespaces = false
	if got, want := o.podArgs("", true, o.format), []string{"check", "-n", "shop", "-o", "text"}; !slices.Equal(got, want) {
		t.Errorf("check -n shop: %q\nwant %q", got, want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-A"}, "add --node NODE"},
		{[]string{"web", "-A"}, "name no Service"},
		{[]string{"-A", "-n", "shop"}, "does not go with -n"},
		{[]string{"check"}, "or check every Service with -A --node NODE"},
		{[]string{"-A", "--node", "w2", "--from", "pod/x"}, "--probe and --from are about one Service"},
	} {
		cmd := newPlugin(&bytes.Buffer{}, &bytes.Buffer{})
		cmd.SetArgs(tc.args)
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("kubectl svctrace %q: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestPluginPodSpec(t *testing.T) {
	o := &pluginOptions{globals: &globals{format: output.FormatText, stdout: &bytes.Buffer{}}, namespace: "shop", podNamespace: "svctrace",
		account: "default", startTimeout: 2 * time.Minute, timeout: 5 * time.Second}
	t.Setenv("SVCTRACE_IMAGE", "registry.example/svctrace:v2")
	for _, tc := range []struct {
		check    bool
		duration time.Duration
		image    string
		deadline time.Duration
		want     string
	}{
		// A check ends quickly: the Pod gets the start's time and 5 minutes.
		{check: true, deadline: 7 * time.Minute, want: "registry.example/svctrace:v2"},
		{duration: time.Hour, image: "mine:1", deadline: time.Hour + 4*time.Minute, want: "mine:1"},
		{want: "registry.example/svctrace:v2"}, // --duration 0: until Ctrl-C, no deadline
	} {
		o.duration, o.image = tc.duration, tc.image
		s := o.podSpec("web", tc.check)
		if s.Deadline != tc.deadline || s.Image != tc.want || s.Namespace != "svctrace" || s.ServiceAccount != "default" {
			t.Errorf("check %v, duration %s, --image %q: %+v; want deadline %s, image %s", tc.check, tc.duration, tc.image, s, tc.deadline, tc.want)
		}
		if len(s.Env) > 0 {
			t.Errorf("env %v for output that is no terminal", s.Env)
		}
	}
}
