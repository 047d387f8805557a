package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/resolvconf"
)

// DNS: resolve the Service's name as a Pod's resolver does, then connect to
// the address it gave.
const DNS Kind = "dns"

// Query is one question a resolution asked and what came back.
type Query struct {
	Name   string // the FQDN asked
	Type   string // A, AAAA
	Server netip.AddrPort
	// From is the query's own address: its connection in the trace.
	From netip.AddrPort
	// TCP: asked over TCP (again, after a truncated answer over UDP).
	TCP bool
	// Rcode is the answer's (NOERROR, NXDOMAIN, SERVFAIL…); "" when none
	// came back.
	Rcode string
	Addrs []netip.Addr
	// CNAMEs are the aliases the answer went through.
	CNAMEs    []string
	Truncated bool
	Took      time.Duration
	// Failure says why no answer came back: "no answer in 5s", "refused
	// (ICMP port unreachable)".
	Failure string
}

// Answered reports whether the query got an answer with addresses.
func (q Query) Answered() bool { return len(q.Addrs) > 0 }

// Resolution is a name resolved as a Pod's resolver resolves it.
type Resolution struct {
	Name string // as asked
	// Hosts are the /etc/hosts lines that answered it: no query was sent.
	Hosts   []resolvconf.HostsEntry
	Queries []Query
	// Addrs are the addresses the resolver returns; Answered the FQDN
	// that gave them ("" from /etc/hosts, or none).
	Addrs    []netip.Addr
	Answered string
}

// Resolver resolves names as the C library's stub resolver does with a
// Pod's /etc/hosts and /etc/resolv.conf: the file first, then for each
// name of the search list's expansion, A and AAAA to each nameserver in
// turn (sent together on one socket unless single-request), TCP after a
// truncated answer, on to the next name on NXDOMAIN, an empty answer or
// SERVFAIL, and no further when no nameserver answers.
type Resolver struct {
	NS    nf.NetNS // where the Pod's sockets live
	Conf  resolvconf.Conf
	Hosts resolvconf.Hosts
	// Port is the nameservers' port: 53 when 0.
	Port uint16
	// Timeout bounds each exchange, below the resolver's own timeout.
	Timeout time.Duration
}

// Resolve resolves name.
func (r Resolver) Resolve(ctx context.Context, name string) Resolution {
	res := Resolution{Name: name}
	if res.Hosts = r.Hosts.Lookup(name); len(res.Hosts) > 0 {
		for _, h := range res.Hosts {
			res.Addrs = append(res.Addrs, h.Addr)
		}
		return res
	}
	port := r.Port
	if port == 0 {
		port = 53
	}
	for _, fqdn := range r.Conf.Queries(name) {
		answered := false
		for _, ns := range r.Conf.Nameservers {
			qs := r.exchange(ctx, netip.AddrPortFrom(ns, port), fqdn)
			res.Queries = append(res.Queries, qs...)
			if ctx.Err() != nil {
				return res
			}
			if slices.ContainsFunc(qs, func(q Query) bool { return q.Rcode == "" }) {
				continue // the next nameserver
			}
			answered = true
			for _, q := range qs {
				res.Addrs = append(res.Addrs, q.Addrs...)
			}
			break
		}
		switch {
		case !answered:
			return res // no nameserver answered: the resolver gives up
		case len(res.Addrs) > 0:
			res.Answered = fqdn
			return res
		}
		last := res.Queries[len(res.Queries)-1].Rcode
		if last != "NXDOMAIN" && last != "NOERROR" && last != "SERVFAIL" {
			return res // REFUSED and the like end the search
		}
	}
	return res
}

