package main

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

var metricRE = regexp.MustCompile(`([0-9.]+) ([A-Za-z-]+)`)

// memory: svctrace SERVICE against a real API server (test/cluster) that
// holds one traced Service, then 10,000 more with 100,000 endpoints. The
// measurement is a Go benchmark in test/e2e, where the cluster lives; this
// runs it once and reads its metrics.
func memory(bin, k8sBin string) (section, error) {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^BenchmarkTraceAgainstAPIAtScale$", "-benchtime", "1x", "-v", "./test/e2e")
	cmd.Env = append(os.Environ(), "SVCTRACE_K8S_BIN="+k8sBin, "SVCTRACE_REQUIRE_E2E=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return section{}, fmt.Errorf("go test -bench BenchmarkTraceAgainstAPIAtScale: %v\n%s", err, out)
	}
	m := map[string]float64{}
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "BenchmarkTraceAgainstAPIAtScale") {
			continue
		}
		for _, f := range metricRE.FindAllStringSubmatch(l, -1) {
			m[f[2]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	if m["MB-RSS-large-API"] == 0 {
		return section{}, fmt.Errorf("the benchmark reported no memory:\n%s", out)
	}
	var t strings.Builder
	t.WriteString("| the API server holds | RSS while tracing | of which svctrace's own (anonymous) | peak RSS (start-up) | exec → tracing |\n|---|---:|---:|---:|---:|\n")
	for _, size := range []struct{ key, what string }{
		{"small", "the traced Service alone"},
		{"large", fmt.Sprintf("%.0f Services, %.0f endpoints", m["Services"], m["endpoints"])},
		{"all-large", fmt.Sprintf("the same, svctrace -A: every Service watched and its %.0f addresses traced", m["Services"]+m["endpoints"])},
	} {
		fmt.Fprintf(&t, "| %s | %.0f MB | %.0f MB | %.0f MB | %.0f ms |\n", size.what,
			m["MB-RSS-"+size.key+"-API"], m["MB-anon-"+size.key+"-API"], m["MB-peak-RSS-"+size.key+"-API"], 1000*m["s-to-tracing-"+size.key+"-API"])
	}
	rss := m["MB-RSS-large-API"]
	return section{title: "Memory against a large API server",
		method: "The real-cluster test bed (etcd, kube-apiserver, kube-controller-manager and kube-proxy in iptables mode, in namespaces): `svctrace web -n shop --kubeconfig …` on the node while the client makes 20 connections, first with the API server holding only that Service and its two pods, then again (and `svctrace -A`) after 10,000 Services with an EndpointSlice of 10 ready endpoints each were created in 100 namespaces. Those carry kube-proxy's service-proxy-name label, so the node's ruleset stays small; parsing rulesets of that size is measured under Scale. RSS is read from /proc while tracing, after 19 of the 20 connections; the peak is the process's high-water mark (VmHWM), reached while loading.",
		table:  t.String(),
		notes: []string{
			fmt.Sprintf("svctrace -A against that API server (`svctrace -A --all-verdicts`, the same 20 connections): it lists every Service and EndpointSlice once and then watches them (informers, each object kept without managed fields and annotations), and its filter holds every ClusterIP and endpoint. What the Services themselves need is the difference in svctrace's own memory: %.0f MB (%.0f MB with -A, %.0f MB for one Service); exec → tracing %.1f s, listing included.",
				m["MB-anon-all-large-API"]-m["MB-anon-large-API"], m["MB-anon-all-large-API"], m["MB-anon-large-API"], m["s-to-tracing-all-large-API"]),
			fmt.Sprintf("svctrace -A while that cluster churns: 20 of its EndpointSlices a second change (an endpoint's readiness flips) for 20 s, and svctrace -A takes each change up (its catalog, its filter, its index): %.1f %% of a core (its threads' schedstat, over those 20 s).",
				m["pct-core-all-churn"]),
			fmt.Sprintf("svctrace check -A against that API server: %.1f s from exec to exit, %.0f Service(s) with a problem. It lists every Pod once and reads each Node, namespace, namespace's NetworkPolicies and the admin policies once (resolve.Listed); asking per Service, as before, takes about 15 requests for each of these Services (one per endpoint of a selector-less Service, its namespace, the namespace's NetworkPolicies, the two admin policy kinds, the node): ~150,000 requests, some 50 minutes at its 50 requests a second (worked out from the reads, not run).",
				m["s-check-all-large-API"], m["check-all-lines"]),
			fmt.Sprintf("Targets ≤ 40 MB while tracing: %s (%.0f MB); svctrace's own memory (anonymous) ≤ 12 MB at 1 and at 10,000 Services: %s (%.0f and %.0f MB). svctrace asks the API server for its Service's objects by name, label and field selector, so its memory does not grow with the cluster. Of the resident set, only the anonymous part is svctrace's own memory (Go heap, stacks); the rest is pages of the %.0f MB executable that ran (client-go's API types; shared, reclaimable page cache) and the 8 MiB ring buffer, which the kernel maps twice so a record never wraps and /proc counts twice. After the BPF programs are loaded svctrace returns the decoded kernel BTF to the system; the peak is that load.", verdict(rss <= 40 && m["MB-RSS-small-API"] <= 40), rss, verdict(m["MB-anon-small-API"] <= 12 && m["MB-anon-large-API"] <= 12), m["MB-anon-small-API"], m["MB-anon-large-API"], exeMB(bin)),
		},
		raw: string(out)}, nil
}

// exeMB is the size of the executable, in MB.
func exeMB(bin string) float64 {
	st, err := os.Stat(bin)
	if err != nil {
		return 0
	}
	return float64(st.Size()) / 1e6
}
