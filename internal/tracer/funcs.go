package tracer

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Backends, in the order Open tries them.
const (
	BackendNetfilter = "netfilter-link" // BPF observers at netfilter priorities (Linux ≥ 6.4)
	BackendFentry    = "fentry"         // fentry/fexit on the netfilter functions (BTF trampolines)
	BackendKprobe    = "kprobe"         // kprobe/kretprobe on the same functions
)

// Backends lists the backends svctrace knows, in order of preference.
var Backends = []string{BackendNetfilter, BackendFentry, BackendKprobe}

// function is a kernel function whose entry and return stand for the stages
// around the netfilter piece it runs (see bpf/svctrace.c).
type function struct {
	name   string
	module string // where it lives when netfilter is built as modules
	// The programs for its entry and return, per backend ("" : none).
	fentry, fexit     string
	kprobe, kretprobe string
	// firstParam is the name its first parameter must have: the BPF side
	// reads its arguments in that order.
	firstParam string
	// what it shows, for the messages when it cannot be probed.
	what string
	// essential: without it the backend cannot follow connections.
	essential bool
}

// functions lists what the function backends probe. A function may appear
// more than once, with its signatures across kernel versions: the first
// that matches the running kernel's BTF is used.
var functions = []function{
	{name: "nf_conntrack_in", module: "nf_conntrack", firstParam: "skb", what: "conntrack", essential: true,
		fentry: bpfProgFentryConntrackIn, fexit: bpfProgFexitConntrackIn,
		kprobe: bpfProgKprobeConntrackIn, kretprobe: bpfProgKretprobeConntrackIn},
	{name: "nf_nat_inet_fn", module: "nf_nat", firstParam: "priv", what: "DNAT and SNAT", essential: true,
		fentry: bpfProgFentryNfNatInetFn, fexit: bpfProgFexitNfNatInetFn,
		kprobe: bpfProgKprobeNfNatInetFn, kretprobe: bpfProgKretprobeNfNatInetFn},
	{name: "ipt_do_table", module: "ip_tables", firstParam: "priv", what: "iptables-legacy (IPv4) filter decisions",
		fentry: bpfProgFentryIptDoTable, fexit: bpfProgFexitIptDoTable,
		kprobe: bpfProgKprobeIptDoTable, kretprobe: bpfProgKretprobeIptDoTable},
	{name: "ip6t_do_table", module: "ip6_tables", firstParam: "priv", what: "iptables-legacy (IPv6) filter decisions",
		fentry: bpfProgFentryIp6tDoTable, fexit: bpfProgFexitIp6tDoTable,
		kprobe: bpfProgKprobeIp6tDoTable, kretprobe: bpfProgKretprobeIp6tDoTable},
	// Before Linux 5.16: (skb, state, table). The return is the same.
	{name: "ipt_do_table", module: "ip_tables", firstParam: "skb", what: "iptables-legacy (IPv4) filter decisions",
		fentry: bpfProgFentryIptDoTableOld, fexit: bpfProgFexitIptDoTableOld,
		kprobe: bpfProgKprobeIptDoTableOld, kretprobe: bpfProgKretprobeIptDoTable},
	{name: "ip6t_do_table", module: "ip6_tables", firstParam: "skb", what: "iptables-legacy (IPv6) filter decisions",
		fentry: bpfProgFentryIp6tDoTableOld, fexit: bpfProgFexitIp6tDoTableOld,
		kprobe: bpfProgKprobeIp6tDoTableOld, kretprobe: bpfProgKretprobeIp6tDoTable},
	{name: "nft_do_chain", module: "nf_tables", firstParam: "pkt", what: "nftables and iptables-nft filter decisions",
		fentry: bpfProgFentryNft, fexit: bpfProgFexitNft,
		kprobe: bpfProgKprobeNft, kretprobe: bpfProgKretprobeNft},
	{name: "nf_hook_slow", firstParam: "skb", what: "the end of PREROUTING, INPUT and POSTROUTING", essential: true,
		fexit:  bpfProgFexitHookSlow,
		kprobe: bpfProgKprobeHookSlow, kretprobe: bpfProgKretprobeHookSlow},
}

// programs are the function's programs for backend.
func (f function) programs(backend string) []string {
	var ps []string
	for _, p := range map[string][2]string{BackendFentry: {f.fentry, f.fexit}, BackendKprobe: {f.kprobe, f.kretprobe}}[backend] {
		if p != "" {
			ps = append(ps, p)
		}
	}
	return ps
}

// errSignature: the kernel's function takes its parameters in another order.
var errSignature = errors.New("its parameters differ in this kernel")

// errNoBTF: the function has no BTF here (its module was built without it:
// before Linux 5.11 modules had none).
var errNoBTF = errors.New("no BTF")

// pick returns the variant of the function named name whose signature
// matches the running kernel. Without BTF to tell, a kprobe may still go on
// a function whose signature never changed, if the kernel has it (present).
func pick(name string, cache *btf.Cache, backend string, present func(string) bool) (function, error) {
	var variants []function
	var err error
	for _, f := range functions {
		if f.name != name {
			continue
		}
		variants = append(variants, f)
		e := f.checkSignature(cache)
		if e == nil {
			return f, nil
		}
		if err == nil || errors.Is(err, errSignature) {
			err = e
		}
	}
	if errors.Is(err, errNoBTF) && backend == BackendKprobe && len(variants) == 1 && present(name) {
		return variants[0], nil
	}
	return variants[0], err
}

// names are the functions to probe, each once, in order.
func names() []string {
	var ns []string
	for _, f := range functions {
		if !slices.Contains(ns, f.name) {
			ns = append(ns, f.name)
		}
	}
	return ns
}

