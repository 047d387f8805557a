package kubeproxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables/expr"
	"github.com/svctrace/svctrace/internal/nf"
)

// NFTTable is an nf_tables table of a writer other than kube-proxy and
// iptables-nft (a policy engine's, a firewall's), kept as the kernel runs
// it: NFTTable.Trace follows a packet through its chains with the
// nf_tables virtual machine's own steps (loads into registers,
// comparisons, set lookups, verdicts), so that what it says matched is
// what the kernel compares.
type NFTTable struct {
	Family string             `json:"family"` // "ip", "ip6", "inet"
	Name   string             `json:"name"`
	Chains []*NFTChain        `json:"chains"`
	Sets   map[string]*NFTSet `json:"sets,omitempty"`
}

// NFTChain is one chain; a base chain has a hook and a priority.
type NFTChain struct {
	Name     string    `json:"name"`
	Hook     *nf.Hook  `json:"hook,omitempty"`
	Priority int32     `json:"priority,omitempty"`
	Policy   string    `json:"policy,omitempty"` // a base chain's: "accept", "drop"
	Rules    []NFTRule `json:"rules,omitempty"`
}

// NFTRule is one rule: its expressions, and how nft would print them.
type NFTRule struct {
	Handle uint64 `json:"handle"`
	Ops    []Op   `json:"ops"`
	// Comment is the rule's comment (its userdata).
	Comment string `json:"comment,omitempty"`
}

// Op is one nf_tables expression, reduced to what evaluating it needs.
type Op struct {
	// Kind: "payload", "meta", "ct" (loads into Reg); "cmp", "range",
	// "lookup" (tests of Reg); "bitwise" (Reg → DReg), "imm" (data into
	// Reg); "verdict"; "reject", "queue" (terminal); "skip" (counters,
	// logs: no effect on the verdict); "unknown" (What says which).
	Kind string `json:"op"`
	Reg  uint32 `json:"reg,omitempty"`
	DReg uint32 `json:"dreg,omitempty"`
	// A load's: the header ("network", "transport", "link") or the
	// meta/ct key ("iifname", "state"), its offset and length.
	Field string `json:"field,omitempty"`
	Off   uint32 `json:"off,omitempty"`
	Len   uint32 `json:"len,omitempty"`
	// A test's: the comparison ("==", "!=", "<", "<=", ">", ">=") and its
	// operands; a bitwise's mask and xor.
	Cmp  string `json:"cmp,omitempty"`
	Data []byte `json:"data,omitempty"`
	To   []byte `json:"to,omitempty"`
	Mask []byte `json:"mask,omitempty"`
	Xor  []byte `json:"xor,omitempty"`
	// A lookup's set, whether it is negated, and whether it maps to a
	// verdict (VMap) or data (into DReg).
	Set    string `json:"set,omitempty"`
	Invert bool   `json:"invert,omitempty"`
	VMap   bool   `json:"vmap,omitempty"`
	Map    bool   `json:"map,omitempty"`
	// A verdict's: "accept", "drop", "jump", "goto", "return", "continue".
	Verdict string `json:"verdict,omitempty"`
	Chain   string `json:"chain,omitempty"`
	What    string `json:"what,omitempty"`
}

// NFTSet is a named or anonymous set or map and its elements.
type NFTSet struct {
	Interval bool      `json:"interval,omitempty"`
	Elems    []NFTElem `json:"elems"`
}

// NFTElem is one element: a key, or the start of a range (End: a range's
// exclusive end; KeyEnd: a concatenated range's inclusive end), and what a
// map maps it to.
type NFTElem struct {
	Key     []byte `json:"key"`
	KeyEnd  []byte `json:"key_end,omitempty"`
	End     bool   `json:"end,omitempty"`
	Val     []byte `json:"val,omitempty"`
	Verdict string `json:"verdict,omitempty"` // "drop", "jump CHAIN", …
}

