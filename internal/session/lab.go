package session

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
)

// Lab is svctrace lab: build the lab, trace a connection to each scenario's
// Service, print each with its diagnosis and explanation.
type Lab struct {
	IO
	Keep    bool
	Timeout time.Duration
	Backend string
	// Rec, if set, records the run (see Trace.Rec); RunLab closes it.
	Rec         *record.Writer
	Snaplen     int
	EveryPacket bool
}

// RunLab runs the lab. It returns ErrReported when a scenario did not give
// its expected verdict (said on stderr).
func RunLab(ctx context.Context, o Lab) error {
	if o.Rec != nil {
		defer o.Rec.Close(record.End{}) // on an error; a clean end closes first
	}
	if err := lab.Preflight(); err != nil {
		return err
	}
	if old := lab.List(); len(old) > 0 {
		o.say("note: %s; `svctrace lab cleanup` removes those not in use", lab.Describe(old))
	}
	tracer.Prepare() // while the lab comes up
	start := time.Now()
	l, err := lab.Up(lab.Options{Keep: o.Keep})
	if err != nil {
		return err
	}
	if o.Keep {
		defer keepHint(o.IO, l)
	} else {
		defer l.Down()
	}
	o.logf("lab %s up in %s", l.ID, time.Since(start).Round(time.Millisecond))
	for _, left := range l.Left {
		o.say("scenario left out on this machine: %s", left)
	}

	// Each scenario's Service is diagnosed, and its connections explained,
	// from the lab's objects and the node's rules, as on a real node.
	as, facts, err := l.Assess(ctx)
	if err != nil {
		return err
	}
	w := o.Rec
	clock := nf.NewClock()
	p, err := o.Printer(output.Options{Wall: clock.Time})
	if err != nil {
		return err
	}
	ropts := lab.RunOptions{Timeout: o.Timeout, Backend: o.Backend, Snaplen: o.Snaplen, EveryPacket: o.EveryPacket,
		Logf: o.logf, Lost: p.Lost}
	if w != nil {
		o.Watch(w)
		ropts.Journal = w
		// What the lab is goes first, so that a recording cut anywhere
		// analyses up to where it ends.
		ropts.Started = func(info tracer.Info) {
			m := StartMeta("lab", info, l.Targets(), o.Timeout, 0, clock)
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
		w.Lab(LabClients{Results: labResults(results)})
		w.Conntrack(record.Snapshot(l.Node, l.Targets()))
		// Names looked up while printing go into the recording too, as
		// each is first used.
		// So do the node's facts read again for a connection; analysis
		// takes them all in before explaining.
		for _, a := range as {
			a.Explainer.Lookup = resolve.Memo(a.Explainer.Lookup, func(ip netip.Addr, name string) {
				w.Name(record.Name{Addr: ip, Name: name})
			})
			a.Explainer.Peer = resolve.Peers(resolve.FileSource{Objects: lab.Objects()}, func(ip netip.Addr, e resolve.Peer) {
				w.Name(record.Name{Addr: ip, Peer: &e})
			})
			a.Explainer.Rechecked = w.Facts
		}
	}
	err = printLab(o.IO, p, labExplainer{l.Scenarios, as}, run, results, res, !interrupted)
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

// LabRecord is what a lab recording holds besides the events, right after
// its first record: what the lab printed around the connections, and the
// objects that explain them. LabClients follows at the end.
type LabRecord struct {
	Run     LabRun                   `json:"run"`
	Results []LabResult              `json:"results"`
	Views   map[string]*resolve.View `json:"views"`
	Rules   record.Rules             `json:"rules"`
	// Nets are the node's network facts each scenario's diagnosis read
	// (for its Service's endpoints), by scenario.
	Nets map[string]*node.Facts `json:"nets,omitempty"`
}

// LabClients is the lab record written at the end: what each scenario's
// client saw. Read into a LabRecord, it fills in its results.
type LabClients struct {
	Results []LabResult `json:"results"`
}

type LabResult struct {
	Scenario lab.Scenario `json:"scenario"`
	Client   string       `json:"client"`
}

func labResults(results []lab.Result) []LabResult {
	var out []LabResult
	for _, r := range results {
		out = append(out, LabResult{Scenario: r.Scenario, Client: r.Client})
	}
	return out
}

func recordLab(w *record.Writer, l *lab.Lab, run LabRun, facts diagnose.NodeFacts, as map[string]*diagnose.Assessment) {
	// The node's rules serve every scenario; its network's facts were read
	// for each Service's endpoints.
	lr := LabRecord{Run: run, Views: map[string]*resolve.View{}, Rules: RecordedFacts(facts), Nets: map[string]*node.Facts{}}
	for _, s := range l.Scenarios {
		lr.Results = append(lr.Results, LabResult{Scenario: s})
		lr.Views[s.Name] = as[s.Name].View
		lr.Nets[s.Name] = as[s.Name].Node.Net
	}
	w.Lab(lr)
	nf.InNetNS(l.Node, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			w.IfName(record.IfName{Index: uint32(i.Index), Name: i.Name})
		}
		return err
	})
}

