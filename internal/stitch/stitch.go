// Package stitch joins what several nodes' svctrace saw of one connection
// into one timeline with one verdict: the client's node translates the
// Service address and sends the packet on, the endpoint's node takes it
// in (from the overlay or the nodes' network) and delivers it to the Pod,
// and the reply comes back the same way. Each node's part is matched to
// the next by the tuple the packet carried between them (the first
// node's address after NAT is what the next node sees it arrive with),
// and the nodes' clocks are aligned from the connection's own packets.
// Plain functions over reports.
package stitch

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
)

// View is what svctrace on one node reported.
type View struct {
	Node string
	// The node's clock: its monotonic time Mono was wall time Wall
	// (record.Meta). A zero Wall: taken to share the first view's clock.
	Wall time.Time
	Mono uint64
	// From and To bound what the node traced, in its monotonic ns (To
	// 0: it still traces).
	From, To uint64
	Conns    []report.Conn
}

// matchWindow is how far apart, on the wall clocks, two nodes' parts of
// one connection may start: the clocks of a cluster's nodes agree to well
// within it.
const matchWindow = int64(5 * time.Second)

// sameDrop is how close in time two nodes' sightings of one drop outside
// them are, once their clocks are aligned.
const sameDrop = uint64(time.Millisecond)

// part is one node's report of a connection.
type part struct {
	view  int
	idx   int // in its view's Conns
	r     report.Conn
	start int64 // its first event on the first view's clock (wall clocks only)
	next  *part // where its packets went on: the next node's part
	prev  *part
}

// in is the tuple a node first saw the connection's packet with; out is
// the tuple it left with (after its NAT).
func (p *part) in() tupleKey {
	return tupleKey{p.r.Proto, p.r.Client, p.r.VIP}
}

func (p *part) out() tupleKey {
	k := p.in()
	if p.r.SNAT.IsValid() {
		k.src = p.r.SNAT
	}
	if p.r.Endpoint.IsValid() {
		k.dst = p.r.Endpoint
	}
	return k
}

type tupleKey struct {
	proto    nf.Proto
	src, dst netip.AddrPort
}

// Result is the stitched connections and how the clocks were aligned.
type Result struct {
	// Conns are in the order they started, numbered anew from 1, on the
	// first view's clock.
	Conns []report.Conn
	// Offsets are what was added to each view's monotonic ns to put it on
	// the first view's clock.
	Offsets []int64
	// Aligned says, for each view, whether its offset was measured from
	// packets that crossed both ways (else: the wall clocks, made causal).
	Aligned []bool
	// Skew is how far each view's wall clock was off the first view's, as
	// the packets measured it (what Offsets took off the wall clocks').
	Skew []time.Duration
	// Parts are, for each of Conns, the views' connections it was made
	// of: [view, index in its Conns], in path order.
	Parts [][][2]int
}

// Stitch joins the views' parts of each connection. Parts no other node
// saw stay connections of their own, marked with their node.
func Stitch(views []View) Result {
	if len(views) == 0 {
		return Result{}
	}
	coarse := make([]int64, len(views))
	for i, v := range views {
		if !v.Wall.IsZero() && !views[0].Wall.IsZero() {
			coarse[i] = v.Wall.Sub(views[0].Wall).Nanoseconds() - (int64(v.Mono) - int64(views[0].Mono))
		}
	}
	var parts []*part
	byIn := map[tupleKey][]*part{}
	for i, v := range views {
		for j, r := range v.Conns {
			p := &part{view: i, idx: j, r: r, start: int64(r.Start) + coarse[i]}
			parts = append(parts, p)
			byIn[p.in()] = append(byIn[p.in()], p)
		}
	}
	slices.SortStableFunc(parts, func(a, b *part) int { return cmp.Compare(a.start, b.start) })
	for _, p := range parts {
		var best *part
		for _, q := range byIn[p.out()] {
			if q.view == p.view || q.prev != nil || q.start < p.start-matchWindow || q.start > p.start+matchWindow || reaches(q, p) {
				continue
			}
			if p.in() == q.in() && !downstream(views, p, q) {
				continue
			}
			if best == nil || abs(q.start-p.start) < abs(best.start-p.start) {
				best = q
			}
		}
		if best != nil {
			p.next, best.prev = best, p
		}
	}
	res := Result{Offsets: make([]int64, len(views)), Aligned: make([]bool, len(views)), Skew: make([]time.Duration, len(views))}
	residual := align(views, parts, coarse, res.Aligned)
	for i := range views {
		res.Offsets[i], res.Skew[i] = coarse[i]-residual[i], time.Duration(-residual[i])
	}
	var cs []stitched
	for _, p := range parts {
		if p.prev == nil {
			cs = append(cs, join(views, p, res.Offsets, coarse))
		}
	}
	res.Conns, res.Parts = renumber(cs)
	return res
}