// Chain is the chain called name, or nil.
func (t *NFTTable) Chain(name string) *NFTChain {
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Covers reports whether the table sees packets of family ("ip", "ip6").
func (t *NFTTable) Covers(family string) bool { return t.Family == family || t.Family == "inet" }

// BaseChains are the table's base chains on hook h whose priority is in
// (lo, hi), in the order the kernel runs them.
func (t *NFTTable) BaseChains(h nf.Hook, lo, hi int64) []*NFTChain {
	var out []*NFTChain
	for _, c := range t.Chains {
		if c.Hook != nil && *c.Hook == h && int64(c.Priority) > lo && int64(c.Priority) < hi {
			out = append(out, c)
		}
	}
	slices.SortStableFunc(out, func(a, b *NFTChain) int { return int(a.Priority) - int(b.Priority) })
	return out
}

// Trace follows p from base chain base to the first verdict that ends the
// base chain (accept, drop, reject, queue) or its policy, as Table.Trace
// does for iptables. Tests of what svctrace does not know of the packet
// count as not matching and are listed in Unsure.
func (t *NFTTable) Trace(base *NFTChain, p Packet) Verdict {
	v := Verdict{}
	if t.walk(base, p, &v, 0) {
		return v
	}
	v.Target, v.Chain, v.Pos = strings.ToUpper(base.Policy), base.Name, 0
	if v.Target == "" {
		v.Target = "ACCEPT"
	}
	return v
}

func (t *NFTTable) walk(c *NFTChain, p Packet, v *Verdict, depth int) bool {
	if depth > maxDepth {
		return false
	}
	for i, r := range c.Rules {
		e := t.evalNFT(r, p)
		if e.unsure != "" {
			if e.decides {
				v.Unsure = append(v.Unsure, fmt.Sprintf("chain %s, rule %d (%s): %s", c.Name, i+1, e.unsure, r.Text()))
			}
			continue
		}
		if !e.match {
			continue
		}
		switch e.verdict {
		case "accept", "drop", "reject", "queue":
			v.Target, v.Chain, v.Pos, v.Rule, v.Matched = strings.ToUpper(e.verdict), c.Name, i+1, r.Text(), e.matched
			return true
		case "return":
			return false
		case "jump", "goto":
			next := t.Chain(e.chain)
			if next == nil {
				continue
			}
			v.Path = append(v.Path, jumpStep(c.Name, i+1, next.Name, e.matched))
			if t.walk(next, p, v, depth+1) {
				return true
			}
			v.Path = v.Path[:len(v.Path)-1]
			if e.verdict == "goto" {
				return false
			}
		}
	}
	return false
}

// nftEval is one rule's outcome.
type nftEval struct {
	match   bool
	unsure  string
	decides bool // its verdict (or a map's) could have ended the walk
	verdict string
	chain   string
	matched []string
}

// registers are the VM's data registers (NFT_REG_1…4, NFT_REG32_00…15
// share 64 bytes), with which bytes hold something svctrace knows.
type registers struct {
	data  [64]byte
	known [64]bool
}

// span is where register r's bytes start; false for the verdict register
// or a register no kernel has.
func span(r uint32, n int) (int, bool) {
	var off int
	switch {
	case r >= 1 && r <= 4:
		off = int(r-1) * 16
	case r >= 8 && r <= 23:
		off = int(r-8) * 4
	default:
		return 0, false
	}
	return off, off+n <= 64
}

func (rs *registers) set(r uint32, b []byte, known bool) bool {
	off, ok := span(r, len(b))
	if !ok {
		return false
	}
	copy(rs.data[off:], b)
	for i := range b {
		rs.known[off+i] = known
	}
	return true
}

// get is n bytes of register r, and whether svctrace knows them all.
func (rs *registers) get(r uint32, n int) ([]byte, bool) {
	off, ok := span(r, n)
	if !ok {
		return nil, false
	}
	for _, k := range rs.known[off : off+n] {
		if !k {
			return rs.data[off : off+n], false
		}
	}
	return rs.data[off : off+n], true
}

// headers are the bytes of p's network and transport headers svctrace
// knows (addresses, protocol, ports), with which ones it knows.
func headers(p Packet) (net, th []byte, netKnown, thKnown []bool) {
	v6 := p.Dst.Is6() || p.Src.Is6()
	n := 20
	proto, src, dst := 9, 12, 16
	if v6 {
		n, proto, src, dst = 40, 6, 8, 24
	}
	net, netKnown = make([]byte, n), make([]bool, n)
	if p.Proto != 0 {
		net[proto], netKnown[proto] = byte(p.Proto), true
	}
	for _, a := range []struct {
		addr netip.Addr
		at   int
	}{{p.Src, src}, {p.Dst, dst}} {
		if a.addr.IsValid() {
			b := a.addr.AsSlice()
			copy(net[a.at:], b)
			for i := range b {
				netKnown[a.at+i] = true
			}
		}
	}
	th, thKnown = make([]byte, 20), make([]bool, 20)
	for i, port := range []uint16{p.Sport, p.Dport} {
		if port != 0 {
			binary.BigEndian.PutUint16(th[2*i:], port)
			thKnown[2*i], thKnown[2*i+1] = true, true
		}
	}
	return net, th, netKnown, thKnown
}

// ctStateBits are conntrack states as nf_tables' ct state tests them.
var ctStateBits = map[string]uint32{"INVALID": 1, "ESTABLISHED": 2, "RELATED": 4, "NEW": 8, "UNTRACKED": 64}

// load is what a load op puts in a register, and whether svctrace knows it.
func load(o Op, p Packet) ([]byte, bool) {
	switch o.Kind {
	case "payload":
		net, th, nk, tk := headers(p)
		b, k := net, nk
		switch o.Field {
		case "transport":
			b, k = th, tk
		case "link":
			return make([]byte, o.Len), false
		}
		end := int(o.Off + o.Len)
		if end > len(b) {
			return make([]byte, o.Len), false
		}
		return b[o.Off:end], !slices.Contains(k[o.Off:end], false)
	case "meta":
		switch o.Field {
		case "l4proto":
			return []byte{byte(p.Proto)}, p.Proto != 0
		case "nfproto":
			if p.Dst.Is6() {
				return []byte{10}, p.Dst.IsValid()
			}
			return []byte{2}, p.Dst.IsValid()
		case "protocol": // the EtherType, in network order
			if p.Dst.Is6() {
				return []byte{0x86, 0xdd}, p.Dst.IsValid()
			}
			return []byte{0x08, 0x00}, p.Dst.IsValid()
		case "iifname", "oifname":
			dev := p.In
			if o.Field == "oifname" {
				dev = p.Out
			}
			b := make([]byte, 16)
			copy(b, dev)
			return b, dev != ""
		case "mark":
			return binary.NativeEndian.AppendUint32(nil, p.Mark), p.MarkSet
		}
	case "ct":
		if o.Field == "state" {
			bit, ok := ctStateBits[p.CTState]
			return binary.NativeEndian.AppendUint32(nil, bit), ok
		}
	}
	return make([]byte, max(o.Len, 4)), false
}

// evalNFT runs rule r's expressions against p, as nft_do_chain does: a
// test that fails ends the rule (NFT_BREAK).
func (t *NFTTable) evalNFT(r NFTRule, p Packet) nftEval {
	var rs registers
	e := nftEval{match: true}
	// The rule's terms name what matched or was unsure; most rules
	// evaluated do neither, so they are worked out only when needed.
	var terms []term
	term := 0
	note := func(i int) string {
		if terms == nil {
			terms = r.terms()
		}
		for term < len(terms) && terms[term].end < i {
			term++
		}
		if term < len(terms) {
			return terms[term].text
		}
		return ""
	}
	unsure := func(i int, why string) {
		if e.unsure == "" {
			e.unsure = note(i) + ": " + why
		}
	}
	for i, o := range r.Ops {
		switch o.Kind {
		case "payload", "meta", "ct":
			b, known := load(o, p)
			rs.set(o.Reg, b, known)
		case "imm":
			rs.set(o.Reg, o.Data, true)
		case "bitwise":
			b, known := rs.get(o.Reg, int(o.Len))
			out := make([]byte, len(b))
			for j := range b {
				out[j] = b[j]&at(o.Mask, j) ^ at(o.Xor, j)
			}
			rs.set(o.DReg, out, known)
		case "cmp", "range":
			b, known := rs.get(o.Reg, len(o.Data))
			if !known {
				unsure(i, "svctrace does not know the packet's")
				continue
			}
			ok := compare(o.Cmp, b, o.Data)
			if o.Kind == "range" {
				in := bytes.Compare(b, o.Data) >= 0 && bytes.Compare(b, o.To) <= 0
				ok = in == (o.Cmp == "==")
			}
			if !ok {
				return nftEval{}
			}
			if o.Cmp != "" {
				e.matched = appendOnce(e.matched, note(i))
			}
		case "lookup":
			s := t.Sets[o.Set]
			switch {
			case s == nil:
				unsure(i, "set "+o.Set+" was not read")
				continue
			case len(s.Elems) == 0 && o.Invert:
				e.matched = appendOnce(e.matched, note(i))
				continue
			case len(s.Elems) == 0:
				return nftEval{}
			}
			n := len(s.Elems[0].Key)
			key, known := rs.get(o.Reg, n)
			if !known {
				unsure(i, "svctrace does not know the packet's")
				if o.VMap {
					e.decides = true
				}
				continue
			}
			el := s.find(key)
			if (el != nil) == o.Invert {
				return nftEval{}
			}
			e.matched = appendOnce(e.matched, note(i))
			switch {
			case o.VMap:
				e.verdict, e.chain, _ = strings.Cut(el.Verdict, " ")
				e.decides = true
				if e.unsure == "" {
					return e
				}
			case o.Map:
				rs.set(o.DReg, el.Val, true)
			}
		case "verdict", "reject", "queue":
			v := o.Verdict
			if o.Kind != "verdict" {
				v = o.Kind
			}
			e.verdict, e.chain = v, o.Chain
			e.decides = v != "continue"
			if e.unsure != "" {
				e.match = false
			}
			return e
		case "skip":
		default:
			unsure(i, "svctrace does not evaluate "+o.What)
		}
	}
	if e.unsure != "" {
		e.match = false
	}
	return e
}

func at(b []byte, i int) byte {
	if i < len(b) {
		return b[i]
	}
	return 0
}

func appendOnce(s []string, x string) []string {
	if x == "" || slices.Contains(s, x) {
		return s
	}
	return append(s, x)
}

// compare applies a cmp op; registers hold network byte order data, and
// nf_tables compares bytes in order (memcmp).
func compare(op string, a, b []byte) bool {
	c := bytes.Compare(a, b)
	switch op {
	case "==":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	case ">=":
		return c >= 0
	}
	return false
}

// find is the element that holds key: an exact key, a concatenated
// range (KeyEnd, inclusive), or in an interval set the range that starts
// at or below key and has not ended (an End element is the first key past
// a range).
func (s *NFTSet) find(key []byte) *NFTElem {
	var best *NFTElem
	for i := range s.Elems {
		el := &s.Elems[i]
		switch {
		case len(el.KeyEnd) > 0:
			if bytes.Compare(key, el.Key) >= 0 && bytes.Compare(key, el.KeyEnd) <= 0 {
				return el
			}
		case !s.Interval:
			if bytes.Equal(key, el.Key) {
				return el
			}
		case bytes.Compare(el.Key, key) <= 0 && (best == nil || bytes.Compare(el.Key, best.Key) > 0 ||
			bytes.Equal(el.Key, best.Key) && !el.End):
			best = el
		}
	}
	if best != nil && best.End {
		return nil
	}
	return best
}

// term is a part of a rule as nft prints it ("ip daddr 10.244.0.0/16"),
// and the index of its last op.
type term struct {
	text string
	end  int
}

// Text is the rule as nft prints it (close to: header fields by name,
// ports and protocols as numbers and names), and its handle.
func (r NFTRule) Text() string {
	var parts []string
	for _, t := range r.terms() {
		parts = append(parts, t.text)
	}
	s := strings.Join(parts, " ")
	if r.Comment != "" {
		s += fmt.Sprintf(" comment %q", r.Comment)
	}
	return s + " # handle " + strconv.FormatUint(r.Handle, 10)
}

// terms groups a rule's ops into what nft prints: loads name fields,
// tests and verdicts end a term.
func (r NFTRule) terms() []term {
	var out []term
	type loaded struct {
		name       string
		bits, full int // an address's prefix length and size, in bits
	}
	regs := map[uint32]loaded{}
	var concat []string // fields loaded since the last test (a concatenation)
	for i, o := range r.Ops {
		switch o.Kind {
		case "payload", "meta", "ct":
			name, full := fieldName(o)
			regs[o.Reg] = loaded{name, int(o.Len) * 8, full}
			concat = append(concat, name)
		case "bitwise":
			l := regs[o.Reg]
			if n := ones(o.Mask); n >= 0 && l.full > 0 {
				l.bits = n
			}
			regs[o.DReg] = l
		case "cmp", "range":
			l := regs[o.Reg]
			val := value(l.name, o.Data, l.full)
			if o.Kind == "range" {
				val += "-" + value(l.name, o.To, l.full)
			}
			if l.full > 0 && l.bits < l.full {
				val += "/" + strconv.Itoa(l.bits)
			}
			op := ""
			if o.Cmp != "==" {
				op = o.Cmp + " "
			}
			if l.name == "ct state" && o.Cmp == "!=" && isZero(o.Data) {
				// ct state new: load, mask the state bits, test != 0.
				op, val = "", ctStates(r.Ops, i)
			}
			out = append(out, term{l.name + " " + op + val, i})
			concat = nil
		case "lookup":
			f := strings.Join(concat, " . ")
			op := ""
			switch {
			case o.VMap:
				op = "vmap "
			case o.Map:
				op = "map "
			case o.Invert:
				op = "!= "
			}
			out = append(out, term{f + " " + op + "@" + o.Set, i})
			concat = nil
		case "verdict":
			s := o.Verdict
			if o.Chain != "" {
				s += " " + o.Chain
			}
			out = append(out, term{s, i})
		case "reject", "queue":
			out = append(out, term{o.Kind, i})
		case "skip", "unknown":
			if o.What != "" {
				out = append(out, term{o.What, i})
			}
		}
	}
	return hideDependencies(out)
}

// hideDependencies drops the tests nft adds before a header field and
// hides when it prints a rule: "meta nfproto ipv4" before an ip field,
// "meta l4proto tcp" before a transport one (which it names by protocol).
func hideDependencies(ts []term) []term {
	out := ts[:0:0]
	for i, t := range ts {
		if i+1 < len(ts) {
			next := &ts[i+1]
			if l4, ok := strings.CutPrefix(t.text, "meta l4proto "); ok && strings.HasPrefix(next.text, "th ") && !strings.HasPrefix(l4, "!=") {
				next.text = l4 + strings.TrimPrefix(next.text, "th")
				continue
			}
			if t.text == "meta nfproto ipv4" && strings.HasPrefix(next.text, "ip ") ||
				t.text == "meta nfproto ipv6" && strings.HasPrefix(next.text, "ip6 ") {
				continue
			}
		}
		out = append(out, t)
	}
	return out
}

// fieldName names a load as nft does, with an address's size in bits (0:
// not an address). A prefix loads only its leading bytes.
func fieldName(o Op) (string, int) {
	switch o.Kind {
	case "meta":
		if o.Field == "iifname" || o.Field == "oifname" {
			return o.Field, 0
		}
		return "meta " + o.Field, 0
	case "ct":
		return "ct " + o.Field, 0
	}
	switch {
	case o.Field == "network" && o.Off == 12 && o.Len <= 4:
		return "ip saddr", 32
	case o.Field == "network" && o.Off == 16 && o.Len <= 4:
		return "ip daddr", 32
	case o.Field == "network" && o.Off == 8 && o.Len >= 2:
		return "ip6 saddr", 128
	case o.Field == "network" && o.Off == 24:
		return "ip6 daddr", 128
	case o.Field == "network" && o.Off == 9 && o.Len == 1:
		return "ip protocol", 0
	case o.Field == "network" && o.Off == 6 && o.Len == 1:
		return "ip6 nexthdr", 0
	case o.Field == "transport" && o.Off == 0 && o.Len == 2:
		return "th sport", 0
	case o.Field == "transport" && o.Off == 2 && o.Len == 2:
		return "th dport", 0
	}
	return fmt.Sprintf("@%s,%d,%d", map[string]string{"network": "nh", "transport": "th", "link": "ll"}[o.Field], o.Off*8, o.Len*8), 0
}

// value prints a test's operand as nft would for the field; full is an
// address's size in bits.
func value(field string, b []byte, full int) string {
	switch {
	case full > 0 && len(b) <= full/8:
		a := make([]byte, full/8)
		copy(a, b)
		if addr, ok := netip.AddrFromSlice(a); ok {
			return addr.String()
		}
	case strings.HasSuffix(field, "port") && len(b) == 2:
		return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
	case (field == "meta l4proto" || field == "ip protocol" || field == "ip6 nexthdr") && len(b) == 1:
		if n := nf.Proto(b[0]).String(); !strings.HasPrefix(n, "proto-") {
			return n
		}
		return strconv.Itoa(int(b[0]))
	case field == "iifname" || field == "oifname":
		return strconv.Quote(string(bytes.TrimRight(b, "\x00")))
	case field == "meta nfproto" && len(b) == 1 && (b[0] == 2 || b[0] == 10):
		return map[byte]string{2: "ipv4", 10: "ipv6"}[b[0]]
	case field == "meta mark" && len(b) == 4:
		return fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(b))
	}
	return fmt.Sprintf("0x%x", b)
}

