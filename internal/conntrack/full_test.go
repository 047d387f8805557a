package conntrack

import "testing"

// A table at its limit, or hovering there with drops counted, is full.
func TestFull(t *testing.T) {
	for _, c := range []struct {
		count, max, drop uint64
		full             bool
	}{
		{262144, 262144, 0, true},
		{262143, 262144, 2, true},
		{262143, 262144, 0, false},
		{200000, 262144, 5, false},
		{0, 0, 0, false},
	} {
		tb := &Table{Count: c.count, Max: c.max, Stats: map[string]uint64{"drop": c.drop}}
		if tb.Full() != c.full {
			t.Errorf("%d of %d, %d drops: full %v, want %v", c.count, c.max, c.drop, tb.Full(), c.full)
		}
	}
	if (*Table)(nil).Full() {
		t.Error("a table not read is not full")
	}
}
