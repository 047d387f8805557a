package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/tracer"
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
	if r.max, err = record.ParseSize(r.maxSize); err != nil {
		return err
	}
	if err := record.CheckMaxSize(r.max); err != nil {
		return err
	}
	for _, in := range reads {
		if in != "" && record.ReadsInto(in, r.path) {
			return fmt.Errorf("-w %s would overwrite %s, which this run reads: record to another file, e.g. -w trace.svctrace", r.path, in)
		}
	}
	return nil
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