// ctStates names the states a "ct state" test before op i masks for.
func ctStates(ops []Op, i int) string {
	for j := i - 1; j >= 0; j-- {
		if ops[j].Kind == "bitwise" && len(ops[j].Mask) == 4 {
			m := binary.NativeEndian.Uint32(ops[j].Mask)
			var names []string
			for _, s := range []string{"INVALID", "ESTABLISHED", "RELATED", "NEW", "UNTRACKED"} {
				if m&ctStateBits[s] != 0 {
					names = append(names, strings.ToLower(s))
				}
			}
			return strings.Join(names, ",")
		}
	}
	return "?"
}

func isZero(b []byte) bool { return !slices.ContainsFunc(b, func(x byte) bool { return x != 0 }) }

// ones is the prefix length of a contiguous mask, or -1.
func ones(mask []byte) int {
	n, done := 0, false
	for _, b := range mask {
		for bit := 7; bit >= 0; bit-- {
			set := b&(1<<bit) != 0
			switch {
			case set && done:
				return -1
			case set:
				n++
			default:
				done = true
			}
		}
	}
	return n
}

// metaKeys are the meta keys svctrace evaluates, by name and size.
var metaKeys = map[expr.MetaKey]struct {
	name string
	len  uint32
}{
	expr.MetaKeyL4PROTO: {"l4proto", 1}, expr.MetaKeyNFPROTO: {"nfproto", 1}, expr.MetaKeyIIFNAME: {"iifname", 16},
	expr.MetaKeyOIFNAME: {"oifname", 16}, expr.MetaKeyMARK: {"mark", 4}, expr.MetaKeyIIF: {"iif", 4}, expr.MetaKeyOIF: {"oif", 4},
	expr.MetaKeySKUID: {"skuid", 4}, expr.MetaKeySKGID: {"skgid", 4}, expr.MetaKeyPROTOCOL: {"protocol", 2},
}

