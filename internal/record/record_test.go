package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/resolve"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

type buffer struct{ bytes.Buffer }

func (*buffer) Close() error { return nil }

var meta = Meta{Command: []string{"trace", "--addr", "10.96.0.10:80"}, Mode: "trace", Backend: "netfilter-link",
	NetNS: 4026531840, Targets: []nf.Target{{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP}},
	Wall: time.Date(2026, 11, 21, 6, 0, 0, 0, time.UTC), Mono: 1_000_000_000, Timeout: 1500 * time.Millisecond}

func event(t uint64) nf.Event {
	return nf.Event{Time: t, Kind: nf.KindHook, Hook: nf.PreRouting, Stage: nf.StagePreConntrack, Family: nf.IPv4,
		Packet: 42, Tuple: nf.Tuple{Src: netip.MustParseAddrPort("10.99.0.2:40000"), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: nf.TCP},
		TCPFlags: nf.SYN}
}

// sample is a small recording: meta, an interface, two events, a tick, a
// lost count, the end.
func sample(t *testing.T) []byte {
	t.Helper()
	var b buffer
	w := newWriter(&b, "", "", 0)
	w.Begin(meta)
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
	if ev := rec.Entries[1].Event; ev.Tuple != event(0).Tuple || ev.Time != 1_000_000_100 || ev.TCPFlags != nf.SYN {
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

// frames returns where each record of a recording starts, and its end.
func frames(t *testing.T, b []byte) []int {
	t.Helper()
	offs := []int{headerSize}
	for off := headerSize; off < len(b); {
		off += frameSize + int(binary.LittleEndian.Uint32(b[off+1:]))
		offs = append(offs, off)
	}
	if offs[len(offs)-1] != len(b) {
		t.Fatalf("frames end at %d of %d bytes", offs[len(offs)-1], len(b))
	}
	return offs
}

// A recording cut short (crash, SIGKILL, full disk) anywhere after its first
// record is read up to its last whole record, without an error: inside a
// record it says so.
func TestCutShort(t *testing.T) {
	full := sample(t)
	offs := frames(t, full)
	whole := func(cut int) int { // records wholly before cut, after meta
		n := 0
		for _, o := range offs[2:] {
			if o <= cut {
				n++
			}
		}
		return n
	}
	for cut := offs[1]; cut < len(full); cut++ {
		rec, err := Parse(full[:cut])
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if rec.End != nil {
			t.Fatalf("cut at %d: an end record", cut)
		}
		if want := min(whole(cut), len(offs)-3); len(rec.Entries) != want {
			t.Fatalf("cut at %d: %d entries, want %d", cut, len(rec.Entries), want)
		}
		atBoundary := slices.Contains(offs, cut)
		if cutNote := len(rec.Notes) == 1 && strings.Contains(rec.Notes[0], "cut short"); cutNote == atBoundary {
			t.Fatalf("cut at %d (a record boundary: %v): notes %v", cut, atBoundary, rec.Notes)
		}
	}
	// Inside the first record: nothing to analyse, and it says why.
	for cut := headerSize; cut < offs[1]; cut++ {
		if _, err := Parse(full[:cut]); err == nil || !strings.Contains(err.Error(), "before its first record") {
			t.Fatalf("cut at %d, inside the meta record: %v", cut, err)
		}
	}
	// A machine that stopped before the data reached the disk leaves zeros.
	rec, err := Parse(append(bytes.Clone(full[:offs[3]]), make([]byte, 5000)...))
	if err != nil || len(rec.Entries) != 2 || len(rec.Notes) != 1 || !strings.Contains(rec.Notes[0], "zero bytes from byte") {
		t.Errorf("zero-filled tail: %v, %d entries, notes %v", err, len(rec.Entries), rec.Notes)
	}
}

// Every byte of a recording is checked: whatever single bit flips, reading
// fails, naming the record where it flipped, and keeps what precedes it.
func TestEveryFlippedBitIsNoticed(t *testing.T) {
	full := sample(t)
	offs := frames(t, full)
	for pos := range full {
		for bit := range 8 {
			b := bytes.Clone(full)
			b[pos] ^= 1 << bit
			rec, err := Parse(b)
			if err == nil {
				t.Fatalf("bit %d of byte %d flipped: no error", bit, pos)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("bit %d of byte %d flipped: %v, not a format error", bit, pos, err)
			}
			i := slices.IndexFunc(offs, func(o int) bool { return o > pos }) - 1
			switch {
			case pos < 8:
				if fe.Offset != 0 || rec != nil {
					t.Fatalf("bit %d of the magic's byte %d flipped: %v", bit, pos, err)
				}
			case pos < offs[1]:
				if rec != nil {
					t.Fatalf("bit %d of byte %d flipped, in the header or meta record: a recording", bit, pos)
				}
			default:
				if fe.Offset != int64(offs[i]) {
					t.Fatalf("bit %d of byte %d flipped, in the record at %d: error at byte %d: %v", bit, pos, offs[i], fe.Offset, err)
				}
				if len(rec.Entries) != i-1 {
					t.Fatalf("bit %d of byte %d flipped: %d records kept, want the %d before it", bit, pos, len(rec.Entries), i-1)
				}
			}
		}
	}
}

func TestCorruptAndForeign(t *testing.T) {
	full := sample(t)
	if _, err := Parse([]byte("\x89PNG\r\n\x1a\n0000000000000000")); !errors.Is(err, ErrNotRecording) || !strings.HasPrefix(err.Error(), "byte 0: ") {
		t.Errorf("foreign: %v", err)
	}
	newer := bytes.Clone(full)
	newer[8] = Version + 1
	if _, err := Parse(newer); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("format version %d,", Version+1)) {
		t.Errorf("newer version: %v", err)
	}
	// A length whose frame checksum matches, but larger than any record.
	huge := bytes.Clone(full[:headerSize])
	huge = append(huge, frame(TypeMeta, mustJSON(meta))...)
	fr := []byte{byte(TypeEvent), 0xff, 0xff, 0xff, 0x7f}
	fr = binary.LittleEndian.AppendUint32(fr, crc32.ChecksumIEEE(fr))
	huge = append(huge, append(fr, 0, 0, 0, 0)...)
	if _, err := Parse(huge); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("huge record: %v", err)
	}
}

