package kubeproxy

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"github.com/svctrace/svctrace/internal/nf"
	"golang.org/x/sys/unix"
)

// nftDump is what svctrace reads of a node's nf_tables rulesets over
// netlink: chains with their hooks, kube-proxy's verdict maps, and the
// rules of the kube-proxy chains it needs.
type nftDump struct {
	Chains []nftChain
	// Maps are the elements of kube-proxy's verdict maps, by family and map
	// name ("ip/no-endpoint-services").
	Maps map[string][]nftElem
	// Rules are the rules read of kube-proxy's chains, by family and chain
	// ("ip/service-…"): the service and local chains asked for, and
	// cluster-ips-check.
	Rules map[string][]nftRule
	// NodePortIPs are the elements of set nodeport-ips, by family, where
	// kube-proxy has one: the only addresses it accepts NodePorts on.
	NodePortIPs map[string][]netip.Addr
	// Affinity are kube-proxy's affinity sets (sessionAffinity: ClientIP)
	// of the Service ports asked for, by family and set name.
	Affinity map[string]nftAffinity
	// Others are the tables of other writers with filter base chains.
	Others []*NFTTable
}

// nftAffinity is one affinity set: its timeout, and the clients in it with
// the time left before each expires.
type nftAffinity struct {
	Timeout time.Duration
	Clients []netip.Addr
	Expires []time.Duration
}

// nftRule is what svctrace understands of one rule: the verdict map it
// jumps through (kube-proxy's "numgen random mod N vmap { … }" that picks
// an endpoint), or a destination prefix and the verdict for it.
type nftRule struct {
	VMap    []nftElem
	Daddr   netip.Prefix // "ip daddr 10.96.0.0/16"
	Verdict string
	Comment string
}

type nftChain struct {
	Family, Table, Name string
	Hook                *uint32 // nil for a regular chain
	Priority            int32
}

type nftElem struct {
	Key     []byte
	Verdict string // "goto CHAIN", "drop", …
	Comment string
}

// kube-proxy's nftables-mode table, in the ip and ip6 families.
const nftTable = "kube-proxy"

// nodePortIPs is kube-proxy's set of the addresses NodePorts are accepted
// on, when --nodeport-addresses limits them (by default in nftables mode:
// the node's primary addresses). Without it, "fib daddr type local".
const nodePortIPs = "nodeport-ips"

// maps svctrace reads from kube-proxy's table.
var nftMaps = []string{"service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return strconv.Itoa(int(f))
}

// clusterIPsCheck is kube-proxy's chain that rejects wrong ports of known
// ClusterIPs and drops the rest of the service range.
const clusterIPsCheck = "cluster-ips-check"

