package main

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// scenarios lists the lab's scenario tests that the runs report, in the
// order of their first appearance.
func scenarios(rs []*kernelResult) []string {
	var names []string
	seen := map[string]bool{}
	for _, r := range rs {
		for _, run := range r.Runs {
			if !run.Lab {
				continue
			}
			var ns []string
			for n := range run.Tests {
				if strings.HasPrefix(n, "TestScenarios/") && !seen[n] {
					ns = append(ns, n)
					seen[n] = true
				}
			}
			sort.Strings(ns)
			names = append(names, ns...)
		}
	}
	return names
}

var marks = map[string]string{"PASS": "✓", "FAIL": "✗", "SKIP": "skip", "": "–"}

// markdown is the report: per kernel, each run's status, and the matrix of
// lab runs × scenarios.
func markdown(rs []*kernelResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# svctrace on other kernels\n\nProduced by `make test-kernels` (test/kernels) on %s: Debian's cloud kernels booted under\n"+
		"QEMU software emulation (`-cpu qemu64,-cx16`), each running the tracer's privileged tests, svctrace on a kernel\n"+
		"without BTF, and the lab's scenarios with every backend the kernel has and both iptables backends.\n"+
		"The project's own machines (Linux 6.18: netfilter-link only, kprobes compiled out, fentry refused) run the\n"+
		"same lab test in `make test`.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString("| kernel | release | run | result |\n|---|---|---|---|\n")
	for _, r := range rs {
		if r.Err != "" {
			fmt.Fprintf(&b, "| %s | %s | (VM) | ✗ %s |\n", r.Kernel.Name, r.Kernel.Release, r.Err)
		}
		for _, run := range r.Runs {
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Kernel.Name, r.Release, run.Name, runStatus(run))
		}
	}
	sc := scenarios(rs)
	if len(sc) == 0 {
		return b.String()
	}
	b.WriteString("\nLab scenarios, per backend and iptables backend: ✓ is the scenario's verdict, translated endpoint,\n" +
		"drop hook, diagnosis and blame, all as expected (internal/lab TestScenarios).\n\n| kernel | run |")
	for _, s := range sc {
		fmt.Fprintf(&b, " %s |", strings.TrimPrefix(s, "TestScenarios/"))
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---|", len(sc)) + "\n")
	for _, r := range rs {
		for _, run := range r.Runs {
			if !run.Lab {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s |", r.Kernel.Name, strings.TrimPrefix(run.Name, "lab "))
			for _, s := range sc {
				fmt.Fprintf(&b, " %s |", marks[run.Tests[s]])
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

func runStatus(run *runResult) string {
	switch {
	case run.RC < 0:
		return "✗ did not finish"
	case run.RC != 0:
		var failed []string
		for n, st := range run.Tests {
			if st == "FAIL" {
				failed = append(failed, n)
			}
		}
		sort.Strings(failed)
		return fmt.Sprintf("✗ exit %d %s", run.RC, strings.Join(failed, ", "))
	}
	pass, skip := 0, 0
	for _, st := range run.Tests {
		switch st {
		case "PASS":
			pass++
		case "SKIP":
			skip++
		}
	}
	if pass+skip == 0 {
		return "✓"
	}
	return fmt.Sprintf("✓ %d passed, %d skipped", pass, skip)
}

// summary is what the command prints: one line per kernel and run, and the
// output of what failed.
func summary(rs []*kernelResult) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "kernel %s (%s): %s in QEMU\n", r.Kernel.Name, r.Release, r.Boot.Round(100*time.Millisecond))
		if r.Err != "" {
			fmt.Fprintf(&b, "  ✗ %s\n", r.Err)
		}
		for _, run := range r.Runs {
			fmt.Fprintf(&b, "  %-22s %s\n", run.Name, runStatus(run))
			if run.RC != 0 || run.Name == "kernel-support" {
				for _, l := range strings.Split(strings.TrimSpace(run.Output), "\n") {
					fmt.Fprintf(&b, "      %s\n", l)
				}
			}
		}
	}
	return b.String()
}
