// Command bench measures what svctrace costs and writes BENCHMARKS.md
// (make bench, as root): the data path through the lab's ClusterIP DNAT
// with and without tracing, next to tcpdump and nftables tracing; start-up;
// the event pipeline; parsing kube-proxy rulesets and object dumps at
// cluster scale. Figures, not pass/fail: the report says which targets
// hold and why the others do not.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"golang.org/x/sys/unix"
)

// section is one part of the report.
type section struct {
	title  string
	method string
	table  string // Markdown
	notes  []string
	raw    string
}

func main() {
	lab.ServeIfChild() // the lab's pod servers are this binary, started again
	out := flag.String("out", "BENCHMARKS.md", "where the report goes")
	dur := flag.Duration("duration", 3*time.Second, "each load run")
	rounds := flag.Int("rounds", 3, "rounds of the data-path configurations, interleaved")
	only := flag.String("only", "", "comma-separated sections to run (datapath,cost,startup,pipeline,scale,memory,flood); default all")
	flag.StringVar(&configsFlag, "configs", "", "comma-separated data-path configurations to run (a-e); default all")
	flag.StringVar(&workloadsFlag, "workloads", "", "comma-separated data-path workloads (keep,new,bulk); default all")
	floodSize := flag.Int("flood", 1000000, "new connections in the flood")
	k8sBin := flag.String("k8s-bin", "", "where make k8s-bins put the Kubernetes binaries (the memory section)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fail("make bench builds network namespaces and attaches BPF programs: run it as root")
	}
	for _, tool := range []string{"wrk", "tcpdump", "nft", "iptables-restore", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			fail(tool + " not found: apt-get install wrk tcpdump nftables iptables conntrack")
		}
	}
	dir, err := os.MkdirTemp("", "svctrace-bench")
	if err != nil {
		fail(err.Error())
	}
	// BENCH_KEEP=1 keeps the binary, the recordings and the CPU profiles
	// it ran with, for go tool pprof.
	defer func() {
		if os.Getenv("BENCH_KEEP") == "" {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintf(os.Stderr, "bench: kept %s\n", dir)
		}
	}()
	bin := filepath.Join(dir, "svctrace")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/svctrace").CombinedOutput(); err != nil {
		fail(fmt.Sprintf("building svctrace: %v\n%s", err, b))
	}
	// BENCH_BIN=FILE measures another build instead, for comparing two
	// versions with the same bench.
	if other := os.Getenv("BENCH_BIN"); other != "" {
		bin = other
	}
	start := time.Now()
	var secs []section
	for _, f := range []struct {
		key string
		run func() (section, error)
	}{
		{"datapath", func() (section, error) { return dataPath(bin, *dur, *rounds) }},
		{"cost", func() (section, error) { return cost(bin, dir, *dur, *rounds) }},
		{"startup", func() (section, error) { return startup(bin, dir) }},
		{"pipeline", pipeline},
		{"scale", scale},
		{"memory", func() (section, error) { return memory(bin, *k8sBin) }},
		{"flood", func() (section, error) { return flood(bin, *floodSize) }},
	} {
		if !chosen(*only, f.key) {
			continue
		}
		s, err := f.run()
		if err != nil {
			fail(err.Error())
		}
		secs = append(secs, s)
		fmt.Fprintf(os.Stderr, "bench: %s done\n", s.title)
	}
	if err := os.WriteFile(*out, []byte(report(secs, time.Since(start))), 0o644); err != nil {
		fail(err.Error())
	}
	fmt.Fprintf(os.Stderr, "bench: report in %s\n", *out)
}

// chosen reports whether key is in the comma-separated list, or list is
// empty (everything).
func chosen(list, key string) bool {
	return list == "" || slices.Contains(strings.Split(list, ","), key)
}

func fail(msg string) {
	fmt.Fprintf(os.Stderr, "bench: %s\n", msg)
	os.Exit(1)
}

func report(secs []section, took time.Duration) string {
	var b strings.Builder
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Fprintf(&b, "# svctrace benchmarks\n\nWritten by `make bench` (test/bench) on %s in %s.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Round(time.Second))
	fmt.Fprintf(&b, "Machine: Linux %s, %d CPUs, %s, %s. Figures are medians unless said otherwise.\n",
		unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), memTotal(), runtime.Version())
	b.WriteString(misses)
	for _, s := range secs {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n\n%s\n", s.title, s.method, s.table)
		for _, n := range s.notes {
			fmt.Fprintf(&b, "\n%s\n", n)
		}
		if s.raw != "" {
			fmt.Fprintf(&b, "\n<details><summary>raw output</summary>\n\n```\n%s\n```\n\n</details>\n", strings.TrimSpace(s.raw))
		}
	}
	return b.String()
}

