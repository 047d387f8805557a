package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/svctrace/svctrace/internal/nf"
)

// A TypeEvents record holds events in a compact binary form, one after
// another, each only as far as it differs from the one before it in the
// record (the first from the zero Event): a uvarint mask of the fields
// that differ, then those fields in the order of the bits below. Events of
// one packet at consecutive observers differ in a few fields, so a
// connection's events take about 2 KB where JSON took 25. Numbers are
// uvarints (Time: a zigzag varint of the difference), identities 8 bytes
// little-endian, strings and bytes a uvarint length and their bytes, an
// address a byte saying its kind (0: none, 4, 16) and its bytes, then the
// port as 2 bytes big-endian.
const (
	fTime = 1 << iota
	fKind
	fHook
	fStage
	fFamily
	fNetNS
	fInIf
	fOutIf
	fPacket
	fLen
	fMark
	fTuple
	fFragment
	fTCPFlags
	fICMP // type, code, inner tuple
	fCTID
	fCTInfo
	fCTStatus
	fCTMark
	fCTZone
	fCTOrig
	fCTReply
	fDrop    // reason code, reason, location
	fCounted // packets and bytes, original then reply
	fData
	// fOuter: the overlay packet carrying the event's (nf.Event.Outer);
	// a reader from before it stops at the first such event, as at an
	// unknown field.
	fOuter
)

// eventBatch is the largest TypeEvents payload the writer builds before it
// writes the record.
const eventBatch = 64 << 10

