package output

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/svctrace/svctrace/internal/report"
)

// FormatParts is what kubectl svctrace asks of the svctrace in each debug
// Pod when it stitches several nodes' connections (internal/stitch): every
// report in full, one JSON object per line, to be read back (ReadPart)
// and printed where they are joined. Not a format for people: -o json is.
const FormatParts Format = "parts"

// Part is one line of -o parts: a clock (first), a diagnosis, a
// connection as this node saw it, a name's resolution, lost events, or
// the summary.
type Part struct {
	Kind string `json:"kind"` // "clock", "diagnosis", "connection", "resolution", "lost", "summary"
	// Clock: the node's wall-clock time at monotonic 0, what its
	// connections' times count from.
	Clock      time.Time          `json:"clock,omitzero"`
	Diagnosis  *report.Diagnosis  `json:"diagnosis,omitempty"`
	Conn       *report.Conn       `json:"connection,omitempty"`
	Resolution *report.Resolution `json:"resolution,omitempty"`
	Lost       uint64             `json:"lost,omitempty"`
	Summary    *Summary           `json:"summary,omitempty"`
}

// Parts writes -o parts.
type Parts struct {
	w       io.Writer
	opts    Options
	clocked bool
}

func (p *Parts) write(v Part) {
	if !p.clocked && p.opts.Wall != nil {
		p.clocked = true
		p.write(Part{Kind: "clock", Clock: p.opts.Wall(0)})
	}
	b, _ := json.Marshal(v)
	p.w.Write(append(b, '\n'))
}

func (p *Parts) Conn(c report.Conn)             { p.write(Part{Kind: "connection", Conn: &c}) }
func (p *Parts) Lost(total uint64)              { p.write(Part{Kind: "lost", Lost: total}) }
func (p *Parts) Summary(s Summary)              { p.write(Part{Kind: "summary", Summary: &s}) }
func (p *Parts) Diagnosis(d report.Diagnosis)   { p.write(Part{Kind: "diagnosis", Diagnosis: &d}) }
func (p *Parts) Resolution(r report.Resolution) { p.write(Part{Kind: "resolution", Resolution: &r}) }

// ReadPart reads one line of -o parts.
func ReadPart(line []byte) (Part, error) {
	var p Part
	if err := json.Unmarshal(line, &p); err != nil {
		return Part{}, fmt.Errorf("not a line of -o parts: %w", err)
	}
	if p.Kind == "" {
		return Part{}, fmt.Errorf("not a line of -o parts: no kind")
	}
	return p, nil
}
