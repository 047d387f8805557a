package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
)

// floodSources are the client addresses the flood comes from: each gives
// about 64,000 source ports, so a million connections need 16.
const floodSources = 16

// flood sends total new connections (a SYN each, from distinct client
// addresses and ports) to the Service svctrace traces, as fast as the node
// takes them: far more than svctrace can print. What must hold: its
// memory, the kernel's tracked map and the assembler stay bounded, and what
// did not fit is reported as lost.
func flood(bin string, total int) (section, error) {
	l, err := lab.Up(lab.Options{})
	if err != nil {
		return section{}, err
	}
	defer l.Down()
	// Each SYN is answered by a pod and reset by the client (no socket
	// sent it); the closed entry then leaves the conntrack table after a
	// second instead of ten, so the table holds about one second of flood.
	if err := topo.Sysctl(l.Node, "net.netfilter.nf_conntrack_tcp_timeout_close", "1"); err != nil {
		return section{}, err
	}
	var sources []netip.Addr
	for i := range floodSources {
		a := netip.AddrFrom4([4]byte{10, 99, 0, byte(100 + i)})
		if _, err := topo.Run(l.Client, "", "ip", "addr", "add", a.String()+"/24", "dev", "eth0"); err != nil {
			return section{}, err
		}
		sources = append(sources, a)
	}
	web := l.Scenarios[0].VIP()
	fd, err := rawSocket(l.Client)
	if err != nil {
		return section{}, err
	}
	defer unix.Close(fd)

	// Without svctrace first: what the node takes.
	base, err := sendSYNs(fd, sources, web, total/10)
	if err != nil {
		return section{}, err
	}
	time.Sleep(2 * time.Second) // the closed entries go
	stop, err := background(bin, "Ctrl-C to stop", "trace", "--netns", l.Node.Spec, "--addr", web.String(), "--timeout", "1s")
	if err != nil {
		return section{}, err
	}
	traced, err := sendSYNs(fd, sources, web, total)
	if err != nil {
		stop()
		return section{}, err
	}
	entries, capacity, mapErr := trackedEntries()
	conntrack, _ := topo.Run(l.Node, "", "conntrack", "-C")
	time.Sleep(3 * time.Second) // svctrace reports what it still follows
	w := stop()
	sum := summaryRE.FindString(w.out)
	if sum == "" {
		return section{}, fmt.Errorf("svctrace printed no summary after the flood:\n%s", w.out)
	}
	var reported, lost int
	if m := connsRE.FindStringSubmatch(sum); m != nil {
		reported, _ = strconv.Atoi(m[1])
	}
	if m := lostRE.FindStringSubmatch(sum); m != nil {
		lost, _ = strconv.Atoi(m[1])
	}
	tracked := fmt.Sprintf("%d of %d entries", entries, capacity)
	if mapErr != nil {
		tracked = "not read: " + mapErr.Error()
	}
	var t strings.Builder
	t.WriteString("| | figure |\n|---|---:|\n")
	fmt.Fprintf(&t, "| new connections sent while tracing | %d in %.1f s (%.0f/s) |\n", total, traced.Seconds(), float64(total)/traced.Seconds())
	fmt.Fprintf(&t, "| the same without tracing, for comparison | %d in %.1f s (%.0f/s) |\n", total/10, base.Seconds(), float64(total/10)/base.Seconds())
	fmt.Fprintf(&t, "| svctrace's peak RSS (VmHWM, as it stops) | %.0f MB (target ≤ 100 MB: %s) |\n", w.peakMB, verdict(w.peakMB <= 100))
	fmt.Fprintf(&t, "| svctrace's CPU time | %.1f s |\n", w.cpu)
	fmt.Fprintf(&t, "| connections svctrace reported | %d |\n", reported)
	fmt.Fprintf(&t, "| events lost (ring buffer full), as svctrace reported them | %d |\n", lost)
	fmt.Fprintf(&t, "| the kernel's tracked map right after the flood | %s |\n", tracked)
	fmt.Fprintf(&t, "| the node's conntrack table right after the flood | %s entries |\n", strings.TrimSpace(conntrack))
	return section{title: "Connection flood",
		method: fmt.Sprintf("The lab, with svctrace tracing the healthy Service (`svctrace trace --netns … --addr %s`, its output drained): %d new connections, one SYN each from %d client addresses × their source ports, sent from a raw socket in the client namespace as fast as it goes. Each SYN is DNATed to a pod, answered, and reset by the client, whose kernel has no socket for it. The node forgets closed conntrack entries after 1 s (nf_conntrack_tcp_timeout_close).", web, total, floodSources),
		table:  t.String(),
		notes: []string{
			fmt.Sprintf("Bounded: the assembler follows at most 65,536 connections (the oldest is reported early when a new one would exceed that), the kernel's tracked map is an LRU hash of 65,536 entries, and the ring buffer is 8 MiB; what does not fit is counted and reported as lost. svctrace's summary: %s.", sum),
			"The peak RSS is that of the assembler full of unfinished connections (and the Go heap's room to grow, twice the live heap); the start-up alone peaks at about 80 MB (see Memory).",
		}}, nil
}

