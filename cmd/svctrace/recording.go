package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/tracer"
	"golang.org/x/sys/unix"
)

// recordFlags are -w and --max-size, on every command that traces.
type recordFlags struct {
	path        string
	maxSize     string
	snaplen     int
	everyPacket bool
	max         int64 // --max-size in bytes, once validated
}

func (r *recordFlags) add(f *pflag.FlagSet) {
	f.StringVarP(&r.path, "write", "w", "", "also record everything to this `FILE`, for svctrace analyze anywhere later (an existing file is replaced only once tracing has begun)")
	f.StringVar(&r.maxSize, "max-size", "", "stop recording (not tracing) when the file reaches this size, e.g. 100M, 2G (default: no bound)")
	f.IntVar(&r.snaplen, "snaplen", 0, fmt.Sprintf("bytes of each packet to record for pcapng, from its IP header, up to %d (default: its headers only, never payload)", tracer.MaxSnaplen))
	f.BoolVar(&r.everyPacket, "every-packet", false, fmt.Sprintf("report every packet at every observation point (default: a connection's first %d packets each way and its notable ones - SYN, RST, ICMP - in full, the rest counted); costs more, for a complete pcapng", tracer.QuietAfter))
}

// validate checks the recording flags before anything starts; reads are
// the files (or directories) the same run reads, which -w must not name.
func (r *recordFlags) validate(reads ...string) error {
	if r.path == "" {
		if r.maxSize != "" || r.snaplen != 0 {
			return fmt.Errorf("--max-size and --snaplen are about a recording: give one with -w FILE")
		}
		return nil
	}
	if r.snaplen < 0 || r.snaplen > tracer.MaxSnaplen {
		return fmt.Errorf("invalid --snaplen %d: want 1 to %d bytes (0: headers only)", r.snaplen, tracer.MaxSnaplen)
	}
	var err error
	if r.max, err = parseSize(r.maxSize); err != nil {
		return err
	}
	if err := record.CheckMaxSize(r.max); err != nil {
		return err
	}
	for _, in := range reads {
		if in != "" && readsInto(in, r.path) {
			return fmt.Errorf("-w %s would overwrite %s, which this run reads: record to another file, e.g. -w trace.svctrace", r.path, in)
		}
	}
	return nil
}

// readsInto reports whether writing path would change what reading in
// reads: the same file, or a file in that directory.
func readsInto(in, path string) bool {
	inSt, err := os.Stat(in)
	if err != nil {
		return false
	}
	if st, err := os.Stat(path); err == nil && os.SameFile(inSt, st) {
		return true
	}
	if !inSt.IsDir() {
		return false
	}
	dir, err := os.Stat(filepath.Dir(path))
	return err == nil && os.SameFile(inSt, dir)
}

// create prepares the recording, or returns nil without -w; validate
// comes first. Nothing at the path changes until the recording begins
// (record.Writer.Begin).
func (r *recordFlags) create() (*record.Writer, error) {
	if r.path == "" {
		return nil, nil
	}
	return record.Create(r.path, r.max)
}

// watch reports, on stderr as they happen, the recording's size bound and
// its first failed write.
func (g *globals) watch(w *record.Writer) {
	w.Truncated = func(why string) {
		fmt.Fprintf(g.stderr, "svctrace: warning: %s; recording stopped, tracing goes on\n", why)
	}
	w.Failed = func(err error) {
		fmt.Fprintf(g.stderr, "svctrace: error: %v; tracing goes on, the recording ends here\n", err)
	}
}

// parseSize reads 1048576, 512K, 100M or 2G (powers of 1024).
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	arg := s
	s = strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I") // 100MB, 100MiB
	if s == "" {
		return 0, fmt.Errorf("invalid --max-size %q: want a size such as 100M or 2G", arg)
	}
	mult := int64(1)
	switch s[len(s)-1:] {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("invalid --max-size %q: want a size such as 100M or 2G", arg)
	}
	return n * mult, nil
}

// startMeta is what a recording says of the trace before its records;
// clock is the one the live run prints times with.
func startMeta(mode string, info tracer.Info, targets []tracer.Target, timeout time.Duration, count int, clock tracer.Clock) record.Meta {
	m := record.Meta{Command: os.Args[1:], Mode: mode, Backend: info.Backend, Links: info.Links, Drops: info.Drops,
		NetNS: info.NetNS.Inode, Targets: targets, Timeout: timeout, Count: count, Wall: clock.Wall, Mono: clock.Mono}
	m.Host, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		m.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	return m
}

// recordingIfNames names the node's interfaces and records each name the
// first time it is asked for.
func recordingIfNames(ns tracer.NetNS, w *record.Writer) func(uint32) string {
	names := tracer.NewIfNames(ns)
	seen := map[uint32]bool{}
	return func(i uint32) string {
		n := names.Name(i)
		if n != "" && !seen[i] {
			seen[i] = true
			w.IfName(record.IfName{Index: i, Name: n})
		}
		return n
	}
}
