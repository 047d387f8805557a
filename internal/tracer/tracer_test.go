package tracer

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/svctrace/svctrace/internal/testutil"
)

// exchange makes one TCP connection to 127.0.0.1:port inside ns and passes a
// few bytes each way.
func exchange(t *testing.T, ns NetNS, port int) {
	t.Helper()
	var ln net.Listener
	var c net.Conn
	err := InNetNS(ns, func() (err error) {
		if ln, err = net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
			return err
		}
		c, err = net.Dial("tcp", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
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
func drain(t *testing.T, tr *Tracer) []Event {
	t.Helper()
	var evs []Event
	for {
		tr.SetDeadline(time.Now().Add(300 * time.Millisecond))
		ev, err := tr.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

func involves(evs []Event, port uint16) int {
	n := 0
	for _, ev := range evs {
		if ev.Tuple.Dst.Port() == port || ev.Tuple.Src.Port() == port {
			n++
		}
	}
	return n
}

func newNetNS(t *testing.T) NetNS {
	ns, err := ResolveNetNS(testutil.NewNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// The observers land in the namespace asked for, not in the caller's, and
// see only the watched addresses until more are added.
func TestObserversAttachInTheGivenNamespaceAndFilter(t *testing.T) {
	a, b := newNetNS(t), newNetNS(t)
	watched := Target{Addr: netip.MustParseAddrPort("127.0.0.1:7777"), Proto: TCP}
	tr, err := Open(Options{NetNS: a.Spec, Targets: []Target{watched}})
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
	hooks := map[Hook]bool{}
	for _, ev := range evs {
		if ev.Kind == KindHook && ev.NetNS != a.Inode {
			t.Fatalf("event from net:[%d], want only %s: %+v", ev.NetNS, a, ev)
		}
		hooks[ev.Hook] = true
	}
	// Loopback traffic crosses OUTPUT, POSTROUTING, PREROUTING and INPUT.
	for _, h := range []Hook{LocalOut, PostRouting, PreRouting, LocalIn} {
		if !hooks[h] {
			t.Errorf("no event from %s", h)
		}
	}

	other := Target{Addr: netip.MustParseAddrPort("127.0.0.1:7778"), Proto: TCP}
	if err := tr.SetTargets([]Target{other}); err != nil {
		t.Fatal(err)
	}
	exchange(t, a, 7778)
	exchange(t, a, 7777)
	evs = drain(t, tr)
	if involves(evs, 7778) == 0 || involves(evs, 7777) != 0 {
		t.Errorf("after SetTargets: %d events for 7778 (want some), %d for 7777 (want none)", involves(evs, 7778), involves(evs, 7777))
	}
}

func linkIDs(t *testing.T) map[link.ID]link.Type {
	t.Helper()
	ids := map[link.ID]link.Type{}
	var it link.Iterator
	for it.Next() {
		l := it.Take()
		if info, err := l.Info(); err == nil {
			ids[info.ID] = info.Type
		}
		l.Close()
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// Close detaches every observer and the drop tracepoint.
func TestCloseDetaches(t *testing.T) {
	ns := newNetNS(t)
	before := linkIDs(t)
	tr, err := Open(Options{NetNS: ns.Spec})
	if err != nil {
		t.Fatal(err)
	}
	var ours []link.ID
	nf := 0
	for id, typ := range linkIDs(t) {
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
	after := linkIDs(t)
	for _, id := range ours {
		if _, ok := after[id]; ok {
			t.Errorf("link %d still attached after Close", id)
		}
	}
	if _, err := tr.Read(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
}

func TestOpenUnknownNamespace(t *testing.T) {
	_, err := Open(Options{NetNS: "svctrace-no-such-namespace"})
	if err == nil || err.Error() != `network namespace "svctrace-no-such-namespace" not found (/run/netns/svctrace-no-such-namespace does not exist); list them with `+"`ip netns list`" {
		t.Errorf("err %v", err)
	}
}
