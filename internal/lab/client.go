package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
)

// Get fetches http://addr/path from the client namespace over a fresh
// connection that is closed afterwards.
func (l *Lab) Get(ctx context.Context, addr netip.AddrPort, path string, timeout time.Duration) ([]byte, error) {
	return HTTPGet(ctx, l.Client, addr, path, timeout)
}

// HTTPGet fetches http://addr/path over a fresh TCP connection opened inside
// ns and closed afterwards.
func HTTPGet(ctx context.Context, ns nf.NetNS, addr netip.AddrPort, path string, timeout time.Duration) ([]byte, error) {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var c net.Conn
				err := nf.InNetNS(ns, func() (err error) {
					c, err = net.DialTimeout("tcp", addr.String(), timeout)
					return err
				})
				return c, err
			},
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s%s", addr, path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("HTTP %s", resp.Status)
	}
	return body, nil
}

// KeptAlive makes two HTTP requests to addr over one TCP connection opened
// inside ns, and calls between with the connection's local address once
// the first is answered. It returns the second answer. It closes the
// connection with a reset (SO_LINGER 0): nothing of it outlives the call,
// not even retransmissions of a request nobody answered.
func KeptAlive(ctx context.Context, ns nf.NetNS, addr netip.AddrPort, timeout time.Duration, between func(local netip.AddrPort) error) ([]byte, error) {
	var c *net.TCPConn
	err := nf.InNetNS(ns, func() error {
		conn, err := net.DialTimeout("tcp", addr.String(), timeout)
		if err == nil {
			c = conn.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		c.SetLinger(0)
		c.Close()
	}()
	c.SetDeadline(deadline(ctx, timeout))
	r := bufio.NewReader(c)
	get := func() ([]byte, error) {
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		return io.ReadAll(resp.Body)
	}
	if _, err := get(); err != nil {
		return nil, fmt.Errorf("first request: %w", err)
	}
	if err := between(netip.MustParseAddrPort(c.LocalAddr().String())); err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(timeout))
	body, err := get()
	if err != nil {
		return nil, fmt.Errorf("second request, on the same connection: %w", err)
	}
	return body, nil
}

// UDPExchange sends one datagram to addr from port (0: any) inside ns and
// waits for the answer.
func UDPExchange(ctx context.Context, ns nf.NetNS, port uint16, addr netip.AddrPort, timeout time.Duration) ([]byte, error) {
	var c *net.UDPConn
	err := nf.InNetNS(ns, func() (err error) {
		c, err = net.DialUDP("udp", &net.UDPAddr{Port: int(port)}, net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(deadline(ctx, timeout))
	if _, err := c.Write([]byte("hello?\n")); err != nil {
		return nil, err
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// DNSQuery asks the DNS server at addr for name's A record, over UDP from
// inside ns, and returns the answer's code (NOERROR, NXDOMAIN…) and
// addresses.
func DNSQuery(ctx context.Context, ns nf.NetNS, addr netip.AddrPort, name string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := nf.InNetNS(ns, func() (err error) {
		c, err = net.Dial("udp", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(deadline(ctx, timeout))
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	if err := co.WriteMsg(m); err != nil {
		return "", err
	}
	r, err := co.ReadMsg()
	if err != nil {
		return "", err
	}
	out := dns.RcodeToString[r.Rcode]
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out += " " + a.A.String()
		}
	}
	return out, nil
}

// deadline is timeout from now, or ctx's deadline if that comes first.
func deadline(ctx context.Context, timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}
