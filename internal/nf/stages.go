package nf

import (
	"fmt"
	"math"
	"strings"
)

// Hook is a netfilter hook (enum nf_inet_hooks).
type Hook uint8

const (
	PreRouting  Hook = 0
	LocalIn     Hook = 1
	Forward     Hook = 2
	LocalOut    Hook = 3
	PostRouting Hook = 4
)

// Hooks lists the netfilter hooks in enum order.
var Hooks = []Hook{PreRouting, LocalIn, Forward, LocalOut, PostRouting}

// String returns the iptables chain name operators know the hook by.
func (h Hook) String() string {
	switch h {
	case PreRouting:
		return "PREROUTING"
	case LocalIn:
		return "INPUT"
	case Forward:
		return "FORWARD"
	case LocalOut:
		return "OUTPUT"
	case PostRouting:
		return "POSTROUTING"
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// Rank orders hooks along a packet's path: PREROUTING/OUTPUT first, then
// INPUT/FORWARD, then POSTROUTING.
func (h Hook) Rank() int {
	switch h {
	case PreRouting, LocalOut:
		return 0
	case LocalIn, Forward:
		return 1
	}
	return 2
}

// Stage is an observation point: a priority at which an observer program is
// attached on every hook where that point means something.
type Stage uint8

// The values are bpf/svctrace.h's enum stage (the tracer's tests hold the
// two together).
const (
	StageNone          Stage = 0
	StagePreConntrack  Stage = 1
	StagePostConntrack Stage = 2
	StagePreDNAT       Stage = 3
	StagePostDNAT      Stage = 4
	StagePreFilter     Stage = 5
	StagePostFilter    Stage = 6
	StagePreSNAT       Stage = 7
	StagePostSNAT      Stage = 8
	StageLast          Stage = 9
)

const priorityLast int32 = math.MaxInt32 - 1 // the netfilter link refuses INT_MAX itself

type stageInfo struct {
	name     string
	priority int32
	// away is the direction to move when the priority is taken: away from
	// the piece of netfilter the observer brackets (-1: earlier, +1: later).
	away int32
}

var stages = map[Stage]stageInfo{
	StagePreConntrack:  {"pre-conntrack", -201, -1},
	StagePostConntrack: {"post-conntrack", -199, +1},
	StagePreDNAT:       {"pre-dnat", -101, -1},
	StagePostDNAT:      {"post-dnat", -99, +1},
	StagePreFilter:     {"pre-filter", -1, -1},
	StagePostFilter:    {"post-filter", 1, +1},
	StagePreSNAT:       {"pre-snat", 99, -1},
	StagePostSNAT:      {"post-snat", 101, +1},
	StageLast:          {"last", priorityLast, -1},
}

func (s Stage) String() string {
	if i, ok := stages[s]; ok {
		return i.name
	}
	return fmt.Sprintf("stage(%d)", uint8(s))
}

// Priority is the netfilter priority the stage's observer is attached at
// (unless another hook holds it: see Info.Shifted).
func (s Stage) Priority() int32 { return stages[s].priority }

// Away is the direction an observer moves when its priority is taken: away
// from the piece of netfilter it brackets (-1: earlier, +1: later).
func (s Stage) Away() int32 { return stages[s].away }

// Plan lists, per hook, the stages observed there in priority order: the
// pieces of netfilter that act on that hook, each bracketed. FORWARD has only
// the filter table that matters for Services.
var Plan = map[Hook][]Stage{
	PreRouting:  {StagePreConntrack, StagePostConntrack, StagePreDNAT, StagePostDNAT, StageLast},
	LocalIn:     {StagePreFilter, StagePostFilter, StagePreSNAT, StagePostSNAT, StageLast},
	Forward:     {StagePreFilter, StagePostFilter},
	LocalOut:    {StagePreConntrack, StagePostConntrack, StagePreDNAT, StagePostDNAT, StagePreFilter, StagePostFilter},
	PostRouting: {StagePreSNAT, StagePostSNAT, StageLast},
}

// Position orders observations along a packet's path through the node:
// by hook (Rank), then by stage in the hook's Plan. A stage not in the
// hook's plan comes first on it.
func Position(h Hook, s Stage) int {
	if int(h) < len(positions) && int(s) < len(positions[h]) {
		return positions[h][s]
	}
	return h.Rank() * 16
}

// positions are Position's answers, worked out once: it is asked twice
// for every event.
var positions = func() (p [PostRouting + 1][StageLast + 1]int) {
	for _, h := range Hooks {
		for s := range p[h] {
			p[h][s] = h.Rank() * 16
		}
		for i, s := range Plan[h] {
			p[h][s] = h.Rank()*16 + i
		}
	}
	return p
}()

// piece is a part of netfilter registered at a fixed priority.
type piece struct {
	name     string
	priority int32
	hooks    []Hook
}

// Netfilter's own priorities (include/uapi/linux/netfilter_ipv4.h). The NAT
// core registers its hooks at -100/100 however nftables NAT chains are
// prioritised, so DNAT and SNAT are always where the observers bracket them.
var pieces = []piece{
	{"raw table", -300, []Hook{PreRouting, LocalOut}},
	{"conntrack", -200, []Hook{PreRouting, LocalOut}},
	{"mangle table", -150, Hooks},
	{"DNAT (nat table)", -100, []Hook{PreRouting, LocalOut}},
	{"filter table", 0, []Hook{LocalIn, Forward, LocalOut}},
	{"security table", 50, []Hook{LocalIn, Forward, LocalOut}},
	{"SNAT (nat table)", 100, []Hook{LocalIn, PostRouting}},
	{"conntrack helpers", 300, []Hook{LocalIn, PostRouting}},
	confirm,
}

// confirm is conntrack's confirmation, the last netfilter step of a new
// entry's first packet: it fails when another packet of the same flow
// confirmed an entry first (an insert clash).
var confirm = piece{"conntrack confirm", math.MaxInt32, []Hook{LocalIn, PostRouting}}

// Next returns the stage observed on hook after s, or StageNone if s is the
// hook's last observer. StageNone as s asks for the hook's first observer.
func Next(h Hook, s Stage) Stage {
	plan := Plan[h]
	if s == StageNone && len(plan) > 0 {
		return plan[0]
	}
	for i, x := range plan {
		if x == s && i+1 < len(plan) {
			return plan[i+1]
		}
	}
	return StageNone
}

// Gap is the stretch of a hook between two neighbouring observers: where a
// packet that was seen by After and not by Before died.
type Gap struct {
	Hook   Hook
	After  Stage    // last observer that saw the packet; StageNone: none on this hook
	Before Stage    // the next observer; StageNone: After was the hook's last
	Pieces []string // netfilter pieces registered in between, with priorities
}

// GapAfter returns the gap on hook h that follows observer after.
func GapAfter(h Hook, after Stage) Gap {
	g := Gap{Hook: h, After: after, Before: Next(h, after)}
	for _, p := range pieces {
		if g.has(p) {
			g.Pieces = append(g.Pieces, fmt.Sprintf("%s %s", p.name, prio(p.priority)))
		}
	}
	return g
}

// HasConfirm reports whether conntrack's confirmation runs in the gap.
func (g Gap) HasConfirm() bool { return g.has(confirm) }

func (g Gap) has(p piece) bool {
	lo, hi := g.Bounds()
	return int64(p.priority) > lo && int64(p.priority) < hi && hasHook(p.hooks, g.Hook)
}

// Bounds are the priorities of the observers around the gap (exclusive).
func (g Gap) Bounds() (lo, hi int64) {
	lo, hi = math.MinInt32, int64(math.MaxInt32)+1
	if g.After != StageNone {
		lo = int64(g.After.Priority())
	}
	if g.Before != StageNone {
		hi = int64(g.Before.Priority())
	}
	return lo, hi
}

// Span is the priority range in words: "between priority -1 and 1".
func (g Gap) Span() string {
	lo, hi := g.Bounds()
	switch {
	case g.After == StageNone:
		return "before priority " + prio32(hi)
	case g.Before == StageNone:
		return "after priority " + prio32(lo)
	}
	return fmt.Sprintf("between priority %s and %s", prio32(lo), prio32(hi))
}

// What names what runs in the gap, or its span when nothing known does.
func (g Gap) What() string {
	if len(g.Pieces) == 0 {
		return g.Span()
	}
	return strings.Join(g.Pieces, ", ")
}

// String: "FORWARD between priority -1 and 1: filter table (0)".
func (g Gap) String() string {
	s := g.Hook.String() + " " + g.Span()
	if len(g.Pieces) > 0 {
		s += ": " + strings.Join(g.Pieces, ", ")
	}
	return s
}

func hasHook(hs []Hook, h Hook) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

func prio(p int32) string { return "(" + prio32(int64(p)) + ")" }

func prio32(p int64) string {
	switch {
	case p >= math.MaxInt32:
		return "INT_MAX"
	case p == math.MaxInt32-1:
		return "INT_MAX-1"
	case p <= math.MinInt32:
		return "INT_MIN"
	}
	return fmt.Sprint(p)
}
