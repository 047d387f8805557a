package record

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Entry is one record as read.
type Entry struct {
	Type   Type
	Offset int64 // where its frame starts
	// One of these, by Type.
	Event     nf.Event
	Time      uint64 // tick and flush
	Lost      uint64
	View      *resolve.View
	Name      Name
	Facts     *node.Facts
	Lab       json.RawMessage
	Rules     Rules
	Conntrack ConntrackSnapshot
	Services  []nf.Target
	IfName    IfName
	DNS       *DNS
	// Resolution is raw: its reader (the printer's report) is not this
	// package's.
	Resolution json.RawMessage
}

// Reader reads a recording one record at a time.
type Reader struct {
	r       *bufio.Reader
	off     int64 // where the next frame starts
	version uint16
	// Meta is the recording's first record.
	Meta Meta
	// End is the end record; nil until it is read, and nil at the end of a
	// recording that ended abruptly (the trace crashed or was killed).
	End     *End
	notes   []string
	skipped map[Type]int
	err     error // what Next returns from now on
	// batch holds the events of a TypeEvents record not yet returned, and
	// batchOff where that record starts.
	batch    *eventReader
	batchOff int64
	// SkipInputs skips the assembler's inputs (events, ticks, losses,
	// flushes): their records are read and checked, not decoded.
	SkipInputs bool
	// Records counts the records read after Meta.
	Records int
}

// NewReader reads a recording's header and first record.
func NewReader(r io.Reader) (*Reader, error) {
	rd := &Reader{r: bufio.NewReaderSize(r, 64<<10), skipped: map[Type]int{}}
	h := make([]byte, headerSize)
	if _, err := io.ReadFull(rd.r, h); err != nil || string(h[:len(Magic)]) != Magic {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, err
		}
		return nil, &FormatError{0, ErrNotRecording}
	}
	rd.version = binary.LittleEndian.Uint16(h[8:])
	if rd.version < 1 || rd.version > Version {
		return nil, &FormatError{8, fmt.Errorf("format version %d, this svctrace reads versions 1 to %d: use an svctrace as new as the one that recorded", rd.version, Version)}
	}
	if rd.version >= 2 && !bytes.Equal(h[10:], make([]byte, 6)) {
		return nil, &FormatError{10, errors.New("header: reserved bytes are not zero: corrupt")}
	}
	rd.off = headerSize
	t, payload, err := rd.frame()
	switch {
	case errors.Is(err, io.EOF):
		return nil, &FormatError{headerSize, errors.New("the recording ends before its first record (cut short): nothing to analyse")}
	case err != nil:
		return nil, err
	case t != TypeMeta:
		return nil, &FormatError{headerSize, fmt.Errorf("first record is %s, want meta", t)}
	}
	if err := json.Unmarshal(payload, &rd.Meta); err != nil {
		return nil, &FormatError{headerSize, fmt.Errorf("meta record: %w", err)}
	}
	if f := rd.Meta.Format; f != 0 && f != rd.version {
		return nil, &FormatError{8, fmt.Errorf("the header says format version %d, the meta record %d: corrupt", rd.version, f)}
	}
	return rd, nil
}

// Next returns the next record. At the end of the recording — its end
// record, or where it was cut short (see Notes) — it returns io.EOF; a
// corrupt record is a *FormatError with its offset. Either is returned from
// then on.
func (rd *Reader) Next() (*Entry, error) {
	for rd.err == nil {
		if rd.batch != nil {
			if ev, ok := rd.batch.next(); ok {
				return &Entry{Type: TypeEvent, Offset: rd.batchOff, Event: ev}, nil
			}
			if err := rd.batch.err; err != nil {
				rd.err = &FormatError{rd.batchOff, fmt.Errorf("%s record: %w", TypeEvents, err)}
				break
			}
			rd.batch = nil
		}
		off := rd.off
		t, payload, err := rd.frame()
		if err != nil {
			rd.err = err
			break
		}
		rd.Records++
		if rd.SkipInputs && IsInput(t) {
			continue
		}
		if t == TypeEvents {
			rd.batch, rd.batchOff = &eventReader{p: payload}, off
			continue
		}
		if t == TypeEnd {
			var end End
			if err := json.Unmarshal(payload, &end); err != nil {
				rd.err = &FormatError{off, fmt.Errorf("end record: %w", err)}
				break
			}
			rd.End, rd.err = &end, io.EOF
			if n, _ := io.Copy(io.Discard, rd.r); n > 0 {
				rd.notes = append(rd.notes, fmt.Sprintf("%d bytes after the end record at byte %d were ignored", n, off))
			}
			break
		}
		e, known, err := decode(t, payload)
		if err != nil {
			rd.err = &FormatError{off, fmt.Errorf("%s record: %w", t, err)}
			break
		}
		if !known {
			rd.skipped[t]++
			continue
		}
		e.Offset = off
		return &e, nil
	}
	return nil, rd.err
}