func memTotal() string {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			var kb int
			fmt.Sscan(f[1], &kb)
			return fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
		}
	}
	return "unknown RAM"
}

// misses explains the targets this version misses, why, and what is
// planned. It is kept with the generator so every report carries it; the
// figures are in the sections below.
const misses = `
## Targets missed: causes and plans

The figures are in the sections below; this says why the missed ones are missed and what
is planned. Run-to-run noise on this 2-CPU VM is about ±8 % between identical
configurations (compare (c) and (d) across runs): differences of a few percent are within
it. The cost section's raw output ends with a CPU profile of svctrace while it traces.

- **svctrace -A** (g), new connections, target 95 %: missed; 76.7 % in this report (54 %
  before healthy connections were counted in the kernel). The kernel side now holds a
  connection's first packets until it is answered, then only counts it: in (g)'s last round
  it held 31,630 connections and handed none over; svctrace used 0.31 CPU-seconds per
  round once ready (1.65 before; (b) 1.08) and lost no events (620 in a round before).
  What is left is the observers' own work per connection: the BPF statistics put (g) at
  20.5 µs per new connection, beside 8.8 for (c)'s filter miss and 27.0 for (b). The path
  of a connection's first packet each way is still built, to be kept should it fail; its
  opening is copied into the kernel's held paths (1.5 KB) and deleted when the answer
  passes; and the 110,000-address filter costs more per lookup before conntrack (420 ns
  per call there, (c) 205). As for (b), 95 % leaves about 8 µs per new connection for all
  of it, which the observers alone take. Keep-alive (85 %) and 1 MiB responses (80 %) are
  within this run's noise of (b) (91 %, 83 %). The catalog's memory (the API objects and
  their models: 199 MB against the API server holding 10,000 Services, see Memory) is
  -A's own cost still. Plan: an informer transform that keeps only what kube-proxy reads,
  and the filter's addresses without a copy in Go.
- **New connections while tracing the Service** (b), target 95 %: not reachable with
  observers on every packet. The data-path notes give the machine's busy CPU per request:
  an untraced new connection costs the two CPUs about 150 µs in all (wrk, the pods, the
  kernel), so 95 % leaves some 8 µs for everything tracing adds. The observers alone take
  more: where no packet matches (c), the BPF statistics put them at about 9 µs per new
  connection (ten programs on each of its ten forwarded packets), and (c) stays near 85-90 %.
  (b) adds the reporting in the kernel (about 20 µs more of BPF per connection: matching,
  the packet paths, the ring buffer) and svctrace itself. It was 44.8 % in the last
  report. Reporting less cannot close it: a build whose kernel side reported nothing of
  a healthy connection but its two FINs (no SYN or SYN,ACK path: BENCH_BIN, 2026-12-06)
  measured (b) 59.9 % beside (c) 93.3 % in one run, with 16 µs of BPF and 36 µs of
  svctrace per connection. The floor is the observers themselves, ten on every packet,
  which the stage-by-stage account of where a packet died needs; (c) misses its own
  99 % target for the same reason.
- **svctrace CPU per traced connection** (target 20 µs): the cost section now counts svctrace's
  CPU up to its exit (the connections still followed when it is stopped, the end of the
  recording: the conntrack snapshot, closing), where the last report stopped counting when
  it was told to stop (71 µs then, measured that way). Side by side without -w, as the last
  report counted: 71-78 µs for that version, 41-45 µs for this one. A packet that ends a quiet run carries its counts in its own record; a connection's
  first packet each way is reported in full, not its first two (the SYN and the SYN,ACK
  carry the translations both ways; the timelines showed only those already): 4.4 records
  and 23 observations per connection, were 8.2 and 40; the kernel leaves out QUEUE_PURGE
  drops (every closed connection made one, and the first scanned /proc/kallsyms); events
  are decoded into the batch the assembler takes, by reference; a printed connection's
  memory is reused for the next; the indexes are keyed by a tuple's bytes; output goes out
  once per batch. The profile now (the cost section's raw output): assembly about a third,
  reading and decoding a sixth, printing a sixth, garbage collection a tenth. What is
  left is per connection, not per observation: creating, judging and printing a 19-step
  timeline. Plan: a healthy connection under load summarised in the kernel (its first
  packets' path kept in its tracked entry, one record when the handshake completes) and
  printed in one line, the full timeline for failures and with -v; observers attached only
  where a hook has something registered between two stages (nfnetlink_hook), the decoder
  filling in the stages in between.
- **Keep-alive while tracing, and a filter miss** (targets 95 % and 99 %; ≤ 100 ns per
  packet per hook): keep-alive while tracing is within the noise of its target (it held
  in some runs); a filter miss is not, and its floor is the observers themselves. A forwarded packet meets ten
  observers on three hooks in the node namespace. The kernel's BPF statistics (the data
  path's raw output, per program) put an empty netfilter program at about 60 ns per call
  with the statistics on, the first observer of a hook (the packet's tuple: one copy, two
  lookups) at several times that and the others near the floor. Plan: attach each stage
  observer only on the hooks where a Service's packets can reach it, and move the tuple's
  decision to the first observer of each hook only.
- **Cheaper than tcpdump** on new connections: tcpdump copies each packet once per
  interface and does nothing else with it in the kernel; svctrace reports a new
  connection's first packets at every observer and assembles them. It is cheaper on bulk
  transfers, where only the first packets are reported.
- **Reading the nftables ruleset at 10,000 Services** (target 0.3 s): svctrace lists every
  chain over netlink (110,000), and nf_tables walks its chains from the first again for
  every message of the dump (it filters a chain dump by family only). Dump messages are
  now 32 KiB, not a page (kubeproxy: largeDumps), which halved the read; what is left is that
  walk (about 0.6 s in the kernel, as long as nft list chains takes), iptables-nft-save
  reading the ip family's tables beside kube-proxy's (about 0.4 s), and mapping every
  Service's chains to its port. Plan: kube-proxy's own chains by name, from its
  service-ips and service-nodeports verdict maps and from the traced Service's chains; a
  chain dump only when another writer's table is in a family kube-proxy's is not in.
- **RSS while tracing** (target 40 MB): svctrace's own memory (anonymous: Go heap and
  stacks) is about 10 MB, the same against 10,000 Services as against one; the rest of the
  resident set is pages of the executable (about 107 MB on disk: client-go's typed clients
  register every API group) and the 8 MiB ring buffer, which the kernel maps twice. Plan: a
  client for the four kinds svctrace reads instead of the typed clientset, and a 4 MiB ring
  buffer now that a connection costs 4 or 5 records.
- **Start-up** (target 150 ms): a CPU profile over the seven runs gives about 200 ms of CPU
  per start on the two CPUs: the kernel verifying nine programs about 85 ms, parsing the
  embedded object 27 ms, creating the maps 10 ms (mostly the ring buffer), reading the
  objects and the node's rules and facts about 20 ms, netlink for links and facts about
  15 ms. The object is parsed and the kernel's BTF decoded while the objects and rules are
  read (tracer.Prepare), which hides the API server's latency on a real cluster. Plan: fewer
  programs for the kernel to verify (stages that share code share a program) and a smaller
  ring buffer.
- **Analyze** (target 100 MB/s; memory holds): analysis streams, and what it holds does not
  grow with the recording: the live heap levels off at 20-26 MB (GODEBUG=gctrace=1), the
  connections within their settle time. It reuses a printed connection's memory, conntrack
  snapshots hold at most 1000 entries, and the heap is held to 40 MiB
  (debug.SetMemoryLimit): 52 MB of anonymous memory without the limit, 38 MB with it, for
  about a fifth more time. Its CPU: JSON output a quarter, reading records a third,
  assembly and garbage collection the rest. Plan: JSON for steps written without
  reflection, and the compact steps below.
- **Event pipeline** (target 3 M events/s on one core, decode and assembly together):
  decoding runs at about 7 M events/s and assembly, reusing connections as a live trace
  does, at about 3.5 M; together about 2.3 M. Assembly builds a step of some 200 bytes for
  each observation it keeps. Plan: compact steps, formatted only when printed.
- **The flood** is bounded, not cheap (target 100 MB), and does not grow with the flood's
  size. A heap profile 15 s into a flood of 400,000 connections: 86 MB live — the steps of
  the connections followed about 36 MB (200 bytes each, room for 16 reserved per
  connection; MaxHeld bounds that room at 26 MB, plus connections reported but not yet
  printed), the assembler's index of every form a connection's tuple takes about 17 MB,
  the steps' changes 10 MB — and the Go heap may grow to twice what is live. The kernel's
  tracked map fills to its 65,536 entries and evicts the oldest, as an LRU map does; what
  the ring buffer cannot take is counted and reported as lost. Plan: compact steps, and an
  index keyed by a connection's conntrack entry rather than by each of its tuples.
`
