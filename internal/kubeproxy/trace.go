package kubeproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
)

// Table is one iptables table of the node (any writer's rules, not only
// kube-proxy's), as iptables-save prints it: what Trace follows to the
// rule that decided a packet's fate.
type Table struct {
	Family  string   `json:"family"`  // "ip" or "ip6"
	Name    string   `json:"name"`    // "filter"
	Backend string   `json:"backend"` // "iptables-nft", "iptables-legacy"
	Chains  []*Chain `json:"chains"`
}

// Chain is one chain and its rules, in order.
type Chain struct {
	Name   string `json:"name"`
	Policy string `json:"policy,omitempty"` // a built-in chain's: "ACCEPT", "DROP"
	// Rules are the chain's -A lines, as iptables-save prints them.
	Rules []string `json:"rules,omitempty"`
}

// Chain is the chain called name, or nil.
func (t *Table) Chain(name string) *Chain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// parseTables reads the tables named in want out of iptables-save output.
func parseTables(family, backend, text string, want ...string) []*Table {
	var out []*Table
	var t *Table
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			t = nil
			if slices.Contains(want, line[1:]) {
				t = &Table{Family: family, Name: line[1:], Backend: backend}
				out = append(out, t)
			}
		case t == nil:
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			c := &Chain{Name: f[0]}
			if len(f) > 1 && f[1] != "-" {
				c.Policy = f[1]
			}
			t.Chains = append(t.Chains, c)
		case strings.HasPrefix(line, "-A "):
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			c := t.Chain(f[1])
			if c == nil {
				c = &Chain{Name: f[1]}
				t.Chains = append(t.Chains, c)
			}
			c.Rules = append(c.Rules, line)
		}
	}
	return out
}

// Packet is what Trace matches rules against: a packet as the hook saw
// it (after DNAT in FORWARD and INPUT). Unknown fields are zero: matches
// on them are unsure.
type Packet struct {
	Src, Dst     netip.Addr
	Proto        nf.Proto
	Sport, Dport uint16
	In, Out      string // interfaces
	// CTState is conntrack's state for it: "NEW", "ESTABLISHED",
	// "RELATED", "INVALID", "UNTRACKED"; "" unknown.
	CTState string
	Mark    uint32
	MarkSet bool
}

// Verdict is where Trace ended: the rule whose target decided, or the
// base chain's policy, the chains on the way, and how sure that is.
type Verdict struct {
	Target string // "DROP", "REJECT", "ACCEPT", "NFQUEUE", a policy's
	Chain  string // the chain of the deciding rule
	Pos    int    // its position in the chain, from 1; 0: the policy
	Rule   string // the rule as iptables-save prints it
	// Path are the jumps taken from the base chain, with the matches that
	// took them: "FORWARD 3 → POLICY (-o cbr0)".
	Path []string
	// Matched are the deciding rule's matches, each as svctrace
	// evaluated it ("-d 10.244.0.12/32: the packet's destination").
	Matched []string
	// Unsure are the rules on the way svctrace could not evaluate and
	// assumed not to match, with why: when any is listed, one of them may
	// have decided instead.
	Unsure []string
}

func (v Verdict) String() string {
	if v.Pos == 0 {
		return fmt.Sprintf("chain %s's policy %s", v.Chain, v.Target)
	}
	return fmt.Sprintf("chain %s, rule %d: %s", v.Chain, v.Pos, strings.TrimPrefix(v.Rule, "-A "+v.Chain+" "))
}

