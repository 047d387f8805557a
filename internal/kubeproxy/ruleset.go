package kubeproxy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Mode is how kube-proxy programs this node.
type Mode string

const (
	ModeIPTables       Mode = "iptables"        // iptables mode, nf_tables backend (iptables-nft)
	ModeIPTablesLegacy Mode = "iptables-legacy" // iptables mode, legacy xtables backend
	ModeNFTables       Mode = "nftables"        // nftables mode (table kube-proxy)
	ModeIPVS           Mode = "ipvs"            // ipvs mode (kube-ipvs0)
	ModeNone           Mode = "none"            // no kube-proxy rules
)

// Ruleset is what kube-proxy programmed on a node, by Service port.
type Ruleset struct {
	Mode Mode
	// Note explains the mode, e.g. which tool's output was read, or that an
	// eBPF kube-proxy replacement is likely.
	Note  string
	Ports map[PortKey]*PortRules
	// BaseChains are the netfilter base chains of the node's nf_tables
	// rulesets (kube-proxy's and others'), to name the table and chain where
	// a drop happened. Empty for the legacy backend.
	BaseChains []BaseChain
	// RangeDrops are kube-proxy's drops of whole address ranges: in
	// nftables mode, traffic to service-range addresses that are no
	// ClusterIP.
	RangeDrops []RangeDrop
	// NodePortAddrs are the only addresses kube-proxy accepts NodePort
	// traffic on (kube-proxy's --nodeport-addresses; nftables mode's
	// default is the node's primary addresses, set nodeport-ips). None of
	// a family: every local address of that family.
	NodePortAddrs []netip.Prefix
	// NodePortWhere is the rule or set that limits them.
	NodePortWhere string
	// InvalidDrop is where kube-proxy drops packets conntrack found
	// INVALID (iptables mode, unless nf_conntrack_tcp_be_liberal is set:
	// filter table, chain KUBE-FORWARD); "" : it does not.
	InvalidDrop string
	// Tables are the node's iptables filter, mangle and raw tables (every
	// writer's rules) by family, from iptables-save: where Table.Trace
	// finds the rule that dropped a packet. Empty where no iptables tool
	// could read them.
	Tables []*Table
	// NFT are the node's nf_tables tables of other writers (not
	// kube-proxy's, not iptables-nft's) that have filter base chains, read
	// over netlink: where NFTTable.Trace finds the rule that dropped a
	// packet.
	NFT []*NFTTable
}

// Table is the iptables table name of family ("ip", "ip6"), or nil.
func (r *Ruleset) Table(family, name string) *Table {
	if r == nil {
		return nil
	}
	for _, t := range r.Tables {
		if t.Family == family && t.Name == name {
			return t
		}
	}
	return nil
}

// AcceptsNodePort reports whether kube-proxy translates NodePorts arriving
// for local address a.
func (r *Ruleset) AcceptsNodePort(a netip.Addr) bool {
	limited := false
	for _, p := range r.NodePortAddrs {
		if p.Addr().Is4() != a.Is4() {
			continue
		}
		if p.Contains(a) {
			return true
		}
		limited = true
	}
	return !limited
}

// RangeDrop is a rule that drops traffic to a range of addresses.
type RangeDrop struct {
	Prefix netip.Prefix
	Why    string // the rule's comment
	Where  string // table and chain
}

// RangeDrop is the range drop that covers a, if any.
func (r *Ruleset) RangeDrop(a netip.Addr) *RangeDrop {
	for i, d := range r.RangeDrops {
		if d.Prefix.Contains(a) {
			return &r.RangeDrops[i]
		}
	}
	return nil
}

// PortKey names a Service port the way kube-proxy does: "ns/name:port"
// (kube-proxy's ServicePortName) and the lower-case protocol.
type PortKey struct {
	Name  string
	Proto string
}

func (k PortKey) String() string { return k.Name + "/" + k.Proto }

// rulesetJSON is how a Ruleset is recorded: its ports as a list (their
// keys are in them).
type rulesetJSON struct {
	Mode       Mode         `json:"mode"`
	Note       string       `json:"note"`
	Ports      []*PortRules `json:"ports"`
	BaseChains []BaseChain  `json:"base_chains,omitempty"`
	RangeDrops []RangeDrop  `json:"range_drops,omitempty"`
	// NodePortAddrs and NodePortWhere: see Ruleset.
	NodePortAddrs []netip.Prefix `json:"nodeport_addrs,omitempty"`
	NodePortWhere string         `json:"nodeport_where,omitempty"`
	InvalidDrop   string         `json:"invalid_drop,omitempty"`
	Tables        []*Table       `json:"tables,omitempty"`
	NFT           []*NFTTable    `json:"nft_tables,omitempty"`
}

