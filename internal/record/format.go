// Package record writes and reads svctrace recordings: one self-contained
// file per trace (svctrace -w FILE) that `svctrace analyze` turns back into
// exactly what the live run printed, on any machine.
//
// The file is a 16-byte header — the magic "SVCTRACE", a little-endian
// uint16 format version, six zero bytes — followed by records, each a
// 13-byte frame and its payload. The frame (little-endian) is the type
// (uint8), the payload's length (uint32), the CRC-32 of those five bytes and
// the CRC-32 of those five bytes and the payload: every byte of a record is
// checked, and a length is trusted only once its own checksum matched, so a
// recording cut short (a killed trace, a full disk) is told apart from a
// corrupt one. Records are appended as the trace runs, so a crash loses at
// most what was not yet flushed (the writer flushes at every tick, 10 times a
// second while connections are followed, once a second otherwise). Readers
// skip record types they do not know, so newer versions can add some.
// Version 3 records kernel events in binary batches (TypeEvents, events.go)
// where versions 1 and 2 wrote one JSON record each (TypeEvent); all three
// are read. Version 1 had a 9-byte frame whose CRC covered the payload only.
package record

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/conntrack"
	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/node"
	"github.com/svctrace/svctrace/internal/resolve"
)

// Magic starts every recording.
const Magic = "SVCTRACE"

// Version is the format this package writes. It reads it and versions 1
// and 2.
const Version = 3

const (
	headerSize = 16
	frameSize  = 13 // version 2
	frameSize1 = 9  // version 1: type, length, CRC-32 of the payload
	// MaxRecord bounds one record's payload: larger means corruption.
	MaxRecord = 64 << 20
)

// Type says what a record holds.
type Type uint8

const (
	TypeMeta      Type = 1  // Meta (JSON), first
	TypeView      Type = 2  // the Service's Kubernetes objects (JSON resolve.View), at the start and at every change
	TypeRules     Type = 3  // kube-proxy's rules and processes on the node (JSON Rules), with every view
	TypeName      Type = 7  // an address named by a lookup (JSON Name)
	TypeLab       Type = 8  // svctrace lab's scenarios, clients and objects (JSON, the lab's own)
	TypeFacts     Type = 9  // node facts read again for a connection's explanation (JSON node.Facts)
	TypeConntrack Type = 4  // conntrack entries of the traced addresses (JSON ConntrackSnapshot; a []Conntrack before 2026-12)
	TypeServices  Type = 5  // the addresses the node should translate (JSON []nf.Target)
	TypeIfName    Type = 6  // an interface of the node (JSON IfName)
	TypeEvent     Type = 10 // a kernel event (JSON nf.Event); versions 1 and 2 wrote these
	TypeEvents    Type = 15 // kernel events, binary, each as it differs from the one before (events.go)
	TypeTick      Type = 11 // the assembler's clock advanced (uint64 ns)
	TypeLost      Type = 12 // events lost so far (uint64)
	TypeFlush     Type = 13 // the trace ended at this time (uint64 ns)
	TypeEnd       Type = 14 // a clean end (JSON End)
	// TypeDNS is the cluster's DNS Service traced beside the Service
	// (--probe=dns): its objects and the node's facts for it (JSON DNS).
	TypeDNS Type = 16
	// TypeResolution is a Service's name resolved as a Pod does
	// (--probe=dns): the report as the live run printed it (JSON, the
	// printer's own), where it printed it.
	TypeResolution Type = 17
)

func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("type %d", uint8(t))
}

var typeNames = map[Type]string{TypeMeta: "meta", TypeView: "view", TypeRules: "rules", TypeName: "name", TypeLab: "lab", TypeFacts: "facts", TypeConntrack: "conntrack",
	TypeServices: "services", TypeIfName: "interface", TypeEvent: "event", TypeEvents: "events", TypeTick: "tick", TypeLost: "lost",
	TypeFlush: "flush", TypeEnd: "end", TypeDNS: "dns", TypeResolution: "resolution"}

