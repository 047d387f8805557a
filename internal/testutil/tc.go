package testutil

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TCDrop attaches, in ns, a clsact qdisc to dev and a direct-action eBPF
// tc program on its egress (else ingress) that drops every packet of
// EtherType proto (unix.ETH_P_IP, unix.ETH_P_IPV6) and passes the rest,
// as a CNI's or a policy engine's program would. It is named
// "drop_<proto's name>". (eBPF, not tc's gact: kernels without
// CONFIG_NET_ACT_GACT have no "action drop".)
func TCDrop(ns nf.NetNS, dev string, egress bool, proto uint16) error {
	name := map[uint16]string{unix.ETH_P_IP: "drop_ipv4", unix.ETH_P_IPV6: "drop_ipv6"}[proto]
	if name == "" {
		return fmt.Errorf("TCDrop: EtherType %#x", proto)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: name, Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{
			// __sk_buff.protocol holds the EtherType in network order.
			asm.LoadMem(asm.R2, asm.R1, 16, asm.Word),
			asm.Mov.Imm(asm.R0, 0), // TC_ACT_OK
			asm.JNE.Imm(asm.R2, int32(proto>>8|proto<<8&0xff00), "out"),
			asm.Mov.Imm(asm.R0, 2), // TC_ACT_SHOT
			asm.Return().WithSymbol("out"),
		}})
	if err != nil {
		return fmt.Errorf("loading the tc program: %w", err)
	}
	defer prog.Close() // the filter holds it
	fd, err := netns.GetFromPath(ns.Path)
	if err != nil {
		return err
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}, QdiscType: "clsact"}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("adding clsact to %s: %w", dev, err)
	}
	parent := uint32(netlink.HANDLE_MIN_INGRESS)
	if egress {
		parent = netlink.HANDLE_MIN_EGRESS
	}
	f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent,
		Handle: 1, Protocol: unix.ETH_P_ALL}, Fd: prog.FD(), Name: name, DirectAction: true}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("adding the tc program to %s: %w", dev, err)
	}
	return nil
}
