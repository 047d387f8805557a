package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/kubeproxy"
	"github.com/svctrace/svctrace/internal/topo"
)

// nftRuleset lays sps out as kube-proxy's nftables mode does (the parts
// svctrace reads): the service-ips verdict map, a service chain per
// Service port that picks an endpoint chain with numgen, an endpoint chain
// per endpoint that DNATs.
func nftRuleset(sps []kubeproxy.ServicePort) string {
	var b strings.Builder
	chain := func(kind string, i int, sp kubeproxy.ServicePort, suffix string) string {
		return fmt.Sprintf("%s-%08X-%s/%s/%s/%s%s", kind, i, sp.Namespace, sp.Name, sp.Protocol, sp.PortName, suffix)
	}
	b.WriteString("table ip kube-proxy {\n chain mark-for-masquerade {\n  meta mark set meta mark or 0x4000\n }\n")
	b.WriteString(" map service-ips {\n  type ipv4_addr . inet_proto . inet_service : verdict\n }\n")
	b.WriteString(" chain services {\n  type nat hook prerouting priority dstnat; policy accept;\n  ip daddr . meta l4proto . th dport vmap @service-ips\n }\n")
	var elems []string
	for i, sp := range sps {
		svc := chain("service", i, sp, "")
		elems = append(elems, fmt.Sprintf("%s . %s . %d : goto %s", sp.ClusterIP, sp.Protocol, sp.Port, svc))
		var picks []string
		for j, ep := range sp.Endpoints {
			epc := chain("endpoint", i*len(sp.Endpoints)+j, sp, "__"+ep.Addr().String()+"/"+strconv.Itoa(int(ep.Port())))
			fmt.Fprintf(&b, " chain %s {\n  ip saddr %s jump mark-for-masquerade\n  meta l4proto %s dnat to %s\n }\n", epc, ep.Addr(), sp.Protocol, ep)
			picks = append(picks, fmt.Sprintf("%d : goto %s", j, epc))
		}
		fmt.Fprintf(&b, " chain %s {\n  ip daddr %s %s dport %d ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n  numgen random mod %d vmap { %s }\n }\n",
			svc, sp.ClusterIP, sp.Protocol, sp.Port, len(picks), strings.Join(picks, ", "))
	}
	b.WriteString("}\n")
	// The map's elements in batches: one huge element list is slow to parse.
	for i := 0; i < len(elems); i += 1000 {
		fmt.Fprintf(&b, "add element ip kube-proxy service-ips { %s }\n", strings.Join(elems[i:min(i+1000, len(elems))], ", "))
	}
	return b.String()
}

// nftScale loads the ruleset into a namespace of its own and reads it as
// svctrace SERVICE does: every chain and map, and the rules of one
// Service's chain. It returns the load time (nft -f), the read times and
// the Service ports found.
func nftScale(sps []kubeproxy.ServicePort) (load time.Duration, reads []float64, ports int, err error) {
	name := fmt.Sprintf("svctrace-bench-nft-%d", os.Getpid())
	ns, err := topo.CreateNetNS(name)
	if err != nil {
		return 0, nil, 0, err
	}
	defer topo.DeleteNetNS(name)
	start := time.Now()
	if out, err := topo.Run(ns, nftRuleset(sps), "nft", "-f", "-"); err != nil {
		return 0, nil, 0, fmt.Errorf("loading the nftables ruleset: %v: %s", err, out)
	}
	load = time.Since(start)
	one := sps[len(sps)/2].Namespace + "/" + sps[len(sps)/2].Name
	for range 3 {
		start := time.Now()
		r, err := kubeproxy.Read(ns, one)
		if err != nil {
			return 0, nil, 0, err
		}
		reads = append(reads, time.Since(start).Seconds())
		ports = len(r.Ports)
		if r.Mode != kubeproxy.ModeNFTables {
			return 0, nil, 0, fmt.Errorf("read the ruleset as %s, not nftables", r.Mode)
		}
	}
	return load, reads, ports, nil
}
