package session

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/output"
)

// The status line is cleared before a connection is printed and drawn
// again after it, with the count; nothing at all when stderr is no
// terminal.
func TestStatusLine(t *testing.T) {
	var sum output.Summary
	var b bytes.Buffer
	if s := newStatus(IO{Stderr: &b}, &sum); s.w != nil {
		t.Fatal("a status line on a buffer, not a terminal")
	}
	s := &status{w: &b, start: time.Now(), sum: &sum}
	s.around(func() { b.WriteString("#1\n") })
	sum.Count(&flow.Conn{Verdict: flow.Dropped})
	s.around(func() { b.WriteString("#2\n") })
	want := "#1\n\r\x1b[Ktracing for 0s: 0 connection(s); Ctrl-C to stop" +
		"\r\x1b[K#2\n\r\x1b[Ktracing for 0s: 1 connection(s) (1 dropped); Ctrl-C to stop"
	if b.String() != want {
		t.Errorf("status output %q, want %q", b.String(), want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.run(ctx)
	if !strings.HasSuffix(b.String(), "Ctrl-C to stop\r\x1b[K") {
		t.Errorf("the line was not cleared at the end: %q", b.String())
	}
}

// Connections the kernel only counted (svctrace -A) are among the line's
// answered ones; the summary itself is left as it is.
func TestStatusLineAddsCounted(t *testing.T) {
	var sum output.Summary
	sum.Count(&flow.Conn{Verdict: flow.Dropped})
	s := &status{start: time.Now(), sum: &sum, counted: func() int { return 41 }}
	if got, want := s.line(), "tracing for 0s: 42 connection(s) (41 answered, 1 dropped); Ctrl-C to stop"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	if sum.Conns != 1 || sum.Verdicts[flow.Answered] != 0 {
		t.Errorf("the summary changed: %+v", sum)
	}
}
