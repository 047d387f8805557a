package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/testutil"
	"github.com/svctrace/svctrace/internal/topo"
)

// config is one way of watching the node while the load runs.
type config struct {
	key, name string
	// start starts watching; stop ends it and says what the watcher did.
	start func() (stop func() watched, err error)
}

// workload is one wrk run through the ClusterIP.
type workload struct {
	key, name, unit string
	args            []string
	metric          *regexp.Regexp // what to read off wrk's output
}

// watched is what a watching process did: the end of what it printed on
// stdout, the CPU time it used and its peak memory (0 where nothing ran).
type watched struct {
	out    string  // its standard output's last 64 KiB
	errOut string  // its standard error's last 64 KiB
	cpu    float64 // seconds, from its start to its exit
	// cpuReady is the CPU time it had used when it said it was ready:
	// start-up (loading BTF and programs), not watching.
	cpuReady float64
	peakMB   float64 // its peak resident set
}

// configsFlag and workloadsFlag choose a subset of the data-path runs
// (-configs, -workloads), for working on one figure.
var configsFlag, workloadsFlag string

var (
	summaryRE  = regexp.MustCompile(`(?m)^\d+ connection\(s\).*$`)
	lostRE     = regexp.MustCompile(`(\d+) events lost`)
	connsRE    = regexp.MustCompile(`^(\d+) connection`)
	reqRE      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	transferRE = regexp.MustCompile(`Transfer/sec:\s+([0-9.]+)([KMG]?B)`)
)