func (r Ruleset) MarshalJSON() ([]byte, error) {
	j := rulesetJSON{Mode: r.Mode, Note: r.Note, BaseChains: r.BaseChains, RangeDrops: r.RangeDrops,
		NodePortAddrs: r.NodePortAddrs, NodePortWhere: r.NodePortWhere, InvalidDrop: r.InvalidDrop, Tables: r.Tables, NFT: r.NFT}
	for _, p := range r.Ports {
		j.Ports = append(j.Ports, p)
	}
	sort.Slice(j.Ports, func(a, b int) bool { return j.Ports[a].PortKey.String() < j.Ports[b].PortKey.String() })
	return json.Marshal(j)
}

func (r *Ruleset) UnmarshalJSON(b []byte) error {
	var j rulesetJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*r = Ruleset{Mode: j.Mode, Note: j.Note, BaseChains: j.BaseChains, RangeDrops: j.RangeDrops,
		NodePortAddrs: j.NodePortAddrs, NodePortWhere: j.NodePortWhere, InvalidDrop: j.InvalidDrop, Tables: j.Tables, NFT: j.NFT, Ports: map[PortKey]*PortRules{}}
	for _, p := range j.Ports {
		r.Ports[p.PortKey] = p
	}
	return nil
}

// PortRules are the rules for one Service port.
type PortRules struct {
	PortKey
	Chains    []string       // kube-proxy's chains for it: KUBE-SVC-…, service-…
	Dests     []Dest         // destinations its rules match
	Endpoints []EndpointRule // DNAT targets
	Rejects   []Reject       // REJECT/DROP for "has no (local) endpoints"
	// AffinityTimeout is how long kube-proxy keeps sending a client to the
	// endpoint its last new connection went to (sessionAffinity: ClientIP);
	// zero without affinity. Affinity is that memory, as read.
	AffinityTimeout time.Duration `json:",omitempty"`
	Affinity        []Affinity    `json:",omitempty"`
}

// Affinity is kube-proxy's memory of one client of a Service port with
// sessionAffinity: ClientIP: the endpoint its new connections go to.
type Affinity struct {
	Client   netip.Addr
	Endpoint netip.AddrPort
	// Idle is how long before the read the client's last new connection
	// went there; negative when unknown.
	Idle  time.Duration
	Where string // the recent list or set holding it
}

// Dest is a destination kube-proxy matches for a Service port.
type Dest struct {
	Addr netip.AddrPort // address invalid for a NodePort (any local address)
	Kind string         // "cluster IP", "external IP", "loadbalancer IP", "nodePort"
}

// MarshalJSON keeps a NodePort's port: an AddrPort without an address
// would encode as "".
func (d Dest) MarshalJSON() ([]byte, error) {
	j := destJSON{Port: d.Addr.Port(), Kind: d.Kind}
	if d.Addr.Addr().IsValid() {
		j.Addr = d.Addr.Addr().String()
	}
	return json.Marshal(j)
}

func (d *Dest) UnmarshalJSON(b []byte) error {
	var j destJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var a netip.Addr
	if j.Addr != "" {
		var err error
		if a, err = netip.ParseAddr(j.Addr); err != nil {
			return err
		}
	}
	*d = Dest{Addr: netip.AddrPortFrom(a, j.Port), Kind: j.Kind}
	return nil
}

type destJSON struct {
	Addr string `json:"addr,omitempty"`
	Port uint16 `json:"port"`
	Kind string `json:"kind"`
}

func (d Dest) String() string {
	if !d.Addr.Addr().IsValid() {
		return fmt.Sprintf("%s %d", d.Kind, d.Addr.Port())
	}
	return fmt.Sprintf("%s %s", d.Kind, d.Addr)
}

// EndpointRule is one DNAT target of a Service port.
type EndpointRule struct {
	Addr  netip.AddrPort
	Chain string
}

// Reject is a rule that turns away packets for a Service port.
type Reject struct {
	Dest    Dest
	Why     string // "has no endpoints", "has no local endpoints"
	Verdict string // "REJECT" or "DROP"
	Where   string // table and chain, e.g. "filter table, chain KUBE-SERVICES"
	Rule    string // the rule as the tool prints it
}

func (r Reject) String() string {
	return fmt.Sprintf("%s: %s (%s)", r.Verdict, r.Why, r.Where)
}

// BaseChain is a chain attached to a netfilter hook.
type BaseChain struct {
	Family, Table, Chain string
	Hook                 string // "prerouting", "input", "forward", "output", "postrouting"
	Priority             int32
}