// checkSignature finds the function's BTF (in the kernel or its module)
// and checks that its parameters come in the order the programs read them.
// A function that is not there (its module not loaded) is an error too.
func (f function) checkSignature(cache *btf.Cache) error {
	var fn *btf.Func
	spec, err := cache.Kernel()
	if err == nil {
		err = spec.TypeByName(f.name, &fn)
	}
	if err != nil && f.module != "" {
		if spec, merr := cache.Module(f.module); merr == nil {
			err = spec.TypeByName(f.name, &fn)
		}
	}
	if err != nil {
		if f.module != "" {
			return fmt.Errorf("%w: not in this kernel's BTF, nor in module %s's (not loaded, or built without BTF?)", errNoBTF, f.module)
		}
		return fmt.Errorf("%w: not in this kernel's BTF: %v", errNoBTF, err)
	}
	proto, ok := fn.Type.(*btf.FuncProto)
	if !ok || len(proto.Params) == 0 || proto.Params[0].Name != f.firstParam {
		return fmt.Errorf("%w (svctrace reads %s first)", errSignature, f.firstParam)
	}
	return nil
}

// attachFunctions loads and attaches the programs of a function-probe
// backend. A function that cannot be probed is reported (Info.Skipped)
// and left out; it is an error only when nothing could be.
func (t *Tracer) attachFunctions(spec *ebpf.CollectionSpec, backend string, cache *btf.Cache, logf func(string, ...any)) error {
	var firstErr error
	present := kallsyms("/proc/kallsyms", names())
	for _, name := range names() {
		f, err := pick(name, cache, backend, func(n string) bool { return present[n] })
		if err != nil {
			t.skip(f, err, logf)
			continue
		}
		names := f.programs(backend)
		if len(names) == 0 {
			continue
		}
		coll, err := newCollection(only(spec, names...), t.coll.Maps, cache, logf)
		if err != nil {
			t.skip(f, err, logf)
			firstErr = cmpErr(firstErr, err)
			continue
		}
		// Entry and return go together: a kprobe whose kretprobe is
		// missing would leave the argument stack out of step.
		var ls []link.Link
		for _, n := range names {
			l, err := attachFunction(backend, f.name, coll.Programs[n], n == f.kretprobe)
			if err != nil {
				for _, l := range ls {
					l.Close()
				}
				ls = nil
				t.skip(f, err, logf)
				firstErr = cmpErr(firstErr, err)
				break
			}
			ls = append(ls, l)
		}
		if ls == nil {
			coll.Close()
			continue
		}
		t.loaded = append(t.loaded, coll)
		t.links = append(t.links, ls...)
		t.info.Links += len(ls)
		t.info.Functions = append(t.info.Functions, f.name)
	}
	var missing []string
	for _, f := range functions {
		if f.essential && !slices.Contains(t.info.Functions, f.name) && !slices.Contains(missing, f.name) {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		err := fmt.Errorf("%s backend: cannot probe %s, without which connections cannot be followed (%s)",
			backend, strings.Join(missing, ", "), strings.Join(t.info.Skipped, "; "))
		if firstErr != nil && errors.Is(firstErr, os.ErrPermission) {
			err = permissionHint(fmt.Errorf("%w: %w", err, firstErr))
		}
		return err
	}
	return nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func (t *Tracer) skip(f function, err error, logf func(string, ...any)) {
	s := fmt.Sprintf("%s (%s): %v", f.name, f.what, explain(err))
	t.info.Skipped = append(t.info.Skipped, s)
	logf("not probed: %s", s)
}

func attachFunction(backend, fn string, p *ebpf.Program, ret bool) (link.Link, error) {
	switch {
	case backend == BackendFentry:
		return link.AttachTracing(link.TracingOptions{Program: p})
	case ret:
		return link.Kretprobe(fn, p, nil)
	}
	return link.Kprobe(fn, p, nil)
}

// candidates are the backends to try: the one asked for, else all of them
// in order of preference. Each is probed only when its turn comes (see
// usable): probing one that will not be needed costs start-up time.
func candidates(want string) ([]string, error) {
	if want == "" {
		return Backends, nil
	}
	if !isBackend(want) {
		return nil, fmt.Errorf("unknown backend %q: use %s, %s or %s", want, BackendNetfilter, BackendFentry, BackendKprobe)
	}
	return []string{want}, nil
}

// usable says why a backend candidates named cannot be used here, or nil.
func usable(b string, asked bool) error {
	err := probeBackend(b)
	if err != nil && asked {
		return fmt.Errorf("backend %s does not work here: %s; `svctrace kernel-support` shows what does", b, explain(err))
	}
	return err
}

// errNoBackend is Open's error when no backend's program type works.
var errNoBackend = errors.New("no backend works on this kernel: it needs netfilter BPF links (Linux ≥ 6.4), fentry/fexit or kprobes; `svctrace kernel-support` shows why each fails")

func isBackend(b string) bool {
	for _, x := range Backends {
		if x == b {
			return true
		}
	}
	return false
}

// probeBackend says whether a backend's program type can be loaded and
// attached here.
func probeBackend(b string) error {
	switch b {
	case BackendNetfilter:
		return probeNetfilter()
	case BackendFentry:
		return probeFentry()
	case BackendKprobe:
		return probeKprobe()
	}
	return fmt.Errorf("unknown backend %q", b)
}

// kallsyms reports which of names are kernel functions here, in the
// kernel or a loaded module (/proc/kallsyms: "addr t name [module]").
func kallsyms(path string, names []string) map[string]bool {
	found := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return found
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) >= 3 && (fs[1] == "t" || fs[1] == "T") && slices.Contains(names, fs[2]) {
			found[fs[2]] = true
		}
	}
	return found
}
