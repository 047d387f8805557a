// Package flow groups the kernel's observations into connections and gives
// each a verdict: where, along the node's netfilter path, it was answered,
// translated, rejected or dropped. Plain functions over events: no kernel, no
// Kubernetes.
package flow

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/cause"
	"github.com/svctrace/svctrace/internal/nf"
)

// Options configure an Assembler.
type Options struct {
	// NodeNetNS is the inode of the namespace the observers run in.
	NodeNetNS uint32
	// IsService reports whether an address is a Service address that the
	// node is expected to translate. nil: every watched address is.
	IsService func(proto nf.Proto, addr netip.AddrPort) bool
	// Settle is how long a connection whose outcome is final (rejected,
	// reset, closed) stays open for its last events. Default 200ms.
	Settle time.Duration
	// Timeout is how long an unfinished connection waits for more events
	// before it is reported: the no-reply timeout. Default 3s.
	Timeout time.Duration
	// IfName names an interface of the node namespace; may be nil.
	IfName func(ifindex uint32) string
	// MaxConns bounds the connections followed at once (default 65536);
	// beyond it the oldest is reported early.
	MaxConns int
	// MaxSteps bounds the steps kept per connection (default 200).
	MaxSteps int
	// MaxHeld bounds the room for steps kept across all connections
	// followed (default 131072 steps, some 26 MB): beyond it the oldest
	// connection is reported early. It is what bounds memory in a flood of
	// new connections, each of which holds room for tens of steps until it
	// completes.
	MaxHeld int
}

// Assembler turns a stream of events into connections. Not safe for
// concurrent use.
type Assembler struct {
	opts  Options
	conns []*Conn // followed, oldest first; finished ones are removed by Tick
	// evicted: conns[:evicted] are all done (evicted since the last Tick),
	// so a flood of new connections finds the oldest without rescanning.
	evicted int
	active  int
	held    int // room for steps (capacity) the connections followed hold
	byOrig  map[key]*Conn
	byAny   map[key]indexed
	nextID  int
	// spare are released connections whose memory new ones take.
	spare []*Conn
	// ended remembers recently reported connections that got no answer, so
	// a retransmission arriving later is shown as their continuation.
	ended map[key]ended
	// Orphans counts events that belonged to no connection (e.g. the middle
	// of a TCP connection that started before tracing).
	Orphans int
}

type ended struct {
	id   int
	syns int
	end  uint64
}

// continuationWindow is how long a reported, unanswered connection can be
// continued by a late retransmission.
const continuationWindow = uint64(time.Minute)

type indexed struct {
	c   *Conn
	dir Dir
}

// DefaultTimeout is Options.Timeout's default.
const DefaultTimeout = 3 * time.Second

// New returns an Assembler.
func New(opts Options) *Assembler {
	if opts.Settle == 0 {
		opts.Settle = 200 * time.Millisecond
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = 65536
	}
	if opts.MaxSteps == 0 {
		opts.MaxSteps = 200
	}
	if opts.MaxHeld == 0 {
		opts.MaxHeld = 1 << 17
	}
	return &Assembler{opts: opts, byOrig: map[key]*Conn{}, byAny: map[key]indexed{},
		ended: map[key]ended{}}
}

// Active is the number of connections being followed.
func (a *Assembler) Active() int { return a.active }

// Add takes one event, which it neither changes nor keeps. It returns
// connections that became complete because of it (a new connection reusing
// a finished one's addresses, or one evicted to stay within MaxConns).
func (a *Assembler) Add(ev *nf.Event) []*Conn {
	switch ev.Kind {
	case nf.KindCount:
		a.count(ev)
		return nil
	case nf.KindSettled:
		return a.settled(ev)
	}
	var done []*Conn
	c, dir, ok := a.lookup(ev)
	if ok && a.reuses(c, ev, dir) {
		done = append(done, a.finish(c, ev.Time))
		ok = false
	}
	if !ok {
		orig, starts := startsConn(ev)
		if !starts {
			a.Orphans++
			return done
		}
		if a.active >= a.opts.MaxConns {
			done = append(done, a.finish(a.oldest(), ev.Time))
		}
		c, dir = a.newConn(orig, ev.Time), Original
	}
	a.observe(c, ev, dir)
	for a.held > a.opts.MaxHeld {
		o := a.oldest()
		if o == c {
			break // the newest is never reported for being new
		}
		done = append(done, a.finish(o, ev.Time))
	}
	return done
}

