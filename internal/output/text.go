package output

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// Text prints a timeline per connection.
type Text struct {
	w    io.Writer
	opts Options
	buf  bytes.Buffer // a connection's lines, reused
}

func (p *Text) Conn(c report.Conn) {
	// Written as bytes: a string would be copied again to be written.
	b := &p.buf
	b.Reset()
	fmt.Fprintf(b, "#%d %s → %s %s", c.ID, c.Client, c.VIP, c.Proto)
	if n := c.Name(c.VIP); n != "" {
		fmt.Fprintf(b, " (%s)", n)
	}
	if c.Continues != 0 {
		fmt.Fprintf(b, ", continues #%d", c.Continues)
	}
	if c.Settled {
		b.WriteString(", answered before this (counted, not recorded)")
	}
	if len(c.Nodes) > 1 {
		fmt.Fprintf(b, ", across %s", strings.Join(c.Nodes, " → "))
	}
	if p.opts.Wall != nil {
		fmt.Fprintf(b, "  %s", p.opts.Wall(c.Start).Format("15:04:05.000"))
	}
	b.WriteString("\n")
	if d := describe.DNS(c.Conn); d != "" {
		b.WriteString("   dns       ")
		b.WriteString(d)
		b.WriteByte('\n')
	}

	// A timeline stitched from several nodes marks each step with its
	// node.
	nodeWidth := 0
	for _, n := range c.Nodes {
		nodeWidth = max(nodeWidth, utf8.RuneCountInString(n))
	}
	var shownPackets []int // a handful: a slice, not a map
	for _, s := range c.Steps {
		if !s.Shown() {
			continue
		}
		if s.Packet != 0 && !slices.Contains(shownPackets, s.Packet) { // 0: an overlay packet carrying one
			shownPackets = append(shownPackets, s.Packet)
		}
		// "   %-9s %-12s %s%s\n" without fmt: a timeline has a line per
		// step, and fmt was most of printing it.
		b.WriteString("   ")
		pad(b, since(time.Duration(s.Time-c.Start)), 9)
		if nodeWidth > 0 {
			pad(b, s.Node, nodeWidth)
		}
		pad(b, s.Hook.String(), 12)
		b.WriteString(describe.Step(s))
		b.WriteString(dnatName(c, s))
		b.WriteByte('\n')
	}
	if c.Truncated {
		b.WriteString("             … more steps than kept\n")
	}
	if rest := c.Packets[flow.Original] + c.Packets[flow.Reply] - len(shownPackets); rest > 0 {
		fmt.Fprintf(b, "             … %d more packets (%d →, %d ← in all, %s)%s\n", rest,
			c.Packets[flow.Original], c.Packets[flow.Reply], byteSize(c.Bytes[flow.Original]+c.Bytes[flow.Reply]), closed(c.Conn))
	}
	mark, color := "✗", red
	if c.Verdict == flow.Answered {
		mark, color = "✓", green
	}
	fmt.Fprintf(b, "   %s: %s\n", p.paint(color, mark+" "+string(c.Verdict)), describe.Reason(c.Conn))
	if c.Endpoint.IsValid() {
		if n := c.Name(c.Endpoint); n != "" {
			fmt.Fprintf(b, "     endpoint %s is %s\n", c.Endpoint, n)
		}
	}
	if e := c.Explanation; e != nil {
		lines := [][2]string{{"service", e.Service}, {"rule", e.Rule}, {"blame", e.Blame}}
		for _, ev := range e.Evidence {
			lines = append(lines, [2]string{"fact", ev})
		}
		for _, n := range e.Notes {
			lines = append(lines, [2]string{"note", n})
		}
		for _, l := range lines {
			if l[1] == "" {
				continue
			}
			label := fmt.Sprintf("%-7s", l[0]+":")
			if l[0] == "blame" {
				label = p.paint(bold, label)
			}
			fmt.Fprintf(b, "     %s %s\n", label, l[1])
		}
	}
	if c.Lost > 0 {
		fmt.Fprintf(b, "   ! %d events lost so far: this timeline may be incomplete\n", c.Lost)
	}
	p.w.Write(b.Bytes())
}

// pad writes s, spaces to fill width w (in characters), and one more.
func pad(b *bytes.Buffer, s string, w int) {
	b.WriteString(s)
	for n := utf8.RuneCountInString(s); n < w; n++ {
		b.WriteByte(' ')
	}
	b.WriteByte(' ')
}

