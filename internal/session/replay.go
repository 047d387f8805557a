package session

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Replay prints what the live run that made rec printed, for the
// connections keep keeps, then the analysis (svctrace analyze); path names
// the recording in messages, corrupt says it was read up to a corruption.
func Replay(o IO, path string, rec *record.Recording, keep func(*flow.Conn) bool, corrupt bool) error {
	_, err := replay(o, path, rec, corrupt, replayTo{keep: keep})
	return err
}

// replayTo is where a replay's output goes: a printer of its own made on
// o (nil p) or p, and every connection keep keeps printed there; or,
// with collect, the diagnoses printed and the connections handed to
// collect, unfiltered, to be printed with other nodes'.
type replayTo struct {
	p       output.Printer
	keep    func(*flow.Conn) bool
	collect func(report.Conn)
}

// replayed is what a replay tells of the recording beyond its output.
type replayed struct {
	res live.Result
	// last is the recording's last input time (its flush, else tick):
	// the trace lasted from its Meta.Mono to then.
	last uint64
}

func replay(o IO, path string, rec *record.Recording, corrupt bool, to replayTo) (replayed, error) {
	var out replayed
	var err error
	for _, n := range rec.Notes {
		o.say("note: %s", n)
	}
	switch {
	case corrupt:
	case rec.End == nil:
		o.say("note: the recording ends abruptly (the trace was killed or crashed): analysing what it holds")
	case rec.End.Truncated != "":
		o.say("note: %s: events after that were not recorded", rec.End.Truncated)
	}
	m := rec.Meta
	if m.Mode != "trace" && m.Mode != "service" && m.Mode != "lab" {
		return out, fmt.Errorf("%s: a recording of svctrace %s, which this svctrace cannot analyse", path, m.Mode)
	}
	if m.Mode == "lab" && to.collect != nil {
		return out, fmt.Errorf("%s: a recording of svctrace lab, whose node is the only one: analyse it alone", path)
	}

	// The interfaces the live run named as it went, known up front here.
	// The names of addresses are taken in where the live run first used
	// them (apply, and Conn below): a connection is named as it was live.
	ifNames, names := map[uint32]string{}, map[netip.Addr]string{}
	// Who clients were, for the network policies, as the live run looked
	// them up.
	peers := map[netip.Addr]resolve.Peer{}
	peer := func(a netip.Addr) (resolve.Peer, bool) {
		e, ok := peers[a]
		return e, ok
	}
	for _, e := range rec.Entries {
		if e.Type == record.TypeIfName {
			ifNames[e.IfName.Index] = e.IfName.Name
		}
	}
	services := map[nf.Target]bool{}
	// cur is the Service's assessment, dnsA the cluster DNS Service's
	// traced beside it (--probe=dns).
	var cur, dnsA *diagnose.Assessment
	// x explains the connections and names their addresses, as the
	// recording knows them; nil: addresses only.
	var x report.Explainer
	var lr *LabRecord
	var labAs map[string]*diagnose.Assessment
	if m.Mode == "lab" {
		if lr, labAs, err = readLab(rec, names, peer); err != nil {
			return out, fmt.Errorf("%s: %w", path, err)
		}
		if lr == nil {
			o.say("note: the recording ends before the lab's scenarios: its connections are shown without them")
		} else {
			var ss []lab.Scenario
			for _, r := range lr.Results {
				ss = append(ss, r.Scenario)
			}
			x = labExplainer{ss, labAs}
		}
	}
	p := to.p
	if p == nil {
		if p, err = o.Printer(output.Options{Wall: m.WallClock()}); err != nil {
			return out, err
		}
	}

	// assess diagnoses recorded objects as the live run did, naming
	// addresses as it learned them; the first time (no prev), its
	// diagnosis is printed, as live.
	assess := func(v *resolve.View, r record.Rules, prev *diagnose.Assessment) *diagnose.Assessment {
		a := assessRecorded(v, r, m)
		a.Explainer.Lookup = func(ip netip.Addr) string { return names[ip] }
		a.Explainer.Peer = peer
		if prev == nil {
			p.Diagnosis(a.Diagnosis())
		}
		return a
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
		case record.TypeName:
			if e.Name.Peer != nil {
				peers[e.Name.Addr] = *e.Name.Peer
			} else {
				names[e.Name.Addr] = e.Name.Name
			}
		case record.TypeFacts:
			for _, a := range []*diagnose.Assessment{cur, dnsA} {
				if a != nil {
					a.Explainer.AddFacts(e.Facts)
				}
			}
		case record.TypeDNS:
			dnsA = assess(e.DNS.View, e.DNS.Rules, dnsA)
			x = explainerOf(cur, dnsA)
		case record.TypeResolution:
			var r report.Resolution
			if err := json.Unmarshal(e.Resolution, &r); err != nil {
				o.warn("%s: byte %d: a resolution svctrace cannot read: %v", path, e.Offset, err)
				break
			}
			p.Resolution(r)
		case record.TypeRules:
			if view == nil {
				break
			}
			cur = assess(view, e.Rules, cur)
			// Without the Service's objects (a recording cut right after
			// its first record), connections go unexplained.
			x = explainerOf(cur, dnsA)
		case record.TypeEvent:
			return live.Input{Event: &e.Event}, true
		case record.TypeTick:
			out.last = max(out.last, e.Time)
			return live.Input{Tick: e.Time}, true
		case record.TypeLost:
			return live.Input{Lost: e.Lost}, true
		case record.TypeFlush:
			out.last = max(out.last, e.Time)
			return live.Input{Flush: e.Time}, true
		}
		return live.Input{}, false
	}
	// The records in order, inputs included: from the file again when
	// rec was read without them (record.Open).
	cs, err := newCursor(rec)
	if err != nil {
		return out, err
	}
	defer cs.close()
	next := func() (live.Input, bool) {
		for e := cs.take(); e != nil; e = cs.take() {
			if in, ok := apply(e); ok {
				return in, true
			}
		}
		return live.Input{}, false
	}
	if m.Mode == "service" {
		// The Service's objects and diagnosis come before any packet, as
		// they did live.
		for e := cs.peek(); e != nil && cur == nil && !record.IsInput(e.Type); e = cs.peek() {
			apply(cs.take())
		}
		if cur == nil {
			o.say("note: the recording ends before the Service's objects: its connections are shown without names")
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
			an.Conntrack = append(an.Conntrack, output.ConntrackSnapshot{When: when, Total: e.Conntrack.Total, Entries: e.Conntrack.Entries})
		}
	}
	res := live.Replay(live.Options{
		Flow: flow.Options{NodeNetNS: m.NetNS, Timeout: m.Timeout,
			IsService: func(pr nf.Proto, a netip.AddrPort) bool { return services[nf.Target{Addr: a, Proto: pr}] },
			IfName:    func(i uint32) string { return ifNames[i] }},
		Count: m.Count,
		// A lab's connections are kept to be printed by scenario, and
		// collected ones to be stitched; any other's are done with once
		// printed.
		Reuse: lr == nil && to.collect == nil,
		Conn: func(c *flow.Conn, lost uint64) {
			if lr != nil {
				conns = append(conns, c) // printed by scenario at the end, as live
				return
			}
			// The names the live run learned as it reported this
			// connection follow the input that completed it.
			for e := cs.peek(); e != nil && (e.Type == record.TypeName || e.Type == record.TypeFacts); e = cs.peek() {
				apply(cs.take())
			}
			if to.collect != nil {
				to.collect(report.Of(c, x, lost))
				return
			}
			if to.keep(c) {
				r := report.Of(c, x, lost)
				sum.Count(c)
				an.Count(r)
				p.Conn(r)
			}
		},
		Lost: func(total uint64) {
			if to.collect == nil {
				p.Lost(total)
			}
		},
	}, next)
	out.res = res
	if to.collect != nil {
		return out, nil
	}
	if lr != nil {
		results := make([]lab.Result, len(lr.Results))
		for i, r := range lr.Results {
			results[i] = lab.Result{Scenario: r.Scenario, Client: r.Client}
		}
		// Facts the live run read again as it explained, and who the
		// clients it judged by their policies were, for all of it.
		for _, e := range rec.Entries {
			switch {
			case e.Type == record.TypeFacts:
				for _, a := range labAs {
					a.Explainer.AddFacts(e.Facts)
				}
			case e.Type == record.TypeName && e.Name.Peer != nil:
				peers[e.Name.Addr] = *e.Name.Peer
			}
		}
		lab.Assign(results, conns)
		for i := range results {
			results[i].Conns = slices.DeleteFunc(results[i].Conns, func(c *flow.Conn) bool { return !to.keep(c) })
			for _, c := range results[i].Conns {
				an.Count(report.Of(c, x, 0))
			}
		}
		// A scenario whose verdict differed was reported live; here it is
		// only what the recording holds.
		if err := printLab(o, p, x.(labExplainer), lr.Run, results, res, true); err != nil && err != ErrReported {
			return out, err
		}
		output.WriteAnalysis(p, &an)
		return out, nil
	}
	sum.Lost, sum.Orphans = res.Lost, res.Orphans
	p.Summary(sum)
	output.WriteAnalysis(p, &an)
	return out, pcapErr(p)
}

