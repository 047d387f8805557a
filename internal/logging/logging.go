// Package logging is svctrace's one logger for stderr: one line per
// message, each starting "svctrace: ", warnings "svctrace: warning: ", and
// the details of --verbose (debug) only when asked. kubectl svctrace tells
// its debug Pods' messages from their output by that prefix.
package logging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
)

// ErrReported is returned when what went wrong was already said (logged,
// or shown as findings): the exit status is 1, with nothing more to say.
var ErrReported = errors.New("")

// Prefix starts every line.
const Prefix = "svctrace: "

// New is the logger on w; verbose lets debug messages through.
func New(w io.Writer, verbose bool) *slog.Logger {
	return slog.New(&handler{w: w, mu: &sync.Mutex{}, verbose: verbose})
}

// Discard is a logger that writes nothing.
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// Printf is l's debug messages as a printf-style function, for the packages
// that take one (the tracer's verifier logs, the credentials passed over).
func Printf(l *slog.Logger) func(string, ...any) {
	return func(format string, args ...any) {
		if l.Enabled(context.Background(), slog.LevelDebug) {
			l.Debug(fmt.Sprintf(format, args...))
		}
	}
}

type handler struct {
	w       io.Writer
	mu      *sync.Mutex
	verbose bool
	attrs   []slog.Attr
}

func (h *handler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.verbose
}

func (h *handler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(Prefix)
	if r.Level >= slog.LevelWarn && r.Level < slog.LevelError {
		b.WriteString("warning: ")
	}
	b.WriteString(r.Message)
	attr := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		attr(a)
	}
	r.Attrs(attr)
	b.WriteString("\n")
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return &c
}

// WithGroup: svctrace's messages have no groups; attributes stay flat.
func (h *handler) WithGroup(string) slog.Handler { return h }
