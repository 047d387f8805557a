package tracer

import (
	"bytes"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/svctrace/svctrace/internal/nf"
)

// rawEventSize is the size of one ring buffer record of one observation;
// rawPathSize of a packet's path (kind pathKind).
const (
	rawEventSize = int(unsafe.Sizeof(bpfEvent{}))
	rawPathSize  = int(unsafe.Sizeof(bpfPacketPath{}))
)

// pathKind is bpf/svctrace.h's EVENT_PATH: the record is a packet's path,
// the observations of one packet through the namespace's hooks.
const pathKind = 4

// bpfEvent flag bits (bpf/svctrace.h).
const (
	flagPacket = 0x1
	flagCT     = 0x2
	flagInner  = 0x4
	flagFrag   = 0x8
	flagEncap  = 0x10
)

// encapPacket sets an overlay packet's identity apart from the packet it
// carries, which may have the same skb (VXLAN encapsulates in place): in
// the assembler each is its own packet.
const encapPacket = 1 << 63

var errShortRecord = errors.New("short record")

// decoder turns raw ring buffer records into Events.
type decoder struct {
	// key scrambles kernel addresses (skb, nf_conn) into opaque identities:
	// equal addresses stay equal, but no kernel pointer reaches the output.
	key     uint64
	reasons map[uint32]string
	symbols Symbolizer
	// dns: the kernel captured DNS packets past their headers for their
	// question (Options.DNSQuestions); what follows the question, beyond
	// snaplen bytes, is dropped here.
	dns     bool
	snaplen int
}

// Symbolizer turns a kernel text address into "symbol+0xoffset".
type Symbolizer interface {
	Symbolize(addr uint64) string
}

func (d *decoder) decode(raw []byte) (nf.Event, error) {
	if len(raw) < rawEventSize {
		return nf.Event{}, fmt.Errorf("%w: %d bytes, want %d", errShortRecord, len(raw), rawEventSize)
	}
	return d.event(as[bpfEvent](raw)), nil
}

// as reads raw as a T in place when it is aligned for one, as the ring
// buffer's records are (8 bytes), else from a copy.
func as[T any](raw []byte) *T {
	if p := unsafe.Pointer(unsafe.SliceData(raw)); uintptr(p)%unsafe.Alignof(*new(T)) == 0 {
		return (*T)(p)
	}
	v := new(T)
	copy(unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v)), raw)
	return v
}

// decodeAll appends the events of one ring buffer record to out: one, or
// those of a packet's path, observer by observer.
func (d *decoder) decodeAll(raw []byte, out []nf.Event) ([]nf.Event, error) {
	ev, err := d.decode(raw)
	if err != nil {
		return out, err
	}
	first := len(out)
	if raw[unsafe.Offsetof(bpfEvent{}.Kind)] != pathKind {
		out = append(out, ev)
	} else if len(raw) < rawPathSize {
		return out, fmt.Errorf("%w: a path of %d bytes, want %d", errShortRecord, len(raw), rawPathSize)
	} else {
		out = d.path(as[bpfPacketPath](raw), ev, out)
	}
	if r := as[bpfEvent](raw); ev.Kind != nf.KindCount && r.Packets != [2]uint32{} {
		out = countedBefore(out, first, nf.Counted{Packets: r.Packets, Bytes: r.Bytes})
	}
	return out, nil
}

// countedBefore puts the counts a reported packet's record carries (the
// packets of its connection only counted since the last report, see the
// kernel side's take_counts) ahead of the record's events out[first:], as
// the count event they stand for, naming the connection by the first of
// them that has its conntrack entry.
func countedBefore(out []nf.Event, first int, n nf.Counted) []nf.Event {
	i := slices.IndexFunc(out[first:], func(e nf.Event) bool { return e.CT.ID != 0 })
	if i < 0 {
		return out // no entry to name the connection by: nothing to count on
	}
	e := out[first+i]
	c := nf.Event{Time: out[first].Time, Kind: nf.KindCount, Family: e.Family, NetNS: e.NetNS, CT: e.CT, Counted: n}
	return slices.Insert(out, first, c)
}

// path expands a packet's path: its first observation (ev, in full) and
// one event per step, the header's packet with what the step read.
func (d *decoder) path(p *bpfPacketPath, ev nf.Event, out []nf.Event) []nf.Event {
	ev.Kind = nf.KindHook
	out = append(out, ev)
	fam := ev.Family
	pick := func(i uint8, base *bpfTuple) nf.Tuple {
		if i == 0 || int(i) > min(int(p.Ntuples), len(p.Tuples)) {
			return tuple(base, fam)
		}
		return tuple(&p.Tuples[i-1], fam)
	}
	for i := range min(int(p.Nsteps), len(p.Steps)) {
		st := &p.Steps[i]
		e := ev
		e.Time = p.E.Ts + uint64(st.Dt)
		e.Stage, e.Hook = nf.Stage(st.Stage), nf.Hook(st.Hook)
		e.InIf, e.OutIf = st.IfindexIn, st.IfindexOut
		e.Len, e.Mark = st.Len, st.SkbMark
		if ev.Outer.IsValid() {
			e.Outer = pick(st.Pkt, &p.E.Pkt) // the carried packet stays as it was
		} else {
			e.Tuple = pick(st.Pkt, &p.E.Pkt)
		}
		e.CT = nf.Conntrack{}
		if st.Flags&flagCT != 0 {
			e.CT = nf.Conntrack{
				ID:     d.scramble(st.Ct),
				Info:   nf.CTInfo(st.Ctinfo),
				Status: nf.CTStatus(st.CtStatus),
				Mark:   st.CtMark,
				Zone:   st.CtZone,
				Orig:   pick(st.Orig, &p.E.Orig),
				Reply:  pick(st.Reply, &p.E.Reply),
			}
		} else if nf.CTInfo(st.Ctinfo) == nf.CTUntracked {
			e.CT.Info = nf.CTUntracked
		}
		e.Data = nil
		switch i + 1 {
		case int(p.DataStep):
			e.Data = d.captured(p.Data1[:], p.CapLen1)
		case int(p.DataStep2):
			e.Data = d.captured(p.Data2[:], p.CapLen2)
		}
		out = append(out, e)
	}
	return out
}

