package live

import (
	"cmp"
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

// ring is what the fake sources share: a deadline, and Wake ending a wait
// as the tracer's does (newRing).
type ring struct {
	deadline time.Time
	woken    chan struct{}
}

func (r *ring) SetDeadline(d time.Time) { r.deadline = d }
func (r *ring) Lost() uint64            { return 0 }
func (r *ring) Waiting(bool)            {}
func (r *ring) Wake() {
	select {
	case r.woken <- struct{}{}:
	default:
	}
}

func newRing() ring { return ring{woken: make(chan struct{}, 1)} }

// lagging hands over recorded events as a tracer whose reader falls behind
// the kernel would: its first read returns only at ready.
type lagging struct {
	ring
	evs   []nf.Event
	ready time.Time
}

func (s *lagging) ReadRecord(out []nf.Event) ([]nf.Event, error) {
	time.Sleep(time.Until(s.ready)) // the reader's goroutine was not scheduled
	if len(s.evs) == 0 {
		select {
		case <-time.After(time.Until(s.deadline)):
		case <-s.woken:
		}
		return out, os.ErrDeadlineExceeded
	}
	ev := s.evs[0]
	s.evs = s.evs[1:]
	return append(out, ev), nil
}

// The lab's trace ends when its clients are done and nothing is followed
// any more; events the reader has not handed over yet still count. On the
// 6.12 kernel under emulation the reader lagged, and the lab reported no
// connection at all.
// recentLabEvents are the lab's recorded events, moved in time so that
// they happened just before now, the assembler options for them, and the
// connections they hold.
func recentLabEvents(t *testing.T) ([]nf.Event, flow.Options, []*flow.Conn) {
	t.Helper()
	evs, err := tracetest.ReadEvents(tracetest.LabEvents())
	if err != nil {
		t.Fatal(err)
	}
	// In time order, as a ring buffer hands them over (the recording
	// interleaves the lab's scenarios), all reported before now: the last
	// 100 ms ago.
	slices.SortStableFunc(evs, func(a, b nf.Event) int { return cmp.Compare(a.Time, b.Time) })
	last, now := evs[len(evs)-1].Time, nf.Now()
	for i := range evs {
		evs[i].Time = now - 100*uint64(time.Millisecond) - (last - evs[i].Time)
	}
	opts := flow.Options{NodeNetNS: evs[0].NetNS, Timeout: 1500 * time.Millisecond}
	want, _ := tracetest.Replay(evs, opts)
	if len(want) == 0 {
		t.Fatal("the recording holds no connection")
	}
	return evs, opts, want
}

func TestCollectWaitsForLaggingReader(t *testing.T) {
	// The recording happened before the traffic "ends" now.
	evs, opts, want := recentLabEvents(t)
	src := &lagging{ring: newRing(), evs: evs, ready: time.Now().Add(300 * time.Millisecond)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, _, err := Collect(ctx, src, Options{Flow: opts}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d connections, want the %d the recording holds", len(got), len(want))
	}
}

// However a trace is stopped — Ctrl-C (ctx), Count, the namespace gone
// (Alive) — what the kernel reported before is read and every connection
// it holds reported, even from a reader that has handed over nothing yet.
func TestStopReadsWhatWasReported(t *testing.T) {
	evs, opts, want := recentLabEvents(t)
	gone := errors.New("the traced network namespace was deleted")
	for _, tc := range []struct {
		name    string
		count   int
		alive   func() error
		cancel  bool
		wantErr error
	}{
		{name: "ctx", cancel: true},
		{name: "count", count: 2},
		{name: "alive", alive: func() error { return gone }, wantErr: gone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &lagging{ring: newRing(), evs: slices.Clone(evs), ready: time.Now().Add(300 * time.Millisecond)}
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			var got []*flow.Conn
			res, err := Run(ctx, src, Options{Flow: opts, Count: tc.count, Alive: tc.alive,
				Conn: func(c *flow.Conn, _ uint64) { got = append(got, c) }})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			n := len(want)
			if tc.count > 0 {
				n = tc.count
			}
			if len(got) != n || res.Conns != n {
				t.Errorf("%d connections (result %d), want %d", len(got), res.Conns, n)
			}
		})
	}
}

// quiet is a ring buffer that stays empty until at, when one event arrives:
// a Read waits for it, for the deadline or for Wake.
type quiet struct {
	ring
	at   time.Time
	ev   nf.Event
	sent bool
}

func (s *quiet) ReadRecord(out []nf.Event) ([]nf.Event, error) {
	until := s.deadline
	if !s.sent && s.at.Before(until) {
		until = s.at
	}
	select {
	case <-time.After(time.Until(until)):
	case <-s.woken:
		return out, os.ErrDeadlineExceeded
	}
	if !s.sent && !time.Now().Before(s.at) {
		s.sent = true
		return append(out, s.ev), nil
	}
	return out, os.ErrDeadlineExceeded
}

// The first event after a quiet spell is assembled at once, not when the
// reader's long idle wait ends: it gets the busy cadence from then on.
func TestFirstEventAfterQuietIsHandedOverPromptly(t *testing.T) {
	evs, opts, _ := recentLabEvents(t)
	src := &quiet{ring: newRing(), at: time.Now().Add(100 * time.Millisecond), ev: evs[0]}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan time.Time, 1)
	go Run(ctx, src, Options{Flow: opts, Record: func(nf.Event) { seen <- time.Now() }})
	select {
	case got := <-seen:
		if d := got.Sub(src.at); d > idleDrain/2 {
			t.Errorf("the event was assembled %s after it arrived; want well within the idle wait (%s)", d, idleDrain)
		}
	case <-time.After(2 * idleDrain):
		t.Fatal("the event was never assembled")
	}
}

// Every connection handed to Conn is followed by a Flush before Run waits
// again or returns: output held until then goes out within a tick. With
// Reuse, the connections are the lab's all the same (memory reused).
func TestFlushFollowsEveryConnection(t *testing.T) {
	evs, opts, want := recentLabEvents(t)
	src := &lagging{ring: newRing(), evs: slices.Clone(evs), ready: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var seq []string
	var verdicts []flow.Verdict
	quiesce := make(chan struct{})
	close(quiesce)
	_, err := Run(ctx, src, Options{Flow: opts, Quiesce: quiesce, Reuse: true,
		Conn:  func(c *flow.Conn, _ uint64) { seq = append(seq, "conn"); verdicts = append(verdicts, c.Verdict) },
		Flush: func() { seq = append(seq, "flush") }})
	if err != nil {
		t.Fatal(err)
	}
	if len(verdicts) != len(want) {
		t.Fatalf("%d connections, want %d", len(verdicts), len(want))
	}
	for i, c := range want {
		if !slices.Contains(verdicts, c.Verdict) {
			t.Errorf("connection %d: no %s among %v", i, c.Verdict, verdicts)
		}
	}
	if len(seq) == 0 || seq[len(seq)-1] != "flush" {
		t.Errorf("the last connection was not flushed: %v", seq)
	}
}
