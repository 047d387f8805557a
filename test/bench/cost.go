package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
)

var readRE = regexp.MustCompile(`read (\d+) records from the kernel holding (\d+) events, for (\d+) connection`)

// costRun is one traced run of the new-connection workload.
type costRun struct {
	conns, records, events float64
	cpu                    float64 // seconds, after start-up
	recBytes               float64
	rate                   float64 // wrk's requests/s
}

// cost: what one traced connection costs svctrace (CPU, events, recording
// bytes), what svctrace costs while nothing matches, and what analyzing a
// recording costs (time, memory).
func cost(bin, dir string, dur time.Duration, rounds int) (section, error) {
	l, err := lab.Up(lab.Options{})
	if err != nil {
		return section{}, err
	}
	defer l.Down()
	if err := quickConnections(l); err != nil {
		return section{}, err
	}
	web := l.Scenarios[0].VIP()
	node := l.Node.Spec
	newConns := workload{"new", "new connections/s (Connection: close)", "req/s", []string{"-t1", "-c8", "-H", "Connection: close", "http://" + web.String() + "/"}, reqRE}
	runWrk(l, newConns, time.Second) // warm up
	var raw strings.Builder
	var runs []costRun
	rec := filepath.Join(dir, "cost.svctrace")
	// The first round's svctrace writes a CPU profile (SVCTRACE_CPUPROFILE).
	prof := filepath.Join(dir, "cost.pprof")
	for round := 1; round <= rounds; round++ {
		os.Remove(rec)
		if round == 1 {
			os.Remove(prof)
			os.Setenv("SVCTRACE_CPUPROFILE", prof)
		}
		stop, err := background(bin, "Ctrl-C to stop", "trace", "-v", "--netns", node, "--addr", web.String(), "--timeout", "1s", "-w", rec)
		os.Unsetenv("SVCTRACE_CPUPROFILE")
		if err != nil {
			return section{}, err
		}
		rate, out, err := runWrk(l, newConns, dur)
		w := stop()
		if err != nil {
			return section{}, err
		}
		m := readRE.FindStringSubmatch(w.errOut)
		if m == nil {
			return section{}, fmt.Errorf("svctrace -v said nothing of what it read:\n%s", w.errOut)
		}
		r := costRun{cpu: w.cpu - w.cpuReady, rate: rate}
		r.records, _ = strconv.ParseFloat(m[1], 64)
		r.events, _ = strconv.ParseFloat(m[2], 64)
		r.conns, _ = strconv.ParseFloat(m[3], 64)
		if st, err := os.Stat(rec); err == nil {
			r.recBytes = float64(st.Size())
		}
		if r.conns == 0 {
			return section{}, fmt.Errorf("svctrace reported no connection:\n%s", w.errOut)
		}
		runs = append(runs, r)
		fmt.Fprintf(&raw, "round %d: %.0f connections, %.0f records, %.0f events, %.2f CPU-s after start-up, recording %.0f bytes\n%s\n", round, r.conns, r.records, r.events, r.cpu, r.recBytes, indent(out))
	}
	per := func(f func(costRun) float64) float64 {
		var v []float64
		for _, r := range runs {
			v = append(v, f(r)/r.conns)
		}
		return median(v)
	}
	cpuPer := per(func(r costRun) float64 { return r.cpu }) * 1e6
	recordsPer := per(func(r costRun) float64 { return r.records })
	eventsPer := per(func(r costRun) float64 { return r.events })
	bytesPer := per(func(r costRun) float64 { return r.recBytes })

	idle, err := idleCPU(bin, node, web.String(), 10*time.Second)
	if err != nil {
		return section{}, err
	}
	// The last round's recording, analyzed as an operator would.
	an, err := analyze(bin, rec)
	if err != nil {
		return section{}, err
	}
	fmt.Fprintf(&raw, "analyze: %s\n", an.raw)
	fmt.Fprintf(&raw, "\nround 1's CPU profile (start-up included), by cumulative time:\n%s", profileTop(bin, prof))

	var t strings.Builder
	t.WriteString("| | figure | target |\n|---|---:|---|\n")
	fmt.Fprintf(&t, "| svctrace CPU per traced connection (after start-up) | %.0f µs | ≤ 20 µs: %s |\n", cpuPer, verdict(cpuPer <= 20))
	fmt.Fprintf(&t, "| events reaching userspace per healthy TCP connection (ring buffer records) | %.1f | ≤ 8: %s |\n", recordsPer, verdict(recordsPer <= 8))
	fmt.Fprintf(&t, "| observations those records held, per connection | %.1f | |\n", eventsPer)
	fmt.Fprintf(&t, "| svctrace idle (no matching traffic), share of one core | %.2f %% | < 0.1 %%: %s |\n", idle, verdict(idle < 0.1))
	fmt.Fprintf(&t, "| recording size per connection (-w) | %.1f KB | ≤ 2 KB: %s |\n", bytesPer/1e3, verdict(bytesPer <= 2e3))
	fmt.Fprintf(&t, "| analyze of a %.0f MB recording: time | %.2f s (%.0f MB/s) | ≥ 100 MB/s: %s |\n", an.mb, an.secs, an.mb/an.secs, verdict(an.mb/an.secs >= 100))
	fmt.Fprintf(&t, "| analyze of that recording: peak memory (VmHWM) | %.0f MB | ≤ 50 MB: %s |\n", an.peakMB, verdict(an.peakMB <= 50))
	fmt.Fprintf(&t, "| of which svctrace's own (anonymous: Go heap and stacks), highest sampled | %.0f MB | ≤ 50 MB: %s |\n", an.anonMB, verdict(an.anonMB <= 50))
	return section{title: "Cost per connection",
		method: fmt.Sprintf("The lab, as under Data-path overhead: `svctrace trace -v --netns … --addr %s -w FILE` while wrk opens new connections (Connection: close) for %s, %d rounds (medians). CPU is the process's user and system time from the line saying tracing has begun to its exit, divided by the connections it reported; records and events are what `svctrace -v` says it read from the ring buffer (a record is one observation, or a packet's path through the node's hooks, which holds several). Idle: the same command for 10 s with no traffic to the Service, its CPU time read from its threads' schedstat (to the ns: /proc/PID/stat counts 10 ms ticks, and the target is 10 ms in 10 s). Analyze: `svctrace analyze FILE -o json` of the last round's recording, output discarded; its anonymous resident set is sampled every 10 ms. Round 1's svctrace writes a CPU profile (SVCTRACE_CPUPROFILE): its top entries are at the end of the raw output.", web, dur, rounds),
		table:  t.String(), raw: raw.String()}, nil
}

