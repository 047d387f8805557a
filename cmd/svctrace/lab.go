package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

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

type labOptions struct {
	*globals
	keep    bool
	timeout time.Duration
	rec     recordFlags
}

// scenarioList is the lab's scenarios for --help, one a line: name,
// expected verdict, what is wrong.
func scenarioList() string {
	var b strings.Builder
	for _, s := range lab.Scenarios() {
		fmt.Fprintf(&b, "  %-17s → %-15s %s\n", s.Name, s.Expect, s.Title)
	}
	return b.String()
}

func newLab(g *globals) *cobra.Command {
	o := &labOptions{globals: g}
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Build a throwaway node in network namespaces and trace the classic Service failures",
		Long: `Build a small Kubernetes-like node out of network namespaces - a dual-stack node with a
bridge and kube-proxy-style iptables and ip6tables rules, pods serving HTTP and UDP, a
client - and trace one connection to each of its Services, each set up to fail in a classic
way (or not at all). Each Service is diagnosed and each connection explained from the lab's
Kubernetes objects and the node's rules, as svctrace SERVICE does on a real node:

` + scenarioList() + `
Everything is removed at the end and on Ctrl-C. Nothing leaves the lab: its addresses exist
only in its own namespaces. Exits non-zero if a scenario gives an unexpected verdict, so it
doubles as a self-test of svctrace on this kernel.`,
		Example: `  sudo svctrace lab
  sudo svctrace lab -o json
  sudo svctrace lab --keep        # leave it up and trace it by hand
  sudo svctrace lab -w lab.svctrace && svctrace analyze lab.svctrace -o pcapng > lab.pcapng
  sudo svctrace lab cleanup       # remove labs left behind`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context())
		},
	}
	cmd.Flags().BoolVar(&o.keep, "keep", false, "leave the lab up afterwards and print how to trace and remove it")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 1500*time.Millisecond, "how long the client and the tracer wait for an answer")
	o.rec.add(cmd.Flags())
	cmd.AddCommand(&cobra.Command{
		Use:   "cleanup [ID]",
		Short: "Remove a lab left up with --keep (or by a crash); without ID, every lab not in use",
		Long: `Remove a lab left up with svctrace lab --keep, or by a crash: stop its Pod servers and delete
its network namespaces. A lab whose svctrace is still running is left alone. Without ID,
every lab not in use is removed.`,
		Example: `  sudo svctrace lab cleanup          # every lab not in use
  sudo svctrace lab cleanup 4f2a9c   # the lab whose id svctrace lab --keep printed`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := ""
			if len(args) == 1 {
				id = args[0] // Cleanup checks it is a lab id
			}
			removed, err := lab.Cleanup(id)
			for _, n := range removed {
				fmt.Fprintf(g.stdout, "removed network namespace %s\n", n)
			}
			if len(removed) == 0 && err == nil {
				fmt.Fprintln(g.stdout, "no lab to remove")
			}
			if err != nil {
				// One line per lab that could not be removed.
				return errors.New(strings.ReplaceAll(err.Error(), "\n", "; "))
			}
			return nil
		},
	})
	return cmd
}

