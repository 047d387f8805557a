package report

import (
	"net/netip"

	"github.com/svctrace/svctrace/internal/probe"
)

// Resolution is a Service's name resolved as a client Pod's resolver
// resolves it (--probe=dns): where from, with which configuration, each
// name asked and what answered, and what is wrong.
type Resolution struct {
	// From is where the names were resolved: "pod front/client", "node".
	From string
	// Conf is the resolver's configuration in one line and where it was
	// read: "nameserver 10.96.0.10, search …, ndots 5 (/proc/412/root/etc/resolv.conf)".
	Conf string
	// Cluster is the cluster's DNS as svctrace found it: "10.96.0.10
	// (kube-system/kube-dns), domain cluster.local, from kubelet (pid 90: …)".
	Cluster string
	// Names are the forms of the Service's name resolved, in order: the
	// short name, name.namespace, the FQDN.
	Names []probe.Resolution
	// SentTo names the DNS endpoint each query was sent on to, by the
	// query's own address: the one the DNS Service's DNAT chose ("pod
	// kube-system/coredns-7d … 10.244.0.5:53"), read from the node's
	// conntrack table; whether it answered is the query's Rcode.
	SentTo map[netip.AddrPort]string
	// Findings are what is wrong, most important first.
	Findings []Finding
}
