package diagnose

import (
	"cmp"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/resolve"
)

// hookChains are iptables' built-in chains by hook.
var hookChains = map[nf.Hook]string{nf.PreRouting: "PREROUTING", nf.LocalIn: "INPUT", nf.Forward: "FORWARD",
	nf.LocalOut: "OUTPUT", nf.PostRouting: "POSTROUTING"}

// tracedRule is the rule that decided a dropped packet's fate, found by
// following the packet from the base chain of the hook where it died
// through the jumps of a table that runs in the drop's gap: an iptables
// table (iptables-nft or legacy) or another writer's nftables table.
type tracedRule struct {
	family, table string // "ip", "filter"; "inet", "policy"
	backend       string // "iptables-nft", "iptables-legacy", "nftables"
	v             kubeproxy.Verdict
}

func iptablesRule(t *kubeproxy.Table, v kubeproxy.Verdict) tracedRule {
	return tracedRule{t.Family, t.Name, t.Backend, v}
}

// where: "table ip filter (iptables-nft), chain POLICY, rule 3: … -j DROP".
func (r tracedRule) where() string {
	return fmt.Sprintf("table %s %s (%s), %s", r.family, r.table, r.backend, r.v)
}

// kubeProxys reports whether kube-proxy wrote the rule, by its chain's
// name (kube-router's KUBE-NWPLCY-… chains are not).
func (r tracedRule) kubeProxys() bool {
	return r.backend != "nftables" && kubeproxy.Writer(r.v.Chain, r.v.Comment()) == "kube-proxy"
}

// list is the command that shows the rule's chain as svctrace read it.
func (r tracedRule) list() string {
	switch r.backend {
	case "nftables":
		return fmt.Sprintf("nft -a list chain %s %s %s", r.family, r.table, r.v.Chain)
	case "iptables-legacy":
		return "iptables-legacy-save -t " + r.table + " | grep -n -- '-A " + r.v.Chain + " '"
	}
	return "iptables-save -t " + r.table + " | grep -n -- '-A " + r.v.Chain + " '"
}

// familyOf is the iptables family of a's packets: "ip" or "ip6".
func familyOf(a netip.Addr) string {
	if a.Is6() {
		return "ip6"
	}
	return "ip"
}

// evidence: how the packet reached the rule, and what svctrace could not
// evaluate on the way (any of which may have decided instead).
func (r tracedRule) evidence() []string {
	ev := []string{fmt.Sprintf("%s %s: %s", r.family, r.table, strings.Join(append(slicesOr(r.v.Path, "the built-in chain"), r.v.String()), " → "))}
	if c := r.v.Comment(); c != "" {
		ev = append(ev, fmt.Sprintf("the rule's comment: %q", c))
	}
	if w := kubeproxy.Writer(r.v.Chain, r.v.Comment()); w != "" && r.backend != "nftables" {
		ev = append(ev, fmt.Sprintf("chain %s is written by %s, by its name", r.v.Chain, w))
	}
	for _, u := range r.v.Unsure {
		ev = append(ev, "not evaluated, assumed not to match (it may have decided instead): "+u)
	}
	return ev
}

func slicesOr(s []string, none string) []string {
	if len(s) == 0 {
		return []string{none}
	}
	return s
}

// traceRule follows drop d's packet through the iptables tables and the
// other writers' nftables base chains in the drop's gap; false when
// svctrace has no such table, or the rules do not drop the packet.
func (x *Explainer) traceRule(c *flow.Conn, d *flow.Drop) (tracedRule, bool) {
	r := x.in.Rules
	if r == nil || !d.InNode || !d.Placed || len(r.Tables)+len(r.NFT) == 0 {
		return tracedRule{}, false
	}
	base, ok := hookChains[d.Gap.Hook]
	if !ok {
		return tracedRule{}, false
	}
	family := familyOf(c.Client.Addr())
	p := x.packetOf(c, d)
	for _, piece := range d.Gap.Pieces {
		// "filter table (0)"; "DNAT (nat table)" is not one to follow.
		name, _, _ := strings.Cut(piece, " (")
		name, isTable := strings.CutSuffix(name, " table")
		if !isTable {
			continue
		}
		t := r.Table(family, name)
		if t == nil {
			continue
		}
		if v, ok := t.Trace(base, p); ok && (drops(v) || (v.Queue() != "" && queuedDrop(d))) {
			return iptablesRule(t, v), true
		}
	}
	lo, hi := d.Gap.Bounds()
	return traceNFT(r, family, d.Gap.Hook, lo, hi, p)
}

func drops(v kubeproxy.Verdict) bool { return v.Target == "DROP" || v.Target == "REJECT" }

// queuedDrop: the kernel dropped d's packet in its queue to userspace
// (NFQUEUE): nf_queue when no program reads the queue, nf_reinject when
// the program's verdict was to drop.
func queuedDrop(d *flow.Drop) bool {
	return strings.HasPrefix(d.Location, "nf_queue") || strings.HasPrefix(d.Location, "nf_reinject")
}

// fate says what the traced rule did with a connection's packet (name)
// that died there: "dropped by a rule …", "rejected by …", or queued to
// userspace and dropped there, and how.
func (r tracedRule) fate(name string, d *flow.Drop) string {
	where := "a rule in " + r.where()
	switch q := r.v.Queue(); {
	case q != "" && strings.HasPrefix(d.Location, "nf_queue"):
		return fmt.Sprintf("the %s was queued to userspace (queue %s) by %s, and no program reads that queue: the kernel dropped it (%s)", name, q, where, d.Location)
	case q != "":
		return fmt.Sprintf("the %s was queued to userspace (queue %s) by %s, and the program reading that queue dropped it (%s)", name, q, where, d.Location)
	case r.v.Target == "REJECT":
		return fmt.Sprintf("the %s was rejected by %s", name, where)
	}
	return fmt.Sprintf("the %s was dropped by %s", name, where)
}