// downstream reports whether q's node is after p's on the way of a packet
// both saw with the same tuple (nothing translated it between them): q's
// node is the endpoint's (either node's objects say which node runs the
// Pod it went to), else p's is not and q's saw it later on the wall
// clocks.
func downstream(views []View, p, q *part) bool {
	for _, e := range []*report.Explanation{p.r.Explanation, q.r.Explanation} {
		if e == nil || e.Node == "" {
			continue
		}
		switch e.Node {
		case views[q.view].Node:
			return true
		case views[p.view].Node:
			return false
		}
	}
	return q.start >= p.start
}

// reaches reports whether p's chain leads to q (linking q → p would make
// a loop).
func reaches(p, q *part) bool {
	for ; p != nil; p = p.next {
		if p == q {
			return true
		}
	}
	return false
}

func abs(x int64) int64 { return max(x, -x) }

// crossing is one packet's times where it left one node and where it
// came into the next, on the wall clocks.
type crossing struct {
	from, to      int // views
	left, arrived int64
	ok            bool
}

// crossings are the first original packet's and the first reply's
// crossings between p and its next node.
func crossings(p *part, coarse []int64) (out, back crossing) {
	q := p.next
	out = crossing{from: p.view, to: q.view}
	out.left, out.ok = lastStep(p.r.Conn, flow.Original, coarse[p.view])
	if arrived, ok := firstStep(q.r.Conn, flow.Original, coarse[q.view]); ok && out.ok {
		out.arrived = arrived
	} else {
		out.ok = false
	}
	back = crossing{from: q.view, to: p.view}
	back.left, back.ok = lastStep(q.r.Conn, flow.Reply, coarse[q.view])
	if arrived, ok := firstStep(p.r.Conn, flow.Reply, coarse[p.view]); ok && back.ok {
		back.arrived = arrived
	} else {
		back.ok = false
	}
	return out, back
}

// firstStep is when the connection's first packet going dir (or an
// overlay packet carrying it) was first seen; lastStep when it was last
// seen on the node: it, or the overlay packet carrying it, left.
func firstStep(c *flow.Conn, dir flow.Dir, off int64) (int64, bool) {
	for _, s := range c.Steps {
		if s.Dir == dir && s.Kind == nf.KindHook {
			return int64(s.Time) + off, true
		}
	}
	return 0, false
}

func lastStep(c *flow.Conn, dir flow.Dir, off int64) (int64, bool) {
	n, t, carriers := 0, int64(0), 0
	for _, s := range c.Steps {
		if s.Dir != dir || s.Kind != nf.KindHook {
			continue
		}
		if _, ok := s.Has(flow.Carried); ok {
			carriers++
		}
		switch {
		case n == 0 && s.Packet != 0:
			n = s.Packet
		case (s.Packet != 0 && s.Packet != n) || carriers > 1:
			return t, n != 0 // the next packet, or what carries it: the first is gone
		}
		if n != 0 {
			t = int64(s.Time) + off
		}
	}
	return t, n != 0
}

