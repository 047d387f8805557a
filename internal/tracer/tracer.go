// Package tracer loads svctrace's BPF programs, attaches them in a network
// namespace, keeps the in-kernel filter up to date and decodes what the
// kernel reports into Events. It knows nothing about Kubernetes.
package tracer

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/svctrace/svctrace/internal/nf"
	"golang.org/x/sys/unix"
)

// DefaultMaxTargets is the filter's size unless Options.MaxTargets asks
// for more.
const DefaultMaxTargets = 4096

// Options configure Open.
type Options struct {
	// NetNS is where the netfilter observers are attached: a name under
	// /run/netns, a path, or a PID. Empty: svctrace's own namespace.
	NetNS   string
	Targets []nf.Target
	// Backend forces a backend (BackendNetfilter, BackendFentry,
	// BackendKprobe); empty: the first that works here.
	Backend string
	// Snaplen is how many bytes of each packet events carry (Event.Data),
	// at most MaxSnaplen; 0: its IP and transport headers, no payload.
	Snaplen int
	// NoData: events carry no packet bytes at all (Event.Data is nil),
	// for a trace that neither records nor writes packets.
	NoData bool
	// DNSQuestions: events of packets to and from a target's port 53 (UDP
	// or TCP) carry the DNS header and first question after the packet's
	// headers, whatever NoData says; the rest of the payload is dropped
	// as events are read (but for Snaplen's bytes). Each DNS message
	// of a followed connection is reported, at one observer past the
	// first each way.
	DNSQuestions bool
	// EveryPacket reports every packet at every observer. By default a
	// connection's packets are reported in full until QuietAfter went each
	// way, then only notable ones (SYN, RST, ICMP, new or related conntrack
	// states; a FIN at one observer) and the rest counted (KindCount
	// events): ten events per packet of a busy connection would cost more
	// than its traffic.
	EveryPacket bool
	// CountEvery is how often the counts of a busy connection's unreported
	// packets are reported; 0: 250ms. It keeps a quiet connection from
	// looking idle: CountEveryFor gives it for a no-reply timeout.
	CountEvery time.Duration
	// MaxTargets is how many addresses the filter can hold (Targets and
	// every SetTargets); 0: DefaultMaxTargets. The kernel allocates the
	// default size whole, a larger one as addresses are added.
	MaxTargets int
	// Hold keeps each new connection's reports in the kernel until it is
	// answered or Hold passes (svctrace -A): a connection answered in
	// time is only counted (Answered), never reported, unless it comes to
	// grief later (then a KindSettled event, and it is reported from
	// there on). One not answered in time is reported as without Hold,
	// up to Hold late: its held paths come out when a packet of it
	// follows, or the reader takes them (ReadRecord, every Hold/4). Only
	// the netfilter backend holds; 0: no holding.
	Hold time.Duration
	// Logf, if set, receives progress and verifier details (--verbose).
	Logf func(format string, args ...any)

	// dropPrograms overrides the order in which the drop observers are
	// tried (tests use it to exercise the fallback).
	dropPrograms []string
}

// Info describes what Open set up.
type Info struct {
	Backend string // one of Backends
	NetNS   nf.NetNS
	Links   int    // netfilter observers, or function probes, attached
	Drops   string // program watching drops, "" if none could be attached
	// Functions are the kernel functions probed (function backends), and
	// Skipped those that could not be, each with why.
	Functions []string
	Skipped   []string
	// Shifted lists observers attached away from their stage's priority
	// because another hook held it, e.g. "ipv6 INPUT/last at 2147483645".
	Shifted []string
	// Overlays are the namespace's VXLAN devices whose packets are
	// followed by the packets they carry: "flannel.1 (VXLAN, UDP 8472)".
	Overlays []string
}

// CountEveryFor is Options.CountEvery for a no-reply timeout: often enough
// that a busy connection never looks idle for that long.
func CountEveryFor(timeout time.Duration) time.Duration {
	return min(defaultCountEvery, timeout/4)
}

// defaultCountEvery is Options.CountEvery's default.
const defaultCountEvery = 250 * time.Millisecond

// QuietAfter is how many packets each way of a connection are reported
// in full before the event budget applies (Options.EveryPacket).
const QuietAfter = 1

// MaxSnaplen is the most of each packet an event carries (nf.MaxSnaplen,
// which the tests hold to the kernel side's).
const MaxSnaplen = nf.MaxSnaplen

