package output

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// Services adds up svctrace -A's connections per Service port: how many,
// how many answered, and per failing verdict its most frequent blame. It
// holds one row per Service port seen (the catalog bounds them) and at
// most maxBlames blames per verdict.
type Services struct {
	rows map[string]*serviceRow
}

type serviceRow struct {
	conns, answered int
	// counted: connections answered that the tracer only counted
	// (svctrace -A holds them in the kernel), not among conns.
	counted int
	failing map[flow.Verdict]*failing
}

type failing struct {
	n      int
	blames map[string]int
	other  int // blames past maxBlames, counted only
}

// maxBlames bounds the distinct blames kept per Service port and verdict.
const maxBlames = 16

func (s *Services) row(port string) *serviceRow {
	if s.rows == nil {
		s.rows = map[string]*serviceRow{}
	}
	r := s.rows[port]
	if r == nil {
		r = &serviceRow{failing: map[flow.Verdict]*failing{}}
		s.rows[port] = r
	}
	return r
}

// Counted sets how many connections to each Service port the tracer
// counted answered without reporting them (tracer.Tracer.Answered, by
// port): the kernel's running totals, so each call replaces the last.
func (s *Services) Counted(ports map[string]int) {
	for _, r := range s.rows {
		r.counted = 0
	}
	for port, n := range ports {
		s.row(port).counted = n
	}
}

// Count adds a connection to port ("namespace/name:port"; another name
// when it is no Service's). e is its explanation, nil when none was made
// (an answered connection -A does not print).
func (s *Services) Count(port string, c *flow.Conn, e *report.Explanation) {
	r := s.row(port)
	r.conns++
	if c.Verdict == flow.Answered {
		r.answered++
		return
	}
	f := r.failing[c.Verdict]
	if f == nil {
		f = &failing{blames: map[string]int{}}
		r.failing[c.Verdict] = f
	}
	f.n++
	blame := ""
	if e != nil {
		blame = e.Blame
	}
	if _, ok := f.blames[blame]; ok || len(f.blames) < maxBlames {
		f.blames[blame]++
	} else {
		f.other++
	}
}

