package session

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/output"
)

// status is the one line on stderr, on a terminal only, that says while
// svctrace waits for packets that it is alive and what it saw so far. It
// is cleared while a connection is printed, and at the end.
type status struct {
	mu    sync.Mutex
	w     io.Writer // nil: no status line
	start time.Time
	sum   *output.Summary
	shown bool
	// more, if set, adds to the line (svctrace -A: the failing Service
	// ports), called with the line's lock held.
	more func() string
	// counted, if set, is how many answered connections the tracer only
	// counted (tracer.Options.Hold): they are among the line's.
	counted func() int
}

// newStatus returns the status line for sum, drawn on o.Stderr if o.Status
// says it is a terminal.
func newStatus(o IO, sum *output.Summary) *status {
	s := &status{start: time.Now(), sum: sum}
	if o.Status {
		s.w = o.Stderr
	}
	return s
}

// line is the status in words.
func (s *status) line() string {
	sum := s.sum
	if s.counted != nil {
		if n := s.counted(); n > 0 {
			sum = &output.Summary{}
			for v, k := range s.sum.Verdicts {
				sum.Add(v, k)
			}
			sum.Add(flow.Answered, n)
		}
	}
	l := fmt.Sprintf("tracing for %s: %d connection(s)", time.Since(s.start).Truncate(time.Second), sum.Conns)
	if v := sum.VerdictCounts(); v != "" {
		l += " (" + v + ")"
	}
	if s.more != nil {
		if m := s.more(); m != "" {
			l += "; " + m
		}
	}
	return l + "; Ctrl-C to stop"
}

func (s *status) draw() {
	if s.w != nil {
		fmt.Fprintf(s.w, "\r\x1b[K%s", s.line())
		s.shown = true
	}
}

func (s *status) clear() {
	if s.shown {
		fmt.Fprint(s.w, "\r\x1b[K")
		s.shown = false
	}
}

// around runs f (which prints) with the line cleared, then draws it again.
func (s *status) around(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clear()
	f()
	s.draw()
}

// show draws the line every second until stop is called (or ctx ends),
// which clears it and returns once it is gone.
func (s *status) show(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()
	return func() { cancel(); <-done }
}

// run redraws the line every second until ctx ends, then clears it.
func (s *status) run(ctx context.Context) {
	if s.w == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.clear()
			s.mu.Unlock()
			return
		case <-t.C:
			s.mu.Lock()
			s.draw()
			s.mu.Unlock()
		}
	}
}
