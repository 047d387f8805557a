package output

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
)

// JSON prints one object per line: "connection" objects as connections
// complete, "lost" objects when events were lost, a "summary" at the end.
// docs/json.md is the schema; change both together.
type JSON struct {
	w    io.Writer
	opts Options
}

type jsonConn struct {
	Kind         string           `json:"kind"` // "connection"
	ID           int              `json:"id"`
	Continues    int              `json:"continues,omitzero"`
	Settled      bool             `json:"settled,omitzero"`
	Scenario     string           `json:"scenario,omitempty"`
	Verdict      flow.Verdict     `json:"verdict"`
	Reason       string           `json:"reason"`
	Proto        nf.Proto         `json:"proto"`
	Client       netip.AddrPort   `json:"client"`
	VIP          netip.AddrPort   `json:"vip"`
	VIPName      string           `json:"vip_name,omitempty"`
	Endpoint     *netip.AddrPort  `json:"endpoint,omitempty"`
	EndpointName string           `json:"endpoint_name,omitempty"`
	Endpoints    []netip.AddrPort `json:"endpoints,omitempty"`
	Service      string           `json:"service,omitempty"`
	Pod          string           `json:"pod,omitempty"`
	Node         string           `json:"node,omitempty"`
	EndpointCond string           `json:"endpoint_state,omitempty"`
	Rule         string           `json:"rule,omitempty"`
	Blame        string           `json:"blame,omitempty"`
	Cause        report.Code      `json:"cause,omitempty"`
	Class        string           `json:"class,omitempty"`
	Evidence     []string         `json:"evidence,omitempty"`
	Notes        []string         `json:"notes,omitempty"`
	SNAT         *netip.AddrPort  `json:"snat,omitempty"`
	Start        *time.Time       `json:"start,omitempty"`
	DurationUS   int64            `json:"duration_us"`
	Packets      jsonPackets      `json:"packets"`
	SYNs         int              `json:"syns,omitzero"`
	Closed       string           `json:"closed,omitempty"`
	Drop         *jsonDrop        `json:"drop,omitempty"`
	Drops        []*jsonDrop      `json:"drops,omitempty"`
	DNS          []nf.DNS         `json:"dns,omitempty"`
	Nodes        []string         `json:"nodes,omitempty"`
	LostBetween  *jsonCrossing    `json:"lost_between,omitempty"`
	Events       []jsonEvent      `json:"events"`
	Truncated    bool             `json:"events_truncated,omitzero"`
	LostEvents   uint64           `json:"lost_events,omitzero"`
}

// jsonCrossing: the nodes a packet left and never reached.
type jsonCrossing struct {
	From string   `json:"from"`
	To   string   `json:"to"`
	Dir  flow.Dir `json:"dir"`
}

type jsonPackets struct {
	Original int       `json:"original"`
	Reply    int       `json:"reply"`
	Bytes    jsonBytes `json:"bytes"`
}

type jsonBytes struct {
	Original uint64 `json:"original"`
	Reply    uint64 `json:"reply"`
}

type jsonDrop struct {
	Hook       string          `json:"hook,omitempty"`       // netfilter hook (iptables chain name)
	Stage      string          `json:"stage"`                // what runs there: "filter table (0)"
	Between    []string        `json:"between,omitempty"`    // the observers around it
	Priorities []int64         `json:"priorities,omitempty"` // their priorities
	Reason     string          `json:"reason"`
	Location   string          `json:"location"`
	NetNS      uint32          `json:"netns"`
	InNode     bool            `json:"in_node_netns"`
	Packet     int             `json:"packet,omitzero"`
	Dir        flow.Dir        `json:"dir"`
	Invalid    bool            `json:"invalid,omitempty"`
	Endpoint   *netip.AddrPort `json:"endpoint,omitempty"`
	Node       string          `json:"node,omitempty"`
	Outer      *jsonOuter      `json:"outer,omitempty"`
}

