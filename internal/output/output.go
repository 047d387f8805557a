// Package output prints connections: a timeline per connection for people
// (Text) or one JSON object per line for programs (JSON). The JSON schema is
// documented in docs/json.md.
package output

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// Printer shows connections as they complete. Printers only format: the
// report holds every name and explanation they show.
type Printer interface {
	// Conn prints one finished connection.
	Conn(c report.Conn)
	// Lost reports that the lost-event count grew to total.
	Lost(total uint64)
	// Summary closes the output.
	Summary(s Summary)
	// Diagnosis prints what was found before tracing.
	Diagnosis(d report.Diagnosis)
	// Resolution prints a name's resolution (--probe=dns).
	Resolution(r report.Resolution)
}

// Options shared by the printers.
type Options struct {
	// Wall converts CLOCK_MONOTONIC ns to wall-clock time; nil: times are
	// shown relative only.
	Wall func(uint64) time.Time
	// Color: the text printer marks verdicts and findings with ANSI colors
	// (for a terminal; see UseColor).
	Color bool
}

// UseColor decides whether text output to a terminal is colored: not if
// asked not to (--no-color, or NO_COLOR set to anything, no-color.org), nor
// when it goes to a file or a pipe, unless ForceColor says so.
func UseColor(noColor bool, isTerminal bool) bool {
	if noColor || os.Getenv("NO_COLOR") != "" {
		return false
	}
	return isTerminal || os.Getenv(ForceColor) != "" && os.Getenv(ForceColor) != "0"
}

// ForceColor set (and not "0") asks for color where output is no terminal:
// kubectl svctrace sets it in its debug Pods when it writes to one.
const ForceColor = "CLICOLOR_FORCE"

// Format is an output format (-o).
type Format string

const (
	FormatText   Format = "text"
	FormatJSON   Format = "json"
	FormatPcapNG Format = "pcapng"
)

// New returns the printer for format.
func New(format Format, w io.Writer, opts Options) (Printer, error) {
	switch format {
	case FormatText, "":
		return &Text{w: w, opts: opts}, nil
	case FormatJSON:
		return &JSON{w: w, opts: opts}, nil
	case FormatPcapNG:
		return newPcapNG(w, opts), nil
	case FormatParts:
		return &Parts{w: w, opts: opts}, nil
	}
	return nil, fmt.Errorf("unknown output format %q", format)
}

// Summary counts what a trace saw.
type Summary struct {
	Conns    int
	Verdicts map[flow.Verdict]int
	Lost     uint64
	Orphans  int // events that belonged to no connection
}

// Count adds a connection to the summary.
func (s *Summary) Count(c *flow.Conn) { s.Add(c.Verdict, 1) }

// Add adds n connections of verdict v: those the tracer only counted.
func (s *Summary) Add(v flow.Verdict, n int) {
	if s.Verdicts == nil {
		s.Verdicts = map[flow.Verdict]int{}
	}
	s.Conns += n
	s.Verdicts[v] += n
}

// VerdictCounts: "2 answered, 1 dropped".
func (s Summary) VerdictCounts() string {
	var parts []string
	for _, v := range flow.Verdicts {
		if n := s.Verdicts[v]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, v))
		}
	}
	return strings.Join(parts, ", ")
}

// dnatName is " (pod shop/web-1 …)": the name of where the step's DNAT
// sent the packet, for a line that says so; "" if none.
func dnatName(r report.Conn, s flow.Step) string {
	if ch, ok := s.Has(flow.DNAT); ok {
		if n := r.Name(ch.To); n != "" {
			return " (" + n + ")"
		}
	}
	return ""
}

// since formats a duration for a timeline: +78µs, +1.2ms, +1.02s.
func since(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return "+" + strconv.FormatInt(d.Microseconds(), 10) + "µs"
	case d < time.Second:
		return "+" + strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	}
	return "+" + strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s"
}