// align measures each view's clock against the first view's from the
// packets that crossed between them. A packet crossing down measures the
// crossing's time plus the downstream clock's error, a reply crossing
// back its time minus it: with both, the error is half their difference
// (NTP's estimate; the median over the connections); with one way only,
// the wall clocks are kept unless a packet would arrive before it left,
// and then moved just enough that none does. It returns each view's error
// relative to the first view's wall clock, and marks the views measured
// both ways.
func align(views []View, parts []*part, coarse []int64, aligned []bool) []int64 {
	type pair struct{ up, down int }
	type measured struct {
		twoWay          []int64
		out, back       int64 // the shortest crossing each way
		hasOut, hasBack bool
	}
	pairs := map[pair]*measured{}
	for _, p := range parts {
		if p.next == nil {
			continue
		}
		k := pair{p.view, p.next.view}
		m := pairs[k]
		if m == nil {
			m = &measured{}
			pairs[k] = m
		}
		out, back := crossings(p, coarse)
		if out.ok {
			d := out.arrived - out.left
			if !m.hasOut || d < m.out {
				m.out, m.hasOut = d, true
			}
		}
		if back.ok {
			d := back.arrived - back.left
			if !m.hasBack || d < m.back {
				m.back, m.hasBack = d, true
			}
		}
		if out.ok && back.ok {
			m.twoWay = append(m.twoWay, ((out.arrived-out.left)-(back.arrived-back.left))/2)
		}
	}
	residual := make([]int64, len(views))
	known := make([]bool, len(views))
	known[0] = true
	for changed := true; changed; {
		changed = false
		for k, m := range pairs {
			if !known[k.up] || known[k.down] {
				continue
			}
			var e int64
			switch {
			case len(m.twoWay) > 0:
				e, aligned[k.down] = median(m.twoWay), true
			case m.hasOut && m.out < 0:
				e = m.out
			case m.hasBack && m.back < 0:
				e = -m.back
			}
			residual[k.down] = residual[k.up] + e
			known[k.down], changed = true, true
		}
	}
	return residual
}

func median(xs []int64) int64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// stitched is one connection and the parts it was made of.
type stitched struct {
	r     report.Conn
	chain []*part
}

// join makes one connection of head's chain: the first part's addresses
// and counts (the client's view), every part's steps and drops on one
// clock, each marked with its node, and the verdict of the part where the
// connection ended (decide).
func join(views []View, head *part, offsets, coarse []int64) stitched {
	shift := func(t uint64, view int) uint64 { return uint64(int64(t) + offsets[view]) }
	c := *head.r.Conn
	c.Steps, c.Drops, c.Nodes = nil, nil, nil
	c.Start, c.End = shift(head.r.Start, head.view), shift(head.r.End, head.view)
	if c.Answer != 0 {
		c.Answer = shift(c.Answer, head.view)
	}
	r := report.Conn{Conn: &c, Explanation: head.r.Explanation}
	var chain []*part
	for p := head; p != nil; p = p.next {
		chain = append(chain, p)
		node := views[p.view].Node
		c.Nodes = append(c.Nodes, node)
		for _, s := range p.r.Steps {
			s.Time, s.Node = shift(s.Time, p.view), node
			if s.Drop != nil {
				d := *s.Drop
				d.Time, d.Node = shift(d.Time, p.view), node
				s.Drop = &d
			}
			c.Steps = append(c.Steps, s)
		}
		for _, d := range p.r.Drops {
			d.Time, d.Node = shift(d.Time, p.view), node
			c.Drops = append(c.Drops, d)
		}
		for a, n := range p.r.Names {
			if r.Names == nil {
				r.Names = map[netip.AddrPort]string{}
			}
			if _, ok := r.Names[a]; !ok {
				r.Names[a] = n
			}
		}
		r.Lost += p.r.Lost
		c.Start = min(c.Start, shift(p.r.Start, p.view))
		c.End = max(c.End, shift(p.r.End, p.view))
		c.Truncated = c.Truncated || p.r.Truncated
	}
	// Nodes that share a kernel (test beds, VMs' hosts) each see the
	// other's drops, outside their namespace: the node where it happened
	// tells it.
	type seen struct {
		netns            uint32
		reason, location string
	}
	inNode := map[seen]bool{}
	for _, d := range c.Drops {
		if d.InNode {
			inNode[seen{d.NetNS, d.Reason, d.Location}] = true
		}
	}
	elsewhere := func(d *flow.Drop) bool { return d != nil && !d.InNode && inNode[seen{d.NetNS, d.Reason, d.Location}] }
	c.Drops = slices.DeleteFunc(c.Drops, func(d flow.Drop) bool { return elsewhere(&d) })
	c.Steps = slices.DeleteFunc(c.Steps, func(s flow.Step) bool { return elsewhere(s.Drop) })
	slices.SortStableFunc(c.Steps, func(a, b flow.Step) int { return cmp.Compare(a.Time, b.Time) })
	slices.SortStableFunc(c.Drops, func(a, b flow.Drop) int { return cmp.Compare(a.Time, b.Time) })
	// A drop outside every node's namespace (in a Pod's, a client's) that
	// two nodes sharing the kernel both saw is kept once, as the first to
	// see it did.
	type at struct {
		node string
		time uint64
	}
	twice := map[at]bool{}
	for i, d := range c.Drops {
		if d.InNode {
			continue
		}
		for j := i - 1; j >= 0 && d.Time-c.Drops[j].Time < sameDrop; j-- {
			if e := c.Drops[j]; !e.InNode && e.Node != d.Node && !twice[at{e.Node, e.Time}] &&
				e.NetNS == d.NetNS && e.Reason == d.Reason && e.Location == d.Location {
				twice[at{d.Node, d.Time}] = true
				break
			}
		}
	}
	if len(twice) > 0 {
		c.Drops = slices.DeleteFunc(c.Drops, func(d flow.Drop) bool { return twice[at{d.Node, d.Time}] })
		c.Steps = slices.DeleteFunc(c.Steps, func(s flow.Step) bool { return s.Drop != nil && twice[at{s.Drop.Node, s.Drop.Time}] })
	}
	decide(views, chain, &r, shift, coarse)
	if l := astray(views, chain); l != "" && r.Explanation != nil && c.Outcome.Kind != flow.Crossing {
		e := *r.Explanation
		e.Evidence = append(slices.Clone(e.Evidence), l)
		r.Explanation = &e
	}
	return stitched{r, chain}
}

