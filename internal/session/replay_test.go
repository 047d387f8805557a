package session

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/live"
	"github.com/svctrace/svctrace/internal/logging"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/output"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/testutil/tracetest"
)

// A name the live run learned while it reported a connection (in the
// background, from the API) is recorded right after the input that
// completed it; analysis names the connections from there on, and not
// those before: it shows what the live run showed.
func TestReplayNamesAsTheLiveRunDid(t *testing.T) {
	evs, err := tracetest.ReadEvents(tracetest.LabEvents())
	if err != nil {
		t.Fatal(err)
	}
	// The inputs as a live run journals them: the clock before each event.
	var inputs []live.Input
	for i := range evs {
		inputs = append(inputs, live.Input{Tick: evs[i].Time}, live.Input{Event: &evs[i]})
	}
	end := evs[len(evs)-1].Time + uint64(3*time.Second)
	inputs = append(inputs, live.Input{Flush: end})
	timeout := 1500 * time.Millisecond
	flowOpts := flow.Options{NodeNetNS: evs[0].NetNS, Timeout: timeout}

	// Which input completes each connection to web-1, which the objects
	// below (Service hung's) do not know.
	web1 := netip.MustParseAddr("10.244.0.11")
	var at []int
	k := 0
	live.Replay(live.Options{Flow: flowOpts, Conn: func(c *flow.Conn, _ uint64) {
		if c.Endpoint.Addr() == web1 {
			at = append(at, k-1)
		}
	}}, func() (live.Input, bool) { k++; return inputs[min(k-1, len(inputs)-1)], k <= len(inputs) })
	if len(at) < 2 || at[0] == at[len(at)-1] {
		t.Fatalf("connections to %s completed at inputs %v: want some at different inputs", web1, at)
	}
	learnedAt := at[len(at)-1] // the last one's report learned the name

	path := filepath.Join(t.TempDir(), "names.svctrace")
	w, err := record.Create(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	view, err := resolve.Gather(context.Background(), resolve.FileSource{Objects: lab.Objects(), Path: "lab"}, lab.Namespace, "hung", resolve.LocalNode{Name: lab.NodeName})
	if err != nil {
		t.Fatal(err)
	}
	w.Begin(record.Meta{Mode: "service", NetNS: evs[0].NetNS, Node: lab.NodeName, Timeout: timeout, Namespace: lab.Namespace, Service: "hung"})
	w.Services([]nf.Target{{Addr: netip.MustParseAddrPort("10.96.0.40:80"), Proto: nf.TCP}})
	w.View(view)
	w.Rules(record.Rules{})
	for i, in := range inputs {
		switch {
		case in.Event != nil:
			w.Event(*in.Event)
		case in.Flush != 0:
			w.Flush(in.Flush)
		default:
			w.Tick(in.Tick)
		}
		if i == learnedAt {
			w.Name(record.Name{Addr: web1, Name: "pod lab/web-1 on lab-node"})
		}
	}
	if err := w.Close(record.End{}); err != nil {
		t.Fatal(err)
	}
	rec, err := record.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	io := IO{Stdout: &out, Stderr: &out, Log: logging.Discard(),
		Printer: func(opts output.Options) (output.Printer, error) { return output.New(output.FormatJSON, &out, opts) }}
	if err := Replay(io, path, rec, func(*flow.Conn) bool { return true }, false); err != nil {
		t.Fatal(err)
	}
	var named []bool
	for _, l := range strings.Split(out.String(), "\n") {
		var raw map[string]any
		if json.Unmarshal([]byte(l), &raw) != nil || raw["kind"] != "connection" {
			continue
		}
		if ep, _ := raw["endpoint"].(string); strings.HasPrefix(ep, web1.String()+":") {
			name, _ := raw["endpoint_name"].(string)
			named = append(named, name == "pod lab/web-1 on lab-node")
		}
	}
	want := make([]bool, len(at))
	for i := range at {
		want[i] = at[i] >= learnedAt
	}
	if len(named) != len(want) {
		t.Fatalf("%d connections to %s shown, want %d:\n%s", len(named), web1, len(want), out.String())
	}
	for i := range want {
		if named[i] != want[i] {
			t.Errorf("connection %d to %s (completed at input %d, name learned at %d): named %v, want %v", i+1, web1, at[i], learnedAt, named[i], want[i])
		}
	}
}