func (b BaseChain) String() string {
	return fmt.Sprintf("table %s %s, chain %s (%s, priority %d)", b.Family, b.Table, b.Chain, b.Hook, b.Priority)
}

// Port returns the rules of a Service port, nil if kube-proxy wrote none.
func (r *Ruleset) Port(name, proto string) *PortRules {
	if r == nil {
		return nil
	}
	return r.Ports[PortKey{Name: name, Proto: proto}]
}

func (r *Ruleset) port(k PortKey) *PortRules {
	if r.Ports == nil {
		r.Ports = map[PortKey]*PortRules{}
	}
	p := r.Ports[k]
	if p == nil {
		p = &PortRules{PortKey: k}
		r.Ports[k] = p
	}
	return p
}

func (p *PortRules) addChain(c string) {
	if c != "" && !slices.Contains(p.Chains, c) {
		p.Chains = append(p.Chains, c)
	}
}

func (p *PortRules) addDest(d Dest) {
	if !slices.Contains(p.Dests, d) {
		p.Dests = append(p.Dests, d)
	}
}

func (p *PortRules) addEndpoint(e EndpointRule) {
	if !slices.ContainsFunc(p.Endpoints, func(x EndpointRule) bool { return x.Addr == e.Addr }) {
		p.Endpoints = append(p.Endpoints, e)
	}
}

// sort orders everything, so that output and tests are stable.
func (r *Ruleset) sort() {
	for _, p := range r.Ports {
		sort.Strings(p.Chains)
		sort.Slice(p.Dests, func(i, j int) bool { return p.Dests[i].String() < p.Dests[j].String() })
		sort.Slice(p.Endpoints, func(i, j int) bool { return p.Endpoints[i].Addr.String() < p.Endpoints[j].Addr.String() })
	}
}

