package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/session"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

// fuzzSeeds are recordings of each mode, made without root from the lab's
// recorded kernel events and objects.
func fuzzSeeds(f testing.TB) [][]byte {
	f.Helper()
	evs, err := tracetest.ReadEvents(tracetest.LabEvents())
	if err != nil {
		f.Fatal(err)
	}
	objs := lab.Objects()
	view := func(name string) *resolve.View {
		v, err := resolve.Gather(context.Background(), resolve.FileSource{Objects: objs, Path: "lab"}, lab.Namespace, name, resolve.LocalNode{Name: lab.NodeName})
		if err != nil {
			f.Fatal(err)
		}
		return v
	}
	var targets []nf.Target
	var results []session.LabResult
	views := map[string]*resolve.View{}
	for _, s := range lab.Scenarios() {
		proto, _ := nf.ParseProto(s.Service.Protocol)
		targets = append(targets, nf.Target{Addr: s.VIP(), Proto: proto})
		results = append(results, session.LabResult{Scenario: s, Client: "HTTP 200"})
		views[s.Name] = view(s.Service.Name)
	}
	seed := func(mode string, state func(w *record.Writer)) []byte {
		dir := f.TempDir()
		path := filepath.Join(dir, "seed.svctrace")
		w, err := record.Create(path, 0)
		if err != nil {
			f.Fatal(err)
		}
		w.Begin(record.Meta{Mode: mode, NetNS: evs[0].NetNS, Node: lab.NodeName, Targets: targets, Timeout: 1500 * time.Millisecond,
			Namespace: lab.Namespace, Service: "web", Wall: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC), Mono: evs[0].Time})
		w.Services(targets)
		state(w)
		// A few connections' events keep the seeds small: fuzzing
		// mutates them faster.
		const n = 40
		for i, ev := range evs[:n] {
			w.Event(ev)
			if i%10 == 0 {
				w.Tick(ev.Time)
			}
		}
		w.Lost(2)
		w.Flush(evs[n-1].Time + uint64(2*time.Second))
		w.Close(record.End{Conns: 3})
		b, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	return [][]byte{
		seed("trace", func(w *record.Writer) { w.IfName(record.IfName{Index: 2, Name: "cbr0"}) }),
		seed("service", func(w *record.Writer) {
			w.View(view("web"))
			w.Rules(record.Rules{})
			w.Name(record.Name{Addr: evs[0].Tuple.Src.Addr(), Name: "the lab's client"})
		}),
		seed("lab", func(w *record.Writer) {
			w.Lab(session.LabRecord{Run: session.LabRun{ID: "abcdef", Backend: "netfilter-link"}, Results: results, Views: views})
			w.Lab(session.LabClients{Results: results})
		}),
	}
}

// The seeds are recordings analyse reads whole: each holds connections.
func TestFuzzSeedsAnalyse(t *testing.T) {
	for i, s := range fuzzSeeds(t) {
		path := filepath.Join(t.TempDir(), "seed.svctrace")
		os.WriteFile(path, s, 0o644)
		out, errOut, err := run(context.Background(), "analyze", path)
		if err != nil || !strings.Contains(out, "#1 ") {
			t.Errorf("seed %d: %v\n%s\n%s", i, err, out, errOut)
		}
	}
}

// FuzzAnalyze: svctrace analyze, in process, on any bytes: never a panic,
// and when it refuses, one line.
func FuzzAnalyze(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
		f.Add(s[:len(s)/2])
	}
	dir := f.TempDir()
	path := filepath.Join(dir, "in.svctrace")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		format := []string{"text", "json", "pcapng"}[len(b)%3]
		out, errOut, err := run(context.Background(), "analyze", path, "-o", format)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("error of more than one line: %q", err)
		}
		if bytes.Contains([]byte(out+errOut), []byte("goroutine ")) {
			t.Fatalf("a stack trace:\n%s%s", out, errOut)
		}
	})
}
