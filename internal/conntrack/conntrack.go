// Package conntrack reads a network namespace's connection tracking: how
// full its table is, its counters, and entries of the traced addresses.
// These explain what the packet path alone does not: a SYN dropped because
// the table is full, a UDP flow still sent to a Pod that left.
package conntrack

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Entry is one conntrack entry, as conntrack -L shows it.
type Entry struct {
	Proto   string            `json:"proto"`
	Orig    [2]netip.AddrPort `json:"orig"`  // source, destination
	Reply   [2]netip.AddrPort `json:"reply"` // source, destination
	Mark    uint32            `json:"mark,omitempty"`
	Zone    uint16            `json:"zone,omitempty"`
	Timeout uint32            `json:"timeout,omitempty"` // seconds left
	Status  string            `json:"status,omitempty"`
	State   string            `json:"state,omitempty"` // TCP: ESTABLISHED, TIME_WAIT, …
}

// tcpStates names conntrack's TCP states (enum tcp_conntrack).
var tcpStates = [...]string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
	"TIME_WAIT", "CLOSE", "SYN_SENT2"}

// Closing reports whether the entry is of a TCP connection one side has
// begun to close: what a busy Service leaves by the thousand.
func (e Entry) Closing() bool {
	switch e.State {
	case "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE":
		return true
	}
	return false
}

// Translated reports whether the entry's destination was translated (DNAT):
// the reply comes from another address than the client asked for.
func (e Entry) Translated() bool { return e.Reply[0] != e.Orig[1] }

// DeleteCommand is the conntrack command that deletes this entry alone.
func (e Entry) DeleteCommand() string {
	return fmt.Sprintf("conntrack -D -p %s -s %s --sport %d -d %s --dport %d", e.Proto,
		e.Orig[0].Addr(), e.Orig[0].Port(), e.Orig[1].Addr(), e.Orig[1].Port())
}

// Table is what a namespace's conntrack held when it was read.
type Table struct {
	// Count is the entries in the namespace (nf_conntrack_count); Max the
	// limit it is held to (nf_conntrack_max, the same for every namespace).
	Count uint64 `json:"count"`
	Max   uint64 `json:"max"`
	// Stats are the namespace's counters (/proc/net/stat/nf_conntrack),
	// summed over CPUs: "drop", "early_drop", "insert_failed", "invalid", …
	Stats map[string]uint64 `json:"stats,omitempty"`
	// Entries are the translated UDP entries: where a UDP flow is sent, as
	// long as its client keeps sending, whatever the endpoints now are.
	// At most MaxEntries of them; none if Unlisted.
	Entries []Entry `json:"entries,omitempty"`
	// Unlisted says why the entries were not read: ctnetlink failed, or
	// the table holds more than MaxListed entries (the dump would cost
	// seconds and hundreds of MB). Empty: they were.
	Unlisted string `json:"unlisted,omitempty"`
	// Sysctls are the namespace's settings that decide which TCP packets
	// conntrack finds INVALID (see tcpSysctls), as far as readable.
	Sysctls map[string]uint64 `json:"sysctls,omitempty"`
}

// tcpSysctls: with nf_conntrack_tcp_loose 0, a packet of a connection
// without an entry (deleted, expired) is INVALID instead of taken up
// mid-stream; with nf_conntrack_tcp_be_liberal 1, out-of-window packets are
// not INVALID (and kube-proxy leaves out its rule dropping them).
var tcpSysctls = []string{"nf_conntrack_tcp_loose", "nf_conntrack_tcp_be_liberal"}

// MaxEntries bounds Table.Entries; MaxListed the table that is listed.
const (
	MaxEntries = 4096
	MaxListed  = 100000
)

// Full reports whether the table is at its limit: new entries, and the
// packets that would create them, are dropped. A table within 1 % of its
// limit whose drop counter has counted such packets is at it too: it
// hovers there, each entry that expires freeing a slot the next new flow
// takes (read a moment apart, the count is one or two short).
func (t *Table) Full() bool {
	if t == nil || t.Max <= 0 {
		return false
	}
	return t.Count >= t.Max || t.Count*100 >= t.Max*99 && t.Stats["drop"] > 0
}

// Read reads ns's table: its size, limit, counters and translated UDP
// entries.
func Read(ns nf.NetNS) (*Table, error) {
	t := &Table{}
	err := nf.InNetNS(ns, func() error {
		var err error
		if t.Count, err = readUint("/proc/sys/net/netfilter/nf_conntrack_count"); err != nil {
			return err
		}
		if t.Max, err = readUint("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
			return err
		}
		for _, name := range tcpSysctls {
			if v, err := readUint("/proc/sys/net/netfilter/" + name); err == nil {
				if t.Sysctls == nil {
					t.Sysctls = map[string]uint64{}
				}
				t.Sysctls[name] = v
			}
		}
		f, err := os.Open("/proc/thread-self/net/stat/nf_conntrack")
		if err != nil {
			return err
		}
		defer f.Close()
		t.Stats, err = ParseStats(f)
		return err
	})
	if err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("no connection tracking in %s (module nf_conntrack not loaded)", ns)
		}
		return nil, fmt.Errorf("reading conntrack in %s: %w", ns, err)
	}
	if t.Count > MaxListed {
		t.Unlisted = fmt.Sprintf("the table holds %d entries; svctrace lists at most %d", t.Count, MaxListed)
		return t, nil
	}
	t.Entries, err = List(ns, func(e Entry) bool { return e.Proto == "udp" && e.Translated() })
	if err != nil {
		t.Unlisted = err.Error()
	}
	if len(t.Entries) > MaxEntries {
		t.Entries = t.Entries[:MaxEntries]
	}
	return t, err
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// ParseStats sums /proc/net/stat/nf_conntrack over its CPU lines: a header
// naming the columns, then one line of hexadecimal counters per CPU. The
// "entries" column is the namespace's total on every line, not summed.
func ParseStats(r io.Reader) (map[string]uint64, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		return nil, fmt.Errorf("conntrack statistics: empty")
	}
	cols := strings.Fields(sc.Text())
	out := map[string]uint64{}
	for sc.Scan() {
		vals := strings.Fields(sc.Text())
		if len(vals) != len(cols) {
			return nil, fmt.Errorf("conntrack statistics: %d values under %d columns", len(vals), len(cols))
		}
		for i, v := range vals {
			n, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("conntrack statistics, column %s: %w", cols[i], err)
			}
			if cols[i] == "entries" {
				out[cols[i]] = n
			} else {
				out[cols[i]] += n
			}
		}
	}
	return out, sc.Err()
}

// List returns ns's entries that keep accepts (over netlink, as conntrack
// -L would).
func List(ns nf.NetNS, keep func(Entry) bool) ([]Entry, error) {
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return nil, err
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []Entry
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
		if err != nil {
			return out, fmt.Errorf("listing conntrack entries in %s: %w", ns, err)
		}
		for _, f := range flows {
			e := Entry{Proto: nf.Proto(f.Forward.Protocol).String(), Mark: f.Mark, Zone: f.Zone, Timeout: f.TimeOut,
				Orig:  [2]netip.AddrPort{addrPort(f.Forward.SrcIP, f.Forward.SrcPort), addrPort(f.Forward.DstIP, f.Forward.DstPort)},
				Reply: [2]netip.AddrPort{addrPort(f.Reverse.SrcIP, f.Reverse.SrcPort), addrPort(f.Reverse.DstIP, f.Reverse.DstPort)}}
			if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok && int(tcp.State) < len(tcpStates) {
				e.State = tcpStates[tcp.State]
			}
			if keep(e) {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

func addrPort(ip net.IP, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}