// rawSocket opens a raw IPv4 socket in ns, for packets whose headers the
// caller writes (IPPROTO_RAW implies IP_HDRINCL).
func rawSocket(ns nf.NetNS) (int, error) {
	fd := -1
	err := nf.InNetNS(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_RAW)
		return err
	})
	return fd, err
}

// sendSYNs sends n SYNs to dst, from each source address and port in turn
// (ports 1024 and up), and returns how long it took.
func sendSYNs(fd int, sources []netip.Addr, dst netip.AddrPort, n int) (time.Duration, error) {
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	pkt := make([]byte, 40)
	start := time.Now()
	for i := range n {
		src := sources[i%len(sources)]
		port := uint16(1024 + (i/len(sources))%64000)
		synPacket(pkt, src, port, dst, uint32(i))
		for {
			err := unix.Sendto(fd, pkt, 0, to)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EAGAIN) {
				return 0, fmt.Errorf("sending SYN %d: %w", i, err)
			}
			time.Sleep(100 * time.Microsecond) // the device queue is full
		}
	}
	return time.Since(start), nil
}

// synPacket writes an IPv4 TCP SYN into b (40 bytes). The kernel fills in
// the IP checksum and ID; the TCP checksum is ours.
func synPacket(b []byte, src netip.Addr, sport uint16, dst netip.AddrPort, seq uint32) {
	clear(b)
	s, d := src.As4(), dst.Addr().As4()
	b[0], b[8], b[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(b[2:], 40)
	binary.BigEndian.PutUint16(b[6:], 0x4000) // DF
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	tcp := b[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12], tcp[13] = 5<<4, 0x02 // data offset 5 words; SYN
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	sum := uint32(unix.IPPROTO_TCP) + 20 // pseudo-header: protocol, TCP length
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(tcp[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))
}

// trackedEntries counts the entries of svctrace's tracked map (the newest
// map of that name: svctrace is the only tracer running).
func trackedEntries() (entries, capacity int, err error) {
	var found *ebpf.Map
	for id := ebpf.MapID(0); ; {
		id, err = ebpf.MapGetNextID(id)
		if err != nil {
			break
		}
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil && info.Name == "tracked" {
			if found != nil {
				found.Close()
			}
			found = m
			continue
		}
		m.Close()
	}
	if found == nil {
		return 0, 0, errors.New("no map named tracked")
	}
	defer found.Close()
	var key uint64
	value := make([]byte, found.ValueSize())
	it := found.Iterate()
	for it.Next(&key, &value) {
		entries++
	}
	return entries, int(found.MaxEntries()), it.Err()
}
