package resolve

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// Name never waits on the lookup: an address is named from the call after
// its answer came, the lookup runs once per address, and Learned hears
// each name once, on Name's goroutine.
func TestNamerNeverWaits(t *testing.T) {
	release := make(chan struct{})
	callsCh := make(chan netip.Addr, 10)
	n := NewNamer(func(a netip.Addr) string {
		callsCh <- a
		<-release
		return "pod shop/client-1 on node-1"
	})
	var learned []string
	n.Learned = func(a netip.Addr, name string) { learned = append(learned, a.String()+" "+name) }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)

	ip := netip.MustParseAddr("10.244.1.7")
	start := time.Now()
	for range 3 {
		if got := n.Name(ip); got != "" {
			t.Fatalf("named %q before the lookup answered", got)
		}
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Name waited %s on a lookup that had not answered", d)
	}
	<-callsCh
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for n.Name(ip) == "" {
		if time.Now().After(deadline) {
			t.Fatal("never named after the lookup answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	n.Name(ip)
	select {
	case a := <-callsCh:
		t.Errorf("looked up %s again", a)
	default:
	}
	if len(learned) != 1 || learned[0] != "10.244.1.7 pod shop/client-1 on node-1" {
		t.Errorf("learned %q, want the name once", learned)
	}
}
