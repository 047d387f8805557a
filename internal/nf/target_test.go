package nf

import "testing"

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]string{
		"10.96.0.10:80":        "10.96.0.10:80/tcp",
		"10.96.0.10:53/udp":    "10.96.0.10:53/udp",
		"10.96.0.10:53/UDP":    "10.96.0.10:53/udp",
		"[fd00::10]:443":       "[fd00::10]:443/tcp",
		"[::ffff:10.0.0.1]:80": "10.0.0.1:80/tcp",
		"10.96.0.10:9999/sctp": "10.96.0.10:9999/sctp",
	} {
		got, err := ParseTarget(in)
		if err != nil || got.String() != want {
			t.Errorf("%q: %v %v, want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"10.96.0.10", "10.96.0.10:0", "10.96.0.10:80/icmp", "web:80", "fd00::10:80", ""} {
		if _, err := ParseTarget(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
