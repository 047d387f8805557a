package tracetest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/svctrace/svctrace/internal/nf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// FillConntrack replaces ns's conntrack entries with assured UDP entries,
// as if clients of 198.18.0.0/15 had talked to 198.19.255.254:9, until the
// kernel refuses more (the limit, nf_conntrack_max, is the same in every
// namespace; the count is the namespace's own) or n were added. The table
// is flushed first: a TCP entry closing (TIME_WAIT, CLOSE) may be evicted
// early to make room or expire within seconds, and would let a new
// connection in; assured UDP entries of an hour are never evicted early.
// The entries go in batches over one netlink socket.
func FillConntrack(ns nf.NetNS, n int) error {
	return nf.InNetNS(ns, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return err
		}
		// conntrack -F: a delete without a tuple, of both families.
		flush := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_DELETE, 0)
		flush.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_UNSPEC, Version: nl.NFNETLINK_V0})
		if err := unix.Sendto(fd, flush.Serialize(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return fmt.Errorf("flushing the conntrack table: %w", err)
		}
		server := netip.MustParseAddrPort("198.19.255.254:9")
		const batch = 128
		var buf []byte
		for i := 0; i < n; i++ {
			client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 16), byte(i >> 8)}), 1024+uint16(i&0xff))
			buf = append(buf, ctNew(uint32(i), client, server)...)
			if (i+1)%batch == 0 || i == n-1 {
				if err := unix.Sendto(fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
					return fmt.Errorf("adding conntrack entries: %w", err)
				}
				buf = buf[:0]
				if err := ctErrors(fd); errors.Is(err, unix.ENOMEM) {
					return nil // full
				} else if err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// ctNew is an IPCTNL_MSG_CT_NEW request for an assured UDP entry, without
// an acknowledgement (errors still come back).
func ctNew(seq uint32, client, server netip.AddrPort) []byte {
	req := nl.NewNetlinkRequest(int(netlink.ConntrackTable)<<8|nl.IPCTNL_MSG_CT_NEW, unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	req.Seq = seq
	req.AddData(&nl.Nfgenmsg{NfgenFamily: unix.AF_INET, Version: nl.NFNETLINK_V0})
	req.AddData(ctTuple(nl.CTA_TUPLE_ORIG, client, server))
	req.AddData(ctTuple(nl.CTA_TUPLE_REPLY, server, client))
	req.AddData(nl.NewRtAttr(nl.CTA_STATUS, binary.BigEndian.AppendUint32(nil, 1<<1|1<<2|1<<3))) // SEEN_REPLY|ASSURED|CONFIRMED, as conntrack -I sends: ctnetlink refuses a change of CONFIRMED
	req.AddData(nl.NewRtAttr(nl.CTA_TIMEOUT, binary.BigEndian.AppendUint32(nil, 3600)))
	return req.Serialize()
}

func ctTuple(kind int, src, dst netip.AddrPort) *nl.RtAttr {
	t := nl.NewRtAttr(kind|int(nl.NLA_F_NESTED), nil)
	ip := nl.NewRtAttrChild(t, nl.CTA_TUPLE_IP|int(nl.NLA_F_NESTED), nil)
	nl.NewRtAttrChild(ip, nl.CTA_IP_V4_SRC, src.Addr().AsSlice())
	nl.NewRtAttrChild(ip, nl.CTA_IP_V4_DST, dst.Addr().AsSlice())
	p := nl.NewRtAttrChild(t, nl.CTA_TUPLE_PROTO|int(nl.NLA_F_NESTED), nil)
	nl.NewRtAttrChild(p, nl.CTA_PROTO_NUM, []byte{unix.IPPROTO_UDP})
	nl.NewRtAttrChild(p, nl.CTA_PROTO_SRC_PORT, binary.BigEndian.AppendUint16(nil, src.Port()))
	nl.NewRtAttrChild(p, nl.CTA_PROTO_DST_PORT, binary.BigEndian.AppendUint16(nil, dst.Port()))
	return t
}

// ctErrors returns the first error the kernel sent back, if any.
func ctErrors(fd int) error {
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			return nil
		}
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					return fmt.Errorf("adding conntrack entries: %w", unix.Errno(-code))
				}
			}
		}
	}
}