// Recordings of version 1 (a frame whose checksum covered the payload
// only) are still read.
func TestVersion1(t *testing.T) {
	v1frame := func(t Type, p []byte) []byte {
		b := []byte{byte(t)}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = binary.LittleEndian.AppendUint32(b, crc32.ChecksumIEEE(p))
		return append(b, p...)
	}
	b := header()
	b[8] = 1
	b = append(b, v1frame(TypeMeta, mustJSON(meta))...)
	b = append(b, v1frame(TypeEvent, mustJSON(event(5)))...)
	b = append(b, v1frame(TypeEnd, mustJSON(End{Conns: 1}))...)
	rec, err := Parse(b)
	if err != nil || len(rec.Entries) != 1 || rec.Entries[0].Event.Time != 5 || rec.End == nil || rec.End.Conns != 1 {
		t.Fatalf("version 1: %v %+v", err, rec)
	}
}

// Record types of newer versions are skipped, with a note.
func TestUnknownTypesSkipped(t *testing.T) {
	full := sample(t)
	m := meta
	m.Format = Version // as Begin writes it
	b := bytes.Clone(full[:headerSize])
	b = append(b, frame(TypeMeta, mustJSON(m))...)
	b = append(b, frame(Type(200), []byte("from the future"))...)
	b = append(b, full[headerSize+frameSize+len(mustJSON(m)):]...)
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
	w := newWriter(&b, "", "", 3*reserve)
	var why string
	w.Truncated = func(s string) { why = s }
	w.Begin(meta)
	for i := range 1000 {
		ev := event(uint64(1_000_000_000 + i))
		ev.Data = bytes.Repeat([]byte{byte(i)}, 100) // each event adds 100 bytes or so
		w.Event(ev)
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
}

// Create never harms a file that is there: the recording replaces it only
// once it has begun; a bound too small, a directory, a run that ends before
// Begin leave everything as it was, and no temporary file behind.
func TestCreateKeepsFilesUntilBegun(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "p.txt")
	os.WriteFile(p, []byte("data\n"), 0o644)
	intact := func(what string) {
		t.Helper()
		if b, err := os.ReadFile(p); err != nil || string(b) != "data\n" {
			t.Errorf("%s: p.txt is %q (%v)", what, b, err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("%s: %d files in the directory", what, len(ents))
		}
	}
	if _, err := Create(p, 1); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Errorf("--max-size 1: %v", err)
	}
	intact("--max-size 1")
	w, err := Create(p, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Event(event(1)) // before Begin: not recorded
	if err := w.Close(End{}); err != nil {
		t.Fatal(err)
	}
	intact("closed before Begin")
	if _, err := Create(dir, 0); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("a directory: %v", err)
	}

	// Begun: the recording replaces the file, through a symbolic link.
	link := filepath.Join(dir, "link")
	os.Symlink("p.txt", link)
	w, err = Create(link, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Begin(meta)
	w.Event(event(7))
	if err := w.Close(End{Conns: 1}); err != nil {
		t.Fatal(err)
	}
	rec, err := ReadFile(p)
	if err != nil || len(rec.Entries) != 1 || rec.End == nil {
		t.Fatalf("recording through a link: %v %+v", err, rec)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d files in the directory, want p.txt and link", len(ents))
	}
}

// A device is written in place; the first failed write is reported when it
// happens, and by Close.
func TestWriteErrorsReportedAtOnce(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	w, err := Create("/dev/full", 0)
	if err != nil {
		t.Fatal(err)
	}
	var failed []error
	w.Failed = func(err error) { failed = append(failed, err) }
	w.Begin(meta)
	if len(failed) != 1 || !strings.Contains(failed[0].Error(), "no space left on device") {
		t.Fatalf("after Begin: %v", failed)
	}
	w.Event(event(1))
	w.Tick(2)
	err = w.Close(End{})
	if len(failed) != 1 || err == nil || !strings.Contains(err.Error(), "/dev/full is incomplete") {
		t.Errorf("failures %v, close: %v", failed, err)
	}
}

// FuzzParse: whatever the bytes, Parse returns a recording or an error,
// never panics; and what it returns without an error, written again, reads
// back the same.
func FuzzParse(f *testing.F) {
	f.Add([]byte(Magic))
	f.Add(header())
	s := sampleForFuzz()
	f.Add(s)
	// Seeds that reach into the frames: a cut, a flipped length, a
	// flipped type with its frame checksum fixed.
	f.Add(s[:len(s)-5])
	b := bytes.Clone(s)
	b[headerSize+2] ^= 4
	f.Add(b)
	b = bytes.Clone(s)
	at := headerSize + frameSize + int(binary.LittleEndian.Uint32(s[headerSize+1:]))
	b[at] = 99
	binary.LittleEndian.PutUint32(b[at+5:], crc32.ChecksumIEEE(b[at:at+5]))
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := Parse(b)
		if err == nil && rec == nil {
			t.Fatal("no recording and no error")
		}
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: not a one-line format error", err)
			}
			return
		}
		var out buffer
		w := newWriter(&out, "", "", 0)
		w.Begin(rec.Meta)
		for _, e := range rec.Entries {
			if e.Type == TypeEvent {
				w.Event(e.Event)
				continue
			}
			w.add(e.Type, payloadOf(b, e))
		}
		if rec.End != nil {
			w.Close(*rec.End)
		} else {
			w.flush()
		}
		again, err := Parse(out.Bytes())
		if err != nil || len(again.Entries) != len(rec.Entries) || (again.End == nil) != (rec.End == nil) {
			t.Fatalf("written again: %v, %d entries, want %d", err, len(again.Entries), len(rec.Entries))
		}
	})
}

