package kubeproxy

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
)

// otherRuleset is a policy engine's table (jumps, an interval set, a
// verdict map, a comment), another writer's input chain, and a table with
// iptables-nft's name, which iptables-save reads instead.
const otherRuleset = `
table inet e2e-fw {
	set blocked { type ipv4_addr; flags interval; elements = { 10.244.0.0/24, 10.250.1.5 } }
	map ports { type inet_service : verdict; elements = { 8080 : jump pods, 9090 : drop } }
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related accept
		ip daddr 10.244.0.0/16 jump pods
		tcp dport vmap @ports
	}
	chain pods {
		iifname "lo" accept
		ip daddr @blocked tcp dport 8080 counter drop comment "shop/deny-walled"
		ip6 daddr fd00::/64 reject
	}
}
table ip guard {
	chain in { type filter hook input priority 10; policy drop; }
}
table ip filter {
	chain FORWARD { type filter hook forward priority 0; policy drop; }
}
`

var otherCases = []struct {
	name   string
	hook   nf.Hook
	p      Packet
	target string
	chain  string
	pos    int
	rule   string // a part of the deciding rule's text
	path   string
	match  []string
	unsure int
}{
	{name: "blocked endpoint", hook: nf.Forward, target: "DROP", chain: "pods", pos: 2,
		p:     Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.244.0.12"), Proto: nf.TCP, Sport: 40000, Dport: 8080, In: "client0", Out: "cbr0", CTState: "NEW"},
		rule:  `ip daddr @blocked tcp dport 8080 counter drop comment "shop/deny-walled" # handle `,
		path:  "forward 2 → pods (ip daddr 10.244.0.0/16)",
		match: []string{"ip daddr @blocked", "tcp dport 8080"}},
	{name: "established", hook: nf.Forward, target: "ACCEPT", chain: "forward", pos: 1,
		p:    Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.244.0.12"), Proto: nf.TCP, Sport: 40000, Dport: 8080, In: "client0", CTState: "ESTABLISHED"},
		rule: "ct state established,related accept"},
	{name: "other port of a blocked address", hook: nf.Forward, target: "ACCEPT", chain: "forward", pos: 0,
		p: Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.244.0.12"), Proto: nf.UDP, Sport: 40000, Dport: 53, In: "client0", CTState: "NEW"}},
	{name: "verdict map", hook: nf.Forward, target: "DROP", chain: "forward", pos: 3,
		p:    Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.1.1.1"), Proto: nf.TCP, Sport: 40000, Dport: 9090, In: "client0", CTState: "NEW"},
		rule: "tcp dport vmap @ports", match: []string{"tcp dport vmap @ports"}},
	{name: "interval end", hook: nf.Forward, target: "ACCEPT", chain: "forward", pos: 0,
		p: Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.244.1.1"), Proto: nf.TCP, Sport: 40000, Dport: 80, In: "client0", CTState: "NEW"}},
	// Without the conntrack state the first rule cannot be evaluated: it
	// may have accepted instead.
	{name: "unknown state", hook: nf.Forward, target: "DROP", chain: "pods", pos: 2, unsure: 1,
		p:    Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.250.1.5"), Proto: nf.TCP, Sport: 40000, Dport: 8080, In: "client0"},
		rule: "ip daddr @blocked"},
	{name: "ipv6 reject", hook: nf.Forward, target: "REJECT", chain: "pods", pos: 3,
		p:    Packet{Src: netip.MustParseAddr("fd00:1::2"), Dst: netip.MustParseAddr("fd00::12"), Proto: nf.TCP, Sport: 40000, Dport: 8080, In: "client0", CTState: "NEW"},
		rule: "ip6 daddr fd00::/64 reject"},
	{name: "policy", hook: nf.LocalIn, target: "DROP", chain: "in", pos: 0,
		p: Packet{Src: netip.MustParseAddr("10.99.0.2"), Dst: netip.MustParseAddr("10.99.0.1"), Proto: nf.TCP, Sport: 40000, Dport: 22, In: "client0", CTState: "NEW"}},
}

// checkOther traces the cases through tables read from otherRuleset.
func checkOther(t *testing.T, tables []*NFTTable) {
	t.Helper()
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Family+" "+tb.Name)
	}
	if !slices.Equal(names, []string{"inet e2e-fw", "ip guard"}) {
		t.Fatalf("tables %v, want inet e2e-fw and ip guard (ip filter is iptables-nft's name)", names)
	}
	for _, c := range otherCases {
		t.Run(c.name, func(t *testing.T) {
			fam := "ip"
			if c.p.Dst.Is6() {
				fam = "ip6"
			}
			var v Verdict
			found := false
			for _, tb := range tables {
				if !tb.Covers(fam) {
					continue
				}
				for _, base := range tb.BaseChains(c.hook, -1000, 1000) {
					v, found = tb.Trace(base, c.p), true
					if v.Target != "ACCEPT" {
						break
					}
				}
			}
			if !found {
				t.Fatal("no base chain")
			}
			if v.Target != c.target || v.Chain != c.chain || v.Pos != c.pos || !strings.Contains(v.Rule, c.rule) {
				t.Fatalf("%s in chain %s rule %d (%s), want %s in %s rule %d (%s)", v.Target, v.Chain, v.Pos, v.Rule, c.target, c.chain, c.pos, c.rule)
			}
			if c.path != "" && strings.Join(v.Path, "; ") != c.path {
				t.Errorf("path %q, want %q", v.Path, c.path)
			}
			if c.match != nil && !slices.Equal(v.Matched, c.match) {
				t.Errorf("matched %q, want %q", v.Matched, c.match)
			}
			if len(v.Unsure) != c.unsure {
				t.Errorf("unsure %q, want %d", v.Unsure, c.unsure)
			}
		})
	}
	if v := (Verdict{Rule: `ip daddr @blocked tcp dport 8080 counter drop comment "shop/deny-walled" # handle 5`}); v.Comment() != "shop/deny-walled" {
		t.Errorf("comment %q", v.Comment())
	}
}

