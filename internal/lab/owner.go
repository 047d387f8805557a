package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/svctrace/svctrace/internal/topo"
	"golang.org/x/sys/unix"
)

// A lab's process holds a lock on the lab's file in lockDir for as long as
// it runs: a lab whose lock is held is in use, and Cleanup leaves it alone.
// The lock goes with the process, however it ends; a lab kept with --keep,
// or left by a crash, has a file nobody locks (or none).
var lockDir = "/run/svctrace/labs"

func lockPath(id string) string { return filepath.Join(lockDir, id+".lock") }

// claim creates lab id's lock file and locks it for this process.
func claim(id string) (*os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", lockDir, err)
	}
	f, err := os.OpenFile(lockPath(id), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lab %s is in use by another process", id)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// holder returns the process that holds lab id's lock: its PID, or 0 when
// none does (or the lab has no lock file: an older svctrace made it).
func holder(id string) int {
	f, err := os.Open(lockPath(id))
	if err != nil {
		return 0
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB) == nil {
		return 0 // closing the file releases it
	}
	b := make([]byte, 16)
	n, _ := f.Read(b)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return -1 // held, by a process that has not said which yet
	}
	return pid
}

// Listed is a lab that is up, and the process running it.
type Listed struct {
	ID string
	// PID is the svctrace process running the lab; 0: none (kept with
	// --keep, or left behind by a crash); -1: one whose PID is unknown.
	PID int
}

// InUse reports whether a running process owns the lab.
func (l Listed) InUse() bool { return l.PID != 0 }

// List returns the labs that are up.
func List() []Listed {
	var out []Listed
	seen := map[string]bool{}
	for _, n := range topo.List(Prefix) {
		id, _, _ := strings.Cut(strings.TrimPrefix(n, Prefix), "-")
		if !seen[id] {
			seen[id] = true
			out = append(out, Listed{ID: id, PID: holder(id)})
		}
	}
	return out
}

// Describe says which labs are in use and which are left over, for a note.
func Describe(ls []Listed) string {
	var used, left []string
	for _, l := range ls {
		switch {
		case l.PID > 0:
			used = append(used, fmt.Sprintf("%s (svctrace pid %d)", l.ID, l.PID))
		case l.InUse():
			used = append(used, l.ID)
		default:
			left = append(left, l.ID)
		}
	}
	var parts []string
	if len(used) > 0 {
		parts = append(parts, fmt.Sprintf("%d lab(s) in use by a running svctrace: %s", len(used), strings.Join(used, ", ")))
	}
	if len(left) > 0 {
		parts = append(parts, fmt.Sprintf("%d lab(s) kept or left from earlier runs: %s", len(left), strings.Join(left, ", ")))
	}
	return strings.Join(parts, "; ")
}

// idPattern is what newID makes.
var idPattern = regexp.MustCompile(`^[0-9a-f]{6}$`)

// ParseID reads a lab id as svctrace lab --keep printed it, or the name of
// one of the lab's namespaces.
func ParseID(s string) (string, error) {
	id := s
	if rest, ok := strings.CutPrefix(s, Prefix); ok {
		id, _, _ = strings.Cut(rest, "-")
	}
	if !idPattern.MatchString(id) {
		return "", fmt.Errorf("invalid lab id %q: a lab id is 6 hex digits, as svctrace lab --keep printed it (svctrace lab cleanup without one removes every lab not in use)", s)
	}
	return id, nil
}

// ErrInUse: a lab's process still runs it.
var ErrInUse = errors.New("in use")

// Cleanup removes the lab with this id, or every lab if id is empty: kills
// the processes in its namespaces and deletes the namespaces. A lab whose
// svctrace still runs is left alone, with an error wrapping ErrInUse. It
// returns the namespaces it removed, and what it could not remove.
func Cleanup(id string) ([]string, error) {
	var ids []string
	if id == "" {
		for _, l := range List() {
			ids = append(ids, l.ID)
		}
	} else {
		var err error
		if id, err = ParseID(id); err != nil {
			return nil, err
		}
		if len(topo.List(Prefix+id+"-")) == 0 {
			return nil, fmt.Errorf("no lab %s is up%s", id, upList())
		}
		ids = []string{id}
	}
	if len(ids) > 0 && os.Geteuid() != 0 {
		return nil, errors.New("removing a lab deletes network namespaces: run it as root (sudo)")
	}
	var removed []string
	var errs []error
	for _, id := range ids {
		f, err := os.OpenFile(lockPath(id), os.O_RDWR, 0)
		if err == nil {
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
				f.Close()
				errs = append(errs, fmt.Errorf("lab %s: %w by svctrace%s: stop that first (Ctrl-C)", id, ErrInUse, pidOf(holder(id))))
				continue
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("lab %s: %w", id, err))
			continue
		}
		r, err := remove(id)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		}
		if f != nil {
			if err == nil {
				os.Remove(f.Name())
			}
			f.Close()
		}
	}
	return removed, errors.Join(errs...)
}

// remove deletes lab id's namespaces (and the processes in them); it
// returns those it removed.
func remove(id string) ([]string, error) {
	names := topo.List(Prefix + id + "-")
	err := topo.Remove(names)
	var removed []string
	for _, n := range names {
		if _, serr := os.Stat("/run/netns/" + n); serr != nil {
			removed = append(removed, n)
		}
	}
	return removed, err
}

func pidOf(pid int) string {
	if pid > 0 {
		return fmt.Sprintf(" (pid %d)", pid)
	}
	return ""
}

func upList() string {
	var ids []string
	for _, l := range List() {
		ids = append(ids, l.ID)
	}
	if len(ids) == 0 {
		return " (no lab is up)"
	}
	return " (labs up: " + strings.Join(ids, ", ") + ")"
}