// readNFT dumps the nf_tables rulesets of the network namespace open as
// netnsFd (-1: the caller's). Rules are read (one netlink dump per chain)
// for cluster-ips-check and for the service and local chains rulesFor
// accepts.
func readNFT(netnsFd int, rulesFor func(PortKey) bool) (*nftDump, error) {
	// One socket for every dump, set up for large messages.
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(largeDumps)}
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, err
	}
	defer c.CloseLasting()
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("listing nftables chains: %w", err)
	}
	d := &nftDump{Maps: map[string][]nftElem{}, Rules: map[string][]nftRule{}, NodePortIPs: map[string][]netip.Addr{},
		Affinity: map[string]nftAffinity{}}
	tables := map[string]*nftables.Table{}
	var ruleChains []*nftables.Chain
	others := map[string][]*nftables.Chain{} // other writers' tables' chains, by family and table
	for _, ch := range chains {
		if other(ch.Table) {
			k := familyName(ch.Table.Family) + " " + ch.Table.Name
			others[k] = append(others[k], ch)
		}
		fam := familyName(ch.Table.Family)
		nc := nftChain{Family: fam, Table: ch.Table.Name, Name: ch.Name}
		if ch.Hooknum != nil {
			h := uint32(*ch.Hooknum)
			nc.Hook = &h
			if ch.Priority != nil {
				nc.Priority = int32(*ch.Priority)
			}
		}
		d.Chains = append(d.Chains, nc)
		if ch.Table.Name != nftTable {
			continue
		}
		tables[fam] = ch.Table
		if ch.Name == clusterIPsCheck {
			ruleChains = append(ruleChains, ch)
		} else if key, ep, ok := parseNFTChain(ch.Name); ok && !ep.IsValid() && rulesFor(key) &&
			(strings.HasPrefix(ch.Name, "service-") || strings.HasPrefix(ch.Name, "local-")) {
			ruleChains = append(ruleChains, ch)
		}
	}
	sets := map[string]*nftables.Set{} // by family and name
	for fam, t := range tables {
		ts, err := c.GetSets(t)
		if err != nil {
			return nil, fmt.Errorf("listing the sets of table %s %s: %w", fam, nftTable, err)
		}
		for _, s := range ts {
			sets[fam+"/"+s.Name] = s
			if s.Name == nodePortIPs {
				ips, _, err := addresses(c, s)
				if err != nil {
					return nil, err
				}
				d.NodePortIPs[fam] = ips // present, even if empty
				continue
			}
			if key, _, ok := parseNFTChain(s.Name); ok && strings.HasPrefix(s.Name, "affinity-") {
				if !rulesFor(key) {
					continue
				}
				a := nftAffinity{Timeout: s.Timeout}
				if a.Clients, a.Expires, err = addresses(c, s); err != nil {
					return nil, err
				}
				d.Affinity[fam+"/"+s.Name] = a
				continue
			}
			if !slices.Contains(nftMaps, s.Name) {
				continue
			}
			elems, err := elements(c, s)
			if err != nil {
				return nil, err
			}
			d.Maps[fam+"/"+s.Name] = elems
		}
	}
	for _, k := range slices.Sorted(maps.Keys(others)) {
		t, err := readOther(c, others[k])
		if err != nil {
			return nil, err
		}
		if t != nil {
			d.Others = append(d.Others, t)
		}
	}
	for _, ch := range ruleChains {
		fam := familyName(ch.Table.Family)
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, fmt.Errorf("listing the rules of chain %s %s %s: %w", fam, nftTable, ch.Name, err)
		}
		for _, r := range rules {
			nr, err := decodeRule(c, fam, sets, r)
			if err != nil {
				return nil, err
			}
			d.Rules[fam+"/"+ch.Name] = append(d.Rules[fam+"/"+ch.Name], nr)
		}
	}
	return d, nil
}

// largeDumps has the kernel fill dump messages on conn up to 32 KiB, not
// one page. Netlink sizes a dump's messages by the largest read the socket
// has made (af_netlink.c: max_recvmsg_len), and the netlink library's
// reads start at a page. nf_tables walks its chains from the first again
// for every message of a dump, so listing 110,000 chains (10,000 Services
// in kube-proxy's nftables mode) takes time with the number of messages
// times the chains. One small request, the ruleset's generation, read
// into a large buffer, sets the size for the socket's life.
func largeDumps(conn *netlink.Conn) error {
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}, // struct nfgenmsg
	}
	if _, err := conn.Send(req); err != nil {
		return fmt.Errorf("asking for the nftables generation: %w", err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		_, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	}); err != nil {
		return err
	}
	if rerr != nil {
		return fmt.Errorf("reading the nftables generation: %w", rerr)
	}
	return nil
}

// iptablesNFT are the tables iptables-nft writes (in families ip and
// ip6): iptables-save reads them, as Table.
var iptablesNFT = []string{"raw", "mangle", "filter", "nat", "security"}

// other reports whether table t is neither kube-proxy's nor
// iptables-nft's, in a family whose hooks Services' packets cross.
func other(t *nftables.Table) bool {
	switch familyName(t.Family) {
	case "inet":
		return true
	case "ip", "ip6":
		return t.Name != nftTable && !slices.Contains(iptablesNFT, t.Name)
	}
	return false
}

