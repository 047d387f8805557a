package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
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
		Use:   "analyze FILE",
		Short: "Print a recording (-w) as the live run did, anywhere: no root, no cluster needed",
		Long: `Read a recording made with -w on svctrace SERVICE, svctrace trace or svctrace lab and print
what the live run printed: the diagnosis, every connection with its names and blame, the summary. Then an
analysis: connections per endpoint and verdict, and connect latency (first packet to first
answer) p50 and p99. Filters keep only some connections (the summary and analysis count those).

-o pcapng writes the packets for Wireshark instead: one record per netfilter observation point
the packet crossed (an interface per point, e.g. "PREROUTING post-dnat"), as the packet was
there (its headers; --snaplen on the recording run keeps more), each with svctrace's
annotation as the packet comment: what changed, the connection's verdict, Service and blame.

A recording cut short (the trace was killed, the disk filled) is analysed up to its last
whole record.`,
		Example: `  # on the node, during the incident
  sudo svctrace web -n shop -w web.svctrace --max-size 200M

  # later, anywhere
  svctrace analyze web.svctrace
  svctrace analyze web.svctrace --verdict rejected,no-reply
  svctrace analyze web.svctrace --client 10.244.1.7 -o json
  svctrace analyze web.svctrace -o pcapng > web.pcapng && wireshark web.pcapng`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return errors.New("name one recording, e.g. svctrace analyze web.svctrace")
			}
			return nil
		},
		RunE:        func(cmd *cobra.Command, args []string) error { return o.run(args[0]) },
		Annotations: map[string]string{outputsKey: "text,json,pcapng"},
	}
	f := cmd.Flags()
	f.StringVar(&o.client, "client", "", "only connections from this client: IP or IP:PORT")
	f.StringVar(&o.endpoint, "endpoint", "", "only connections translated to this endpoint: IP or IP:PORT")
	f.StringSliceVar(&o.verdicts, "verdict", nil, "only connections with these verdicts: "+verdictNames())
	return cmd
}

func verdictNames() string {
	var s []string
	for _, v := range flow.Verdicts {
		s = append(s, string(v))
	}
	return strings.Join(s, ", ")
}

// filter keeps the connections the flags ask for.
func (o *analyzeOptions) filter() (func(*flow.Conn) bool, error) {
	match := func(flag, s string) (func(netip.AddrPort) bool, error) {
		if s == "" {
			return func(netip.AddrPort) bool { return true }, nil
		}
		if ap, err := netip.ParseAddrPort(s); err == nil {
			return func(a netip.AddrPort) bool { return a == ap }, nil
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid --%s %q: want an IP or IP:PORT", flag, s)
		}
		return func(a netip.AddrPort) bool { return a.Addr() == ip }, nil
	}
	client, err := match("client", o.client)
	if err != nil {
		return nil, err
	}
	endpoint, err := match("endpoint", o.endpoint)
	if err != nil {
		return nil, err
	}
	for _, v := range o.verdicts {
		if !slices.Contains(flow.Verdicts, flow.Verdict(v)) {
			return nil, fmt.Errorf("unknown --verdict %q: use %s", v, verdictNames())
		}
	}
	return func(c *flow.Conn) bool {
		return client(c.Client) && endpoint(c.Endpoint) &&
			(len(o.verdicts) == 0 || slices.Contains(o.verdicts, string(c.Verdict)))
	}, nil
}

func (o *analyzeOptions) run(path string) error {
	keep, err := o.filter()
	if err != nil {
		return err
	}
	if o.output == "pcapng" && isTerminal(o.stdout) {
		return errors.New("pcapng is binary: send it to a file, e.g. svctrace analyze " + path + " -o pcapng > trace.pcapng")
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("%s is a directory: name a recording made with -w, e.g. svctrace analyze %s", path, filepath.Join(path, "trace.svctrace"))
	}
	rec, corrupt := record.ReadFile(path)
	if rec == nil {
		var fe *record.FormatError
		if errors.As(corrupt, &fe) {
			return fmt.Errorf("%w; is it a recording made with svctrace -w?", corrupt)
		}
		return corrupt
	}
	// corrupt, if set, is where the recording stops making sense: what
	// precedes it is analysed, and the exit status says it was not all.
	if err := o.analyze(path, rec, keep, corrupt != nil); err != nil {
		return err
	}
	if corrupt != nil {
		return fmt.Errorf("%w: the %d records before it were analysed", corrupt, len(rec.Entries))
	}
	return nil
}