type jsonEvent struct {
	TimeUS   int64          `json:"t_us"`
	Packet   int            `json:"packet"`
	Dir      flow.Dir       `json:"dir"`
	Kind     nf.Kind        `json:"kind"`
	Hook     string         `json:"hook,omitempty"`
	Stage    nf.Stage       `json:"stage,omitzero"`
	Priority *int32         `json:"priority,omitempty"`
	Src      netip.AddrPort `json:"src"`
	Dst      netip.AddrPort `json:"dst"`
	Flags    string         `json:"flags,omitempty"`
	CT       string         `json:"ct,omitempty"`
	CTMark   uint32         `json:"ct_mark,omitzero"`
	CTZone   uint16         `json:"ct_zone,omitzero"`
	Mark     uint32         `json:"mark,omitzero"`
	Note     string         `json:"note,omitempty"`
	Node     string         `json:"node,omitempty"`
	Outer    *jsonOuter     `json:"outer,omitempty"`
}

// jsonOuter is the overlay packet (VXLAN) that carries an event's packet.
type jsonOuter struct {
	Src netip.AddrPort `json:"src"`
	Dst netip.AddrPort `json:"dst"`
}

func (p *JSON) Conn(r report.Conn) {
	c := r.Conn
	j := jsonConn{
		Kind: "connection", ID: c.ID, Continues: c.Continues, Settled: c.Settled, Scenario: c.Scenario,
		Verdict: c.Verdict, Reason: describe.Reason(c), Proto: c.Proto, Client: c.Client, VIP: c.VIP,
		VIPName:    r.Name(c.VIP),
		DurationUS: time.Duration(c.End - c.Start).Microseconds(),
		Packets: jsonPackets{c.Packets[flow.Original], c.Packets[flow.Reply],
			jsonBytes{c.Bytes[flow.Original], c.Bytes[flow.Reply]}},
		SYNs: c.SYNs, Closed: c.Closed, Truncated: c.Truncated, LostEvents: r.Lost, DNS: c.DNS, Nodes: c.Nodes,
		Events: make([]jsonEvent, 0, len(c.Steps)),
	}
	if c.Endpoint.IsValid() {
		ep := c.Endpoint
		j.Endpoint, j.EndpointName = &ep, r.Name(ep)
	}
	if c.SNAT.IsValid() {
		s := c.SNAT
		j.SNAT = &s
	}
	if p.opts.Wall != nil {
		t := p.opts.Wall(c.Start).UTC()
		j.Start = &t
	}
	if c.Drop != nil {
		j.Drop = drop(c.Drop)
	}
	for i := range c.Drops {
		j.Drops = append(j.Drops, drop(&c.Drops[i]))
	}
	if len(c.Endpoints) > 1 {
		j.Endpoints = c.Endpoints
	}
	if o := c.Outcome; o.Kind == flow.Crossing {
		j.LostBetween = &jsonCrossing{o.From, o.To, o.Dir}
	}
	if e := r.Explanation; e != nil {
		j.Service, j.Pod, j.Node, j.EndpointCond, j.Rule, j.Blame = e.Service, e.Pod, e.Node, e.Endpoint, e.Rule, e.Blame
		j.Notes, j.Cause, j.Class, j.Evidence = e.Notes, e.Cause, e.Class, e.Evidence
	}
	for _, s := range c.Steps {
		e := jsonEvent{TimeUS: time.Duration(s.Time - c.Start).Microseconds(), Packet: s.Packet, Dir: s.Dir,
			Kind: s.Kind, Stage: s.Stage, Src: s.Tuple.Src, Dst: s.Tuple.Dst, Flags: s.Flags, CT: s.CT,
			CTMark: s.CTMark, CTZone: s.CTZone, Mark: s.Mark, Note: describe.Step(s), Node: s.Node}
		if s.Kind == nf.KindHook || (s.Drop != nil && s.Drop.Placed) {
			e.Hook = s.Hook.String()
		}
		if s.Stage != nf.StageNone {
			prio := s.Stage.Priority()
			e.Priority = &prio
		}
		if ch, ok := s.Has(flow.Carried); ok {
			e.Outer = &jsonOuter{ch.Inner.Src, ch.Inner.Dst}
		}
		j.Events = append(j.Events, e)
	}
	p.write(j)
}

func drop(d *flow.Drop) *jsonDrop {
	j := &jsonDrop{Reason: d.Reason, Location: d.Location, NetNS: d.NetNS, InNode: d.InNode, Packet: d.Packet, Dir: d.Dir, Invalid: d.Invalid, Node: d.Node}
	if d.Endpoint.IsValid() {
		ep := d.Endpoint
		j.Endpoint = &ep
	}
	if d.Outer.IsValid() {
		j.Outer = &jsonOuter{d.Outer.Src, d.Outer.Dst}
	}
	switch {
	case !d.InNode:
		j.Stage = "outside the node's network namespace"
		return j
	case !d.Placed:
		j.Stage = "before the first observer"
		return j
	}
	j.Hook = d.Gap.Hook.String()
	j.Stage = d.Gap.What()
	for _, s := range []nf.Stage{d.Gap.After, d.Gap.Before} {
		if s != nf.StageNone {
			j.Between = append(j.Between, s.String())
			j.Priorities = append(j.Priorities, int64(s.Priority()))
		}
	}
	return j
}

