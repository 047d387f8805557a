// Command kernels runs svctrace's privileged tests on the kernels clusters
// run, not only this machine's: it fetches Debian's cloud kernels 5.10
// (bullseye), 6.1 (bookworm) and 6.12 (bookworm-backports) — cached —,
// builds one
// initramfs per kernel holding busybox, the netfilter modules, both
// iptables backends and the static test binaries, boots each under QEMU
// software emulation, and reports per kernel, run and test.
//
//	go run ./test/kernels [-kernels 5.10,6.1,6.12] [-out build/kernels]
//
// `make test-kernels` runs it. It needs qemu-system-x86, busybox-static,
// xz-utils and iptables on the host (`.ci/run` installs them), network
// access to Debian's mirror the first time, and no root: the VMs are root.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	home, _ := os.UserHomeDir()
	cache := flag.String("cache", filepath.Join(home, ".cache", "svctrace", "kernels"), "where kernels are downloaded and unpacked")
	out := flag.String("out", filepath.Join("build", "kernels"), "where initramfs images, logs and the report go")
	only := flag.String("kernels", "", "comma-separated kernels to test: 6.1, 6.12 (the default: both), 5.10 (known to fail: no module BTF)")
	timeout := flag.Duration("timeout", 15*time.Minute, "per kernel: boot to power-off")
	report := flag.String("report", "", "where the Markdown report goes (default: OUT/report.md)")
	flag.Parse()
	if *report == "" {
		*report = filepath.Join(*out, "report.md")
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "test-kernels: "+format+"\n", args...)
	}
	if err := run(*cache, *out, *report, *only, *timeout, logf); err != nil {
		fmt.Fprintf(os.Stderr, "test-kernels: %v\n", err)
		os.Exit(1)
	}
}

func run(cache, out, report, only string, timeout time.Duration, logf func(string, ...any)) error {
	for _, tool := range []string{"qemu-system-x86_64", "busybox", "xz", "dpkg-deb", "apt-get"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: install qemu-system-x86, busybox-static, xz-utils (apt-get install qemu-system-x86 busybox-static xz-utils)", tool)
		}
	}
	var ks []*kernel
	for _, k := range kernels {
		if !k.OptIn {
			ks = append(ks, k)
		}
	}
	if only != "" {
		ks = nil
		for _, n := range strings.Split(only, ",") {
			for _, k := range kernels {
				if k.Name == n {
					ks = append(ks, k)
				}
			}
		}
		if len(ks) == 0 {
			return fmt.Errorf("no kernel named in %q (known: 5.10, 6.1, 6.12)", only)
		}
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	start := time.Now()
	if err := fetch(cache, ks, logf); err != nil {
		return err
	}
	logf("kernels ready in %s", time.Since(start).Round(time.Millisecond))
	bins, err := buildBinaries(filepath.Join(out, "bin"))
	if err != nil {
		return err
	}
	var results []*kernelResult
	for _, k := range ks {
		r, err := testKernel(k, bins, filepath.Join(out, k.Name), timeout, logf)
		if err != nil {
			return fmt.Errorf("kernel %s: %w", k.Name, err)
		}
		results = append(results, r)
	}
	if err := os.WriteFile(report, []byte(markdown(results)), 0o644); err != nil {
		return err
	}
	fmt.Print(summary(results))
	logf("report: %s", report)
	for _, r := range results {
		if !r.ok() {
			return fmt.Errorf("kernel %s: failures (logs in %s)", r.Kernel.Name, r.Dir)
		}
	}
	return nil
}

// buildBinaries builds the static binaries the VMs run: svctrace and the
// test binaries of the packages with privileged tests.
func buildBinaries(dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	bins := map[string]string{}
	for name, args := range map[string][]string{
		"svctrace":    {"build", "-o", "", "./cmd/svctrace"},
		"tracer.test": {"test", "-c", "-o", "", "./internal/tracer"},
		"lab.test":    {"test", "-c", "-o", "", "./internal/lab"},
	} {
		p := filepath.Join(dir, name)
		for i, a := range args {
			if a == "" && args[i-1] == "-o" {
				args[i] = p
			}
		}
		cmd := exec.Command("go", args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		bins[name] = p
	}
	return bins, nil
}
