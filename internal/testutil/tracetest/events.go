// Package tracetest holds what tests of the tracer's data need: the lab's
// recorded events, their replay, and a way to fill a conntrack table.
package tracetest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/svctrace/svctrace/internal/flow"
	"github.com/svctrace/svctrace/internal/nf"
)

// LabEvents is the path of internal/flow/testdata/lab.jsonl: the events of
// one run of every lab scenario (make fixtures re-records it).
func LabEvents() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "flow", "testdata", "lab.jsonl")
}

// ReadEvents reads a file of events as JSON, one after the other: the lab
// test's recording, LabEvents.
func ReadEvents(path string) ([]nf.Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var evs []nf.Event
	for dec := json.NewDecoder(f); dec.More(); {
		var ev nf.Event
		if err := dec.Decode(&ev); err != nil {
			return evs, fmt.Errorf("%s, event %d: %w", path, len(evs)+1, err)
		}
		evs = append(evs, ev)
	}
	return evs, nil
}

// Replay assembles a recorded sequence of events: the clock advances with
// the events' own times, and the trace ends one timeout after the last event.
// The offline counterpart of a live trace.
func Replay(evs []nf.Event, opts flow.Options) ([]*flow.Conn, *flow.Assembler) {
	a := flow.New(opts)
	var out []*flow.Conn
	var last uint64
	for _, ev := range evs {
		out = append(out, a.Tick(ev.Time)...)
		out = append(out, a.Add(&ev)...)
		last = max(last, ev.Time)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = flow.DefaultTimeout
	}
	end := last + uint64(timeout)
	out = append(out, a.Tick(end)...)
	return append(out, a.Flush(end)...), a
}