// ErrClosed is returned by Read after Close.
var ErrClosed = nf.ErrClosed

// ErrNoBTF: the kernel has no BTF, which every backend needs (the programs
// adapt to the running kernel's structures through it: CO-RE).
var ErrNoBTF = errors.New("this kernel has no BTF type information (no /sys/kernel/btf/vmlinux: built without CONFIG_DEBUG_INFO_BTF), " +
	"which svctrace's programs need to adapt to it; use a kernel with BTF, as every major distribution's since 2021")

// Tracer is a loaded and attached set of observers.
type Tracer struct {
	info    Info
	coll    *ebpf.Collection   // the maps
	loaded  []*ebpf.Collection // the programs, sharing coll's maps: observers or function probes, and the drop program
	progs   map[string]*ebpf.Program
	links   []link.Link
	reader  *ringbuf.Reader
	dec     decoder
	rec     ringbuf.Record // the last record ReadRecord took
	targets map[nf.Target]bool
	// maxTargets is the filter's size (Options.MaxTargets).
	maxTargets int
	gen        uint32 // of targets: bpf's targets_gen
	// hold is Options.Hold; swept is when the reader last took the paths
	// held longer (nf.Now), unheld that Unhold was called.
	hold   time.Duration
	swept  uint64
	unheld atomic.Bool
	taken  atomic.Uint64 // connections the reader took
	// heldPath is room for a path the reader takes.
	heldPath bpfPacketPath
	bad      atomic.Uint64
	records  atomic.Uint64 // see Stats
	events   atomic.Uint64
	close    sync.Once
}

// Open loads the BPF objects, attaches the observers in opts.NetNS (or, with
// a function backend, probes that keep to it) and the drop tracepoint, and
// fills the filter with opts.Targets. Close undoes it all; so does the
// process exiting, since nothing is pinned.
func Open(opts Options) (_ *Tracer, err error) {
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ns, err := nf.ResolveNetNS(opts.NetNS)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, permissionHint(fmt.Errorf("raising the memlock limit: %w", err))
	}
	backends, err := candidates(opts.Backend)
	if err != nil {
		return nil, err
	}
	p := prepared()
	if p.btfErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoBTF, p.btfErr)
	}
	if p.specErr != nil {
		return nil, p.specErr
	}
	spec, cache := p.spec, p.cache
	// Backends in order of preference: one whose program type works may
	// still lack what it needs (say, module functions without BTF).
	var last error
	for _, backend := range backends {
		if err := usable(backend, opts.Backend != ""); err != nil {
			if opts.Backend != "" {
				return nil, permissionHint(err)
			}
			continue
		}
		if last != nil {
			logf("%v; trying %s", last, backend)
		}
		t, err := open(backend, ns, spec.Copy(), cache, opts, logf)
		if err == nil {
			return t, nil
		}
		last = err
	}
	return nil, cmp.Or(last, errNoBackend)
}

// preparation is what every Open needs first: svctrace's BPF object
// parsed and the kernel's BTF decoded (one copy serves CO-RE for every
// program and the drop reasons' names).
type preparation struct {
	done    chan struct{}
	spec    *ebpf.CollectionSpec
	cache   *btf.Cache
	specErr error
	btfErr  error
}

var (
	prepMu  sync.Mutex
	pending *preparation // started by Prepare, not yet taken by Open
)

// Prepare starts what Open needs first, in the background: a command that
// reads objects and rules before it traces does so meanwhile. The next Open
// takes it (and it is garbage once Open is done: tens of MB of decoded BTF).
func Prepare() {
	prepMu.Lock()
	defer prepMu.Unlock()
	if pending == nil {
		pending = prepare()
	}
}

func prepare() *preparation {
	p := &preparation{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		// The object is parsed while the kernel's BTF is decoded.
		parsed := make(chan struct{})
		go func() {
			defer close(parsed)
			p.spec, p.specErr = loadBpf()
		}()
		p.cache = btf.NewCache()
		_, p.btfErr = p.cache.Kernel()
		<-parsed
	}()
	return p
}

// prepared takes what Prepare started, or starts it, and waits for it.
func prepared() *preparation {
	prepMu.Lock()
	p := pending
	pending = nil
	prepMu.Unlock()
	if p == nil {
		p = prepare()
	}
	<-p.done
	return p
}

