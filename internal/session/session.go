// Package session runs what the commands share: a live trace (attach,
// record, the live loop, reports to a printer, the status line), the
// svctrace SERVICE session around it (objects, diagnosis, watch,
// re-assessment, probes), and the replay of a recording (svctrace
// analyze). The commands only turn flags into a Config.
package session

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/logging"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/tracer"
)

// ErrReported is logging.ErrReported: what went wrong was already said.
var ErrReported = logging.ErrReported

// IO is where a session writes and how it prints.
type IO struct {
	Stdout, Stderr io.Writer
	// Printer makes the -o printer on Stdout with opts (Color is the
	// caller's to set).
	Printer func(opts output.Options) (output.Printer, error)
	// Text: -o text, where the lab prints its headers.
	Text bool
	// Packets: the printer writes the packets (-o pcapng).
	Packets bool
	// Status draws a status line on Stderr (a terminal) while tracing.
	Status bool
	// Log is where messages go (internal/logging): stderr, one prefix.
	Log *slog.Logger
}

func (o IO) say(format string, args ...any)  { o.Log.Info(fmt.Sprintf(format, args...)) }
func (o IO) warn(format string, args ...any) { o.Log.Warn(fmt.Sprintf(format, args...)) }
func (o IO) logf(format string, args ...any) { logging.Printf(o.Log)(format, args...) }

// Trace is one live trace: where, what, and how to name what is seen.
type Trace struct {
	IO
	NetNS    string
	Targets  []nf.Target
	Backend  string
	Duration time.Duration
	Count    int
	Timeout  time.Duration
	// IsService reports whether an address is one the node should
	// translate; nil: every target is.
	IsService func(nf.Proto, netip.AddrPort) bool
	// Explainer explains the connections and names their addresses, as
	// known when each completes; nil: addresses only.
	Explainer func() report.Explainer
	// Show, if set, picks the connections to explain and print; the
	// others are only counted (svctrace -A prints the failing ones).
	Show func(*flow.Conn) bool
	// Tally, if set, sees every connection's report (without explanation
	// when not shown), in turn with the printing.
	Tally func(report.Conn)
	// StatusMore, if set, adds to the status line; it runs in turn with
	// Tally.
	StatusMore func() string
	// Closing, if set, prints what comes before the summary at the end.
	Closing func(output.Printer)
	// MaxTargets is the filter's size (tracer.Options.MaxTargets).
	MaxTargets int
	// Hold: connections answered within a third of Timeout are counted
	// in the kernel, not reported (tracer.Options.Hold; Answered reads
	// the counts); the others are reported up to that much later.
	Hold bool
	// Started runs once the observers are attached (watches that re-feed
	// the targets, probes); print hands it the printer, in turn with the
	// connections' reports.
	Started func(ctx context.Context, tr *tracer.Tracer, print func(func(output.Printer)))
	// Rec, if set, records the trace (-w): it begins once the observers
	// are attached, and is closed (removed if it never began) when Run
	// returns. Mode and Meta say what to put in its first record,
	// RecordState what follows it (the Service's objects and the node's
	// rules).
	Rec         *record.Writer
	Snaplen     int
	EveryPacket bool
	// DNSQuestions reads the DNS header and first question of the
	// targets' port-53 packets (--dns-questions): the Service sessions
	// keep it only when they trace the cluster's DNS Service.
	DNSQuestions bool
	Mode         string
	Meta         func(*record.Meta)
	RecordState  func()
}

// holdFor is tracer.Options.Hold: a third of the no-reply timeout, so a
// connection held that long and taken from the kernel a little later still
// reaches the assembler well before it would judge it unanswered.
func (s Trace) holdFor() time.Duration {
	if !s.Hold {
		return 0
	}
	return cmp.Or(s.Timeout, flow.DefaultTimeout) / 3
}

// answeredTotal is how many answered connections tr only counted
// (tracer.Options.Hold).
func answeredTotal(tr *tracer.Tracer) int {
	n := 0
	for _, k := range tr.Answered() {
		n += int(k)
	}
	return n
}