var ctKeys = map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeyMARK: "mark", expr.CtKeySTATUS: "status"}

var cmpOps = map[expr.CmpOp]string{expr.CmpOpEq: "==", expr.CmpOpNeq: "!=", expr.CmpOpLt: "<", expr.CmpOpLte: "<=",
	expr.CmpOpGt: ">", expr.CmpOpGte: ">="}

var payloadBases = map[expr.PayloadBase]string{expr.PayloadBaseLLHeader: "link", expr.PayloadBaseNetworkHeader: "network",
	expr.PayloadBaseTransportHeader: "transport"}

// compile reduces a rule's expressions to Ops. What svctrace does not
// model becomes an "unknown" op, which makes the rule unsure when reached.
func compile(exprs []expr.Any) []Op {
	var ops []Op
	for _, x := range exprs {
		var o Op
		switch x := x.(type) {
		case *expr.Payload:
			if x.OperationType != expr.PayloadLoad {
				o = Op{Kind: "unknown", What: "payload write"}
				break
			}
			o = Op{Kind: "payload", Reg: x.DestRegister, Field: payloadBases[x.Base], Off: x.Offset, Len: x.Len}
		case *expr.Meta:
			m, ok := metaKeys[x.Key]
			if x.SourceRegister {
				o = Op{Kind: "skip", What: fmt.Sprintf("meta %s set", m.name)}
				break
			}
			if !ok {
				m.name, m.len = fmt.Sprintf("key-%d", x.Key), 4
			}
			o = Op{Kind: "meta", Reg: x.Register, Field: m.name, Len: m.len}
		case *expr.Ct:
			if x.SourceRegister {
				o = Op{Kind: "skip", What: "ct set"}
				break
			}
			name, ok := ctKeys[x.Key]
			if !ok {
				name = fmt.Sprintf("key-%d", x.Key)
			}
			o = Op{Kind: "ct", Reg: x.Register, Field: name, Len: 4}
		case *expr.Cmp:
			o = Op{Kind: "cmp", Reg: x.Register, Cmp: cmpOps[x.Op], Data: x.Data}
		case *expr.Range:
			o = Op{Kind: "range", Reg: x.Register, Cmp: cmpOps[x.Op], Data: x.FromData, To: x.ToData}
		case *expr.Bitwise:
			o = Op{Kind: "bitwise", Reg: x.SourceRegister, DReg: x.DestRegister, Len: x.Len, Mask: x.Mask, Xor: x.Xor}
		case *expr.Lookup:
			o = Op{Kind: "lookup", Reg: x.SourceRegister, Set: x.SetName, Invert: x.Invert}
			if x.IsDestRegSet {
				o.VMap, o.Map, o.DReg = x.DestRegister == 0, x.DestRegister != 0, x.DestRegister
			}
		case *expr.Immediate:
			o = Op{Kind: "imm", Reg: x.Register, Data: x.Data}
		case *expr.Verdict:
			v, chain, _ := strings.Cut(verdictString(x.Kind, x.Chain), " ")
			switch x.Kind {
			case expr.VerdictReturn:
				v = "return"
			case expr.VerdictContinue:
				v = "continue"
			}
			o = Op{Kind: "verdict", Verdict: v, Chain: chain}
		case *expr.Reject:
			o = Op{Kind: "reject"}
		case *expr.Queue:
			o = Op{Kind: "queue"}
		case *expr.Counter:
			o = Op{Kind: "skip", What: "counter"}
		case *expr.Log:
			o = Op{Kind: "skip", What: "log"}
		case *expr.Notrack:
			o = Op{Kind: "skip", What: "notrack"}
		default:
			o = Op{Kind: "unknown", What: strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", x), "*expr."))}
		}
		ops = append(ops, o)
	}
	return ops
}