// Meta describes the trace: what ran, where, and how the live run
// assembled and printed.
type Meta struct {
	// Format repeats the header's version (from version 3 on), which no
	// checksum covers: a flipped bit there cannot pass for another version.
	Format  uint16       `json:"format,omitzero"`
	Command []string     `json:"command"` // svctrace's arguments
	Mode    string       `json:"mode"`    // "trace", "service" or "lab"
	Host    string       `json:"host"`
	Kernel  string       `json:"kernel"`
	Backend string       `json:"backend"`
	Links   int          `json:"links"`
	Drops   string       `json:"drops"`
	NetNS   uint32       `json:"netns"` // the traced namespace's inode
	Node    string       `json:"node,omitempty"`
	Addrs   []netip.Addr `json:"node_addrs,omitempty"`
	Targets []nf.Target  `json:"targets"`
	// The live run's clock: monotonic time Mono was wall time Wall.
	Wall time.Time `json:"wall"`
	Mono uint64    `json:"mono"`
	// Assembly: the no-reply timeout and the connection count limit.
	Timeout time.Duration `json:"timeout"`
	Count   int           `json:"count,omitempty"`
	// Service mode: the Service.
	Namespace string `json:"namespace,omitempty"`
	Service   string `json:"service,omitempty"`
}

// Name is what a lookup (the API, by IP) said of an address.
type Name struct {
	Addr netip.Addr `json:"addr"`
	Name string     `json:"name"`
	// Peer, when set, is who the address is as network policies see it
	// (its Pod and namespace labels, a Node, or neither), for the policy
	// a drop is blamed on; a record with a Peer names nothing.
	Peer *resolve.Peer `json:"peer,omitempty"`
}

// WallClock is the live run's monotonic-to-wall mapping.
func (m *Meta) WallClock() func(uint64) time.Time {
	return nf.Clock{Wall: m.Wall, Mono: m.Mono}.Time
}

// IfName names one interface of the node.
type IfName struct {
	Index uint32 `json:"index"`
	Name  string `json:"name"`
}

// Conntrack is one conntrack entry, as conntrack -L shows it.
type Conntrack = conntrack.Entry

// End closes a recording that ended cleanly.
type End struct {
	Conns     int    `json:"connections"`
	Truncated string `json:"truncated,omitempty"` // why events stopped being recorded early
}

// DNS is the cluster's DNS Service as a --probe=dns trace assessed it:
// its objects, and the node's rules and facts for its endpoints.
type DNS struct {
	View  *resolve.View `json:"view"`
	Rules Rules         `json:"rules"`
}

// Rules is what the node held when the objects were read: kube-proxy's
// rules (or why they could not be read) and its processes.
type Rules struct {
	Rules          *kubeproxy.Ruleset `json:"rules,omitempty"`
	Err            string             `json:"error,omitempty"`
	KubeProxy      []int              `json:"kube_proxy_pids,omitempty"`
	KubeProxyKnown bool               `json:"kube_proxy_known,omitempty"`
	// Bridges are the node's bridges (their ports' hairpin mode).
	Bridges []resolve.Bridge `json:"bridges,omitempty"`
	// Conntrack is the node's conntrack table: size, counters, translated
	// UDP entries.
	Conntrack *conntrack.Table `json:"conntrack,omitempty"`
	// Net is the node's network as the Service's endpoints needed it:
	// routes, neighbours, sysctls, the endpoint Pods' sockets.
	Net *node.Facts `json:"net,omitempty"`
}

func header() []byte {
	b := make([]byte, headerSize)
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[8:], Version)
	return b
}

// frame is one record: its frame (type, length, the CRC-32 of both, the
// CRC-32 of both and the payload) and its payload.
func frame(t Type, payload []byte) []byte {
	b := make([]byte, frameSize, frameSize+len(payload))
	b[0] = byte(t)
	binary.LittleEndian.PutUint32(b[1:], uint32(len(payload)))
	head := crc32.ChecksumIEEE(b[:5])
	binary.LittleEndian.PutUint32(b[5:], head)
	binary.LittleEndian.PutUint32(b[9:], crc32.Update(head, crc32.IEEETable, payload))
	return append(b, payload...)
}

func u64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // our own types always marshal
	}
	return b
}

// FormatError is a recording that cannot be read, with where: the byte
// offset of the record (or header) found corrupt.
type FormatError struct {
	Offset int64
	Err    error
}

func (e *FormatError) Error() string { return fmt.Sprintf("byte %d: %v", e.Offset, e.Err) }
func (e *FormatError) Unwrap() error { return e.Err }

// ErrNotRecording: the file does not start with the magic.
var ErrNotRecording = errors.New("not an svctrace recording (no SVCTRACE header)")