// astray says where an answer went that did not come back the way its
// question came: it left a node for another than the one before it on
// the path, which saw no answer at all (asymmetric routing); "" if none.
func astray(views []View, chain []*part) string {
	for k := 1; k < len(chain); k++ {
		p, prev := chain[k], chain[k-1]
		via := p.r.Conn.LeftVia(flow.Reply)
		if _, seen := firstStep(prev.r.Conn, flow.Reply, 0); via == "" || seen {
			continue
		}
		for _, s := range p.r.Steps {
			if s.Dir == flow.Reply && s.Packet != 0 {
				node := views[p.view].Node
				return fmt.Sprintf("%s: %s left %s via %s and %s never saw it", node, describe.Whose(p.r.Conn, s.Packet), node, via, views[prev.view].Node)
			}
		}
	}
	return ""
}

// decide gives the stitched connection the verdict of the node where it
// ended: the first node (the client's) if answered there; else, along the
// path, the first node that did not pass the packet on (it dropped,
// rejected or delivered it, or its Pod did not answer); a packet that left
// a node for a traced node that never saw it was lost between the two,
// and so was an answer that left the endpoint's node and never came back.
func decide(views []View, chain []*part, r *report.Conn, shift func(uint64, int) uint64, coarse []int64) {
	c := r.Conn
	use := func(p *part) {
		c.Verdict, c.Outcome, c.Answer = p.r.Verdict, p.r.Outcome, 0
		if p.r.Answer != 0 {
			c.Answer = shift(p.r.Answer, p.view)
		}
		c.Drop = nil
		if d := p.r.Drop; d != nil {
			for i := range c.Drops {
				if c.Drops[i].Time == shift(d.Time, p.view) && c.Drops[i].Node == views[p.view].Node {
					c.Drop = &c.Drops[i]
				}
			}
		}
		r.Explanation = merged(chain[0].r.Explanation, p.r.Explanation, views[p.view].Node, len(chain) > 1)
	}
	for k, p := range chain {
		next := (*part)(nil)
		if k+1 < len(chain) {
			next = chain[k+1]
		}
		switch {
		case p.r.Verdict == flow.Answered && k == 0:
			return
		case p.r.Verdict == flow.Answered:
			// The answer left this node and never came back through
			// the one before.
			prev := chain[k-1]
			lost(views, r, p, prev, flow.Reply)
			c.Outcome.Answer = p.r.Outcome.Answer
			return
		case !passedOn(p.r.Conn):
			use(p)
			return
		case next != nil:
			continue
		}
		// Passed on, and no node after it saw the packet: lost on the
		// way if the node it was going to traced the while.
		if to := expected(views, p, coarse); to >= 0 {
			lost(views, r, p, &part{view: to}, flow.Original)
			return
		}
		use(p)
		return
	}
}

// passedOn reports whether the node sent the connection's packet on to
// another host (forwarded, and no reply came, or it died beyond the node)
// rather than ending it there.
func passedOn(c *flow.Conn) bool {
	switch o := c.Outcome; o.Kind {
	case flow.Unanswered:
		return !o.Local
	case flow.Vanished:
		return c.LeftVia(flow.Original) != ""
	case flow.Discarded:
		return c.Drop != nil && !c.Drop.InNode && c.LeftVia(flow.Original) != ""
	}
	return false
}

