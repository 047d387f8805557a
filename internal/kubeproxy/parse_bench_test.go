package kubeproxy

import (
	"net/netip"
	"strconv"
	"testing"
)

// BenchmarkParseIPTablesSave10k parses what kube-proxy writes for 10,000
// Services of 10 endpoints each.
func BenchmarkParseIPTablesSave10k(b *testing.B) {
	var sps []ServicePort
	for i := range 10000 {
		sp := ServicePort{Namespace: "ns" + strconv.Itoa(i%100), Name: "svc" + strconv.Itoa(i), PortName: "http", Protocol: "tcp",
			ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80}
		for j := range 10 {
			sp.Endpoints = append(sp.Endpoints, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(200 + j), byte(i >> 8), byte(i)}), 8080))
		}
		sps = append(sps, sp)
	}
	text := IPTablesRestore(sps, Options{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")})
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if err := ParseIPTablesSave(&Ruleset{}, text); err != nil {
			b.Fatal(err)
		}
	}
}
