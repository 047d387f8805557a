package nf

import (
	"encoding/binary"
	"strconv"

	"github.com/miekg/dns"
)

// DNS is what svctrace reads of a DNS message: its header and its first
// question, never its answers. The kernel captures them from packets to
// and from port 53 of the cluster's DNS Service (--dns-questions), the one
// exception to "headers only".
type DNS struct {
	ID       uint16 `json:"id"`
	Response bool   `json:"response,omitzero"`
	// Rcode is a response's: NOERROR, NXDOMAIN, SERVFAIL…
	Rcode     string `json:"rcode,omitempty"`
	Truncated bool   `json:"truncated,omitzero"` // TC: too big for UDP
	Name      string `json:"name"`               // the first question's, an FQDN
	Type      string `json:"type"`               // A, AAAA, SRV…
	// Answers is a response's answer count (ANCOUNT): how many records,
	// not what they say.
	Answers int `json:"answers,omitzero"`
}

// String is the message in a line: "A web.shop.svc.cluster.local.",
// with a response's outcome: "… NXDOMAIN", "… NOERROR (1 answer)".
func (d DNS) String() string {
	s := d.Type + " " + d.Name
	if !d.Response {
		return s
	}
	s += " " + d.Rcode
	switch {
	case d.Answers == 1:
		s += " (1 answer)"
	case d.Answers > 1:
		s += " (" + strconv.Itoa(d.Answers) + " answers)"
	}
	if d.Truncated {
		s += " truncated"
	}
	return s
}

// AnswerIn is the answer to question q among msgs (the response with its
// ID), if one is there.
func (q DNS) AnswerIn(msgs []DNS) (DNS, bool) {
	for _, r := range msgs {
		if r.Response && r.ID == q.ID {
			return r, true
		}
	}
	return DNS{}, false
}

const dnsHeader = 12

// DNSPayload finds the DNS message in a packet's first bytes from its IP
// header (Event.Data) when it goes to or comes from port 53 over UDP or
// TCP: its offset (after a TCP message's length), or -1.
func DNSPayload(data []byte) int {
	if len(data) < 1 {
		return -1
	}
	var proto byte
	var l3 int
	switch data[0] >> 4 {
	case 4:
		if len(data) < 20 {
			return -1
		}
		l3, proto = int(data[0]&0x0f)*4, data[9]
		if binary.BigEndian.Uint16(data[6:8])&0x1fff != 0 {
			return -1 // a later fragment
		}
	case 6:
		if len(data) < 40 {
			return -1
		}
		l3, proto = 40, data[6] // extension headers: not DNS as far as svctrace reads
	default:
		return -1
	}
	if len(data) < l3+8 {
		return -1
	}
	l4 := data[l3:]
	if binary.BigEndian.Uint16(l4[0:2]) != 53 && binary.BigEndian.Uint16(l4[2:4]) != 53 {
		return -1
	}
	switch proto {
	case byte(UDP):
		return l3 + 8
	case byte(TCP):
		if len(l4) < 13 {
			return -1
		}
		// A segment that starts a message: its length, then the message.
		return l3 + int(l4[12]>>4)*4 + 2
	}
	return -1
}

// ParseDNS reads the DNS header and first question of a packet's first
// bytes from its IP header: false when they hold none (no DNS payload, or
// cut before the question's end). end is where the question ends in data.
func ParseDNS(data []byte) (d DNS, end int, ok bool) {
	off := DNSPayload(data)
	if off < 0 || len(data) < off+dnsHeader {
		return DNS{}, 0, false
	}
	msg := data[off:]
	flags := binary.BigEndian.Uint16(msg[2:4])
	if binary.BigEndian.Uint16(msg[4:6]) == 0 { // QDCOUNT
		return DNS{}, 0, false
	}
	d = DNS{ID: binary.BigEndian.Uint16(msg[0:2]), Response: flags&0x8000 != 0, Truncated: flags&0x0200 != 0}
	if d.Response {
		d.Rcode = dns.RcodeToString[int(flags&0x000f)]
		d.Answers = int(binary.BigEndian.Uint16(msg[6:8]))
	}
	name, n, err := dns.UnpackDomainName(msg, dnsHeader)
	if err != nil || len(msg) < n+4 {
		return DNS{}, 0, false
	}
	d.Name = name
	t := binary.BigEndian.Uint16(msg[n : n+2])
	if d.Type = dns.TypeToString[t]; d.Type == "" {
		d.Type = "TYPE" + strconv.Itoa(int(t))
	}
	return d, off + n + 4, true
}

// KeepDNSQuestion cuts a packet to or from port 53 after its DNS
// question, or after its DNS header when the question cannot be read (a
// name longer than the bytes captured): what svctrace keeps of its
// payload. Other packets are left as they are.
func KeepDNSQuestion(data []byte) []byte {
	off := DNSPayload(data)
	if off < 0 {
		return data
	}
	if _, end, ok := ParseDNS(data); ok {
		return data[:end]
	}
	return data[:min(len(data), off+dnsHeader)]
}