// batcher is standard output that can hold what is written until Flush
// (outstream.Writer).
type batcher interface {
	Batch(on bool)
	Flush() error
}

// Run attaches, prints each connection as it completes and a summary at
// the end.
func Run(ctx context.Context, s Trace) error {
	if s.Rec != nil {
		defer s.Rec.Close(record.End{}) // on an error; a clean end closes first
	}
	start := time.Now()
	tr, err := tracer.Open(tracer.Options{NetNS: s.NetNS, Targets: s.Targets, Backend: s.Backend, Snaplen: s.Snaplen,
		NoData: s.Rec == nil && !s.Packets, DNSQuestions: s.DNSQuestions, EveryPacket: s.EveryPacket,
		CountEvery: tracer.CountEveryFor(s.Timeout), MaxTargets: s.MaxTargets, Hold: s.holdFor(), Logf: s.logf})
	if err != nil {
		return err
	}
	defer tr.Close()
	info := tr.Info()
	s.logf("attached in %s", time.Since(start).Round(time.Millisecond))
	for _, sk := range info.Skipped {
		s.warn("not probed: %s", sk)
	}
	overlays := ""
	if len(info.Overlays) > 0 {
		overlays = "; overlay packets by the packets they carry: " + strings.Join(info.Overlays, ", ")
	}
	// The clock a recording starts at is read before "tracing" is said:
	// whoever acts on that line (a test, an operator, another node's
	// stitching) finds every event it causes after the trace's start.
	clock := nf.NewClock()
	s.say("tracing %s in %s with %s (%d %s, drops: %s%s); Ctrl-C to stop",
		targetList(s.Targets), info.NetNS, info.Backend, info.Links, ProbesWord(info.Backend), OrNone(info.Drops), overlays)
	// Loading decoded the kernel's BTF (tens of MB of heap, and the mapped
	// vmlinux file); none of it is needed while tracing. Give it back now
	// rather than hold it for the whole run, beside what follows: the
	// observers are already watching.
	go debug.FreeOSMemory()

	p, err := s.Printer(output.Options{Wall: clock.Time})
	if err != nil {
		return err
	}
	flowOpts := flow.Options{
		NodeNetNS: info.NetNS.Inode,
		IsService: s.IsService,
		Timeout:   s.Timeout,
		IfName:    nf.NewIfNames(info.NetNS).Name,
	}
	var journal live.Journal
	if s.Rec != nil {
		m := StartMeta(s.Mode, info, s.Targets, s.Timeout, s.Count, clock)
		if s.Meta != nil {
			s.Meta(&m)
		}
		s.Watch(s.Rec)
		s.Rec.Begin(m)
		if s.RecordState != nil {
			s.RecordState()
		}
		s.Rec.Conntrack(record.Snapshot(info.NetNS, s.Targets))
		flowOpts.IfName = recordingIfNames(info.NetNS, s.Rec)
		journal = s.Rec
	}
	if s.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Duration)
		defer cancel()
	}
	// Loading (the kernel's BTF, the object, the node's rules) left tens
	// of MB of garbage: collected and returned to the system now, while
	// the trace begins, not piecemeal over the first idle seconds.
	go debug.FreeOSMemory()
	// Without a status line to keep in step with, what is printed goes out
	// once per batch of events the assembler takes, not once per
	// connection: thousands of writes a second otherwise.
	var flushOut func()
	if b, ok := s.Stdout.(batcher); ok && !s.Status {
		b.Batch(true)
		defer b.Batch(false)
		flushOut = func() { b.Flush() }
	}
	var sum output.Summary
	st := newStatus(s.IO, &sum)
	st.more = s.StatusMore
	if s.Hold {
		st.counted = func() int { return answeredTotal(tr) }
	}
	stopStatus := st.show(ctx)
	if s.Started != nil {
		s.Started(ctx, tr, func(f func(output.Printer)) {
			st.around(func() { f(p) })
			if flushOut != nil {
				flushOut()
			}
		})
	}
	res, err := live.Run(ctx, tr, live.Options{
		Flow:  flowOpts,
		Count: s.Count,
		Conn: func(c *flow.Conn, lost uint64) {
			show := s.Show == nil || s.Show(c)
			var x report.Explainer
			if s.Explainer != nil && show {
				x = s.Explainer()
			}
			r := report.Of(c, x, lost)
			st.around(func() {
				sum.Count(c)
				if s.Tally != nil {
					s.Tally(r)
				}
				if show {
					p.Conn(r)
				}
			})
		},
		// The printers and the summary are done with a connection once
		// they return.
		Reuse:   true,
		Flush:   flushOut,
		Lost:    func(total uint64) { st.around(func() { p.Lost(total) }) },
		Journal: journal,
		Alive:   info.NetNS.Check,
	})
	stopStatus()
	if n := tr.Stats(); n.Records > 0 {
		s.logf("read %d records from the kernel holding %d events, for %d connection(s)", n.Records, n.Events, res.Conns)
	}
	if h := tr.HoldStats(); h.Held > 0 {
		s.logf("held %d connection(s) in the kernel: %d answered and counted (%d of them reported after all: a drop; %d without their start; %d dropped packets after they closed left out), %d released by the kernel (%d for want of room), %d taken by svctrace",
			h.Held, h.Settled, h.Broke, h.Unnamed, h.Over, h.Released, h.NoRoom, h.Taken)
	}
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	// Connections the kernel held and only counted (Hold) are answered
	// ones too.
	if n := answeredTotal(tr); n > 0 {
		sum.Add(flow.Answered, n)
	}
	if s.Closing != nil {
		s.Closing(p)
	}
	p.Summary(sum)
	if s.Rec != nil {
		s.Rec.Conntrack(record.Snapshot(info.NetNS, s.Targets))
		if cerr := s.Rec.Close(record.End{Conns: res.Conns}); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// Watch reports, on stderr as they happen, the recording's size bound and
// its first failed write.
func (o IO) Watch(w *record.Writer) {
	w.Truncated = func(why string) {
		o.warn("%s; recording stopped, tracing goes on", why)
	}
	w.Failed = func(err error) {
		o.Log.Error(fmt.Sprintf("error: %v; tracing goes on, the recording ends here", err))
	}
}

// ProbesWord is what a backend attaches.
func ProbesWord(backend string) string {
	if backend == tracer.BackendNetfilter {
		return "observers"
	}
	return "probes"
}

// OrNone is s, or "not observed".
func OrNone(s string) string {
	if s == "" {
		return "not observed"
	}
	return s
}

// targetList names the traced addresses: the first few of many (svctrace
// -A traces every Service's).
func targetList(ts []nf.Target) string {
	const most = 6
	var s []string
	for _, t := range ts[:min(len(ts), most)] {
		s = append(s, t.String())
	}
	if len(ts) > most {
		return fmt.Sprintf("%d addresses (%s, …)", len(ts), strings.Join(s, ", "))
	}
	return strings.Join(s, ", ")
}

// StartMeta is what a recording says of the trace before its records;
// clock is the one the live run prints times with.
func StartMeta(mode string, info tracer.Info, targets []nf.Target, timeout time.Duration, count int, clock nf.Clock) record.Meta {
	m := record.Meta{Command: os.Args[1:], Mode: mode, Backend: info.Backend, Links: info.Links, Drops: info.Drops,
		NetNS: info.NetNS.Inode, Targets: targets, Timeout: timeout, Count: count, Wall: clock.Wall, Mono: clock.Mono}
	m.Host, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		m.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	return m
}

// recordingIfNames names the node's interfaces and records each name the
// first time it is asked for.
func recordingIfNames(ns nf.NetNS, w *record.Writer) func(uint32) string {
	names := nf.NewIfNames(ns)
	seen := map[uint32]bool{}
	return func(i uint32) string {
		n := names.Name(i)
		if n != "" && !seen[i] {
			seen[i] = true
			w.IfName(record.IfName{Index: i, Name: n})
		}
		return n
	}
}