func open(backend string, ns nf.NetNS, spec *ebpf.CollectionSpec, cache *btf.Cache, opts Options, logf func(string, ...any)) (_ *Tracer, err error) {
	t := &Tracer{info: Info{Backend: backend, NetNS: ns}, targets: map[nf.Target]bool{}}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()

	if opts.Snaplen < 0 || opts.Snaplen > MaxSnaplen {
		return nil, fmt.Errorf("snaplen %d: want 0 (headers only) to %d", opts.Snaplen, MaxSnaplen)
	}
	quietAfter, countEvery := uint32(QuietAfter), cmp.Or(opts.CountEvery, defaultCountEvery)
	if opts.EveryPacket {
		quietAfter = math.MaxUint32
	}
	captureData := uint8(1)
	if opts.NoData {
		captureData = 0
	}
	dnsQuestions := uint8(0)
	if opts.DNSQuestions {
		dnsQuestions = 1
	}
	reasons := dropReasons(cache)
	var ports [2]uint16 // network order
	for _, o := range overlays(ns) {
		if i := slices.IndexFunc(ports[:], func(p uint16) bool { return p == 0 || p == htons(o.port) }); i >= 0 {
			ports[i] = htons(o.port)
			t.info.Overlays = append(t.info.Overlays, fmt.Sprintf("%s (VXLAN, UDP %d)", o.name, o.port))
		}
	}
	vars := map[string]any{"snaplen": uint32(opts.Snaplen), "quiet_after": quietAfter, "count_every_ns": uint64(countEvery),
		"capture_data": captureData, "dns_questions": dnsQuestions, "ignored_reason": ignoredReason(reasons),
		"overlay_ports": ports}
	if backend != BackendNetfilter {
		// Function probes see every namespace: keep to this one.
		vars["filter_netns"] = ns.Inode
	}
	for name, v := range vars {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
	}
	t.maxTargets = max(opts.MaxTargets, DefaultMaxTargets)
	if len(opts.Targets) > t.maxTargets {
		return nil, fmt.Errorf("%d addresses to trace: the filter holds at most %d", len(opts.Targets), t.maxTargets)
	}
	spec.Maps[bpfMapTargets].MaxEntries, spec.Maps[bpfMapTargets].Flags = uint32(t.maxTargets), 0
	if t.maxTargets > DefaultMaxTargets {
		// A large filter takes kernel memory for the addresses it holds,
		// not for all it could: -A's room to grow costs nothing until used.
		spec.Maps[bpfMapTargets].Flags = unix.BPF_F_NO_PREALLOC
	}
	if opts.Hold > 0 && backend == BackendNetfilter {
		// Room for the connections opening at once (a path each, at
		// most HELD_PATHS) and for the destinations of those answered;
		// without room a connection is reported, not held.
		t.hold = opts.Hold
		spec.Maps[bpfMapHeld].MaxEntries = heldPaths
		spec.Maps[bpfMapAnswered].MaxEntries = uint32(min(t.maxTargets, answeredDsts))
		spec.Maps[bpfMapSettledTuples].MaxEntries = settledConns
		for name, v := range map[string]any{"hold_ns": uint64(opts.Hold), "holding": uint8(1)} {
			if err := spec.Variables[name].Set(v); err != nil {
				return nil, fmt.Errorf("setting %s: %w", name, err)
			}
		}
	}
	// The maps alone; the programs are loaded against them.
	if t.coll, err = newCollection(only(spec), nil, cache, logf); err != nil {
		return nil, permissionHint(fmt.Errorf("loading the %s backend: %w", backend, err))
	}

	// The kernel verifies each program as it is loaded, which is most of
	// svctrace's start-up: the drop program and the observers load side
	// by side, one program each.
	drops := opts.dropPrograms
	if drops == nil {
		drops = []string{bpfProgKfreeSkbBtf, bpfProgKfreeSkbTp}
	}
	var dropped dropProgram
	dropsDone := make(chan struct{})
	go func() {
		defer close(dropsDone)
		dropped = attachDrops(spec, t.coll.Maps, drops, cache, logf)
	}()
	if backend == BackendNetfilter {
		err = t.loadObservers(spec, cache, logf)
		if err == nil {
			err = nf.InNetNS(ns, t.attachObservers)
		}
	} else {
		err = t.attachFunctions(spec, backend, cache, logf)
	}
	<-dropsDone
	if dropped.coll != nil {
		t.loaded, t.links, t.info.Drops = append(t.loaded, dropped.coll), append(t.links, dropped.link), dropped.section
	}
	if err != nil {
		return nil, err
	}
	if backend == BackendNetfilter {
		logf("attached %d netfilter observers in %s", t.info.Links, ns)
		for _, sh := range t.info.Shifted {
			logf("observer %s: its priority was taken by another hook", sh)
		}
	} else {
		logf("%s: probing %v for %s", backend, t.info.Functions, ns)
	}

	if t.reader, err = ringbuf.NewReader(t.coll.Maps[bpfMapEvents]); err != nil {
		return nil, fmt.Errorf("opening the ring buffer: %w", err)
	}
	t.dec = decoder{key: randomKey(), reasons: reasons, symbols: NewKallsyms("/proc/kallsyms"), dns: opts.DNSQuestions, snaplen: opts.Snaplen}

	if err := t.SetTargets(opts.Targets); err != nil {
		return nil, err
	}
	return t, nil
}

