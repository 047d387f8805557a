package output

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/report"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// labConns assembles the lab recording of internal/flow.
func labConns(t *testing.T) []*flow.Conn {
	t.Helper()
	evs, err := tracetest.ReadEvents(tracetest.LabEvents())
	if err != nil {
		t.Fatal(err)
	}
	conns, _ := tracetest.Replay(evs, flow.Options{NodeNetNS: evs[0].NetNS, Timeout: 1500 * time.Millisecond})
	return conns
}

var names = map[netip.Addr]string{
	netip.MustParseAddr("10.96.0.10"):  "service lab/web",
	netip.MustParseAddr("10.244.0.11"): "pod lab/web-1",
	netip.MustParseAddr("10.244.0.12"): "pod lab/web-2",
}

// named is the report of c with the names above, unexplained.
func named(c *flow.Conn, lost uint64) report.Conn {
	r := report.Conn{Conn: c, Lost: lost, Names: map[netip.AddrPort]string{}}
	for _, a := range report.Shown(c) {
		if n := names[a.Addr()]; n != "" {
			r.Names[a] = n
		}
	}
	return r
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n%s", path, got)
	}
}

func print(t *testing.T, format Format) []byte {
	var b bytes.Buffer
	p, err := New(format, &b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var s Summary
	for _, c := range labConns(t) {
		s.Count(c)
		p.Conn(named(c, 0))
	}
	p.Lost(3)
	s.Lost = 3
	p.Summary(s)
	return b.Bytes()
}

func TestTextGolden(t *testing.T) { golden(t, "lab.txt", print(t, "text")) }

func TestJSONGolden(t *testing.T) {
	out := print(t, "json")
	golden(t, "lab.jsonl", out)
	// Every line is an object with a kind; connections carry the fields
	// the README promises.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if m["kind"] == "connection" {
			for _, k := range []string{"verdict", "proto", "client", "vip", "events"} {
				if _, ok := m[k]; !ok {
					t.Errorf("connection without %q: %s", k, line)
				}
			}
		}
	}
}

func TestUnknownFormat(t *testing.T) {
	if _, err := New("yaml", &bytes.Buffer{}, Options{}); err == nil {
		t.Error("yaml accepted")
	}
}

// Color only on a terminal, and not when asked not to; the colored text is
// the plain text with the verdict and finding marks painted.
func TestColor(t *testing.T) {
	t.Setenv("NO_COLOR", "")
	if !UseColor(false, true) || UseColor(true, true) || UseColor(false, false) {
		t.Error("UseColor: want color on a terminal only, unless --no-color")
	}
	t.Setenv("NO_COLOR", "1")
	if UseColor(false, true) {
		t.Error("UseColor: colors despite NO_COLOR")
	}
	var plain, colored bytes.Buffer
	conns := labConns(t)
	for _, c := range []struct {
		w     *bytes.Buffer
		color bool
	}{{&plain, false}, {&colored, true}} {
		p, _ := New("text", c.w, Options{Color: c.color})
		for _, conn := range conns {
			p.Conn(named(conn, 0))
		}
	}
	if strings.Contains(plain.String(), "\x1b[") {
		t.Error("escape codes without color")
	}
	if !strings.Contains(colored.String(), "\x1b[32m✓ answered\x1b[0m: ") || !strings.Contains(colored.String(), "\x1b[31m✗ rejected\x1b[0m: ") {
		t.Errorf("verdicts not painted:\n%s", colored.String())
	}
	stripped := strings.NewReplacer("\x1b[32m", "", "\x1b[31m", "", "\x1b[1m", "", "\x1b[0m", "").Replace(colored.String())
	if stripped != plain.String() {
		t.Error("colored text differs from the plain text by more than colors")
	}
}

// An explanation's evidence is printed under its blame, one fact a line,
// and in JSON with the cause's code and class.
func TestExplanationEvidence(t *testing.T) {
	c := labConns(t)[0]
	r := named(c, 0)
	r.Explanation = &report.Explanation{Blame: "Pod lab/web-1: nothing on cbr0 answers ARP/NDP for 10.244.0.11", Cause: report.EndpointUnanswered,
		Class: "neighbour", Evidence: []string{"ip route get 10.244.0.11: 10.244.0.11 dev cbr0 src 10.244.0.1", "ip neigh: 10.244.0.11 dev cbr0 FAILED"}}
	for _, f := range []struct {
		format Format
		want   []string
	}{
		{FormatText, []string{"     blame:  Pod lab/web-1: nothing", "     fact:   ip route get 10.244.0.11: 10.244.0.11 dev cbr0 src 10.244.0.1\n     fact:   ip neigh: 10.244.0.11 dev cbr0 FAILED\n"}},
		{FormatJSON, []string{`"cause":"endpoint-unanswered","class":"neighbour","evidence":["ip route get 10.244.0.11: 10.244.0.11 dev cbr0 src 10.244.0.1","ip neigh: 10.244.0.11 dev cbr0 FAILED"]`}},
	} {
		var b bytes.Buffer
		p, err := New(f.format, &b, Options{})
		if err != nil {
			t.Fatal(err)
		}
		p.Conn(r)
		for _, w := range f.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s output lacks %q:\n%s", f.format, w, b.String())
			}
		}
	}
}