// readOther reads one table of another writer, with its rules and the
// sets they look up, if it has a filter base chain on an IP hook; nil if
// it has none.
func readOther(c *nftables.Conn, chains []*nftables.Chain) (*NFTTable, error) {
	t := &NFTTable{Family: familyName(chains[0].Table.Family), Name: chains[0].Table.Name}
	filters := false
	for _, ch := range chains {
		nc := &NFTChain{Name: ch.Name}
		if ch.Hooknum != nil && int(*ch.Hooknum) < len(hookNames) && ch.Type == nftables.ChainTypeFilter {
			h := nf.Hook(*ch.Hooknum)
			nc.Hook, filters = &h, true
			if ch.Priority != nil {
				nc.Priority = int32(*ch.Priority)
			}
			nc.Policy = "accept"
			if ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop {
				nc.Policy = "drop"
			}
		}
		t.Chains = append(t.Chains, nc)
	}
	if !filters {
		return nil, nil
	}
	where := func(what string, err error) error {
		return fmt.Errorf("listing the %s of table %s %s: %w", what, t.Family, t.Name, err)
	}
	used := map[string]bool{}
	for i, ch := range chains {
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			return nil, where("rules", err)
		}
		for _, r := range rules {
			nr := NFTRule{Handle: r.Handle, Ops: compile(r.Exprs)}
			nr.Comment, _ = userdata.GetString(r.UserData, userdata.TypeComment)
			for _, o := range nr.Ops {
				if o.Set != "" {
					used[o.Set] = true
				}
			}
			t.Chains[i].Rules = append(t.Chains[i].Rules, nr)
		}
	}
	if len(used) == 0 {
		return t, nil
	}
	sets, err := c.GetSets(chains[0].Table)
	if err != nil {
		return nil, where("sets", err)
	}
	t.Sets = map[string]*NFTSet{}
	for _, s := range sets {
		if !used[s.Name] {
			continue
		}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, where("elements of set "+s.Name, err)
		}
		ns := &NFTSet{Interval: s.Interval}
		// google/nftables files a verdict map's data type as its key type.
		vmap := s.DataType.Name == "verdict" || s.KeyType.Name == "verdict"
		for _, e := range elems {
			el := NFTElem{Key: e.Key, KeyEnd: e.KeyEnd, End: e.IntervalEnd}
			switch {
			case s.IsMap && vmap:
				el.Verdict = verdict(e)
			case s.IsMap:
				el.Val = e.Val
			}
			ns.Elems = append(ns.Elems, el)
		}
		t.Sets[s.Name] = ns
	}
	return t, nil
}

// addresses lists the addresses in set s, each with the time left before
// it expires (zero in a set without timeouts).
func addresses(c *nftables.Conn, s *nftables.Set) ([]netip.Addr, []time.Duration, error) {
	elems, err := c.GetSetElements(s)
	if err != nil {
		return nil, nil, fmt.Errorf("listing set %s %s %s: %w", familyName(s.Table.Family), nftTable, s.Name, err)
	}
	var ips []netip.Addr
	var expires []time.Duration
	for _, e := range elems {
		if ip, ok := netip.AddrFromSlice(e.Key); ok {
			ips, expires = append(ips, ip), append(expires, e.Expires)
		}
	}
	return ips, expires, nil
}

func elements(c *nftables.Conn, s *nftables.Set) ([]nftElem, error) {
	elems, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("listing map %s %s %s: %w", familyName(s.Table.Family), nftTable, s.Name, err)
	}
	out := make([]nftElem, 0, len(elems))
	for _, e := range elems {
		out = append(out, nftElem{Key: e.Key, Verdict: verdict(e), Comment: e.Comment})
	}
	return out, nil
}