// Notes say what was skipped or cut short.
func (rd *Reader) Notes() []string {
	notes := rd.notes
	for t, n := range rd.skipped {
		notes = append(notes, fmt.Sprintf("skipped %d record(s) of %s, unknown to this version", n, t))
	}
	return notes
}

// frame reads one record's frame and payload. io.EOF: the recording ends
// here, at a record's boundary or cut short inside one (with a note).
func (rd *Reader) frame() (Type, []byte, error) {
	off := rd.off
	size := frameSize
	if rd.version == 1 {
		size = frameSize1
	}
	fr := make([]byte, size)
	n, err := io.ReadFull(rd.r, fr)
	switch {
	case errors.Is(err, io.EOF):
		return 0, nil, io.EOF
	case errors.Is(err, io.ErrUnexpectedEOF):
		rd.cut(fmt.Sprintf("the recording ends inside a record's frame at byte %d (cut short)", off), fr[:n])
		return 0, nil, io.EOF
	case err != nil:
		return 0, nil, err
	}
	t := Type(fr[0])
	length := int64(binary.LittleEndian.Uint32(fr[1:]))
	// The payload's checksum starts from the frame's (version 2), or from
	// nothing (version 1, which checked the payload only).
	var seed, sum uint32
	if rd.version == 1 {
		sum = binary.LittleEndian.Uint32(fr[5:])
	} else {
		seed = crc32.ChecksumIEEE(fr[:5])
		if seed != binary.LittleEndian.Uint32(fr[5:]) {
			if rd.zeroTail(fr) {
				rd.notes = append(rd.notes, fmt.Sprintf("the recording is zero bytes from byte %d on (the machine stopped before the file's data reached the disk): cut short there", off))
				return 0, nil, io.EOF
			}
			return 0, nil, &FormatError{off, errors.New("record frame: checksum mismatch: corrupt")}
		}
		sum = binary.LittleEndian.Uint32(fr[9:])
	}
	if length > MaxRecord {
		return 0, nil, &FormatError{off, fmt.Errorf("record of %d bytes: corrupt", length)}
	}
	// Grown as the bytes come: a length that runs past the end of a cut
	// file costs what is there, not the length.
	buf := bytes.NewBuffer(make([]byte, 0, min(length, 64<<10)))
	if _, err := io.CopyN(buf, rd.r, length); err != nil {
		if !errors.Is(err, io.EOF) {
			return 0, nil, err
		}
		rd.notes = append(rd.notes, fmt.Sprintf("the recording ends inside a %s record at byte %d (cut short)", t, off))
		return 0, nil, io.EOF
	}
	payload := buf.Bytes()
	if crc32.Update(seed, crc32.IEEETable, payload) != sum {
		return 0, nil, &FormatError{off, fmt.Errorf("%s record: checksum mismatch: corrupt", t)}
	}
	rd.off += int64(size) + length
	return t, payload, nil
}

// cut notes where the recording was cut short; a tail of zeros says why.
func (rd *Reader) cut(note string, tail []byte) {
	if len(tail) > 0 && allZero(tail) {
		note += ": its last bytes are zeros (the machine stopped before the file's data reached the disk)"
	}
	rd.notes = append(rd.notes, note)
}

