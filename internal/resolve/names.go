// Package resolve turns addresses into Kubernetes meaning: which Service,
// endpoint or Pod an address is. It starts with a static table (the lab's
// objects); the live API and object files come later.
package resolve

import "net/netip"

// Names describes addresses in Kubernetes terms, e.g. "pod lab/web-1".
type Names map[netip.Addr]string

// Name returns the description of a, or "".
func (n Names) Name(a netip.Addr) string { return n[a] }