// Headline is the table in a few words, for a status line: "2 Service
// port(s) failing, most shop/hung:http (3)"; "" while none fails.
func (s *Services) Headline() string {
	n, worst, most := 0, "", 0
	for port, r := range s.rows {
		f := r.conns - r.answered
		if f == 0 {
			continue
		}
		n++
		if f > most || (f == most && port < worst) {
			worst, most = port, f
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%d Service port(s) failing, most %s (%d)", n, worst, most)
}

// ServiceRow is one Service port's line of the table.
type ServiceRow struct {
	Port     string       `json:"service_port"`
	Conns    int          `json:"connections"`
	Answered int          `json:"answered"`
	Failing  []FailingRow `json:"failing,omitempty"`
}

// FailingRow is one failing verdict of a Service port: how often, and
// the blame given most often (Blamed times).
type FailingRow struct {
	Verdict flow.Verdict `json:"verdict"`
	Conns   int          `json:"connections"`
	Blame   string       `json:"blame,omitempty"`
	Blamed  int          `json:"blamed"`
}

// shownHealthy bounds the Service ports with only answered connections
// that the text table lists, the busiest first.
const shownHealthy = 10

// Rows are the table: failing Service ports first (most failures first),
// then the others, busiest first; then by name.
func (s *Services) Rows() []ServiceRow {
	var out []ServiceRow
	for port, r := range s.rows {
		row := ServiceRow{Port: port, Conns: r.conns + r.counted, Answered: r.answered + r.counted}
		for _, v := range flow.Verdicts {
			f := r.failing[v]
			if f == nil {
				continue
			}
			fr := FailingRow{Verdict: v, Conns: f.n}
			for b, n := range f.blames {
				if n > fr.Blamed || (n == fr.Blamed && b < fr.Blame) {
					fr.Blame, fr.Blamed = b, n
				}
			}
			row.Failing = append(row.Failing, fr)
		}
		out = append(out, row)
	}
	sort.Slice(out, func(i, j int) bool {
		fi, fj := out[i].Conns-out[i].Answered, out[j].Conns-out[j].Answered
		switch {
		case fi != fj:
			return fi > fj
		case out[i].Conns != out[j].Conns:
			return out[i].Conns > out[j].Conns
		}
		return out[i].Port < out[j].Port
	})
	return out
}

// WriteServices prints the table, as of elapsed into the trace; final:
// the trace ended.
func WriteServices(p Printer, s *Services, elapsed time.Duration, final bool) {
	rows := s.Rows()
	switch p := p.(type) {
	case *Text:
		writeServicesText(p.w, rows, elapsed, final)
	case *JSON:
		p.write(struct {
			Kind     string       `json:"kind"`
			Elapsed  float64      `json:"elapsed_s"`
			Final    bool         `json:"final"`
			Services []ServiceRow `json:"services"`
		}{"services", elapsed.Seconds(), final, rows})
	}
}

func writeServicesText(w io.Writer, rows []ServiceRow, elapsed time.Duration, final bool) {
	failingPorts := 0
	for _, r := range rows {
		if r.Conns > r.Answered {
			failingPorts++
		}
	}
	when := "so far"
	if final {
		when = "in all"
	}
	fmt.Fprintf(w, "\nservices after %s %s: %d Service port(s) with connections, %d failing\n", elapsed.Round(time.Second), when, len(rows), failingPorts)
	if len(rows) == 0 {
		return
	}
	// Every failing port; of the healthy ones (they come last) the
	// busiest few: -o json has them all.
	shown, healthy := rows, 0
	for i, r := range rows {
		if r.Conns == r.Answered {
			healthy = len(rows) - i
			shown = rows[:i+min(healthy, shownHealthy)]
			break
		}
	}
	width := len("SERVICE PORT")
	for _, r := range shown {
		width = max(width, len(r.Port))
	}
	fmt.Fprintf(w, "  %-*s %6s %9s  %s\n", width, "SERVICE PORT", "CONNS", "ANSWERED", "FAILING (most frequent blame)")
	defer func() {
		if healthy > shownHealthy {
			fmt.Fprintf(w, "  … and %d more Service port(s), every connection answered (-o json lists them)\n", healthy-shownHealthy)
		}
	}()
	for _, r := range shown {
		fmt.Fprintf(w, "  %-*s %6d %9d", width, r.Port, r.Conns, r.Answered)
		for i, f := range r.Failing {
			if i > 0 {
				fmt.Fprintf(w, "\n  %*s", width+17, "")
			}
			fmt.Fprintf(w, "  %d %s", f.Conns, f.Verdict)
			if f.Blame != "" {
				fmt.Fprintf(w, ": %s", oneLineBlame(f.Blame))
				if f.Blamed != f.Conns {
					fmt.Fprintf(w, " (%d of them)", f.Blamed)
				}
			}
		}
		fmt.Fprintln(w)
	}
}

// oneLineBlame keeps a table row one line: a blame's first clause.
func oneLineBlame(b string) string {
	const most = 120
	r := []rune(strings.ReplaceAll(b, "\n", " "))
	if len(r) <= most {
		return string(r)
	}
	return string(r[:most-1]) + "…"
}

// ServiceCheck is one line of svctrace check -A: a Service and the
// problem found first, before any packet.
type ServiceCheck struct {
	Service string `json:"service,omitempty"`
	// Node, instead of a Service, is a node's problem: every Service's.
	Node    string         `json:"node,omitempty"`
	Finding report.Finding `json:"finding"`
}

// subject is what the line is about: the Service, or "node NAME".
func (c ServiceCheck) subject() string {
	if c.Service != "" {
		return c.Service
	}
	return "node " + c.Node
}

// WriteChecks prints check -A's lines: text, one line a Service (its
// evidence and next steps are svctrace check SERVICE's); JSON, one object
// a Service.
func WriteChecks(p Printer, checks []ServiceCheck) {
	switch p := p.(type) {
	case *Text:
		width := 0
		for _, c := range checks {
			width = max(width, len(c.subject()))
		}
		for _, c := range checks {
			m := marks[c.Finding.Severity]
			fmt.Fprintf(p.w, "%s %-*s  %s: %s", p.paint(m.color, m.text), width, c.subject(), p.paint(m.color, string(c.Finding.Code)), c.Finding.Summary)
			if c.Service == "" {
				fmt.Fprint(p.w, " (every Service on the node)")
			}
			fmt.Fprintln(p.w)
		}
	case *JSON:
		for _, c := range checks {
			p.write(struct {
				Kind string `json:"kind"`
				ServiceCheck
			}{"service-check", c})
		}
	}
}