func (d *decoder) event(r *bpfEvent) nf.Event {
	fam := nf.Family(r.Family)
	ev := nf.Event{
		Time:     r.Ts,
		Kind:     nf.Kind(r.Kind),
		Hook:     nf.Hook(r.Hook),
		Stage:    nf.Stage(r.Stage),
		Family:   fam,
		NetNS:    r.Netns,
		InIf:     r.IfindexIn,
		OutIf:    r.IfindexOut,
		Packet:   d.scramble(r.Skb),
		Len:      r.Len,
		Mark:     r.SkbMark,
		Fragment: r.Flags&flagFrag != 0,
	}
	if r.Flags&flagPacket != 0 {
		ev.Tuple = tuple(&r.Pkt, fam)
		ev.TCPFlags = nf.TCPFlags(r.TcpFlags)
		if p := ev.Tuple.Proto; p == nf.ICMP || p == nf.ICMPv6 {
			ev.ICMP = nf.ICMPInfo{Type: r.IcmpType, Code: r.IcmpCode}
			if r.Flags&flagInner != 0 {
				ev.ICMP.Inner = tuple(&r.Inner, fam)
			}
		}
	}
	if r.Flags&flagEncap != 0 {
		ev.Outer, ev.Tuple = ev.Tuple, tuple(&r.Inner, fam)
		ev.Packet ^= encapPacket
	}
	if r.Flags&flagCT != 0 {
		ev.CT = nf.Conntrack{
			ID:     d.scramble(r.Ct),
			Info:   nf.CTInfo(r.Ctinfo),
			Status: nf.CTStatus(r.CtStatus),
			Mark:   r.CtMark,
			Zone:   r.CtZone,
			Orig:   tuple(&r.Orig, fam),
			Reply:  tuple(&r.Reply, fam),
		}
	} else if nf.CTInfo(r.Ctinfo) == nf.CTUntracked {
		// The raw table's NOTRACK: no entry on purpose. Without it, a
		// packet past conntrack with no entry is INVALID.
		ev.CT.Info = nf.CTUntracked
	}
	ev.Data = d.captured(r.Data[:], r.CapLen)
	if ev.Kind == nf.KindCount {
		ev.Counted = nf.Counted{Packets: r.Packets, Bytes: r.Bytes}
	}
	if ev.Kind == nf.KindDrop {
		ev.Drop = nf.Drop{ReasonCode: r.DropReason, Reason: d.reason(r.DropReason)}
		if d.symbols != nil {
			ev.Drop.Location = d.symbols.Symbolize(r.Location)
		} else {
			ev.Drop.Location = fmt.Sprintf("%#x", r.Location)
		}
	}
	return ev
}

// scramble is a bijection on uint64 (odd multiplier, xor, rotation), so
// distinct addresses keep distinct identities. 0 stays 0 only for key 0.
func (d *decoder) scramble(addr uint64) uint64 {
	if addr == 0 {
		return 0
	}
	return bits.RotateLeft64(addr*0x9e3779b97f4a7c15^d.key, 29) | 1
}

// reason names a drop reason. Kernels before 5.17 give none (0, and no
// names to look it up in): "".
func (d *decoder) reason(code uint32) string {
	if n, ok := d.reasons[code]; ok {
		return n
	}
	if code == 0 && len(d.reasons) == 0 {
		return ""
	}
	return fmt.Sprintf("reason-%d", code)
}

// captured is a copy of the n bytes of data the kernel captured, or nil:
// a DNS packet's up to its question or snaplen, whichever is more.
func (d *decoder) captured(data []byte, n uint16) []byte {
	m := min(int(n), len(data))
	if m <= 0 {
		return nil
	}
	if d.dns {
		m = max(len(nf.KeepDNSQuestion(data[:m])), min(m, d.snaplen))
	}
	return bytes.Clone(data[:m])
}

func tuple(t *bpfTuple, fam nf.Family) nf.Tuple {
	return nf.Tuple{
		Src:   netip.AddrPortFrom(addr(t.Saddr, fam), ntohs(t.Sport)),
		Dst:   netip.AddrPortFrom(addr(t.Daddr, fam), ntohs(t.Dport)),
		Proto: nf.Proto(t.Proto),
	}
}

func addr(b [16]byte, fam nf.Family) netip.Addr {
	if fam == nf.IPv4 {
		return netip.AddrFrom4([4]byte(b[12:16]))
	}
	return netip.AddrFrom16(b)
}

// ntohs converts a port read as a host (little-endian) uint16 from network
// byte order.
func ntohs(v uint16) uint16 { return bits.ReverseBytes16(v) }

// targetKey encodes a watched address the way the kernel side compares it.
func targetKey(t nf.Target) bpfTargetKey {
	return bpfTargetKey{Addr: t.Addr.Addr().As16(), Port: bits.ReverseBytes16(t.Addr.Port()), Proto: uint8(t.Proto)}
}

// targetOf is targetKey's inverse (IPv4 addresses are held IPv4-mapped).
func targetOf(k bpfTargetKey) nf.Target {
	a := netip.AddrFrom16(k.Addr).Unmap()
	return nf.Target{Addr: netip.AddrPortFrom(a, bits.ReverseBytes16(k.Port)), Proto: nf.Proto(k.Proto)}
}
