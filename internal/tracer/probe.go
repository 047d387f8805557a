package tracer

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/svctrace/svctrace/internal/nf"
	"golang.org/x/sys/unix"
)

// Feature is one kernel capability svctrace can use, and whether it works
// here.
type Feature struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"` // what it gives, or why it does not work
}

// Support is what this kernel allows and the backend svctrace would use.
type Support struct {
	Kernel   string    `json:"kernel"`
	Features []Feature `json:"features"`
	Backend  string    `json:"backend"` // "" if none works
	Why      string    `json:"why"`
}

// Probe tries each capability by loading (and where harmless, attaching) a
// minimal program. Attaching a netfilter probe briefly adds an observer that
// accepts every packet in the caller's network namespace.
func Probe() Support {
	var s Support
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		s.Kernel = unix.ByteSliceToString(uts.Release[:]) + " (" + unix.ByteSliceToString(uts.Machine[:]) + ")"
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		s.Why = fmt.Sprintf("cannot raise the memlock limit: %v; run as root", err)
		return s
	}
	add := func(name, works string, err error) bool {
		f := Feature{Name: name, OK: err == nil, Detail: works}
		if err != nil {
			f.Detail = explain(err)
		}
		s.Features = append(s.Features, f)
		return err == nil
	}

	_, err := btf.LoadKernelSpec()
	add("BTF", "kernel type information: CO-RE, drop reason names", err)

	works := map[string]bool{
		BackendNetfilter: add("netfilter BPF link", "the netfilter-link backend: observers at chosen priorities on every hook (kernel ≥ 6.4)", probeNetfilter()),
	}
	add("tp_btf/kfree_skb", "drops with reason and location (BTF-typed)", probeRawTracepoint())
	add("tracepoint skb:kfree_skb", "drops with reason and location", probeTracepoint())
	works[BackendFentry] = add("fentry/fexit", "the fentry backend: trampolines on the netfilter functions", probeFentry())
	works[BackendKprobe] = add("kprobes", "the kprobe backend: kprobes and kretprobes on the netfilter functions", probeKprobe())

	why := map[string]string{
		BackendNetfilter: "netfilter BPF links work: observers bracket conntrack, DNAT, filter and SNAT on all five hooks",
		BackendFentry:    "no netfilter BPF links (Linux < 6.4); fentry/fexit on nf_conntrack_in, nf_nat_inet_fn, the table functions and nf_hook_slow give the same observations",
		BackendKprobe:    "no netfilter BPF links and no fentry; kprobes on nf_conntrack_in, nf_nat_inet_fn, the table functions and nf_hook_slow give the same observations",
	}
	for _, b := range Backends {
		if works[b] {
			s.Backend, s.Why = b, why[b]
			return s
		}
	}
	s.Why = "no backend works here: svctrace needs netfilter BPF links (Linux ≥ 6.4), fentry/fexit (BTF trampolines) or kprobes"
	return s
}

func explain(err error) string {
	switch {
	case errors.Is(err, os.ErrPermission):
		return "refused: operation not permitted (missing privileges, or forbidden by the kernel's lockdown)"
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, os.ErrNotExist):
		return "not available in this kernel: " + err.Error()
	}
	return err.Error()
}

// try loads a program that only returns ret and attaches it with attach,
// then undoes both: whether the kernel allows that program type and attach.
func try(typ ebpf.ProgramType, at ebpf.AttachType, attachTo string, ret int32, attach func(*ebpf.Program) (link.Link, error)) error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: typ, AttachType: at, AttachTo: attachTo, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()},
	})
	if err != nil {
		return err
	}
	defer p.Close()
	l, err := attach(p)
	if err != nil {
		return err
	}
	return l.Close()
}

func probeNetfilter() error {
	err := try(ebpf.Netfilter, ebpf.AttachNetfilter, "", 1 /* NF_ACCEPT */, func(p *ebpf.Program) (link.Link, error) {
		return link.AttachNetfilter(link.NetfilterOptions{Program: p, ProtocolFamily: link.NetfilterProtoIPv4,
			Hook: link.NetfilterInetLocalOut, Priority: nf.StageLast.Priority() - 1})
	})
	if errors.Is(err, unix.EINVAL) {
		// Kernels before 6.4 do not know the program type.
		return fmt.Errorf("%w (netfilter BPF programs need Linux ≥ 6.4)", err)
	}
	return err
}

func attachTracing(p *ebpf.Program) (link.Link, error) {
	return link.AttachTracing(link.TracingOptions{Program: p})
}

func probeRawTracepoint() error {
	return try(ebpf.Tracing, ebpf.AttachTraceRawTp, "kfree_skb", 0, attachTracing)
}

func probeTracepoint() error {
	err := try(ebpf.TracePoint, ebpf.AttachNone, "", 0, func(p *ebpf.Program) (link.Link, error) {
		return link.Tracepoint("skb", "kfree_skb", p, nil)
	})
	if err != nil && strings.Contains(err.Error(), "tracefs") {
		return errors.New("tracefs is not mounted, and tracepoints are found through it: mount -t tracefs nodev /sys/kernel/tracing")
	}
	return err
}

func probeKprobe() error {
	err := try(ebpf.Kprobe, ebpf.AttachNone, "", 0, func(p *ebpf.Program) (link.Link, error) {
		return link.Kprobe("nf_hook_slow", p, nil)
	})
	if err == nil {
		return nil
	}
	// Without the kprobe event source the library falls back to tracefs
	// and reports that missing, which is not why kprobes fail.
	if why := kernelLacks("kprobe", "CONFIG_KPROBES"); why != "" {
		return errors.New(why)
	}
	if strings.Contains(err.Error(), "no such file") {
		return fmt.Errorf("%w (kernel built without CONFIG_KPROBES?)", err)
	}
	return err
}

// kernelLacks says why this kernel has no perf event source of this name
// (/sys/bus/event_source/devices/NAME), from its build configuration where
// readable; "" if it has one, or nothing tells.
func kernelLacks(source, option string) string {
	if _, err := os.Stat("/sys/bus/event_source/devices/" + source); err == nil {
		return ""
	} else if _, err := os.Stat("/sys/bus/event_source/devices"); err != nil {
		return ""
	}
	msg := fmt.Sprintf("this kernel has no %s event source (/sys/bus/event_source/devices/%s)", source, source)
	if config := kernelConfig(); config != "" {
		if strings.Contains(config, "# "+option+" is not set") {
			return msg + ": it was built without " + option
		}
		if strings.Contains(config, "\n"+option+"=y") {
			return "" // built in: something else is wrong
		}
	}
	return msg + " (built without " + option + "?)"
}

// kernelConfig is the running kernel's build configuration, or "".
func kernelConfig() string {
	if f, err := os.Open("/proc/config.gz"); err == nil {
		defer f.Close()
		if z, err := gzip.NewReader(f); err == nil {
			if b, err := io.ReadAll(io.LimitReader(z, 16<<20)); err == nil {
				return "\n" + string(b)
			}
		}
	}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		if b, err := os.ReadFile("/boot/config-" + unix.ByteSliceToString(uts.Release[:])); err == nil {
			return "\n" + string(b)
		}
	}
	return ""
}

func probeFentry() error {
	return try(ebpf.Tracing, ebpf.AttachTraceFEntry, "nf_hook_slow", 0, attachTracing)
}