func dataPath(bin string, dur time.Duration, rounds int) (section, error) {
	l, err := lab.Up(lab.Options{})
	if err != nil {
		return section{}, err
	}
	defer l.Down()
	if err := quickConnections(l); err != nil {
		return section{}, err
	}
	web, other := l.Scenarios[0].VIP(), l.Scenarios[3].VIP() // healthy; hung, never connected to
	node := l.Node.Spec
	// svctrace -A's objects: the lab's, and 10,000 Services of 10
	// endpoints more (in the filter, not in the node's rules).
	objects, err := os.MkdirTemp("", "svctrace-bench-all-*")
	if err != nil {
		return section{}, err
	}
	defer os.RemoveAll(objects)
	if err := allObjects(objects, manyServices, manyEndpoints); err != nil {
		return section{}, err
	}
	configs := []config{
		{"a", "no tracing", func() (func() watched, error) { return func() watched { return watched{} }, nil }},
		{"b", "svctrace tracing this Service", func() (func() watched, error) {
			return background(bin, "Ctrl-C to stop", "trace", "--netns", node, "--addr", web.String(), "--timeout", "1s")
		}},
		{"c", "svctrace tracing another Service (filter miss)", func() (func() watched, error) {
			return background(bin, "Ctrl-C to stop", "trace", "--netns", node, "--addr", other.String(), "--timeout", "1s")
		}},
		{"d", "tcpdump -i any -w /dev/null", func() (func() watched, error) {
			return background("ip", "listening on", "netns", "exec", node, "tcpdump", "-i", "any", "-w", "/dev/null")
		}},
		{"e", "nftables trace (nftrace + nft monitor trace)", func() (func() watched, error) { return nftTrace(l, web.String()) }},
		{"f", "svctrace tracing this Service, --every-packet (no event budget: overload)", func() (func() watched, error) {
			return background(bin, "Ctrl-C to stop", "trace", "--netns", node, "--addr", web.String(), "--timeout", "1s", "--every-packet")
		}},
		{"g", fmt.Sprintf("svctrace -A: every Service of %d (the lab's and %d more), %d addresses in the filter", manyServices+len(lab.Scenarios()), manyServices, manyServices*(manyEndpoints+1)), func() (func() watched, error) {
			return background(bin, "Ctrl-C to stop", "-A", "--objects", objects, "--netns", node, "--node", lab.NodeName, "--timeout", "1s", "-v")
		}},
	}
	url := "http://" + web.String()
	workloads := []workload{
		{"keep", "keep-alive requests/s", "req/s", []string{"-t1", "-c8", url + "/"}, reqRE},
		{"new", "new connections/s (Connection: close)", "req/s", []string{"-t1", "-c8", "-H", "Connection: close", url + "/"}, reqRE},
		{"bulk", "throughput, 1 MiB responses", "MB/s", []string{"-t1", "-c4", url + "/bytes/1048576"}, transferRE},
	}
	configs = slices.DeleteFunc(configs, func(c config) bool { return c.key != "a" && !chosen(configsFlag, c.key) })
	workloads = slices.DeleteFunc(workloads, func(w workload) bool { return !chosen(workloadsFlag, w.key) })
	results := map[string]map[string][]float64{}
	lost, conns := map[string]int{}, map[string]int{}
	held := map[string]string{}        // the last round's
	cpu := map[string][]float64{}      // CPU seconds of the watching process, per round
	watching := map[string][]float64{} // the same, once it said it was ready
	// The machine's busy CPU time per request, per configuration and
	// workload, per round: what a request costs everything on it.
	machine := map[string]map[string][]float64{}
	var raw strings.Builder
	// Warm up caches, conntrack and the servers.
	if len(workloads) == 0 {
		return section{}, fmt.Errorf("no workload chosen: -workloads takes keep, new, bulk")
	}
	runWrk(l, workloads[0], time.Second)
	for round := 1; round <= rounds; round++ {
		for _, c := range configs {
			stop, err := c.start()
			if err != nil {
				return section{}, fmt.Errorf("%s: %w", c.name, err)
			}
			for _, w := range workloads {
				busy := busyCPU()
				v, out, err := runWrk(l, w, dur)
				if err != nil {
					stop()
					return section{}, fmt.Errorf("%s, %s: %w", c.name, w.name, err)
				}
				if w.unit == "req/s" && v > 0 {
					if machine[c.key] == nil {
						machine[c.key] = map[string][]float64{}
					}
					machine[c.key][w.key] = append(machine[c.key][w.key], (busyCPU()-busy)/(v*dur.Seconds()))
				}
				if results[c.key] == nil {
					results[c.key] = map[string][]float64{}
				}
				results[c.key][w.key] = append(results[c.key][w.key], v)
				fmt.Fprintf(&raw, "round %d, (%s) %s, %s: %.1f %s\n%s\n", round, c.key, c.name, w.name, v, w.unit, indent(out))
			}
			w := stop()
			if w.cpu > 0 {
				cpu[c.key] = append(cpu[c.key], w.cpu)
				watching[c.key] = append(watching[c.key], w.cpu-w.cpuReady)
			}
			// -A's kernel side says (-v) what became of the connections
			// it held.
			if i := strings.Index(w.errOut, "svctrace: held "); i >= 0 {
				line, _, _ := strings.Cut(w.errOut[i:], "\n")
				fmt.Fprintf(&raw, "round %d, (%s) %s\n", round, c.key, line)
				held[c.key] = line
			}
			if sum := summaryRE.FindString(w.out); sum != "" {
				fmt.Fprintf(&raw, "round %d, (%s) svctrace's summary: %s\n", round, c.key, sum)
				if m := lostRE.FindStringSubmatch(sum); m != nil {
					n, _ := strconv.Atoi(m[1])
					lost[c.key] += n
				}
				if m := connsRE.FindStringSubmatch(sum); m != nil {
					n, _ := strconv.Atoi(m[1])
					conns[c.key] += n
				}
			}
		}
	}

	// What the observers cost, from the kernel's statistics: runs of their
	// own, keep-alive (every packet but a connection's first is a filter
	// miss or counted only) and new connections (each reported).
	costs := map[string]map[string]runCost{}
	for _, c := range configs {
		if c.key != "b" && c.key != "c" && c.key != "g" {
			continue
		}
		costs[c.key] = map[string]runCost{}
		for _, w := range workloads {
			if w.key == "bulk" {
				continue
			}
			r, err := observerCost(l, c.start, w, dur)
			if err != nil {
				return section{}, fmt.Errorf("%s, BPF statistics: %w", c.name, err)
			}
			costs[c.key][w.key] = r
			fmt.Fprintf(&raw, "(%s) with BPF statistics on, %s: %d calls of svctrace's programs, %s in them, %.0f requests; per program, ns per call × calls per request: %s\n", c.key, w.name, r.calls, r.runtime, r.requests, r.perProgram())
		}
	}

	var t strings.Builder
	t.WriteString("| | configuration |")
	for _, w := range workloads {
		fmt.Fprintf(&t, " %s | |", w.name)
	}
	t.WriteString("\n|---|---|" + strings.Repeat("---:|---:|", len(workloads)) + "\n")
	base := map[string]float64{}
	med := map[string]map[string]float64{}
	for _, c := range configs {
		med[c.key] = map[string]float64{}
		fmt.Fprintf(&t, "| (%s) | %s |", c.key, c.name)
		for _, w := range workloads {
			m := median(results[c.key][w.key])
			med[c.key][w.key] = m
			if c.key == "a" {
				base[w.key] = m
			}
			fmt.Fprintf(&t, " %.0f %s | %.1f %% |", m, w.unit, 100*m/base[w.key])
		}
		t.WriteString("\n")
	}
	s := section{title: "Data-path overhead", raw: raw.String(), table: t.String(),
		method: fmt.Sprintf("The lab (one node namespace with kube-proxy-style iptables rules, pods on a bridge, a client): wrk in the client namespace against the healthy Service's ClusterIP %s, through DNAT and masquerade to two pods. Seven configurations, each run for %s per workload, %d rounds interleaved; the table shows medians and the share of (a). (b), (c) and (f) run the svctrace binary (`svctrace trace --netns … --addr …`, output to a pipe it drains); (g) `svctrace -A --objects DIR` over the lab's objects and 10,000 generated Services of 10 endpoints each (their addresses in the filter, not in the node's rules); (d) tcpdump in the node namespace; (e) a `meta nftrace set 1` rule for the same flows at priority -350 and `nft monitor trace` reading the trace events. Each run starts with an empty conntrack table, and the pods keep no TIME_WAIT sockets.", web, dur, rounds)}
	pct := func(c, w string) float64 { return 100 * med[c][w] / base[w] }
	for _, c := range configs {
		if v := cpu[c.key]; len(v) > 0 {
			s.notes = append(s.notes, fmt.Sprintf("- (%s) the watching process used %.2f CPU-seconds (median) per round of %d workloads × %s, %.2f of them once it was ready.", c.key, median(v), len(workloads), dur, median(watching[c.key])))
		}
	}
	for _, k := range []string{"b", "f", "g"} {
		if conns[k] > 0 || lost[k] > 0 {
			s.notes = append(s.notes, fmt.Sprintf("- (%s) reported %d connections in all and lost %d events (ring buffer full).", k, conns[k], lost[k]))
		}
	}
	if h, ok := held["g"]; ok {
		s.notes = append(s.notes, fmt.Sprintf("- (g) its last round: %s.", strings.TrimPrefix(h, "svctrace: ")))
	}
	for _, k := range []string{"b", "c", "g"} {
		for _, w := range workloads {
			r, ok := costs[k][w.key]
			if !ok || r.requests == 0 {
				continue
			}
			line := fmt.Sprintf("- (%s) the kernel's BPF statistics (a separate %s run with them on): %.0f ns per observer call, %.1f calls and %.1f µs per request; a forwarded packet crosses 10 observers on 3 hooks.",
				k, w.name, r.nsPerCall(), float64(r.calls)/r.requests, float64(r.runtime.Nanoseconds())/r.requests/1e3)
			if k == "c" && w.key == "keep" {
				perHook := r.nsPerCall() * 10 / 3
				line += fmt.Sprintf(" Filter miss: about %.0f ns per packet per hook [target ≤ 100 ns: %s].", perHook, verdict(perHook <= 100))
			}
			s.notes = append(s.notes, line)
		}
	}
	for _, w := range workloads {
		var parts []string
		for _, c := range configs {
			if v := machine[c.key][w.key]; len(v) > 0 {
				parts = append(parts, fmt.Sprintf("(%s) %.0f µs", c.key, 1e6*median(v)))
			}
		}
		if len(parts) > 0 {
			s.notes = append(s.notes, fmt.Sprintf("- %s: the machine's busy CPU time (all CPUs, /proc/stat) per request: %s.", w.name, strings.Join(parts, ", ")))
		}
	}
	if _, ok := med["g"]; ok {
		for _, w := range workloads {
			target := ""
			if w.key == "new" {
				target = fmt.Sprintf(" [target ≥ 95 %%: %s]", verdict(pct("g", w.key) >= 95))
			}
			s.notes = append(s.notes, fmt.Sprintf("- %s: (g) svctrace -A %.1f %% of (a)%s, (b) tracing the one Service %.1f %%; -A's kernel side holds each connection's first packets until it is answered, then only counts it: none of these reaches svctrace as events.",
				w.name, pct("g", w.key), target, pct("b", w.key)))
		}
	}
	for _, w := range workloads {
		s.notes = append(s.notes, fmt.Sprintf("- %s: (c) %.1f %% of (a) [target ≥ 99 %%: %s]; (b) %.1f %% [target ≥ 95 %%: %s]; (b) against tcpdump %.1f %% and nftables trace %.1f %% [target: cheaper than both: %s].",
			w.name, pct("c", w.key), verdict(pct("c", w.key) >= 99), pct("b", w.key), verdict(pct("b", w.key) >= 95),
			pct("d", w.key), pct("e", w.key), verdict(med["b"][w.key] > med["d"][w.key] && med["b"][w.key] > med["e"][w.key])))
	}
	return s, nil
}

