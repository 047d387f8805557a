package tracer

import (
	"testing"

	"github.com/svctrace/svctrace/internal/nf"
)

func BenchmarkDecode(b *testing.B) {
	d := decoder{key: 1}
	rec := raw(bpfEvent{Kind: uint8(nf.KindHook), Hook: uint8(nf.PreRouting), Family: uint8(nf.IPv4), Flags: flagPacket | flagCT,
		Skb: 0xffff888001234500, Ct: 0xffff888009876500,
		Pkt:   bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.96.0.10"), Sport: port(41162), Dport: port(80), Proto: uint8(nf.TCP)},
		Orig:  bpfTuple{Saddr: v4("10.99.0.2"), Daddr: v4("10.96.0.10"), Sport: port(41162), Dport: port(80), Proto: uint8(nf.TCP)},
		Reply: bpfTuple{Saddr: v4("10.244.0.11"), Daddr: v4("10.99.0.2"), Sport: port(8080), Dport: port(41162), Proto: uint8(nf.TCP)}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.decode(rec); err != nil {
			b.Fatal(err)
		}
	}
}