// count adds the packets the kernel counted instead of reporting them (the
// event budget) to their connection, which they keep alive.
func (a *Assembler) count(ev *nf.Event) {
	c := a.byOrig[keyOf(ev.CT.Orig)]
	if c == nil {
		return // it started before tracing, or was already reported
	}
	for d := range 2 {
		c.Packets[d] += int(ev.Counted.Packets[d])
		c.Bytes[d] += ev.Counted.Bytes[d]
	}
	if ev.Counted.Packets[Reply] > 0 {
		// Counted packets passed conntrack with their entry: the
		// destination is still answering.
		c.st.replyPassed = max(c.st.replyPassed, ev.Time)
	}
	c.End = max(c.End, ev.Time)
}

// settled starts a connection the tracer held and counted as answered
// (nf.KindSettled), from what its conntrack entry says: answered at
// ev.Time, by the destination it was translated to; its opening was not
// reported. What comes next of it (a drop) decides its verdict as after any
// answer.
func (a *Assembler) settled(ev *nf.Event) []*Conn {
	k := keyOf(ev.CT.Orig)
	if !ev.CT.Orig.IsValid() || a.byOrig[k] != nil {
		return nil
	}
	var done []*Conn
	if a.active >= a.opts.MaxConns {
		done = append(done, a.finish(a.oldest(), ev.Time))
	}
	c := a.newConn(ev.CT.Orig, ev.Time)
	c.Settled, c.Answer = true, ev.Time
	c.st.ctSeen = true
	a.learnNAT(c, ev.CT)
	if len(c.slab) == cap(c.slab) {
		c.slab = make([]packet, 0, packetsAtOnce)
	}
	what := "UDP"
	if c.Proto == nf.TCP {
		what = "SYN,ACK"
	} else if c.Proto != nf.UDP {
		what = c.Proto.String()
	}
	c.slab = append(c.slab, packet{dir: Reply, start: ev.Time, answer: Answer{From: ev.CT.Reply.Src, What: what}})
	c.st.reply, c.st.replyOut, c.st.replyPassed = &c.slab[len(c.slab)-1], true, ev.Time
	return done
}

// Tick reports the connections that are complete at time now (CLOCK_MONOTONIC
// ns): final and settled, or quiet for longer than the timeout.
func (a *Assembler) Tick(now uint64) []*Conn {
	var done []*Conn
	followed := a.conns[:0]
	for _, c := range a.conns {
		if c.done {
			a.unlisted(c)
			continue
		}
		quiet := time.Duration(now - c.End)
		if now < c.End {
			quiet = 0
		}
		if (c.final() && quiet >= a.opts.Settle) || quiet >= a.opts.Timeout {
			done = append(done, a.finish(c, now))
			a.unlisted(c)
			continue
		}
		followed = append(followed, c)
	}
	clear(a.conns[len(followed):])
	a.conns, a.evicted = followed, 0
	if a.active == 0 {
		a.spare = nil
	}
	for t, e := range a.ended {
		if now-e.end > continuationWindow {
			delete(a.ended, t)
		}
	}
	return done
}

// Flush reports every connection still followed, as of time now: the end of
// a trace.
func (a *Assembler) Flush(now uint64) []*Conn {
	var done []*Conn
	for _, c := range a.conns {
		if !c.done {
			done = append(done, a.finish(c, now))
		}
		a.unlisted(c)
	}
	a.conns, a.evicted = nil, 0
	return done
}

func (a *Assembler) oldest() *Conn {
	for ; a.evicted < len(a.conns); a.evicted++ {
		if c := a.conns[a.evicted]; !c.done {
			return c
		}
	}
	return nil
}

// final reports whether the outcome can no longer change.
func (c *Conn) final() bool {
	return c.st.reject != nil || c.st.rst || (c.st.fin[Original] && c.st.fin[Reply]) ||
		(c.st.reply != nil && c.st.reply.isRefusal())
}

