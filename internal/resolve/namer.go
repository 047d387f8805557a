package resolve

import (
	"context"
	"net/netip"
	"sync"
)

// maxNamed bounds the addresses a Namer remembers; past it, it starts over.
const maxNamed = 4096

// Namer names addresses the Service's objects do not know (client Pods,
// Nodes) without making its caller wait on the API server: an address it
// has not named yet is looked up in the background (Run), and named from
// the first call after the answer. Name is for one goroutine (the one
// that reports connections); Run for another.
type Namer struct {
	lookup func(netip.Addr) string
	// Learned, if set, hears each name as Name first takes it in, on
	// Name's goroutine: a recording keeps it where the reports used it.
	Learned func(netip.Addr, string)
	queue   chan netip.Addr

	mu    sync.Mutex
	fresh map[netip.Addr]string // looked up, not taken in yet

	known map[netip.Addr]string // Name's own
	asked map[netip.Addr]bool
}

// NewNamer names with lookup, a slow call (Lookup).
func NewNamer(lookup func(netip.Addr) string) *Namer {
	return &Namer{lookup: lookup, queue: make(chan netip.Addr, 256), fresh: map[netip.Addr]string{},
		known: map[netip.Addr]string{}, asked: map[netip.Addr]bool{}}
}

// Name is a's name if known, else "" while it is looked up.
func (n *Namer) Name(a netip.Addr) string {
	var fresh map[netip.Addr]string
	n.mu.Lock()
	if len(n.fresh) > 0 { // most calls: nothing new, nothing to allocate
		fresh, n.fresh = n.fresh, map[netip.Addr]string{}
	}
	n.mu.Unlock()
	for ip, name := range fresh {
		if len(n.known) >= maxNamed {
			clear(n.known)
		}
		n.known[ip] = name
		delete(n.asked, ip)
		if n.Learned != nil {
			n.Learned(ip, name)
		}
	}
	if name, ok := n.known[a]; ok {
		return name
	}
	if !n.asked[a] && len(n.asked) < cap(n.queue) {
		select {
		case n.queue <- a:
			n.asked[a] = true
		default: // busy: asked again next time
		}
	}
	return ""
}

// Run looks up the addresses Name asked for, one after the other, until
// ctx ends.
func (n *Namer) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case a := <-n.queue:
			name := n.lookup(a)
			n.mu.Lock()
			n.fresh[a] = name
			n.mu.Unlock()
		}
	}
}

// Memo remembers what lookup says of each address (up to maxNamed, then it
// starts over), for lookups quick enough to wait on (saved objects);
// learned, if set, hears each answer once.
func Memo(lookup func(netip.Addr) string, learned func(netip.Addr, string)) func(netip.Addr) string {
	known := map[netip.Addr]string{}
	var mu sync.Mutex
	return func(a netip.Addr) string {
		mu.Lock()
		defer mu.Unlock()
		if name, ok := known[a]; ok {
			return name
		}
		if len(known) >= maxNamed {
			clear(known)
		}
		name := lookup(a)
		known[a] = name
		if learned != nil {
			learned(a, name)
		}
		return name
	}
}
