// Package testutil holds helpers shared by svctrace's tests.
package testutil

import (
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// RequireRoot skips a test that needs root (network namespaces, iptables,
// BPF) when not running as root. With SVCTRACE_REQUIRE_ROOT=1 (CI, make
// test-privileged) it fails instead, so privileged tests cannot be skipped
// unnoticed.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("SVCTRACE_REQUIRE_ROOT") == "1" {
		t.Fatal("this test needs root, and SVCTRACE_REQUIRE_ROOT=1 forbids skipping it")
	}
	t.Skip("needs root (network namespaces, iptables, BPF): run the tests with sudo")
}

// NewNetNS creates a named network namespace with loopback up, removed when
// the test ends. It returns the name (as `ip netns` knows it).
func NewNetNS(t testing.TB) string {
	t.Helper()
	RequireRoot(t)
	var b [4]byte
	rand.Read(b[:])
	name := fmt.Sprintf("svctrace-test-%x", b)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	h, err := netns.NewNamed(name)
	if err == nil {
		lo, lerr := netlink.LinkByName("lo")
		if lerr == nil {
			lerr = netlink.LinkSetUp(lo)
		}
		err = lerr
		h.Close()
	}
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("returning to the original network namespace: %v", serr) // thread stays locked
	}
	orig.Close()
	runtime.UnlockOSThread()
	t.Cleanup(func() { netns.DeleteNamed(name) })
	if err != nil {
		t.Fatalf("creating network namespace %s: %v", name, err)
	}
	return name
}

// Links returns the BPF links attached on this machine, by ID, with their
// type. Comparing two calls shows what a test attached and detached (test
// packages run one at a time: make test uses -p 1).
func Links(t testing.TB) map[link.ID]link.Type {
	t.Helper()
	ids := map[link.ID]link.Type{}
	var it link.Iterator
	for it.Next() {
		l := it.Take()
		if info, err := l.Info(); err == nil {
			ids[info.ID] = info.Type
		}
		l.Close()
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// RunNanos is the time pid's threads have run, in ns (schedstat: exact,
// where /proc/PID/stat counts 10 ms ticks, too coarse for an idle process).
func RunNanos(pid int) (float64, bool) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, false
	}
	var sum float64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			return 0, false
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, false
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, false
		}
		sum += v
	}
	return sum, true
}

// StatusMB reads one "Key:  N kB" line of a /proc/PID/status text (VmRSS,
// VmHWM, RssAnon…), in MB; 0 if the key is not there.
func StatusMB(status []byte, key string) float64 {
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
