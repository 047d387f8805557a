package record

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"

	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
)

// Entry is one record as read.
type Entry struct {
	Type   Type
	Offset int64 // where its frame starts
	// One of these, by Type.
	Event     tracer.Event
	Time      uint64 // tick and flush
	Lost      uint64
	View      *resolve.View
	Name      Name
	Lab       json.RawMessage
	Rules     Rules
	Conntrack []Conntrack
	Services  []tracer.Target
	IfName    IfName
}

// Recording is a whole recording, read.
type Recording struct {
	Meta    Meta
	Entries []Entry // every record after Meta, in order
	End     *End    // nil: the recording ended abruptly (the trace crashed or was killed)
	// Notes say what was skipped: record types of newer versions.
	Notes []string
}

// ReadFile reads a recording.
func ReadFile(path string) (*Recording, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rec, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rec, nil
}

// Parse reads a recording from memory. A recording cut short (a crash, a
// full disk) is read up to its last whole record; anything else that does
// not fit is an error with its byte offset.
func Parse(b []byte) (*Recording, error) {
	if len(b) < headerSize || string(b[:len(Magic)]) != Magic {
		return nil, &FormatError{0, ErrNotRecording}
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return nil, &FormatError{8, fmt.Errorf("format version %d, this svctrace reads version %d: use an svctrace as new as the one that recorded", v, Version)}
	}
	rec := &Recording{}
	off := int64(headerSize)
	skipped := map[Type]int{}
	first := true
	for off < int64(len(b)) {
		if int64(len(b))-off < frameSize {
			rec.Notes = append(rec.Notes, fmt.Sprintf("the recording ends inside a record at byte %d (cut short)", off))
			break
		}
		fr := b[off : off+frameSize]
		t := Type(fr[0])
		n := int64(binary.LittleEndian.Uint32(fr[1:]))
		sum := binary.LittleEndian.Uint32(fr[5:])
		if n > MaxRecord {
			return nil, &FormatError{off, fmt.Errorf("record of %d bytes: corrupt", n)}
		}
		if off+frameSize+n > int64(len(b)) {
			rec.Notes = append(rec.Notes, fmt.Sprintf("the recording ends inside a %s record at byte %d (cut short)", t, off))
			break
		}
		payload := b[off+frameSize : off+frameSize+n]
		if crc32.ChecksumIEEE(payload) != sum {
			return nil, &FormatError{off, fmt.Errorf("%s record: checksum mismatch: corrupt", t)}
		}
		if first {
			if t != TypeMeta {
				return nil, &FormatError{off, fmt.Errorf("first record is %s, want meta", t)}
			}
			if err := json.Unmarshal(payload, &rec.Meta); err != nil {
				return nil, &FormatError{off, fmt.Errorf("meta record: %w", err)}
			}
			first = false
			off += frameSize + n
			continue
		}
		e, known, err := decode(t, payload)
		if err != nil {
			return nil, &FormatError{off, fmt.Errorf("%s record: %w", t, err)}
		}
		switch {
		case !known:
			skipped[t]++
		case t == TypeEnd:
			var end End
			if err := json.Unmarshal(payload, &end); err != nil {
				return nil, &FormatError{off, fmt.Errorf("end record: %w", err)}
			}
			rec.End = &end
		default:
			e.Offset = off
			rec.Entries = append(rec.Entries, e)
		}
		off += frameSize + n
	}
	if first {
		return nil, &FormatError{off, errors.New("no meta record")}
	}
	for t, n := range skipped {
		rec.Notes = append(rec.Notes, fmt.Sprintf("skipped %d record(s) of %s, unknown to this version", n, t))
	}
	return rec, nil
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
	case TypeLab:
		if !json.Valid(p) {
			err = errors.New("not JSON")
		}
		e.Lab = p
	case TypeRules:
		err = json.Unmarshal(p, &e.Rules)
	case TypeConntrack:
		err = json.Unmarshal(p, &e.Conntrack)
	case TypeServices:
		err = json.Unmarshal(p, &e.Services)
	case TypeIfName:
		err = json.Unmarshal(p, &e.IfName)
	case TypeEnd:
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
