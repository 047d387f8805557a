package nf

import "testing"

// Position orders a packet's observations along its path: by hook, then by
// the hook's plan; a stage the hook does not observe comes first on it.
func TestPosition(t *testing.T) {
	path := []struct {
		h Hook
		s Stage
	}{
		{PreRouting, StagePreConntrack}, {PreRouting, StagePostConntrack}, {PreRouting, StagePreDNAT},
		{PreRouting, StagePostDNAT}, {PreRouting, StageLast},
		{Forward, StagePreFilter}, {Forward, StagePostFilter},
		{PostRouting, StagePreSNAT}, {PostRouting, StagePostSNAT}, {PostRouting, StageLast},
	}
	for i := 1; i < len(path); i++ {
		a, b := path[i-1], path[i]
		if Position(a.h, a.s) >= Position(b.h, b.s) {
			t.Errorf("%s/%s at %d, not before %s/%s at %d", a.h, a.s, Position(a.h, a.s), b.h, b.s, Position(b.h, b.s))
		}
	}
	if p, first := Position(Forward, StagePreDNAT), Position(Forward, StagePreFilter); p != first {
		t.Errorf("FORWARD/pre-dnat (not observed there) at %d, want the hook's start %d", p, first)
	}
	if p := Position(Hook(9), Stage(200)); p != Hook(9).Rank()*16 {
		t.Errorf("an unknown hook and stage at %d", p)
	}
}
