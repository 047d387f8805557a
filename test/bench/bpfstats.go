package main

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/lab"
)

// runCost is what the kernel's BPF statistics say svctrace's programs cost
// during one run: their calls and the time spent in them.
type runCost struct {
	calls    uint64
	runtime  time.Duration
	requests float64 // what the workload did meanwhile
	byName   map[string]progCost
}

// progCost is one program's share: calls and time.
type progCost struct {
	calls   uint64
	runtime time.Duration
}

// perProgram says each program's ns per call and calls per request.
func (r runCost) perProgram() string {
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(r.byName)) {
		p := r.byName[name]
		parts = append(parts, fmt.Sprintf("%s %.0f ns × %.1f", name, float64(p.runtime.Nanoseconds())/float64(max(p.calls, 1)), float64(p.calls)/max(r.requests, 1)))
	}
	return strings.Join(parts, ", ")
}

func (r runCost) nsPerCall() float64 {
	return float64(r.runtime.Nanoseconds()) / float64(max(r.calls, 1))
}

// observerCost runs w for dur while start's watcher runs, with the kernel's
// run-time statistics for BPF programs on (they cost a clock read per call,
// so the throughput runs keep them off), and sums svctrace's programs'.
func observerCost(l *lab.Lab, start func() (func() watched, error), w workload, dur time.Duration) (runCost, error) {
	stop, err := start()
	if err != nil {
		return runCost{}, err
	}
	defer stop()
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return runCost{}, fmt.Errorf("enabling BPF run-time statistics: %w", err)
	}
	defer stats.Close()
	before, err := svctracePrograms()
	if err != nil {
		return runCost{}, err
	}
	rate, _, err := runWrk(l, w, dur)
	if err != nil {
		return runCost{}, err
	}
	after, err := svctracePrograms()
	if err != nil {
		return runCost{}, err
	}
	r := runCost{requests: rate * dur.Seconds(), byName: map[string]progCost{}}
	for id, s := range after {
		b := before[id].stats
		calls, runtime := s.stats.RunCount-b.RunCount, s.stats.Runtime-b.Runtime
		r.calls += calls
		r.runtime += runtime
		p := r.byName[s.name]
		p.calls += calls
		p.runtime += runtime
		r.byName[s.name] = p
	}
	return r, nil
}

type namedStats struct {
	name  string
	stats ebpf.ProgramStats
}

// svctracePrograms are the statistics of the loaded programs svctrace's
// observers and drop program are, by ID.
func svctracePrograms() (map[ebpf.ProgramID]namedStats, error) {
	out := map[ebpf.ProgramID]namedStats{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // gone meanwhile
		}
		info, err := p.Info()
		if err == nil && (strings.HasPrefix(info.Name, "nf_") || strings.HasPrefix(info.Name, "kfree_skb")) {
			if s, err := p.Stats(); err == nil {
				out[id] = namedStats{info.Name, *s}
			}
		}
		p.Close()
	}
}
