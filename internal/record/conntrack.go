package record

import (
	"slices"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/nf"
)

// ConntrackSnapshot lists the conntrack entries of ns whose original
// destination, or reply source, is one of targets. It returns nothing when
// the table cannot be read.
func ConntrackSnapshot(ns nf.NetNS, targets []nf.Target) []Conntrack {
	out, _ := conntrack.List(ns, func(c conntrack.Entry) bool {
		return slices.ContainsFunc(targets, func(t nf.Target) bool { return t.Addr == c.Orig[1] || t.Addr == c.Reply[0] })
	})
	return out
}