func (a *Assembler) newConn(orig nf.Tuple, t uint64) *Conn {
	a.nextID++
	c := &Conn{}
	if n := len(a.spare); n > 0 {
		c, a.spare = a.spare[n-1], a.spare[:n-1]
		*c = Conn{Steps: c.Steps[:0], Drops: c.Drops[:0], Endpoints: c.Endpoints[:0], DNS: c.DNS[:0], arena: c.arena[:0], slab: c.slab[:0]}
	} else {
		c.Steps = make([]Step, 0, stepsAtFirst)
	}
	c.ID, c.Proto, c.Client, c.VIP, c.Start, c.End = a.nextID, orig.Proto, orig.Src, orig.Dst, t, t
	c.listed = true
	k := keyOf(orig)
	if e, ok := a.ended[k]; ok && t-e.end < continuationWindow {
		c.Continues, c.SYNs = e.id, e.syns
	}
	delete(a.ended, k)
	a.conns = append(a.conns, c)
	a.active++
	a.held += cap(c.Steps)
	a.byOrig[k] = c
	a.index(c, orig, Original)
	a.index(c, orig.Reverse(), Reply)
	return c
}

func (a *Assembler) index(c *Conn, t nf.Tuple, d Dir) {
	if !t.IsValid() {
		return
	}
	k := keyOf(t)
	if _, ok := a.byAny[k]; ok {
		return
	}
	a.byAny[k] = indexed{c, d}
	c.st.tuples = append(c.st.tuples, k)
}

func (a *Assembler) finish(c *Conn, now uint64) *Conn {
	c.done = true
	a.active--
	a.held -= cap(c.Steps)
	orig := nf.Tuple{Src: c.Client, Dst: c.VIP, Proto: c.Proto}
	k := keyOf(orig)
	if a.byOrig[k] == c {
		delete(a.byOrig, k)
	}
	for _, t := range c.st.tuples {
		if a.byAny[t].c == c {
			delete(a.byAny, t)
		}
	}
	a.decide(c, now)
	if c.st.reply == nil && c.st.reject == nil && c.Closed == "" && len(a.ended) < a.opts.MaxConns {
		a.ended[k] = ended{id: c.ID, syns: c.SYNs, end: c.End}
	}
	c.st = state{}
	return c
}

// Release says the caller is done with c, a connection the assembler
// reported: nothing uses c or anything in it (steps, their changes, drops)
// again, and a new connection may take its memory once the assembler no
// longer lists c either. A caller that keeps connections (an analysis, a
// test) does not call it.
func (a *Assembler) Release(c *Conn) {
	if !c.done || c.released {
		return
	}
	c.released = true
	if !c.listed {
		a.spared(c)
	}
}

// unlisted: c, reported, is no longer in a.conns.
func (a *Assembler) unlisted(c *Conn) {
	c.listed = false
	if c.released {
		a.spared(c)
	}
}

func (a *Assembler) spared(c *Conn) {
	if len(a.spare) < maxSpare {
		a.spare = append(a.spare, c)
	}
}

// maxSpare bounds the released connections kept for reuse: about as many
// as a busy trace reports at one tick (a few thousand a second). They go
// when nothing is followed.
const maxSpare = 256

// lookup finds the connection an event belongs to, and its direction.
func (a *Assembler) lookup(ev *nf.Event) (*Conn, Dir, bool) {
	if ev.CT.ID != 0 {
		c := a.byOrig[keyOf(ev.CT.Orig)]
		if c == nil {
			return nil, 0, false
		}
		if ev.CT.Info.IsReply() {
			return c, Reply, true
		}
		return c, Original, true
	}
	// An ICMP error travels against the packet it reports on.
	if ev.ICMP.IsError() {
		if ix, ok := a.byAny[keyOf(ev.ICMP.Inner)]; ok {
			return ix.c, ix.dir.flip(), true
		}
	}
	if ix, ok := a.byAny[keyOf(ev.Tuple)]; ok {
		return ix.c, ix.dir, true
	}
	return nil, 0, false
}