// profileTop is go tool pprof's list of the functions a CPU profile spent
// most time in, with their callees, or why there is none.
func profileTop(bin, prof string) string {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=30", bin, prof).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(no profile: %v: %s)\n", err, out)
	}
	return string(out)
}

// quickConnections lets the client open many short connections in a row:
// it reuses its TIME_WAIT ports, and the pods keep none (they close first;
// the client's reused ports would meet them and wait a second to retry).
func quickConnections(l *lab.Lab) error {
	for k, v := range map[string]string{"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.ip_local_port_range": "1024 65000"} {
		if err := topo.Sysctl(l.Client, k, v); err != nil {
			return err
		}
	}
	for _, p := range l.Pods {
		if err := topo.Sysctl(p.NS, "net.ipv4.tcp_max_tw_buckets", "0"); err != nil {
			return err
		}
	}
	return nil
}

// idleCPU is the share of one core svctrace uses over d while tracing an
// address nobody connects to, start-up left out.
func idleCPU(bin, node, addr string, d time.Duration) (float64, error) {
	stop, pid, err := started(bin, "Ctrl-C to stop", "trace", "--netns", node, "--addr", addr)
	if err != nil {
		return 0, err
	}
	time.Sleep(time.Second) // start-up's last allocations and GC
	start, before := time.Now(), cpuSeconds(pid)
	time.Sleep(d)
	// Read while it still waits: its exit (detaching, closing) is not
	// idling.
	used, elapsed := cpuSeconds(pid)-before, time.Since(start).Seconds()
	stop()
	return 100 * used / elapsed, nil
}

// analyzed is what analyzing a recording cost.
type analyzed struct {
	mb, secs, peakMB float64
	anonMB           float64 // the highest anonymous resident set seen (Go heap and stacks)
	raw              string
}

func analyze(bin, rec string) (analyzed, error) {
	st, err := os.Stat(rec)
	if err != nil {
		return analyzed{}, err
	}
	cmd := exec.Command(bin, "analyze", rec, "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return analyzed{}, err
	}
	// VmHWM only grows: its last reading before the end is the peak, to
	// within what the last 10 ms added. RssAnon is sampled.
	peak, anon := 0.0, 0.0
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return analyzed{}, fmt.Errorf("svctrace analyze: %v\n%s", err, stderr.String())
			}
			a := analyzed{mb: float64(st.Size()) / 1e6, secs: time.Since(start).Seconds(), peakMB: peak, anonMB: anon}
			a.raw = fmt.Sprintf("%.1f MB in %.2f s, peak RSS %.0f MB, highest anonymous RSS sampled %.0f MB", a.mb, a.secs, a.peakMB, a.anonMB)
			return a, nil
		case <-tick.C:
			peak = max(peak, peakMB(cmd.Process.Pid))
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)); err == nil {
				anon = max(anon, testutil.StatusMB(b, "RssAnon"))
			}
		}
	}
}
