package record

import (
	"bytes"
	"encoding/json"
	"slices"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/nf"
)

// MaxSnapshot bounds the entries a conntrack snapshot lists: a busy
// Service leaves tens of thousands of closing entries, which would cost
// the recording and its analysis more than they tell.
const MaxSnapshot = 1000

// ConntrackSnapshot is the traced addresses' conntrack entries at one
// moment: how many there were, and at most MaxSnapshot of them, those of
// connections not closing first.
type ConntrackSnapshot struct {
	Total   int         `json:"total"`
	Entries []Conntrack `json:"entries"`
}

// UnmarshalJSON also reads the plain list of entries that recordings made
// before the snapshot was bounded hold.
func (s *ConntrackSnapshot) UnmarshalJSON(b []byte) error {
	if b = bytes.TrimSpace(b); len(b) > 0 && b[0] == '[' {
		err := json.Unmarshal(b, &s.Entries)
		s.Total = len(s.Entries)
		return err
	}
	type plain ConntrackSnapshot
	return json.Unmarshal(b, (*plain)(s))
}

// Snapshot lists the conntrack entries of ns whose original destination,
// or reply source, is one of targets. It is empty when the table cannot be
// read.
func Snapshot(ns nf.NetNS, targets []nf.Target) ConntrackSnapshot {
	out, _ := conntrack.List(ns, func(c conntrack.Entry) bool {
		return slices.ContainsFunc(targets, func(t nf.Target) bool { return t.Addr == c.Orig[1] || t.Addr == c.Reply[0] })
	})
	return bounded(out)
}

// bounded keeps at most MaxSnapshot of entries, those not closing first.
func bounded(entries []Conntrack) ConntrackSnapshot {
	s := ConntrackSnapshot{Total: len(entries), Entries: entries}
	if len(entries) > MaxSnapshot {
		slices.SortStableFunc(entries, func(a, b Conntrack) int {
			switch {
			case a.Closing() == b.Closing():
				return 0
			case b.Closing():
				return -1
			}
			return 1
		})
		s.Entries = slices.Clip(entries[:MaxSnapshot])
	}
	return s
}
