package nf

import (
	"fmt"
	"strconv"
	"strings"
)

// Text forms of the event enums, so events encode as readable JSON (test
// fixtures, recordings) and decode back to the same values.

func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }
func (k *Kind) UnmarshalText(b []byte) error {
	return unmarshalEnum(b, k, []Kind{KindHook, KindDrop, KindCount, KindSettled})
}

func (f Family) MarshalText() ([]byte, error) { return []byte(f.String()), nil }
func (f *Family) UnmarshalText(b []byte) error {
	return unmarshalEnum(b, f, []Family{IPv4, IPv6})
}

func (h Hook) MarshalText() ([]byte, error)  { return []byte(h.String()), nil }
func (h *Hook) UnmarshalText(b []byte) error { return unmarshalEnum(b, h, Hooks) }

func (s Stage) MarshalText() ([]byte, error) {
	if s == StageNone {
		return nil, nil
	}
	return []byte(s.String()), nil
}
func (s *Stage) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*s = StageNone
		return nil
	}
	all := make([]Stage, 0, len(stages))
	for st := range stages {
		all = append(all, st)
	}
	return unmarshalEnum(b, s, all)
}

func (p Proto) MarshalText() ([]byte, error) { return []byte(p.String()), nil }
func (p *Proto) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*p = 0
		return nil
	}
	if err := unmarshalEnum(b, p, []Proto{ICMP, TCP, UDP, ICMPv6, SCTP}); err == nil {
		return nil
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(string(b), "proto-"), 10, 8)
	*p = Proto(n)
	return err
}

func (c CTInfo) MarshalText() ([]byte, error) { return []byte(c.String()), nil }
func (c *CTInfo) UnmarshalText(b []byte) error {
	return unmarshalEnum(b, c, []CTInfo{CTEstablished, CTRelated, CTNew, CTEstablishedReply, CTRelatedReply, CTUntracked})
}

func (f TCPFlags) MarshalText() ([]byte, error) { return []byte(f.String()), nil }
func (f *TCPFlags) UnmarshalText(b []byte) error {
	*f = 0
	for _, part := range strings.Split(string(b), ",") {
		if part == "" {
			continue
		}
		found := false
		for bit := TCPFlags(1); bit != 0; bit <<= 1 {
			if bit.String() == part {
				*f |= bit
				found = true
			}
		}
		if !found {
			return fmt.Errorf("unknown TCP flag %q", part)
		}
	}
	return nil
}

func (s CTStatus) MarshalText() ([]byte, error) { return []byte(s.String()), nil }
func (s *CTStatus) UnmarshalText(b []byte) error {
	*s = 0
	for _, part := range strings.Split(string(b), "|") {
		if part == "" {
			continue
		}
		i := indexOf(ctStatusNames, part)
		if i < 0 {
			return fmt.Errorf("unknown conntrack status %q", part)
		}
		*s |= 1 << i
	}
	return nil
}

func indexOf(names []string, s string) int {
	for i, n := range names {
		if n == s {
			return i
		}
	}
	return -1
}

func unmarshalEnum[T fmt.Stringer](b []byte, dst *T, all []T) error {
	for _, v := range all {
		if v.String() == string(b) {
			*dst = v
			return nil
		}
	}
	return fmt.Errorf("unknown value %q", b)
}
