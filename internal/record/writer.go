package record

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/svctrace/svctrace/internal/resolve"
	"github.com/svctrace/svctrace/internal/tracer"
)

// Writer appends records to a recording. Safe for concurrent use.
type Writer struct {
	mu      sync.Mutex
	f       io.WriteCloser
	w       *bufio.Writer
	size    int64
	max     int64
	last    uint64 // the latest event or tick time
	stopped bool   // max size reached: nothing more is recorded
	closed  bool
	err     error
	// Truncated is called once when the size bound is reached.
	Truncated func(why string)
}

// reserve is kept free below the size bound for the closing records.
const reserve = 4 << 10

// Create starts a recording at path. maxSize bounds the file (0: no
// bound); when it is reached, recording stops cleanly and the trace goes on.
func Create(path string, maxSize int64) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("creating the recording: %w", err)
	}
	return newWriter(f, maxSize)
}

func newWriter(f io.WriteCloser, maxSize int64) (*Writer, error) {
	if maxSize > 0 && maxSize < 2*reserve {
		return nil, fmt.Errorf("--max-size %d is too small: a recording needs at least %d bytes", maxSize, 2*reserve)
	}
	w := &Writer{f: f, w: bufio.NewWriterSize(f, 64<<10), max: maxSize}
	w.write(header())
	return w, w.err
}

func (w *Writer) write(b []byte) {
	if w.err != nil {
		return
	}
	_, w.err = w.w.Write(b)
	w.size += int64(len(b))
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

// addLocked writes one record and reports whether it did.
func (w *Writer) addLocked(t Type, payload []byte) bool {
	if w.stopped || w.err != nil {
		return false
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
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if w.Truncated != nil {
		w.Truncated(why)
	}
}

func (w *Writer) Meta(m Meta)                      { w.addJSON(TypeMeta, m) }
func (w *Writer) View(v *resolve.View)             { w.addJSON(TypeView, v) }
func (w *Writer) Name(n Name)                      { w.addJSON(TypeName, n) }
func (w *Writer) Rules(r Rules)                    { w.addJSON(TypeRules, r) }
func (w *Writer) Conntrack(entries []Conntrack)    { w.addJSON(TypeConntrack, entries) }
func (w *Writer) Services(targets []tracer.Target) { w.addJSON(TypeServices, targets) }
func (w *Writer) IfName(n IfName)                  { w.addJSON(TypeIfName, n) }
func (w *Writer) Lab(v any)                        { w.addJSON(TypeLab, v) }
func (w *Writer) Lost(total uint64)                { w.add(TypeLost, u64(total)) }

// Event records an event handed to the assembler.
func (w *Writer) Event(ev tracer.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	b, err := json.Marshal(ev)
	if err != nil {
		w.stopLocked(fmt.Sprintf("cannot record an event: %v", err))
		return
	}
	if w.addLocked(TypeEvent, b) {
		w.last = max(w.last, ev.Time)
	}
}

// Tick records the assembler's clock and flushes what was written.
func (w *Writer) Tick(now uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.addLocked(TypeTick, u64(now)) {
		w.last = max(w.last, now)
	}
	if w.err == nil && !w.stopped {
		w.err = w.w.Flush()
	}
}

// Flush records the end of the trace, when the assembler reported every
// connection still open.
func (w *Writer) Flush(now uint64) { w.add(TypeFlush, u64(now)) }

// Close writes the end record and closes the file. It returns the first
// error writing met.
func (w *Writer) Close(end End) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if !w.stopped && w.err == nil {
		w.write(frame(TypeEnd, mustJSON(end)))
		w.stopped = true
	}
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if err := w.f.Close(); w.err == nil {
		w.err = err
	}
	if w.err != nil {
		return fmt.Errorf("writing the recording: %w", w.err)
	}
	return nil
}

// Discard closes and removes a recording that holds nothing yet.
func (w *Writer) Discard() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	w.f.Close()
	if f, ok := w.f.(*os.File); ok {
		os.Remove(f.Name())
	}
}
