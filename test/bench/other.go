package main

import (
	"bufio"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/resolve"
)

var interrupt = os.Interrupt

var attachedRE = regexp.MustCompile(`attached in ([0-9.]+)(ms|µs|s)`)

// startup: svctrace SERVICE with objects from a file, from exec to the
// line that says tracing has begun (observers attached, filter loaded).
func startup(bin, dir string) (section, error) {
	l, err := lab.Up(lab.Options{})
	if err != nil {
		return section{}, err
	}
	defer l.Down()
	objects := filepath.Join(dir, "objects.yaml")
	b, err := lab.ObjectsYAML()
	if err != nil {
		return section{}, err
	}
	if err := os.WriteFile(objects, b, 0o644); err != nil {
		return section{}, err
	}
	var total, attach []float64
	var raw strings.Builder
	for range 7 {
		start := time.Now()
		cmd := exec.Command(bin, "web", "-n", lab.Namespace, "--objects", objects, "--netns", l.Node.Spec, "--node", lab.NodeName, "--duration", "100ms", "-v")
		stderr, err := cmd.StderrPipe()
		if err != nil {
			return section{}, err
		}
		cmd.Stdout = nil
		if err := cmd.Start(); err != nil {
			return section{}, err
		}
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			raw.WriteString(line + "\n")
			if m := attachedRE.FindStringSubmatch(line); m != nil {
				v, _ := strconv.ParseFloat(m[1], 64)
				attach = append(attach, v*map[string]float64{"ms": 1, "µs": 1e-3, "s": 1e3}[m[2]])
			}
			if strings.Contains(line, "Ctrl-C to stop") {
				total = append(total, float64(time.Since(start).Microseconds())/1e3)
			}
		}
		if err := cmd.Wait(); err != nil {
			return section{}, fmt.Errorf("svctrace: %v\n%s", err, raw.String())
		}
	}
	m := median(total)
	return section{title: "Start-up",
		method: "`svctrace web -n lab --objects FILE --netns <lab node> -v` (objects from a file: no API latency), 7 runs: from exec to the line that says tracing has begun, and the attach time the command itself reports (BTF, program load with CO-RE, 42 netfilter links, the kfree_skb tracepoint, the filter).",
		table: fmt.Sprintf("| | median | min | max |\n|---|---:|---:|---:|\n| exec → tracing | %.0f ms | %.0f ms | %.0f ms |\n| attach (reported by svctrace -v) | %.0f ms | %.0f ms | %.0f ms |\n",
			m, minOf(total), maxOf(total), median(attach), minOf(attach), maxOf(attach)),
		notes: []string{fmt.Sprintf("Target ≤ 150 ms: %s.", verdict(m <= 150))},
		raw:   raw.String()}, nil
}

var benchRE = regexp.MustCompile(`(?m)^(Benchmark\S+)\s+\d+\s+([0-9.]+) ns/op(.*)$`)

// pipeline: decoding and assembling events on one core, Go benchmarks.
func pipeline() (section, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^(BenchmarkDecode|BenchmarkAssemble)$", "-benchtime", "2s", "-cpu", "1",
		"./internal/tracer", "./internal/flow")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return section{}, fmt.Errorf("go test -bench: %v\n%s", err, out)
	}
	var t strings.Builder
	t.WriteString("| benchmark | ns/event | events/s on one core | allocations |\n|---|---:|---:|---|\n")
	var notes []string
	var perEventSum float64 // ns: decoding and assembling one event
	for _, m := range benchRE.FindAllStringSubmatch(string(out), -1) {
		ns, _ := strconv.ParseFloat(m[2], 64)
		perEvent := ns
		rate := 1e9 / ns
		if strings.HasPrefix(m[1], "BenchmarkAssemble") {
			// One op is a replay of the whole lab recording; its events/s
			// metric says how many.
			if e := regexp.MustCompile(`([0-9.e+]+) events/s`).FindStringSubmatch(m[3]); e != nil {
				rate, _ = strconv.ParseFloat(e[1], 64)
				perEvent = 1e9 / rate
			}
		}
		perEventSum += perEvent
		allocs := strings.TrimSpace(regexp.MustCompile(`[0-9.e+]+ events/s`).ReplaceAllString(m[3], ""))
		fmt.Fprintf(&t, "| %s | %.0f | %.2f M | %s |\n", m[1], perEvent, rate/1e6, allocs)
		if strings.HasPrefix(m[1], "BenchmarkAssemble") {
			notes = append(notes, fmt.Sprintf("Target ≥ 1 M events/s through assembly on one core: %s (%.2f M).", verdict(rate >= 1e6), rate/1e6))
		}
	}
	if perEventSum > 0 {
		fmt.Fprintf(&t, "| decode + assemble | %.0f | %.2f M | |\n", perEventSum, 1e3/perEventSum)
		notes = append(notes, fmt.Sprintf("Target ≥ 3 M events/s decoded and assembled on one core: %s (%.2f M).", verdict(1e3/perEventSum >= 3), 1e3/perEventSum))
	}
	notes = append(notes, "Under overload the kernel counts the events that did not fit in the ring buffer; text and JSON output report them with every connection and in the summary (tested in internal/output). Configuration (f) of the data path is the overload: svctrace without its event budget, with the events it lost.")
	return section{title: "Event pipeline",
		method: "`go test -bench 'BenchmarkDecode|BenchmarkAssemble' -cpu 1`: decoding one raw ring-buffer record into an Event, and assembling the lab's recorded events into connections (every round on new client ports, so every round makes new connections).",
		table:  t.String(), notes: notes, raw: string(out)}, nil
}