// decodeRule reads the parts of a rule svctrace understands: a lookup in a
// verdict map (anonymous maps are read here), a comparison of the
// destination address with a prefix, the final verdict, the comment.
func decodeRule(c *nftables.Conn, fam string, sets map[string]*nftables.Set, r *nftables.Rule) (nftRule, error) {
	var nr nftRule
	nr.Comment, _ = userdata.GetString(r.UserData, userdata.TypeComment)
	daddr := 16 // offset of the destination address in the network header
	size := 4
	if fam == "ip6" {
		daddr, size = 24, 16
	}
	var loaded, bits int // bytes of the destination address loaded; mask bits
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Payload:
			loaded, bits = 0, -1
			if e.Base == expr.PayloadBaseNetworkHeader && int(e.Offset) == daddr && int(e.Len) <= size {
				loaded, bits = int(e.Len), int(e.Len)*8
			}
		case *expr.Bitwise:
			if loaded > 0 {
				bits = 0
				for _, b := range e.Mask {
					bits += popcount(b)
				}
			}
		case *expr.Cmp:
			if loaded > 0 && e.Op == expr.CmpOpEq && len(e.Data) == loaded {
				a := make([]byte, size)
				copy(a, e.Data)
				if ip, ok := netip.AddrFromSlice(a); ok && bits >= 0 {
					nr.Daddr = netip.PrefixFrom(ip, bits)
				}
			}
			loaded = 0
		case *expr.Lookup:
			s := sets[fam+"/"+e.SetName]
			if !e.IsDestRegSet || s == nil {
				continue
			}
			elems, err := elements(c, s)
			if err != nil {
				return nr, err
			}
			nr.VMap = elems
		case *expr.Verdict:
			nr.Verdict = verdictString(e.Kind, e.Chain)
		case *expr.Reject:
			nr.Verdict = "reject"
		}
	}
	return nr, nil
}

func popcount(b byte) int {
	n := 0
	for ; b != 0; b &= b - 1 {
		n++
	}
	return n
}

// verdict reads a verdict map element's data. google/nftables leaves it
// undecoded in Val: the NFTA_DATA_VERDICT attributes (code, chain).
func verdict(e nftables.SetElement) string {
	if e.VerdictData != nil {
		return verdictString(e.VerdictData.Kind, e.VerdictData.Chain)
	}
	ad, err := netlink.NewAttributeDecoder(e.Val)
	if err != nil {
		return ""
	}
	ad.ByteOrder = binary.BigEndian
	var kind expr.VerdictKind
	var chain string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			kind = expr.VerdictKind(int32(ad.Uint32()))
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil {
		return ""
	}
	return verdictString(kind, chain)
}

func verdictString(kind expr.VerdictKind, chain string) string {
	switch kind {
	case expr.VerdictGoto:
		return "goto " + chain
	case expr.VerdictJump:
		return "jump " + chain
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictAccept:
		return "accept"
	}
	return fmt.Sprintf("verdict %d", kind)
}

// hookNames are the netfilter hooks of the ip, ip6 and inet families.
var hookNames = []string{"prerouting", "input", "forward", "output", "postrouting"}