// payloadOf is the payload of the record at e.Offset in b.
func payloadOf(b []byte, e Entry) []byte {
	size := frameSize
	if binary.LittleEndian.Uint16(b[8:]) == 1 {
		size = frameSize1
	}
	n := int(binary.LittleEndian.Uint32(b[e.Offset+1:]))
	return b[int(e.Offset)+size : int(e.Offset)+size+n]
}

func sampleForFuzz() []byte {
	var b buffer
	w := newWriter(&b, "", "", 0)
	w.Begin(meta)
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

// Facts read again for a connection come back as they were written.
func TestFactsRoundTrip(t *testing.T) {
	var b buffer
	w := newWriter(&b, "", "", 0)
	w.Begin(meta)
	f := &node.Facts{Neighbours: []node.Neighbour{{Addr: netip.MustParseAddr("10.244.0.99"), Dev: "cbr0", State: "FAILED"}}}
	w.Facts(f)
	if err := w.Close(End{}); err != nil {
		t.Fatal(err)
	}
	rec, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 1 || rec.Entries[0].Type != TypeFacts || rec.Entries[0].Facts == nil ||
		len(rec.Entries[0].Facts.Neighbours) != 1 || rec.Entries[0].Facts.Neighbours[0] != f.Neighbours[0] {
		t.Errorf("entries %+v", rec.Entries)
	}
}

// A --probe=dns recording's DNS Service and resolution come back as
// written; a DNS record without its Service is corrupt.
func TestDNSRoundTrip(t *testing.T) {
	var b buffer
	w := newWriter(&b, "", "", 0)
	w.Begin(meta)
	view := &resolve.View{Service: &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"}}}
	w.DNS(DNS{View: view, Rules: Rules{KubeProxy: []int{42}}})
	w.Resolution(map[string]string{"from": "pod front/client-1"})
	if err := w.Close(End{}); err != nil {
		t.Fatal(err)
	}
	rec, err := Parse(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.Entries) != 2 || rec.Entries[0].Type != TypeDNS || rec.Entries[0].DNS.View.Service.Name != "kube-dns" ||
		rec.Entries[0].DNS.Rules.KubeProxy[0] != 42 || string(rec.Entries[1].Resolution) != `{"from":"pod front/client-1"}` {
		t.Errorf("entries %+v", rec.Entries)
	}
	if _, _, err := decode(TypeDNS, []byte(`{"view":null}`)); err == nil {
		t.Error("a DNS record without its Service was read")
	}
}