// only is spec with only the named programs (sharing the rest, which
// loading does not change).
func only(spec *ebpf.CollectionSpec, names ...string) *ebpf.CollectionSpec {
	one := *spec
	one.Programs = make(map[string]*ebpf.ProgramSpec, len(names))
	for _, n := range names {
		one.Programs[n] = spec.Programs[n]
	}
	return &one
}

// loadObservers loads the netfilter observer programs, each on its own
// goroutine: the kernel verifies them side by side.
func (t *Tracer) loadObservers(spec *ebpf.CollectionSpec, cache *btf.Cache, logf func(string, ...any)) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	t.progs = map[string]*ebpf.Program{}
	for _, name := range programs {
		wg.Go(func() {
			coll, err := newCollection(only(spec, name), t.coll.Maps, cache, logf)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				firstErr = cmp.Or(firstErr, fmt.Errorf("loading the netfilter observer %s: %w", name, err))
				return
			}
			t.loaded = append(t.loaded, coll)
			t.progs[name] = coll.Programs[name]
		})
	}
	wg.Wait()
	return permissionHint(firstErr)
}

// newCollection loads spec, reusing maps where given, and logs the
// verifier's complaint in full when a program is refused.
func newCollection(spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map, cache *btf.Cache, logf func(string, ...any)) (*ebpf.Collection, error) {
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps, Cache: cache})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			logf("verifier log:\n%+v", ve)
		}
		return nil, err
	}
	return coll, nil
}

func (t *Tracer) attachObservers() error {
	for _, fam := range []link.NetfilterProtocolFamily{link.NetfilterProtoIPv4, link.NetfilterProtoIPv6} {
		for _, h := range nf.Hooks {
			for _, s := range nf.Plan[h] {
				l, prio, err := attachObserver(t.progs[programs[s]], fam, h, s)
				if err != nil {
					return permissionHint(fmt.Errorf("attaching netfilter observer %s %s/%s (priority %d): %w",
						famName(fam), h, s, s.Priority(), err))
				}
				if prio != s.Priority() {
					t.info.Shifted = append(t.info.Shifted, fmt.Sprintf("%s %s/%s at %d", famName(fam), h, s, prio))
				}
				t.links = append(t.links, l)
				t.info.Links++
			}
		}
	}
	return nil
}

// programs are the observer programs, by the stage they observe.
var programs = map[nf.Stage]string{
	nf.StagePreConntrack:  bpfProgNfPreConntrack,
	nf.StagePostConntrack: bpfProgNfPostConntrack,
	nf.StagePreDNAT:       bpfProgNfPreDnat,
	nf.StagePostDNAT:      bpfProgNfPostDnat,
	nf.StagePreFilter:     bpfProgNfPreFilter,
	nf.StagePostFilter:    bpfProgNfPostFilter,
	nf.StagePreSNAT:       bpfProgNfPreSnat,
	nf.StagePostSNAT:      bpfProgNfPostSnat,
	nf.StageLast:          bpfProgNfLast,
}

// maxShift bounds how far an observer moves from its priority when another
// hook holds it (the kernel allows a BPF hook only at a priority no other
// hook of that family and hook uses). IPv6 conntrack, for one, confirms in
// INPUT at INT_MAX-1.
const maxShift = 8

