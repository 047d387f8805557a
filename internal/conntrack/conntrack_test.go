package conntrack

import (
	"strings"
	"testing"
)

// /proc/net/stat/nf_conntrack as kernel 6.18 prints it, two CPUs.
const stats = `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00040000  00000001 00000000 00000000 0000000a 00000000 00000000 00000000 00000000 00000002 00000010 00000000 00000000  00000000 00000000 00000000 00000000
00040000  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 00000001 00000005 00000003 00000000  00000000 00000000 00000000 00000000
`

func TestParseStats(t *testing.T) {
	s, err := ParseStats(strings.NewReader(stats))
	if err != nil {
		t.Fatal(err)
	}
	// entries is the namespace's total on every line; the rest add up.
	for name, want := range map[string]uint64{"entries": 0x40000, "invalid": 11, "insert_failed": 3, "drop": 21, "early_drop": 3, "clashres": 1} {
		if s[name] != want {
			t.Errorf("%s = %d, want %d", name, s[name], want)
		}
	}
	if _, err := ParseStats(strings.NewReader("entries drop\n1 2 3\n")); err == nil {
		t.Error("a line with more values than columns parsed")
	}
}
