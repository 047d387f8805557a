package kubeproxy

import (
	"bufio"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// kube-proxy remembers sessionAffinity: ClientIP per endpoint: in iptables
// mode in an xt_recent list named after the endpoint's KUBE-SEP chain
// ("-m recent --set"), in nftables mode in a set
// affinity-<hash>-<port>__<endpoint> ("update @affinity-… { ip saddr }").

// readRecent reads the xt_recent lists of the ports with affinity. It runs
// on a thread inside the node's network namespace: /proc/thread-self/net
// is that namespace's (/proc/self/net is the main thread's).
func (r *Ruleset) readRecent() {
	var now uint64
	hz := -1 // not read yet: /proc/timer_list is large on big machines
	for _, p := range r.Ports {
		if p.AffinityTimeout == 0 {
			continue
		}
		if hz < 0 {
			now, hz = jiffies()
		}
		for _, e := range p.Endpoints {
			if !strings.HasPrefix(e.Chain, "KUBE-SEP-") {
				continue
			}
			f, err := os.Open(filepath.Join("/proc/thread-self/net/xt_recent", e.Chain))
			if err != nil {
				continue // no client yet: kube-proxy's rule creates the list
			}
			for _, l := range parseRecent(f) {
				a := Affinity{Client: l.src, Endpoint: e.Addr, Idle: -1, Where: "recent list " + e.Chain}
				if hz > 0 && now >= l.lastSeen {
					a.Idle = time.Duration(float64(now-l.lastSeen) / float64(hz) * float64(time.Second)).Round(time.Millisecond)
				}
				p.Affinity = append(p.Affinity, a)
			}
			f.Close()
		}
	}
}

type recentEntry struct {
	src      netip.Addr
	lastSeen uint64 // jiffies
}

// parseRecent reads /proc/net/xt_recent/NAME: one line per address,
// "src=10.99.0.2 ttl: 64 last_seen: 4299947581 oldest_pkt: 1 4299947581".
func parseRecent(f *os.File) []recentEntry {
	var out []recentEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		var e recentEntry
		for i, w := range fields {
			if a, ok := strings.CutPrefix(w, "src="); ok {
				e.src, _ = netip.ParseAddr(a)
			}
			if w == "last_seen:" && i+1 < len(fields) {
				e.lastSeen, _ = strconv.ParseUint(fields[i+1], 10, 64)
			}
		}
		if e.src.IsValid() {
			out = append(out, e)
		}
	}
	return out
}

// jiffies returns the kernel's tick count and its rate (CONFIG_HZ), which
// the kernel does not publish: jiffies start 300 s worth of ticks before
// 2^32 (INITIAL_JIFFIES), so the rate follows from the uptime. Zero rate:
// unknown (/proc/timer_list needs root; a young machine).
func jiffies() (now uint64, hz int) {
	b, err := os.ReadFile("/proc/timer_list")
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "jiffies: "); ok {
			now, _ = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			break
		}
	}
	u, err := os.ReadFile("/proc/uptime")
	if err != nil || now == 0 {
		return 0, 0
	}
	var up float64
	if _, err := fmt.Sscan(string(u), &up); err != nil {
		return 0, 0
	}
	return now, hzFrom(now, up)
}

// hzFrom is the tick rate, of those Linux offers, that explains jiffies
// after uptime seconds; 0 when none does.
func hzFrom(jiffies uint64, uptime float64) int {
	for _, hz := range []int{100, 250, 300, 1000} {
		expect := float64(uint64(1)<<32) - 300*float64(hz) + uptime*float64(hz)
		if math.Abs(float64(jiffies)-expect) < 2*float64(hz) {
			return hz
		}
	}
	return 0
}

// Pin is the endpoint kube-proxy pins client to for port p, if it
// remembers one.
func (p *PortRules) Pin(client netip.Addr) *Affinity {
	if p == nil {
		return nil
	}
	for i, a := range p.Affinity {
		if a.Client == client {
			return &p.Affinity[i]
		}
	}
	return nil
}
