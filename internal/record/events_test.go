package record

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/svctrace/svctrace/internal/nf"
)

// full is an event with every field set: a field the binary form does not
// carry fails the round trip below.
func full() nf.Event {
	tup := func(a, b string) nf.Tuple {
		return nf.Tuple{Src: netip.MustParseAddrPort(a), Dst: netip.MustParseAddrPort(b), Proto: nf.TCP}
	}
	return nf.Event{Time: 1_000_000_123, Kind: nf.KindDrop, Hook: nf.Forward, Stage: nf.StagePostFilter, Family: nf.IPv6,
		NetNS: 4026531840, InIf: 3, OutIf: 7, Packet: 0xdeadbeefcafe0001, Len: 1500, Mark: 0x4000, Fragment: true,
		Tuple: tup("[fd00::2]:40000", "[fd00:96::10]:80"), TCPFlags: nf.SYN | nf.ACK, Outer: tup("10.97.1.1:41234", "10.97.1.2:8472"),
		ICMP: nf.ICMPInfo{Type: 1, Code: 4, Inner: tup("[fd00::1]:1", "[fd00::9]:2")},
		CT: nf.Conntrack{ID: 0x1234567890abcdef, Info: nf.CTInfo(3), Status: nf.CTStatus(0x1ba), Mark: 9, Zone: 2,
			Orig: tup("10.99.0.2:40000", "10.96.0.10:80"), Reply: tup("10.244.0.11:8080", "10.99.0.2:40000")},
		Drop:    nf.Drop{Reason: "NETFILTER_DROP", ReasonCode: 6, Location: "nf_hook_slow+0x9c"},
		Counted: nf.Counted{Packets: [2]uint32{5, 6}, Bytes: [2]uint64{7000, 8000}},
		Data:    []byte{0x45, 0, 0, 60}}
}

// Every field of every kind of event comes back as it was written, also
// when it changes back to zero in the next event; time may go backwards
// (events of several CPUs).
func TestEventsRoundTrip(t *testing.T) {
	// Every field set: a new field of nf.Event is caught here.
	f := full()
	v := reflect.ValueOf(f)
	for i := range v.NumField() {
		if v.Field(i).IsZero() {
			t.Fatalf("full() leaves %s zero: set it, and carry it in events.go", v.Type().Field(i).Name)
		}
	}
	evs := []nf.Event{f, {Time: 999, Kind: nf.KindHook}, f, event(2_000_000_000), {}, f}
	second := f
	second.Stage, second.Data, second.CT = nf.StageLast, nil, nf.Conntrack{}
	evs = append(evs, second)
	var b []byte
	var prev nf.Event
	ends := map[int]bool{} // where an event ends
	for i := range evs {
		b = appendEvent(b, &prev, &evs[i])
		prev = evs[i]
		ends[len(b)] = true
	}
	r := eventReader{p: b}
	for i, want := range evs {
		got, ok := r.next()
		if !ok || !reflect.DeepEqual(got, want) {
			t.Fatalf("event %d: %v (%v)\n got %+v\nwant %+v", i, ok, r.err, got, want)
		}
	}
	if _, ok := r.next(); ok || r.err != nil {
		t.Errorf("after the last event: %v", r.err)
	}
	// Cut anywhere inside an event: an error, never a panic.
	for n := 1; n < len(b); n++ {
		r := eventReader{p: b[:n]}
		for {
			if _, ok := r.next(); !ok {
				break
			}
		}
		if (r.err == nil) != ends[n] {
			t.Fatalf("cut at byte %d of %d: error %v", n, len(b), r.err)
		}
	}
}