func (o *labOptions) run(ctx context.Context) error {
	if err := o.rec.validate(); err != nil {
		return err
	}
	if err := checkStops(0, 0, o.timeout); err != nil {
		return err
	}
	if err := lab.Preflight(); err != nil {
		return err
	}
	if old := lab.List(); len(old) > 0 {
		fmt.Fprintf(o.stderr, "note: %s; `svctrace lab cleanup` removes those not in use\n", lab.Describe(old))
	}
	start := time.Now()
	l, err := lab.Up(lab.Options{Keep: o.keep})
	if err != nil {
		return err
	}
	if o.keep {
		defer keepHint(o, l)
	} else {
		defer l.Down()
	}
	o.logf("lab %s up in %s", l.ID, time.Since(start).Round(time.Millisecond))
	for _, left := range l.Left {
		fmt.Fprintf(o.stderr, "svctrace: scenario left out on this machine: %s\n", left)
	}

	// Each scenario's Service is diagnosed, and its connections explained,
	// from the lab's objects and the node's rules, as on a real node.
	as, facts, err := l.Assess(ctx)
	if err != nil {
		return err
	}
	w, err := o.rec.create()
	if err != nil {
		return err
	}
	clock := tracer.NewClock()
	p, err := o.printer(output.Options{Wall: clock.Time})
	if err != nil {
		return err
	}
	ropts := lab.RunOptions{Timeout: o.timeout, Backend: o.backend, Snaplen: o.rec.snaplen, EveryPacket: o.rec.everyPacket,
		Logf: o.logf, Lost: p.Lost}
	if w != nil {
		defer w.Close(record.End{}) // on an error; a clean end closes first
		o.watch(w)
		ropts.Journal = w
		// What the lab is goes first, so that a recording cut anywhere
		// analyses up to where it ends.
		ropts.Started = func(info tracer.Info) {
			m := startMeta("lab", info, l.Targets(), o.timeout, 0, clock)
			m.Node = lab.NodeName
			w.Begin(m)
			w.Services(l.Targets())
			recordLab(w, l, newLabRun(l, info), facts, as)
		}
	}
	results, info, res, err := l.Run(ctx, ropts)
	if err != nil {
		return err
	}
	interrupted := ctx.Err() != nil
	run := newLabRun(l, info)
	if w != nil {
		w.Lab(labClients{Results: labResults(results)})
		w.Conntrack(record.ConntrackSnapshot(l.Node, l.Targets()))
		// Names looked up while printing go into the recording too.
		for _, a := range as {
			lookup := a.Explainer.Lookup
			a.Explainer.Lookup = func(ip netip.Addr) string {
				n := lookup(ip)
				w.Name(record.Name{Addr: ip, Name: n})
				return n
			}
		}
	}
	err = printLab(o.globals, p, labExplainer{l.Scenarios, as}, run, results, res, !interrupted)
	if w != nil {
		if cerr := w.Close(record.End{Conns: res.Conns}); cerr != nil && err == nil {
			err = cerr
		}
	}
	if interrupted && err == nil {
		err = errors.New("interrupted: the scenarios still running are shown as far as they got")
	}
	return err
}

// labRecord is what a lab recording holds besides the events, right after
// its first record: what the lab printed around the connections, and the
// objects that explain them. labClients follows at the end.
type labRecord struct {
	Run     labRun                   `json:"run"`
	Results []labResult              `json:"results"`
	Views   map[string]*resolve.View `json:"views"`
	Rules   record.Rules             `json:"rules"`
}

// labClients is the lab record written at the end: what each scenario's
// client saw. Read into a labRecord, it fills in its results.
type labClients struct {
	Results []labResult `json:"results"`
}

type labResult struct {
	Scenario lab.Scenario `json:"scenario"`
	Client   string       `json:"client"`
}

func labResults(results []lab.Result) []labResult {
	var out []labResult
	for _, r := range results {
		out = append(out, labResult{Scenario: r.Scenario, Client: r.Client})
	}
	return out
}

func recordLab(w *record.Writer, l *lab.Lab, run labRun, facts diagnose.NodeFacts, as map[string]*diagnose.Assessment) {
	lr := labRecord{Run: run, Views: map[string]*resolve.View{}, Rules: recordedFacts(facts)}
	for _, s := range l.Scenarios {
		lr.Results = append(lr.Results, labResult{Scenario: s})
		lr.Views[s.Name] = as[s.Name].View
	}
	w.Lab(lr)
	tracer.InNetNS(l.Node, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			w.IfName(record.IfName{Index: uint32(i.Index), Name: i.Name})
		}
		return err
	})
}

// labRun is what the lab's first line says.
type labRun struct {
	ID, Node, Backend, Drops string
	Links                    int
}

