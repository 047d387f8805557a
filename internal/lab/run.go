package lab

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/topo"
	"github.com/svctrace/svctrace/internal/tracer"
)

// Result is what one scenario produced.
type Result struct {
	Scenario Scenario
	Conns    []*flow.Conn
	// Client is what the client saw: the HTTP answer or the error.
	Client string
}

// Verdict is the verdict of the scenario's first connection, or "" if the
// tracer saw none.
func (r Result) Verdict() flow.Verdict {
	if len(r.Conns) == 0 {
		return ""
	}
	return r.Conns[0].Verdict
}

// RunOptions configure Run.
type RunOptions struct {
	// Timeout is the client's timeout and the tracer's no-reply timeout.
	Timeout time.Duration
	// Backend forces a tracer backend ("" : the first that works).
	Backend string
	// Snaplen and EveryPacket are the tracer's (tracer.Options).
	Snaplen     int
	EveryPacket bool
	Logf        func(format string, args ...any)
	// Lost is called when the tracer loses events.
	Lost func(total uint64)
	// Record, if set, receives every raw event (test fixtures).
	Record func(nf.Event)
	// Journal, if set, keeps the assembler's inputs (svctrace lab -w).
	Journal live.Journal
	// Started, if set, is called once the tracer is attached, before any
	// client connects.
	Started func(tracer.Info)
}

// Targets are the Service addresses the lab's scenarios use.
func (l *Lab) Targets() []nf.Target {
	var ts []nf.Target
	for _, s := range l.Scenarios {
		proto, _ := nf.ParseProto(s.Service.Protocol)
		ts = append(ts, nf.Target{Addr: s.VIP(), Proto: proto})
	}
	return ts
}

// FlowOptions are the assembler options for tracing this lab's node.
func (l *Lab) FlowOptions(timeout time.Duration) flow.Options {
	vips := map[netip.AddrPort]bool{}
	for _, s := range l.Scenarios {
		vips[s.VIP()] = true
	}
	return flow.Options{
		NodeNetNS: l.Node.Inode,
		IsService: func(_ nf.Proto, a netip.AddrPort) bool { return vips[a] },
		Timeout:   timeout,
		IfName:    nf.NewIfNames(l.Node).Name,
	}
}

// Run traces the node while a client in the client namespace connects to
// every scenario's Service once, all at the same time, and returns what
// happened, scenario by scenario.
func (l *Lab) Run(ctx context.Context, opts RunOptions) ([]Result, tracer.Info, live.Result, error) {
	if opts.Timeout == 0 {
		opts.Timeout = 1500 * time.Millisecond
	}
	// The lab traces its DNS Service (dns-nxdomain): the questions its
	// queries carry are read.
	tr, err := tracer.Open(tracer.Options{NetNS: l.Node.Path, Targets: l.Targets(), Backend: opts.Backend, Snaplen: opts.Snaplen,
		EveryPacket: opts.EveryPacket, DNSQuestions: true, CountEvery: tracer.CountEveryFor(opts.Timeout), Logf: opts.Logf})
	if err != nil {
		return nil, tracer.Info{}, live.Result{}, err
	}
	defer tr.Close()
	if opts.Started != nil {
		opts.Started(tr.Info())
	}

	results := make([]Result, len(l.Scenarios))
	conns, res, err := live.Collect(ctx, tr, live.Options{Flow: l.FlowOptions(opts.Timeout), Lost: opts.Lost, Record: opts.Record, Journal: opts.Journal},
		func() {
			var wg sync.WaitGroup
			for i, s := range l.Scenarios {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i] = Result{Scenario: s, Client: l.try(ctx, s, opts.Timeout)}
				}()
			}
			wg.Wait()
		})
	if err != nil {
		return nil, tr.Info(), res, fmt.Errorf("tracing: %w", err)
	}
	Assign(results, conns)
	return results, tr.Info(), res, nil
}

// Pod is the lab's pod of that name, or nil.
func (l *Lab) Pod(name string) *Pod {
	for i := range l.Pods {
		if l.Pods[i].Name == name {
			return &l.Pods[i]
		}
	}
	return nil
}

// ClientIP is where the scenario's connection comes from.
func (l *Lab) ClientIP(s Scenario) netip.Addr {
	vip := s.VIP().Addr()
	if p := l.Pod(s.From); p != nil {
		return p.Addr(vip)
	}
	if vip.Is6() {
		return ClientIP6
	}
	return ClientIP
}

// Assign gives each scenario's result the connections to its Service.
// Connections were numbered as they started, all at once; they are
// numbered in scenario order instead, as they are shown.
func Assign(results []Result, conns []*flow.Conn) {
	byVIP := map[netip.AddrPort][]*flow.Conn{}
	for _, c := range conns {
		byVIP[c.VIP] = append(byVIP[c.VIP], c)
	}
	id := 0
	for i := range results {
		results[i].Conns = byVIP[results[i].Scenario.VIP()]
		for _, c := range results[i].Conns {
			id++
			c.ID, c.Continues, c.Scenario = id, 0, results[i].Scenario.Name
		}
	}
}

// Request makes the scenario's HTTP request, from the client or from the
// scenario's pod.
func (l *Lab) Request(ctx context.Context, s Scenario, timeout time.Duration) ([]byte, error) {
	ns := l.Client
	if p := l.Pod(s.From); p != nil {
		ns = p.NS
	}
	switch {
	case s.Query != "":
		rcode, err := DNSQuery(ctx, ns, s.VIP(), s.Query, timeout)
		return []byte(rcode), err
	case s.Service.Protocol == "udp":
		return UDPExchange(ctx, ns, s.ClientPort, s.VIP(), timeout)
	case s.Forget:
		return KeptAlive(ctx, ns, s.VIP(), timeout, func(local netip.AddrPort) error {
			return topo.ForgetConnection(l.Node, local, s.VIP())
		})
	}
	return HTTPGet(ctx, ns, s.VIP(), "/", timeout)
}

// try makes the scenario's request and says what the client saw.
func (l *Lab) try(ctx context.Context, s Scenario, timeout time.Duration) string {
	body, err := l.Request(ctx, s, timeout)
	if err != nil {
		return "error: " + err.Error()
	}
	if s.Service.Protocol == "udp" {
		return fmt.Sprintf("answer: %q", body)
	}
	return fmt.Sprintf("HTTP 200: %q", body)
}