// zeroTail reports whether b and everything after it are zero bytes: a
// file whose size reached the disk before its data did.
func (rd *Reader) zeroTail(b []byte) bool {
	if !allZero(b) {
		return false
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := rd.r.Read(buf)
		if !allZero(buf[:n]) {
			return false
		}
		if err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Recording is a whole recording, read.
type Recording struct {
	Meta    Meta
	Entries []Entry // every record after Meta, in order; Open leaves out the inputs
	End     *End    // nil: the recording ended abruptly (the trace crashed or was killed)
	// Notes say what was skipped or cut short.
	Notes []string
	// Records is how many records were read after Meta.
	Records int
	// Stream, set by Open, reads the recording again from its start, every
	// record; close ends that reading.
	Stream func() (rd *Reader, close func(), err error)
}

// IsInput reports whether records of type t are the assembler's inputs.
func IsInput(t Type) bool {
	return t == TypeEvent || t == TypeEvents || t == TypeTick || t == TypeLost || t == TypeFlush
}

// Open reads the recording at path as ReadFile does, except the
// assembler's inputs - nearly all of a recording - which Stream reads as
// they are used: analysing a recording takes memory for what it explains,
// not for its size.
func Open(path string) (*Recording, error) {
	stream := func() (*Reader, func(), error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		rd, err := NewReader(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		return rd, func() { f.Close() }, nil
	}
	rd, done, err := stream()
	if err != nil {
		return nil, err
	}
	defer done()
	rd.SkipInputs = true
	rec, err := readRest(rd)
	rec.Stream = stream
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	return rec, err
}

// ReadFile reads a whole recording. A corrupt recording gives what precedes
// the corruption and the error, which names the file and the byte offset.
func ReadFile(path string) (*Recording, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rec, err := ReadAll(f)
	if err != nil {
		err = fmt.Errorf("%s: %w", path, err)
	}
	return rec, err
}

// Parse reads a recording from memory, as ReadAll.
func Parse(b []byte) (*Recording, error) { return ReadAll(bytes.NewReader(b)) }

// ReadAll reads a whole recording. A recording cut short (a crash, a full
// disk) is read up to its last whole record, with a note. A corrupt one is
// read up to the corruption and returned with the error (a *FormatError with
// the byte offset); one that is not a recording gives no Recording.
func ReadAll(r io.Reader) (*Recording, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	return readRest(rd)
}

// readRest reads the records after Meta.
func readRest(rd *Reader) (*Recording, error) {
	rec := &Recording{Meta: rd.Meta}
	for {
		e, err := rd.Next()
		if err != nil {
			rec.End, rec.Notes, rec.Records = rd.End, rd.Notes(), rd.Records
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return rec, err
		}
		rec.Entries = append(rec.Entries, *e)
	}
}

func decode(t Type, p []byte) (e Entry, known bool, err error) {
	e.Type = t
	switch t {
	case TypeEvent:
		err = json.Unmarshal(p, &e.Event)
	case TypeTick, TypeFlush:
		e.Time, err = uint64Payload(p)
	case TypeLost:
		e.Lost, err = uint64Payload(p)
	case TypeView:
		err = json.Unmarshal(p, &e.View)
		if err == nil && (e.View == nil || e.View.Service == nil) {
			err = errors.New("no Service")
		}
	case TypeName:
		err = json.Unmarshal(p, &e.Name)
	case TypeFacts:
		err = json.Unmarshal(p, &e.Facts)
		if err == nil && e.Facts == nil {
			err = errors.New("no facts")
		}
	case TypeLab:
		if !json.Valid(p) {
			err = errors.New("not JSON")
		}
		e.Lab = p
	case TypeResolution:
		if !json.Valid(p) {
			err = errors.New("not JSON")
		}
		e.Resolution = p
	case TypeDNS:
		err = json.Unmarshal(p, &e.DNS)
		if err == nil && (e.DNS == nil || e.DNS.View == nil || e.DNS.View.Service == nil) {
			err = errors.New("no Service")
		}
	case TypeRules:
		err = json.Unmarshal(p, &e.Rules)
	case TypeConntrack:
		err = json.Unmarshal(p, &e.Conntrack)
	case TypeServices:
		err = json.Unmarshal(p, &e.Services)
	case TypeIfName:
		err = json.Unmarshal(p, &e.IfName)
	case TypeMeta:
		err = errors.New("a second meta record")
	default:
		return e, false, nil
	}
	return e, true, err
}

func uint64Payload(p []byte) (uint64, error) {
	if len(p) != 8 {
		return 0, fmt.Errorf("%d bytes, want 8", len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}