// exchange asks server for fqdn's A and AAAA records: on one socket at
// once, as glibc does by default; one after the other with options
// single-request, on a new socket each with single-request-reopen.
func (r Resolver) exchange(ctx context.Context, server netip.AddrPort, fqdn string) []Query {
	timeout := r.Timeout
	if t := time.Duration(r.Conf.Timeout) * time.Second; t > 0 && (timeout == 0 || t < timeout) {
		timeout = t
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	types := []uint16{dns.TypeA, dns.TypeAAAA}
	var qs []Query
	switch {
	case r.Conf.Option("single-request-reopen"):
		for _, t := range types {
			qs = append(qs, r.udp(ctx, server, fqdn, []uint16{t}, false, timeout)...)
		}
	default:
		qs = r.udp(ctx, server, fqdn, types, r.Conf.Option("single-request"), timeout)
	}
	// A truncated answer is asked again over TCP.
	for i := range qs {
		if qs[i].Truncated {
			qs = append(qs, r.tcp(ctx, server, fqdn, dns.StringToType[qs[i].Type], timeout))
		}
	}
	return qs
}

// udp sends the questions from one socket, all at once or each after the
// previous one's answer, and reads their answers.
func (r Resolver) udp(ctx context.Context, server netip.AddrPort, fqdn string, types []uint16, oneByOne bool, timeout time.Duration) []Query {
	qs := make([]Query, len(types))
	for i, t := range types {
		qs[i] = Query{Name: fqdn, Type: dns.TypeToString[t], Server: server}
	}
	conn, from, err := dial(ctx, r.NS, "udp", server)
	for i := range qs {
		qs[i].From = from
	}
	if err != nil {
		return failed(qs, err, timeout)
	}
	defer conn.Close()
	co := &dns.Conn{Conn: conn}
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	sent := make([]time.Time, len(qs))
	ids := make([]uint16, len(qs))
	send := func(i int) error {
		m := new(dns.Msg)
		m.SetQuestion(fqdn, types[i])
		ids[i], sent[i] = m.Id, time.Now()
		return co.WriteMsg(m)
	}
	pending := 0
	for i := range qs {
		if oneByOne && i > 0 {
			break
		}
		if err := send(i); err != nil {
			return failed(qs, err, timeout)
		}
		pending++
	}
	for next := pending; pending > 0; {
		m, err := co.ReadMsg()
		if err != nil {
			return failed(qs, err, timeout)
		}
		i := slices.Index(ids, m.Id)
		if i < 0 || qs[i].Rcode != "" {
			continue // not ours, or a duplicate
		}
		qs[i].answer(m, time.Since(sent[i]))
		pending--
		if oneByOne && next < len(qs) {
			if err := send(next); err != nil {
				return failed(qs, err, timeout)
			}
			next++
			pending++
		}
	}
	return qs
}

// tcp asks one question over TCP.
func (r Resolver) tcp(ctx context.Context, server netip.AddrPort, fqdn string, t uint16, timeout time.Duration) Query {
	q := Query{Name: fqdn, Type: dns.TypeToString[t], Server: server, TCP: true}
	start := time.Now()
	conn, from, err := dial(ctx, r.NS, "tcp", server)
	q.From = from
	if err != nil {
		return failed([]Query{q}, err, timeout)[0]
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	co := &dns.Conn{Conn: conn}
	m := new(dns.Msg)
	m.SetQuestion(fqdn, t)
	if err := co.WriteMsg(m); err != nil {
		return failed([]Query{q}, err, timeout)[0]
	}
	a, err := co.ReadMsg()
	if err != nil {
		return failed([]Query{q}, err, timeout)[0]
	}
	q.answer(a, time.Since(start))
	return q
}

// answer takes in the answer m, which took took.
func (q *Query) answer(m *dns.Msg, took time.Duration) {
	q.Took, q.Truncated = took, m.Truncated
	q.Rcode = dns.RcodeToString[m.Rcode]
	if q.Rcode == "" {
		q.Rcode = fmt.Sprintf("RCODE%d", m.Rcode)
	}
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok {
				q.Addrs = append(q.Addrs, a.Unmap())
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				q.Addrs = append(q.Addrs, a)
			}
		case *dns.CNAME:
			q.CNAMEs = append(q.CNAMEs, rr.Target)
		}
	}
}

// failed marks the queries still without an answer with why.
func failed(qs []Query, err error, timeout time.Duration) []Query {
	why := failure(err, timeout)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
	case errors.Is(err, syscall.ECONNREFUSED):
		why = "refused (ICMP port unreachable: nothing listens there, or a rule REJECTs it)"
	case errors.As(err, new(*net.OpError)):
		why = failure(errors.Unwrap(err), timeout)
	}
	for i := range qs {
		if qs[i].Rcode == "" && qs[i].Failure == "" {
			qs[i].Failure = why
		}
	}
	return qs
}
