package record

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Writer appends records to a recording. Safe for concurrent use.
//
// A recording to a regular file is written to a new file beside it and moved
// into place by Begin, once tracing has begun: a run that fails or is stopped
// before that leaves an existing file as it was.
type Writer struct {
	mu   sync.Mutex
	f    io.WriteCloser
	w    *bufio.Writer
	path string // where the recording goes
	// tmp is the file written until Begin renames it to path; "" when the
	// recording is written in place (a device or a pipe).
	tmp     string
	begun   bool
	size    int64
	max     int64
	last    uint64 // the latest event or tick time
	stopped bool   // max size reached: nothing more is recorded
	closed  bool
	err     error // the first write error
	// events are events not yet written, as a TypeEvents payload; prev
	// the last of them, eventsLast the latest time among them.
	events     []byte
	prev       nf.Event
	eventsLast uint64
	// Truncated is called once when the size bound is reached.
	Truncated func(why string)
	// Failed is called once, when writing first fails (a full disk): the
	// recording ends there, tracing goes on.
	Failed func(err error)
}

// reserve is kept free below the size bound for the closing records.
const reserve = 4 << 10

// MinSize is the smallest size bound (--max-size) a recording can have.
const MinSize = 2 * reserve

// CheckMaxSize says whether maxSize (0: none) can bound a recording.
func CheckMaxSize(maxSize int64) error {
	if maxSize > 0 && maxSize < MinSize {
		return fmt.Errorf("--max-size %d is too small: a recording needs at least %d bytes (8K)", maxSize, MinSize)
	}
	return nil
}

// Create prepares a recording at path: a new file beside it, which Begin
// moves into place (a device or a named pipe is written in place). maxSize
// bounds the file (0: no bound); when it is reached, recording stops
// cleanly and the trace goes on.
func Create(path string, maxSize int64) (*Writer, error) {
	if err := CheckMaxSize(maxSize); err != nil {
		return nil, err
	}
	target := path
	st, err := os.Stat(path)
	switch {
	case err == nil && st.IsDir():
		return nil, fmt.Errorf("-w %s is a directory: name a file, e.g. -w %s", path, filepath.Join(path, "trace.svctrace"))
	case err == nil && !st.Mode().IsRegular():
		// /dev/stdout, a named pipe: nothing to replace, nothing to move.
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			return nil, fmt.Errorf("opening the recording: %w", err)
		}
		return newWriter(f, path, "", maxSize), nil
	case err == nil:
		// A symbolic link's target is what gets replaced, not the link.
		if target, err = filepath.EvalSymlinks(path); err != nil {
			return nil, fmt.Errorf("creating the recording: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("creating the recording: %w", err)
	}
	f, tmp, err := createBeside(target)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the name is the temporary file's
		}
		return nil, fmt.Errorf("creating the recording %s: %w", path, err)
	}
	return newWriter(f, target, tmp, maxSize), nil
}

// createBeside creates a new file in path's directory, named after it.
func createBeside(path string) (*os.File, string, error) {
	dir, base := filepath.Split(path)
	for {
		var r [4]byte
		rand.Read(r[:])
		tmp := filepath.Join(dir, "."+base+"."+hex.EncodeToString(r[:])+".tmp")
		// Mode 0666 before the umask, as os.Create: a recording made with
		// sudo is as readable as any file the user makes.
		f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		return f, tmp, err
	}
}

func newWriter(f io.WriteCloser, path, tmp string, maxSize int64) *Writer {
	w := &Writer{f: f, w: bufio.NewWriterSize(f, 64<<10), path: path, tmp: tmp, max: maxSize}
	w.write(header())
	return w
}

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	_, err := w.w.Write(b)
	w.size += int64(len(b))
	w.fail(err)
}

// flush writes out what is buffered.
func (w *Writer) flush() {
	if w.err == nil {
		w.fail(w.w.Flush())
	}
}

// fail keeps the first write error and says so at once.
func (w *Writer) fail(err error) {
	if err == nil || w.err != nil {
		return
	}
	w.err = err
	if w.Failed != nil && w.begun {
		w.Failed(fmt.Errorf("writing the recording %s failed: %w", w.path, err))
	}
}

// Begin writes the recording's first record and moves the file into place:
// tracing has begun. Records given before Begin are not recorded. Writing
// errors from here on are reported to Failed as they happen, and by Close.
func (w *Writer) Begin(m Meta) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.begun || w.closed {
		return
	}
	w.begun = true
	m.Format = Version
	w.write(frame(TypeMeta, mustJSON(m)))
	w.flush()
	if w.tmp == "" {
		return
	}
	if w.err == nil {
		if err := os.Rename(w.tmp, w.path); err != nil {
			w.fail(fmt.Errorf("moving it into place: %w", err))
		}
	}
	if w.err != nil {
		// What path held stays as it was.
		os.Remove(w.tmp)
	}
	w.tmp = ""
}

