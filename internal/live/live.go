// Package live runs a trace: it reads the tracer's events, assembles them
// into connections and hands each finished connection on, until told to stop.
package live

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
)

// Options configure Run.
type Options struct {
	Flow flow.Options
	// Count stops the trace after this many connections (0: no limit).
	Count int
	// Quiesce, once closed, stops the trace as soon as no connection is
	// being followed any more (the lab: all its clients are done).
	Quiesce <-chan struct{}
	// Conn receives each finished connection and the events lost so far.
	Conn func(c *flow.Conn, lost uint64)
	// Reuse: Conn keeps nothing of a connection once it returns, and the
	// assembler reuses its memory for new ones (flow.Assembler.Release).
	Reuse bool
	// Flush, if set, is called whenever Run has handed over what it has:
	// after each batch of events, each tick and at the end (output held
	// meanwhile can go out).
	Flush func()
	// Lost is called when the lost-event count grows.
	Lost func(total uint64)
	// Record, if set, receives every event before it is assembled.
	Record func(nf.Event)
	// Journal, if set, receives everything the assembler is given, in
	// order: Replay of what it kept prints what Run printed.
	Journal Journal
	// Alive, if set, is asked at every tick whether tracing can go on (the
	// traced namespace still exists): an error ends Run with it, after the
	// connections being followed are reported.
	Alive func() error
}

// Journal keeps the assembler's inputs (svctrace -w).
type Journal interface {
	Event(nf.Event)
	Tick(now uint64)
	Lost(total uint64)
	Flush(now uint64)
}

// Source is where Run reads events: a *tracer.Tracer.
type Source interface {
	// ReadRecord appends the events of the next ring buffer record (a
	// packet's path holds several) to out, waiting until the deadline.
	ReadRecord(out []nf.Event) ([]nf.Event, error)
	SetDeadline(time.Time)
	// Waiting says the reader is about to wait for events with nothing
	// followed (true) or has stopped waiting (false): while it waits, the
	// first event wakes it at once.
	Waiting(bool)
	// Wake makes a Read that waits for events return those there are,
	// then os.ErrDeadlineExceeded, now.
	Wake()
	Lost() uint64
}

// holder is a Source that holds some events back (tracer.Options.Hold)
// until told to stop: then the next read after Unhold returns them.
type holder interface{ Unhold() }

// Result says how a trace ended.
type Result struct {
	Conns   int
	Lost    uint64
	Orphans int
}

// tick is how often timeouts are checked and losses looked up while
// connections are followed; while none is, every idleDrain: a node's
// tracer must cost nothing while nothing happens.
const tick = 100 * time.Millisecond

// drainEvery is how long the reader waits for an event before it reports
// the ring buffer empty, while connections are followed: the kernel wakes
// it only once 64 KiB wait (waking it for every event would cost the CPU
// that sends the packet). While nothing is followed it waits up to
// idleDrain, and the first event wakes it (Source.Waiting): idle, svctrace
// wakes every idleDrain, to check that the traced namespace is still there.
// Each wake-up costs the Go runtime about a millisecond of CPU (a thread
// back from a blocking wait, the scheduler's monitor spinning after it):
// every 5 s, idle costs well under 0.1 % of a core.
const (
	drainEvery = 50 * time.Millisecond
	idleDrain  = 5 * time.Second
)

// readBatch is how many events the reader hands over at once, about: it
// hands over fewer when the ring buffer is empty, and a record's events go
// together (room for maxPerRecord more). batches is how many batches go
// round between the reader and the assembler.
const (
	readBatch    = 256
	maxPerRecord = 16
	batches      = 8
)

// batch is what the reader hands over: events, decoded in place, and
// (drained set) the news that the ring buffer was empty after them, at
// time drained.
type batch struct {
	evs     []nf.Event
	drained uint64
}

func newBatch() *batch { return &batch{evs: make([]nf.Event, 0, readBatch+maxPerRecord)} }

// maxDrain bounds how long Run reads on after it was told to stop, should
// the ring buffer never be found empty.
const maxDrain = 2 * time.Second

