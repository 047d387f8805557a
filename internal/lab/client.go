package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/tracer"
)

// Get fetches http://addr/path from the client namespace over a fresh
// connection that is closed afterwards.
func (l *Lab) Get(ctx context.Context, addr netip.AddrPort, path string, timeout time.Duration) ([]byte, error) {
	return HTTPGet(ctx, l.Client, addr, path, timeout)
}

// HTTPGet fetches http://addr/path over a fresh TCP connection opened inside
// ns and closed afterwards.
func HTTPGet(ctx context.Context, ns tracer.NetNS, addr netip.AddrPort, path string, timeout time.Duration) ([]byte, error) {
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var c net.Conn
				err := tracer.InNetNS(ns, func() (err error) {
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

// UDPExchange sends one datagram to addr from port (0: any) inside ns and
// waits for the answer.
func UDPExchange(ctx context.Context, ns tracer.NetNS, port uint16, addr netip.AddrPort, timeout time.Duration) ([]byte, error) {
	var c *net.UDPConn
	err := tracer.InNetNS(ns, func() (err error) {
		c, err = net.DialUDP("udp", &net.UDPAddr{Port: int(port)}, net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
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