// pcapErr is the pcapng printer's write error, if p is one.
func pcapErr(p output.Printer) error {
	if pc, ok := p.(*output.PcapNG); ok && pc.Err() != nil {
		return fmt.Errorf("writing pcapng: %w", pc.Err())
	}
	return nil
}

// explainerOf explains with the Service's assessment, and the cluster DNS
// Service's for the queries to it when one was traced beside it.
func explainerOf(svc, dns *diagnose.Assessment) report.Explainer {
	switch {
	case svc == nil:
		return nil
	case dns == nil:
		return svc.Explainer
	}
	return explainers{main: svc.Explainer, dns: &clusterDNS{a: dns}}
}

// cursor goes through a recording's records in order, with one of
// lookahead: those in memory, or those Stream reads again.
type cursor struct {
	list []record.Entry
	i    int
	rd   *record.Reader
	done func()
	head *record.Entry // read by peek, not yet taken
}

func newCursor(rec *record.Recording) (*cursor, error) {
	if rec.Stream == nil {
		return &cursor{list: rec.Entries}, nil
	}
	rd, done, err := rec.Stream()
	if err != nil {
		return nil, err
	}
	return &cursor{rd: rd, done: done}, nil
}

func (c *cursor) peek() *record.Entry {
	if c.rd == nil {
		if c.i < len(c.list) {
			return &c.list[c.i]
		}
		return nil
	}
	if c.head == nil {
		// An error ends the records here: the first reading found it
		// and said so.
		c.head, _ = c.rd.Next()
	}
	return c.head
}

func (c *cursor) take() *record.Entry {
	e := c.peek()
	if c.rd == nil {
		c.i++
	}
	c.head = nil
	return e
}

func (c *cursor) close() {
	if c.done != nil {
		c.done()
	}
}

// readLab reads a lab recording's scenarios and objects, and diagnoses
// each scenario's Service as the live run did; nil if the recording ends
// before them. Its lab records come in two: what the lab is, when tracing
// began, and what its clients saw, at the end.
func readLab(rec *record.Recording, names map[netip.Addr]string, peer func(netip.Addr) (resolve.Peer, bool)) (*LabRecord, map[string]*diagnose.Assessment, error) {
	var lr *LabRecord
	for _, e := range rec.Entries {
		if e.Type == record.TypeLab {
			if lr == nil {
				lr = &LabRecord{}
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
		rules := lr.Rules
		if n := lr.Nets[r.Scenario.Name]; n != nil {
			rules.Net = n
		}
		a := assessRecorded(v, rules, rec.Meta)
		a.Explainer.Lookup = func(ip netip.Addr) string { return names[ip] }
		a.Explainer.Peer = peer
		as[r.Scenario.Name] = a
	}
	return lr, as, nil
}
