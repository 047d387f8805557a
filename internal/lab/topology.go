package lab

import (
	"crypto/rand"
	"encoding/hex"
	"net/netip"
)

// Prefix starts the name of every network namespace a lab creates.
const Prefix = "svctrace-lab-"

// Addresses. They exist only inside the lab's namespaces: the node's default
// route leads into the lab's upstream namespace, which forwards nothing.
var (
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	bridgeNet   = netip.MustParsePrefix("10.244.0.1/24")   // cbr0, the pods' gateway
	clientNet   = netip.MustParsePrefix("10.99.0.2/24")    // the client
	nodeNet     = netip.MustParsePrefix("10.99.0.1/24")    // the node, client side
	uplinkNet   = netip.MustParsePrefix("10.255.255.1/30") // the node, upstream side

	// The node is dual-stack: the same roles' IPv6 addresses (ULA, fd00::/8).
	ClusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/56")
	bridgeNet6   = netip.MustParsePrefix("fd00:10:244::1/64")
	clientNet6   = netip.MustParsePrefix("fd00:10:99::2/64")
	nodeNet6     = netip.MustParsePrefix("fd00:10:99::1/64")
	uplinkNet6   = netip.MustParsePrefix("fd00:10:255::1/126")
)

// ClientIP and ClientIP6 are the lab client's addresses.
var (
	ClientIP  = clientNet.Addr()
	ClientIP6 = clientNet6.Addr()
)

// nsName is the name of one of lab id's namespaces.
func nsName(id, role string) string { return Prefix + id + "-" + role }

func newID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
