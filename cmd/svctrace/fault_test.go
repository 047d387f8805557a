package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/testutil"
)

// ran is how svctrace, run as its own process, ended.
type ran struct {
	code           int
	stdout, stderr string
}

// svctrace runs this test binary as svctrace (TestMain) in dir, with args;
// cred, if set, runs it as another user.
func svctrace(t *testing.T, dir string, cred *syscall.Credential, args ...string) ran {
	t.Helper()
	bin := os.Args[0]
	if cred != nil {
		bin = executableByAll(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SVCTRACE_TEST_MAIN=1", "KUBECONFIG=", "HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := ran{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running svctrace %v: %v", args, err)
	}
	return r
}

// openDir is a directory every user can read, removed when the test ends
// (not t.TempDir: its parent is closed to other users).
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "svctrace-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	return dir
}

// executableByAll is a copy of this test binary that any user can run.
func executableByAll(t *testing.T) string {
	t.Helper()
	dir := openDir(t)
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "svctrace")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// machine is what a run must leave as it found it: BPF links, network
// namespaces, the host's nftables ruleset.
type machine struct {
	links   map[string]bool
	netns   []string
	ruleset string
}

func snapshot(t *testing.T) machine {
	t.Helper()
	m := machine{links: map[string]bool{}}
	for id := range testutil.Links(t) {
		m.links[fmt.Sprint(id)] = true
	}
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		m.netns = append(m.netns, e.Name())
	}
	if out, err := exec.Command("nft", "list", "ruleset").Output(); err == nil {
		m.ruleset = string(out)
	}
	return m
}

func (m machine) diff(after machine) string {
	var d []string
	for id := range after.links {
		if !m.links[id] {
			d = append(d, "BPF link "+id)
		}
	}
	for _, n := range after.netns {
		if !slices.Contains(m.netns, n) {
			d = append(d, "network namespace "+n)
		}
	}
	if after.ruleset != m.ruleset {
		d = append(d, "a change to the nftables ruleset")
	}
	return strings.Join(d, ", ")
}

