package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// kernel is one kernel to test: a Debian cloud kernel from a suite.
type kernel struct {
	Name  string // "6.1"
	Suite string // the Debian suite whose linux-image-cloud-amd64 it is
	// Backends are the tracer backends the lab runs with on this kernel.
	Backends []string
	// OptIn: run only when named (-kernels): known not to pass yet.
	OptIn bool
	// Release is the kernel release (uname -r), Root where its package is
	// unpacked (boot/vmlinuz-<release>, lib/modules/<release>).
	Release, Root string
}

func (k *kernel) vmlinuz() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Release) }
func (k *kernel) modules() string { return filepath.Join(k.Root, "lib", "modules", k.Release) }

// kernels are the kernels of `make test-kernels`: Debian 12's own and the
// one from its backports; Debian 11's 5.10 on request. 5.10 has no module
// BTF (CONFIG_DEBUG_INFO_BTF_MODULES came in 5.11): fentry cannot reach the
// netfilter modules' functions, and the kprobe backend follows conntrack
// and NAT but cannot read the tables' priorities, so drops in the filter
// table are not placed.
var kernels = []*kernel{
	{Name: "5.10", Suite: "bullseye", Backends: []string{"kprobe"}, OptIn: true},
	{Name: "6.1", Suite: "bookworm", Backends: []string{"fentry", "kprobe"}},
	{Name: "6.12", Suite: "bookworm-backports", Backends: []string{"netfilter-link", "fentry", "kprobe"}},
}

// apt runs apt-get or apt-cache with a private configuration under dir:
// its own sources (the suites above, from Debian's mirror) and lists, so
// the host's apt setup is neither needed nor changed.
type apt struct{ dir string }

func (a apt) setup() error {
	for _, d := range []string{"lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	var b strings.Builder
	for _, suite := range []string{"bullseye", "bookworm", "bookworm-backports"} {
		fmt.Fprintf(&b, "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n", mirror(), suite)
	}
	return os.WriteFile(filepath.Join(a.dir, "sources.list"), []byte(b.String()), 0o644)
}

// mirror is $DEBIAN_MIRROR, else Debian's.
func mirror() string {
	if m := os.Getenv("DEBIAN_MIRROR"); m != "" {
		return m
	}
	return "http://deb.debian.org/debian"
}

func (a apt) run(tool string, args ...string) (string, error) {
	opts := []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Sandbox::User=root",
	}
	cmd := exec.Command(tool, append(opts, args...)...)
	cmd.Dir = a.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %v: %s", tool, strings.Join(args, " "), err, lastLine(errb.String()))
	}
	return out.String(), nil
}

// fetch resolves each kernel's package in its suite and unpacks it under
// cache, unless that release is there already. Without network it uses
// what the cache holds.
func fetch(cache string, ks []*kernel, logf func(string, ...any)) error {
	a := apt{dir: filepath.Join(cache, "apt")}
	if err := a.setup(); err != nil {
		return err
	}
	_, updateErr := a.run("apt-get", "update")
	for _, k := range ks {
		pkg := ""
		if updateErr == nil {
			out, err := a.run("apt-cache", "depends", "linux-image-cloud-amd64/"+k.Suite)
			if err != nil {
				return err
			}
			for _, l := range strings.Split(out, "\n") {
				if p, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: linux-image-"); ok {
					pkg = "linux-image-" + p
				}
			}
		}
		if pkg == "" {
			// Offline: the newest release of this kernel in the cache.
			if err := cached(cache, k); err != nil {
				return fmt.Errorf("kernel %s: %v, and none is cached (apt: %v)", k.Name, err, updateErr)
			}
			logf("kernel %s: offline, using cached %s", k.Name, k.Release)
			continue
		}
		k.Release = strings.TrimSuffix(strings.TrimPrefix(pkg, "linux-image-"), "-unsigned")
		k.Root = filepath.Join(cache, k.Release)
		if _, err := os.Stat(k.vmlinuz()); err == nil {
			continue
		}
		logf("kernel %s: downloading %s from %s", k.Name, pkg, k.Suite)
		if _, err := a.run("apt-get", "download", pkg+"/"+k.Suite); err != nil {
			return err
		}
		debs, _ := filepath.Glob(filepath.Join(a.dir, pkg+"_*.deb"))
		if len(debs) == 0 {
			return fmt.Errorf("apt-get download %s left no .deb in %s", pkg, a.dir)
		}
		tmp := k.Root + ".tmp"
		os.RemoveAll(tmp)
		if out, err := exec.Command("dpkg-deb", "-x", debs[0], tmp).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %v: %s", debs[0], err, out)
		}
		if err := os.Rename(tmp, k.Root); err != nil {
			return err
		}
		for _, d := range debs {
			os.Remove(d)
		}
	}
	return nil
}

// cached finds an unpacked release of k's series in cache.
func cached(cache string, k *kernel) error {
	dirs, _ := filepath.Glob(filepath.Join(cache, k.Name+".*-cloud-amd64"))
	for i := len(dirs) - 1; i >= 0; i-- {
		rel := filepath.Base(dirs[i])
		if _, err := os.Stat(filepath.Join(dirs[i], "boot", "vmlinuz-"+rel)); err == nil {
			k.Release, k.Root = rel, dirs[i]
			return nil
		}
	}
	return fmt.Errorf("not downloadable")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