// scale: kube-proxy's rules and an object dump for 10,000 Services and
// 100,000 endpoints.
func scale() (section, error) {
	const services, perService = 10000, 10
	sps, objs := generated(services, perService, 96)
	rules := kubeproxy.IPTablesRestore(sps, kubeproxy.Options{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")})
	var parse []float64
	var r *kubeproxy.Ruleset
	for range 3 {
		runtime.GC()
		start := time.Now()
		r = &kubeproxy.Ruleset{}
		if err := kubeproxy.ParseIPTablesSave(r, rules); err != nil {
			return section{}, err
		}
		parse = append(parse, time.Since(start).Seconds())
	}
	dump, err := yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": objs})
	if err != nil {
		return section{}, err
	}
	f, err := os.CreateTemp("", "svctrace-bench-objects-*.yaml")
	if err != nil {
		return section{}, err
	}
	defer os.Remove(f.Name())
	f.Write(dump)
	f.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	o, err := resolve.ReadObjects(f.Name())
	if err != nil {
		return section{}, err
	}
	read := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	held := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	m := median(parse)
	nftLoad, nftReads, nftPorts, err := nftScale(sps)
	if err != nil {
		return section{}, fmt.Errorf("nftables at scale: %w", err)
	}
	nm := median(nftReads)
	return section{title: "Scale",
		method: fmt.Sprintf("Generated: %d Services of %d endpoints each (%d endpoints), as kube-proxy's iptables mode lays them out (%d lines of iptables-save, %.1f MB), as its nftables mode does (the service-ips map, a service chain and an endpoint chain each, %d chains, loaded with `nft -f` into a namespace and read over netlink as `svctrace SERVICE` reads it: every chain and map, and one Service's rules), and as an object dump (Services and EndpointSlices, %.1f MB of YAML).",
			services, perService, services*perService, strings.Count(rules, "\n"), float64(len(rules))/1e6, services*(perService+1), float64(len(dump))/1e6),
		table: fmt.Sprintf("| | figure | target |\n|---|---:|---|\n| parse the iptables-save text (median of 3) | %.2f s | ≤ 0.5 s: %s |\n| Service ports found | %d | |\n| read the nftables ruleset over netlink (median of 3) | %.2f s | ≤ 0.3 s: %s |\n| Service ports found | %d | |\n| (loading it with nft -f, for scale) | %.1f s | |\n| read the object dump (--objects) | %.2f s | |\n| heap holding those objects | %.0f MB | |\n",
			m, verdict(m <= 0.5), len(r.Ports), nm, verdict(nm <= 0.3), nftPorts, nftLoad.Seconds(), read.Seconds(), held),
		notes: []string{fmt.Sprintf("%d Services and %d EndpointSlices read. svctrace SERVICE against the API does not hold them: it lists by name, label and field selector and watches narrowly, so its memory does not grow with the cluster (see Memory against a large API server).", len(o.Services), len(o.Slices))}}, nil
}

func minOf(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	m := v[0]
	for _, x := range v {
		m = min(m, x)
	}
	return m
}

func maxOf(v []float64) float64 {
	m := 0.0
	for _, x := range v {
		m = max(m, x)
	}
	return m
}

// generated is services Services of perService endpoints each, spread
// over 100 namespaces (ClusterIPs 10.VIPNET.0.0/16, endpoints
// 10.200-249.x.x): as kube-proxy's ServicePorts, and as objects for a dump.
func generated(services, perService int, vipNet byte) ([]kubeproxy.ServicePort, []any) {
	var sps []kubeproxy.ServicePort
	objs := []any{}
	for i := range services {
		vip := netip.AddrFrom4([4]byte{10, vipNet, byte(i >> 8), byte(i)})
		sp := kubeproxy.ServicePort{Namespace: "ns" + strconv.Itoa(i%100), Name: "svc" + strconv.Itoa(i), PortName: "http", Protocol: "tcp", ClusterIP: vip, Port: 80}
		name, proto, port := "http", corev1.ProtocolTCP, int32(8080)
		sl := discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{Kind: "EndpointSlice", APIVersion: "discovery.k8s.io/v1"},
			ObjectMeta:  metav1.ObjectMeta{Namespace: sp.Namespace, Name: sp.Name + "-abcde", Labels: map[string]string{discoveryv1.LabelServiceName: sp.Name}},
			AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}}}
		for j := range perService {
			ep := netip.AddrFrom4([4]byte{10, byte(200 + j%50), byte(i >> 8), byte(i)})
			sp.Endpoints = append(sp.Endpoints, netip.AddrPortFrom(ep, 8080))
			ready := true
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{ep.String()}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
		}
		sps = append(sps, sp)
		objs = append(objs, corev1.Service{TypeMeta: metav1.TypeMeta{Kind: "Service", APIVersion: "v1"},
			ObjectMeta: metav1.ObjectMeta{Namespace: sp.Namespace, Name: sp.Name},
			Spec: corev1.ServiceSpec{ClusterIP: vip.String(), Selector: map[string]string{"app": sp.Name},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}, sl)
	}
	return sps, objs
}