// busyCPU is the machine's busy CPU time so far, all CPUs, in seconds
// (/proc/stat: all but idle and iowait).
func busyCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	var busy float64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i != 3 && i != 4 && i < 8 { // idle, iowait; guest time is in user already
			busy += v
		}
	}
	return busy / 100 // USER_HZ
}

func verdict(ok bool) string {
	if ok {
		return "holds"
	}
	return "missed"
}

func runWrk(l *lab.Lab, w workload, dur time.Duration) (float64, string, error) {
	// Each run starts from an empty conntrack table, not the last run's
	// tens of thousands of closed entries.
	if _, err := topo.Run(l.Node, "", "conntrack", "-F"); err != nil {
		return 0, "", err
	}
	args := append([]string{"netns", "exec", l.Client.Spec, "wrk", "-d", fmt.Sprintf("%.0fs", dur.Seconds())}, w.args...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return 0, string(out), fmt.Errorf("wrk: %v: %s", err, out)
	}
	m := w.metric.FindStringSubmatch(string(out))
	if m == nil {
		return 0, string(out), fmt.Errorf("wrk printed no %s:\n%s", w.unit, out)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	if len(m) > 2 {
		v *= map[string]float64{"B": 1e-6, "KB": 1.024e-3, "MB": 1.048576, "GB": 1073.741824}[m[2]]
	}
	return v, string(out), nil
}

// background starts a command and waits until its stderr says it is ready;
// stop ends it (SIGINT, as an operator would) and waits.
func background(name, ready string, args ...string) (func() watched, error) {
	stop, _, err := started(name, ready, args...)
	return stop, err
}

// started is background that also returns the process's pid.
func started(name, ready string, args ...string) (func() watched, int, error) {
	cmd := exec.Command(name, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, 0, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, 0, err
	}
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	// Only the end is kept (the summary): a flood prints gigabytes.
	out, errOut := &tail{max: 64 << 10}, &tail{max: 64 << 10}
	copied := make(chan struct{})
	go func() { io.Copy(out, stdout); close(copied) }()
	ok := make(chan bool, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		seen := false
		for sc.Scan() {
			errOut.Write([]byte(sc.Text() + "\n"))
			if !seen && strings.Contains(sc.Text(), ready) {
				seen = true
				ok <- true
			}
		}
		if !seen {
			ok <- false
		}
	}()
	select {
	case good := <-ok:
		if !good {
			cmd.Wait()
			return nil, 0, fmt.Errorf("%s ended before %q", filepath.Base(name), ready)
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return nil, 0, fmt.Errorf("%s: no %q after 15s", filepath.Base(name), ready)
	}
	cpu0 := cpuSeconds(cmd.Process.Pid)
	return func() watched {
		cpu, peak := cpuSeconds(cmd.Process.Pid), peakMB(cmd.Process.Pid)
		cmd.Process.Signal(interrupt)
		done := make(chan struct{})
		go func() { <-copied; <-scanned; cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		// Up to its exit: what it did after being told to stop (the
		// connections still followed, the end of a recording) counts.
		if ps := cmd.ProcessState; ps != nil {
			cpu = max(cpu, (ps.UserTime() + ps.SystemTime()).Seconds())
		}
		return watched{out: string(out.b), errOut: string(errOut.b), cpu: cpu, cpuReady: cpu0, peakMB: peak}
	}, cmd.Process.Pid, nil
}

// tail is a writer that keeps the last max bytes written to it.
type tail struct {
	max int
	b   []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// nftTrace marks the flows to vip for nftables tracing and reads the trace
// events, as an operator would debug with nft.
func nftTrace(l *lab.Lab, vip string) (func() watched, error) {
	host, port, _ := strings.Cut(vip, ":")
	rules := fmt.Sprintf("table inet svctrace_bench {\n chain pre {\n  type filter hook prerouting priority -350; policy accept;\n  ip daddr %s tcp dport %s meta nftrace set 1\n }\n}\n", host, port)
	if _, err := topo.Run(l.Node, rules, "nft", "-f", "-"); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", l.Node.Spec, "nft", "monitor", "trace")
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	time.Sleep(300 * time.Millisecond) // nft subscribes to the trace events
	return func() watched {
		cancel()
		cmd.Wait()
		topo.Run(l.Node, "", "nft", "delete", "table", "inet", "svctrace_bench")
		return watched{}
	}, nil
}

// peakMB is the peak resident set of a process so far, its VmHWM. Not
// getrusage's ru_maxrss: that keeps the high-water mark of the memory the
// process had before it called exec, which for a child of a Go program
// is the parent's.
func peakMB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	return testutil.StatusMB(b, "VmHWM")
}

// cpuSeconds is the user and system CPU time a process has used so far.
func cpuSeconds(pid int) float64 {
	if ns, ok := testutil.RunNanos(pid); ok {
		return ns / 1e9
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // clock ticks: USER_HZ is 100 on Linux
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n    ")
}

// The size of svctrace -A's catalog in the data-path run (g).
const manyServices, manyEndpoints = 10000, 10

// allObjects writes into dir the lab's objects and services generated
// Services of perService endpoints each, as svctrace -A --objects reads
// them (a directory of YAML files).
func allObjects(dir string, services, perService int) error {
	b, err := lab.ObjectsYAML()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "lab.yaml"), b, 0o644); err != nil {
		return err
	}
	// Their ClusterIPs in 10.97/16, apart from the lab's 10.96.0.x.
	_, objs := generated(services, perService, 97)
	if b, err = yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "generated.yaml"), b, 0o644)
}