// startsConn reports whether ev opens a connection, and its original tuple:
// a TCP SYN or any other non-error packet, in the original direction.
func startsConn(ev *nf.Event) (nf.Tuple, bool) {
	if ev.Kind != nf.KindHook || ev.ICMP.IsError() {
		return nf.Tuple{}, false
	}
	t := ev.Tuple
	if ev.CT.ID != 0 {
		if ev.CT.Info.IsReply() || ev.CT.Info == nf.CTRelated {
			return nf.Tuple{}, false
		}
		t = ev.CT.Orig
	}
	if !t.IsValid() {
		return nf.Tuple{}, false
	}
	if t.Proto == nf.TCP && !(ev.TCPFlags.Has(nf.SYN) && !ev.TCPFlags.Has(nf.ACK)) {
		return nf.Tuple{}, false
	}
	return t, true
}

// reuses reports whether ev opens a new connection on the addresses of c,
// which is over: a fresh SYN after c was answered, refused or closed.
func (a *Assembler) reuses(c *Conn, ev *nf.Event, d Dir) bool {
	if d != Original || ev.Kind != nf.KindHook || c.Proto != nf.TCP {
		return false
	}
	if !ev.TCPFlags.Has(nf.SYN) || ev.TCPFlags.Has(nf.ACK) || c.findPacket(ev.Packet) != nil {
		return false
	}
	return c.st.reply != nil || c.st.reject != nil || c.Closed != ""
}

func (a *Assembler) observe(c *Conn, ev *nf.Event, d Dir) {
	if ev.Time > c.End {
		c.End = ev.Time
	}
	if ev.CT.ID != 0 {
		if !c.st.ctSeen {
			c.st.ctSeen = true
			c.Prior = ev.CT.Status&nf.CTConfirmed != 0
		}
		a.learnNAT(c, ev.CT)
	}
	if ev.Kind == nf.KindDrop {
		a.drop(c, ev, d)
		return
	}
	if ev.Outer.IsValid() {
		a.carried(c, ev, d)
		return
	}

	pk, fresh := c.packetFor(ev, d)
	// Worked out here, kept (copied to the connection's) only with a step.
	var room [6]Change
	var changes []Change
	if fresh {
		a.classify(c, pk, ev)
		changes = a.describe(room[:0], c, pk, ev)
	} else {
		changes = a.changes(room[:0], pk, &pk.last, ev)
	}
	if c.invalid(pk, ev) {
		changes = append(changes, Change{Kind: Invalid})
	}
	for _, ch := range changes {
		if ch.Kind != DNAT {
			continue
		}
		// A retransmission translated to another endpoint than the steps
		// show is shown in full from here on.
		if ch.To != c.st.shownDNAT && pk.brief {
			pk.detail = true
		}
		if pk.detail {
			c.st.shownDNAT = ch.To
		}
	}
	a.learnPath(c, pk, ev)
	if !pk.dns && len(ev.Data) > 0 && (c.VIP.Port() == 53 || c.Endpoint.Port() == 53) {
		c.readDNS(pk, ev.Data)
	}
	if pk.detail || (pk.brief && fresh) {
		a.step(c, pk, ev, changes, nil)
	}
	pk.last = sight(ev)
}

// carried takes an observation of an overlay packet carrying one of c's
// packets (Event.Outer): a step where it is first seen, where it leaves
// the node and where it reaches the overlay's socket; and its place, for
// a drop. It is not one of c's packets (each is counted once, as itself),
// and it does not change the verdict but by a drop.
func (a *Assembler) carried(c *Conn, ev *nf.Event, d Dir) {
	pk := c.findPacket(ev.Packet)
	fresh := pk == nil || !follows(&pk.last, ev)
	if fresh {
		if len(c.slab) == cap(c.slab) {
			c.slab = make([]packet, 0, packetsAtOnce)
		}
		c.slab = append(c.slab, packet{id: ev.Packet, dir: d, start: ev.Time, last: sight(ev), carrier: true})
		pk = &c.slab[len(c.slab)-1]
		c.remember(pk)
	}
	var room [1]Change
	changes := room[:0]
	switch {
	case fresh:
		outer := ev.Outer
		ch := Change{Kind: Carried, Inner: &outer}
		if ev.Hook == nf.PreRouting && ev.InIf != 0 {
			ch.Iface = a.ifName(ev.InIf)
		}
		changes = append(changes, ch)
	case ev.Stage == nf.StageLast && ev.Hook == nf.PostRouting:
		changes = append(changes, Change{Kind: Left, Iface: a.ifName(ev.OutIf)})
	case ev.Stage == nf.StageLast && ev.Hook == nf.LocalIn:
		changes = append(changes, Change{Kind: Unpacked})
	}
	if len(changes) > 0 {
		a.step(c, pk, ev, changes, nil)
	}
	pk.last = sight(ev)
}

