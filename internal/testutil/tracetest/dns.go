package tracetest

import (
	"net"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/miekg/dns"
)

// DNSPacket builds an IPv4 packet from 10.244.1.20 (port sport) to
// 10.96.0.10 (port dport) carrying m, over TCP with its length first as
// DNS over TCP sends it: what the kernel captures of a DNS packet.
func DNSPacket(t testing.TB, tcp bool, sport, dport uint16, m *dns.Msg) []byte {
	t.Helper()
	msg, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{10, 244, 1, 20}, DstIP: net.IP{10, 96, 0, 10}}
	var l4 gopacket.SerializableLayer
	if tcp {
		ip.Protocol = layers.IPProtocolTCP
		seg := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), PSH: true, ACK: true, Window: 512}
		seg.SetNetworkLayerForChecksum(ip)
		l4, msg = seg, append([]byte{byte(len(msg) >> 8), byte(len(msg))}, msg...)
	} else {
		ip.Protocol = layers.IPProtocolUDP
		dgram := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
		dgram.SetNetworkLayerForChecksum(ip)
		l4 = dgram
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, l4, gopacket.Payload(msg)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
