package main

import (
	"slices"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// kubectl's flags become the connection's settings: impersonation for every
// candidate, the request timeout, and whether the credentials were named.
func TestKubeFlags(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		explicit bool
		timeout  time.Duration
		as       string
		given    []string
		err      string
	}{
		{args: []string{"-n", "shop"}},
		{args: []string{"--as", "alice", "--as-group", "dev", "--request-timeout", "5s"}, as: "alice", timeout: 5 * time.Second,
			given: []string{"--as", "--as-group", "--request-timeout"}},
		{args: []string{"--server", "https://10.0.0.1:6443", "--token", "t", "--request-timeout", "7"}, explicit: true, timeout: 7 * time.Second,
			given: []string{"--request-timeout", "--server", "--token"}},
		{args: []string{"--context", "prod", "--insecure-skip-tls-verify"}, explicit: true, given: []string{"--context", "--insecure-skip-tls-verify"}},
		{args: []string{"--request-timeout", "soon"}, given: []string{"--request-timeout"}, err: `--request-timeout "soon": want a duration such as 5s or 1m, or 0`},
	} {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		k := addKubeFlags(fs, "ns")
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%q: %v", tc.args, err)
		}
		opts, err := k.connectOptions("")
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil || opts.Explicit != tc.explicit || opts.Timeout != tc.timeout || opts.Impersonate.UserName != tc.as {
			t.Errorf("%q: %+v, %v; want explicit %v, timeout %s, as %q", tc.args, opts, err, tc.explicit, tc.timeout, tc.as)
		}
		if got := k.given(); !slices.Equal(got, tc.given) {
			t.Errorf("%q: given %q, want %q", tc.args, got, tc.given)
		}
	}
}

// The rarely used flags are accepted but not listed.
func TestKubeFlagsHidden(t *testing.T) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	addKubeFlags(fs, "ns")
	for _, n := range []string{"as", "as-group", "server", "token", "request-timeout", "kubeconfig", "context", "namespace"} {
		if f := fs.Lookup(n); f == nil || f.Hidden {
			t.Errorf("--%s: %+v, want it listed", n, f)
		}
	}
	for _, n := range []string{"certificate-authority", "insecure-skip-tls-verify", "cache-dir"} {
		if f := fs.Lookup(n); f == nil || !f.Hidden {
			t.Errorf("--%s: %+v, want it accepted and hidden", n, f)
		}
	}
}