// readDNS keeps the DNS message a packet carried, once.
func (c *Conn) readDNS(pk *packet, data []byte) {
	d, _, ok := nf.ParseDNS(data)
	if !ok {
		return
	}
	pk.dns = true
	if len(c.DNS) < MaxDNS && !slices.Contains(c.DNS, d) {
		c.DNS = append(c.DNS, d)
	}
}

// invalid marks a packet seen past conntrack without an entry, in a
// connection that has one: conntrack found it INVALID. It reports whether
// that is news.
func (c *Conn) invalid(pk *packet, ev *nf.Event) bool {
	if pk.invalid || !c.st.ctSeen || ev.CT.ID != 0 || ev.CT.Info == nf.CTUntracked || !pastConntrack(ev) {
		return false
	}
	pk.invalid, pk.detail = true, true
	if c.Invalid == 0 {
		c.Invalid = pk.n
	}
	return true
}

// pastConntrack reports whether an observation comes after conntrack has
// given the packet its entry, if it has one.
func pastConntrack(ev *nf.Event) bool {
	if ev.Kind != nf.KindHook || ev.Stage == nf.StageNone {
		return false
	}
	return !((ev.Hook == nf.PreRouting || ev.Hook == nf.LocalOut) && ev.Stage == nf.StagePreConntrack)
}

// trouble notes, at time t, a packet that came to grief after the
// connection was answered, and reports whether it counts as such: not
// once the connection was over (reset, or closed both ways).
func (c *Conn) trouble(t uint64) bool {
	st := &c.st
	if st.reply == nil || !st.replyOut || st.rst || (st.fin[Original] && st.fin[Reply]) {
		return false
	}
	st.troubled = max(st.troubled, t)
	return true
}

// learnNAT reads the translation from the conntrack entry: its reply tuple
// is where replies come from (the endpoint) and go to (the SNAT address).
func (a *Assembler) learnNAT(c *Conn, ct nf.Conntrack) {
	if !ct.Reply.IsValid() || ct.Reply == c.st.learned {
		return // nothing new: most events carry what the last one did
	}
	c.st.learned = ct.Reply
	if ct.Reply.Src != ct.Orig.Dst {
		c.Endpoint = ct.Reply.Src
		if n := len(c.Endpoints); n == 0 || c.Endpoints[n-1] != c.Endpoint {
			c.Endpoints = append(c.Endpoints, c.Endpoint)
		}
	}
	if ct.Reply.Dst != ct.Orig.Src {
		c.SNAT = ct.Reply.Dst
	}
	// Index every form the connection's packets take along the way.
	a.index(c, ct.Reply.Reverse(), Original)                                            // after DNAT and SNAT
	a.index(c, nf.Tuple{Src: ct.Orig.Src, Dst: ct.Reply.Src, Proto: c.Proto}, Original) // after DNAT
	a.index(c, ct.Reply, Reply)
	a.index(c, nf.Tuple{Src: ct.Reply.Src, Dst: ct.Orig.Src, Proto: c.Proto}, Reply) // after un-SNAT
}

// packetFor returns the packet ev is an observation of: the one seen last
// with the same identity if ev comes later along the path, else a new one.
func (c *Conn) packetFor(ev *nf.Event, d Dir) (*packet, bool) {
	if pk := c.findPacket(ev.Packet); pk != nil && follows(&pk.last, ev) {
		return pk, false
	}
	c.Packets[d]++
	c.Bytes[d] += uint64(ev.Len)
	if len(c.slab) == cap(c.slab) {
		c.slab = make([]packet, 0, packetsAtOnce)
	}
	c.slab = append(c.slab, packet{id: ev.Packet, n: c.Packets[Original] + c.Packets[Reply], dir: d, start: ev.Time,
		answer: answerOf(ev), last: sight(ev), local: ev.Hook == nf.LocalOut})
	pk := &c.slab[len(c.slab)-1]
	c.remember(pk)
	return pk, true
}