// LabRun is what the lab's first line says.
type LabRun struct {
	ID, Node, Backend, Drops string
	Links                    int
}

func newLabRun(l *lab.Lab, info tracer.Info) LabRun {
	return LabRun{ID: l.ID, Node: l.Node.Spec, Backend: info.Backend, Links: info.Links, Drops: info.Drops}
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
func printLab(g IO, p output.Printer, x labExplainer, run LabRun, results []lab.Result, res live.Result, check bool) error {
	if g.Text {
		fmt.Fprintf(g.Stdout, "lab %s: node %s, traced with %s (%d %s, drops: %s)\n\n",
			run.ID, run.Node, run.Backend, run.Links, ProbesWord(run.Backend), OrNone(run.Drops))
	}
	var sum output.Summary
	var wrong []string
	for _, r := range results {
		if g.Text {
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
			wrong = append(wrong, fmt.Sprintf("%s: expected %s, got %s", r.Scenario.Name, r.Scenario.Expect, OrNone(string(got))))
		}
		if g.Text {
			fmt.Fprintln(g.Stdout)
		}
	}
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	p.Summary(sum)

	if len(wrong) > 0 {
		g.Log.Error(fmt.Sprintf("%d scenario(s) did not give the expected verdict: %s", len(wrong), strings.Join(wrong, "; ")))
		return ErrReported
	}
	if g.Text && check {
		fmt.Fprintf(g.Stdout, "all %d scenarios gave the expected verdict\n", len(results))
	}
	return nil
}

func scenarioHeader(o IO, r lab.Result) {
	s := r.Scenario
	var eps []string
	for _, ep := range s.Service.Endpoints {
		eps = append(eps, ep.String())
	}
	to := strings.Join(eps, ", ")
	if to == "" {
		to = "no endpoints"
	}
	fmt.Fprintf(o.Stdout, "━━ %s: %s\n", s.Name, s.Title)
	fmt.Fprintf(o.Stdout, "   service %s/%s %s → %s; expected: %s\n", lab.Namespace, s.Service.Name, s.VIP(), to, s.Expect)
	client := r.Client
	if client == "" {
		client = "(not recorded: the recording ends before the client did)"
	}
	fmt.Fprintf(o.Stdout, "   client: %s\n", client)
	if len(r.Conns) == 0 {
		fmt.Fprintln(o.Stdout, "   (the tracer saw no connection)")
	}
}

func keepHint(o IO, l *lab.Lab) {
	vip := l.Scenarios[0].VIP()
	fmt.Fprintf(o.Stderr, `
The lab stays up (id %[1]s). Trace it by hand:
  sudo svctrace trace --netns %[2]s --addr %[3]s
and in another terminal send traffic from the client:
  sudo ip netns exec %[4]s curl -s http://%[3]s/
Remove it:
  sudo svctrace lab cleanup %[1]s
`, l.ID, l.Node.Spec, vip, l.Client.Spec)
}
