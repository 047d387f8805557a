package output

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
)

// The table counts every connection per Service port, answered or not,
// and names each failing verdict's most frequent blame; failing ports
// come first.
func TestServicesTable(t *testing.T) {
	var s Services
	conn := func(v flow.Verdict) *flow.Conn { return &flow.Conn{Verdict: v} }
	blame := func(b string) *report.Explanation { return &report.Explanation{Blame: b} }
	for range 3 {
		s.Count("shop/web:http", conn(flow.Answered), nil)
	}
	s.Count("shop/hung:http", conn(flow.NoReply), blame("Pod shop/hung-1 did not answer"))
	s.Count("shop/hung:http", conn(flow.NoReply), blame("Pod shop/hung-1 did not answer"))
	s.Count("shop/hung:http", conn(flow.NoReply), blame("Pod shop/hung-2 did not answer"))
	s.Count("shop/hung:http", conn(flow.Answered), nil)
	s.Count("shop/nomatch:http", conn(flow.Rejected), blame("Service shop/nomatch: the selector app=nobody matches no Pod"))
	rows := s.Rows()
	if len(rows) != 3 || rows[0].Port != "shop/hung:http" || rows[1].Port != "shop/nomatch:http" || rows[2].Port != "shop/web:http" {
		t.Fatalf("rows %+v", rows)
	}
	hung := rows[0]
	if hung.Conns != 4 || hung.Answered != 1 || len(hung.Failing) != 1 {
		t.Fatalf("hung %+v", hung)
	}
	if f := hung.Failing[0]; f.Verdict != flow.NoReply || f.Conns != 3 || f.Blame != "Pod shop/hung-1 did not answer" || f.Blamed != 2 {
		t.Errorf("hung's no-reply %+v", f)
	}
	if rows[2].Conns != 3 || rows[2].Answered != 3 || rows[2].Failing != nil {
		t.Errorf("web %+v", rows[2])
	}

	if h := s.Headline(); h != "2 Service port(s) failing, most shop/hung:http (3)" {
		t.Errorf("headline %q", h)
	}
	var b bytes.Buffer
	p, _ := New(FormatText, &b, Options{})
	WriteServices(p, &s, 61*time.Second, true)
	for _, want := range []string{
		"services after 1m1s in all: 3 Service port(s) with connections, 2 failing",
		"  shop/hung:http         4         1  3 no-reply: Pod shop/hung-1 did not answer (2 of them)",
		"  shop/nomatch:http      1         0  1 rejected: Service shop/nomatch: the selector app=nobody matches no Pod\n",
		"  shop/web:http          3         3\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	p, _ = New(FormatJSON, &b, Options{})
	WriteServices(p, &s, time.Second, false)
	var got struct {
		Kind     string
		Final    bool
		Services []ServiceRow
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || got.Kind != "services" || got.Final || len(got.Services) != 3 || got.Services[0].Failing[0].Blamed != 2 {
		t.Errorf("json %v %+v: %s", err, got, b.String())
	}
}

// However many different blames one Service port's failures have, the
// table keeps a bounded number, and still counts every connection.
func TestServicesTableIsBounded(t *testing.T) {
	var s Services
	for i := range 1000 {
		s.Count("shop/web:http", &flow.Conn{Verdict: flow.Dropped}, &report.Explanation{Blame: fmt.Sprint("blame ", i)})
	}
	s.Count("shop/web:http", &flow.Conn{Verdict: flow.Dropped}, &report.Explanation{Blame: "blame 7"})
	f := s.rows["shop/web:http"].failing[flow.Dropped]
	if len(f.blames) != maxBlames || f.n != 1001 || f.other != 1000-maxBlames {
		t.Errorf("%d blames kept, %d counted, %d other", len(f.blames), f.n, f.other)
	}
	if r := s.Rows()[0].Failing[0]; r.Blame != "blame 7" || r.Blamed != 2 {
		t.Errorf("most frequent %+v", r)
	}
}

// The text table lists every failing Service port, and the busiest ten
// of the healthy ones: a node with thousands says how many it left out.
func TestServicesTableTextBoundsHealthyRows(t *testing.T) {
	var s Services
	for i := range 25 {
		for range i + 1 {
			s.Count(fmt.Sprintf("ns/svc%02d:http", i), &flow.Conn{Verdict: flow.Answered}, nil)
		}
	}
	s.Count("ns/broken:http", &flow.Conn{Verdict: flow.Rejected}, &report.Explanation{Blame: "Service ns/broken: no endpoints"})
	var b bytes.Buffer
	p, _ := New(FormatText, &b, Options{})
	WriteServices(p, &s, time.Second, true)
	out := b.String()
	if !strings.Contains(out, "26 Service port(s) with connections, 1 failing") || !strings.Contains(out, "ns/broken:http") ||
		!strings.Contains(out, "ns/svc24:http") || !strings.Contains(out, "ns/svc15:http") || strings.Contains(out, "ns/svc14:http") ||
		!strings.HasSuffix(out, "  … and 15 more Service port(s), every connection answered (-o json lists them)\n") {
		t.Errorf("text:\n%s", out)
	}
	if n := len(s.Rows()); n != 26 {
		t.Errorf("%d rows, want all 26 (JSON)", n)
	}
}

// check -A: a node's problem once, then each Service's own, one line each.
func TestWriteChecks(t *testing.T) {
	checks := []ServiceCheck{
		{Node: "node-1", Finding: report.Finding{Severity: report.Problem, Code: report.ForwardingOff, Summary: "the node does not forward IPv4"}},
		{Service: "shop/nomatch", Finding: report.Finding{Severity: report.Problem, Code: report.SelectorMatchesNoPod, Summary: "the selector app=nobody matches no Pod in namespace shop"}},
	}
	var b bytes.Buffer
	p, _ := New(FormatText, &b, Options{})
	WriteChecks(p, checks)
	want := "✗ node node-1   forwarding-off: the node does not forward IPv4 (every Service on the node)\n" +
		"✗ shop/nomatch  selector-matches-no-pod: the selector app=nobody matches no Pod in namespace shop\n"
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	p, _ = New(FormatJSON, &b, Options{})
	WriteChecks(p, checks)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], `{"kind":"service-check","service":"shop/nomatch","finding":{"severity":"problem","code":"selector-matches-no-pod"`) {
		t.Errorf("json:\n%s", b.String())
	}
}

// Connections the kernel counted answered (svctrace -A holds them) add to
// their rows; each call gives the running totals, replacing the last.
func TestServicesTableAddsCounted(t *testing.T) {
	var s Services
	s.Count("shop/hung:http", &flow.Conn{Verdict: flow.NoReply}, nil)
	s.Counted(map[string]int{"shop/hung:http": 2, "shop/web:http": 5})
	s.Counted(map[string]int{"shop/hung:http": 3, "shop/web:http": 7})
	rows := s.Rows()
	if len(rows) != 2 || rows[0].Port != "shop/hung:http" || rows[0].Conns != 4 || rows[0].Answered != 3 || len(rows[0].Failing) != 1 ||
		rows[1].Port != "shop/web:http" || rows[1].Conns != 7 || rows[1].Answered != 7 {
		t.Fatalf("rows %+v", rows)
	}
	if h := s.Headline(); h != "1 Service port(s) failing, most shop/hung:http (1)" {
		t.Errorf("headline %q", h)
	}
}