// expected is the view of the node p's packet was going to, where the
// objects name it (the endpoint Pod's node) and that node traced when the
// packet left p's node for it; -1 if none.
func expected(views []View, p *part, coarse []int64) int {
	e := p.r.Explanation
	if e == nil || e.Node == "" || e.Node == views[p.view].Node {
		return -1
	}
	left, ok := lastStep(p.r.Conn, flow.Original, coarse[p.view])
	if !ok {
		return -1
	}
	for i, v := range views {
		from, to := int64(v.From)+coarse[i], int64(v.To)+coarse[i]
		if v.Node == e.Node && from <= left && (v.To == 0 || left <= to) {
			return i
		}
	}
	return -1
}

// lost makes the connection's verdict a packet lost between from and to:
// no-reply (the client got nothing), with the facts both nodes give.
func lost(views []View, r *report.Conn, from, to *part, dir flow.Dir) {
	c := r.Conn
	fromNode, toNode := views[from.view].Node, views[to.view].Node
	via := from.r.Conn.LeftVia(dir)
	c.Verdict, c.Drop = flow.NoReply, nil
	c.Outcome = flow.Outcome{Kind: flow.Crossing, From: fromNode, To: toNode, Iface: via, Dir: dir, Packet: 1}
	if dir == flow.Reply {
		c.Answer = 0
	}
	e := report.Explanation{}
	if r.Explanation != nil {
		e = *r.Explanation
	}
	e.Cause, e.Class, e.Rule = report.LostBetweenNodes, "network", ""
	what := "the client's first packet"
	if dir == flow.Reply {
		what = "the endpoint's answer"
	}
	e.Blame = fmt.Sprintf("the network between %s and %s: %s left %s via %s and %s never saw it", fromNode, toNode, what, fromNode, via, toNode)
	// What the node it left knew of the way (its route to the endpoint,
	// what it found wrong there), then what the other saw.
	e.Evidence = []string{fmt.Sprintf("%s: %s", fromNode, describe.Reason(from.r.Conn))}
	if fe := from.r.Explanation; fe != nil {
		for _, ev := range fe.Evidence {
			e.Evidence = append(e.Evidence, fromNode+": "+ev)
		}
	}
	e.Evidence = append(e.Evidence,
		fmt.Sprintf("%s traced when it left %s and saw no packet of it arrive", toNode, fromNode),
		fmt.Sprintf("not read: what carries packets from %s's %s to %s; check there that %s reaches %s (the overlay's UDP port in %s's firewall, %s's route, neighbour and FDB entries for it)",
			fromNode, via, toNode, fromNode, toNode, toNode, fromNode))
	r.Explanation = &e
}

// merged is the first node's explanation (the Service, its endpoint)
// with the deciding node's blame and facts, which say their node when the
// connection crossed several.
func merged(first, decider *report.Explanation, node string, crossed bool) *report.Explanation {
	switch {
	case decider == nil:
		return first
	case first == nil:
		first = decider
	}
	e := *first
	e.Rule, e.Blame, e.Cause, e.Class, e.Evidence = decider.Rule, decider.Blame, decider.Cause, decider.Class, decider.Evidence
	if crossed {
		e.Blame = "on " + node + ", " + e.Blame
		e.Evidence = make([]string, len(decider.Evidence))
		for i, ev := range decider.Evidence {
			e.Evidence[i] = node + ": " + ev
		}
	}
	for _, n := range decider.Notes {
		if !slices.Contains(e.Notes, n) {
			e.Notes = append(e.Notes, n)
		}
	}
	return &e
}

// renumber numbers the stitched connections from 1 in the order they
// started, and points each continuation at its new number.
func renumber(cs []stitched) ([]report.Conn, [][][2]int) {
	slices.SortStableFunc(cs, func(a, b stitched) int { return cmp.Compare(a.r.Start, b.r.Start) })
	type old struct{ view, id int }
	ids := map[old]int{}
	for i, s := range cs {
		for _, p := range s.chain {
			ids[old{p.view, p.r.ID}] = i + 1
		}
	}
	out, parts := make([]report.Conn, len(cs)), make([][][2]int, len(cs))
	for i, s := range cs {
		s.r.ID = i + 1
		if s.r.Continues != 0 {
			s.r.Continues = ids[old{s.chain[0].view, s.r.Continues}]
		}
		out[i] = s.r
		for _, p := range s.chain {
			parts[i] = append(parts[i], [2]int{p.view, p.idx})
		}
	}
	return out, parts
}
