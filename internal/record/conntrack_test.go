package record

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"testing"
)

func entry(i int, state string) Conntrack {
	return Conntrack{Proto: "tcp", State: state,
		Orig:  [2]netip.AddrPort{netip.MustParseAddrPort(fmt.Sprintf("10.99.0.2:%d", 1024+i)), netip.MustParseAddrPort("10.96.0.10:80")},
		Reply: [2]netip.AddrPort{netip.MustParseAddrPort("10.244.0.12:8080"), netip.MustParseAddrPort(fmt.Sprintf("10.244.0.1:%d", 1024+i))}}
}

// A busy Service's thousands of closing entries do not crowd out the open
// ones, and the snapshot says how many there were.
func TestSnapshotBoundedOpenFirst(t *testing.T) {
	var all []Conntrack
	for i := range 3 * MaxSnapshot {
		st := "TIME_WAIT"
		if i%500 == 499 {
			st = "ESTABLISHED"
		}
		all = append(all, entry(i, st))
	}
	s := bounded(all)
	if s.Total != 3*MaxSnapshot || len(s.Entries) != MaxSnapshot {
		t.Fatalf("total %d, %d entries", s.Total, len(s.Entries))
	}
	for i, e := range s.Entries[:6] {
		if e.State != "ESTABLISHED" || e.Orig[0].Port() != uint16(1024+499+500*i) {
			t.Errorf("entry %d: %s %s, want the open ones first, in table order", i, e.State, e.Orig[0])
		}
	}
	if s.Entries[6].State != "TIME_WAIT" {
		t.Errorf("entry 6: %s", s.Entries[6].State)
	}
	if small := bounded(all[:3]); small.Total != 3 || len(small.Entries) != 3 {
		t.Errorf("a small table: %+v", small)
	}
}

// Recordings made before snapshots were bounded hold a plain list.
func TestSnapshotReadsThePlainList(t *testing.T) {
	old, _ := json.Marshal([]Conntrack{entry(1, ""), entry(2, "")})
	var s ConntrackSnapshot
	if err := json.Unmarshal(old, &s); err != nil || s.Total != 2 || len(s.Entries) != 2 || s.Entries[1].Orig[0].Port() != 1026 {
		t.Errorf("%+v, %v", s, err)
	}
	b, _ := json.Marshal(bounded([]Conntrack{entry(1, "ESTABLISHED")}))
	s = ConntrackSnapshot{}
	if err := json.Unmarshal(b, &s); err != nil || s.Total != 1 || s.Entries[0].State != "ESTABLISHED" {
		t.Errorf("%s: %+v, %v", b, s, err)
	}
}
