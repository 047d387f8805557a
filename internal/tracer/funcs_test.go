package tracer

import (
	"errors"
	"net/netip"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
)

// Every function probe passes the verifier of the running kernel. kprobe
// programs load even where kprobes cannot be attached (this project's
// machines), so the kprobe backend is checked here too; fentry programs
// load only where trampolines are allowed.
func TestFunctionProgramsPassTheVerifier(t *testing.T) {
	testutil.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil { // before 5.11, maps count against it
		t.Fatal(err)
	}
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	base := spec.Copy()
	base.Programs = nil
	cache := btf.NewCache()
	maps, err := newCollection(base, nil, cache, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer maps.Close()
	for _, backend := range []string{BackendKprobe, BackendFentry} {
		for _, f := range functions {
			if backend == BackendFentry {
				if err := f.checkSignature(cache); err != nil {
					t.Logf("%s: %v", f.name, err)
					continue
				}
			}
			for _, name := range f.programs(backend) {
				one := spec.Copy()
				one.Programs = map[string]*ebpf.ProgramSpec{name: spec.Programs[name]}
				coll, err := newCollection(one, maps.Maps, cache, t.Logf)
				if backend == BackendFentry && errors.Is(err, os.ErrPermission) {
					t.Logf("%s: fentry refused here: %v", name, err)
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				coll.Close()
			}
		}
	}
}

// The function backends report what the netfilter observers would: the
// stages around conntrack, DNAT, the filter table and the end of a hook,
// with the packet as each saw it, and only in the traced namespace.
func TestFunctionBackendsObserveLikeTheObservers(t *testing.T) {
	testutil.RequireRoot(t)
	for _, backend := range []string{BackendFentry, BackendKprobe} {
		t.Run(backend, func(t *testing.T) {
			if err := probeBackend(backend); err != nil {
				t.Skipf("%s: %v", backend, explain(err))
			}
			a, b := newNetNS(t), newNetNS(t)
			for _, ns := range []nf.NetNS{a, b} {
				iptables(t, ns, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7790", "-j", "DNAT", "--to-destination", "127.0.0.1:7791")
				iptables(t, ns, "-A", "OUTPUT", "-p", "tcp", "-j", "ACCEPT")
			}
			vip := netip.MustParseAddrPort("127.0.0.1:7790")
			tr, err := Open(Options{NetNS: a.Spec, Backend: backend, Targets: []nf.Target{{Addr: vip, Proto: nf.TCP}}, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			info := tr.Info()
			for _, fn := range []string{"nf_conntrack_in", "nf_nat_inet_fn", "nf_hook_slow"} {
				if !slices.Contains(info.Functions, fn) {
					t.Errorf("%s not probed (probed %v, skipped %v)", fn, info.Functions, info.Skipped)
				}
			}
			dnatExchange(t, b) // the same traffic in another namespace
			dnatExchange(t, a)
			type point struct {
				hook  nf.Hook
				stage nf.Stage
				dport uint16
			}
			seen := map[point]bool{}
			for _, ev := range drain(t, tr) {
				if ev.Kind != nf.KindHook {
					continue
				}
				if ev.NetNS != a.Inode {
					t.Fatalf("event from net:[%d], want only %s: %+v", ev.NetNS, a, ev)
				}
				if ev.TCPFlags == nf.SYN {
					seen[point{ev.Hook, ev.Stage, ev.Tuple.Dst.Port()}] = true
				}
			}
			for _, p := range []point{
				{nf.LocalOut, nf.StagePreConntrack, 7790}, {nf.LocalOut, nf.StagePostConntrack, 7790},
				{nf.LocalOut, nf.StagePreDNAT, 7790}, {nf.LocalOut, nf.StagePostDNAT, 7791},
				{nf.LocalOut, nf.StagePreFilter, 7791}, {nf.LocalOut, nf.StagePostFilter, 7791},
				{nf.PostRouting, nf.StageLast, 7791},
			} {
				if !seen[p] {
					t.Errorf("the SYN was not seen at %s %s with destination port %d (seen: %v)", p.hook, p.stage, p.dport, seen)
				}
			}
		})
	}
}

// dnatExchange connects to 127.0.0.1:7790 inside ns, which the nat table
// sends to a listener on 7791.
func dnatExchange(t *testing.T, ns nf.NetNS) {
	t.Helper()
	exchangeVia(t, ns, "127.0.0.1:7791", "127.0.0.1:7790")
}

// Each function's variant is chosen by the running kernel's signature:
// ipt_do_table takes (priv, skb, state) since Linux 5.16, (skb, state,
// table) before.
func TestPickMatchesTheKernelsSignature(t *testing.T) {
	cache := btf.NewCache()
	if _, err := cache.Kernel(); err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	for _, name := range names() {
		f, err := pick(name, cache, BackendFentry, func(string) bool { return false })
		if err != nil {
			t.Logf("%s: %v", name, err)
			continue
		}
		if f.name != name || f.checkSignature(cache) != nil {
			t.Errorf("%s: picked %+v", name, f)
		}
	}
	var spec *btf.Spec
	if s, err := cache.Kernel(); err == nil {
		spec = s
	}
	var fn *btf.Func
	if spec != nil && spec.TypeByName("ipt_do_table", &fn) == nil {
		f, err := pick("ipt_do_table", cache, BackendFentry, func(string) bool { return false })
		want := fn.Type.(*btf.FuncProto).Params[0].Name
		if err != nil || f.firstParam != want {
			t.Errorf("ipt_do_table: picked the variant reading %q first (%v), the kernel's takes %q", f.firstParam, err, want)
		}
	}
}

func TestKallsyms(t *testing.T) {
	path := t.TempDir() + "/kallsyms"
	os.WriteFile(path, []byte("ffffffff81000000 T nf_hook_slow\nffffffffc0001000 t nf_conntrack_in\t[nf_conntrack]\nffffffffc0002000 d nft_do_chain\t[nf_tables]\n"), 0o644)
	got := kallsyms(path, []string{"nf_hook_slow", "nf_conntrack_in", "nft_do_chain", "ipt_do_table"})
	if !got["nf_hook_slow"] || !got["nf_conntrack_in"] || got["nft_do_chain"] || got["ipt_do_table"] || len(got) != 2 {
		t.Errorf("found %v, want the two text symbols", got)
	}
}