// The kernel's own compilation of otherRuleset, read over netlink, traced;
// the read is kept in testdata for TestNFTTraceRecorded.
func TestNFTTraceKernel(t *testing.T) {
	name := testutil.NewNetNS(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("no nft tool to load the test ruleset")
	}
	cmd := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(otherRuleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	ns, err := nf.ResolveNetNS(name)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Read(ns)
	if err != nil {
		t.Fatal(err)
	}
	checkOther(t, r.NFT)
	if os.Getenv("SVCTRACE_UPDATE") != "" {
		b, _ := json.MarshalIndent(r.NFT, "", "\t")
		if err := os.WriteFile(filepath.Join("testdata", "nft-other", "tables.json"), append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The same cases, without root, on the tables TestNFTTraceKernel read.
func TestNFTTraceRecorded(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "nft-other", "tables.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tables []*NFTTable
	if err := json.Unmarshal(b, &tables); err != nil {
		t.Fatal(err)
	}
	checkOther(t, tables)
}

// Set lookups as the kernel's set backends answer them: exact keys,
// intervals whose end element is the first key past the range, and
// concatenated ranges with an inclusive end.
func TestNFTSetFind(t *testing.T) {
	exact := &NFTSet{Elems: []NFTElem{{Key: []byte{0, 80}}, {Key: []byte{0x1f, 0x90}}}}
	interval := &NFTSet{Interval: true, Elems: []NFTElem{{Key: []byte{10, 0, 0, 0}}, {Key: []byte{10, 1, 0, 0}, End: true},
		{Key: []byte{10, 9, 0, 5}}, {Key: []byte{10, 9, 0, 6}, End: true}, {Key: []byte{0, 0, 0, 0}, End: true}}}
	concat := &NFTSet{Interval: true, Elems: []NFTElem{{Key: []byte{10, 0, 0, 0, 0, 0, 0x1f, 0x90}, KeyEnd: []byte{10, 0, 0, 255, 0, 0, 0x1f, 0x90}}}}
	for _, c := range []struct {
		s    *NFTSet
		key  []byte
		want bool
	}{
		{exact, []byte{0x1f, 0x90}, true}, {exact, []byte{0x1f, 0x91}, false},
		{interval, []byte{10, 0, 200, 1}, true}, {interval, []byte{10, 1, 0, 0}, false}, {interval, []byte{9, 255, 255, 255}, false},
		{interval, []byte{10, 9, 0, 5}, true}, {interval, []byte{10, 9, 0, 6}, false},
		{concat, []byte{10, 0, 0, 7, 0, 0, 0x1f, 0x90}, true}, {concat, []byte{10, 0, 1, 7, 0, 0, 0x1f, 0x90}, false},
	} {
		if got := c.s.find(c.key) != nil; got != c.want {
			t.Errorf("find(%v) = %v, want %v", c.key, got, c.want)
		}
	}
	for mask, want := range map[string]int{"\xff\xff\xf0\x00": 20, "\xff\x00\xff\x00": -1, "\x00\x00": 0} {
		if got := ones([]byte(mask)); got != want {
			t.Errorf("ones(%x) = %d, want %d", mask, got, want)
		}
	}
}