// Run traces until ctx is done, Count connections were seen, Alive fails, or
// Quiesce is closed and nothing is left to follow. However it stops, it first
// reads what the kernel reported until then (the ring buffer, the reader's
// batch), so every connection seen is reported, and connections still open
// at the end are reported with what was seen of them.
func Run(ctx context.Context, tr Source, opts Options) (Result, error) {
	a := flow.New(opts.Flow)
	var res Result
	events := make(chan *batch, batches)
	readErr := make(chan error, 1)
	// The reader ends when the tracer is closed or, should the channel be
	// full, when Run returns. When the ring buffer is empty it says so,
	// through the same channel: everything that happened before has been
	// handed over. Timeouts are judged by that clock, not the wall's, so a
	// reader that lags behind the kernel (a slow machine, a burst) never
	// finishes a connection whose last events are still on their way.
	stop := make(chan struct{})
	defer close(stop)
	// busy: connections are followed, or Run is stopping; the reader and
	// the ticker keep the short cadence.
	var busy atomic.Bool
	// Items go over in batches: a channel operation per event cost more
	// than assembling it. A fixed number of batches go round: they come
	// back to be filled again (free), and a reader that is that far ahead
	// waits (the ring buffer holds the kernel's events meanwhile), rather
	// than allocate one for every time it finds the ring buffer empty.
	free := make(chan *batch, batches)
	for range batches - 1 {
		free <- newBatch()
	}
	go func() {
		b := newBatch()
		// send hands the batch over and takes a free one; false: Run has
		// returned.
		send := func() bool {
			select {
			case events <- b:
			case <-stop:
				return false
			}
			select {
			case b = <-free:
			case <-stop:
				return false
			}
			return true
		}
		for {
			// One wait: read until the ring buffer is found empty, the
			// deadline passes or Wake. The deadline and the clock are set
			// once per wait, not per record.
			before := nf.Now()
			idle := !busy.Load()
			if idle {
				tr.Waiting(true)
				tr.SetDeadline(time.Now().Add(idleDrain))
			} else {
				tr.SetDeadline(time.Now().Add(drainEvery))
			}
			for {
				var err error
				n := len(b.evs)
				b.evs, err = tr.ReadRecord(b.evs)
				if err != nil {
					if idle {
						tr.Waiting(false)
					}
					if !errors.Is(err, os.ErrDeadlineExceeded) {
						readErr <- err
						return
					}
					b.drained = before
					break
				}
				if idle {
					// The first event after a quiet spell: the rest of
					// its burst is handed over at the busy cadence.
					tr.Waiting(false)
					tr.SetDeadline(time.Now().Add(drainEvery))
					idle = false
				}
				if len(b.evs) == n {
					continue // a record that held no event the decoder could read
				}
				if len(b.evs) >= readBatch && !send() {
					return
				}
			}
			if !send() {
				return
			}
		}
	}()
	// seen is the time up to which every event has been assembled.
	var seen uint64

	full := func() bool { return opts.Count > 0 && res.Conns >= opts.Count }
	// emit hands on finished connections, no more than Count in all, and
	// reports whether Count is reached.
	emit := func(cs []*flow.Conn) bool {
		for _, c := range cs {
			if full() {
				break
			}
			res.Conns++
			if opts.Conn != nil {
				opts.Conn(c, res.Lost)
			}
			if opts.Reuse {
				a.Release(c)
			}
		}
		return full()
	}
	j := opts.Journal
	if j == nil {
		j = noJournal{}
	}
	checkLost := func() {
		if n := tr.Lost(); n > res.Lost {
			res.Lost = n
			j.Lost(n)
			if opts.Lost != nil {
				opts.Lost(n)
			}
		}
	}

	// Stopping: from stopAt on, Run reads on until everything the kernel
	// reported before then is assembled (seen reaches it), or maxDrain
	// passed, then reports every connection still followed.
	var stopAt uint64
	var stopErr error
	var drained <-chan time.Time
	done := ctx.Done()
	// The ticker runs while busy; idle, the reader's return every
	// idleDrain is the tick (one wake-up, not two).
	ticker := time.NewTicker(tick)
	ticker.Stop()
	defer ticker.Stop()
	var tickC <-chan time.Time
	// pace sets the cadence: short while anything is followed or Run is
	// stopping, and wakes the reader when that begins.
	pace := func(now bool) {
		if busy.Load() == now {
			return
		}
		busy.Store(now)
		if now {
			ticker.Reset(tick)
			tickC = ticker.C
			tr.Wake()
		} else {
			ticker.Stop()
			tickC = nil
		}
	}
	halt := func(err error) {
		if stopAt == 0 {
			// What the tracer holds back (tracer.Options.Hold) comes out
			// before the ring buffer is next found empty.
			if h, ok := tr.(holder); ok {
				h.Unhold()
			}
			stopAt, stopErr, done = nf.Now(), err, nil
			drained = time.After(maxDrain)
			pace(true)
		}
	}
	flush := func() {
		if opts.Flush != nil {
			opts.Flush()
		}
	}
	finish := func() (Result, error) {
		checkLost()
		now := max(nf.Now(), seen)
		j.Flush(now)
		emit(a.Flush(now))
		flush()
		res.Orphans = a.Orphans
		return res, stopErr
	}

	quiesce := opts.Quiesce
	// quiesced is when Quiesce was closed. Run stops only once the reader
	// has found the ring buffer empty after that: until then, events of
	// the traffic may still be in the ring buffer or in the reader's batch
	// (on a slow machine the whole trace was, and Run reported nothing).
	var quiesced uint64
	// onTick checks timeouts, losses and that the trace may go on; it
	// reports whether Run is done.
	onTick := func() bool {
		if opts.Alive != nil && stopAt == 0 {
			if err := opts.Alive(); err != nil {
				halt(err)
			}
		}
		checkLost()
		if seen != 0 {
			j.Tick(seen)
		}
		if emit(a.Tick(seen)) {
			halt(nil)
		}
		return quiesced != 0 && seen >= quiesced && a.Active() == 0 && len(events) == 0
	}
	for {
		if stopAt != 0 && seen >= stopAt {
			return finish()
		}
		pace(a.Active() > 0 || stopAt != 0 || quiesced != 0)
		select {
		case b := <-events:
			// By reference: an event is some 450 bytes, and copies of
			// them were a good part of the cost of an event.
			for i := range b.evs {
				ev := &b.evs[i]
				seen = max(seen, ev.Time)
				if opts.Record != nil {
					opts.Record(*ev)
				}
				if opts.Journal != nil {
					opts.Journal.Event(*ev)
				}
				if emit(a.Add(ev)) {
					halt(nil)
				}
			}
			seen = max(seen, b.drained)
			b.evs, b.drained = b.evs[:0], 0
			free <- b // never blocks: there is room for every batch
			if !busy.Load() && onTick() {
				return finish()
			}
			flush()
		case <-tickC:
			if onTick() {
				return finish()
			}
			flush()
		case <-quiesce:
			quiesced, quiesce = nf.Now(), nil
			pace(true)
		case err := <-readErr:
			if errors.Is(err, nf.ErrClosed) {
				return finish()
			}
			res.Orphans = a.Orphans
			return res, err
		case <-done:
			halt(nil)
		case <-drained:
			return finish()
		}
	}
}

