package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/session"
)

type traceOptions struct {
	*globals
	addrs    []string
	netns    string
	duration time.Duration
	count    int
	timeout  time.Duration
	rec      recordFlags

	targets []nf.Target
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
		t, err := nf.ParseTarget(a)
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

func (o *traceOptions) run(ctx context.Context) error {
	services := map[nf.Target]bool{}
	for _, t := range o.targets {
		services[t] = true
	}
	w, err := o.rec.create()
	if err != nil {
		return err
	}
	return session.Run(ctx, session.Trace{IO: o.io(), NetNS: o.netns, Targets: o.targets, Backend: o.backend,
		Duration: o.duration, Count: o.count, Timeout: o.timeout,
		IsService: func(p nf.Proto, a netip.AddrPort) bool { return services[nf.Target{Addr: a, Proto: p}] },
		Rec:       w, Snaplen: o.rec.snaplen, EveryPacket: o.rec.everyPacket, Mode: "trace",
		RecordState: func() { w.Services(o.targets) }})
}