// appendEvent appends ev, as it differs from prev, to b.
func appendEvent(b []byte, prev, ev *nf.Event) []byte {
	var mask uint64
	set := func(bit uint64, differs bool) {
		if differs {
			mask |= bit
		}
	}
	set(fTime, ev.Time != prev.Time)
	set(fKind, ev.Kind != prev.Kind)
	set(fHook, ev.Hook != prev.Hook)
	set(fStage, ev.Stage != prev.Stage)
	set(fFamily, ev.Family != prev.Family)
	set(fNetNS, ev.NetNS != prev.NetNS)
	set(fInIf, ev.InIf != prev.InIf)
	set(fOutIf, ev.OutIf != prev.OutIf)
	set(fPacket, ev.Packet != prev.Packet)
	set(fLen, ev.Len != prev.Len)
	set(fMark, ev.Mark != prev.Mark)
	set(fTuple, ev.Tuple != prev.Tuple)
	set(fFragment, ev.Fragment != prev.Fragment)
	set(fTCPFlags, ev.TCPFlags != prev.TCPFlags)
	set(fICMP, ev.ICMP != prev.ICMP)
	set(fCTID, ev.CT.ID != prev.CT.ID)
	set(fCTInfo, ev.CT.Info != prev.CT.Info)
	set(fCTStatus, ev.CT.Status != prev.CT.Status)
	set(fCTMark, ev.CT.Mark != prev.CT.Mark)
	set(fCTZone, ev.CT.Zone != prev.CT.Zone)
	set(fCTOrig, ev.CT.Orig != prev.CT.Orig)
	set(fCTReply, ev.CT.Reply != prev.CT.Reply)
	set(fDrop, ev.Drop != prev.Drop)
	set(fCounted, ev.Counted != prev.Counted)
	set(fData, !bytes.Equal(ev.Data, prev.Data))
	set(fOuter, ev.Outer != prev.Outer)

	b = binary.AppendUvarint(b, mask)
	if mask&fTime != 0 {
		b = binary.AppendVarint(b, int64(ev.Time-prev.Time))
	}
	u := func(bit uint64, v uint64) {
		if mask&bit != 0 {
			b = binary.AppendUvarint(b, v)
		}
	}
	u(fKind, uint64(ev.Kind))
	u(fHook, uint64(ev.Hook))
	u(fStage, uint64(ev.Stage))
	u(fFamily, uint64(ev.Family))
	u(fNetNS, uint64(ev.NetNS))
	u(fInIf, uint64(ev.InIf))
	u(fOutIf, uint64(ev.OutIf))
	if mask&fPacket != 0 {
		b = binary.LittleEndian.AppendUint64(b, ev.Packet)
	}
	u(fLen, uint64(ev.Len))
	u(fMark, uint64(ev.Mark))
	if mask&fTuple != 0 {
		b = appendTuple(b, ev.Tuple)
	}
	if mask&fFragment != 0 {
		b = append(b, boolByte(ev.Fragment))
	}
	u(fTCPFlags, uint64(ev.TCPFlags))
	if mask&fICMP != 0 {
		b = append(b, ev.ICMP.Type, ev.ICMP.Code)
		b = appendTuple(b, ev.ICMP.Inner)
	}
	if mask&fCTID != 0 {
		b = binary.LittleEndian.AppendUint64(b, ev.CT.ID)
	}
	u(fCTInfo, uint64(ev.CT.Info))
	u(fCTStatus, uint64(ev.CT.Status))
	u(fCTMark, uint64(ev.CT.Mark))
	u(fCTZone, uint64(ev.CT.Zone))
	if mask&fCTOrig != 0 {
		b = appendTuple(b, ev.CT.Orig)
	}
	if mask&fCTReply != 0 {
		b = appendTuple(b, ev.CT.Reply)
	}
	if mask&fDrop != 0 {
		b = binary.AppendUvarint(b, uint64(ev.Drop.ReasonCode))
		b = appendBytes(b, []byte(ev.Drop.Reason))
		b = appendBytes(b, []byte(ev.Drop.Location))
	}
	if mask&fCounted != 0 {
		for _, v := range []uint64{uint64(ev.Counted.Packets[0]), uint64(ev.Counted.Packets[1]), ev.Counted.Bytes[0], ev.Counted.Bytes[1]} {
			b = binary.AppendUvarint(b, v)
		}
	}
	if mask&fData != 0 {
		b = appendBytes(b, ev.Data)
	}
	if mask&fOuter != 0 {
		b = appendTuple(b, ev.Outer)
	}
	return b
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendTuple(b []byte, t nf.Tuple) []byte {
	b = appendAddrPort(b, t.Src)
	b = appendAddrPort(b, t.Dst)
	return append(b, byte(t.Proto))
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	a := ap.Addr()
	switch {
	case a.Is4():
		v := a.As4()
		b = append(append(b, 4), v[:]...)
	case a.IsValid():
		v := a.As16()
		b = append(append(b, 16), v[:]...)
	default:
		b = append(b, 0)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

var errEventsShort = errors.New("ends inside an event")

// eventReader reads the events of a TypeEvents payload.
type eventReader struct {
	p    []byte
	prev nf.Event
	err  error
}

func (r *eventReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.p)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.p = r.p[n:]
	return v
}

// take returns the next n bytes; on an error, zeros where a caller reads
// a fixed few (never a corrupt length's worth).
func (r *eventReader) take(n int) []byte {
	if n < 0 || len(r.p) < n {
		r.fail()
		if n < 0 || n > 16 {
			return nil
		}
		return make([]byte, n)
	}
	v := r.p[:n]
	r.p = r.p[n:]
	return v
}

func (r *eventReader) fail() {
	if r.err == nil {
		r.err = errEventsShort
	}
	r.p = nil
}

func (r *eventReader) tuple() nf.Tuple {
	return nf.Tuple{Src: r.addrPort(), Dst: r.addrPort(), Proto: nf.Proto(r.take(1)[0])}
}

func (r *eventReader) addrPort() netip.AddrPort {
	var a netip.Addr
	switch k := r.take(1)[0]; k {
	case 4:
		a = netip.AddrFrom4([4]byte(r.take(4)))
	case 16:
		a = netip.AddrFrom16([16]byte(r.take(16)))
	case 0:
	default:
		if r.err == nil {
			r.err = fmt.Errorf("an address of kind %d", k)
		}
	}
	return netip.AddrPortFrom(a, binary.BigEndian.Uint16(r.take(2)))
}

// next decodes the next event; false at the end of the payload or on an
// error (r.err).
func (r *eventReader) next() (nf.Event, bool) {
	if len(r.p) == 0 || r.err != nil {
		return nf.Event{}, false
	}
	ev := r.prev
	mask := r.uvarint()
	if mask >= fOuter<<1 {
		r.err = fmt.Errorf("unknown fields %#x", mask)
		return nf.Event{}, false
	}
	if mask&fTime != 0 {
		v, n := binary.Varint(r.p)
		if n <= 0 {
			r.fail()
		} else {
			r.p = r.p[n:]
			ev.Time += uint64(v)
		}
	}
	u := func(bit uint64) (uint64, bool) {
		if mask&bit == 0 {
			return 0, false
		}
		return r.uvarint(), true
	}
	if v, ok := u(fKind); ok {
		ev.Kind = nf.Kind(v)
	}
	if v, ok := u(fHook); ok {
		ev.Hook = nf.Hook(v)
	}
	if v, ok := u(fStage); ok {
		ev.Stage = nf.Stage(v)
	}
	if v, ok := u(fFamily); ok {
		ev.Family = nf.Family(v)
	}
	if v, ok := u(fNetNS); ok {
		ev.NetNS = uint32(v)
	}
	if v, ok := u(fInIf); ok {
		ev.InIf = uint32(v)
	}
	if v, ok := u(fOutIf); ok {
		ev.OutIf = uint32(v)
	}
	if mask&fPacket != 0 {
		ev.Packet = binary.LittleEndian.Uint64(r.take(8))
	}
	if v, ok := u(fLen); ok {
		ev.Len = uint32(v)
	}
	if v, ok := u(fMark); ok {
		ev.Mark = uint32(v)
	}
	if mask&fTuple != 0 {
		ev.Tuple = r.tuple()
	}
	if mask&fFragment != 0 {
		ev.Fragment = r.take(1)[0] != 0
	}
	if v, ok := u(fTCPFlags); ok {
		ev.TCPFlags = nf.TCPFlags(v)
	}
	if mask&fICMP != 0 {
		tc := r.take(2)
		ev.ICMP = nf.ICMPInfo{Type: tc[0], Code: tc[1], Inner: r.tuple()}
	}
	if mask&fCTID != 0 {
		ev.CT.ID = binary.LittleEndian.Uint64(r.take(8))
	}
	if v, ok := u(fCTInfo); ok {
		ev.CT.Info = nf.CTInfo(v)
	}
	if v, ok := u(fCTStatus); ok {
		ev.CT.Status = nf.CTStatus(v)
	}
	if v, ok := u(fCTMark); ok {
		ev.CT.Mark = uint32(v)
	}
	if v, ok := u(fCTZone); ok {
		ev.CT.Zone = uint16(v)
	}
	if mask&fCTOrig != 0 {
		ev.CT.Orig = r.tuple()
	}
	if mask&fCTReply != 0 {
		ev.CT.Reply = r.tuple()
	}
	if mask&fDrop != 0 {
		ev.Drop.ReasonCode = uint32(r.uvarint())
		ev.Drop.Reason = string(r.take(int(r.uvarint())))
		ev.Drop.Location = string(r.take(int(r.uvarint())))
	}
	if mask&fCounted != 0 {
		ev.Counted.Packets[0] = uint32(r.uvarint())
		ev.Counted.Packets[1] = uint32(r.uvarint())
		ev.Counted.Bytes[0] = r.uvarint()
		ev.Counted.Bytes[1] = r.uvarint()
	}
	if mask&fData != 0 {
		if d := r.take(int(r.uvarint())); len(d) > 0 {
			ev.Data = bytes.Clone(d)
		} else {
			ev.Data = nil
		}
	}
	if mask&fOuter != 0 {
		ev.Outer = r.tuple()
	}
	if r.err != nil {
		return nf.Event{}, false
	}
	r.prev = ev
	return ev, true
}
