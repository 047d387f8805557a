package main

import (
	"context"
	"fmt"
	"net/netip"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/tracer"
)

type traceOptions struct {
	*globals
	addrs    []string
	netns    string
	duration time.Duration
	count    int
	timeout  time.Duration
	rec      recordFlags

	targets []tracer.Target
}

func newTrace(g *globals) *cobra.Command {
	o := &traceOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "trace --addr IP:PORT[/tcp|udp] [--addr …] [--netns NAME|PATH|PID]",
		Short: "Trace connections to addresses you name (no Kubernetes needed)",
		Long: `Trace every connection to the given addresses through this node's netfilter path.
Each address is treated as a Service address: svctrace expects the node to translate it
(DNAT) and says so when it does not.

The observers are attached in the network namespace given with --netns (the node's own
by default): a name from 'ip netns list', a path such as /proc/1234/ns/net, or a PID.`,
		Example: `  # a ClusterIP, on this node
  sudo svctrace trace --addr 10.96.0.10:80

  # the lab's node namespace (see: svctrace lab --keep), stop after 3 connections
  sudo svctrace trace --netns svctrace-lab-1a2b3c-node --addr 10.96.0.10:80 --count 3

  # DNS over UDP, as JSON
  sudo svctrace trace --addr 10.96.0.10:53/udp -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.addrs, "addr", nil, "address to trace, IP:PORT with optional /tcp (default), /udp or /sctp; repeatable")
	f.StringVar(&o.netns, "netns", "", "network namespace to trace in: name, path or PID (default: svctrace's own)")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (default: until Ctrl-C)")
	f.IntVar(&o.count, "count", 0, "stop after this many connections")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "report a connection as no-reply after this long without an answer")
	o.rec.add(f)
	return cmd
}

func (o *traceOptions) validate() error {
	if len(o.addrs) == 0 {
		return fmt.Errorf("nothing to trace: give at least one --addr IP:PORT, e.g. --addr 10.96.0.10:80")
	}
	for _, a := range o.addrs {
		t, err := parseTarget(a)
		if err != nil {
			return err
		}
		o.targets = append(o.targets, t)
	}
	if err := checkStops(o.count, o.duration, o.timeout); err != nil {
		return err
	}
	return o.rec.validate()
}

// checkStops checks the flags that say when tracing stops.
func checkStops(count int, duration, timeout time.Duration) error {
	if count < 0 || duration < 0 || timeout <= 0 {
		return fmt.Errorf("--count and --duration must not be negative, --timeout must be positive (e.g. --duration 30s --timeout 5s)")
	}
	return nil
}

// parseTarget reads IP:PORT[/proto] ([IPv6]:PORT for IPv6).
func parseTarget(s string) (tracer.Target, error) {
	addr, proto := s, "tcp"
	if i := strings.LastIndex(s, "/"); i >= 0 {
		addr, proto = s[:i], s[i+1:]
	}
	p, err := tracer.ParseProto(proto)
	if err != nil {
		return tracer.Target{}, fmt.Errorf("invalid --addr %q: %v", s, err)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		return tracer.Target{}, fmt.Errorf("invalid --addr %q: want IP:PORT with an optional /tcp, /udp or /sctp, e.g. 10.96.0.10:80 or [fd00::10]:53/udp", s)
	}
	return tracer.Target{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Proto: p}, nil
}

func (o *traceOptions) run(ctx context.Context) error {
	services := map[tracer.Target]bool{}
	for _, t := range o.targets {
		services[t] = true
	}
	w, err := o.rec.create()
	if err != nil {
		return err
	}
	return o.trace(ctx, session{netns: o.netns, targets: o.targets, duration: o.duration, count: o.count, timeout: o.timeout,
		isService: func(p tracer.Proto, a netip.AddrPort) bool { return services[tracer.Target{Addr: a, Proto: p}] },
		rec:       w, snaplen: o.rec.snaplen, everyPacket: o.rec.everyPacket, mode: "trace",
		recordState: func() { w.Services(o.targets) }})
}

// probesWord is what a backend attaches.
func probesWord(backend string) string {
	if backend == tracer.BackendNetfilter {
		return "observers"
	}
	return "probes"
}

// session is one trace: where, what, and how to name what is seen.
type session struct {
	netns     string
	targets   []tracer.Target
	duration  time.Duration
	count     int
	timeout   time.Duration
	isService func(tracer.Proto, netip.AddrPort) bool
	// explainer explains the connections and names their addresses, as
	// known when each completes; nil: addresses only.
	explainer func() report.Explainer
	// started runs once the observers are attached (watches that re-feed
	// the targets).
	started func(ctx context.Context, tr *tracer.Tracer)
	// rec, if set, records the trace (-w): it begins once the observers
	// are attached, and is closed (removed if it never began) when trace
	// returns. mode and meta say what to put in its first record,
	// recordState what follows it (the Service's objects and the node's
	// rules).
	rec         *record.Writer
	snaplen     int
	everyPacket bool
	mode        string
	meta        func(*record.Meta)
	recordState func()
}

// trace attaches, prints each connection as it completes and a summary at
// the end.
func (g *globals) trace(ctx context.Context, s session) error {
	if s.rec != nil {
		defer s.rec.Close(record.End{}) // on an error; a clean end closes first
	}
	start := time.Now()
	tr, err := tracer.Open(tracer.Options{NetNS: s.netns, Targets: s.targets, Backend: g.backend, Snaplen: s.snaplen,
		EveryPacket: s.everyPacket, CountEvery: tracer.CountEveryFor(s.timeout), Logf: g.logf})
	if err != nil {
		return err
	}
	defer tr.Close()
	info := tr.Info()
	g.logf("attached in %s", time.Since(start).Round(time.Millisecond))
	// Loading decoded the kernel's BTF (tens of MB of heap, and the mapped
	// vmlinux file); none of it is needed while tracing. Give it back now
	// rather than hold it for the whole run.
	debug.FreeOSMemory()
	for _, sk := range info.Skipped {
		fmt.Fprintf(g.stderr, "svctrace: warning: not probed: %s\n", sk)
	}
	fmt.Fprintf(g.stderr, "tracing %s in %s with %s (%d %s, drops: %s); Ctrl-C to stop\n",
		targetList(s.targets), info.NetNS, info.Backend, info.Links, probesWord(info.Backend), orNone(info.Drops))

	clock := tracer.NewClock()
	p, err := g.printer(output.Options{Wall: clock.Time})
	if err != nil {
		return err
	}
	flowOpts := flow.Options{
		NodeNetNS: info.NetNS.Inode,
		IsService: s.isService,
		Timeout:   s.timeout,
		IfName:    tracer.NewIfNames(info.NetNS).Name,
	}
	var journal live.Journal
	if s.rec != nil {
		m := startMeta(s.mode, info, s.targets, s.timeout, s.count, clock)
		if s.meta != nil {
			s.meta(&m)
		}
		g.watch(s.rec)
		s.rec.Begin(m)
		if s.recordState != nil {
			s.recordState()
		}
		s.rec.Conntrack(record.ConntrackSnapshot(info.NetNS, s.targets))
		flowOpts.IfName = recordingIfNames(info.NetNS, s.rec)
		journal = s.rec
	}
	if s.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.duration)
		defer cancel()
	}
	if s.started != nil {
		s.started(ctx, tr)
	}
	var sum output.Summary
	st := newStatus(g.stderr, &sum)
	stopStatus := st.show(ctx)
	res, err := live.Run(ctx, tr, live.Options{
		Flow:  flowOpts,
		Count: s.count,
		Conn: func(c *flow.Conn, lost uint64) {
			var x report.Explainer
			if s.explainer != nil {
				x = s.explainer()
			}
			r := report.Of(c, x, lost)
			st.around(func() {
				sum.Count(c)
				p.Conn(r)
			})
		},
		Lost:    func(total uint64) { st.around(func() { p.Lost(total) }) },
		Journal: journal,
		Alive:   info.NetNS.Check,
	})
	stopStatus()
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	p.Summary(sum)
	if s.rec != nil {
		s.rec.Conntrack(record.ConntrackSnapshot(info.NetNS, s.targets))
		if cerr := s.rec.Close(record.End{Conns: res.Conns}); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

func targetList(ts []tracer.Target) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.String())
	}
	return strings.Join(s, ", ")
}

func orNone(s string) string {
	if s == "" {
		return "not observed"
	}
	return s
}