func newLabRun(l *lab.Lab, info tracer.Info) labRun {
	return labRun{ID: l.ID, Node: l.Node.Spec, Backend: info.Backend, Links: info.Links, Drops: info.Drops}
}

// labExplainer explains a connection by its scenario's assessment, and
// names an address by the scenario whose Service it belongs to, else by any
// (a Pod is known to all).
type labExplainer struct {
	ss []lab.Scenario
	as map[string]*diagnose.Assessment
}

func (x labExplainer) Explain(c *flow.Conn) report.Explanation {
	return x.as[c.Scenario].Explainer.Explain(c)
}

func (x labExplainer) Name(a netip.AddrPort) string {
	for _, s := range x.ss {
		if e := x.as[s.Name].Explainer; e.Knows(a) {
			return e.Name(a)
		}
	}
	return x.as[x.ss[0].Name].Explainer.Name(a)
}

// printLab prints a lab run, scenario by scenario: its header (text), its
// Service's diagnosis and its connections; then the summary. With check,
// a scenario whose verdict is not the expected one is an error.
func printLab(g *globals, p output.Printer, x labExplainer, run labRun, results []lab.Result, res live.Result, check bool) error {
	if g.output == "text" {
		fmt.Fprintf(g.stdout, "lab %s: node %s, traced with %s (%d %s, drops: %s)\n\n",
			run.ID, run.Node, run.Backend, run.Links, probesWord(run.Backend), orNone(run.Drops))
	}
	var sum output.Summary
	var wrong []string
	for _, r := range results {
		if g.output == "text" {
			scenarioHeader(g, r)
		}
		d := x.as[r.Scenario.Name].Diagnosis()
		d.Scenario = r.Scenario.Name
		p.Diagnosis(d)
		for _, c := range r.Conns {
			sum.Count(c)
			p.Conn(report.Of(c, x, res.Lost))
		}
		if got := r.Verdict(); check && got != r.Scenario.Expect {
			wrong = append(wrong, fmt.Sprintf("%s: expected %s, got %s", r.Scenario.Name, r.Scenario.Expect, orNone(string(got))))
		}
		if g.output == "text" {
			fmt.Fprintln(g.stdout)
		}
	}
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	p.Summary(sum)

	if len(wrong) > 0 {
		fmt.Fprintf(g.stderr, "svctrace: %d scenario(s) did not give the expected verdict: %s\n", len(wrong), strings.Join(wrong, "; "))
		return errSilent
	}
	if g.output == "text" && check {
		fmt.Fprintf(g.stdout, "all %d scenarios gave the expected verdict\n", len(results))
	}
	return nil
}

func scenarioHeader(o *globals, r lab.Result) {
	s := r.Scenario
	var eps []string
	for _, ep := range s.Service.Endpoints {
		eps = append(eps, ep.String())
	}
	to := strings.Join(eps, ", ")
	if to == "" {
		to = "no endpoints"
	}
	fmt.Fprintf(o.stdout, "━━ %s: %s\n", s.Name, s.Title)
	fmt.Fprintf(o.stdout, "   service %s/%s %s → %s; expected: %s\n", lab.Namespace, s.Service.Name, s.VIP(), to, s.Expect)
	client := r.Client
	if client == "" {
		client = "(not recorded: the recording ends before the client did)"
	}
	fmt.Fprintf(o.stdout, "   client: %s\n", client)
	if len(r.Conns) == 0 {
		fmt.Fprintln(o.stdout, "   (the tracer saw no connection)")
	}
}

func keepHint(o *labOptions, l *lab.Lab) {
	vip := l.Scenarios[0].VIP()
	fmt.Fprintf(o.stderr, `
The lab stays up (id %[1]s). Trace it by hand:
  sudo svctrace trace --netns %[2]s --addr %[3]s
and in another terminal send traffic from the client:
  sudo ip netns exec %[4]s curl -s http://%[3]s/
Remove it:
  sudo svctrace lab cleanup %[1]s
`, l.ID, l.Node.Spec, vip, l.Client.Spec)
}