// attachObserver attaches at the stage's priority or, if another hook holds
// it (EBUSY), at the nearest free one away from what the stage brackets.
func attachObserver(p *ebpf.Program, fam link.NetfilterProtocolFamily, h nf.Hook, s nf.Stage) (link.Link, int32, error) {
	prio := s.Priority()
	for shift := int32(0); ; shift++ {
		l, err := link.AttachNetfilter(link.NetfilterOptions{
			Program: p, ProtocolFamily: fam, Hook: link.NetfilterInetHook(h), Priority: prio,
		})
		if err == nil || !errors.Is(err, unix.EBUSY) || shift == maxShift {
			return l, prio, err
		}
		prio += s.Away()
	}
}

// dropProgram is the kfree_skb observer, loaded and attached.
type dropProgram struct {
	coll    *ebpf.Collection
	link    link.Link
	section string
}

// attachDrops attaches the kfree_skb observer: BTF-typed if the kernel allows,
// else the plain tracepoint. Without either, tracing goes on without drops.
func attachDrops(spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map, names []string, cache *btf.Cache, logf func(string, ...any)) dropProgram {
	attach := map[string]func(*ebpf.Program) (link.Link, error){
		bpfProgKfreeSkbBtf: func(p *ebpf.Program) (link.Link, error) {
			return link.AttachTracing(link.TracingOptions{Program: p})
		},
		bpfProgKfreeSkbTp: func(p *ebpf.Program) (link.Link, error) {
			return link.Tracepoint("skb", "kfree_skb", p, nil)
		},
	}
	for _, name := range names {
		one := only(spec, name)
		coll, err := newCollection(one, maps, cache, logf)
		if err != nil {
			logf("%s: %v", one.Programs[name].SectionName, err)
			continue
		}
		l, err := attach[name](coll.Programs[name])
		if err != nil {
			logf("%s: %v", one.Programs[name].SectionName, err)
			coll.Close()
			continue
		}
		return dropProgram{coll, l, one.Programs[name].SectionName}
	}
	logf("warning: drops will not be reported: skb:kfree_skb could not be attached")
	return dropProgram{}
}

// Info describes the attached backend.
func (t *Tracer) Info() Info { return t.info }

// SetTargets replaces the set of watched addresses. Connections already being
// followed stay followed.
func (t *Tracer) SetTargets(targets []nf.Target) error {
	changed := false
	// The observers remember their last decision per CPU, for the
	// generation of targets it was made with: a new one makes them decide
	// again.
	defer func() {
		if v := t.coll.Variables["targets_gen"]; changed && v != nil {
			t.gen++
			v.Set(t.gen) // fails only without BPF_F_MMAPABLE (before 5.5): no netfilter links there
		}
	}()
	want := map[nf.Target]bool{}
	for _, tg := range targets {
		want[tg] = true
	}
	// Removed first: a full filter takes a new set as long as the set fits.
	for tg := range t.targets {
		if want[tg] {
			continue
		}
		k := targetKey(tg)
		if err := t.coll.Maps[bpfMapTargets].Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("removing %s from the filter: %w", tg, err)
		}
		delete(t.targets, tg)
		changed = true
	}
	for tg := range want {
		if t.targets[tg] {
			continue
		}
		if len(t.targets) >= t.maxTargets {
			return fmt.Errorf("adding %s to the filter: it holds at most %d addresses", tg, t.maxTargets)
		}
		k := targetKey(tg)
		if err := t.coll.Maps[bpfMapTargets].Put(&k, uint8(1)); err != nil {
			return fmt.Errorf("adding %s to the filter: %w", tg, err)
		}
		t.targets[tg] = true
		changed = true
	}
	return nil
}

