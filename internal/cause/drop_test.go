package cause

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/svctrace/svctrace/internal/nf"
)

// reasonsOf are the drop reasons of an enum skb_drop_reason.
func reasonsOf(t *testing.T, names []string) []string {
	t.Helper()
	var out []string
	for _, n := range names {
		n = strings.TrimPrefix(n, "SKB_DROP_REASON_")
		if !NotReason(n) {
			out = append(out, n)
		}
	}
	if len(out) < 50 {
		t.Fatalf("only %d drop reasons: %v", len(out), out)
	}
	return out
}

func holdsEvery(t *testing.T, where string, reasons []string) {
	t.Helper()
	for _, n := range reasons {
		r, ok := Drop(n)
		if !ok || r.Class == "" || r.Cause == "" {
			t.Errorf("%s: drop reason %s has no class and cause: add it to drops", where, n)
		}
	}
}

// Every drop reason of the running kernel has a class and an operator's
// cause: a newer kernel's new reasons fail here until they are mapped.
func TestRunningKernelsDropReasons(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		t.Skipf("kernel BTF has no enum skb_drop_reason (before 5.17): %v", err)
	}
	var names []string
	for _, v := range e.Values {
		names = append(names, v.Name)
	}
	holdsEvery(t, "the running kernel", reasonsOf(t, names))
}

// The kernel whose types the BPF objects are built against
// (bpf/vmlinux.h) holds the same.
func TestVmlinuxHeadersDropReasons(t *testing.T) {
	b, err := os.ReadFile("../../bpf/vmlinux.h")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range regexp.MustCompile(`\b(SKB_DROP_REASON_[A-Z0-9_]+) =`).FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	holdsEvery(t, "bpf/vmlinux.h", reasonsOf(t, names))
}

func TestUnknownReasonShownVerbatim(t *testing.T) {
	r, ok := Drop("SOMETHING_NEW")
	if ok || r.Name != "SOMETHING_NEW" || r.Class != Other || !r.Unspecific() {
		t.Errorf("Drop(SOMETHING_NEW) = %+v, %v", r, ok)
	}
	if r, _ := Drop("NEIGH_FAILED"); r.Class != Neighbour || r.Confirm != Neighbours || r.Unspecific() {
		t.Errorf("NEIGH_FAILED: %+v", r)
	}
}

func TestRefusals(t *testing.T) {
	for _, c := range []struct {
		p         nf.Proto
		typ, code uint8
		want      Class
	}{
		{nf.ICMP, 3, 3, Socket}, {nf.ICMP, 3, 1, Neighbour}, {nf.ICMP, 3, 13, Netfilter}, {nf.ICMP, 3, 10, Netfilter},
		{nf.ICMP, 3, 4, Size}, {nf.ICMP, 3, 0, Routing}, {nf.ICMP, 11, 0, Routing}, {nf.ICMP, 5, 0, Other},
		{nf.ICMPv6, 1, 3, Neighbour}, {nf.ICMPv6, 1, 4, Socket}, {nf.ICMPv6, 1, 1, Netfilter}, {nf.ICMPv6, 2, 0, Size},
		{nf.ICMPv6, 1, 0, Routing},
	} {
		if got := ICMP(c.p, c.typ, c.code); got.Class != c.want || got.Cause == "" {
			t.Errorf("%s type %d code %d: %+v, want %s", c.p, c.typ, c.code, got, c.want)
		}
	}
	if Reset(true).Class != Netfilter || Reset(false).Class != Socket {
		t.Error("resets")
	}
}
