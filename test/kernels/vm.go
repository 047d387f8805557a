package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wantedModules are what the tests need on a Debian cloud kernel, where
// netfilter, bridge and veth are modules: NAT and filtering through both
// iptables backends, and every match and target of the lab's
// kube-proxy-shaped rules; br_netfilter, as Kubernetes nodes with a
// bridge load it (the lab's hairpin scenario needs it); the socket
// diagnostics svctrace reads Pods' listeners with. Dependencies come
// along.
var wantedModules = []string{
	"veth", "bridge", "br_netfilter",
	"nf_conntrack", "nf_conntrack_netlink", "nf_nat", "nf_tables", "nft_chain_nat", "nft_nat", "nft_compat", "nft_reject_ipv4",
	"ip_tables", "iptable_nat", "iptable_filter", "iptable_mangle",
	"xt_nat", "xt_MASQUERADE", "xt_mark", "xt_comment", "xt_conntrack", "xt_addrtype", "xt_statistic",
	"xt_tcpudp", "ipt_REJECT",
	// The lab's node is dual-stack.
	"ip6_tables", "ip6table_nat", "ip6table_filter", "ip6t_REJECT", "nft_reject_ipv6",
	// sock_diag for TCP and UDP: svctrace reads the lab's Pods'
	// listening sockets.
	"tcp_diag", "udp_diag",
	// The overlay between nodes (flannel's vxlan backend's layout): the
	// tracer follows its packets by what they carry.
	"vxlan",
}

// optionalModules are loaded where they are modules: nft_counter (every
// iptables-nft rule counts) is built into nf_tables since 5.17.
var optionalModules = []string{"nft_counter"}

// testRun is one command the VM runs, with its own output section.
type testRun struct {
	Name string // "lab iptables-nft"
	Cmd  string // shell command line
	// Lab: a run of the lab's scenarios (its tests make the matrix).
	Lab bool
}

// testRuns: what kernel-support says, the tracer's tests, and the lab's
// scenarios with each of the kernel's backends and both iptables backends.
func testRuns(k *kernel) []testRun {
	runs := []testRun{
		{Name: "kernel-support", Cmd: "/bin/svctrace kernel-support"},
		{Name: "tracer", Cmd: "/bin/tracer.test -test.v -test.count=1"},
		// A kernel without BTF, as svctrace sees it when /sys/kernel/btf is
		// empty: one line that says so, and a non-zero exit.
		{Name: "without BTF", Cmd: "unshare -m sh -c 'mount -t tmpfs none /sys/kernel/btf && " +
			"/bin/svctrace trace --addr 10.96.0.10:80 --duration 1s' > /tmp/nobtf 2>&1; rc=$?; cat /tmp/nobtf; " +
			"[ $rc -ne 0 ] && [ $(wc -l < /tmp/nobtf) -eq 1 ] && grep -q 'no BTF type information' /tmp/nobtf"},
	}
	for _, b := range k.Backends {
		for _, ipt := range []string{"iptables-nft", "iptables-legacy"} {
			runs = append(runs, testRun{Name: "lab " + b + " " + ipt, Lab: true,
				Cmd: fmt.Sprintf("SVCTRACE_BACKEND=%s PATH=/opt/%s:$PATH /bin/lab.test -test.run 'TestScenarios$' -test.v -test.count=1", b, ipt)})
		}
	}
	return runs
}

const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for m in $(cat /etc/modules.order); do
	insmod /lib/modules/$m.ko || echo "insmod $m failed" > /dev/ttyS1