// Targets returns the watched addresses, sorted.
func (t *Tracer) Targets() []nf.Target {
	out := make([]nf.Target, 0, len(t.targets))
	for tg := range t.targets {
		out = append(out, tg)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// ReadRecord appends the events of the next ring buffer record to out: one
// event, or a packet's path through the hooks. It waits for one until the
// deadline (os.ErrDeadlineExceeded) or Wake. A record it cannot decode
// adds nothing and is counted as such. With Options.Hold it also takes
// the paths held longer than that (or, after Unhold, all of them) every
// Hold/4, and appends their events first.
func (t *Tracer) ReadRecord(out []nf.Event) ([]nf.Event, error) {
	if n := len(out); t.hold > 0 {
		if out = t.sweep(out); len(out) > n {
			return out, nil
		}
	}
	if err := t.reader.ReadInto(&t.rec); err != nil {
		switch {
		case errors.Is(err, ringbuf.ErrClosed):
			return out, ErrClosed
		case errors.Is(err, ringbuf.ErrFlushed):
			return out, os.ErrDeadlineExceeded // Wake
		}
		return out, err
	}
	if len(t.rec.RawSample) < 8 {
		// A path was held while the reader waited: it was woken to
		// wait no longer than Hold (SetDeadline) from now on.
		return out, nil
	}
	t.records.Add(1)
	n := len(out)
	out, err := t.dec.decodeAll(t.rec.RawSample, out)
	if err != nil {
		t.bad.Add(1)
	}
	t.events.Add(uint64(len(out) - n))
	return out, nil
}

// Stats says how much the kernel handed over.
type Stats struct {
	Records uint64 // ring buffer records read
	Events  uint64 // events they held (a packet's path holds several)
}

// Stats returns the counts since Open.
func (t *Tracer) Stats() Stats { return Stats{Records: t.records.Load(), Events: t.events.Load()} }

// SetDeadline makes Read return os.ErrDeadlineExceeded after d. With
// Options.Hold, while anything is held, never more than Hold ahead: the
// reader takes what is held too long even when nothing else happens. (A
// path held while the reader waits wakes it.)
func (t *Tracer) SetDeadline(d time.Time) {
	if soon := time.Now().Add(t.hold); t.hold > 0 && soon.Before(d) && t.holds() {
		d = soon
	}
	t.reader.SetDeadline(d)
}

// holds reports whether the kernel holds any path (Options.Hold).
func (t *Tracer) holds() bool {
	var k bpfHeldKey
	return t.coll.Maps[bpfMapHeld].NextKey(nil, &k) == nil
}

// heldPaths is the room for held paths (Options.Hold): connections opening
// at once, a path or two each (some 1.5 KB each: 6 MB of kernel memory);
// answeredDsts the room for the destinations of connections answered
// (about 1.3 MB). Without room, a connection is reported, not held or
// counted. settledConns is how many connections answered are remembered
// by their tuples (about 5 MB), the most recent: one of them that breaks
// later is named by them even when its conntrack entry is gone; an older
// one that breaks shows up from there on without its settled record, as
// the middle of a connection. All are allocated whole: the drop
// tracepoint uses them, and tracing programs may use only preallocated
// hash maps before 6.1.
const (
	heldPaths    = 4096
	answeredDsts = 16384
	settledConns = 32768
)

// Unhold ends holding (Options.Hold): the kernel releases each held
// connection at its next packet, and ReadRecord takes every path still
// held, at its next call. A reader that stops calls it before the last
// time it finds the ring buffer empty.
func (t *Tracer) Unhold() {
	if t.hold == 0 {
		return
	}
	if v := t.coll.Variables["hold_ns"]; v != nil {
		v.Set(uint64(0))
	}
	t.unheld.Store(true)
}

// sweep appends the events of the paths held longer than Options.Hold
// (all of them after Unhold), connection by connection, oldest first, each
// taken from the kernel (lookup and delete) before it is decoded: the
// kernel reports those it deletes first itself.
func (t *Tracer) sweep(out []nf.Event) []nf.Event {
	now, all := nf.Now(), t.unheld.Load()
	if !all && now-t.swept < uint64(t.hold/4) {
		return out
	}
	t.swept = now
	held := t.coll.Maps[bpfMapHeld]
	type conn struct {
		ct, ts uint64
		n      uint32
	}
	var due []conn
	var k bpfHeldKey
	it := held.Iterate()
	for it.Next(&k, &t.heldPath) {
		if k.I != 0 || !(all || now-t.heldPath.E.Ts > uint64(t.hold)) {
			continue
		}
		due = append(due, conn{ct: k.Ct, ts: t.heldPath.E.Ts})
	}
	slices.SortFunc(due, func(a, b conn) int { return cmp.Compare(a.ts, b.ts) })
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&t.heldPath)), rawPathSize)
	for _, c := range due {
		t.taken.Add(1)
		for i := range uint32(heldPerConn) {
			// A path missing: the kernel released the rest meanwhile.
			if held.LookupAndDelete(&bpfHeldKey{Ct: c.ct, I: i}, &t.heldPath) != nil {
				break
			}
			t.records.Add(1)
			n := len(out)
			var err error
			if out, err = t.dec.decodeAll(raw, out); err != nil {
				t.bad.Add(1)
			}
			t.events.Add(uint64(len(out) - n))
		}
	}
	return out
}

