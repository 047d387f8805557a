package tracer

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
)

// exchange makes one TCP connection to 127.0.0.1:port inside ns and passes a
// few bytes each way.
func exchange(t *testing.T, ns nf.NetNS, port int) {
	t.Helper()
	exchangeAt(t, ns, fmt.Sprintf("127.0.0.1:%d", port))
}

func exchangeAt(t *testing.T, ns nf.NetNS, addr string) {
	t.Helper()
	exchangeVia(t, ns, addr, "")
}

// exchangeVia listens on listen and connects to dial (the listener's own
// address if empty) inside ns.
func exchangeVia(t *testing.T, ns nf.NetNS, listen, dial string) {
	t.Helper()
	var ln net.Listener
	var c net.Conn
	err := nf.InNetNS(ns, func() (err error) {
		if ln, err = net.Listen("tcp", listen); err != nil {
			return err
		}
		if dial == "" {
			dial = ln.Addr().String()
		}
		c, err = net.Dial("tcp", dial)
		return err
	})
	if err != nil {
		t.Fatalf("connecting to %s in %s: %v", dial, ns, err)
	}
	defer ln.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	s.Write([]byte("ping"))
	io.ReadFull(c, make([]byte, 4))
	c.Close()
	s.Close()
}

// drain reads events until none arrive for a while.
func drain(t *testing.T, tr *Tracer) []nf.Event {
	t.Helper()
	var evs []nf.Event
	for {
		tr.SetDeadline(time.Now().Add(300 * time.Millisecond))
		var err error
		evs, err = tr.ReadRecord(evs)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func involves(evs []nf.Event, port uint16) int {
	n := 0
	for _, ev := range evs {
		if ev.Tuple.Dst.Port() == port || ev.Tuple.Src.Port() == port {
			n++
		}
	}
	return n
}

// requireNetfilterLink skips a test about the netfilter-link backend on
// kernels without netfilter BPF links (the VMs of make test-kernels).
func requireNetfilterLink(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if err := probeNetfilter(); err != nil {
		t.Skipf("netfilter-link backend: %v", err)
	}
}

func newNetNS(t *testing.T) nf.NetNS {
	ns, err := nf.ResolveNetNS(testutil.NewNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// The observers land in the namespace asked for, not in the caller's, and
// see only the watched addresses until more are added.
func TestObserversAttachInTheGivenNamespaceAndFilter(t *testing.T) {
	requireNetfilterLink(t)
	a, b := newNetNS(t), newNetNS(t)
	watched := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7777"), Proto: nf.TCP}
	tr, err := Open(Options{NetNS: a.Spec, Targets: []nf.Target{watched}, Backend: BackendNetfilter})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Info().NetNS.Inode != a.Inode || tr.Info().Links != 42 {
		t.Fatalf("info %+v, want 42 observers in %s", tr.Info(), a)
	}

	exchange(t, b, 7777) // same address, other namespace
	exchange(t, a, 7778) // other address, this namespace
	exchange(t, a, 7777)
	evs := drain(t, tr)
	if involves(evs, 7777) == 0 {
		t.Fatal("no event for the watched address")
	}
	if n := involves(evs, 7778); n != 0 {
		t.Errorf("%d events for an address that is not watched", n)
	}
	hooks := map[nf.Hook]bool{}
	for _, ev := range evs {
		if ev.Kind == nf.KindHook && ev.NetNS != a.Inode {
			t.Fatalf("event from net:[%d], want only %s: %+v", ev.NetNS, a, ev)
		}
		hooks[ev.Hook] = true
	}
	// Loopback traffic crosses OUTPUT, POSTROUTING, PREROUTING and INPUT.
	for _, h := range []nf.Hook{nf.LocalOut, nf.PostRouting, nf.PreRouting, nf.LocalIn} {
		if !hooks[h] {
			t.Errorf("no event from %s", h)
		}
	}

	other := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7778"), Proto: nf.TCP}
	if err := tr.SetTargets([]nf.Target{other}); err != nil {
		t.Fatal(err)
	}
	exchange(t, a, 7778)
	exchange(t, a, 7777)
	evs = drain(t, tr)
	if involves(evs, 7778) == 0 || involves(evs, 7777) != 0 {
		t.Errorf("after SetTargets: %d events for 7778 (want some), %d for 7777 (want none)", involves(evs, 7778), involves(evs, 7777))
	}
}

// Events carry each packet's headers, and none with NoData (a trace that
// neither records nor writes packets).
func TestNoData(t *testing.T) {
	requireNetfilterLink(t)
	for _, noData := range []bool{false, true} {
		ns := newNetNS(t)
		watched := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7777"), Proto: nf.TCP}
		tr, err := Open(Options{NetNS: ns.Spec, Targets: []nf.Target{watched}, Backend: BackendNetfilter, NoData: noData})
		if err != nil {
			t.Fatal(err)
		}
		exchange(t, ns, 7777)
		evs := drain(t, tr)
		tr.Close()
		withData := 0
		for _, ev := range evs {
			if len(ev.Data) > 0 {
				withData++
				if ip := ev.Data[0]; ip>>4 != 4 || len(ev.Data) < 40 {
					t.Errorf("data %x is not an IPv4 and TCP header", ev.Data)
				}
			}
		}
		if len(evs) == 0 || (withData == 0) != noData {
			t.Errorf("NoData %v: %d of %d events carry packet bytes", noData, withData, len(evs))
		}
	}
}

// Close detaches every observer and the drop tracepoint.
func TestCloseDetaches(t *testing.T) {
	requireNetfilterLink(t)
	ns := newNetNS(t)
	before := testutil.Links(t)
	tr, err := Open(Options{NetNS: ns.Spec, Backend: BackendNetfilter})
	if err != nil {
		t.Fatal(err)
	}
	var ours []link.ID
	nf := 0
	for id, typ := range testutil.Links(t) {
		if _, ok := before[id]; !ok {
			ours = append(ours, id)
			if typ == link.NetfilterType {
				nf++
			}
		}
	}
	if nf != 42 {
		t.Errorf("%d netfilter links after Open, want 42", nf)
	}
	tr.Close()
	tr.Close() // twice is fine
	after := testutil.Links(t)
	for _, id := range ours {
		if _, ok := after[id]; ok {
			t.Errorf("link %d still attached after Close", id)
		}
	}
	if _, err := tr.ReadRecord(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadRecord after Close: %v, want ErrClosed", err)
	}
}

func TestOpenUnknownNamespace(t *testing.T) {
	_, err := Open(Options{NetNS: "svctrace-no-such-namespace"})
	if err == nil || err.Error() != `network namespace "svctrace-no-such-namespace" not found (/run/netns/svctrace-no-such-namespace does not exist); list them with `+"`ip netns list`" {
		t.Errorf("err %v", err)
	}
}

func TestIPv6(t *testing.T) {
	requireNetfilterLink(t)
	ns := newNetNS(t)
	target := nf.Target{Addr: netip.MustParseAddrPort("[::1]:7780"), Proto: nf.TCP}
	tr, err := Open(Options{NetNS: ns.Spec, Targets: []nf.Target{target}, Backend: BackendNetfilter})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	exchangeAt(t, ns, "[::1]:7780")
	evs := drain(t, tr)
	if len(evs) == 0 {
		t.Fatal("no events for an IPv6 connection")
	}
	syn := false
	for _, ev := range evs {
		if ev.Family != nf.IPv6 || !ev.Tuple.Src.Addr().Is6() {
			t.Fatalf("event %+v, want IPv6", ev)
		}
		syn = syn || (ev.Tuple.Dst == target.Addr && ev.TCPFlags == nf.SYN)
	}
	if !syn {
		t.Error("the SYN to [::1]:7780 was not seen")
	}
}

// iptables runs iptables inside ns.
func iptables(t *testing.T, ns nf.NetNS, args ...string) {
	t.Helper()
	err := nf.InNetNS(ns, func() error {
		out, err := exec.Command("iptables", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %v: %v: %s", args, err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Drops are reported with reason and location by the BTF-typed tracepoint
// and by the plain tracepoint svctrace falls back to.
func TestDropsThroughEitherTracepoint(t *testing.T) {
	requireNetfilterLink(t)
	// Whether each attaches here, as kernel-support finds out: the plain
	// tracepoint needs tracefs mounted (CI mounts it).
	probes := map[string]func() error{bpfProgKfreeSkbBtf: probeRawTracepoint, bpfProgKfreeSkbTp: probeTracepoint}
	for _, prog := range []string{bpfProgKfreeSkbBtf, bpfProgKfreeSkbTp} {
		t.Run(prog, func(t *testing.T) {
			if err := probes[prog](); err != nil {
				t.Skipf("%s does not attach here, as svctrace kernel-support reports: %s", prog, explain(err))
			}
			ns := newNetNS(t)
			iptables(t, ns, "-A", "OUTPUT", "-p", "tcp", "--dport", "7779", "-j", "DROP")
			tr, err := Open(Options{NetNS: ns.Spec, dropPrograms: []string{prog}, Backend: BackendNetfilter,
				Targets: []nf.Target{{Addr: netip.MustParseAddrPort("127.0.0.1:7779"), Proto: nf.TCP}}})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			if want := map[string]string{bpfProgKfreeSkbBtf: "tp_btf/kfree_skb", bpfProgKfreeSkbTp: "tracepoint/skb/kfree_skb"}[prog]; tr.Info().Drops != want {
				t.Fatalf("drops observed by %q, want %q", tr.Info().Drops, want)
			}
			nf.InNetNS(ns, func() error {
				net.DialTimeout("tcp", "127.0.0.1:7779", 100*time.Millisecond)
				return nil
			})
			var drop *nf.Event
			for _, ev := range drain(t, tr) {
				if ev.Kind == nf.KindDrop {
					drop = &ev
					break
				}
			}
			if drop == nil {
				t.Fatal("no drop reported")
			}
			if drop.Drop.Reason != "NETFILTER_DROP" || !strings.HasPrefix(drop.Drop.Location, "nf") || drop.NetNS != ns.Inode {
				t.Errorf("drop %+v in net:[%d], want NETFILTER_DROP at a netfilter function in %s", drop.Drop, drop.NetNS, ns)
			}
			if drop.Tuple.Dst != netip.MustParseAddrPort("127.0.0.1:7779") || drop.TCPFlags != nf.SYN {
				t.Errorf("dropped packet %v %s, want the SYN to 127.0.0.1:7779", drop.Tuple, drop.TCPFlags)
			}
		})
	}
}

// kernel-support reports every capability, and chooses the first backend
// that works: netfilter links wherever the kernel has them.
func TestProbeChoosesABackend(t *testing.T) {
	testutil.RequireRoot(t)
	s := Probe()
	names := map[string]bool{}
	ok := map[string]bool{}
	for _, f := range s.Features {
		names[f.Name], ok[f.Name] = true, f.OK
		if !f.OK && f.Detail == "" {
			t.Errorf("%s fails without saying why", f.Name)
		}
	}
	for _, n := range []string{"BTF", "netfilter BPF link", "tp_btf/kfree_skb", "tracepoint skb:kfree_skb", "kprobes", "fentry/fexit"} {
		if !names[n] {
			t.Errorf("no %q in the report", n)
		}
	}
	want := ""
	for _, b := range []struct{ backend, feature string }{
		{BackendNetfilter, "netfilter BPF link"}, {BackendFentry, "fentry/fexit"}, {BackendKprobe, "kprobes"},
	} {
		if ok[b.feature] {
			want = b.backend
			break
		}
	}
	if s.Backend != want || want == "" {
		t.Fatalf("backend %q (%s), want %q", s.Backend, s.Why, want)
	}
}

// When another hook holds an observer's priority, the observer moves away
// from the piece it brackets instead of failing.
func TestObserverMovesOffATakenPriority(t *testing.T) {
	requireNetfilterLink(t)
	ns := newNetNS(t)
	var held link.Link
	err := nf.InNetNS(ns, func() error {
		return try(ebpf.Netfilter, ebpf.AttachNetfilter, "", 1, func(p *ebpf.Program) (link.Link, error) {
			l, err := link.AttachNetfilter(link.NetfilterOptions{Program: p, ProtocolFamily: link.NetfilterProtoIPv4,
				Hook: link.NetfilterInetForward, Priority: -1})
			held = l
			return noClose{l}, err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	tr, err := Open(Options{NetNS: ns.Spec, Backend: BackendNetfilter})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got := tr.Info().Shifted; len(got) != 1 || got[0] != "ipv4 FORWARD/pre-filter at -2" {
		t.Errorf("shifted %v, want [ipv4 FORWARD/pre-filter at -2]", got)
	}
}

// noClose keeps a link attached past try's cleanup.
type noClose struct{ link.Link }

func (noClose) Close() error { return nil }

// udpRounds sends n+1 datagrams from a client to a server on loopback in
// ns, each answered, the last after a pause, then after another pause one
// unanswered datagram. A packet coming after a pause longer than the
// counts' period makes the kernel report what it counted: n+2 packets went
// one way, n+1 the other, and the kernel has reported all of them.
func udpRounds(t *testing.T, ns nf.NetNS, addr string, n int) {
	t.Helper()
	var srv, cli *net.UDPConn
	err := nf.InNetNS(ns, func() (err error) {
		if srv, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr))); err != nil {
			return err
		}
		cli, err = net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	defer cli.Close()
	buf := make([]byte, 64)
	round := func() {
		if _, err := cli.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, from, err := srv.ReadFromUDP(buf)
		if err != nil {
			t.Fatal(err)
		}
		srv.WriteToUDP([]byte("pong"), from)
		cli.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := cli.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		round()
	}
	time.Sleep(400 * time.Millisecond)
	round()
	time.Sleep(400 * time.Millisecond)
	cli.Write([]byte("ping"))
}

// A busy connection is reported in full for its first packets each way,
// then counted: the counts and the reported packets add up to every packet.
// --every-packet reports them all.
func TestEventBudget(t *testing.T) {
	requireNetfilterLink(t)
	const n = 30 // rounds before the pause
	for _, every := range []bool{false, true} {
		t.Run(fmt.Sprintf("every-packet=%v", every), func(t *testing.T) {
			ns := newNetNS(t)
			// A rule that needs conntrack turns it on in the namespace.
			iptables(t, ns, "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
			watched := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7799"), Proto: nf.UDP}
			tr, err := Open(Options{NetNS: ns.Spec, Targets: []nf.Target{watched}, Backend: BackendNetfilter, EveryPacket: every})
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			udpRounds(t, ns, watched.Addr.String(), n)
			var reported, arriving, counted [2]int
			var countedBytes [2]uint64
			for _, ev := range drain(t, tr) {
				dir := 0
				if ev.CT.Info.IsReply() {
					dir = 1
				}
				switch {
				case ev.Kind == nf.KindCount:
					for d := range 2 {
						counted[d] += int(ev.Counted.Packets[d])
						countedBytes[d] += ev.Counted.Bytes[d]
					}
				case ev.Kind == nf.KindHook && ev.Hook == nf.LocalOut && ev.Stage == nf.StagePostConntrack:
					reported[dir]++ // every packet passes here once
				case ev.Kind == nf.KindHook && ev.Hook == nf.LocalOut && ev.Stage == nf.StagePreConntrack && ev.Tuple.Src.Port() != 7799:
					arriving[0]++ // before conntrack, known only by its tuple
				}
			}
			for d, name := range []string{"original", "reply"} {
				all := n + 2 - d
				if reported[d]+counted[d] != all {
					t.Errorf("%s: %d packets reported + %d counted, want %d in all", name, reported[d], counted[d], all)
				}
				want := QuietAfter
				if every {
					want = all
				}
				if reported[d] != want {
					t.Errorf("%s: %d packets reported, want %d", name, reported[d], want)
				}
				if wantBytes := uint64(counted[d]) * (20 + 8 + 4); countedBytes[d] != wantBytes {
					t.Errorf("%s: %d bytes counted, want %d", name, countedBytes[d], wantBytes)
				}
			}
			// After the last packet in full, its tuple keeps the
			// observer before conntrack quiet too.
			if want := QuietAfter; !every && arriving[0] != want {
				t.Errorf("%d original packets reported before conntrack, want %d", arriving[0], want)
			}
		})
	}
}

// With DNSQuestions, each DNS message to and from a target's port 53
// carries its header and first question, whatever NoData says: the A and
// AAAA queries a resolver sends together on one socket, a query once the
// connection is established, and their answers (past the event budget
// all but the first each way), cut after the question
// (the answer records are not kept). Without it, nothing past the headers.
func TestDNSQuestions(t *testing.T) {
	requireNetfilterLink(t)
	const name = "web.shop.svc.cluster.local."
	for _, on := range []bool{true, false} {
		ns := newNetNS(t)
		// A rule that needs conntrack turns it on in the namespace.
		iptables(t, ns, "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
		var pc net.PacketConn
		if err := nf.InNetNS(ns, func() (err error) { pc, err = net.ListenPacket("udp", "127.0.0.1:53"); return err }); err != nil {
			t.Fatal(err)
		}
		srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(q)
			if q.Question[0].Qtype == dns.TypeA {
				rr, _ := dns.NewRR(name + " 5 IN A 10.96.5.10")
				m.Answer = []dns.RR{rr}
			}
			w.WriteMsg(m)
		})}
		go srv.ActivateAndServe()
		target := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:53"), Proto: nf.UDP}
		tr, err := Open(Options{NetNS: ns.Spec, Targets: []nf.Target{target}, Backend: BackendNetfilter, NoData: true, DNSQuestions: on})
		if err != nil {
			t.Fatal(err)
		}
		err = nf.InNetNS(ns, func() error {
			c, err := net.Dial("udp", "127.0.0.1:53")
			if err != nil {
				return err
			}
			defer c.Close()
			co := &dns.Conn{Conn: c}
			c.SetDeadline(time.Now().Add(2 * time.Second))
			// A and AAAA at once, then a TXT query once they are
			// answered: the connection is established by then.
			for _, round := range [][]uint16{{dns.TypeA, dns.TypeAAAA}, {dns.TypeTXT}} {
				for _, qt := range round {
					m := new(dns.Msg)
					m.SetQuestion(name, qt)
					if err := co.WriteMsg(m); err != nil {
						return err
					}
				}
				for range round {
					if _, err := co.ReadMsg(); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		evs := drain(t, tr)
		tr.Close()
		srv.Shutdown()
		seen := map[string]bool{}
		for _, ev := range evs {
			if len(ev.Data) == 0 {
				continue
			}
			d, end, ok := nf.ParseDNS(ev.Data)
			if !ok || !on {
				t.Fatalf("DNSQuestions %v: event data %x", on, ev.Data)
			}
			if end != len(ev.Data) {
				t.Errorf("%s: %d bytes kept, want %d: up to the question", d, len(ev.Data), end)
			}
			seen[d.String()] = true
		}
		want := []string{"A " + name, "AAAA " + name, "A " + name + " NOERROR (1 answer)", "AAAA " + name + " NOERROR",
			"TXT " + name, "TXT " + name + " NOERROR"}
		for _, w := range want {
			if seen[w] != on {
				t.Errorf("DNSQuestions %v: %q read %v", on, w, seen[w])
			}
		}
	}
}

// Packets between nodes' Pods ride an overlay: a VXLAN packet between the
// nodes' addresses carries each. The tracer follows the overlay packets of
// a watched connection by the packet they carry (Event.Outer), both the
// node's own (OUTPUT) and those it takes in (PREROUTING), with any
// backend.
func TestOverlayPacketsByWhatTheyCarry(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := newNetNS(t), newNetNS(t)
	mac := func(n byte) net.HardwareAddr { return net.HardwareAddr{0x0e, 0x5c, 0x97, 0, 0, n} }
	nodeA := topo.OverlayNode{NS: a, Addr: netip.MustParseAddr("10.97.0.1"), PodNet: netip.MustParsePrefix("10.244.1.0/24"), MAC: mac(1)}
	nodeB := topo.OverlayNode{NS: b, Addr: netip.MustParseAddr("10.97.0.2"), PodNet: netip.MustParsePrefix("10.244.2.0/24"), MAC: mac(2)}
	if err := topo.Veth(a, "a0", b, "b0", ""); err != nil {
		t.Fatal(err)
	}
	for _, i := range []topo.Iface{{NS: a, Name: "a0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.97.0.1/24")}},
		{NS: b, Name: "b0", Addrs: []netip.Prefix{netip.MustParsePrefix("10.97.0.2/24")}}} {
		if err := i.Configure(); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodeA.Device(); err != nil {
		t.Skipf("no VXLAN device here: %v", err)
	}
	for _, err := range []error{nodeB.Device(), nodeA.Reach(nodeB, topo.OverlayVXLAN), nodeB.Reach(nodeA, topo.OverlayVXLAN)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Rules as on a node: netfilter's hooks, which the function probes
	// see packets through, are registered where a table has a chain.
	iptables(t, a, "-t", "nat", "-A", "POSTROUTING", "-j", "RETURN")
	iptables(t, a, "-A", "OUTPUT", "-j", "ACCEPT")
	pod := netip.MustParseAddrPort("10.244.2.5:7780") // a "Pod" of node B
	if out, err := topo.Run(b, "", "ip", "addr", "add", pod.Addr().String()+"/32", "dev", "lo"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tr, err := Open(Options{NetNS: a.Spec, Targets: []nf.Target{{Addr: pod, Proto: nf.TCP}}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if got := strings.Join(tr.Info().Overlays, ", "); got != topo.VXLANDevice+" (VXLAN, UDP 8472)" {
		t.Errorf("overlays %q, want flannel.1's", got)
	}
	var ln net.Listener
	if err := nf.InNetNS(b, func() (err error) { ln, err = net.Listen("tcp", pod.String()); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	nf.InNetNS(a, func() error {
		c, err := net.DialTimeout("tcp", pod.String(), 2*time.Second)
		if err != nil {
			t.Errorf("connecting over the overlay: %v", err)
			return nil
		}
		return c.Close()
	})
	var out, in *nf.Event
	evs := drain(t, tr)
	for i, ev := range evs {
		switch {
		case !ev.Outer.IsValid():
		case out == nil && ev.Hook == nf.LocalOut && ev.Tuple.Dst == pod && ev.TCPFlags == nf.SYN:
			out = &evs[i]
		case in == nil && ev.Hook == nf.PreRouting && ev.Tuple.Src == pod && ev.TCPFlags == nf.SYN|nf.ACK:
			in = &evs[i]
		}
	}
	if out == nil || in == nil {
		t.Fatalf("overlay packets seen: carrying the SYN %v, the SYN,ACK %v; want both (%d events)", out != nil, in != nil, len(evs))
	}
	if out.Outer.Src.Addr() != nodeA.Addr || out.Outer.Dst != netip.AddrPortFrom(nodeB.Addr, topo.VXLANPort) || out.Outer.Proto != nf.UDP || out.CT.ID != 0 {
		t.Errorf("the SYN's carrier %v (conntrack %d): want UDP %s → %s:%d, no conntrack entry of the connection's", out.Outer, out.CT.ID, nodeA.Addr, nodeB.Addr, topo.VXLANPort)
	}
	if in.Outer.Src.Addr() != nodeB.Addr || in.Outer.Dst.Port() != topo.VXLANPort || in.NetNS != a.Inode {
		t.Errorf("the SYN,ACK's carrier %v in net:[%d]: want from %s to port %d, in %s", in.Outer, in.NetNS, nodeB.Addr, topo.VXLANPort, a)
	}
}

// The filter holds as many addresses as asked (svctrace -A watches every
// Service's): tens of thousands, the one traffic goes to among them
// found; past its size, one line says so, and a whole new set of the
// same size replaces the old.
func TestFilterHoldsManyTargets(t *testing.T) {
	requireNetfilterLink(t)
	ns := newNetNS(t)
	many := func(base byte, n int) []nf.Target {
		var out []nf.Target
		for i := range n {
			a := netip.AddrFrom4([4]byte{10, base, byte(i >> 8), byte(i)})
			out = append(out, nf.Target{Addr: netip.AddrPortFrom(a, 80), Proto: nf.TCP})
		}
		return out
	}
	const size = 40000
	watched := nf.Target{Addr: netip.MustParseAddrPort("127.0.0.1:7777"), Proto: nf.TCP}
	tr, err := Open(Options{NetNS: ns.Spec, Targets: append(many(1, size-1), watched), MaxTargets: size, Backend: BackendNetfilter})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	exchange(t, ns, 7777)
	if evs := drain(t, tr); involves(evs, 7777) == 0 {
		t.Fatal("no event for the watched address among 40000")
	}
	if err := tr.SetTargets(append(many(1, size), watched)); err == nil || !strings.Contains(err.Error(), "holds at most 40000 addresses") {
		t.Errorf("one more than the filter holds: %v", err)
	}
	if err := tr.SetTargets(many(2, size)); err != nil {
		t.Errorf("a new set of the filter's size: %v", err)
	}
	if _, err := Open(Options{NetNS: ns.Spec, Targets: many(3, DefaultMaxTargets+1), Backend: BackendNetfilter}); err == nil || !strings.Contains(err.Error(), "holds at most 4096") {
		t.Errorf("more targets than the default size: %v", err)
	}
}

// With Hold, a connection answered in time is only counted, by its
// destination; one refused, dropped or left without an answer is reported
// as without Hold, its opening first (from the kernel when a packet
// releases it, from the reader when none does); one answered and dropped
// later is reported from a settled record on, and no longer counted.
func TestHold(t *testing.T) {
	requireNetfilterLink(t)
	ns := newNetNS(t)
	iptables(t, ns, "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	iptables(t, ns, "-A", "INPUT", "-p", "tcp", "--dport", "7803", "-j", "DROP")
	const answered, refused, dropped, silent, later, forgotten = 7801, 7802, 7803, 7804, 7805, 7806
	target := func(port int, p nf.Proto) nf.Target {
		return nf.Target{Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), Proto: p}
	}
	const hold = 300 * time.Millisecond
	tr, err := Open(Options{NetNS: ns.Spec, Backend: BackendNetfilter, Hold: hold, Targets: []nf.Target{
		target(answered, nf.TCP), target(refused, nf.TCP), target(dropped, nf.TCP), target(silent, nf.UDP), target(later, nf.TCP),
		target(forgotten, nf.TCP)}})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()

	for range 5 {
		exchange(t, ns, answered)
	}
	var udp net.PacketConn
	var cli, cli2 net.Conn
	var ln, ln2 net.Listener
	err = nf.InNetNS(ns, func() (err error) {
		net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", refused), time.Second)
		net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", dropped), 100*time.Millisecond)
		if udp, err = net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", silent)); err != nil {
			return err
		}
		c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", silent))
		if err != nil {
			return err
		}
		c.Write([]byte("anyone?"))
		c.Close()
		if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", later)); err != nil {
			return err
		}
		if cli, err = net.Dial("tcp", ln.Addr().String()); err != nil {
			return err
		}
		if ln2, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", forgotten)); err != nil {
			return err
		}
		cli2, err = net.Dial("tcp", ln2.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	defer cli2.Close()
	defer udp.Close()
	defer ln.Close()
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	time.Sleep(hold)
	iptables(t, ns, "-A", "INPUT", "-p", "tcp", "--dport", fmt.Sprint(later), "-j", "DROP")
	cli.Write([]byte("after the answer"))
	// The entry of an answered connection gone, its next packet is INVALID
	// (no entry, and conntrack does not pick up connections midway) and
	// dropped by the INVALID rule.
	if err := topo.Sysctl(ns, "net.netfilter.nf_conntrack_tcp_loose", "0"); err != nil {
		t.Fatal(err)
	}
	if err := topo.ForgetConnection(ns, netip.MustParseAddrPort(cli2.LocalAddr().String()), target(forgotten, nf.TCP).Addr); err != nil {
		t.Fatal(err)
	}
	cli2.Write([]byte("after the entry went"))
	time.Sleep(hold) // the silent datagram's held path is due

	evs := drain(t, tr)
	byPort := map[uint16][]nf.Event{}
	for _, ev := range evs {
		if ev.Kind == nf.KindDrop && ev.NetNS != ns.Inode {
			continue // drops are watched everywhere: an earlier run's namespace, say
		}
		dst := ev.Tuple.Dst.Port()
		if ev.CT.ID != 0 {
			dst = ev.CT.Orig.Dst.Port()
		}
		byPort[dst] = append(byPort[dst], ev)
	}
	if n := len(byPort[answered]); n != 0 {
		t.Errorf("answered connections: %d events, want none: %v", n, byPort[answered])
	}
	if got, want := tr.Answered(), map[nf.Target]uint64{target(answered, nf.TCP): 5}; !maps.Equal(got, want) {
		t.Errorf("counted answered %v, want %v", got, want)
	}
	// opening: the port's events begin with its first packet's path from
	// its first observer (the client's OUTPUT), and hold one that has.
	opening := func(port uint16, has func(nf.Event) bool, what string) {
		t.Helper()
		got := byPort[port]
		if len(got) == 0 || got[0].Kind != nf.KindHook || got[0].Hook != nf.LocalOut || got[0].Stage != nf.StagePreConntrack {
			t.Errorf("port %d: events %v, want them to begin with the first packet at OUTPUT", port, got)
			return
		}
		if !slices.ContainsFunc(got, has) {
			t.Errorf("port %d: no %s among %v", port, what, got)
		}
	}
	opening(refused, func(ev nf.Event) bool { return ev.CT.Info.IsReply() && ev.TCPFlags.Has(nf.RST) }, "reset")
	opening(dropped, func(ev nf.Event) bool { return ev.Kind == nf.KindDrop && ev.Drop.Reason == "NETFILTER_DROP" }, "drop")
	opening(silent, func(ev nf.Event) bool { return ev.Kind == nf.KindHook && ev.Hook == nf.LocalIn }, "delivery")
	got := byPort[later]
	if len(got) < 2 || got[0].Kind != nf.KindSettled || got[0].CT.Orig.Dst.Port() != later ||
		!slices.ContainsFunc(got, func(ev nf.Event) bool { return ev.Kind == nf.KindDrop }) {
		for _, ev := range got {
			t.Logf("%s %s %s %s %s ct %x %s", ev.Kind, ev.Hook, ev.Stage, ev.Tuple, ev.TCPFlags, ev.CT.ID, ev.CT.Info)
		}
		t.Errorf("answered, then dropped: %d events, want a settled record, then the drop", len(got))
	}
	got = byPort[forgotten]
	if len(got) < 3 || got[0].Kind != nf.KindSettled || got[1].CT.ID != 0 || got[1].Kind != nf.KindHook ||
		!slices.ContainsFunc(got, func(ev nf.Event) bool { return ev.Kind == nf.KindDrop }) {
		for _, ev := range got {
			t.Logf("%s %s %s %s %s ct %x %s", ev.Kind, ev.Hook, ev.Stage, ev.Tuple, ev.TCPFlags, ev.CT.ID, ev.CT.Info)
		}
		t.Errorf("answered, then INVALID: %d events, want a settled record, the packet without an entry, its drop", len(got))
	}
}