// Collect traces while traffic runs and returns the connections once traffic
// has returned and every connection it started has been reported (or ctx is
// done). opts.Conn, if set, still sees each connection as it completes.
func Collect(ctx context.Context, tr Source, opts Options, traffic func()) ([]*flow.Conn, Result, error) {
	var conns []*flow.Conn
	quiesce := make(chan struct{})
	each := opts.Conn
	opts.Quiesce = quiesce
	opts.Conn = func(c *flow.Conn, lost uint64) {
		conns = append(conns, c)
		if each != nil {
			each(c, lost)
		}
	}
	type ended struct {
		res Result
		err error
	}
	done := make(chan ended, 1)
	go func() {
		res, err := Run(ctx, tr, opts)
		done <- ended{res, err}
	}()
	traffic()
	close(quiesce)
	e := <-done // Run's goroutine made every append before this receive
	return conns, e.res, e.err
}

type noJournal struct{}

func (noJournal) Event(nf.Event) {}
func (noJournal) Tick(uint64)    {}
func (noJournal) Lost(uint64)    {}
func (noJournal) Flush(uint64)   {}

// Input is one thing a journal kept.
type Input struct {
	Event *nf.Event
	Tick  uint64 // set for a tick
	Lost  uint64 // set when the lost count grew
	Flush uint64 // set for the end
}

// Replay gives the assembler what a journal kept, in order, and hands on
// connections as Run did: the same ones, in the same order, with the same
// lost counts. next returns the inputs one by one, false at the end.
func Replay(opts Options, next func() (Input, bool)) Result {
	a := flow.New(opts.Flow)
	var res Result
	emit := func(cs []*flow.Conn) bool {
		for _, c := range cs {
			if opts.Count > 0 && res.Conns >= opts.Count {
				return true
			}
			res.Conns++
			if opts.Conn != nil {
				opts.Conn(c, res.Lost)
			}
			if opts.Reuse {
				a.Release(c)
			}
		}
		return opts.Count > 0 && res.Conns >= opts.Count
	}
	var last uint64
	for {
		in, ok := next()
		if !ok {
			// Cut short: report what was being followed, as of the last
			// time seen.
			emit(a.Flush(last))
			break
		}
		if in.Flush != 0 {
			emit(a.Flush(in.Flush))
			break
		}
		switch {
		case in.Event != nil:
			last = max(last, in.Event.Time)
			if opts.Record != nil {
				opts.Record(*in.Event)
			}
			emit(a.Add(in.Event))
		case in.Tick != 0:
			last = max(last, in.Tick)
			emit(a.Tick(in.Tick))
		case in.Lost != 0:
			res.Lost = in.Lost
			if opts.Lost != nil {
				opts.Lost(in.Lost)
			}
		}
	}
	res.Orphans = a.Orphans
	return res
}