done
ip link set lo up
# iptables means iptables-nft unless a run puts another backend first.
export HOME=/root TMPDIR=/tmp PATH=/bin:/sbin:/usr/bin:/usr/sbin:/opt/iptables-nft
sh /etc/tests.sh > /dev/ttyS1 2>&1
sync
poweroff -f
`

// testsScript runs each test run in its own marked section.
func testsScript(runs []testRun) string {
	var b strings.Builder
	b.WriteString("echo \"@@@ KERNEL $(uname -r)\"\n")
	for _, r := range runs {
		fmt.Fprintf(&b, "echo '@@@ BEGIN %s'\n(%s) 2>&1\necho \"@@@ END rc=$?\"\n", r.Name, r.Cmd)
	}
	return b.String()
}

// initramfs assembles the VM's root filesystem.
func initramfs(k *kernel, bins map[string]string, runs []testRun, path string) error {
	a := newArchive()
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/sbin", "/usr/bin", "/usr/sbin"} {
		a.dir(d)
	}
	a.file("/init", []byte(initScript), 0o755)
	a.file("/etc/tests.sh", []byte(testsScript(runs)), 0o644)
	if err := a.copy("/bin/busybox", "/usr/bin/busybox"); err != nil {
		return fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	for name, p := range bins {
		if err := a.copy("/bin/"+name, p); err != nil {
			return err
		}
	}
	mods, err := openModules(k.modules())
	if err != nil {
		return err
	}
	wanted := wantedModules
	for _, m := range optionalModules {
		if _, ok := mods.path[m]; ok {
			wanted = append(wanted, m)
		}
	}
	order, images, err := mods.resolve(wanted)
	if err != nil {
		return err
	}
	for _, m := range order {
		a.file("/lib/modules/"+m+".ko", images[m], 0o644)
	}
	a.file("/etc/modules.order", []byte(strings.Join(order, "\n")+"\n"), 0o644)
	if err := addIPTables(a); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := a.write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// addIPTables adds both iptables backends with their libraries and
// extensions: the tools under their Debian names (iptables-nft-save, …),
// and /opt/iptables-nft and /opt/iptables-legacy holding the plain names
// (iptables-restore, …) for one backend each, to put first in PATH.
func addIPTables(a *archive) error {
	for _, multi := range []string{"xtables-nft-multi", "xtables-legacy-multi"} {
		src := "/usr/sbin/" + multi
		if err := a.copy(src, src); err != nil {
			return fmt.Errorf("%s (apt-get install iptables): %w", src, err)
		}
		if err := addLibraries(a, src); err != nil {
			return err
		}
		backend := strings.TrimSuffix(strings.TrimPrefix(multi, "xtables-"), "-multi")
		for _, tool := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			fam, rest, _ := strings.Cut(tool, "tables")
			a.link("/usr/sbin/"+fam+"tables-"+backend+rest, multi)
			a.link("/opt/iptables-"+backend+"/"+tool, src)
		}
	}
	ext := "/usr/lib/x86_64-linux-gnu/xtables"
	entries, err := os.ReadDir(ext)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".so") {
			continue
		}
		p := ext + "/" + e.Name()
		if err := a.copy(p, p); err != nil {
			return err
		}
		if err := addLibraries(a, p); err != nil { // libm for statistic, …
			return err
		}
	}
	return nil
}

var lddRE = regexp.MustCompile(`(/\S+) \(0x`)

// addLibraries adds the shared libraries bin needs, as ldd lists them.
func addLibraries(a *archive, bin string) error {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return fmt.Errorf("ldd %s: %w", bin, err)
	}
	for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
		if err := a.copy(m[1], m[1]); err != nil {
			return err
		}
	}
	return nil
}

// kernelResult is what one kernel's VM reported.
type kernelResult struct {
	Kernel  *kernel
	Release string // uname -r inside the VM
	Dir     string
	Boot    time.Duration // QEMU start to power-off
	Runs    []*runResult
	Err     string // the VM did not finish
}

type runResult struct {
	testRun
	RC     int // -1: no end marker
	Output string
	Tests  map[string]string // go test name → PASS, FAIL, SKIP
}

func (r *kernelResult) ok() bool {
	if r.Err != "" {
		return false
	}
	for _, x := range r.Runs {
		if x.RC != 0 {
			return false
		}
	}
	return true
}

// testKernel builds k's initramfs, boots it and reads what it reported.
func testKernel(k *kernel, bins map[string]string, dir string, timeout time.Duration, logf func(string, ...any)) (*kernelResult, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	runs := testRuns(k)
	initrd := filepath.Join(dir, "initramfs.cpio.gz")
	if err := initramfs(k, bins, runs, initrd); err != nil {
		return nil, err
	}
	console, out := filepath.Join(dir, "console.log"), filepath.Join(dir, "out.txt")
	os.Remove(out)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// TCG: the host's KVM is unusable for these guests. -cx16: with it
	// Debian's QEMU 7.2 double-faults the 6.12 kernel in ~30 % of boots.
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "qemu64,-cx16", "-m", "1536", "-smp", "2",
		"-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot",
		"-serial", "file:"+console, "-serial", "file:"+out,
		"-kernel", k.vmlinuz(), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 oops=panic quiet loglevel=4")
	logf("kernel %s (%s): booting", k.Name, k.Release)
	start := time.Now()
	runErr := cmd.Run()
	r := &kernelResult{Kernel: k, Dir: dir, Boot: time.Since(start)}
	b, _ := os.ReadFile(out)
	parse(r, string(b), runs)
	switch {
	case ctx.Err() != nil:
		r.Err = fmt.Sprintf("no power-off within %s", timeout)
	case runErr != nil:
		r.Err = fmt.Sprintf("qemu: %v", runErr)
	case len(r.Runs) < len(runs) || r.Runs[len(r.Runs)-1].RC < 0:
		r.Err = "the VM stopped before all runs ended (see console.log)"
	}
	logf("kernel %s: done in %s", k.Name, r.Boot.Round(100*time.Millisecond))
	return r, nil
}

var testLineRE = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+)`)

// parse reads the VM's output: the kernel release, and per run its exit
// status, output and go test results.
func parse(r *kernelResult, out string, runs []testRun) {
	var cur *runResult
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	var buf bytes.Buffer
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.HasPrefix(line, "@@@ KERNEL "):
			r.Release = strings.TrimPrefix(line, "@@@ KERNEL ")
		case strings.HasPrefix(line, "@@@ BEGIN "):
			name := strings.TrimPrefix(line, "@@@ BEGIN ")
			cur = &runResult{RC: -1, Tests: map[string]string{}}
			for _, tr := range runs {
				if tr.Name == name {
					cur.testRun = tr
				}
			}
			r.Runs = append(r.Runs, cur)
			buf.Reset()
		case strings.HasPrefix(line, "@@@ END rc=") && cur != nil:
			cur.RC, _ = strconv.Atoi(strings.TrimPrefix(line, "@@@ END rc="))
			cur.Output = buf.String()
			cur = nil
		case cur != nil:
			buf.WriteString(line + "\n")
			// With -test.count > 1 a test reports several times: a
			// failure sticks.
			if m := testLineRE.FindStringSubmatch(line); m != nil && cur.Tests[m[2]] != "FAIL" {
				cur.Tests[m[2]] = m[1]
			}
		}
	}
	if cur != nil {
		cur.Output = buf.String()
	}
}