// fromNFT maps kube-proxy's nftables-mode ruleset to Service ports:
// chains service-<hash>-ns/name/proto/port and endpoint-<hash>-…__IP/PORT
// carry the Service port and endpoint in their names; the verdict maps say
// which destinations lead to them or to reject-chain.
func (r *Ruleset) fromNFT(d *nftDump) {
	r.NFT = d.Others
	for _, ch := range d.Chains {
		if ch.Hook != nil && int(*ch.Hook) < len(hookNames) && (ch.Family == "ip" || ch.Family == "ip6" || ch.Family == "inet") {
			r.BaseChains = append(r.BaseChains, BaseChain{Family: ch.Family, Table: ch.Table, Chain: ch.Name,
				Hook: hookNames[*ch.Hook], Priority: ch.Priority})
		}
		if ch.Table != nftTable {
			continue
		}
		key, ep, ok := parseNFTChain(ch.Name)
		if !ok {
			continue
		}
		p := r.port(key)
		p.addChain(ch.Name)
		if ep.IsValid() {
			p.addEndpoint(EndpointRule{Addr: ep, Chain: ch.Name})
		}
	}
	for _, fam := range []string{"ip", "ip6"} {
		ips, ok := d.NodePortIPs[fam]
		if !ok {
			continue
		}
		if len(ips) == 0 {
			// No address of this family accepts NodePorts: a prefix no
			// address is in says so.
			ips = append(ips, netip.IPv4Unspecified())
			if fam == "ip6" {
				ips[0] = netip.IPv6Unspecified()
			}
		}
		for _, a := range ips {
			r.NodePortAddrs = append(r.NodePortAddrs, netip.PrefixFrom(a, a.BitLen()))
		}
		r.NodePortWhere = appendWhere(r.NodePortWhere, fmt.Sprintf("table %s %s, set %s", fam, nftTable, nodePortIPs))
	}
	for name, a := range d.Affinity {
		fam, set, _ := strings.Cut(name, "/")
		key, ep, ok := parseNFTChain(set)
		if !ok || !ep.IsValid() {
			continue
		}
		p := r.port(key)
		p.AffinityTimeout = a.Timeout
		for i, c := range a.Clients {
			p.Affinity = append(p.Affinity, Affinity{Client: c, Endpoint: ep, Idle: a.Timeout - a.Expires[i],
				Where: fmt.Sprintf("table %s %s, set %s", fam, nftTable, set)})
		}
	}
	for name, elems := range d.Maps {
		fam, m, _ := strings.Cut(name, "/")
		for _, e := range elems {
			dest, proto, ok := decodeMapKey(fam, m, e.Key)
			if !ok {
				continue
			}
			switch m {
			case "service-ips", "service-nodeports":
				target, ok := strings.CutPrefix(e.Verdict, "goto ")
				if !ok {
					target, ok = strings.CutPrefix(e.Verdict, "jump ")
				}
				key, _, valid := parseNFTChain(target)
				if !ok || !valid || key.Proto != proto {
					continue
				}
				p := r.port(key)
				p.addChain(target)
				p.addDest(dest)
			case "no-endpoint-services", "no-endpoint-nodeports":
				// The element comment is the Service port name.
				key := PortKey{Name: e.Comment, Proto: proto}
				if key.Name == "" {
					continue
				}
				why := "has no endpoints"
				verdict := "REJECT"
				if strings.Contains(e.Verdict, "drop") {
					// kube-proxy drops (rather than rejects) where only
					// local endpoints count and there is none.
					why, verdict = "has no local endpoints", "DROP"
				}
				r.port(key).Rejects = append(r.port(key).Rejects, Reject{Dest: dest, Why: why, Verdict: verdict,
					Where: fmt.Sprintf("table %s %s, map %s", fam, nftTable, m),
					Rule:  fmt.Sprintf("%s comment %q : %s", dest.Addr, e.Comment, e.Verdict)})
			}
		}
	}
	// Where a service or local chain was read, its endpoint map says which
	// endpoint chains are DNAT targets: endpoint chains nothing jumps to
	// (left for garbage collection) are not.
	picked := map[PortKey][]EndpointRule{}
	for name, rules := range d.Rules {
		fam, chain, _ := strings.Cut(name, "/")
		if chain == clusterIPsCheck {
			for _, nr := range rules {
				if nr.Daddr.IsValid() && nr.Verdict == "drop" {
					r.RangeDrops = append(r.RangeDrops, RangeDrop{Prefix: nr.Daddr, Why: nr.Comment,
						Where: fmt.Sprintf("table %s %s, chain %s", fam, nftTable, chain)})
				}
			}
			continue
		}
		key, _, ok := parseNFTChain(chain)
		if !ok {
			continue
		}
		eps := picked[key]
		for _, nr := range rules {
			for _, e := range nr.VMap {
				target, _ := strings.CutPrefix(e.Verdict, "goto ")
				if _, ep, ok := parseNFTChain(target); ok && ep.IsValid() && !slices.ContainsFunc(eps, func(x EndpointRule) bool { return x.Addr == ep }) {
					eps = append(eps, EndpointRule{Addr: ep, Chain: target})
				}
			}
		}
		picked[key] = eps
	}
	for key, eps := range picked {
		r.port(key).Endpoints = eps
	}
	r.sort()
}

