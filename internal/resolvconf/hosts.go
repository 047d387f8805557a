package resolvconf

import (
	"bufio"
	"io"
	"net/netip"
	"strings"
)

// Hosts is an /etc/hosts file: the resolver answers a name it holds from
// the file, without asking any nameserver (nsswitch's "files dns", the
// order every container image uses). Kubernetes writes a Pod's own names
// and its hostAliases there; images and hand edits add the rest.
type Hosts []HostsEntry

// HostsEntry is one line of an /etc/hosts file.
type HostsEntry struct {
	Line  int // 1-based
	Addr  netip.Addr
	Names []string
}

// ParseHosts reads an /etc/hosts file; lines it cannot read are skipped,
// as the resolver skips them.
func ParseHosts(r io.Reader) (Hosts, error) {
	var h Hosts
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil {
			continue
		}
		h = append(h, HostsEntry{Line: n, Addr: a.Unmap(), Names: f[1:]})
	}
	return h, sc.Err()
}

// Lookup returns the entries holding name, as the resolver compares it:
// the name as asked (a trailing dot ignored), any case, never expanded by
// the search list.
func (h Hosts) Lookup(name string) []HostsEntry {
	name = strings.TrimSuffix(name, ".")
	var out []HostsEntry
	for _, e := range h {
		for _, n := range e.Names {
			if strings.EqualFold(n, name) {
				out = append(out, e)
				break
			}
		}
	}
	return out
}