// writeFiles makes the files the bad-input cases read, in a directory
// anyone can read.
func writeFiles(t *testing.T) string {
	t.Helper()
	dir := openDir(t)
	garbage := make([]byte, 1<<20)
	rand.Read(garbage)
	files := map[string][]byte{
		"p.txt":       []byte("data\n"),
		"garbage.bin": garbage,
		"empty.yaml":  nil,
		"unreachable.kubeconfig": []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
users: [{name: u, user: {token: x}}]
`),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeObjects(t, filepath.Join(dir, "dump.yaml"))
	os.Mkdir(filepath.Join(dir, "a-directory"), 0o755)
	// A recording, one with a flipped bit, and one cut short.
	good := filepath.Join(dir, "good.svctrace")
	w, err := record.Create(good, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Begin(record.Meta{Mode: "trace", Timeout: time.Second, Targets: []nf.Target{{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP}}})
	for i := range 20 {
		w.Tick(uint64(i + 1))
	}
	if err := w.Close(record.End{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(b)
	bad[len(bad)-50] ^= 0x10 // in the last tick
	os.WriteFile(filepath.Join(dir, "corrupt.svctrace"), bad, 0o644)
	os.WriteFile(filepath.Join(dir, "cut.svctrace"), b[:len(b)-11], 0o644)
	return dir
}

// Bad input, refused: exit 1 and one line on stderr that says what to do
// next, never a stack trace; no file harmed, nothing left attached or
// created. Also as a user who is not root.
func TestFaultBattery(t *testing.T) {
	testutil.RequireRoot(t)
	dir := writeFiles(t)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, tc := range []struct {
		args []string
		as   *syscall.Credential
		code int
		want string // in the one line on stderr; "" : no line expected
	}{
		// -w never harms a file: failing before tracing leaves it as it was.
		{args: []string{"trace", "--netns", "/nonexistent", "--addr", "10.96.0.10:80", "-w", "p.txt"}, code: 1, want: "/nonexistent"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "--max-size", "1", "-w", "p.txt"}, code: 1, want: "--max-size 1 is too small"},
		{args: []string{"web", "-n", "lab", "--objects", "dump.yaml", "-w", "dump.yaml"}, code: 1, want: "-w dump.yaml would overwrite dump.yaml, which this run reads"},
		{args: []string{"web", "-n", "lab", "--objects", ".", "-w", "p.txt"}, code: 1, want: "which this run reads"},
		{args: []string{"web", "-n", "lab", "--kubeconfig", "p.txt", "-w", "p.txt"}, code: 1, want: "which this run reads"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "-w", "a-directory"}, code: 1, want: "-w a-directory is a directory"},
		// Failing after the recording was prepared, before tracing: its
		// temporary file goes too.
		{args: []string{"web", "-n", "lab", "--objects", "dump.yaml", "--probe", "--from", "pod/nobody", "-w", "p.txt"}, code: 1, want: "pod lab/nobody not found"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "--snaplen", "9"}, code: 1, want: "give one with -w FILE"},
		// Objects and credentials.
		{args: []string{"check", "nosuch", "-n", "lab", "--objects", "dump.yaml"}, code: 1, want: `service "nosuch" not found in namespace "lab"`},
		{args: []string{"check", "web", "-n", "shop", "--objects", "dump.yaml"}, code: 1, want: "add -n lab"},
		{args: []string{"check", "web", "--kubeconfig", "unreachable.kubeconfig"}, code: 1, want: "cannot reach the Kubernetes API at https://127.0.0.1:1"},
		{args: []string{"check", "web", "--kubeconfig", "garbage.bin"}, code: 1, want: "is not a kubeconfig file"},
		{args: []string{"check", "web", "--kubeconfig", "/nonexistent/kubeconfig"}, code: 1, want: "kubeconfig"},
		{args: []string{"check", "web", "--objects", "garbage.bin"}, code: 1, want: "not YAML or JSON: binary data"},
		{args: []string{"check", "web", "--objects", "empty.yaml"}, code: 1, want: "empty: no object in it"},
		{args: []string{"check", "web", "--objects", "/dev/zero"}, code: 1, want: "not YAML or JSON: binary data at byte 0"},
		{args: []string{"check", "web", "--objects", "/nonexistent.yaml"}, code: 1, want: "--objects"},
		{args: []string{"check", "web", "-n", "lab", "--objects", "dump.yaml", "--as", "alice"}, code: 1, want: "--objects reads saved objects: it does not go with --as"},
		{args: []string{"check", "web", "--server", "https://127.0.0.1:1", "--request-timeout", "soon"}, code: 1, want: `--request-timeout "soon": want a duration`},
		// Flags.
		{args: []string{"trace", "--addr", "web:80"}, code: 1, want: "want IP:PORT"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "--netns", "no-such-ns"}, code: 1, want: `network namespace "no-such-ns" not found`},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "--duration", "-1s"}, code: 1, want: "must not be negative"},
		{args: []string{"web", "-n", "lab", "--objects", "dump.yaml", "--count", "-1"}, code: 1, want: "must not be negative"},
		{args: []string{"lab", "--timeout", "-1s"}, code: 1, want: "--timeout must be positive"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "-o", "yaml"}, code: 1, want: `unknown output format "yaml"`},
		{args: []string{"version", "-o", "yaml"}, code: 1, want: `unknown output format "yaml"`},
		{args: []string{"kernel-support", "-o", "yaml"}, code: 1, want: `unknown output format "yaml"`},
		{args: []string{"analyze", "good.svctrace", "-o", "yaml"}, code: 1, want: "use -o text, -o json or -o pcapng"},
		{args: []string{"check", "web", "-n", "lab", "--objects", "dump.yaml", "-o", "wide"}, code: 1, want: `unknown output format "wide"`},
		{args: []string{"trace", "--bogus"}, code: 1, want: "unknown flag: --bogus"},
		// Recordings.
		{args: []string{"analyze", "garbage.bin"}, code: 1, want: "not an svctrace recording"},
		{args: []string{"analyze", "empty.yaml"}, code: 1, want: "not an svctrace recording"},
		{args: []string{"analyze", "a-directory"}, code: 1, want: "a-directory is a directory"},
		{args: []string{"analyze", "corrupt.svctrace"}, code: 1, want: "checksum mismatch: corrupt: the 19 records before it were analysed"},
		{args: []string{"analyze", "cut.svctrace"}, code: 0},
		// Labs: ids that cannot be a lab's.
		{args: []string{"lab", "cleanup", "*"}, code: 1, want: "invalid lab id"},
		{args: []string{"lab", "cleanup", "../../etc"}, code: 1, want: "invalid lab id"},
		// Not root.
		{args: []string{"trace", "--addr", "10.96.0.10:80"}, as: nobody, code: 1, want: "svctrace needs root"},
		{args: []string{"trace", "--addr", "10.96.0.10:80", "-w", "p.txt"}, as: nobody, code: 1, want: "creating the recording p.txt: permission denied"},
		{args: []string{"lab"}, as: nobody, code: 1, want: "run it as root (sudo)"},
		{args: []string{"web", "-n", "lab", "--objects", "dump.yaml", "--duration", "1s"}, as: nobody, code: 1, want: "svctrace needs root"},
	} {
		name := strings.Join(tc.args, " ")
		if tc.as != nil {
			name = "as nobody: " + name
		}
		t.Run(name, func(t *testing.T) {
			before := snapshot(t)
			r := svctrace(t, dir, tc.as, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit status %d, want %d\nstderr: %s", r.code, tc.code, r.stderr)
			}
			lines := strings.Split(strings.TrimRight(r.stderr, "\n"), "\n")
			if r.stderr == "" {
				lines = nil
			}
			switch {
			case tc.want == "" && tc.code == 0:
			case len(lines) != 1 || !strings.Contains(lines[0], tc.want) || !strings.HasPrefix(lines[0], "svctrace: "):
				t.Errorf("stderr %q, want one line \"svctrace: …\" containing %q", r.stderr, tc.want)
			}
			for _, s := range []string{"goroutine", "panic", "\tat ", ".go:"} {
				if strings.Contains(r.stderr+r.stdout, s) {
					t.Errorf("%q in the output: a stack trace?\n%s%s", s, r.stdout, r.stderr)
				}
			}
			if b, err := os.ReadFile(filepath.Join(dir, "p.txt")); err != nil || string(b) != "data\n" {
				t.Fatalf("p.txt is now %q (%v)", b, err)
			}
			if b, err := os.ReadFile(filepath.Join(dir, "dump.yaml")); err != nil || !bytes.HasPrefix(b, []byte("apiVersion: v1")) {
				t.Fatalf("dump.yaml is now %.40q… (%v)", b, err)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 9 {
				var names []string
				for _, e := range ents {
					names = append(names, e.Name())
				}
				t.Fatalf("files now in the directory: %v", names)
			}
			if d := before.diff(snapshot(t)); d != "" {
				t.Errorf("left behind: %s", d)
			}
		})
	}
}

// serving is a new network namespace in which a server on 127.0.0.1:7777
// answers every connection with a line; both go when the test ends.
func serving(t *testing.T) nf.NetNS {
	t.Helper()
	ns, err := nf.ResolveNetNS(testutil.NewNetNS(t))
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	err = nf.InNetNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:7777")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello\n")
			c.Close()
		}
	}()
	return ns
}

// dial connects to addr from inside ns, reads the answer and closes.
func dial(t *testing.T, ns nf.NetNS, addr string) {
	t.Helper()
	err := nf.InNetNS(ns, func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		_, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tracing starts svctrace with args and returns it once it traces.
func tracing(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "SVCTRACE_TEST_MAIN=1")
	var out, errb syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, &errb, "Ctrl-C to stop")
	return cmd, &out, &errb
}

// Ctrl-C right after traffic: every connection seen is printed and recorded,
// every time (the ring buffer and the reader's batch are read before the
// end). 20 rounds.
func TestSIGINTReportsEverything(t *testing.T) {
	ns := serving(t)
	dir := t.TempDir()
	for round := range 20 {
		file := filepath.Join(dir, fmt.Sprintf("r%d.svctrace", round))
		cmd, out, errb := tracing(t, "trace", "--netns", ns.Spec, "--addr", "127.0.0.1:7777", "-w", file, "-o", "json")
		dial(t, ns, "127.0.0.1:7777")
		dial(t, ns, "127.0.0.1:7777")
		cmd.Process.Signal(os.Interrupt)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, errb.String())
		}
		lines := parseLines(t, out.String())
		conns := 0
		for _, l := range lines {
			if l.Kind == "connection" {
				conns++
			}
		}
		if last := lines[len(lines)-1]; conns != 2 || last.Kind != "summary" || last.Conns != 2 {
			t.Fatalf("round %d: %d connections printed, summary %+v, want 2:\n%s", round, conns, last, out.String())
		}
		got, _, err := run(context.Background(), "analyze", file, "-o", "json")
		if err != nil {
			t.Fatalf("round %d: analyze: %v", round, err)
		}
		recorded := 0
		for _, l := range parseLines(t, got) {
			if l.Kind == "connection" {
				recorded++
			}
		}
		if recorded != 2 {
			t.Fatalf("round %d: %d connections recorded, want 2:\n%s", round, recorded, got)
		}
	}
}

// svctrace … | head -n1: once the reader is gone, tracing stops at once,
// everything is detached, and the exit status says so without a word.
func TestClosedStdoutStopsTracing(t *testing.T) {
	ns := serving(t)
	before := snapshot(t)
	for _, quiet := range []bool{false, true} {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(os.Args[0], "trace", "--netns", ns.Spec, "--addr", "127.0.0.1:7777", "-o", "json", "--duration", "30s")
		cmd.Env = append(os.Environ(), "SVCTRACE_TEST_MAIN=1")
		var errb syncBuffer
		cmd.Stdout, cmd.Stderr = pw, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		waitFor(t, &errb, "Ctrl-C to stop")
		if !quiet {
			// head -n1: read one connection, then go away while
			// traffic goes on.
			dial(t, ns, "127.0.0.1:7777")
			line := make([]byte, 1)
			for line[0] != '\n' {
				if _, err := pr.Read(line); err != nil {
					t.Fatal(err)
				}
			}
		}
		pr.Close()
		closed := time.Now()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		for {
			select {
			case err = <-done:
			case <-time.After(200 * time.Millisecond):
				if !quiet {
					dial(t, ns, "127.0.0.1:7777")
				}
				if time.Since(closed) < 10*time.Second {
					continue
				}
				cmd.Process.Kill()
				t.Fatalf("still tracing 10s after its stdout closed (quiet: %v)", quiet)
			}
			break
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitBrokenPipe {
			t.Errorf("quiet %v: exit %v, want status %d", quiet, err, exitBrokenPipe)
		}
		if lines := strings.Split(strings.TrimSpace(errb.String()), "\n"); len(lines) != 1 {
			t.Errorf("quiet %v: stderr %q, want only the tracing line", quiet, errb.String())
		}
		if time.Since(closed) > 3*time.Second {
			t.Errorf("quiet %v: stopped %s after stdout closed", quiet, time.Since(closed))
		}
	}
	if d := before.diff(snapshot(t)); d != "" {
		t.Errorf("left behind: %s", d)
	}
}

// -w onto a full disk: the first failed write is reported as it happens,
// tracing goes on, and the exit status says the recording is incomplete.
func TestRecordingWriteErrorReportedAtOnce(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	ns := testutil.NewNetNS(t)
	cmd, _, errb := tracing(t, "trace", "--netns", ns, "--addr", "127.0.0.1:7777", "-w", "/dev/full", "--duration", "3s")
	waitFor(t, errb, "writing the recording /dev/full failed: write /dev/full: no space left on device; tracing goes on")
	if cmd.Process.Signal(syscall.Signal(0)) != nil {
		t.Fatal("reported only at exit")
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(errb.String(), "svctrace: the recording /dev/full is incomplete") {
		t.Errorf("exit %v, stderr:\n%s", err, errb.String())
	}
}

// svctrace lab --keep, then the README's steps: trace the kept lab's node by
// hand while its client connects, then remove the lab.
func TestLabKeepThenTraceByHand(t *testing.T) {
	testutil.RequireRoot(t)
	_, errOut, err := run(context.Background(), "lab", "--keep")
	id := ""
	if _, rest, ok := strings.Cut(errOut, "sudo svctrace lab cleanup "); ok {
		id, _, _ = strings.Cut(rest, "\n")
	}
	if id != "" {
		t.Cleanup(func() { lab.Cleanup(id) })
	}
	if err != nil || id == "" {
		t.Fatalf("lab --keep: %v\n%s", err, errOut)
	}
	// Every Pod server outlives the lab's process, the hung one too.
	time.Sleep(500 * time.Millisecond)
	for _, p := range []string{"web-1", "web-2", "hung", "guarded"} {
		ns, err := nf.ResolveNetNS(lab.Prefix + id + "-" + p)
		if err != nil || !processIn(ns.Inode) {
			t.Errorf("no server runs in pod %s of the kept lab (%v)", p, err)
		}
	}
	// The README's steps, as the hint printed them.
	var traceArgs, clientArgs []string
	for _, l := range strings.Split(errOut, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "sudo svctrace trace "):
			traceArgs = strings.Fields(strings.TrimPrefix(l, "sudo svctrace "))
		case strings.HasPrefix(l, "sudo ip netns exec "):
			clientArgs = strings.Fields(strings.TrimPrefix(l, "sudo "))
		}
	}
	if traceArgs == nil || clientArgs == nil {
		t.Fatalf("the hint lacks the steps:\n%s", errOut)
	}
	var out, errb syncBuffer
	root := newRoot(&out, &errb)
	root.SetArgs(append(traceArgs, "--count", "1", "--duration", "20s"))
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(context.Background()) }()
	waitFor(t, &errb, "Ctrl-C to stop")
	if _, err := exec.LookPath(clientArgs[4]); err != nil {
		t.Fatalf("the hint's client command %s: %v (CI installs curl)", clientArgs[4], err)
	}
	if b, err := exec.Command(clientArgs[0], clientArgs[1:]...).CombinedOutput(); err != nil || !strings.HasPrefix(string(b), "hello from web-") {
		t.Fatalf("%v: %v: %s", clientArgs, err, b)
	}
	if err := <-done; err != nil {
		t.Fatalf("trace: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "✓ answered") || !strings.Contains(out.String(), "DNAT 10.96.0.10:80 → 10.244.0.1") {
		t.Errorf("the kept lab's trace:\n%s", out.String())
	}
	got, _, err := run(context.Background(), "lab", "cleanup", id)
	if err != nil || !strings.Contains(got, "removed network namespace "+lab.Prefix+id+"-node") {
		t.Errorf("lab cleanup %s: %v\n%s", id, err, got)
	}
	if left := lab.List(); slices.ContainsFunc(left, func(l lab.Listed) bool { return l.ID == id }) {
		t.Errorf("lab %s still up after cleanup", id)
	}
}

// processIn reports whether a process runs in the network namespace with
// this inode.
func processIn(inode uint32) bool {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", p.Name(), "ns/net"), &st) == nil && st.Ino == uint64(inode) {
			return true
		}
	}
	return false
}
