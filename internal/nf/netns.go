package nf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
)

// NetNS names a network namespace: what the user typed and where it is.
type NetNS struct {
	Spec  string // as given: a name under /run/netns, a path, or a PID
	Path  string // the file to open
	Inode uint32 // the namespace's inode number: what the kernel side reports
}

func (n NetNS) String() string {
	if n.Spec == "" {
		return fmt.Sprintf("own network namespace (net:[%d])", n.Inode)
	}
	return fmt.Sprintf("%s (net:[%d])", n.Spec, n.Inode)
}

// ResolveNetNS finds a network namespace by name (ip netns), path or PID.
// An empty spec is the calling thread's namespace.
func ResolveNetNS(spec string) (NetNS, error) {
	path := "/proc/thread-self/ns/net"
	switch {
	case spec == "":
	case strings.Contains(spec, "/"):
		path = spec
	case isPID(spec):
		path = filepath.Join("/proc", spec, "ns/net")
	default:
		path = filepath.Join("/run/netns", spec)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		if os.IsNotExist(err) {
			return NetNS{}, fmt.Errorf("network namespace %q not found (%s does not exist); list them with `ip netns list`", spec, path)
		}
		return NetNS{}, fmt.Errorf("network namespace %q: %w", spec, err)
	}
	return NetNS{Spec: spec, Path: path, Inode: uint32(st.Ino)}, nil
}

// ErrNetNSGone: the traced namespace was deleted, or its process exited.
var ErrNetNSGone = errors.New("network namespace gone")

// Check reports whether the namespace is still there (the calling
// process's own always is).
func (n NetNS) Check() error {
	if n.Spec == "" {
		return nil
	}
	var st syscall.Stat_t
	if err := syscall.Stat(n.Path, &st); err != nil || uint32(st.Ino) != n.Inode {
		return fmt.Errorf("%w: the traced network namespace %s was deleted (or its process exited) while tracing; there is nothing more to trace there", ErrNetNSGone, n.Spec)
	}
	return nil
}

func isPID(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n > 0
}

// InNetNS runs fn on an OS thread switched into ns and switches back. Sockets
// and netfilter links created by fn belong to ns. If switching back fails the
// thread is left locked, so the Go runtime discards it instead of reusing a
// thread in the wrong namespace.
func InNetNS(ns NetNS, fn func() error) error {
	if ns.Spec == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("getting current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(ns.Path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening network namespace %s: %w", ns.Path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", ns.Path, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("returning from network namespace %s: %w", ns.Path, err)
	}
	runtime.UnlockOSThread()
	return fnErr
}
