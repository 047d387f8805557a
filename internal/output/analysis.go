package output

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// Analysis adds up the connections of a recording (svctrace analyze):
// per endpoint and verdict, and how long connecting took.
type Analysis struct {
	endpoints map[netip.AddrPort]map[flow.Verdict]int
	clients   map[netip.Addr]bool
	names     map[netip.AddrPort]string // the endpoints', as the reports gave them
	latencies []time.Duration
	// Conntrack are the traced addresses' conntrack entries the recording
	// holds: at the start and at the end of the trace.
	Conntrack []ConntrackSnapshot
}

// ConntrackSnapshot is the conntrack table's entries at one moment: Total
// of the traced addresses, of which the recording listed Entries.
type ConntrackSnapshot struct {
	When    string            `json:"when"` // "start", "end"
	Total   int               `json:"total"`
	Entries []conntrack.Entry `json:"entries"`
}

// shownEntries bounds the entries the text lists per snapshot; -o json
// gives all the recording has.
const shownEntries = 20

// Count adds a connection.
func (a *Analysis) Count(r report.Conn) {
	c := r.Conn
	if a.endpoints == nil {
		a.endpoints, a.clients, a.names = map[netip.AddrPort]map[flow.Verdict]int{}, map[netip.Addr]bool{}, map[netip.AddrPort]string{}
	}
	if n := r.Name(c.Endpoint); n != "" {
		a.names[c.Endpoint] = n
	}
	if a.endpoints[c.Endpoint] == nil {
		a.endpoints[c.Endpoint] = map[flow.Verdict]int{}
	}
	a.endpoints[c.Endpoint][c.Verdict]++
	a.clients[c.Client.Addr()] = true
	if c.Verdict == flow.Answered {
		if d, ok := ConnectLatency(c); ok {
			a.latencies = append(a.latencies, d)
		}
	}
}

// ConnectLatency is the time from a connection's first packet to the first
// answer (SYN to SYN-ACK for TCP), as the node saw them: the client's
// node, on a timeline stitched from several.
func ConnectLatency(c *flow.Conn) (time.Duration, bool) {
	for _, s := range c.Steps {
		if len(c.Nodes) > 0 && s.Node != c.Nodes[0] {
			continue
		}
		if s.Dir == flow.Reply && s.Time >= c.Start {
			return time.Duration(s.Time - c.Start), true
		}
	}
	return 0, false
}

// percentile is the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (p*len(sorted)+99)/100 - 1
	return sorted[max(i, 0)]
}

type endpointRow struct {
	Endpoint string               `json:"endpoint"` // "" : not translated to any
	Name     string               `json:"name,omitempty"`
	Conns    int                  `json:"connections"`
	Verdicts map[flow.Verdict]int `json:"verdicts"`
}

func (a *Analysis) rows() []endpointRow {
	var rows []endpointRow
	for ep, vs := range a.endpoints {
		r := endpointRow{Verdicts: vs}
		if ep.IsValid() {
			r.Endpoint, r.Name = ep.String(), a.names[ep]
		}
		for _, n := range vs {
			r.Conns += n
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Conns != rows[j].Conns {
			return rows[i].Conns > rows[j].Conns
		}
		return rows[i].Endpoint < rows[j].Endpoint
	})
	return rows
}

func (a *Analysis) latency() (n int, p50, p99 time.Duration) {
	s := slices.Clone(a.latencies)
	slices.Sort(s)
	return len(s), percentile(s, 50), percentile(s, 99)
}

func verdictList(vs map[flow.Verdict]int) string {
	var parts []string
	for _, v := range flow.Verdicts {
		if n := vs[v]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, v))
		}
	}
	return strings.Join(parts, ", ")
}

// WriteAnalysis prints the analysis after the summary, in the printer's
// format.
func WriteAnalysis(p Printer, a *Analysis) {
	switch p := p.(type) {
	case *Text:
		a.text(p.w)
	case *JSON:
		n, p50, p99 := a.latency()
		p.write(struct {
			Kind      string              `json:"kind"`
			Clients   int                 `json:"clients"`
			Endpoints []endpointRow       `json:"endpoints"`
			Answered  int                 `json:"answered_with_latency"`
			P50       float64             `json:"connect_latency_p50_us"`
			P99       float64             `json:"connect_latency_p99_us"`
			Conntrack []ConntrackSnapshot `json:"conntrack,omitempty"`
		}{"analysis", len(a.clients), a.rows(), n, us(p50), us(p99), a.Conntrack})
	}
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func (a *Analysis) text(w io.Writer) {
	fmt.Fprintf(w, "\nanalysis: %d client(s)\n", len(a.clients))
	fmt.Fprintf(w, "  %-22s %5s  %s\n", "endpoint", "conns", "verdicts")
	for _, r := range a.rows() {
		ep := r.Endpoint
		if ep == "" {
			ep = "(none)"
		}
		fmt.Fprintf(w, "  %-22s %5d  %s", ep, r.Conns, verdictList(r.Verdicts))
		if r.Name != "" {
			fmt.Fprintf(w, "  (%s)", r.Name)
		}
		fmt.Fprintln(w)
	}
	if n, p50, p99 := a.latency(); n > 0 {
		fmt.Fprintf(w, "  connect latency, first packet to first answer, %d answered: p50 %s, p99 %s\n", n, round(p50), round(p99))
	}
	for _, s := range a.Conntrack {
		fmt.Fprintf(w, "  conntrack at the %s of the trace: %d entr%s of the traced addresses", s.When, s.Total, map[bool]string{true: "y", false: "ies"}[s.Total == 1])
		if s.Total > len(s.Entries) {
			fmt.Fprintf(w, " (%d recorded, open ones first)", len(s.Entries))
		}
		fmt.Fprintln(w)
		for i, e := range s.Entries {
			if i == shownEntries {
				fmt.Fprintf(w, "    … %d more (-o json lists them)\n", len(s.Entries)-i)
				break
			}
			fmt.Fprintf(w, "    %s %s → %s, reply %s → %s", e.Proto, e.Orig[0], e.Orig[1], e.Reply[0], e.Reply[1])
			if e.State != "" {
				fmt.Fprintf(w, " %s", e.State)
			}
			if e.Mark != 0 {
				fmt.Fprintf(w, " mark %#x", e.Mark)
			}
			if e.Zone != 0 {
				fmt.Fprintf(w, " zone %d", e.Zone)
			}
			if e.Timeout != 0 {
				fmt.Fprintf(w, " expires in %ds", e.Timeout)
			}
			fmt.Fprintln(w)
		}
	}
}

func round(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(time.Microsecond)
	}
	return d.Round(10 * time.Microsecond)
}
