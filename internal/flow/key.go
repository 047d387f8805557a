package flow

import "github.com/svctrace/svctrace/internal/nf"

// key is a tuple as the assembler's indexes hold it: plain bytes. An
// nf.Tuple's addresses hold pointers (netip.Addr's zone), so maps keyed by
// it hash field by field and the garbage collector scans them; this hashes
// as one block, is about half the size and holds no pointer. Events carry no
// zones.
type key struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        nf.Proto
	v6           bool // IPv4 addresses are held IPv4-mapped
}

func keyOf(t nf.Tuple) key {
	return key{src: t.Src.Addr().As16(), dst: t.Dst.Addr().As16(), sport: t.Src.Port(), dport: t.Dst.Port(),
		proto: t.Proto, v6: t.Src.Addr().Is6()}
}