func (p *JSON) Lost(total uint64) {
	p.write(struct {
		Kind string `json:"kind"`
		Lost uint64 `json:"lost_events"`
	}{"lost", total})
}

func (p *JSON) Summary(s Summary) {
	v := map[flow.Verdict]int{}
	for k, n := range s.Verdicts {
		v[k] = n
	}
	p.write(struct {
		Kind     string               `json:"kind"`
		Conns    int                  `json:"connections"`
		Verdicts map[flow.Verdict]int `json:"verdicts"`
		Lost     uint64               `json:"lost_events"`
		Orphans  int                  `json:"unmatched_events"`
	}{"summary", s.Conns, v, s.Lost, s.Orphans})
}

func (p *JSON) write(v any) {
	b, _ := json.Marshal(v)
	p.w.Write(append(b, '\n'))
}

func (p *JSON) Diagnosis(d report.Diagnosis) {
	p.write(struct {
		Kind     string           `json:"kind"`
		Scenario string           `json:"scenario,omitempty"`
		Service  string           `json:"service"`
		Source   string           `json:"source"`
		Node     string           `json:"node,omitempty"`
		Proxy    string           `json:"kube_proxy"`
		Read     string           `json:"node_facts,omitempty"`
		Findings []report.Finding `json:"findings"`
	}{"diagnosis", d.Scenario, d.Service, d.Source, d.Node, d.Proxy, d.Read, d.Findings})
}

// jsonQuery is a query of a resolution.
type jsonQuery struct {
	Name      string       `json:"name"`
	Type      string       `json:"type"`
	Server    string       `json:"server"`
	From      string       `json:"from"`
	TCP       bool         `json:"tcp,omitempty"`
	Rcode     string       `json:"rcode,omitempty"`
	Addrs     []netip.Addr `json:"addrs,omitempty"`
	CNAMEs    []string     `json:"cnames,omitempty"`
	Truncated bool         `json:"truncated,omitempty"`
	TookUs    float64      `json:"took_us,omitempty"`
	Failure   string       `json:"failure,omitempty"`
	Endpoint  string       `json:"endpoint,omitempty"`
}

// jsonName is one form of the name and its queries.
type jsonName struct {
	Name     string       `json:"name"`
	Hosts    []string     `json:"hosts,omitempty"`
	Queries  []jsonQuery  `json:"queries"`
	Addrs    []netip.Addr `json:"addrs"`
	Answered string       `json:"answered,omitempty"`
}

func (p *JSON) Resolution(r report.Resolution) {
	names := []jsonName{}
	for _, n := range r.Names {
		jn := jsonName{Name: n.Name, Queries: []jsonQuery{}, Addrs: n.Addrs, Answered: n.Answered}
		if jn.Addrs == nil {
			jn.Addrs = []netip.Addr{}
		}
		for _, h := range n.Hosts {
			jn.Hosts = append(jn.Hosts, fmt.Sprintf("%s %s", h.Addr, strings.Join(h.Names, " ")))
		}
		for _, q := range n.Queries {
			jn.Queries = append(jn.Queries, jsonQuery{Name: q.Name, Type: q.Type, Server: q.Server.String(), From: q.From.String(),
				TCP: q.TCP, Rcode: q.Rcode, Addrs: q.Addrs, CNAMEs: q.CNAMEs, Truncated: q.Truncated,
				TookUs: float64(q.Took.Nanoseconds()) / 1e3, Failure: q.Failure, Endpoint: r.SentTo[q.From]})
		}
		names = append(names, jn)
	}
	p.write(struct {
		Kind     string           `json:"kind"`
		From     string           `json:"from"`
		Conf     string           `json:"resolver"`
		Cluster  string           `json:"cluster_dns"`
		Names    []jsonName       `json:"names"`
		Findings []report.Finding `json:"findings"`
	}{"resolution", r.From, r.Conf, r.Cluster, names, r.Findings})
}