// addJSON writes one record of v as JSON. What cannot be encoded ends the
// recording with the reason: a recording is never worth failing a trace.
func (w *Writer) addJSON(t Type, v any) {
	b, err := json.Marshal(v)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if !w.stopped && w.err == nil {
			w.stopLocked(fmt.Sprintf("cannot record a %s record: %v", t, err))
		}
		return
	}
	w.addLocked(t, b)
}

// add writes one record unless the size bound forbids it.
func (w *Writer) add(t Type, payload []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.addLocked(t, payload)
}

// addLocked writes one record and reports whether it did. The events
// before it go first.
func (w *Writer) addLocked(t Type, payload []byte) bool {
	if !w.begun || w.stopped || w.err != nil {
		return false
	}
	if t != TypeEvents && len(w.events) > 0 {
		w.flushEvents()
		if w.stopped || w.err != nil {
			return false
		}
	}
	if w.max > 0 && w.size+int64(frameSize+len(payload)) > w.max-reserve {
		w.stopLocked(fmt.Sprintf("the recording reached --max-size (%d bytes)", w.max))
		return false
	}
	w.write(frame(t, payload))
	return true
}

// stopLocked ends the recording early: what the assembler had is flushed
// at the last time recorded, so analysis ends where recording did.
func (w *Writer) stopLocked(why string) {
	if w.stopped {
		return
	}
	w.write(frame(TypeFlush, u64(w.last)))
	w.write(frame(TypeEnd, mustJSON(End{Truncated: why})))
	w.stopped = true
	w.flush()
	if w.Truncated != nil {
		w.Truncated(why)
	}
}

func (w *Writer) View(v *resolve.View)          { w.addJSON(TypeView, v) }
func (w *Writer) Name(n Name)                   { w.addJSON(TypeName, n) }
func (w *Writer) Facts(f *node.Facts)           { w.addJSON(TypeFacts, f) }
func (w *Writer) Rules(r Rules)                 { w.addJSON(TypeRules, r) }
func (w *Writer) Conntrack(s ConntrackSnapshot) { w.addJSON(TypeConntrack, s) }
func (w *Writer) Services(targets []nf.Target)  { w.addJSON(TypeServices, targets) }
func (w *Writer) IfName(n IfName)               { w.addJSON(TypeIfName, n) }
func (w *Writer) Lab(v any)                     { w.addJSON(TypeLab, v) }
func (w *Writer) Lost(total uint64)             { w.add(TypeLost, u64(total)) }
func (w *Writer) DNS(d DNS)                     { w.addJSON(TypeDNS, d) }
func (w *Writer) Resolution(v any)              { w.addJSON(TypeResolution, v) }

// Event records an event handed to the assembler. Events are written in
// batches (TypeEvents), at each tick and before any other record.
func (w *Writer) Event(ev nf.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.begun || w.stopped || w.err != nil {
		return
	}
	n := len(w.events)
	w.events = appendEvent(w.events, &w.prev, &ev)
	if w.max > 0 && w.size+int64(frameSize+len(w.events)) > w.max-reserve {
		// The events before this one fit, this one does not.
		w.events = w.events[:n]
		w.flushEvents()
		w.stopLocked(fmt.Sprintf("the recording reached --max-size (%d bytes)", w.max))
		return
	}
	w.prev = ev
	w.eventsLast = max(w.eventsLast, ev.Time)
	if len(w.events) >= eventBatch {
		w.flushEvents()
	}
}

// flushEvents writes the events not yet written as one record.
func (w *Writer) flushEvents() {
	if len(w.events) > 0 && w.addLocked(TypeEvents, w.events) {
		w.last = max(w.last, w.eventsLast)
	}
	w.events, w.prev, w.eventsLast = w.events[:0], nf.Event{}, 0
}

// Tick records the assembler's clock and flushes what was written.
func (w *Writer) Tick(now uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.addLocked(TypeTick, u64(now)) {
		w.last = max(w.last, now)
	}
	if !w.stopped && w.begun {
		w.flush()
	}
}

// Flush records the end of the trace, when the assembler reported every
// connection still open.
func (w *Writer) Flush(now uint64) { w.add(TypeFlush, u64(now)) }

// Close writes the end record and closes the file. It returns the first
// error writing met: the recording is incomplete. A recording that never
// began is removed, and what path held before is left as it was.
func (w *Writer) Close(end End) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if !w.begun {
		w.f.Close()
		if w.tmp != "" {
			os.Remove(w.tmp)
		}
		return nil
	}
	if !w.stopped && w.err == nil && len(w.events) > 0 {
		w.flushEvents()
	}
	if !w.stopped && w.err == nil {
		w.write(frame(TypeEnd, mustJSON(end)))
		w.stopped = true
	}
	w.flush()
	w.fail(w.f.Close())
	if w.err != nil {
		return fmt.Errorf("the recording %s is incomplete: writing it failed: %w", w.path, w.err)
	}
	return nil
}