// analyze prints the connections of a recording read that keep keeps;
// corrupt: it was read up to a corruption.
func (o *analyzeOptions) analyze(path string, rec *record.Recording, keep func(*flow.Conn) bool, corrupt bool) error {
	var err error
	for _, n := range rec.Notes {
		fmt.Fprintf(o.stderr, "svctrace: note: %s\n", n)
	}
	switch {
	case corrupt:
	case rec.End == nil:
		fmt.Fprintln(o.stderr, "svctrace: note: the recording ends abruptly (the trace was killed or crashed): analysing what it holds")
	case rec.End.Truncated != "":
		fmt.Fprintf(o.stderr, "svctrace: note: %s: events after that were not recorded\n", rec.End.Truncated)
	}
	m := rec.Meta
	if m.Mode != "trace" && m.Mode != "service" && m.Mode != "lab" {
		return fmt.Errorf("%s: a recording of svctrace %s, which this svctrace cannot analyse", path, m.Mode)
	}

	// What the live run looked up as it went, known up front here.
	ifNames, names := map[uint32]string{}, map[netip.Addr]string{}
	for _, e := range rec.Entries {
		switch e.Type {
		case record.TypeIfName:
			ifNames[e.IfName.Index] = e.IfName.Name
		case record.TypeName:
			names[e.Name.Addr] = e.Name.Name
		}
	}
	services := map[tracer.Target]bool{}
	var cur *diagnose.Assessment
	// x explains the connections and names their addresses, as the
	// recording knows them; nil: addresses only.
	var x report.Explainer
	var lr *labRecord
	var labAs map[string]*diagnose.Assessment
	if m.Mode == "lab" {
		if lr, labAs, err = readLab(rec, names); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if lr == nil {
			fmt.Fprintln(o.stderr, "svctrace: note: the recording ends before the lab's scenarios: its connections are shown without them")
		} else {
			var ss []lab.Scenario
			for _, r := range lr.Results {
				ss = append(ss, r.Scenario)
			}
			x = labExplainer{ss, labAs}
		}
	}
	p, err := o.printer(output.Options{Wall: m.WallClock()})
	if err != nil {
		return err
	}

	var view *resolve.View
	// apply takes in one record: the assembler's inputs are returned, the
	// rest changes what names and explains.
	apply := func(e *record.Entry) (live.Input, bool) {
		switch e.Type {
		case record.TypeServices:
			clear(services)
			for _, t := range e.Services {
				services[t] = true
			}
		case record.TypeView:
			view = e.View
		case record.TypeRules:
			if view == nil {
				break
			}
			first := cur == nil
			cur = assessRecorded(view, e.Rules, m)
			cur.Explainer.Lookup = func(a netip.Addr) string { return names[a] }
			// Without the Service's objects (a recording cut right after
			// its first record), connections go unexplained.
			x = cur.Explainer
			if first {
				p.Diagnosis(cur.Diagnosis())
			}
		case record.TypeEvent:
			return live.Input{Event: &e.Event}, true
		case record.TypeTick:
			return live.Input{Tick: e.Time}, true
		case record.TypeLost:
			return live.Input{Lost: e.Lost}, true
		case record.TypeFlush:
			return live.Input{Flush: e.Time}, true
		}
		return live.Input{}, false
	}
	i := 0
	next := func() (live.Input, bool) {
		for i < len(rec.Entries) {
			i++
			if in, ok := apply(&rec.Entries[i-1]); ok {
				return in, true
			}
		}
		return live.Input{}, false
	}
	if m.Mode == "service" {
		// The Service's objects and diagnosis come before any packet, as
		// they did live.
		for i < len(rec.Entries) && cur == nil && !isInput(rec.Entries[i].Type) {
			apply(&rec.Entries[i])
			i++
		}
		if cur == nil {
			fmt.Fprintln(o.stderr, "svctrace: note: the recording ends before the Service's objects: its connections are shown without names")
		}
	}

	var sum output.Summary
	var an output.Analysis
	var conns []*flow.Conn
	for _, e := range rec.Entries {
		if e.Type == record.TypeConntrack {
			when := "start"
			if len(an.Conntrack) > 0 {
				when = "end"
			}
			an.Conntrack = append(an.Conntrack, output.ConntrackSnapshot{When: when, Entries: e.Conntrack})
		}
	}
	res := live.Replay(live.Options{
		Flow: flow.Options{NodeNetNS: m.NetNS, Timeout: m.Timeout,
			IsService: func(pr tracer.Proto, a netip.AddrPort) bool { return services[tracer.Target{Addr: a, Proto: pr}] },
			IfName:    func(i uint32) string { return ifNames[i] }},
		Count: m.Count,
		Conn: func(c *flow.Conn, lost uint64) {
			if lr != nil {
				conns = append(conns, c) // printed by scenario at the end, as live
				return
			}
			if keep(c) {
				r := report.Of(c, x, lost)
				sum.Count(c)
				an.Count(r)
				p.Conn(r)
			}
		},
		Lost: p.Lost,
	}, next)
	if lr != nil {
		results := make([]lab.Result, len(lr.Results))
		for i, r := range lr.Results {
			results[i] = lab.Result{Scenario: r.Scenario, Client: r.Client}
		}
		lab.Assign(results, conns)
		for i := range results {
			results[i].Conns = slices.DeleteFunc(results[i].Conns, func(c *flow.Conn) bool { return !keep(c) })
			for _, c := range results[i].Conns {
				an.Count(report.Of(c, x, 0))
			}
		}
		// A scenario whose verdict differed was reported live; here it is
		// only what the recording holds.
		if err := printLab(o.globals, p, x.(labExplainer), lr.Run, results, res, true); err != nil && !errors.Is(err, errSilent) {
			return err
		}
		output.WriteAnalysis(p, &an)
		return nil
	}
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	p.Summary(sum)
	output.WriteAnalysis(p, &an)
	if pc, ok := p.(*output.PcapNG); ok && pc.Err() != nil {
		return fmt.Errorf("writing pcapng: %w", pc.Err())
	}
	return nil
}