// follows reports whether ev can be the same packet as prev, further along
// the netfilter path.
func follows(prev *sighting, ev *nf.Event) bool {
	if prev.Kind != nf.KindHook || ev.Time < prev.Time || ev.Time-prev.Time > uint64(time.Second) {
		return false
	}
	return nf.Position(prev.Hook, prev.Stage) < nf.Position(ev.Hook, ev.Stage)
}

// classify decides what a new packet means for the connection and how much
// of it to keep.
func (a *Assembler) classify(c *Conn, pk *packet, ev *nf.Event) {
	first := c.Packets[pk.dir] == 1
	switch {
	case pk.dir == Original && ev.TCPFlags.Has(nf.SYN) && !ev.TCPFlags.Has(nf.ACK):
		c.SYNs++
		pk.detail = c.SYNs == 1 || (first && c.Continues != 0)
		pk.brief = !pk.detail
	case first, ev.ICMP.IsError():
		pk.detail = true
	case ev.TCPFlags.Has(nf.RST) && !c.st.rst:
		pk.detail = true
	}
	if ev.TCPFlags.Has(nf.RST) {
		c.st.rst = true
		c.Closed = "RST"
	}
	if ev.TCPFlags.Has(nf.FIN) {
		c.st.fin[pk.dir] = true
		if c.st.fin[Original] && c.st.fin[Reply] && c.Closed == "" {
			c.Closed = "FIN"
		}
	}
	if pk.dir != Reply {
		return
	}
	if a.byNode(c, pk, ev) {
		if c.st.reject == nil && c.st.reply == nil {
			c.st.reject = pk
		}
		return
	}
	if c.st.reply == nil {
		c.st.reply = pk
		c.Answer = ev.Time
	}
}

// byNode reports whether a reply-direction packet was made by the node
// itself rather than by the destination: an ICMP error from another address
// (kube-proxy's REJECT), or a TCP RST tied to the entry as RELATED (what the
// REJECT target's tcp-reset attaches).
func (a *Assembler) byNode(c *Conn, pk *packet, ev *nf.Event) bool {
	if ev.ICMP.IsError() {
		return ev.Tuple.Src.Addr() != c.target().Addr() && ev.Tuple.Src.Addr() != c.VIP.Addr()
	}
	return ev.TCPFlags.Has(nf.RST) && pk.local &&
		(ev.CT.Info == nf.CTRelated || ev.CT.Info == nf.CTRelatedReply)
}

func (p *packet) isRefusal() bool {
	return p.answer.RST || p.answer.Error
}

// learnPath records where packets went.
func (a *Assembler) learnPath(c *Conn, pk *packet, ev *nf.Event) {
	if ev.Stage != nf.StageLast {
		return
	}
	switch {
	case pk.dir == Original && ev.Hook == nf.PostRouting:
		c.st.leftOut = true
		c.st.outIf = ev.OutIf
		if ev.Tuple.Dst == c.VIP && a.isService(c) {
			c.st.leftUntranslated = true
			if pk.invalid && c.trouble(ev.Time) && c.st.strayed == nil {
				c.st.strayed = pk
			}
		}
	case pk.dir == Original && ev.Hook == nf.LocalIn:
		c.st.delivered = true
	case pk.dir == Reply && (ev.Hook == nf.PostRouting || ev.Hook == nf.LocalIn):
		c.st.replyOut = true
		c.st.replyPassed = ev.Time
	}
}

func (a *Assembler) isService(c *Conn) bool {
	return a.opts.IsService == nil || a.opts.IsService(c.Proto, c.VIP)
}