// Comment is the deciding rule's --comment (an nftables rule's comment),
// if any.
func (v Verdict) Comment() string {
	if !strings.HasPrefix(v.Rule, "-A ") {
		_, c, ok := strings.Cut(v.Rule, ` comment "`)
		if !ok {
			return ""
		}
		c, _, _ = strings.Cut(c, `" # handle `)
		return strings.ReplaceAll(c, `\"`, `"`)
	}
	args, err := splitArgs(v.Rule)
	if err != nil {
		return ""
	}
	for i, a := range args {
		if a == "--comment" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// maxDepth bounds jumps (iptables itself allows far fewer loops).
const maxDepth = 32

// Trace follows packet p from base chain base through the rules, jumps and
// gotos to the first terminating verdict (ACCEPT, DROP, REJECT, NFQUEUE) or the base
// chain's policy. Matches svctrace cannot evaluate (sets, marks it does
// not know, modules it does not model) count as not matching, and are
// listed in Unsure.
func (t *Table) Trace(base string, p Packet) (Verdict, bool) {
	c := t.Chain(base)
	if c == nil {
		return Verdict{}, false
	}
	v := Verdict{}
	if t.walk(c, p, &v, 0) {
		return v, true
	}
	v.Target, v.Chain, v.Pos = c.Policy, base, 0
	if v.Target == "" {
		v.Target = "ACCEPT"
	}
	return v, true
}

// walk evaluates chain c's rules; true when a terminating verdict ended
// the walk (set in v), false when the chain ran out or RETURNed.
func (t *Table) walk(c *Chain, p Packet, v *Verdict, depth int) bool {
	if depth > maxDepth {
		return false
	}
	for i, line := range c.Rules {
		args, err := splitArgs(line)
		if err != nil {
			continue
		}
		r := evalRule(args, p)
		if r.unsure != "" {
			// Only a rule that could have decided, or led to one, matters.
			if terminating(r.target) || t.Chain(r.target) != nil {
				v.Unsure = append(v.Unsure, fmt.Sprintf("chain %s, rule %d (%s): %s", c.Name, i+1, r.unsure, line))
			}
			continue
		}
		if !r.match {
			continue
		}
		switch {
		case terminating(r.target):
			v.Target, v.Chain, v.Pos, v.Rule, v.Matched = r.target, c.Name, i+1, line, r.matched
			return true
		case r.target == "RETURN":
			return false
		case r.target == "":
			continue
		}
		next := t.Chain(r.target)
		if next == nil {
			continue // a non-terminating target: LOG, MARK, CONNMARK, …
		}
		v.Path = append(v.Path, jumpStep(c.Name, i+1, next.Name, r.matched))
		if t.walk(next, p, v, depth+1) {
			return true
		}
		v.Path = v.Path[:len(v.Path)-1] // came back: not on the way
		if r.goto_ {
			return false // a goto returns to the caller of c
		}
	}
	return false
}

// jumpStep is one step of a Verdict's Path: "FORWARD 3 → POLICY (-o cbr0)".
func jumpStep(chain string, pos int, to string, matched []string) string {
	step := fmt.Sprintf("%s %d → %s", chain, pos, to)
	if len(matched) > 0 {
		step += " (" + strings.Join(matched, ", ") + ")"
	}
	return step
}

// terminating: the targets that end the table's walk. NFQUEUE (and the old
// QUEUE) hand the packet to a program in userspace, whose verdict decides
// it.
func terminating(target string) bool {
	return target == "ACCEPT" || target == "DROP" || target == "REJECT" || target == "NFQUEUE" || target == "QUEUE"
}

// Queue is the queue an NFQUEUE (or QUEUE) verdict hands the packet to:
// "100", "100:103" for a balanced range, "0" by default; "" for any other
// verdict.
func (v Verdict) Queue() string {
	if v.Target != "NFQUEUE" && v.Target != "QUEUE" {
		return ""
	}
	args, _ := splitArgs(v.Rule)
	for i, a := range args {
		if (a == "--queue-num" || a == "--queue-balance") && i+1 < len(args) {
			return args[i+1]
		}
	}
	return "0"
}

type ruleEval struct {
	match   bool
	unsure  string // why a match could not be evaluated
	target  string
	goto_   bool
	matched []string
}

// evalRule evaluates one rule's matches against p.
func evalRule(args []string, p Packet) ruleEval {
	var r ruleEval
	r.match = true
	neg := false
	fail := func() { r.match = false }
	check := func(what string, ok, known bool) {
		switch {
		case !known:
			if r.unsure == "" {
				r.unsure = what + ": svctrace does not know the packet's"
			}
		case ok != neg:
			r.matched = append(r.matched, what)
		default:
			fail()
		}
		neg = false
	}
	for i := 2; i < len(args); i++ {
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		a := args[i]
		switch a {
		case "!":
			neg = true
		case "-s", "-d":
			v := next()
			pre, err := netip.ParsePrefix(v)
			if err != nil {
				if ad, err2 := netip.ParseAddr(v); err2 == nil {
					pre = netip.PrefixFrom(ad, ad.BitLen())
				}
			}
			addr := p.Src
			if a == "-d" {
				addr = p.Dst
			}
			check(a+" "+v, pre.Contains(addr), addr.IsValid() && pre.IsValid())
		case "-p":
			v := next()
			check(a+" "+v, v == "all" || strings.EqualFold(v, p.Proto.String()), p.Proto != 0)
		case "-i", "-o":
			v := next()
			dev := p.In
			if a == "-o" {
				dev = p.Out
			}
			ok := dev == v || (strings.HasSuffix(v, "+") && strings.HasPrefix(dev, strings.TrimSuffix(v, "+")))
			check(a+" "+v, ok, dev != "")
		case "--dport", "--sport", "--destination-port", "--source-port":
			v := next()
			port := p.Sport
			if a == "--dport" || a == "--destination-port" {
				port = p.Dport
			}
			check(a+" "+v, inPorts(v, port), port != 0)
		case "--dports", "--sports":
			v := next()
			port := p.Sport
			if a == "--dports" {
				port = p.Dport
			}
			ok := false
			for _, part := range strings.Split(v, ",") {
				ok = ok || inPorts(part, port)
			}
			check(a+" "+v, ok, port != 0)
		case "--ctstate", "--state":
			v := next()
			check(a+" "+v, slices.Contains(strings.Split(v, ","), p.CTState), p.CTState != "")
		case "--mark":
			v := next()
			val, mask, ok := parseMark(v)
			check("--mark "+v, p.Mark&mask == val, ok && p.MarkSet)
		case "--comment":
			next()
		case "-m":
			switch m := next(); m {
			case "tcp", "udp", "sctp", "comment", "conntrack", "state", "multiport", "mark", "icmp", "icmp6":
			default:
				// A module svctrace does not model (set, addrtype, physdev,
				// recent, statistic, …): its options follow until the next
				// -m, -j or -g.
				if r.unsure == "" {
					r.unsure = "-m " + m + ": svctrace does not evaluate this match"
				}
				for i+1 < len(args) && args[i+1] != "-m" && args[i+1] != "-j" && args[i+1] != "-g" {
					i++
				}
			}
		case "-j", "-g":
			r.target, r.goto_ = next(), a == "-g"
			// The target's options follow; none is a match.
			i = len(args)
		default:
			if strings.HasPrefix(a, "-") && r.unsure == "" {
				r.unsure = a + ": svctrace does not evaluate this match"
			}
		}
		if !r.match {
			return ruleEval{}
		}
	}
	return r
}

// inPorts: "8080", "8000:8100".
func inPorts(v string, port uint16) bool {
	lo, hi, ranged := strings.Cut(v, ":")
	l, err := strconv.ParseUint(lo, 10, 16)
	if err != nil {
		return false
	}
	h := l
	if ranged {
		if h, err = strconv.ParseUint(hi, 10, 16); err != nil {
			return false
		}
	}
	return uint64(port) >= l && uint64(port) <= h
}

// parseMark: "0x4000/0x4000", "0x1".
func parseMark(v string) (val, mask uint32, ok bool) {
	vs, ms, masked := strings.Cut(v, "/")
	x, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, false
	}
	mask = 0xffffffff
	if masked {
		m, err := strconv.ParseUint(ms, 0, 32)
		if err != nil {
			return 0, 0, false
		}
		mask = uint32(m)
	}
	return uint32(x), mask, true
}

// ParseTables reads iptables tables (raw, mangle, filter) of family out of
// iptables-save output from backend, as Read does.
func ParseTables(family, backend, text string) []*Table {
	return parseTables(family, backend, text, traced...)
}

// chainWriters recognize who writes a chain by the conventions of the
// engines that write them: kube-proxy's, and the NetworkPolicy chains of
// common CNIs.
var chainWriters = []struct {
	prefix, writer string
}{
	{"KUBE-NWPLCY-", "kube-router (a NetworkPolicy's chain)"},
	{"KUBE-POD-FW-", "kube-router (a Pod's NetworkPolicy firewall)"},
	{"KUBE-", "kube-proxy"},
	{"cali-pi-", "Calico (a policy's ingress rules)"},
	{"cali-po-", "Calico (a policy's egress rules)"},
	{"cali-tw-", "Calico (the rules to a workload)"},
	{"cali-fw-", "Calico (the rules from a workload)"},
	{"cali-", "Calico"},
	{"CILIUM_", "Cilium"},
	{"WEAVE-NPC", "Weave Net's policy controller"},
	{"ANTREA-", "Antrea"},
}

// Writer says who likely wrote chain, by its name or the rule's comment
// ("cali:…" is Calico's); "" if nothing says.
func Writer(chain, comment string) string {
	for _, w := range chainWriters {
		if strings.HasPrefix(chain, w.prefix) {
			return w.writer
		}
	}
	if strings.HasPrefix(comment, "cali:") {
		return "Calico"
	}
	return ""
}