func isInput(t record.Type) bool {
	return t == record.TypeEvent || t == record.TypeTick || t == record.TypeLost || t == record.TypeFlush
}

// assessRecorded diagnoses recorded objects with the node's recorded rules,
// as the live run did.
func assessRecorded(v *resolve.View, r record.Rules, m record.Meta) *diagnose.Assessment {
	facts := diagnose.NodeFacts{Local: resolve.LocalNode{Name: m.Node, Addrs: m.Addrs},
		Rules: r.Rules, KubeProxy: r.KubeProxy, KubeProxyKnown: r.KubeProxyKnown, Bridges: r.Bridges, Conntrack: r.Conntrack}
	if r.Err != "" {
		facts.RulesErr = errors.New(r.Err)
	}
	return diagnose.AssessView(v, facts)
}

// recordedFacts is what a recording keeps of the node's facts, for
// assessRecorded.
func recordedFacts(f diagnose.NodeFacts) record.Rules {
	r := record.Rules{Rules: f.Rules, KubeProxy: f.KubeProxy, KubeProxyKnown: f.KubeProxyKnown, Bridges: f.Bridges, Conntrack: f.Conntrack}
	if f.RulesErr != nil {
		r.Err = f.RulesErr.Error()
	}
	return r
}

// readLab reads a lab recording's scenarios and objects, and diagnoses
// each scenario's Service as the live run did; nil if the recording ends
// before them. Its lab records come in two: what the lab is, when tracing
// began, and what its clients saw, at the end.
func readLab(rec *record.Recording, names map[netip.Addr]string) (*labRecord, map[string]*diagnose.Assessment, error) {
	var lr *labRecord
	for _, e := range rec.Entries {
		if e.Type == record.TypeLab {
			if lr == nil {
				lr = &labRecord{}
			}
			if err := json.Unmarshal(e.Lab, lr); err != nil {
				return nil, nil, fmt.Errorf("byte %d: lab record: %w", e.Offset, err)
			}
		}
	}
	if lr == nil {
		return nil, nil, nil
	}
	as := map[string]*diagnose.Assessment{}
	for _, r := range lr.Results {
		v := lr.Views[r.Scenario.Name]
		if v == nil || v.Service == nil {
			return nil, nil, fmt.Errorf("lab record: no objects for scenario %s", r.Scenario.Name)
		}
		a := assessRecorded(v, lr.Rules, rec.Meta)
		a.Explainer.Lookup = func(ip netip.Addr) string { return names[ip] }
		as[r.Scenario.Name] = a
	}
	return lr, as, nil
}