func (a *Assembler) drop(c *Conn, ev *nf.Event, d Dir) {
	// A socket's queue purged on close is not a packet in flight (the
	// kernel side leaves these out; older recordings hold them).
	if ev.Drop.Reason == "QUEUE_PURGE" {
		return
	}
	// The drop is placed and named below on a copy: Add leaves its event
	// as it was.
	e := *ev
	ev = &e
	pk := c.findPacket(ev.Packet)
	if pk != nil && pk.dir != d {
		// The kernel reuses a freed skb at once: this is a later packet
		// going the other way, one the observers did not report (say,
		// the client's retransmission in the skb of the SYN,ACK).
		pk = nil
	}
	// The kernel side could not tell the namespace: it is where an observer
	// saw the packet last, if one did. A receiving socket's drop (TCP's
	// state checks, a full queue: TCP reuses the field the namespace is
	// read from) is not the node's, though, unless the node delivered the
	// packet to a socket of its own: it happened in the host the node sent
	// the packet to, whose namespace stays unknown.
	if ev.NetNS == 0 {
		if pk == nil {
			return
		}
		if r, _ := cause.Drop(ev.Drop.Reason); !(r.Class == cause.Socket || r.Class == cause.TCPState) || pk.last.Hook == nf.LocalIn {
			ev.NetNS = pk.last.NetNS
		}
	}
	dr := Drop{Time: ev.Time, Dir: d, NetNS: ev.NetNS, Reason: ev.Drop.Reason, Location: ev.Drop.Location,
		InNode: ev.NetNS == a.opts.NodeNetNS, Outer: ev.Outer}
	if dr.InNode && ev.InIf != 0 {
		dr.In = a.ifName(ev.InIf)
	}
	if pk != nil {
		dr.Packet, dr.Dir, dr.Invalid = pk.n, pk.dir, pk.invalid
		if pk.dir == Original && pk.last.Kind == nf.KindHook && pk.last.Tuple.IsValid() && pk.last.Tuple.Dst != c.VIP {
			dr.Endpoint = pk.last.Tuple.Dst
		}
	}
	if dr.InNode && pk != nil && pk.last.Kind == nf.KindHook {
		dr.Gap, dr.Placed = nf.GapAfter(pk.last.Hook, pk.last.Stage), true
	}
	c.Drops = append(c.Drops, dr)
	if dr.InNode && c.trouble(ev.Time) && c.st.broke == 0 {
		c.st.broke = len(c.Drops)
	}
	if pk == nil {
		pk = &packet{id: ev.Packet, dir: d, start: ev.Time, answer: answerOf(ev), last: sight(ev)}
	}
	if dr.Placed {
		ev.Hook, ev.Stage = dr.Gap.Hook, dr.Gap.After
	}
	a.step(c, pk, ev, nil, &c.Drops[len(c.Drops)-1])
}

func (a *Assembler) step(c *Conn, pk *packet, ev *nf.Event, changes []Change, dr *Drop) {
	if len(c.Steps) >= a.opts.MaxSteps {
		c.Truncated = true
		return
	}
	s := Step{Time: ev.Time, Packet: pk.n, Dir: pk.dir, Kind: ev.Kind, Hook: ev.Hook, Stage: ev.Stage,
		NetNS: ev.NetNS, Tuple: ev.Tuple, Mark: ev.Mark, Changes: c.keep(changes), Drop: dr, Flags: flags(ev), Data: ev.Data}
	switch {
	case ev.CT.ID != 0:
		s.CT, s.CTMark, s.CTZone = ev.CT.Info.String(), ev.CT.Mark, ev.CT.Zone
	case pk.invalid:
		s.CT = "INVALID"
	case ev.CT.Info == nf.CTUntracked:
		s.CT = ev.CT.Info.String()
	}
	if dr != nil {
		d := *dr
		s.Drop = &d
	}
	room := cap(c.Steps)
	c.Steps = append(c.Steps, s)
	a.held += cap(c.Steps) - room
}

// keep copies a step's changes into room the connection keeps for them,
// taken a few steps' worth at a time: one allocation for many steps, not
// one each. The slice returned is capped: appending to it copies.
func (c *Conn) keep(changes []Change) []Change {
	if len(changes) == 0 {
		return nil
	}
	if cap(c.arena)-len(c.arena) < len(changes) {
		c.arena = make([]Change, 0, max(changesAtOnce, len(changes)))
	}
	i := len(c.arena)
	c.arena = append(c.arena, changes...)
	return c.arena[i:len(c.arena):len(c.arena)]
}

// changesAtOnce is how many changes a connection makes room for at once:
// a healthy one's first packets make about this many. packetsAtOnce is the
// same for its packets: a short connection's.
const (
	changesAtOnce = 24
	packetsAtOnce = 10
)

