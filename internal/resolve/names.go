// Package resolve reads the Kubernetes objects behind a Service — from the
// API server (narrowly) or from files — and models what the Service asks of
// the data path: its addresses, ports and endpoints.
package resolve

import "net/netip"

// Names describes addresses in Kubernetes terms, e.g. "pod lab/web-1".
type Names map[netip.Addr]string

// Name returns the description of a's address, or "".
func (n Names) Name(a netip.AddrPort) string { return n[a.Addr()] }
