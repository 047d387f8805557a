package output

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/svctrace/svctrace/internal/describe"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/svctrace/svctrace/internal/report"
)

// PcapNG writes the packets of each connection for Wireshark: one record
// per observation, the packet as that point saw it (before or after NAT),
// on an interface named for the point ("PREROUTING post-dnat"), with
// svctrace's annotation as the packet comment.
type PcapNG struct {
	out    io.Writer
	opts   Options
	w      *pcapgo.NgWriter
	ifaces map[string]int
	err    error
}

func newPcapNG(w io.Writer, opts Options) *PcapNG {
	return &PcapNG{out: w, opts: opts, ifaces: map[string]int{}}
}

func (p *PcapNG) iface(name, desc string) int {
	if id, ok := p.ifaces[name]; ok {
		return id
	}
	intf := pcapgo.NgInterface{Name: name, Description: desc, LinkType: layers.LinkTypeRaw,
		SnapLength: uint32(nf.MaxSnaplen), TimestampResolution: 9}
	var id int
	if p.w == nil {
		p.w, p.err = pcapgo.NewNgWriterInterface(p.out, intf, pcapgo.NgWriterOptions{
			SectionInfo: pcapgo.NgSectionInfo{Application: "svctrace", Comment: "packets of traced connections: as they entered the node's netfilter hooks, after each translation, where dropped"}})
	} else if p.err == nil {
		id, p.err = p.w.AddInterface(intf)
	}
	p.ifaces[name] = id
	return id
}

func (p *PcapNG) Conn(r report.Conn) {
	c := r.Conn
	verdict := fmt.Sprintf("connection #%d %s → %s: %s", c.ID, c.Client, c.VIP, c.Verdict)
	if e := r.Explanation; e != nil {
		for _, x := range []string{e.Service, e.Blame} {
			if x != "" {
				verdict += "; " + x
			}
		}
	}
	for _, s := range c.Steps {
		if len(s.Data) == 0 || p.err != nil {
			continue
		}
		point, desc := fmt.Sprintf("%s %s", s.Hook, s.Stage), fmt.Sprintf("netfilter %s hook, %s (priority %d)", s.Hook, s.Stage, s.Stage.Priority())
		if s.Kind == nf.KindDrop {
			point, desc = "drop", "packets as the kernel freed them (dropped)"
		}
		if s.Node != "" { // a timeline stitched from several nodes
			point, desc = s.Node+" "+point, "node "+s.Node+": "+desc
		}
		id := p.iface(point, desc)
		what := describe.Step(s)
		if what == "" {
			what = fmt.Sprintf("%s %s", s.Flags, s.Tuple)
		}
		what += dnatName(r, s)
		ci := gopacket.CaptureInfo{CaptureLength: len(s.Data), Length: ipLength(s.Data), InterfaceIndex: id}
		if p.opts.Wall != nil {
			ci.Timestamp = p.opts.Wall(s.Time)
		}
		if p.err == nil {
			p.err = p.w.WritePacketWithOptions(ci, s.Data, pcapgo.NgPacketOptions{
				Comments: []string{fmt.Sprintf("svctrace %s: %s | %s", point, what, verdict)}})
		}
	}
}

// ipLength is the length of the packet whose first bytes (from its IP
// header) data holds, as its header says: readers then know what was left
// out, rather than take the packet as malformed.
func ipLength(data []byte) int {
	n := 0
	switch {
	case len(data) >= 4 && data[0]>>4 == 4:
		n = int(binary.BigEndian.Uint16(data[2:]))
	case len(data) >= 6 && data[0]>>4 == 6:
		n = 40 + int(binary.BigEndian.Uint16(data[4:]))
	}
	// A GSO packet's header may say 0 (IPv6 big TCP); never less than held.
	return max(n, len(data))
}

func (p *PcapNG) Lost(uint64)                {}
func (p *PcapNG) Diagnosis(report.Diagnosis) {}

func (p *PcapNG) Resolution(report.Resolution) {}

// Summary ends the file; a trace without packets still gets a valid one.
func (p *PcapNG) Summary(Summary) {
	if p.w == nil {
		p.iface("svctrace", "no packet was captured")
	}
	if p.err == nil {
		p.err = p.w.Flush()
	}
}

// Err is the first error writing met.
func (p *PcapNG) Err() error { return p.err }
