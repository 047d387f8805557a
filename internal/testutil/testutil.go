// Package testutil holds helpers shared by svctrace's tests.
package testutil

import (
	"os"
	"testing"
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
