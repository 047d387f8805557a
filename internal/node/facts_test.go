package node

import (
	"net/netip"
	"testing"
)

// Merge keeps each fact from the first facts that hold it: facts read
// again, given first, answer before older ones, sysctls and interfaces
// included.
func TestMergeFirstWins(t *testing.T) {
	a := netip.MustParseAddr("10.244.0.11")
	fresh := &Facts{Routes: []Route{{To: a, Type: "unreachable"}}, Sysctls: map[string]string{"net.ipv4.conf.all.rp_filter": "1"},
		Links: map[string]Link{"cbr0": {MTU: 1000}}, Qdiscs: []Qdisc{{Dev: "veth3", Kind: "pfifo", Dropped: 9}}}
	old := &Facts{Routes: []Route{{To: a, Type: "unicast"}}, Sysctls: map[string]string{"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.ip_forward": "1"},
		Links: map[string]Link{"cbr0": {MTU: 1500}}, Qdiscs: []Qdisc{{Dev: "veth3", Kind: "pfifo", Dropped: 2}, {Dev: "cbr0", Kind: "noqueue"}}}
	m := Merge(nil, fresh, old)
	if r, _ := m.Route(a); r.Type != "unreachable" || len(m.Routes) != 1 {
		t.Errorf("routes %+v", m.Routes)
	}
	if m.Sysctls["net.ipv4.conf.all.rp_filter"] != "1" || m.Sysctls["net.ipv4.ip_forward"] != "1" || m.Links["cbr0"].MTU != 1000 {
		t.Errorf("sysctls %v, links %v", m.Sysctls, m.Links)
	}
	if q := m.QdiscsOn("veth3"); len(q) != 1 || q[0].Dropped != 9 || len(m.QdiscsOn("cbr0")) != 1 {
		t.Errorf("qdiscs %+v", m.Qdiscs)
	}
	if Merge(nil, nil) != nil {
		t.Error("Merge of nothing")
	}
}
