// Package outstream is standard output as svctrace writes it: a write that
// fails, or a pipe whose reader went away, stops the run as Ctrl-C does,
// so that svctrace … | head ends and tears down at once.
package outstream

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// New is f as a Writer that calls broken on its first failure, and, if f
// is a pipe, when its reader goes away.
func New(f *os.File, broken context.CancelFunc) *Writer {
	w := &Writer{w: f, broken: broken}
	go w.watch(f)
	return w
}

// Writer is standard output as the commands write to it: the first write
// that fails (the reader of a pipe went away, a full disk) stops the run,
// as Ctrl-C does, and every write after it fails at once.
type Writer struct {
	w      io.Writer
	broken context.CancelFunc
	mu     sync.Mutex
	err    error
	// batch: writes wait in buf until Flush (or until it holds maxBatch).
	batch bool
	buf   []byte
}

// maxBatch bounds what a batch holds before it is written anyway.
const maxBatch = 64 << 10

func (o *Writer) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.err != nil {
		return 0, o.err
	}
	if o.batch {
		o.buf = append(o.buf, p...)
		if len(o.buf) >= maxBatch {
			o.flushLocked()
		}
		return len(p), o.err
	}
	n, err := o.w.Write(p)
	if err != nil {
		o.fail(err)
	}
	return n, err
}

// Batch makes writes wait for Flush (on), or go out as they come (off,
// after flushing what waits): a trace printing thousands of connections a
// second writes once per batch of them, not once each.
func (o *Writer) Batch(on bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !on {
		o.flushLocked()
	}
	o.batch = on
}

// Flush writes what waits; it returns the first write error, if any.
func (o *Writer) Flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked()
	return o.err
}

func (o *Writer) flushLocked() {
	if len(o.buf) == 0 || o.err != nil {
		o.buf = o.buf[:0]
		return
	}
	if _, err := o.w.Write(o.buf); err != nil {
		o.fail(err)
	}
	o.buf = o.buf[:0]
}

// fail keeps the first error and stops the run; o.mu is held.
func (o *Writer) fail(err error) {
	if o.err == nil {
		o.err = err
		o.broken()
	}
}

// Err is the first write error, if any.
func (o *Writer) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.err
}

// watch notices a pipe whose reader went away while nothing is written to
// it (a quiet trace piped into head), and stops the run: the kernel reports
// POLLERR on the pipe's writing end. Whatever is written after that fails.
func (o *Writer) watch(f *os.File) {
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		return
	}
	fds := []unix.PollFd{{Fd: int32(f.Fd())}} // no events: errors only
	for {
		n, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			o.broken()
		}
		return
	}
}