// byteSize says n in B, kB, MB or GB (powers of 1000).
func byteSize(n uint64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%d B", n)
	case n < 1000_000:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	case n < 1000_000_000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1f GB", float64(n)/1e9)
}

func closed(c *flow.Conn) string {
	if c.Closed == "" {
		return ""
	}
	return ", closed by " + c.Closed
}

func (p *Text) Lost(total uint64) {
	fmt.Fprintf(p.w, "! %d events lost: the ring buffer was full (the kernel produced events faster than svctrace read them)\n", total)
}

func (p *Text) Summary(s Summary) {
	fmt.Fprintf(p.w, "%d connection(s)", s.Conns)
	if v := s.VerdictCounts(); v != "" {
		fmt.Fprintf(p.w, ": %s", v)
	}
	fmt.Fprintf(p.w, "; %d events lost\n", s.Lost)
}

// marks of the findings, and their colors.
var marks = map[report.Severity]struct{ text, color string }{
	report.Problem: {"✗", red}, report.Warning: {"!", yellow}, report.Info: {"i", blue}, report.OK: {"✓", green}}

// ANSI colors of the marks.
const (
	red    = "31"
	green  = "32"
	yellow = "33"
	blue   = "34"
	bold   = "1"
)

// paint colors s if the printer colors.
func (p *Text) paint(color, s string) string {
	if !p.opts.Color {
		return s
	}
	return "\x1b[" + color + "m" + s + "\x1b[0m"
}

func (p *Text) Diagnosis(d report.Diagnosis) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n", d.Service)
	node := d.Node
	if node == "" {
		node = "unknown (no Node object matches this host; use --node)"
	}
	fmt.Fprintf(&b, "  objects: %s; node: %s\n  kube-proxy: %s\n", d.Source, node, d.Proxy)
	if d.Read != "" {
		fmt.Fprintf(&b, "  node facts: %s\n", d.Read)
	}
	p.findings(&b, d.Findings)
	io.WriteString(p.w, b.String())
}

// findings writes findings, one mark and code each, their evidence and
// next steps below.
func (p *Text) findings(b *strings.Builder, fs []report.Finding) {
	for _, f := range fs {
		fmt.Fprintf(b, "%s: %s\n", p.paint(marks[f.Severity].color, marks[f.Severity].text+" "+string(f.Code)), f.Summary)
		for _, e := range f.Evidence {
			fmt.Fprintf(b, "    %s\n", e)
		}
		for _, n := range f.Next {
			fmt.Fprintf(b, "    → %s\n", n)
		}
	}
}

// Resolution prints a name's resolution: each form of the name, each
// query with its answer and who gave it, then the findings.
func (p *Text) Resolution(r report.Resolution) {
	var b strings.Builder
	fmt.Fprintf(&b, "%s from %s\n  resolver: %s\n  cluster DNS: %s\n", p.paint(bold, "DNS"), r.From, r.Conf, r.Cluster)
	for _, n := range r.Names {
		fmt.Fprintf(&b, "  %s\n", n.Name)
		for _, h := range n.Hosts {
			fmt.Fprintf(&b, "    /etc/hosts line %d: %s %s\n", h.Line, h.Addr, strings.Join(h.Names, " "))
		}
		for _, q := range n.Queries {
			outcome := q.Rcode
			if outcome == "" {
				outcome = q.Failure
			} else {
				outcome += " in " + q.Took.Round(10*time.Microsecond).String()
			}
			if len(q.Addrs) > 0 {
				outcome += ": " + joinAddrs(q.Addrs)
			}
			if q.Truncated {
				outcome += " (truncated)"
			}
			via := "udp"
			if q.TCP {
				via = "tcp"
			}
			if q.From.IsValid() {
				via += " " + q.From.String()
			}
			by := r.SentTo[q.From]
			if by == "" {
				by = q.Server.String()
			}
			fmt.Fprintf(&b, "    %-5s %s  %s → %s  %s\n", q.Type, q.Name, via, by, outcome)
		}
		switch {
		case len(n.Addrs) == 0:
			fmt.Fprintf(&b, "    → no address\n")
		case n.Answered != "":
			fmt.Fprintf(&b, "    → %s (as %s)\n", joinAddrs(n.Addrs), n.Answered)
		default:
			fmt.Fprintf(&b, "    → %s (/etc/hosts)\n", joinAddrs(n.Addrs))
		}
	}
	p.findings(&b, r.Findings)
	io.WriteString(p.w, b.String())
}

func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
