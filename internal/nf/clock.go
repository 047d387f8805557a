package nf

import (
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Now is CLOCK_MONOTONIC in nanoseconds: the clock of Event.Time. Go's own
// monotonic clock is CLOCK_MONOTONIC read through the vDSO; one system call
// at start gives its origin, so reading it (for every event) costs none.
func Now() uint64 { return monoBase + uint64(time.Since(wallBase)) }

var wallBase, monoBase = func() (time.Time, uint64) {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Now(), uint64(ts.Nano())
}()

// Clock maps Event.Time to wall-clock time: at monotonic time Mono it was
// Wall.
type Clock struct {
	Wall time.Time
	Mono uint64
}

// NewClock reads both clocks now.
func NewClock() Clock { return Clock{Wall: time.Now(), Mono: Now()} }

// Time is the wall-clock time of monotonic time t.
func (c Clock) Time(t uint64) time.Time { return c.Wall.Add(time.Duration(int64(t) - int64(c.Mono))) }

// IfNames names the interfaces of one network namespace, re-reading the list
// when an unknown index is asked for (at most once a second).
type IfNames struct {
	ns    NetNS
	mu    sync.Mutex
	names map[uint32]string
	read  time.Time
}

func NewIfNames(ns NetNS) *IfNames { return &IfNames{ns: ns} }

// Name returns the interface's name, or "" if it is unknown.
func (n *IfNames) Name(ifindex uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if name, ok := n.names[ifindex]; ok {
		return name
	}
	if time.Since(n.read) < time.Second {
		return ""
	}
	n.read = time.Now()
	InNetNS(n.ns, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		n.names = map[uint32]string{}
		for _, i := range ifs {
			n.names[uint32(i.Index)] = i.Name
		}
		return nil
	})
	return n.names[ifindex]
}
