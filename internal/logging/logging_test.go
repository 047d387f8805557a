package logging

import (
	"bytes"
	"testing"
)

// Every line starts with the prefix, warnings say so, errors are said as
// they are, and debug lines only with verbose.
func TestLines(t *testing.T) {
	for _, verbose := range []bool{false, true} {
		var b bytes.Buffer
		l := New(&b, verbose)
		l.Info("tracing 10.96.0.10:80/tcp")
		l.Warn("not probed: x")
		l.Error("the recording is incomplete")
		Printf(l)("attached in %s", "3ms")
		l.With("node", "w1").Info("up")
		want := "svctrace: tracing 10.96.0.10:80/tcp\nsvctrace: warning: not probed: x\nsvctrace: the recording is incomplete\n"
		if verbose {
			want += "svctrace: attached in 3ms\n"
		}
		want += "svctrace: up node=w1\n"
		if b.String() != want {
			t.Errorf("verbose %v: %q, want %q", verbose, b.String(), want)
		}
	}
}