// HoldStats says what holding did (Options.Hold) since Open: connections
// held, then settled (answered in time: counted), released by the kernel
// (not answered in time, or not as it should be), released for want of
// room, or taken by the reader (or found taken as they were answered);
// settled ones reported after all (a drop
// came), or without their settled record (too old to name); and events
// left out of settled connections that were over (closed both ways).
type HoldStats struct {
	Held, Settled, Released, NoRoom, Taken, Broke, Over, Unnamed uint64
}

// HoldStats returns the kernel's counts; zero without Options.Hold.
func (t *Tracer) HoldStats() HoldStats {
	if t.hold == 0 {
		return HoldStats{}
	}
	n := make([]uint64, bpfHoldStatHOLD_STATS)
	for i := range n {
		var perCPU []uint64
		if t.coll.Maps[bpfMapHoldStats].Lookup(uint32(i), &perCPU) == nil {
			for _, v := range perCPU {
				n[i] += v
			}
		}
	}
	return HoldStats{Held: n[bpfHoldStatHOLD_HELD], Settled: n[bpfHoldStatHOLD_SETTLED], Released: n[bpfHoldStatHOLD_RELEASED],
		NoRoom: n[bpfHoldStatHOLD_NOROOM], Taken: n[bpfHoldStatHOLD_TAKEN] + t.taken.Load(), Broke: n[bpfHoldStatHOLD_BROKE],
		Over: n[bpfHoldStatHOLD_OVER], Unnamed: n[bpfHoldStatHOLD_UNNAMED]}
}

// heldPerConn is the kernel side's HELD_PATHS.
const heldPerConn = 4

// Answered returns how many connections the kernel counted answered
// (Options.Hold) since Open, by original destination.
func (t *Tracer) Answered() map[nf.Target]uint64 {
	if t.hold == 0 {
		return nil
	}
	got := map[nf.Target]uint64{}
	var k bpfTargetKey
	var n uint64
	it := t.coll.Maps[bpfMapAnswered].Iterate()
	for it.Next(&k, &n) {
		if n != 0 && n < 1<<63 { // a count the kernel took back is 0, never below
			got[targetOf(k)] = n
		}
	}
	return got
}

// Wake makes a Read that waits return the events there are, then
// os.ErrDeadlineExceeded, now.
func (t *Tracer) Wake() { t.reader.Flush() }

// Waiting tells the kernel side whether the reader waits with nothing
// followed: then it wakes the reader at the first event, not once 64 KiB
// wait. A reader that waits in the kernel costs nothing, one that looks
// every so often costs a wake-up each time.
func (t *Tracer) Waiting(on bool) {
	if v := t.coll.Variables["reader_waiting"]; v != nil {
		var x uint32
		if on {
			x = 1
		}
		v.Set(x) // fails only without BPF_F_MMAPABLE: the reader is then woken by size or deadline
	}
}

// Lost returns how many events the kernel could not hand over (ring buffer
// full) plus records that could not be decoded, since Open.
func (t *Tracer) Lost() uint64 {
	var perCPU []uint64
	var n uint64
	if err := t.coll.Maps[bpfMapLost].Lookup(uint32(0), &perCPU); err == nil {
		for _, v := range perCPU {
			n += v
		}
	}
	return n + t.bad.Load()
}

// Close detaches everything and frees the kernel objects. Safe to call more
// than once and concurrently with Read.
func (t *Tracer) Close() error {
	t.close.Do(func() {
		for _, l := range t.links {
			l.Close()
		}
		if t.reader != nil {
			t.reader.Close()
		}
		for _, c := range t.loaded {
			c.Close()
		}
		if t.coll != nil {
			t.coll.Close()
		}
	})
	return nil
}

func famName(f link.NetfilterProtocolFamily) string {
	if f == link.NetfilterProtoIPv6 {
		return "ipv6"
	}
	return "ipv4"
}

func randomKey() uint64 {
	var b [8]byte
	rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// permissionHint adds the next step to errors caused by missing privileges.
func permissionHint(err error) error {
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w (svctrace needs root, or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN: run it with sudo)", err)
	}
	return err
}