// servicePortComment splits a kube-proxy comment into the Service port name
// and the rest: "shop/web:http has no endpoints" → "shop/web:http", "has no
// endpoints".
var servicePortComment = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[-a-z0-9]+)?)(\s+(.*))?$`)

func splitComment(c string) (name, rest string, ok bool) {
	m := servicePortComment.FindStringSubmatch(c)
	if m == nil {
		return "", "", false
	}
	return m[1], m[6], true
}

// ParseIPTablesSave reads iptables-save (or ip6tables-save) output into r:
// each rule whose comment names a Service port tells what kube-proxy does
// for it. Rules are recognised by their comments and targets, not by the
// KUBE-SVC/KUBE-SEP hashes, whose input changed across kube-proxy versions.
func ParseIPTablesSave(r *Ruleset, text string) error {
	table := ""
	for n, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			continue
		case !strings.HasPrefix(line, "-A "):
			continue
		}
		args, err := splitArgs(line)
		if err != nil {
			return fmt.Errorf("line %d: %v", n+1, err)
		}
		rule := parseRule(args)
		if rule.target == "KUBE-NODEPORTS" && rule.chain == "KUBE-SERVICES" && rule.dstNet.IsValid() {
			// --nodeport-addresses: one jump per accepted address, instead
			// of the catch-all "-m addrtype --dst-type LOCAL".
			r.NodePortAddrs = append(r.NodePortAddrs, rule.dstNet)
			r.NodePortWhere = table + " table, chain KUBE-SERVICES: -d ADDRESS -j KUBE-NODEPORTS"
			continue
		}
		if rule.ctstate == "INVALID" && rule.target == "DROP" && rule.chain == "KUBE-FORWARD" {
			r.InvalidDrop = table + " table, chain KUBE-FORWARD"
			continue
		}
		name, rest, ok := splitComment(rule.comment)
		if !ok {
			continue
		}
		proto := rule.proto
		if proto == "" {
			proto = "tcp"
		}
		p := r.port(PortKey{Name: name, Proto: proto})
		dest := Dest{Addr: netip.AddrPortFrom(rule.dst(), rule.dport), Kind: destKind(rule, rest)}
		switch {
		case rule.recentCheck && rule.recentSeconds > 0:
			// "-m recent --rcheck --seconds N --name KUBE-SEP-…": the
			// affinity lookup in the Service chain.
			p.AffinityTimeout = time.Duration(rule.recentSeconds) * time.Second
			p.addChain(rule.target)
		case rule.target == "DNAT" && rule.toDest.IsValid():
			p.addChain(rule.chain)
			p.addEndpoint(EndpointRule{Addr: rule.toDest, Chain: rule.chain})
		case (rule.target == "REJECT" || rule.target == "DROP") && strings.HasPrefix(rest, "has no "):
			p.Rejects = append(p.Rejects, Reject{Dest: dest, Why: rest, Verdict: rule.target,
				Where: fmt.Sprintf("%s table, chain %s", table, rule.chain), Rule: line})
		case isServiceChain(rule.target):
			p.addChain(rule.target)
			if rule.chain == "KUBE-SERVICES" || rule.chain == "KUBE-NODEPORTS" || rule.chain == "KUBE-EXTERNAL-SERVICES" {
				if dest.Addr.Port() != 0 && !(dest.Kind == "nodePort" && rule.dst().IsValid()) {
					p.addDest(dest)
				}
			}
		}
	}
	r.sort()
	return nil
}

func isServiceChain(c string) bool {
	for _, p := range []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"} {
		if strings.HasPrefix(c, p) {
			return true
		}
	}
	return false
}

func destKind(rule iptRule, rest string) string {
	switch {
	// KUBE-EXTERNAL-SERVICES drops a NodePort without local endpoints by
	// port alone (-m addrtype --dst-type LOCAL).
	case rule.chain == "KUBE-NODEPORTS", rule.chain == "KUBE-EXTERNAL-SERVICES" && !rule.dst().IsValid():
		return "nodePort"
	case strings.HasPrefix(rest, "external IP"):
		return "external IP"
	case strings.HasPrefix(rest, "loadbalancer IP"):
		return "loadbalancer IP"
	}
	return "cluster IP"
}

type iptRule struct {
	chain, proto, comment, target string
	dstNet                        netip.Prefix // -d
	dport                         uint16
	toDest                        netip.AddrPort
	recentCheck                   bool // "-m recent --rcheck"
	recentSeconds                 int
	ctstate                       string // "-m conntrack --ctstate"
}

// dst is the one destination address the rule matches, if it names one.
func (r iptRule) dst() netip.Addr {
	if r.dstNet.IsSingleIP() {
		return r.dstNet.Addr()
	}
	return netip.Addr{}
}

func parseRule(args []string) iptRule {
	r := iptRule{chain: args[1]}
	for i := 2; i < len(args); i++ {
		next := func() string {
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch args[i] {
		case "!":
			i++ // a negated match is never the one that names the destination
		case "-p":
			r.proto = next()
		case "-d":
			r.dstNet, _ = netip.ParsePrefix(next())
		case "--dport":
			if v, err := strconv.ParseUint(next(), 10, 16); err == nil {
				r.dport = uint16(v)
			}
		case "--comment":
			r.comment = next()
		case "-j":
			r.target = next()
		case "--rcheck":
			r.recentCheck = true
		case "--ctstate":
			r.ctstate = next()
		case "--seconds":
			r.recentSeconds, _ = strconv.Atoi(next())
		case "--to-destination":
			r.toDest, _ = netip.ParseAddrPort(next())
		}
	}
	return r
}

// splitArgs splits an iptables-save line into words, honouring the double
// quotes iptables-save puts around comments.
func splitArgs(line string) ([]string, error) {
	// Words are slices of the line; only a quoted word with escapes is
	// copied (a 10,000-Service ruleset has half a million words).
	out := make([]string, 0, 24)
	for i := 0; i < len(line); {
		switch c := line[i]; {
		case c == ' ' || c == '\t':
			i++
		case c == '"':
			j, escaped := i+1, false
			for j < len(line) && line[j] != '"' {
				if line[j] == '\\' && j+1 < len(line) {
					escaped = true
					j++
				}
				j++
			}
			if j >= len(line) {
				return nil, fmt.Errorf("unterminated quote")
			}
			if j+1 < len(line) && line[j+1] != ' ' && line[j+1] != '\t' {
				return splitArgsSlow(line) // a word that is only partly quoted
			}
			w := line[i+1 : j]
			if escaped {
				w = unescape(w)
			}
			out = append(out, w)
			i = j + 1
		default:
			j := i
			for j < len(line) && line[j] != ' ' && line[j] != '\t' {
				if line[j] == '"' {
					return splitArgsSlow(line)
				}
				j++
			}
			out = append(out, line[i:j])
			i = j
		}
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("rule without a chain")
	}
	return out, nil
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitArgsSlow handles any mix of quoted and unquoted parts in a word.
func splitArgsSlow(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			quoted, inWord = !quoted, true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("unterminated quote")
	}
	if inWord {
		out = append(out, cur.String())
	}
	if len(out) < 2 {
		return nil, fmt.Errorf("rule without a chain")
	}
	return out, nil
}