// traceNFT follows p through the base chains of the other writers'
// nftables tables on hook h with priorities in (lo, hi), in the order the
// kernel runs them, to the first that drops it.
func traceNFT(r *kubeproxy.Ruleset, family string, h nf.Hook, lo, hi int64, p kubeproxy.Packet) (tracedRule, bool) {
	type base struct {
		t *kubeproxy.NFTTable
		c *kubeproxy.NFTChain
	}
	var bases []base
	for _, t := range r.NFT {
		if t.Covers(family) {
			for _, c := range t.BaseChains(h, lo, hi) {
				bases = append(bases, base{t, c})
			}
		}
	}
	slices.SortStableFunc(bases, func(a, b base) int { return cmp.Compare(a.c.Priority, b.c.Priority) })
	for _, b := range bases {
		if v := b.t.Trace(b.c, p); drops(v) {
			return tracedRule{b.t.Family, b.t.Name, "nftables", v}, true
		}
	}
	return tracedRule{}, false
}

// packetOf is drop d's packet as the hook saw it: after DNAT, before SNAT,
// coming in on the drop's interface and going out where the node routes
// its destination.
func (x *Explainer) packetOf(c *flow.Conn, d *flow.Drop) kubeproxy.Packet {
	src, dst := c.Client, c.VIP
	if d.Endpoint.IsValid() {
		dst = d.Endpoint
	} else if c.Endpoint.IsValid() {
		dst = c.Endpoint
	}
	if c.PacketDir(d.Packet) == flow.Reply {
		src, dst = dst, c.Client
	}
	p := kubeproxy.Packet{Src: src.Addr(), Dst: dst.Addr(), Proto: c.Proto, Sport: src.Port(), Dport: dst.Port(), CTState: "ESTABLISHED"}
	if !strings.HasPrefix(d.In, "ifindex ") {
		p.In = d.In
	}
	if o := d.Outer; o.IsValid() {
		// The overlay packet carrying the connection's died: the rules
		// saw it, not what it carries; its own conntrack state is not
		// known.
		p = kubeproxy.Packet{Src: o.Src.Addr(), Dst: o.Dst.Addr(), Proto: o.Proto, Sport: o.Src.Port(), Dport: o.Dst.Port(), In: p.In}
		if d.Gap.Hook == nf.LocalOut || d.Gap.Hook == nf.PostRouting {
			p.In = ""
		}
		return p
	}
	if d.Gap.Hook == nf.LocalOut || d.Gap.Hook == nf.PostRouting {
		p.In = ""
	}
	if x.in.Net != nil && d.Gap.Hook != nf.LocalIn && d.Gap.Hook != nf.PreRouting {
		if rt, ok := x.in.Net.Route(dst.Addr()); ok && rt.Usable() {
			p.Out = rt.Dev
		}
	}
	switch {
	case d.Invalid:
		p.CTState = "INVALID"
	case d.Packet == 1 || c.PacketName(d.Packet) == "SYN":
		p.CTState = "NEW"
	}
	for _, s := range c.Steps {
		if s.Packet == d.Packet && s.Kind == nf.KindHook && s.Hook == d.Gap.Hook {
			p.Mark, p.MarkSet = s.Mark, true
		}
	}
	return p
}

// ruleDrops: a rule (not kube-proxy's) in the filter table that drops new
// connections to the endpoint, whatever their source: the packet a client
// elsewhere would send, followed from FORWARD. Unknown fields (the source,
// the interface it comes in on, marks) make rules that test them unsure.
func (c *checker) ruleDrops(p *resolve.Port, e resolve.Endpoint) {
	if c.Rules == nil {
		return
	}
	family := familyOf(e.Addr.Addr())
	pkt := kubeproxy.Packet{Dst: e.Addr.Addr(), Dport: e.Addr.Port(), Proto: p.Protocol, CTState: "NEW"}
	if c.Net != nil {
		if r, ok := c.Net.Route(e.Addr.Addr()); ok && r.Usable() {
			pkt.Out = r.Dev
		}
	}
	// In the kernel's order: nftables chains before the filter table's
	// priority, the filter table, the chains after it.
	tr, ok := traceNFT(c.Rules, family, nf.Forward, math.MinInt32-1, 0, pkt)
	if t := c.Rules.Table(family, "filter"); t != nil && !ok {
		v, traced := t.Trace("FORWARD", pkt)
		tr, ok = iptablesRule(t, v), traced && drops(v)
	}
	if !ok {
		tr, ok = traceNFT(c.Rules, family, nf.Forward, -1, math.MaxInt32+1, pkt)
	}
	if !ok || tr.kubeProxys() {
		return
	}
	v := tr.v
	f := report.Finding{Severity: report.Problem, Code: report.RuleDropsEndpoint, Object: endpointObject(e), Port: p.String(), Endpoint: e.Addr.String(),
		Summary: fmt.Sprintf("a rule, not kube-proxy's, %ss new connections to the endpoint %s forwarded by this node: %s",
			strings.ToLower(v.Target), e.Addr, tr.where()),
		Evidence: tr.evidence(),
		Next:     []string{"look for the NetworkPolicy or firewall that wrote it: " + tr.list()}}
	if len(v.Unsure) > 0 {
		f.Severity = report.Warning
		f.Summary += " (unless a rule svctrace could not evaluate decides first)"
	}
	c.add(f)
}
