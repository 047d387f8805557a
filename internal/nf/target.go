package nf

import (
	"fmt"
	"net/netip"
	"strings"
)

// Target is an address the kernel side watches.
type Target struct {
	Addr  netip.AddrPort
	Proto Proto
}

func (t Target) String() string { return fmt.Sprintf("%s/%s", t.Addr, t.Proto) }

// ParseTarget reads IP:PORT[/proto] ([IPv6]:PORT for IPv6).
func ParseTarget(s string) (Target, error) {
	addr, proto := s, "tcp"
	if i := strings.LastIndex(s, "/"); i >= 0 {
		addr, proto = s[:i], s[i+1:]
	}
	p, err := ParseProto(proto)
	if err != nil {
		return Target{}, fmt.Errorf("invalid --addr %q: %v", s, err)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || ap.Port() == 0 {
		return Target{}, fmt.Errorf("invalid --addr %q: want IP:PORT with an optional /tcp, /udp or /sctp, e.g. 10.96.0.10:80 or [fd00::10]:53/udp", s)
	}
	return Target{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Proto: p}, nil
}