func appendWhere(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// parseNFTChain reads kube-proxy's nftables chain names:
// "service-2QRHZV4L-default/kubernetes/tcp/https" and
// "endpoint-ZIPUHSU7-default/kubernetes/tcp/https__10.99.3.1/6443" (also
// external-, local- and firewall- chains of a Service port, and the
// affinity- sets of an endpoint; an IPv6 endpoint is "…__fd00.10.244..1a/8080").
func parseNFTChain(name string) (PortKey, netip.AddrPort, bool) {
	kind, rest, ok := strings.Cut(name, "-")
	if !ok || !slices.Contains([]string{"service", "endpoint", "external", "local", "firewall", "affinity"}, kind) {
		return PortKey{}, netip.AddrPort{}, false
	}
	_, rest, ok = strings.Cut(rest, "-") // the hash
	if !ok {
		return PortKey{}, netip.AddrPort{}, false
	}
	base, epPart, hasEP := strings.Cut(rest, "__")
	parts := strings.Split(base, "/")
	if len(parts) != 4 || (kind == "endpoint" || kind == "affinity") != hasEP {
		return PortKey{}, netip.AddrPort{}, false
	}
	key := PortKey{Name: parts[0] + "/" + parts[1], Proto: parts[2]}
	if parts[3] != "" {
		key.Name += ":" + parts[3]
	}
	var ep netip.AddrPort
	if hasEP {
		i := strings.LastIndex(epPart, "/")
		if i < 0 {
			return PortKey{}, netip.AddrPort{}, false
		}
		a, err1 := netip.ParseAddr(epPart[:i])
		if err1 != nil {
			// An IPv6 address, with its colons (not allowed in a chain
			// name) written as dots: "fd00.10.244..1a".
			a, err1 = netip.ParseAddr(strings.ReplaceAll(epPart[:i], ".", ":"))
		}
		port, err2 := strconv.ParseUint(epPart[i+1:], 10, 16)
		if err1 != nil || err2 != nil {
			return PortKey{}, netip.AddrPort{}, false
		}
		ep = netip.AddrPortFrom(a, uint16(port))
	}
	return key, ep, true
}

// decodeMapKey reads the concatenated keys of kube-proxy's maps: "ipv4_addr
// . inet_proto . inet_service" (service maps) or "inet_proto .
// inet_service" (nodeport maps). Each field takes a multiple of 4 bytes.
func decodeMapKey(fam, m string, k []byte) (Dest, string, bool) {
	var addr netip.Addr
	if !strings.Contains(m, "nodeports") {
		n := 4
		if fam == "ip6" {
			n = 16
		}
		if len(k) < n {
			return Dest{}, "", false
		}
		addr, _ = netip.AddrFromSlice(k[:n])
		k = k[n:]
	}
	if len(k) < 6 {
		return Dest{}, "", false
	}
	proto := ""
	switch k[0] {
	case 6:
		proto = "tcp"
	case 17:
		proto = "udp"
	case 132:
		proto = "sctp"
	default:
		return Dest{}, "", false
	}
	port := binary.BigEndian.Uint16(k[4:6])
	kind := "cluster IP"
	if !addr.IsValid() {
		kind = "nodePort"
	}
	return Dest{Addr: netip.AddrPortFrom(addr, port), Kind: kind}, proto, true
}