func flags(ev *nf.Event) string {
	switch ev.Tuple.Proto {
	case nf.TCP:
		return ev.TCPFlags.String()
	case nf.ICMP, nf.ICMPv6:
		return ev.ICMP.Describe(ev.Tuple.Proto)
	}
	return ""
}

// describe says what a new packet is.
func (a *Assembler) describe(changes []Change, c *Conn, pk *packet, ev *nf.Event) []Change {
	var ch Change
	switch {
	case ev.ICMP.IsError():
		inner := ev.ICMP.Inner
		ch = Change{Kind: ICMPError, Inner: &inner, ByNode: c.st.reject == pk}
	case pk.dir == Original && c.SYNs > 1:
		ch = Change{Kind: Retransmitted, N: int32(c.SYNs - 1)}
	case pk.dir == Original:
		ch = Change{Kind: Sent}
	case c.st.reject == pk:
		ch = Change{Kind: NodeSent}
	default:
		ch = Change{Kind: Replied}
	}
	if ev.Kind == nf.KindHook && ev.Hook == nf.PreRouting && ev.InIf != 0 && ch.Kind != NodeSent {
		ch.Iface = a.ifName(ev.InIf) // where it came in: shown on a stitched timeline
	}
	changes = append(changes, ch)
	if ev.CT.ID != 0 {
		changes = append(changes, tracked(ev.CT))
	}
	return changes
}

// tracked notes the packet's conntrack entry; Prior if a new packet found
// an entry made before: an unanswered flow that began earlier, whose NAT
// was decided then.
func tracked(ct nf.Conntrack) Change {
	return Change{Kind: Tracked, Prior: ct.Info == nf.CTNew && ct.Status&nf.CTConfirmed != 0}
}

func packetWhat(ev *nf.Event) string {
	if f := flags(ev); f != "" {
		return f
	}
	return strings.ToUpper(ev.Tuple.Proto.String())
}

// changes says what happened to a packet between two observers.
func (a *Assembler) changes(cs []Change, pk *packet, prev *sighting, ev *nf.Event) []Change {
	switch {
	case prev.CTID == 0 && ev.CT.ID != 0:
		cs = append(cs, tracked(ev.CT))
	case ev.CT.ID != 0 && ev.CT.Mark != prev.CTMark:
		cs = append(cs, Change{Kind: CTMarked, OldMark: prev.CTMark})
	}
	if ev.Tuple.IsValid() && prev.Tuple.IsValid() {
		if prev.Tuple.Dst != ev.Tuple.Dst {
			k := DNAT
			if pk.dir == Reply {
				k = UnSNAT
			}
			cs = append(cs, Change{Kind: k, From: prev.Tuple.Dst, To: ev.Tuple.Dst})
		}
		if prev.Tuple.Src != ev.Tuple.Src {
			// The mark as the nat table saw it: kube-proxy clears its
			// masquerade bit right before MASQUERADE.
			ch := Change{Kind: SNAT, From: prev.Tuple.Src, To: ev.Tuple.Src, OldMark: prev.Mark}
			if pk.dir == Reply {
				ch = Change{Kind: UnDNAT, From: prev.Tuple.Src, To: ev.Tuple.Src}
			}
			cs = append(cs, ch)
		}
	}
	if ev.Stage == nf.StagePostFilter && prev.Hook == ev.Hook && prev.Stage == nf.StagePreFilter {
		cs = append(cs, Change{Kind: Accepted})
	}
	if ev.Stage == nf.StageLast {
		switch ev.Hook {
		case nf.PostRouting:
			cs = append(cs, Change{Kind: Left, Iface: a.ifName(ev.OutIf)})
		case nf.LocalIn:
			cs = append(cs, Change{Kind: Delivered})
		}
	}
	return cs
}

func (a *Assembler) ifName(ifindex uint32) string {
	if a.opts.IfName != nil {
		if n := a.opts.IfName(ifindex); n != "" {
			return n
		}
	}
	return fmt.Sprintf("ifindex %d", ifindex)
}

// stepsAtFirst is the room a new connection gets for its steps: what a
// healthy TCP connection takes (19 steps for one forwarded through DNAT and
// SNAT, opened and closed), so most never grow it: growing from less copied
// them all into twice the room.
const stepsAtFirst = 20
