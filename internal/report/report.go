// Package report is what svctrace shows: the findings about a Service
// before any packet, and each connection with its explanation and the
// names of the addresses it shows. The explanation (internal/diagnose)
// produces these values; the printers (internal/output) only format them,
// and never look anything up.
package report

import (
	"net/netip"

	"github.com/svctrace/svctrace/internal/flow"
)

// Severity ranks a finding.
type Severity string

const (
	Problem Severity = "problem" // traffic fails because of this
	Warning Severity = "warning" // may fail, or fails for some
	Info    Severity = "info"    // worth knowing
	OK      Severity = "ok"
)

// Finding is one thing found, with its evidence and the next command to
// run.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     Code     `json:"code"`
	// Object is what to blame: "Service shop/web", "Pod shop/web-1",
	// "kube-proxy on node-1".
	Object string `json:"object,omitempty"`
	Port   string `json:"port,omitempty"` // the Service port, "shop/web:http"
	// Endpoint is the endpoint the finding is about, "10.244.0.11:8080".
	Endpoint string   `json:"endpoint,omitempty"`
	Summary  string   `json:"summary"`
	Evidence []string `json:"evidence,omitempty"`
	Next     []string `json:"next,omitempty"`
}

// Diagnosis is what svctrace found about a Service before any packet.
type Diagnosis struct {
	Scenario string    // the lab scenario, "" elsewhere
	Service  string    // the Service in one line (resolve.Service.Summary)
	Source   string    // where the objects came from
	Node     string    // this node's name, "" if unknown
	Proxy    string    // kube-proxy's mode on this node and how it was read
	Read     string    // which of the node's facts were read ("" : none)
	Findings []Finding // most important first
}

// Explanation names the Kubernetes objects a connection went through and
// what to blame.
type Explanation struct {
	Service  string // the Service port and how it was reached: "shop/web:http (ClusterIP)"
	Pod      string // the endpoint's Pod, "shop/web-1"
	Node     string // the endpoint's node
	Endpoint string // the endpoint's state: "ready", "not ready", …
	Rule     string // the rule that rejected or dropped, with its table and chain
	Blame    string // the object to blame and why, one line
	// Cause is the blame as data: the code of the finding that explains
	// the connection, or of what only its packets show (TraceCodes), and
	// Class the part of the path that decided (the kernel's drop reason's,
	// an ICMP error's, a reset's).
	Cause Code
	Class string
	// Evidence are the facts svctrace read that show the blame, quoted,
	// and what it would check where it could not read them.
	Evidence []string
	// Notes say how the Service's settings shaped the connection: the
	// traffic policy's effect on the client address, session affinity.
	Notes []string
}

// Conn is one connection as shown.
type Conn struct {
	*flow.Conn
	// Explanation is nil where nothing explains connections (svctrace
	// trace knows addresses, not objects).
	Explanation *Explanation
	// Names of the addresses the connection shows that have one: the
	// Service address, the endpoints, each DNAT's destination.
	Names map[netip.AddrPort]string
	// Lost is the number of events lost so far: non-zero means the
	// timeline may have gaps.
	Lost uint64
}

// Name is the name of a, or "".
func (c Conn) Name(a netip.AddrPort) string { return c.Names[a] }

// Explainer explains connections and names addresses
// (diagnose.Explainer).
type Explainer interface {
	Explain(*flow.Conn) Explanation
	Name(netip.AddrPort) string
}

// Of is the report of c: x's explanation, and the names x gives the
// addresses the report shows. x may be nil.
func Of(c *flow.Conn, x Explainer, lost uint64) Conn {
	r := Conn{Conn: c, Lost: lost}
	if x == nil {
		return r
	}
	e := x.Explain(c)
	r.Explanation = &e
	for _, a := range Shown(c) {
		if n := x.Name(a); n != "" {
			if r.Names == nil {
				r.Names = map[netip.AddrPort]string{}
			}
			r.Names[a] = n
		}
	}
	return r
}

// Shown are the addresses a report of c names: the address asked for,
// every endpoint, and every DNAT's destination in the steps.
func Shown(c *flow.Conn) []netip.AddrPort {
	as := []netip.AddrPort{c.VIP}
	add := func(a netip.AddrPort) {
		if !a.IsValid() {
			return
		}
		for _, b := range as {
			if a == b {
				return
			}
		}
		as = append(as, a)
	}
	add(c.Endpoint)
	for _, e := range c.Endpoints {
		add(e)
	}
	for _, s := range c.Steps {
		if ch, ok := s.Has(flow.DNAT); ok {
			add(ch.To)
		}
	}
	return as
}
