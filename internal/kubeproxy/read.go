package kubeproxy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
)

// Read finds out how kube-proxy programs the node whose network namespace is
// ns, and reads its rules: nftables mode (table kube-proxy, read over
// netlink), else iptables mode through whichever backend holds KUBE-*
// chains (iptables-save output), else ipvs (kube-ipvs0), else none.
//
// services ("namespace/name") limit which Services' nftables chains are
// read rule by rule, for the endpoints each one really picks from (one
// netlink dump per chain); none reads them all.
func Read(ns nf.NetNS, services ...string) (*Ruleset, error) {
	r := &Ruleset{Mode: ModeNone}
	rulesFor := func(k PortKey) bool {
		return len(services) == 0 || slices.ContainsFunc(services, func(s string) bool {
			return k.Name == s || strings.HasPrefix(k.Name, s+":")
		})
	}
	err := nf.InNetNS(ns, func() error {
		dump, nftErr := readNFT(-1, rulesFor)
		if dump != nil {
			r.fromNFT(dump)
			for _, ch := range dump.Chains {
				if ch.Table == nftTable {
					r.Mode, r.Note = ModeNFTables, "kube-proxy's nftables table, read over netlink"
					// Others' iptables rules (iptables-nft) may still
					// drop Service traffic.
					r.readTables([]string{"iptables-nft-save", "ip6tables-nft-save"}, "iptables-nft")
					return nil
				}
			}
			r.Ports = nil // other tables' chains are kept only as BaseChains
		}
		for _, b := range []struct {
			mode    Mode
			backend string
			tools   []string
		}{
			{ModeIPTables, "iptables-nft", []string{"iptables-nft-save", "ip6tables-nft-save"}},
			{ModeIPTablesLegacy, "iptables-legacy", []string{"iptables-legacy-save", "ip6tables-legacy-save"}},
		} {
			found, used, err := readIPTables(r, b.tools, b.backend)
			if err != nil {
				return err
			}
			if found {
				r.Mode, r.Note = b.mode, "read with "+strings.Join(used, " and ")
				if b.mode == ModeIPTablesLegacy {
					r.BaseChains = nil // the nf_tables chains are not the ones in use
				}

				r.readRecent()
				return nil
			}
		}
		if _, err := netlink.LinkByName("kube-ipvs0"); err == nil {
			r.Mode, r.Note = ModeIPVS, "the kube-ipvs0 device exists; svctrace does not read ipvs rules yet"
			return nil
		}
		r.Note = "no kube-proxy rules (no nftables table kube-proxy, no KUBE-SERVICES chain in either iptables backend"
		if nftErr != nil {
			r.Note += ", nftables unreadable: " + nftErr.Error()
		}
		r.Note += ")"
		if c := cilium(); c != "" {
			r.Note += "; " + c
		}
		return nil
	})
	return r, err
}

// readIPTables runs the save tools of one backend and parses their output
// if it holds kube-proxy's chains.
func readIPTables(r *Ruleset, tools []string, backend string) (found bool, used []string, err error) {
	for _, tool := range tools {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		var stderr bytes.Buffer
		cmd := exec.Command(path)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			// A backend the kernel lacks is not an error: nothing is there.
			continue
		}
		if !bytes.Contains(out, []byte(":KUBE-SERVICES")) {
			continue
		}
		if err := ParseIPTablesSave(r, string(out)); err != nil {
			return false, nil, fmt.Errorf("%s output: %w", tool, err)
		}
		r.Tables = append(r.Tables, parseTables(toolFamily(tool), backend, string(out), traced...)...)
		found, used = true, append(used, tool)
	}
	return found, used, nil
}

// traced are the iptables tables whose rules Table.Trace follows.
var traced = []string{"raw", "mangle", "filter"}

// toolFamily: ip6tables-… reads IPv6's tables.
func toolFamily(tool string) string {
	if strings.HasPrefix(tool, "ip6") {
		return "ip6"
	}
	return "ip"
}

// readTables reads the iptables tables of a backend other than
// kube-proxy's (best effort: a missing tool or backend reads nothing).
func (r *Ruleset) readTables(tools []string, backend string) {
	for _, tool := range tools {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		if out, err := exec.Command(path).Output(); err == nil {
			r.Tables = append(r.Tables, parseTables(toolFamily(tool), backend, string(out), traced...)...)
		}
	}
}

// cilium says whether Cilium (an eBPF kube-proxy replacement) looks present.
func cilium() string {
	for _, l := range []string{"cilium_host", "cilium_vxlan", "cilium_geneve"} {
		if _, err := netlink.LinkByName(l); err == nil {
			return "Cilium's device " + l + " exists: Cilium's eBPF kube-proxy replacement likely handles Services (try: cilium-dbg service list)"
		}
	}
	if m, _ := filepath.Glob("/sys/fs/bpf/tc/globals/cilium_lb*"); len(m) > 0 {
		return "Cilium's load-balancer maps are pinned in /sys/fs/bpf: Cilium likely handles Services (try: cilium-dbg service list)"
	}
	return "an eBPF kube-proxy replacement may handle Services"
}

// KubeProxyPIDs are the kube-proxy processes whose network namespace is ns
// (from /proc; empty when svctrace cannot see the node's processes).
func KubeProxyPIDs(ns nf.NetNS) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "kube-proxy" {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st); err != nil || uint32(st.Ino) != ns.Inode {
			continue
		}
		out = append(out, pid)
	}
	return out
}
