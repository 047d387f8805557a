package record

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/tracer"
)

type buffer struct{ bytes.Buffer }

func (*buffer) Close() error { return nil }

var meta = Meta{Command: []string{"trace", "--addr", "10.96.0.10:80"}, Mode: "trace", Backend: "netfilter-link",
	NetNS: 4026531840, Targets: []tracer.Target{{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: tracer.TCP}},
	Wall: time.Date(2026, 11, 21, 6, 0, 0, 0, time.UTC), Mono: 1_000_000_000, Timeout: 1500 * time.Millisecond}

func event(t uint64) tracer.Event {
	return tracer.Event{Time: t, Kind: tracer.KindHook, Hook: tracer.PreRouting, Stage: tracer.StagePreConntrack, Family: tracer.IPv4,
		Packet: 42, Tuple: tracer.Tuple{Src: netip.MustParseAddrPort("10.99.0.2:40000"), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: tracer.TCP},
		TCPFlags: tracer.SYN}
}

// sample is a small recording: meta, an interface, two events, a tick, a
// lost count, the end.
func sample(t *testing.T) []byte {
	t.Helper()
	var b buffer
	w, err := newWriter(&b, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Meta(meta)
	w.IfName(IfName{Index: 2, Name: "client0"})
	w.Event(event(1_000_000_100))
	w.Tick(1_000_000_200)
	w.Lost(3)
	w.Event(event(1_000_000_300))
	w.Flush(1_000_000_400)
	if err := w.Close(End{Conns: 1}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRoundTrip(t *testing.T) {
	rec, err := Parse(sample(t))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Meta.Backend != "netfilter-link" || rec.Meta.Targets[0] != meta.Targets[0] || !rec.Meta.Wall.Equal(meta.Wall) {
		t.Errorf("meta %+v", rec.Meta)
	}
	var types []Type
	for _, e := range rec.Entries {
		types = append(types, e.Type)
	}
	want := []Type{TypeIfName, TypeEvent, TypeTick, TypeLost, TypeEvent, TypeFlush}
	if len(types) != len(want) {
		t.Fatalf("entries %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("entries %v, want %v", types, want)
		}
	}
	if ev := rec.Entries[1].Event; ev.Tuple != event(0).Tuple || ev.Time != 1_000_000_100 || ev.TCPFlags != tracer.SYN {
		t.Errorf("event %+v", ev)
	}
	if rec.Entries[2].Time != 1_000_000_200 || rec.Entries[3].Lost != 3 || rec.Entries[0].IfName.Name != "client0" {
		t.Errorf("entries %+v", rec.Entries)
	}
	if rec.End == nil || rec.End.Conns != 1 || len(rec.Notes) != 0 {
		t.Errorf("end %+v, notes %v", rec.End, rec.Notes)
	}
	if got := rec.Meta.WallClock()(1_000_000_000 + uint64(time.Second)); !got.Equal(meta.Wall.Add(time.Second)) {
		t.Errorf("wall clock %v", got)
	}
}

// A recording cut short (crash, SIGKILL, full disk) is read up to its last
// whole record, and says so.
func TestCutShort(t *testing.T) {
	full := sample(t)
	for cut := headerSize + frameSize + 50; cut < len(full); cut += 7 {
		rec, err := Parse(full[:cut])
		if err != nil {
			// Cut inside the meta record: nothing to read.
			if cut > headerSize+frameSize+len(mustJSON(meta)) {
				t.Fatalf("cut at %d: %v", cut, err)
			}
			continue
		}
		if rec.End != nil {
			t.Fatalf("cut at %d: an end record", cut)
		}
	}
	rec, _ := Parse(full[:len(full)-3])
	if len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "cut short") {
		t.Errorf("notes %v", rec.Notes)
	}
}

func TestCorruptAndForeign(t *testing.T) {
	full := sample(t)
	bad := bytes.Clone(full)
	bad[len(bad)-20] ^= 0xff // inside the last records' payloads
	_, err := Parse(bad)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Offset <= headerSize || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Errorf("corrupt: %v", err)
	}
	if _, err := Parse([]byte("\x89PNG\r\n\x1a\n0000000000000000")); !errors.Is(err, ErrNotRecording) || !strings.HasPrefix(err.Error(), "byte 0: ") {
		t.Errorf("foreign: %v", err)
	}
	newer := bytes.Clone(full)
	newer[8] = Version + 1
	if _, err := Parse(newer); err == nil || !strings.Contains(err.Error(), "format version 2") {
		t.Errorf("newer version: %v", err)
	}
	huge := bytes.Clone(full[:headerSize])
	huge = append(huge, frame(TypeMeta, mustJSON(meta))...)
	huge = append(huge, byte(TypeEvent), 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0)
	if _, err := Parse(huge); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("huge record: %v", err)
	}
}

// Record types of newer versions are skipped, with a note.
func TestUnknownTypesSkipped(t *testing.T) {
	full := sample(t)
	b := bytes.Clone(full[:headerSize])
	b = append(b, frame(TypeMeta, mustJSON(meta))...)
	b = append(b, frame(Type(200), []byte("from the future"))...)
	b = append(b, full[headerSize+frameSize+len(mustJSON(meta)):]...)
	rec, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 6 || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "skipped 1 record(s) of type 200") {
		t.Errorf("%d entries, notes %v", len(rec.Entries), rec.Notes)
	}
}

// --max-size: recording stops cleanly below the bound, and says why.
func TestMaxSize(t *testing.T) {
	var b buffer
	w, err := newWriter(&b, 3*reserve)
	if err != nil {
		t.Fatal(err)
	}
	var why string
	w.Truncated = func(s string) { why = s }
	w.Meta(meta)
	for i := range 100 {
		w.Event(event(uint64(1_000_000_000 + i)))
	}
	if err := w.Close(End{Conns: 5}); err != nil {
		t.Fatal(err)
	}
	if int64(b.Len()) > 3*reserve || !strings.Contains(why, "--max-size") {
		t.Fatalf("%d bytes (bound %d), truncated: %q", b.Len(), 3*reserve, why)
	}
	rec, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	last := rec.Entries[len(rec.Entries)-1]
	if rec.End == nil || rec.End.Truncated == "" || last.Type != TypeFlush || last.Time != 1_000_000_000+uint64(len(rec.Entries)-2) {
		t.Errorf("end %+v, last %+v of %d", rec.End, last, len(rec.Entries))
	}
	if _, err := newWriter(&buffer{}, 100); err == nil {
		t.Error("a 100-byte bound accepted")
	}
}

// FuzzParse: whatever the bytes, Parse returns a recording or an error,
// never panics.
func FuzzParse(f *testing.F) {
	f.Add([]byte(Magic))
	f.Add(header())
	f.Add(sampleForFuzz())
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Parse(b)
		if err == nil && rec == nil {
			t.Fatal("no recording and no error")
		}
	})
}

func sampleForFuzz() []byte {
	var b buffer
	w, _ := newWriter(&b, 0)
	w.Meta(meta)
	w.Event(event(1))
	w.Tick(2)
	w.Close(End{})
	return b.Bytes()
}

func TestReadFileNamesThePath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.svctrace")
	os.WriteFile(p, []byte("hello"), 0o644)
	if _, err := ReadFile(p); err == nil || !strings.HasPrefix(err.Error(), p+": byte 0: not an svctrace recording") {
		t.Errorf("%v", err)
	}
}
