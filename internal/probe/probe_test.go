package probe

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
)

// Probes on loopback, in the test's own network namespace: each kind of
// answer, and the probe's own address known even when it was refused.
func TestRun(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	go http.Serve(tcp, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }))
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	go func() { // an echo server
		buf := make([]byte, 512)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			udp.WriteTo(buf[:n], from)
		}
	}()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close() // nobody listens there now

	silent, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing, answers nothing
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	for _, tc := range []struct {
		kind    Kind
		proto   nf.Proto
		to      string
		ok      bool
		outcome string
	}{
		{Connect, nf.TCP, tcp.Addr().String(), true, "connected in "},
		{HTTP, nf.TCP, tcp.Addr().String(), true, "HTTP 200 OK in "},
		{Connect, nf.TCP, closedAddr, false, "connection refused"},
		{Connect, nf.UDP, udp.LocalAddr().String(), true, "answered (15 bytes) in "},
		{Connect, nf.UDP, silent.LocalAddr().String(), false, "sent; no answer in 300ms"},
	} {
		to := netip.MustParseAddrPort(tc.to)
		r := Run(context.Background(), nf.NetNS{}, tc.kind, tc.proto, to, 300*time.Millisecond)
		if r.OK != tc.ok || !strings.HasPrefix(r.Outcome, tc.outcome) {
			t.Errorf("%s %s %s: ok %v, %q; want %v, %q", tc.kind, tc.proto, to, r.OK, r.Outcome, tc.ok, tc.outcome)
		}
		if r.From.Addr() != to.Addr() || r.From.Port() == 0 || r.To != to {
			t.Errorf("%s %s %s: from %s: want the loopback address and the bound port", tc.kind, tc.proto, to, r.From)
		}
	}
}

func TestParseKind(t *testing.T) {
	if k, err := ParseKind("http"); k != HTTP || err != nil {
		t.Errorf("http: %v %v", k, err)
	}
	if _, err := ParseKind("ftp"); err == nil || !strings.Contains(err.Error(), "--probe=http") {
		t.Errorf("ftp: %v", err)
	}
}
