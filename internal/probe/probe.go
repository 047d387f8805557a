// Package probe opens test connections to a Service's addresses, from the
// node or from inside a Pod's network namespace, so that svctrace can trace
// a connection of its own making: no client traffic and no debug pod
// needed.
package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"golang.org/x/sys/unix"
)

// Kind is how a probe talks to the Service.
type Kind string

const (
	// Connect: a TCP connect (closed at once), or one UDP datagram and the
	// wait for an answer.
	Connect Kind = "connect"
	// HTTP: a GET / over TCP; UDP ports are probed as with Connect.
	HTTP Kind = "http"
)

// ParseKind reads --probe's value.
func ParseKind(s string) (Kind, error) {
	switch Kind(s) {
	case Connect, HTTP, DNS:
		return Kind(s), nil
	}
	return "", fmt.Errorf("unknown probe %q: use --probe (a TCP connect or a UDP datagram), --probe=http or --probe=dns (resolve the Service's name first)", s)
}

// Result is what one probe saw.
type Result struct {
	To    netip.AddrPort
	Proto nf.Proto
	// From is the probe's own address once the kernel chose it (the
	// source port is known before the first packet leaves).
	From netip.AddrPort
	// OK: connected (TCP), answered (UDP) or an HTTP response came back.
	OK bool
	// Outcome in words: "connected in 1.2ms", "connection refused",
	// "no answer in 5s", "HTTP 200 OK in 3ms".
	Outcome string
}

// String: "TCP 10.99.0.1:40000 → 10.96.0.10:80: connected in 1.2ms".
func (r Result) String() string {
	return fmt.Sprintf("%s %s → %s: %s", strings.ToUpper(r.Proto.String()), r.From, r.To, r.Outcome)
}

// payload is the probe's UDP datagram and what a server that echoes sees.
const payload = "svctrace probe\n"

// Run probes to once from network namespace ns, within timeout.
func Run(ctx context.Context, ns nf.NetNS, kind Kind, proto nf.Proto, to netip.AddrPort, timeout time.Duration) Result {
	r := Result{To: to, Proto: proto}
	network := "tcp"
	if proto == nf.UDP {
		network = "udp"
	} else if proto != nf.TCP {
		r.Outcome = fmt.Sprintf("%s is not probed (TCP and UDP only)", proto)
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	conn, from, err := dial(ctx, ns, network, to)
	r.From = from
	if err != nil {
		r.Outcome = failure(err, timeout)
		return r
	}
	defer conn.Close()
	switch {
	case proto == nf.UDP:
		r.OK, r.Outcome = udpExchange(ctx, conn, start, timeout)
	case kind == HTTP:
		r.OK, r.Outcome = httpGet(ctx, conn, to, start, timeout)
	default:
		r.OK, r.Outcome = true, "connected in "+took(start)
	}
	return r
}

// dial connects to to from network namespace ns. from is the socket's
// address, known before the first packet leaves: what that packet carries,
// whether or not the connection is made, so the connection can be told
// apart in the trace.
func dial(ctx context.Context, ns nf.NetNS, network string, to netip.AddrPort) (conn net.Conn, from netip.AddrPort, err error) {
	var port uint16
	d := net.Dialer{
		// Bind before connecting, so the source port is known even if it
		// never connects.
		Control: func(_, _ string, c syscall.RawConn) error {
			var err error
			c.Control(func(fd uintptr) {
				var sa unix.Sockaddr = &unix.SockaddrInet4{}
				if to.Addr().Is6() {
					sa = &unix.SockaddrInet6{}
				}
				if err = unix.Bind(int(fd), sa); err != nil {
					return
				}
				if sa, err = unix.Getsockname(int(fd)); err == nil {
					port = sockaddrPort(sa).Port()
				}
			})
			return err
		},
	}
	var src netip.Addr
	err = nf.InNetNS(ns, func() (err error) {
		src = routeSource(to)
		conn, err = d.DialContext(ctx, network, to.String())
		return err
	})
	// The bound port, with the address the route gives.
	return conn, netip.AddrPortFrom(src, port), err
}

// udpExchange sends the datagram and waits for any answer: data, or an
// ICMP error, which the connected socket reports on read.
func udpExchange(ctx context.Context, conn net.Conn, start time.Time, timeout time.Duration) (bool, string) {
	if _, err := conn.Write([]byte(payload)); err != nil {
		return false, failure(err, timeout)
	}
	deadline, _ := ctx.Deadline()
	conn.SetReadDeadline(deadline)
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, fmt.Sprintf("sent; no answer in %s (a UDP server need not answer a probe: see the trace)", timeout)
		}
		return false, failure(err, timeout)
	}
	return true, fmt.Sprintf("answered (%d bytes) in %s", n, took(start))
}

// httpGet sends GET / on the connection and reads the status line.
func httpGet(ctx context.Context, conn net.Conn, to netip.AddrPort, start time.Time, timeout time.Duration) (bool, string) {
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+to.String()+"/", nil)
	req.Header.Set("User-Agent", "svctrace-probe")
	req.Close = true
	if err := req.Write(conn); err != nil {
		return false, failure(err, timeout)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return false, "connected, then " + failure(err, timeout)
	}
	resp.Body.Close()
	return true, fmt.Sprintf("HTTP %s in %s", resp.Status, took(start))
}

// failure says why a probe failed, in the words an operator expects.
func failure(err error, timeout time.Duration) string {
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("no answer in %s", timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	}
	return err.Error()
}

func took(start time.Time) string {
	return time.Since(start).Round(10 * time.Microsecond).String()
}

// routeSource is the source address the current network namespace's routes
// give packets to to: a UDP socket's connect only looks the route up.
func routeSource(to netip.AddrPort) netip.Addr {
	c, err := net.Dial("udp", to.String())
	if err != nil {
		return netip.Addr{}
	}
	defer c.Close()
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	return local.Addr().Unmap()
}

func sockaddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
	}
	return netip.AddrPort{}
}
