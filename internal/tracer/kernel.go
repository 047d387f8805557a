package tracer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/cilium/ebpf/btf"
)

// Kallsyms symbolises kernel addresses from /proc/kallsyms. Drops come from a
// handful of places, so instead of holding the whole table (120k symbols) it
// scans the file once per new address and caches the answer.
type Kallsyms struct {
	path  string
	mu    sync.Mutex
	cache map[uint64]string
}

// NewKallsyms reads symbols from path (normally /proc/kallsyms).
func NewKallsyms(path string) *Kallsyms {
	return &Kallsyms{path: path, cache: map[uint64]string{}}
}

func (k *Kallsyms) Symbolize(addr uint64) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if s, ok := k.cache[addr]; ok {
		return s
	}
	s := fmt.Sprintf("%#x", addr)
	if f, err := os.Open(k.path); err == nil {
		if sym, ok := nearestSymbol(f, addr); ok {
			s = sym
		}
		f.Close()
	}
	k.cache[addr] = s
	return s
}

// nearestSymbol finds the text symbol with the highest address <= addr in
// kallsyms format ("ffffffff81000000 T _stext [module]").
func nearestSymbol(r io.Reader, addr uint64) (string, bool) {
	var best uint64
	var name string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Bytes()
		sp := bytes.IndexByte(line, ' ')
		if sp <= 0 || len(line) < sp+4 {
			continue
		}
		if t := line[sp+1]; t != 't' && t != 'T' {
			continue
		}
		a, err := strconv.ParseUint(string(line[:sp]), 16, 64)
		if err != nil || a == 0 || a > addr || a < best {
			continue
		}
		best = a
		rest := line[sp+3:]
		if i := bytes.IndexAny(rest, " \t"); i >= 0 {
			rest = rest[:i]
		}
		name = string(rest)
	}
	if name == "" {
		return "", false
	}
	return fmt.Sprintf("%s+%#x", name, addr-best), true
}

// ignoredReason is the kernel's number for QUEUE_PURGE, the drops the
// kernel side leaves out: a queue emptied as its socket or device goes away
// holds no packet in flight, and every closed connection makes one. ~0:
// the kernel has no such reason.
func ignoredReason(reasons map[uint32]string) uint32 {
	for code, name := range reasons {
		if name == "QUEUE_PURGE" {
			return code
		}
	}
	return ^uint32(0)
}

// dropReasons maps enum skb_drop_reason values to names without the
// SKB_DROP_REASON_ prefix. The numbering differs between kernels, so it comes
// from the running kernel: its BTF, else the tracepoint's format file.
func dropReasons(cache *btf.Cache) map[uint32]string {
	if spec, err := cache.Kernel(); err == nil {
		var e *btf.Enum
		if err := spec.TypeByName("skb_drop_reason", &e); err == nil {
			m := make(map[uint32]string, len(e.Values))
			for _, v := range e.Values {
				m[uint32(v.Value)] = strings.TrimPrefix(v.Name, "SKB_DROP_REASON_")
			}
			return m
		}
	}
	for _, dir := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if b, err := os.ReadFile(dir + "/events/skb/kfree_skb/format"); err == nil {
			return reasonsFromFormat(string(b))
		}
	}
	return map[uint32]string{}
}

var symbolicRE = regexp.MustCompile(`\{ (\d+), "([A-Z0-9_]+)" \}`)

// reasonsFromFormat reads the __print_symbolic table of the kfree_skb
// tracepoint's format file.
func reasonsFromFormat(format string) map[uint32]string {
	m := map[uint32]string{}
	for _, sm := range symbolicRE.FindAllStringSubmatch(format, -1) {
		if v, err := strconv.ParseUint(sm[1], 10, 32); err == nil {
			m[uint32(v)] = sm[2]
		}
	}
	return m
}
