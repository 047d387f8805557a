package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/session"
)

type analyzeOptions struct {
	*globals
	client   string
	endpoint string
	verdicts []string
}

func newAnalyze(g *globals) *cobra.Command {
	o := &analyzeOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "analyze FILE [FILE...]",
		Short: "Print a recording (-w) as the live run did, anywhere: no root, no cluster needed",
		Long: `Read a recording made with -w on svctrace SERVICE, svctrace trace or svctrace lab and print
what the live run printed: the diagnosis, every connection with its names and blame, the summary. Then an
analysis: connections per endpoint and verdict, and connect latency (first packet to first
answer) p50 and p99. Filters keep only some connections (the summary and analysis count those).

-o pcapng writes the packets for Wireshark instead: each reported packet as it entered the
node's netfilter hooks, after each translation and where it was dropped (an interface per
observation point, e.g. "PREROUTING post-dnat"), as the packet was there (its headers;
--snaplen on the recording run keeps more), each with svctrace's annotation as the packet
comment: what changed, the connection's verdict, Service and blame.

A recording cut short (the trace was killed, the disk filled) is analysed up to its last
whole record.

Several recordings, one per node, made at the same time (the client's node and the
endpoints' nodes) are stitched: each connection is one timeline across the nodes it crossed,
each step marked with its node (the DNAT on the client's node, the packet leaving by the
overlay, arriving on the endpoint's node and delivered to the Pod, the reply's way back),
with one verdict: the node that dropped it, or the two nodes a packet was lost between. The
nodes' clocks are aligned from the connections' own packets (wall clocks where no packet
crossed both ways); times are on the first recording's clock.`,
		Example: `  # on the node, during the incident
  sudo svctrace web -n shop -w web.svctrace --max-size 200M

  # later, anywhere
  svctrace analyze web.svctrace
  svctrace analyze web.svctrace --verdict rejected,no-reply
  svctrace analyze web.svctrace --client 10.244.1.7 -o json
  svctrace analyze web.svctrace -o pcapng > web.pcapng && wireshark web.pcapng

  # one connection across two nodes: record on both at once, then
  kubectl debug node/node-a ... svctrace web -n shop -w /host/tmp/node-a.svctrace
  svctrace analyze node-a.svctrace node-b.svctrace`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("name a recording, e.g. svctrace analyze web.svctrace (or one per node: svctrace analyze node-a.svctrace node-b.svctrace)")
			}
			return nil
		},
		RunE:        func(cmd *cobra.Command, args []string) error { return o.run(args) },
		Annotations: map[string]string{outputsKey: "text,json,pcapng"},
	}
	f := cmd.Flags()
	f.StringVar(&o.client, "client", "", "only connections from this client: IP or IP:PORT")
	f.StringVar(&o.endpoint, "endpoint", "", "only connections translated to this endpoint: IP or IP:PORT")
	f.StringSliceVar(&o.verdicts, "verdict", nil, "only connections with these verdicts: "+session.VerdictNames())
	return cmd
}

// analyzeMemoryLimit is the heap the garbage collector keeps analysis
// within: analysis streams, and what it holds at once (the connections
// within their settle time) is some 20-30 MB whatever the recording's size,
// but the collector's default lets the heap grow to twice that. Held to
// this, a recording of 18,000 connections peaks at 38 MB of anonymous
// memory instead of 52, for about 20 % more time; a recording that needs
// more live memory than this is analysed all the same, with the collector
// running more often (the runtime caps it at half the CPU). GOMEMLIMIT or
// GOGC, when set, decide instead.
const analyzeMemoryLimit = 40 << 20

func (o *analyzeOptions) run(paths []string) error {
	if os.Getenv("GOMEMLIMIT") == "" && os.Getenv("GOGC") == "" && len(paths) == 1 {
		// Stitching holds every connection of every recording at once.
		debug.SetMemoryLimit(analyzeMemoryLimit)
	}
	keep, err := session.Filter(o.client, o.endpoint, o.verdicts)
	if err != nil {
		return err
	}
	if o.format == output.FormatPcapNG && isTerminal(o.stdout) {
		return errors.New("pcapng is binary: send it to a file, e.g. svctrace analyze " + strings.Join(paths, " ") + " -o pcapng > trace.pcapng")
	}
	recs := make([]session.Recording, len(paths))
	// corrupt, if set, is where a recording stops making sense: what
	// precedes it is analysed, and the exit status says it was not all.
	var corrupt []error
	for i, path := range paths {
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			return fmt.Errorf("%s is a directory: name a recording made with -w, e.g. svctrace analyze %s", path, filepath.Join(path, "trace.svctrace"))
		}
		rec, bad := record.Open(path)
		if rec == nil {
			var fe *record.FormatError
			if errors.As(bad, &fe) {
				return fmt.Errorf("%w; is it a recording made with svctrace -w?", bad)
			}
			return bad
		}
		recs[i] = session.Recording{Path: path, Rec: rec, Corrupt: bad != nil}
		if bad != nil {
			corrupt = append(corrupt, fmt.Errorf("%w: the %d records before it were analysed", bad, rec.Records))
		}
	}
	if len(recs) == 1 {
		err = session.Replay(o.io(), paths[0], recs[0].Rec, keep, recs[0].Corrupt)
	} else {
		err = session.ReplayNodes(o.io(), recs, keep)
	}
	if err != nil {
		return err
	}
	return errors.Join(corrupt...)
}
