// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * svctrace kernel side.
 *
 * Netfilter observers (BPF_PROG_TYPE_NETFILTER, one program per stage,
 * attached at priorities that bracket conntrack, DNAT, filter and SNAT) and the
 * skb:kfree_skb tracepoint. Every program only reads: observers always return
 * NF_ACCEPT and never touch the packet.
 *
 * Filter: userspace writes the watched addresses into `targets`. A packet
 * matches when its conntrack entry was matched before (`tracked`), when the
 * entry's original destination is a target, or - without a conntrack entry -
 * when the packet's own destination or source is one (for ICMP errors, the
 * embedded packet's destination). Unrelated traffic costs two map lookups.
 *
 * Kernel memory: the netfilter observers load it directly (KREAD with direct
 * set), everything else copies it with bpf_probe_read_kernel, so the same
 * helpers serve program types whose pointers are not BTF-typed.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>

#include "svctrace.h"

#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NF_ACCEPT 1
#define NFCT_INFOMASK 7UL
#define NET_HEADER_UNSET 0xffff

#define FAMILY_IPV4 2  /* NFPROTO_IPV4 */
#define FAMILY_IPV6 10 /* NFPROTO_IPV6 */

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct target_key);
	__type(value, __u8);
} targets SEC(".maps");

/* A followed connection. dst and sport are the original destination and
 * source port its conntrack entry had when it matched: an nf_conn address
 * reused by another connection (the kernel reuses them at once, often for
 * the same client's next connection to the same Service) is recognised and
 * followed anew. The rest is the event budget, per
 * direction (0 original, 1 reply): see show_packet. */
struct followed {
	struct target_key dst;
	__u8 family;
	__u8 pad;
	__u16 sport;
	__u64 reported;       /* when the counters were last reported */
	__u64 skb[2];         /* the last packet judged */
	__u32 seen[2];        /* packets judged, up to quiet_after */
	__u32 quiet_pkts[2];  /* counted, not reported, since `reported` */
	__u64 quiet_bytes[2];
	__u8 quiet[2];        /* the verdict on skb[dir] */
	__u8 hook[2];         /* where it was judged */
	__u8 keyed[2];        /* its tuple is in quiet_tuples */
	__u8 state;           /* FOLLOW_*: see hold_ns */
	__u8 nheld;           /* paths in held */
	__u8 closed;          /* FOLLOW_SETTLED: FIN seen, bit per direction; 3 also for a RST */
	__u64 since;          /* when it was first matched */
	__u64 first_skb;      /* by which packet */
	__u64 answered_at;    /* FOLLOW_SETTLED: when */
};

/* Longer than any packet takes through the hooks. */
#define FIRST_PACKET_NS 100000000ULL

#define FOLLOW_SHOWN 0   /* reported (the event budget applies) */
#define FOLLOW_HELD 1    /* its paths are kept in held until it is answered */
#define FOLLOW_SETTLED 2 /* answered while held: counted in answered, not reported */

/* Conntrack entries (nf_conn addresses) of followed connections. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct followed);
} tracked SEC(".maps");

/* The arriving tuples of quiet connection directions. Before conntrack a
 * packet has no entry to find its connection by: this lets the observers
 * there keep quiet too. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, __u64);
} quiet_tuples SEC(".maps");

/* Room for the values the rarer paths build (a new connection, the first
 * quiet packet, a settled one): the stack is too small for them next to
 * everything else. */
/* A connection's tuples: see settled_tuples. */
struct conn_tuples {
	struct tuple orig;
	struct tuple reply;
};

struct scratch {
	struct followed f;
	struct tuple t;
	struct conn_tuples ts; /* settle's */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* The event budget: every packet of a followed connection is reported at
 * every observer until quiet_after packets went each way (the first each
 * way: the translations both ways) - and after that every notable packet:
 * TCP SYN or RST, a new or related conntrack state, anything but TCP and
 * UDP; a FIN, or a DNS message (dns_questions), at one observer. Other
 * packets are only counted, and the counters are reported (EVENT_COUNT)
 * every count_every_ns while they come,
 * and with the next reported packet, in its record. Without it, a busy
 * connection makes about ten events per packet, and the tracer costs more
 * than the traffic. */
const volatile __u32 quiet_after = 1; /* userspace: --every-packet sets it to ~0 */
const volatile __u64 count_every_ns = 250000000;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20); /* ~22k events of 376 bytes */
	__type(value, struct event);
} events SEC(".maps");

/* Bumped by userspace whenever `targets` changes: a remembered decision holds
 * only for the targets it was made with. */
volatile __u32 targets_gen;

/* The last decision each CPU made in a netfilter observer: the packet (skb),
 * its conntrack field (entry and ctinfo) and whether it matched. A packet
 * meets the observers of a hook one after another on one CPU, and its
 * conntrack entry cannot go away while the packet holds it, so the next
 * observer of the same packet with the same entry can reuse the decision
 * after one comparison: unrelated traffic pays the filter once per hook
 * and conntrack step, not once per observer. */
struct decision {
	__u64 skb;
	__u64 nfct;
	__u32 gen;
	__u32 match; /* MATCH_* */
};

#define MATCH_NONE 0  /* not a followed connection */
#define MATCH_SHOW 1  /* reported */
#define MATCH_QUIET 2 /* followed, only counted (the event budget) */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decision);
} decisions SEC(".maps");

/* Events that did not fit in the ring buffer. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Waking the reader for every event costs the CPU that sends the packet
 * (an irq_work each): the reader is woken once this much is waiting, and
 * otherwise finds the events when it next looks (it does every 50 ms) -
 * unless it waits with nothing to follow (userspace sets reader_waiting):
 * then the first event wakes it. */
#define WAKEUP_BYTES (64 << 10)

volatile __u32 reader_waiting;

static __always_inline __u64 wakeup_flags(void)
{
	if (reader_waiting || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void submit(struct event *e)
{
	bpf_ringbuf_submit(e, wakeup_flags());
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);

	if (n)
		(*n)++;
}

/* The path of the packet the CPU's observers are following (struct packet_path),
 * until it leaves the namespace's hooks. busy: an observer is changing it; an
 * observer that interrupts that one on the same CPU (process context)
 * reports its observation on its own instead. tmp: room for a step's tuples. */
struct pending {
	__u8 used;
	__u8 busy;
	__u8 pad[6];
	struct tuple tmp[3];
	struct packet_path p;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} paths SEC(".maps");

#define FLUSH_ANY 0
#define FLUSH_THIS 1  /* only skb's path */
#define FLUSH_OTHER 2 /* only another packet's */

/* Makes the enums part of the object's BTF so bpf2go generates them. */
const enum stage stage_unused __attribute__((unused));
const enum event_kind event_kind_unused __attribute__((unused));

struct pktinfo {
	struct tuple t;
	struct tuple inner;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 flags;
	__u32 hdr_len; /* IP and transport headers, from the IP header */
};

/* How many bytes of each packet to capture: 0 is its headers only (no
 * payload), else up to this many (--snaplen), at most CAP_MAX. */
const volatile __u32 snaplen = 0;
/* 0: capture nothing (userspace neither records nor writes packets). */
const volatile __u8 capture_data = 1;
/* 1: a packet to or from a target's port 53 is captured up to CAP_MAX
 * whatever the above, for its DNS header and first question (userspace
 * keeps those and drops the rest): the one exception to headers only, set
 * when the cluster's DNS Service is traced (--dns-questions). */
const volatile __u8 dns_questions = 0;
/* The node's VXLAN devices' UDP ports (network order; 0: none): a packet to
 * one is an overlay's, judged by the packet it carries (match_encap). */
const volatile __u16 overlay_ports[2] = {};

/* What was decided of the overlay packets carrying each followed
 * connection's packets, by the carried packet's tuple: the event budget of
 * packets that have no conntrack entry of the connection's (encap_show). */
struct carried {
	__u64 skb;  /* the last overlay packet judged */
	__u32 n;    /* overlay packets judged */
	__u8 hook;  /* where it was judged */
	__u8 shown; /* and whether it is reported */
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct tuple);
	__type(value, struct carried);
} encap_seen SEC(".maps");

struct match {
	struct nf_conn *ct;
	struct followed *f; /* ct's entry in tracked */
	__u8 ctinfo;
	__u8 family;
	__u8 tried;  /* the packet was parsed (see parse_once) */
	__u8 parsed; /* successfully */
	__u8 counts; /* the quiet run's counters go out with this packet (take_counts) */
	__u8 dns;    /* to or from a target's port 53, with dns_questions */
	__u8 encap;  /* an overlay packet carrying a followed one (match_encap) */
	struct pktinfo pi;
};

static __always_inline void set_v4(__u8 *addr, __be32 v4)
{
	__u32 *w = (__u32 *)addr;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = v4;
}

static __always_inline void set_addr(__u8 *addr, const union nf_inet_addr *a, __u8 family)
{
	if (family == FAMILY_IPV4) {
		set_v4(addr, a->ip);
		return;
	}
	__builtin_memcpy(addr, a->all, 16);
}

static __always_inline int key_eq(const struct target_key *a, const struct target_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* dns_port: port (network order) of a target is DNS's, and its questions
 * are read. */
static __always_inline __u8 dns_port(__u16 port, __u8 proto)
{
	return dns_questions && port == bpf_htons(53) && (proto == PROTO_UDP || proto == PROTO_TCP);
}

static __always_inline int is_target(const __u8 *addr, __u16 port, __u8 proto)
{
	struct target_key k = {};

	__builtin_memcpy(k.addr, addr, 16);
	k.port = port;
	k.proto = proto;
	return bpf_map_lookup_elem(&targets, &k) != NULL;
}

/* KREAD(direct, T, p, field) reads p->field, p being a kernel address of a
 * T. direct: bpf_rdonly_cast (kernel 6.2, older than netfilter links) gives
 * the address its BTF type and the field is a plain load - the JIT guards it
 * against faults - where bpf_probe_read_kernel is a helper call costing as
 * much as a map lookup; a netfilter observer reads a dozen fields per
 * packet. !direct: that copy, for function probes on older kernels. direct is
 * a constant at every call, so a program carries one of the two. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define KREAD(direct, T, p, field)                                                        \
	({                                                                                \
		/* p through a local: in the access chain, a field of one of our    \
		 * own structs would become a CO-RE relocation too. */               \
		T *__p = (T *)(p);                                                        \
		typeof(((T *)0)->field) __v;                                              \
		if (direct)                                                               \
			__v = ((T *)bpf_rdonly_cast(__p, bpf_core_type_id_kernel(T)))->field; \
		else                                                                      \
			BPF_CORE_READ_INTO(&__v, __p, field);                             \
		__v;                                                                      \
	})

/* ---- packet parsing ---------------------------------------------------- */

static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == PROTO_ICMP)
		return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
	return type < 128; /* ICMPv6 error messages */
}

/* The first bytes from a network header, copied with one read: an IPv6
 * header, or an IPv4 header and - without IP options, the usual case - the
 * first 20 bytes of its L4 header. Each bpf_probe_read_kernel is a helper
 * call that costs as much as a map lookup; the filter reads once. */
union l3buf {
	struct iphdr v4;
	struct ipv6hdr v6;
	__u8 b[40];
};

#define V4_L4 20 /* where L4 starts in an l3buf behind an IPv4 header without options */

/* Reads the L3 header at nh into t and sets *family. Returns -1 if there is
 * no IP header to read. *l4 is the L4 header's address, or NULL when there is
 * none (non-first fragment). */
static __always_inline int read_l3(const __u8 *nh, __u8 *family, struct tuple *t, __u8 *flags, const __u8 **l4,
				   union l3buf *buf)
{
	*l4 = NULL;
	/* 40 bytes are there behind any network header: a shorter packet
	 * still has skb_shared_info after its data. */
	if (bpf_probe_read_kernel(buf, sizeof(*buf), nh))
		return -1;

	__u8 version = buf->b[0] >> 4;

	if (version == 4) {
		*family = FAMILY_IPV4;
		set_v4(t->saddr, buf->v4.saddr);
		set_v4(t->daddr, buf->v4.daddr);
		t->proto = buf->v4.protocol;
		if (buf->v4.frag_off & bpf_htons(0x1fff))
			*flags |= EVENT_F_FRAG;
		else
			*l4 = nh + (buf->b[0] & 0xf) * 4;
		return 0;
	}
	if (version != 6)
		return -1;

	*family = FAMILY_IPV6;
	__builtin_memcpy(t->saddr, &buf->v6.saddr, 16);
	__builtin_memcpy(t->daddr, &buf->v6.daddr, 16);

	const __u8 *p = nh + sizeof(struct ipv6hdr);
	__u8 next = buf->v6.nexthdr;

#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u8 ext[8];

		if (next != 0 && next != 43 && next != 44 && next != 60)
			break; /* not hop-by-hop, routing, fragment or destination options */
		if (bpf_probe_read_kernel(ext, sizeof(ext), p))
			break;
		if (next == 44) {
			if ((ext[2] << 8 | ext[3]) & 0xfff8) {
				t->proto = ext[0];
				*flags |= EVENT_F_FRAG;
				return 0;
			}
			p += 8;
		} else {
			p += (ext[1] + 1) * 8;
		}
		next = ext[0];
	}
	t->proto = next;
	*l4 = p;
	return 0;
}

/* Reads ports (or the ICMP echo identifier) at l4 into t. */
static __always_inline void read_ports(const __u8 *l4, struct tuple *t)
{
	__u16 ports[2];

	switch (t->proto) {
	case PROTO_TCP:
	case PROTO_UDP:
	case PROTO_SCTP:
		if (bpf_probe_read_kernel(ports, sizeof(ports), l4) == 0) {
			t->sport = ports[0];
			t->dport = ports[1];
		}
		break;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		/* type, code, checksum, identifier */
		if (bpf_probe_read_kernel(ports, sizeof(ports), l4 + 4) == 0)
			t->sport = ports[0];
		break;
	}
}

static __always_inline int parse_packet(const __u8 *nh, __u8 *family, struct pktinfo *pi)
{
	const __u8 *l4;
	union l3buf buf;

	if (read_l3(nh, family, &pi->t, &pi->flags, &l4, &buf) < 0)
		return -1;
	pi->flags |= EVENT_F_PKT;
	if (!l4)
		return 0;
	pi->hdr_len = l4 - nh;

	/* TCP, UDP and SCTP behind an IPv4 header without options: the
	 * first read holds their ports (and TCP's flags) already. */
	int inbuf = *family == FAMILY_IPV4 && l4 == nh + V4_L4;

	if (pi->t.proto == PROTO_TCP) {
		__u8 th[14];

		if (inbuf)
			__builtin_memcpy(th, buf.b + V4_L4, sizeof(th));
		else if (bpf_probe_read_kernel(th, sizeof(th), l4))
			return 0;
		__builtin_memcpy(&pi->t.sport, th, 2);
		__builtin_memcpy(&pi->t.dport, th + 2, 2);
		pi->tcp_flags = th[13];
		pi->hdr_len += (th[12] >> 4) * 4;
		return 0;
	}
	if (pi->t.proto != PROTO_ICMP && pi->t.proto != PROTO_ICMPV6) {
		if (inbuf && (pi->t.proto == PROTO_UDP || pi->t.proto == PROTO_SCTP)) {
			__builtin_memcpy(&pi->t.sport, buf.b + V4_L4, 2);
			__builtin_memcpy(&pi->t.dport, buf.b + V4_L4 + 2, 2);
		} else {
			read_ports(l4, &pi->t);
		}
		pi->hdr_len += 8; /* UDP; SCTP's common header */
		return 0;
	}

	__u8 icmp[2];

	pi->hdr_len += 8;
	if (bpf_probe_read_kernel(icmp, sizeof(icmp), l4))
		return 0;
	pi->icmp_type = icmp[0];
	pi->icmp_code = icmp[1];
	if (!icmp_is_error(pi->t.proto, icmp[0])) {
		read_ports(l4, &pi->t);
		return 0;
	}

	/* An ICMP error embeds the header of the packet it reports on. */
	__u8 inner_family = 0, inner_flags = 0;
	const __u8 *inner_l4;

	if (read_l3(l4 + 8, &inner_family, &pi->inner, &inner_flags, &inner_l4, &buf) < 0)
		return 0;
	pi->flags |= EVENT_F_INNER;
	if (inner_l4) {
		read_ports(inner_l4, &pi->inner);
		pi->hdr_len = (inner_l4 + 8) - nh; /* and the embedded ports */
	}
	return 0;
}

/* The usual packet - IPv4, TCP or UDP, not a fragment - parsed with direct
 * loads through the kernel's header types. Returns -1 to leave any other
 * packet to parse_packet. Header layouts are the protocols': no CO-RE. */
static __always_inline int parse_direct(const __u8 *nh, __u8 *family, struct pktinfo *pi)
{
	const struct iphdr *iph = bpf_rdonly_cast(nh, bpf_core_type_id_kernel(struct iphdr));
	__u8 vihl = *(const __u8 *)iph; /* version and ihl */
	__u8 proto = iph->protocol;

	if (vihl >> 4 != 4 || (iph->frag_off & bpf_htons(0x3fff)) || (proto != PROTO_TCP && proto != PROTO_UDP))
		return -1;
	*family = FAMILY_IPV4;
	set_v4(pi->t.saddr, iph->saddr);
	set_v4(pi->t.daddr, iph->daddr);
	pi->t.proto = proto;
	pi->flags |= EVENT_F_PKT;
	pi->hdr_len = (vihl & 0xf) * 4;

	const __u8 *l4 = nh + pi->hdr_len;

	if (proto == PROTO_UDP) {
		const struct udphdr *uh = bpf_rdonly_cast(l4, bpf_core_type_id_kernel(struct udphdr));

		pi->t.sport = uh->source;
		pi->t.dport = uh->dest;
		pi->hdr_len += 8;
		return 0;
	}
	const struct tcphdr *th = bpf_rdonly_cast(l4, bpf_core_type_id_kernel(struct tcphdr));

	pi->t.sport = th->source;
	pi->t.dport = th->dest;
	pi->tcp_flags = *((const __u8 *)th + 13);
	pi->hdr_len += (*((const __u8 *)th + 12) >> 4) * 4;
	return 0;
}

static __always_inline int parse_skb_at(struct sk_buff *skb, __u8 *family, struct pktinfo *pi)
{
	const __u8 *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);

	if (!head || nh == NET_HEADER_UNSET)
		return -1;
	return parse_packet(head + nh, family, pi);
}

/* Function probes parse in a global function: the verifier checks it once,
 * not at every call with every state the caller can be in (older verifiers
 * give up on the paths that makes), and its buffers are off the caller's
 * stack. skb is a plain number: a global function's pointers must point to
 * memory the caller owns. */
__noinline int parse_skb_copied(__u64 skb, __u8 *family, struct pktinfo *pi)
{
	if (!family || !pi)
		return -1;
	return parse_skb_at((struct sk_buff *)skb, family, pi);
}

/* The same for the netfilter observers, from the network header's address:
 * inlined at each use, the parser's paths made loading the observers take
 * five times as long. */
__noinline int parse_nh_direct(__u64 nh, __u8 *family, struct pktinfo *pi)
{
	if (!family || !pi)
		return -1;
	if (parse_direct((const __u8 *)nh, family, pi) == 0)
		return 0;
	return parse_packet((const __u8 *)nh, family, pi);
}

static __always_inline int parse_skb(struct sk_buff *skb, __u8 *family, struct pktinfo *pi, int direct)
{
	if (direct) {
		/* head copied, not loaded: a global function takes the plain
		 * number that makes, not the typed pointer a load gives. */
		const __u8 *head = KREAD(0, struct sk_buff, skb, head);
		__u16 nh = KREAD(1, struct sk_buff, skb, network_header);

		if (!head || nh == NET_HEADER_UNSET)
			return -1;
		return parse_nh_direct((__u64)(head + nh), family, pi);
	}
	/* Copied through memory, a BTF-typed pointer (tp_btf's) becomes the
	 * plain number the verifier accepts for skb. */
	__u64 addr = 0;

	bpf_probe_read_kernel(&addr, sizeof(addr), &skb);
	return parse_skb_copied(addr, family, pi);
}

/* ---- conntrack ----------------------------------------------------------- */

/* parse_once parses the packet of m unless that was tried; it returns
 * whether it was parsed. Function probes try early (hook_event), so the
 * verifier knows at the later calls - the same stack slot holds a constant -
 * and does not walk the parser again there: older verifiers give up on the
 * paths otherwise. */
static __always_inline int parse_once(struct sk_buff *skb, struct match *m, int direct)
{
	if (!m->tried) {
		m->tried = 1;
		m->parsed = parse_skb(skb, &m->family, &m->pi, direct) == 0;
	}
	return m->parsed;
}

static __always_inline struct nf_conn *skb_conntrack(struct sk_buff *skb, __u8 *ctinfo, int direct)
{
	if (!bpf_core_field_exists(skb->_nfct))
		return NULL;

	unsigned long nfct = KREAD(direct, struct sk_buff, skb, _nfct);
	struct nf_conn *ct = (struct nf_conn *)(nfct & ~NFCT_INFOMASK);

	*ctinfo = nfct & NFCT_INFOMASK;
	if (!ct)
		return NULL;
	/* Templates (raw table CT target) are not connections yet. */
	if (KREAD(direct, struct nf_conn, ct, status) & IPS_TEMPLATE)
		return NULL;
	return ct;
}

/* CT_ADDR reads the address at path (a union nf_inet_addr) of entry ct into
 * out. Direct loads must each stay within one member the verifier knows:
 * the address goes word by word. */
#define CT_ADDR(direct, ct, path, family, out)                                         \
	do {                                                                           \
		if (!(direct)) {                                                       \
			union nf_inet_addr a = KREAD(0, struct nf_conn, ct, path);     \
			set_addr(out, &a, family);                                     \
		} else if ((family) == FAMILY_IPV4) {                                  \
			set_v4(out, KREAD(1, struct nf_conn, ct, path.ip));            \
		} else {                                                               \
			__u32 *w = (__u32 *)(out);                                     \
			w[0] = KREAD(1, struct nf_conn, ct, path.all[0]);              \
			w[1] = KREAD(1, struct nf_conn, ct, path.all[1]);              \
			w[2] = KREAD(1, struct nf_conn, ct, path.all[2]);              \
			w[3] = KREAD(1, struct nf_conn, ct, path.all[3]);              \
		}                                                                      \
	} while (0)

static __always_inline void ct_orig_dst(struct nf_conn *ct, __u8 family, struct target_key *k, int direct)
{
	CT_ADDR(direct, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u3, family, k->addr);
	k->port = KREAD(direct, struct nf_conn, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.u.all);
	k->proto = KREAD(direct, struct nf_conn, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.dst.protonum);
}

#define CT_TUPLE(direct, ct, dir, family, t)                                                      \
	do {                                                                                      \
		CT_ADDR(direct, ct, tuplehash[dir].tuple.src.u3, family, (t)->saddr);             \
		CT_ADDR(direct, ct, tuplehash[dir].tuple.dst.u3, family, (t)->daddr);             \
		(t)->sport = KREAD(direct, struct nf_conn, ct, tuplehash[dir].tuple.src.u.all);   \
		(t)->dport = KREAD(direct, struct nf_conn, ct, tuplehash[dir].tuple.dst.u.all);   \
		(t)->proto = KREAD(direct, struct nf_conn, ct, tuplehash[dir].tuple.dst.protonum); \
	} while (0)

/*
 * Holding (svctrace -A): hold_ns > 0 keeps a new connection's packet paths
 * in held instead of handing them over, for up to hold_ns. If the first
 * reply passes the node in that time (not a reset, not an ICMP error, and
 * nothing of it dropped), the connection is settled: its paths are deleted
 * and it is counted in answered by its original destination, and nothing
 * more of it is reported - unless one of its packets is dropped, or
 * another is notable enough to be reported on its own (new_event): then
 * an EVENT_SETTLED record says it was answered, it is no longer counted,
 * and it is reported from there on (unhold). Anything else releases the
 * held paths into the ring buffer, in order, and the connection is
 * reported as without holding: a reply that did not settle it, a packet
 * after hold_ns, a drop, no room. Userspace takes (lookup and delete)
 * paths held longer than hold_ns: the connections no packet released.
 * Either side deletes an entry before it reports it, so none is reported
 * twice. Userspace sets hold_ns to 0 when it stops: every held connection
 * is released by its next packet, and userspace takes the rest.
 */
volatile __u64 hold_ns;
/* Set at load when userspace holds: without it, none of this costs a
 * thing (the verifier drops the code). */
const volatile __u8 holding = 0;

#define HELD_PATHS 4 /* per connection */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* userspace sizes it when it holds */
	__type(key, struct held_key);
	__type(value, struct packet_path);
} held SEC(".maps");

/* The tuples of settled connections (by conntrack entry), for their
 * EVENT_SETTLED record: by then the entry may be gone. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1); /* userspace sizes it when it holds */
	__type(key, __u64);
	__type(value, struct conn_tuples);
} settled_tuples SEC(".maps");

/* Connections settled, by original destination (a followed's dst). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* userspace sizes it when it holds */
	__type(key, struct target_key);
	__type(value, __u64);
} answered SEC(".maps");

/* What holding did, per CPU (svctrace -v says it). */
enum hold_stat {
	HOLD_HELD,     /* connections held */
	HOLD_SETTLED,  /* ... answered in time: counted */
	HOLD_RELEASED, /* ... released by the kernel */
	HOLD_NOROOM,   /* ... released for want of room */
	HOLD_TAKEN,    /* ... taken by userspace meanwhile */
	HOLD_BROKE,    /* settled, then reported from an EVENT_SETTLED on */
	HOLD_OVER,     /* events of settled connections over, not reported */
	HOLD_UNNAMED,  /* settled ones reported without an EVENT_SETTLED */
	HOLD_STATS,
};

const enum hold_stat hold_stat_unused __attribute__((unused)); /* for bpf2go */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HOLD_STATS);
	__type(key, __u32);
	__type(value, __u64);
} hold_stats SEC(".maps");

static __always_inline void hold_stat(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&hold_stats, &which);

	if (n)
		(*n)++;
}

/* Hands the connection's held paths (id: its conntrack entry) to the ring
 * buffer, in order, and reports it from now on. An entry userspace took
 * meanwhile is skipped: it reported it. Inline, as unhold_tuple: each call
 * frame counts at least 32 bytes against the 512 all frames may take, and
 * the kprobe programs on 6.1 nest deep (make test-kernels). */
static __always_inline void release(struct followed *f, __u64 id)
{
	__u32 n = f->nheld;

	f->state = FOLLOW_SHOWN;
	f->nheld = 0;
	if (n)
		hold_stat(HOLD_RELEASED);
#pragma unroll
	for (__u32 i = 0; i < HELD_PATHS; i++) {
		struct held_key k = {.ct = id, .i = i};
		struct packet_path *hp, *r;

		if (i >= n)
			break;
		hp = bpf_map_lookup_elem(&held, &k);
		if (!hp)
			continue;
		r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
		if (!r) {
			count_lost();
			bpf_map_delete_elem(&held, &k);
			continue;
		}
		bpf_probe_read_kernel(r, sizeof(*r), hp);
		if (bpf_map_delete_elem(&held, &k))
			bpf_ringbuf_discard(r, 0);
		else
			bpf_ringbuf_submit(r, wakeup_flags());
	}
}

/* Counts the connection answered and forgets its held paths; 0 if
 * userspace took one of them first (or it cannot be counted): it is then
 * released instead. */
static __noinline int settle(struct followed *f, __u64 id)
{
	__u32 n = f->nheld;
	__u64 zero = 0, *c;

	c = bpf_map_lookup_elem(&answered, &f->dst);
	if (!c) {
		/* Another CPU may add it meanwhile: either way it is there. */
		bpf_map_update_elem(&answered, &f->dst, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&answered, &f->dst);
		if (!c)
			return 0; /* no room to count it */
	}
	/* Userspace takes a connection's paths from the first on: the first
	 * missing, it took them all, or is taking them. */
#pragma unroll
	for (__u32 i = 0; i < HELD_PATHS; i++) {
		struct held_key k = {.ct = id, .i = i};

		if (i >= n)
			break;
		if (bpf_map_delete_elem(&held, &k)) {
			hold_stat(HOLD_TAKEN);
			return 0;
		}
	}
	__sync_fetch_and_add(c, 1);
	hold_stat(HOLD_SETTLED);
	/* Read through a copy (this runs in the drop programs too), into
	 * scratch space: the stack is too small. */
	struct nf_conn *ct = (struct nf_conn *)id;
	__u32 key = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &key);

	if (sc) {
		__builtin_memset(&sc->ts, 0, sizeof(sc->ts));
		CT_TUPLE(0, ct, IP_CT_DIR_ORIGINAL, f->family, &sc->ts.orig);
		CT_TUPLE(0, ct, IP_CT_DIR_REPLY, f->family, &sc->ts.reply);
		bpf_map_update_elem(&settled_tuples, &id, &sc->ts, BPF_ANY);
	}
	f->nheld = 0;
	f->state = FOLLOW_SETTLED;
	f->answered_at = bpf_ktime_get_ns();
	return 1;
}

/* Whether a held connection keeps path p: held, or settled by it (1), or
 * released (0: p goes to the ring buffer after what was held). ended: p
 * left the hooks (delivered or sent on). */
static __always_inline int keep_held(struct followed *f, __u64 id, struct packet_path *p, __u8 ctinfo, int ended)
{
	if (bpf_ktime_get_ns() - f->since <= hold_ns) {
		if (ctinfo == IP_CT_ESTABLISHED_REPLY) {
			/* The first reply, through the node: answered. */
			if (ended && !(p->e.tcp_flags & TCP_RST) && settle(f, id))
				return 1;
		} else if (ctinfo < IP_CT_IS_REPLY && f->nheld < HELD_PATHS) {
			struct held_key k = {.ct = id, .i = f->nheld};

			if (!bpf_map_update_elem(&held, &k, p, BPF_NOEXIST)) {
				if (!f->nheld++)
					hold_stat(HOLD_HELD);
				/* A reader waiting with nothing to follow takes
				 * what is held once it has waited hold_ns: wake it
				 * to start waiting that long (a record of a byte). */
				if (reader_waiting) {
					__u8 wake = 0;

					bpf_ringbuf_output(&events, &wake, sizeof(wake), BPF_RB_FORCE_WAKEUP);
				}
				return 1;
			}
			if (f->nheld)
				hold_stat(HOLD_NOROOM);
		}
	}
	release(f, id);
	return 0;
}

/* A followed connection held or settled (id: its conntrack entry, ct if
 * the packet still has it) is about to be reported on its own (a drop, an
 * ICMP error, a packet conntrack found INVALID): held, what was held goes
 * first; settled, an EVENT_SETTLED record, and it is no longer counted
 * answered. Either way it is reported from now on, and unhold returns 1 -
 * but 0 for a settled connection closed both ways or reset: it is over,
 * answered, and its last packets' fate changes nothing (as for flow), so
 * they are not reported. */
static __noinline int unhold(struct followed *f, __u64 id, struct nf_conn *ct)
{
	struct conn_tuples *ts;
	struct event *e;
	__u64 *c;

	if (f->state == FOLLOW_HELD) {
		release(f, id);
		return 1;
	}
	if (f->closed == 3) {
		hold_stat(HOLD_OVER);
		return 0;
	}
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 1;
	}
	__builtin_memset(e, 0, sizeof(*e));
	ts = bpf_map_lookup_elem(&settled_tuples, &id);
	if (ts) {
		e->orig = ts->orig;
		e->reply = ts->reply;
		bpf_map_delete_elem(&settled_tuples, &id);
	} else if (ct) {
		/* Forgotten (LRU); the entry is still there. */
		CT_TUPLE(0, ct, IP_CT_DIR_ORIGINAL, f->family, &e->orig);
		CT_TUPLE(0, ct, IP_CT_DIR_REPLY, f->family, &e->reply);
	} else {
		/* Nothing to name it by: it stays counted, and what follows
		 * is the middle of a connection. */
		bpf_ringbuf_discard(e, 0);
		hold_stat(HOLD_UNNAMED);
		return 1;
	}
	hold_stat(HOLD_BROKE);
	f->state = FOLLOW_SHOWN;
	c = bpf_map_lookup_elem(&answered, &f->dst);
	if (c)
		__sync_fetch_and_add(c, -1);
	e->ts = f->answered_at;
	e->kind = EVENT_SETTLED;
	e->family = f->family;
	e->flags = EVENT_F_CT;
	e->ct = id;
	submit(e);
	return 1;
}

/* unhold for a packet without its conntrack entry (INVALID), found by its
 * tuple among those of quiet connection directions (quiet_tuples). */
static __always_inline int unhold_tuple(const struct tuple *t)
{
	__u64 *id = bpf_map_lookup_elem(&quiet_tuples, t);
	struct followed *f;

	if (!id)
		return 1;
	f = bpf_map_lookup_elem(&tracked, id);
	if (f && f->state != FOLLOW_SHOWN)
		return unhold(f, *id, NULL);
	return 1;
}

/* Where a path goes once complete: to the ring buffer, unless its
 * connection is held or settled (see hold_ns). */
static __noinline void hand_over(struct packet_path *p, int ended)
{
	__u32 n = p->nsteps;
	__u64 id = p->e.ct;
	__u8 ctinfo = p->e.ctinfo;
	long err;

	/* The entry the packet had last: before conntrack it had none. */
	if (n > 0) {
		__u32 last = n - 1;

		/* A bound the verifier sees whatever the compiler makes of it. */
		asm volatile("" : "+r"(last));
		if (last < PATH_STEPS) {
			id = p->steps[last].ct;
			ctinfo = p->steps[last].ctinfo;
		}
	}
	if (holding && id) {
		struct followed *f = bpf_map_lookup_elem(&tracked, &id);

		if (f && f->state == FOLLOW_SETTLED)
			return;
		if (f && f->state == FOLLOW_HELD && keep_held(f, id, p, ctinfo, ended))
			return;
	} else if (holding && (p->e.flags & EVENT_F_PKT)) {
		/* No entry: INVALID, perhaps, in a connection held or settled. */
		if (!unhold_tuple(&p->e.pkt))
			return;
	}
	if (n == 0) {
		p->e.kind = EVENT_HOOK;
		err = bpf_ringbuf_output(&events, &p->e, sizeof(p->e), wakeup_flags());
	} else {
		err = bpf_ringbuf_output(&events, p, sizeof(*p), wakeup_flags());
	}
	if (err)
		count_lost();
}

/* Hands the CPU's pending path over (hand_over): as one event if it holds
 * one observation, else in full. FLUSH_THIS is the packet leaving the
 * hooks. */
static __always_inline void flush_pending(__u64 skb, int which)
{
	__u32 zero = 0;
	struct pending *pd = bpf_map_lookup_elem(&paths, &zero);

	if (!pd || !pd->used || pd->busy)
		return;
	if ((which == FLUSH_THIS && pd->p.e.skb != skb) || (which == FLUSH_OTHER && pd->p.e.skb == skb))
		return;
	pd->used = 0;
	hand_over(&pd->p, which == FLUSH_THIS);
}

/* ---- filter -------------------------------------------------------------- */

/* The rarer paths are functions of their own, one per way of reading (the
 * stack would not hold them inlined): BOTH_WAYS(name, (params), args...)
 * makes name_direct and name_copied of the inline name(args..., direct), and
 * WAY calls the one for direct. */
#define BOTH_WAYS(name, params, ...)                                            \
	static __noinline void name##_direct params { name(__VA_ARGS__, 1); } \
	static __noinline void name##_copied params { name(__VA_ARGS__, 0); }
#define WAY(name, direct, ...)                            \
	do {                                              \
		if (direct)                               \
			name##_direct(__VA_ARGS__);       \
		else                                      \
			name##_copied(__VA_ARGS__);       \
	} while (0)

/* Starts following ct, whose original destination is dst. Per-CPU scratch
 * space here and in key_quiet: an observer interrupted by another on the
 * same CPU (process context) may store the other's values, which the next
 * packet then corrects. */
static __always_inline void follow(struct nf_conn *ct, __u8 family, struct target_key *dst, __u64 skb, int direct)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	__u64 id = (__u64)ct;

	if (!sc)
		return;
	__builtin_memset(sc, 0, sizeof(*sc));
	sc->f.dst = *dst;
	sc->f.reported = bpf_ktime_get_ns();
	sc->f.since = sc->f.reported;
	sc->f.family = family;
	sc->f.sport = KREAD(direct, struct nf_conn, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.u.all);
	sc->f.first_skb = skb;
	if (holding && hold_ns)
		sc->f.state = FOLLOW_HELD;
	bpf_map_update_elem(&tracked, &id, &sc->f, BPF_ANY);
	/* Tuples an earlier connection on these addresses left there. */
	CT_TUPLE(direct, ct, IP_CT_DIR_ORIGINAL, family, &sc->t);
	bpf_map_delete_elem(&quiet_tuples, &sc->t);
	CT_TUPLE(direct, ct, IP_CT_DIR_REPLY, family, &sc->t);
	bpf_map_delete_elem(&quiet_tuples, &sc->t);
}

/* Keys direction dir of ct in quiet_tuples as its packets arrive: the
 * original tuple one way, the reply tuple the other. */
static __always_inline void key_quiet(struct nf_conn *ct, __u8 family, int dir, int direct)
{
	__u32 zero = 0;
	struct scratch *sc = bpf_map_lookup_elem(&scratch, &zero);
	__u64 id = (__u64)ct;

	if (!sc)
		return;
	__builtin_memset(&sc->t, 0, sizeof(sc->t));
	if (dir)
		CT_TUPLE(direct, ct, IP_CT_DIR_REPLY, family, &sc->t);
	else
		CT_TUPLE(direct, ct, IP_CT_DIR_ORIGINAL, family, &sc->t);
	bpf_map_update_elem(&quiet_tuples, &sc->t, &id, BPF_ANY);
}

BOTH_WAYS(follow, (struct nf_conn *ct, __u8 family, struct target_key *dst, __u64 skb), ct, family, dst, skb)
BOTH_WAYS(key_quiet, (struct nf_conn *ct, __u8 family, int dir), ct, family, dir)

static __always_inline int overlay_port(__u16 port)
{
	return port && (port == overlay_ports[0] || port == overlay_ports[1]);
}

#define VXLAN_HLEN 8
#define ETH_HLEN 14

/* An overlay's packet (IPv4 UDP to an overlay port) is judged by the IPv4
 * packet it carries behind the VXLAN and Ethernet headers: it belongs to the
 * connection of that packet, whose tuple goes to m->pi.inner and its TCP
 * flags to m->pi.tcp_flags. The overlay packet's own conntrack entry is not
 * the connection's: m leaves it out. */
static __always_inline int match_encap(struct sk_buff *skb, struct match *m, int direct)
{
	if (!parse_once(skb, m, direct) || m->family != FAMILY_IPV4 || m->pi.t.proto != PROTO_UDP ||
	    !overlay_port(m->pi.t.dport) || (m->pi.flags & EVENT_F_FRAG))
		return 0;

	const __u8 *head = KREAD(direct, struct sk_buff, skb, head);
	__u16 nh = KREAD(direct, struct sk_buff, skb, network_header);

	if (!head || nh == NET_HEADER_UNSET)
		return 0;

	/* pi.hdr_len: the outer IP and UDP headers. */
	const __u8 *inner = head + nh + m->pi.hdr_len + VXLAN_HLEN + ETH_HLEN;
	const __u8 *l4;
	__u8 family = 0, flags = 0;
	union l3buf buf;
	struct tuple t = {};

	if (read_l3(inner, &family, &t, &flags, &l4, &buf) < 0 || family != FAMILY_IPV4 || !l4)
		return 0;
	read_ports(l4, &t);
	if (!is_target(t.daddr, t.dport, t.proto) && !is_target(t.saddr, t.sport, t.proto))
		return 0;

	__u32 hdr = l4 - inner + 8;

	if (t.proto == PROTO_TCP) {
		__u8 th[14];

		if (bpf_probe_read_kernel(th, sizeof(th), l4) == 0) {
			m->pi.tcp_flags = th[13];
			hdr = l4 - inner + (th[12] >> 4) * 4;
		}
	}
	m->pi.inner = t;
	m->pi.flags |= EVENT_F_ENCAP;
	/* Captured: the outer headers through the carried packet's. */
	m->pi.hdr_len += VXLAN_HLEN + ETH_HLEN + (hdr & 0xff);
	m->ct = NULL;
	m->ctinfo = 0;
	m->f = NULL;
	m->encap = 1;
	return 1;
}

/* Decides whether skb belongs to a followed connection. family may be 0 (not
 * known: the tracepoint) and is then taken from the conntrack entry or the
 * packet. */
static __always_inline int match_skb(struct sk_buff *skb, struct match *m, int direct)
{
	/* Kernel pointers go through locals: inside BPF_CORE_READ's access chain
	 * a field of our own struct would become a CO-RE relocation too. */
	struct nf_conn *ct = skb_conntrack(skb, &m->ctinfo, direct);

	m->ct = ct;
	if (ct) {
		struct target_key k = {};
		__u64 id = (__u64)ct;

		if (!m->family)
			m->family = KREAD(direct, struct nf_conn, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.l3num);
		ct_orig_dst(ct, m->family, &k, direct);

		struct followed *f = bpf_map_lookup_elem(&tracked, &id);
		__u16 sport = KREAD(direct, struct nf_conn, ct, tuplehash[IP_CT_DIR_ORIGINAL].tuple.src.u.all);

		m->dns = dns_port(k.port, k.proto);
		/* The same connection: the same destination and source port,
		 * and an entry conntrack confirmed, or still the packet that
		 * began following it (an unconfirmed entry lives only while
		 * its first packet crosses the hooks). An unconfirmed entry
		 * met by another packet is a new connection's: a new entry
		 * where the last one's was freed, often one conntrack made
		 * anew for a SYN on the addresses of a connection in
		 * TIME_WAIT - and the kernel reuses skb addresses too. */
		if (f && key_eq(&f->dst, &k) && f->sport == sport &&
		    ((KREAD(direct, struct nf_conn, ct, status) & IPS_CONFIRMED) ||
		     (f->first_skb == (__u64)skb && bpf_ktime_get_ns() - f->since < FIRST_PACKET_NS))) {
			m->f = f;
			return 1;
		}
		if (!bpf_map_lookup_elem(&targets, &k))
			return k.proto == PROTO_UDP && overlay_port(k.port) && match_encap(skb, m, direct);
		/* What an earlier connection on this entry held goes first. */
		if (holding && f && f->state == FOLLOW_HELD)
			release(f, id);
		WAY(follow, direct, ct, m->family, &k, (__u64)skb);
		m->f = bpf_map_lookup_elem(&tracked, &id);
		return 1;
	}

	/* No conntrack entry (yet): judge the packet by its own addresses. */
	if (!parse_once(skb, m, direct))
		return 0;
	if (is_target(m->pi.t.daddr, m->pi.t.dport, m->pi.t.proto)) {
		m->dns = dns_port(m->pi.t.dport, m->pi.t.proto);
		return 1;
	}
	if (is_target(m->pi.t.saddr, m->pi.t.sport, m->pi.t.proto)) {
		m->dns = dns_port(m->pi.t.sport, m->pi.t.proto);
		return 1;
	}
	if (m->pi.flags & EVENT_F_INNER)
		return is_target(m->pi.inner.daddr, m->pi.inner.dport, m->pi.inner.proto);
	return match_encap(skb, m, direct);
}

/* capture copies the packet's first bytes from its IP header: its headers
 * (hdr_len), or snaplen bytes, never more than the skb's linear data; a DNS
 * packet (m->dns) up to CAP_MAX, for its question. */
static __always_inline void capture(struct sk_buff *skb, __u8 *data, __u16 *cap_len, struct match *m, int direct)
{
	const __u8 *head = KREAD(direct, struct sk_buff, skb, head);
	__u16 nh = KREAD(direct, struct sk_buff, skb, network_header);
	__u32 tail = KREAD(direct, struct sk_buff, skb, tail); /* an offset from head on 64-bit */
	__u32 n = snaplen ? snaplen : m->pi.hdr_len;

	if (m->dns)
		n = CAP_MAX;
	else if (!capture_data)
		return;
	if (!head || nh == NET_HEADER_UNSET || tail <= nh)
		return;
	if (n > tail - nh)
		n = tail - nh;
	/* Sizes the verifier can bound whatever the compiler spills: the
	 * constant, or a mask below it. */
	if (n >= CAP_MAX) {
		if (bpf_probe_read_kernel(data, CAP_MAX, head + nh) == 0)
			*cap_len = CAP_MAX;
		return;
	}
	__u64 sz = n;

	_Static_assert(CAP_MAX == 128, "the mask below is CAP_MAX - 1");
	/* The compiler drops a plain mask it can prove redundant, and the
	 * register it then passes is unbounded to the verifier. */
	asm volatile("%[sz] &= 0x7f" : [sz] "+r"(sz));
	if (bpf_probe_read_kernel(data, sz, head + nh) == 0)
		*cap_len = sz;
}

/* Fills the parts of an event common to all kinds into e, zeroed. */
static __always_inline void fill_event(struct event *e, struct sk_buff *skb, struct match *m, int direct)
{
	e->ts = bpf_ktime_get_ns();
	e->skb = (__u64)skb;
	e->len = KREAD(direct, struct sk_buff, skb, len);
	e->skb_mark = KREAD(direct, struct sk_buff, skb, mark);

	parse_once(skb, m, direct);
	e->family = m->family;
	if (m->parsed) {
		e->pkt = m->pi.t;
		e->inner = m->pi.inner;
		e->tcp_flags = m->pi.tcp_flags;
		e->icmp_type = m->pi.icmp_type;
		e->icmp_code = m->pi.icmp_code;
		e->flags |= m->pi.flags;
		capture(skb, e->data, &e->cap_len, m, direct);
	}

	struct nf_conn *ct = m->ct;

	e->ctinfo = m->ctinfo;
	if (ct) {
		e->flags |= EVENT_F_CT;
		e->ct = (__u64)ct;
		e->ct_status = KREAD(direct, struct nf_conn, ct, status);
		if (bpf_core_field_exists(ct->mark))
			e->ct_mark = KREAD(direct, struct nf_conn, ct, mark);
		if (bpf_core_field_exists(ct->zone))
			e->ct_zone = KREAD(direct, struct nf_conn, ct, zone.id);
		CT_TUPLE(direct, ct, IP_CT_DIR_ORIGINAL, m->family, &e->orig);
		CT_TUPLE(direct, ct, IP_CT_DIR_REPLY, m->family, &e->reply);
	}
}

/* Reserves an event and fills the parts common to all kinds. What its
 * connection's holding kept goes first (or that it was settled), then what
 * waits in the CPU's path: the packet's observations so far, perhaps. */
static __always_inline struct event *new_event(struct sk_buff *skb, struct match *m, int direct)
{
	if (holding && m->f && m->ct && m->f->state != FOLLOW_SHOWN) {
		if (!unhold(m->f, (__u64)m->ct, m->ct))
			return NULL;
	} else if (holding && !m->ct && parse_once(skb, m, direct)) {
		if (!unhold_tuple(&m->pi.t))
			return NULL;
	}
	flush_pending(0, FLUSH_ANY);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	fill_event(e, skb, m, direct);
	return e;
}

/* Reports the counters of a connection's quiet packets (EVENT_COUNT) and
 * starts them again; kept for the next report if the ring buffer is full. */
static __always_inline void report_counts(struct followed *f, struct nf_conn *ct, __u8 family, __u8 ctinfo,
					  __u64 now, int direct)
{
	__u32 p0 = f->quiet_pkts[0], p1 = f->quiet_pkts[1];
	__u64 b0 = f->quiet_bytes[0], b1 = f->quiet_bytes[1];

	f->reported = now;
	/* Held, they go with its next packet reported; settled, nowhere. */
	if ((!p0 && !p1) || f->state != FOLLOW_SHOWN)
		return;
	flush_pending(0, FLUSH_ANY);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	/* Subtracted, not zeroed: packets counted meanwhile on another CPU
	 * stay for the next report. */
	__sync_fetch_and_add(&f->quiet_pkts[0], -p0);
	__sync_fetch_and_add(&f->quiet_pkts[1], -p1);
	__sync_fetch_and_add(&f->quiet_bytes[0], -b0);
	__sync_fetch_and_add(&f->quiet_bytes[1], -b1);
	e->ts = now;
	e->kind = EVENT_COUNT;
	e->family = family;
	e->flags = EVENT_F_CT;
	e->ct = (__u64)ct;
	e->ctinfo = ctinfo;
	CT_TUPLE(direct, ct, IP_CT_DIR_ORIGINAL, family, &e->orig);
	CT_TUPLE(direct, ct, IP_CT_DIR_REPLY, family, &e->reply);
	e->packets[0] = p0;
	e->packets[1] = p1;
	e->bytes[0] = b0;
	e->bytes[1] = b1;
	submit(e);
}

BOTH_WAYS(report_counts, (struct followed *f, struct nf_conn *ct, __u8 family, __u8 ctinfo, __u64 now), f, ct,
	  family, ctinfo, now)


/* The event budget of overlay packets carrying a followed connection's
 * packets: the first quiet_after each way in full, and any carrying a SYN,
 * FIN or RST; drops always (on_drop does not ask). A packet is judged at
 * its first observer (conntrack's on the hook it enters by) and the verdict
 * reused by its later ones. */
static __always_inline int encap_show(struct sk_buff *skb, struct match *m, __u8 hook, __u8 stage)
{
	struct carried *c = bpf_map_lookup_elem(&encap_seen, &m->pi.inner);

	if (c && c->skb == (__u64)skb && !(stage == STAGE_PRE_CONNTRACK && c->hook == hook))
		return c->shown;

	struct carried v = {.skb = (__u64)skb, .hook = hook, .n = c ? c->n + 1 : 1};

	v.shown = v.n <= quiet_after || (m->pi.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST));
	bpf_map_update_elem(&encap_seen, &m->pi.inner, &v, BPF_ANY);
	return v.shown;
}

/* show_packet applies the event budget: whether this observation of a
 * matched packet is reported (1) or only counted (0). A packet is judged
 * once, right after conntrack, where its entry is first known; the later
 * observers of the same packet reuse the verdict. The skb address alone does
 * not tell packets apart - the next packet often gets the last one's freed
 * skb - but a new packet passes conntrack on the hook where the last was
 * judged, while a packet looping back through lo meets conntrack again on
 * another (OUTPUT, then PREROUTING). */
static __always_inline int show_packet(struct sk_buff *skb, struct match *m, __u8 hook, __u8 stage, int direct)
{
	struct followed *f = m->f;

	if (m->encap)
		return encap_show(skb, m, hook, stage);
	if (!m->ct) {
		/* Before conntrack, a quiet connection is known by its tuple. */
		if (stage != STAGE_PRE_CONNTRACK || !m->parsed || (m->pi.tcp_flags & (TCP_SYN | TCP_RST)))
			return 1;
		return !bpf_map_lookup_elem(&quiet_tuples, &m->pi.t);
	}
	if (!f)
		return 1;

	int dir = m->ctinfo >= IP_CT_IS_REPLY;

	if (f->skb[dir] == (__u64)skb && (stage != STAGE_POST_CONNTRACK || f->hook[dir] != hook))
		return !f->quiet[dir];
	parse_once(skb, m, direct);

	__u8 proto = m->pi.t.proto;

	/* A settled connection closed both ways (or reset) is over: nothing
	 * of it can change its verdict (see unhold). */
	if (holding && f->state == FOLLOW_SETTLED) {
		if (m->pi.tcp_flags & TCP_RST)
			f->closed = 3;
		else if (m->pi.tcp_flags & TCP_FIN)
			f->closed |= 1 << dir;
	}
	/* In full: at every observer. A FIN, briefly: here only - it closes the
	 * connection, and its path is that of the packets before it. */
	int full = f->seen[dir] < quiet_after || !m->parsed || (m->pi.flags & EVENT_F_FRAG) ||
		   (m->ctinfo != IP_CT_ESTABLISHED && m->ctinfo != IP_CT_ESTABLISHED_REPLY) ||
		   (proto != PROTO_TCP && proto != PROTO_UDP) || (m->pi.tcp_flags & (TCP_SYN | TCP_RST));
	/* A DNS message after the first each way (the AAAA query beside the A
	 * one on a socket, its answer, a query over TCP), briefly too: its
	 * question is what the connection is about. */
	int brief = !full && ((m->pi.tcp_flags & TCP_FIN) ||
			      (m->dns && KREAD(direct, struct sk_buff, skb, len) > m->pi.hdr_len));

	if (f->seen[dir] < quiet_after)
		f->seen[dir]++;
	f->skb[dir] = (__u64)skb;
	f->hook[dir] = hook;
	f->quiet[dir] = !full;
	if (f->seen[dir] >= quiet_after && !f->keyed[dir]) {
		/* From the next packet on, the observers before conntrack keep
		 * quiet too. */
		WAY(key_quiet, direct, m->ct, m->family, dir);
		f->keyed[dir] = 1;
	}

	__u64 now = bpf_ktime_get_ns();

	if (full || brief) {
		/* The counts come before the packet that ends a quiet run, in
		 * its record (take_counts): no record of their own. */
		if (f->quiet_pkts[0] || f->quiet_pkts[1]) {
			f->reported = now;
			m->counts = 1;
		}
		return 1;
	}
	__sync_fetch_and_add(&f->quiet_pkts[dir], 1);
	__sync_fetch_and_add(&f->quiet_bytes[dir], KREAD(direct, struct sk_buff, skb, len));
	if (now - f->reported >= count_every_ns)
		WAY(report_counts, direct, f, m->ct, m->family, m->ctinfo, now);
	return 0;
}

/* Moves the counters of the quiet run that m's packet ends (show_packet set
 * m->counts) into e, the record the packet goes out in: userspace reads
 * them as counted ahead of the packet. Subtracted, not zeroed: packets
 * counted meanwhile on another CPU stay for the next report. */
static __always_inline void take_counts(struct match *m, struct event *e)
{
	struct followed *f = m->f;

	if (!m->counts || !f)
		return;
	m->counts = 0;

	__u32 p0 = f->quiet_pkts[0], p1 = f->quiet_pkts[1];
	__u64 b0 = f->quiet_bytes[0], b1 = f->quiet_bytes[1];

	__sync_fetch_and_add(&f->quiet_pkts[0], -p0);
	__sync_fetch_and_add(&f->quiet_pkts[1], -p1);
	__sync_fetch_and_add(&f->quiet_bytes[0], -b0);
	__sync_fetch_and_add(&f->quiet_bytes[1], -b1);
	e->packets[0] += p0;
	e->packets[1] += p1;
	e->bytes[0] += b0;
	e->bytes[1] += b1;
}

/* ---- netfilter observers ------------------------------------------------- */

/* Where a netfilter observer sees the packet, read from its hook state once
 * it is to be shown. The state's pointers are read through KREAD (an
 * untrusted copy): the verifier looks each plain load of one up in the
 * kernel's BTF by name, in every state it reaches the load in, which made
 * loading the observers several times slower. */
struct where {
	__u32 netns;
	__u32 ifindex_in; /* 0: no device in or out on this hook */
	__u32 ifindex_out;
	__u8 hook;
	__u8 pf;
};

static __always_inline void set_where(struct event *e, const struct where *w, __u8 stage)
{
	e->stage = stage;
	e->hook = w->hook;
	e->netns = w->netns;
	e->ifindex_in = w->ifindex_in;
	e->ifindex_out = w->ifindex_out;
}

static __always_inline int tuple_eq(const struct tuple *a, const struct tuple *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

#pragma unroll
	for (int i = 0; i < sizeof(*a) / 4; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* The index a step gives tuple t: 0 if it is base (the header's), else its
 * place among the path's tuples + 1, added if new; -1 when they are full. */
/* A global function: the verifier checks it once, not once for every state
 * its callers reach it in (its loops made the observers' verification four
 * times longer). */
__noinline int tuple_index(struct packet_path *p, const struct tuple *base, const struct tuple *t)
{
	if (!p || !base || !t)
		return -1;
	if (tuple_eq(base, t))
		return 0;
#pragma unroll
	for (int i = 0; i < PATH_TUPLES; i++) {
		if (i >= p->ntuples) {
			p->tuples[i] = *t;
			p->ntuples = i + 1;
			return i + 1;
		}
		if (tuple_eq(&p->tuples[i], t))
			return i + 1;
	}
	return -1;
}

/* Adds one more observation of the path's packet as a step. Returns 0 if
 * it did not fit (the tuples are full): the caller reports it on its own. */
static __always_inline int add_step(struct pending *pd, struct sk_buff *skb, struct match *m,
				    const struct where *w, __u8 stage)
{
	struct packet_path *p = &pd->p;
	__u32 n = p->nsteps;

	if (n >= PATH_STEPS)
		return 0;

	struct path_step *st = &p->steps[n];
	int pkt = tuple_index(p, &p->e.pkt, &m->pi.t), orig = 0, reply = 0;

	if (pkt < 0)
		return 0;
	__builtin_memset(st, 0, sizeof(*st));
	if (m->ct) {
		struct nf_conn *ct = m->ct;

		CT_TUPLE(1, ct, IP_CT_DIR_ORIGINAL, m->family, &pd->tmp[0]);
		CT_TUPLE(1, ct, IP_CT_DIR_REPLY, m->family, &pd->tmp[1]);
		orig = tuple_index(p, &p->e.orig, &pd->tmp[0]);
		reply = tuple_index(p, &p->e.reply, &pd->tmp[1]);
		if (orig < 0 || reply < 0)
			return 0;
		st->flags = EVENT_F_CT;
		st->ct = (__u64)ct;
		st->ct_status = KREAD(1, struct nf_conn, ct, status);
		if (bpf_core_field_exists(ct->mark))
			st->ct_mark = KREAD(1, struct nf_conn, ct, mark);
		if (bpf_core_field_exists(ct->zone))
			st->ct_zone = KREAD(1, struct nf_conn, ct, zone.id);
	}
	st->dt = bpf_ktime_get_ns() - p->e.ts;
	st->stage = stage;
	st->hook = w->hook;
	st->ctinfo = m->ctinfo;
	st->ifindex_in = w->ifindex_in;
	st->ifindex_out = w->ifindex_out;
	st->len = skb->len;
	st->skb_mark = skb->mark;
	st->pkt = pkt;
	st->orig = orig;
	st->reply = reply;

	/* A translation: the packet's headers as it now is. */
	__u8 before = 0;

	if (n > 0 && n <= PATH_STEPS)
		before = p->steps[n - 1].pkt;
	if (pkt != before && !p->data_step) {
		p->cap_len1 = 0;
		capture(skb, p->data1, &p->cap_len1, m, 1);
		p->data_step = n + 1;
	} else if (pkt != before) {
		p->cap_len2 = 0;
		capture(skb, p->data2, &p->cap_len2, m, 1);
		p->data_step2 = n + 1;
	}
	p->nsteps = n + 1;
	return 1;
}

/* Adds this observation of skb to the CPU's path (the first starts it).
 * Returns 0 if it was not added: the caller reports it on its own. */
static __always_inline int add_to_path(struct sk_buff *skb, struct match *m, const struct where *w, __u8 stage)
{
	__u32 zero = 0;
	struct pending *pd = bpf_map_lookup_elem(&paths, &zero);
	int added = 1;

	/* An ICMP error's embedded header is translated too: such rare
	 * packets are reported observer by observer. */
	if (!pd || pd->busy || !parse_once(skb, m, 1) || (m->pi.flags & EVENT_F_INNER))
		return 0;
	if (pd->used && (pd->p.e.skb != (__u64)skb || pd->p.nsteps >= PATH_STEPS))
		flush_pending(0, FLUSH_ANY);
	pd->busy = 1;
	barrier();
	if (pd->used) {
		added = add_step(pd, skb, m, w, stage);
		if (added)
			take_counts(m, &pd->p.e);
	} else {
		struct event *e = &pd->p.e;

		__builtin_memset(e, 0, sizeof(*e));
		fill_event(e, skb, m, 1);
		e->kind = EVENT_PATH;
		set_where(e, w, stage);
		pd->p.nsteps = 0;
		pd->p.ntuples = 0;
		pd->p.data_step = 0;
		pd->p.data_step2 = 0;
		pd->p.cap_len1 = 0;
		pd->p.cap_len2 = 0;
		take_counts(m, e);
		pd->used = 1;
	}
	barrier();
	pd->busy = 0;
	return added;
}

static __always_inline int observe(struct bpf_nf_ctx *ctx, __u8 stage)
{
	struct sk_buff *skb = ctx->skb;
	const struct nf_hook_state *state = ctx->state;
	struct where w = {.hook = state->hook, .pf = state->pf};
	struct match m = {};
	__u64 nfct = 0;
	__u32 gen = targets_gen, zero = 0;

	/* The skb of a netfilter program is BTF-typed: a plain load. */
	if (bpf_core_field_exists(skb->_nfct))
		nfct = skb->_nfct;
	struct decision *d = bpf_map_lookup_elem(&decisions, &zero);

	/* Before conntrack (each packet's first observer) the entry would
	 * name the last packet: a packet's addresses, not its skb address,
	 * decide there. */
	/* The packet leaves the namespace's hooks: its path goes out. */
	int end = stage == STAGE_LAST && (w.hook == NF_INET_LOCAL_IN || w.hook == NF_INET_POST_ROUTING);

	if (stage != STAGE_PRE_CONNTRACK && d && d->skb == (__u64)skb && d->nfct == nfct && d->gen == gen &&
	    d->match != MATCH_SHOW) {
		if (end)
			flush_pending((__u64)skb, FLUSH_THIS);
		return NF_ACCEPT;
	}
	/* A new packet: the last one's path, if still waiting, is complete. */
	if (stage == STAGE_PRE_CONNTRACK)
		flush_pending((__u64)skb, FLUSH_OTHER);

	m.family = w.pf;
	int match = match_skb(skb, &m, 1);

	if (match)
		match = show_packet(skb, &m, w.hook, stage, 1) ? MATCH_SHOW : MATCH_QUIET;

	/* Before conntrack, the decision is forgotten, not remembered: a
	 * packet conntrack leaves without an entry (INVALID) would find it,
	 * made by its tuple for a quiet connection, still valid after
	 * conntrack - and INVALID packets are ones to show. Any other
	 * packet's entry changes there, so it would not be reused anyway. */
	if (d && stage == STAGE_PRE_CONNTRACK) {
		d->skb = 0;
	} else if (d) {
		/* skb last: were this interrupted by an observer on this CPU
		 * (process context), a mixed entry names neither packet. */
		d->skb = 0;
		d->nfct = nfct;
		d->gen = gen;
		d->match = match;
		d->skb = (__u64)skb;
	}
	if (match == MATCH_SHOW) {
		/* Only for a packet shown. No device in or out on some hooks:
		 * NULL. Through KREAD: see struct where. */
		struct net_device *in = KREAD(1, struct nf_hook_state, state, in);
		struct net_device *out = KREAD(1, struct nf_hook_state, state, out);

		w.netns = KREAD(1, struct net, KREAD(1, struct nf_hook_state, state, net), ns.inum);
		w.ifindex_in = in ? KREAD(1, struct net_device, in, ifindex) : 0;
		w.ifindex_out = out ? KREAD(1, struct net_device, out, ifindex) : 0;
		if (!add_to_path(skb, &m, &w, stage)) {
			struct event *e = new_event(skb, &m, 1);

			if (e) {
				e->kind = EVENT_HOOK;
				set_where(e, &w, stage);
				take_counts(&m, e);
				submit(e);
			}
		}
	}
	if (end)
		flush_pending((__u64)skb, FLUSH_THIS);
	return NF_ACCEPT;
}

#define OBSERVER(name, stage)                       \
	SEC("netfilter")                            \
	int name(struct bpf_nf_ctx *ctx)            \
	{                                           \
		return observe(ctx, stage);         \
	}

OBSERVER(nf_pre_conntrack, STAGE_PRE_CONNTRACK)
OBSERVER(nf_post_conntrack, STAGE_POST_CONNTRACK)
OBSERVER(nf_pre_dnat, STAGE_PRE_DNAT)
OBSERVER(nf_post_dnat, STAGE_POST_DNAT)
OBSERVER(nf_pre_filter, STAGE_PRE_FILTER)
OBSERVER(nf_post_filter, STAGE_POST_FILTER)
OBSERVER(nf_pre_snat, STAGE_PRE_SNAT)
OBSERVER(nf_post_snat, STAGE_POST_SNAT)
OBSERVER(nf_last, STAGE_LAST)

/* ---- function probes: the same observations on kernels without ---------
 * ---- netfilter BPF links (fentry/fexit, else kprobe/kretprobe) ----------
 *
 * Each netfilter piece the observers bracket has a kernel function that runs
 * it: nf_conntrack_in (conntrack), nf_nat_inet_fn (the NAT hooks, DNAT on
 * PREROUTING/OUTPUT, SNAT on INPUT/POSTROUTING), ipt_do_table/ip6t_do_table
 * and nft_do_chain (tables and chains; those at the filter priority 0 are
 * the filter stage), nf_hook_slow (a whole hook: its return is the hook's
 * last point). Entry and return of each become the stages before and after
 * it, so the events are those of the netfilter observers. Probes see every
 * network namespace: filter_netns keeps the traced one.
 */

/* The traced namespace's inode; 0 for the netfilter observers, which are
 * attached in it. */
const volatile __u32 filter_netns = 0;

enum fn {
	FN_CONNTRACK = 1,
	FN_NAT,
	FN_TABLE, /* ipt_do_table, ip6t_do_table, nft_do_chain */
	FN_HOOK,  /* nf_hook_slow */
};

#define NF_INET_PRE_ROUTING 0
#define NF_INET_LOCAL_IN 1
#define NF_INET_LOCAL_OUT 3
#define NF_INET_POST_ROUTING 4

static __always_inline void hook_event(struct sk_buff *skb, const struct nf_hook_state *state, __u8 stage)
{
	__u32 netns = BPF_CORE_READ(state, net, ns.inum);

	if (filter_netns && netns != filter_netns)
		return;

	struct match m = {};

	m.family = BPF_CORE_READ(state, pf);
	if (!match_skb(skb, &m, 0))
		return;
	parse_once(skb, &m, 0);
	if (!show_packet(skb, &m, BPF_CORE_READ(state, hook), stage, 0))
		return;

	struct event *e = new_event(skb, &m, 0);

	if (!e)
		return;
	e->kind = EVENT_HOOK;
	e->stage = stage;
	e->hook = BPF_CORE_READ(state, hook);
	e->netns = netns;
	e->ifindex_in = BPF_CORE_READ(state, in, ifindex);
	e->ifindex_out = BPF_CORE_READ(state, out, ifindex);
	take_counts(&m, e);
	submit(e);
}

/* The stage a function's entry (after = 0) or return (after = 1) stands
 * for, or STAGE_NONE. prio is a table's or chain's netfilter priority. */
static __always_inline __u8 fn_stage(__u32 fn, __u8 hook, int prio, int after)
{
	switch (fn) {
	case FN_CONNTRACK:
		return after ? STAGE_POST_CONNTRACK : STAGE_PRE_CONNTRACK;
	case FN_NAT:
		if (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT)
			return after ? STAGE_POST_DNAT : STAGE_PRE_DNAT;
		return after ? STAGE_POST_SNAT : STAGE_PRE_SNAT;
	case FN_TABLE:
		if (prio != 0)
			return STAGE_NONE; /* nat tables run inside nf_nat_inet_fn */
		return after ? STAGE_POST_FILTER : STAGE_PRE_FILTER;
	case FN_HOOK:
		/* The hooks whose observers end with STAGE_LAST. */
		if (after && (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_IN || hook == NF_INET_POST_ROUTING))
			return STAGE_LAST;
	}
	return STAGE_NONE;
}

static __always_inline void fn_enter(__u32 fn, struct sk_buff *skb, const struct nf_hook_state *state, int prio)
{
	__u8 stage = fn_stage(fn, BPF_CORE_READ(state, hook), prio, 0);

	if (stage != STAGE_NONE)
		hook_event(skb, state, stage);
}

/* ret is the function's verdict: NF_ACCEPT (1) lets the packet on; for
 * nf_hook_slow, 1 means every hook function accepted. */
static __always_inline void fn_return(__u32 fn, struct sk_buff *skb, const struct nf_hook_state *state, int prio, long ret)
{
	__u8 stage = fn_stage(fn, BPF_CORE_READ(state, hook), prio, 1);

	if (stage != STAGE_NONE && ret == NF_ACCEPT)
		hook_event(skb, state, stage);
}

static __always_inline int xt_priority(void *table)
{
	return BPF_CORE_READ((struct xt_table *)table, priority);
}

/* nft_do_chain's priv is the base chain's struct nft_chain, embedded in
 * struct nft_base_chain with the hook's ops. */
static __always_inline int nft_priority(void *chain)
{
	struct nft_base_chain *base = (void *)((char *)chain - bpf_core_field_offset(struct nft_base_chain, chain));

	return BPF_CORE_READ(base, ops.priority);
}

SEC("fentry/nf_conntrack_in")
int BPF_PROG(fentry_conntrack_in, struct sk_buff *skb, const struct nf_hook_state *state)
{
	fn_enter(FN_CONNTRACK, skb, state, 0);
	return 0;
}

SEC("fexit/nf_conntrack_in")
int BPF_PROG(fexit_conntrack_in, struct sk_buff *skb, const struct nf_hook_state *state, unsigned int ret)
{
	fn_return(FN_CONNTRACK, skb, state, 0, ret);
	return 0;
}

SEC("fentry/nft_do_chain")
int BPF_PROG(fentry_nft, struct nft_pktinfo *pkt, void *priv)
{
	fn_enter(FN_TABLE, BPF_CORE_READ(pkt, skb), BPF_CORE_READ(pkt, state), nft_priority(priv));
	return 0;
}

SEC("fexit/nft_do_chain")
int BPF_PROG(fexit_nft, struct nft_pktinfo *pkt, void *priv, unsigned int ret)
{
	fn_return(FN_TABLE, BPF_CORE_READ(pkt, skb), BPF_CORE_READ(pkt, state), nft_priority(priv), ret);
	return 0;
}

SEC("fexit/nf_hook_slow")
int BPF_PROG(fexit_hook_slow, struct sk_buff *skb, struct nf_hook_state *state, const struct nf_hook_entries *e,
	     unsigned int s, int ret)
{
	fn_return(FN_HOOK, skb, state, 0, ret);
	return 0;
}

/* kprobes: a kretprobe sees only the return value, so each entry pushes its
 * arguments on a per-CPU stack and the return pops them. Netfilter nests on
 * one CPU (a REJECT in FORWARD sends its ICMP error through OUTPUT inside
 * the FORWARD hook), always last in, first out. */
#define MAX_DEPTH 16

struct frame {
	__u64 skb;
	__u64 state;
	__u32 fn;
	__s32 prio;
};

struct frames {
	__u32 depth;
	__u32 pad;
	struct frame f[MAX_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frames);
} frames SEC(".maps");

static __always_inline void push(__u32 fn, struct sk_buff *skb, const struct nf_hook_state *state, int prio)
{
	__u32 zero = 0;
	struct frames *fs = bpf_map_lookup_elem(&frames, &zero);

	if (!fs)
		return;
	__u32 d = fs->depth;

	fs->depth = d + 1;
	if (d >= MAX_DEPTH)
		return; /* too deep: counted, not kept */
	fs->f[d].skb = (__u64)skb;
	fs->f[d].state = (__u64)state;
	fs->f[d].fn = fn;
	fs->f[d].prio = prio;
}

static __always_inline void pop(__u32 fn, long ret)
{
	__u32 zero = 0;
	struct frames *fs = bpf_map_lookup_elem(&frames, &zero);

	if (!fs || fs->depth == 0)
		return;
	__u32 d = fs->depth - 1;

	fs->depth = d;
	if (d >= MAX_DEPTH)
		return;
	struct frame f = fs->f[d];

	if (f.fn != fn)
		return; /* out of step (a probe missed): report nothing */
	fn_return(fn, (struct sk_buff *)f.skb, (const struct nf_hook_state *)f.state, f.prio, ret);
}

static __always_inline void kenter(__u32 fn, struct sk_buff *skb, const struct nf_hook_state *state, int prio)
{
	push(fn, skb, state, prio);
	fn_enter(fn, skb, state, prio);
}

SEC("kprobe/nf_conntrack_in")
int BPF_KPROBE(kprobe_conntrack_in, struct sk_buff *skb, const struct nf_hook_state *state)
{
	kenter(FN_CONNTRACK, skb, state, 0);
	return 0;
}

SEC("kretprobe/nf_conntrack_in")
int BPF_KRETPROBE(kretprobe_conntrack_in, unsigned int ret)
{
	pop(FN_CONNTRACK, ret);
	return 0;
}

/* The probes of a function called as (void *priv, struct sk_buff *skb,
 * const struct nf_hook_state *state): the NAT hooks and the xtables
 * tables. prio may use priv. */
#define PRIV_SKB_STATE_PROBES(sym, fn, prio)                                                          \
	SEC("fentry/" #sym)                                                                           \
	int BPF_PROG(fentry_##sym, void *priv, struct sk_buff *skb, const struct nf_hook_state *state) \
	{                                                                                             \
		fn_enter(fn, skb, state, prio);                                                       \
		return 0;                                                                             \
	}                                                                                             \
	SEC("fexit/" #sym)                                                                            \
	int BPF_PROG(fexit_##sym, void *priv, struct sk_buff *skb, const struct nf_hook_state *state,  \
		     unsigned int ret)                                                                \
	{                                                                                             \
		fn_return(fn, skb, state, prio, ret);                                                 \
		return 0;                                                                             \
	}                                                                                             \
	SEC("kprobe/" #sym)                                                                           \
	int BPF_KPROBE(kprobe_##sym, void *priv, struct sk_buff *skb, const struct nf_hook_state *state) \
	{                                                                                             \
		kenter(fn, skb, state, prio);                                                         \
		return 0;                                                                             \
	}                                                                                             \
	SEC("kretprobe/" #sym)                                                                        \
	int BPF_KRETPROBE(kretprobe_##sym, unsigned int ret)                                          \
	{                                                                                             \
		pop(fn, ret);                                                                         \
		return 0;                                                                             \
	}

PRIV_SKB_STATE_PROBES(nf_nat_inet_fn, FN_NAT, 0)
PRIV_SKB_STATE_PROBES(ipt_do_table, FN_TABLE, xt_priority(priv))
PRIV_SKB_STATE_PROBES(ip6t_do_table, FN_TABLE, xt_priority(priv))

/* Before Linux 5.16 the xtables functions took (skb, state, table). */
#define XT_OLD_PROBES(sym)                                                                            \
	SEC("fentry/" #sym)                                                                           \
	int BPF_PROG(fentry_##sym##_old, struct sk_buff *skb, const struct nf_hook_state *state,       \
		     void *table)                                                                     \
	{                                                                                             \
		fn_enter(FN_TABLE, skb, state, xt_priority(table));                                   \
		return 0;                                                                             \
	}                                                                                             \
	SEC("fexit/" #sym)                                                                            \
	int BPF_PROG(fexit_##sym##_old, struct sk_buff *skb, const struct nf_hook_state *state,        \
		     void *table, unsigned int ret)                                                   \
	{                                                                                             \
		fn_return(FN_TABLE, skb, state, xt_priority(table), ret);                             \
		return 0;                                                                             \
	}                                                                                             \
	SEC("kprobe/" #sym)                                                                           \
	int BPF_KPROBE(kprobe_##sym##_old, struct sk_buff *skb, const struct nf_hook_state *state,     \
		       void *table)                                                                   \
	{                                                                                             \
		kenter(FN_TABLE, skb, state, xt_priority(table));                                     \
		return 0;                                                                             \
	}

XT_OLD_PROBES(ipt_do_table)
XT_OLD_PROBES(ip6t_do_table)

SEC("kprobe/nft_do_chain")
int BPF_KPROBE(kprobe_nft, struct nft_pktinfo *pkt, void *priv)
{
	kenter(FN_TABLE, BPF_CORE_READ(pkt, skb), BPF_CORE_READ(pkt, state), nft_priority(priv));
	return 0;
}

SEC("kretprobe/nft_do_chain")
int BPF_KRETPROBE(kretprobe_nft, unsigned int ret)
{
	pop(FN_TABLE, ret);
	return 0;
}

SEC("kprobe/nf_hook_slow")
int BPF_KPROBE(kprobe_hook_slow, struct sk_buff *skb, struct nf_hook_state *state)
{
	push(FN_HOOK, skb, state, 0);
	return 0;
}

SEC("kretprobe/nf_hook_slow")
int BPF_KRETPROBE(kretprobe_hook_slow, int ret)
{
	pop(FN_HOOK, ret);
	return 0;
}

/* ---- drops --------------------------------------------------------------- */

/* The namespace a freed packet was in: its device's, else (locally generated
 * packets before routing sets the device) its socket's, else its route's. */
static __always_inline __u32 skb_netns(struct sk_buff *skb)
{
	__u32 inum = BPF_CORE_READ(skb, dev, nd_net.net, ns.inum);

	if (!inum)
		inum = BPF_CORE_READ(skb, sk, __sk_common.skc_net.net, ns.inum);
	if (!inum && bpf_core_field_exists(skb->_skb_refdst)) {
		struct dst_entry *dst = (struct dst_entry *)(BPF_CORE_READ(skb, _skb_refdst) & ~1UL);

		if (dst)
			inum = BPF_CORE_READ(dst, dev, nd_net.net, ns.inum);
	}
	return inum;
}

/* The kernel's number (it varies) for a drop that is no packet in flight:
 * QUEUE_PURGE, a socket's or device's queue emptied as it goes away (every
 * closed connection's). Userspace sets it; ~0: none. */
const volatile __u32 ignored_reason = ~0U;

static __always_inline void on_drop(struct sk_buff *skb, __u64 location, __u32 reason)
{
	struct match m = {};

	if (reason == ignored_reason)
		return;

	if (!match_skb(skb, &m, 0))
		return;

	struct event *e = new_event(skb, &m, 0);

	if (!e)
		return;
	e->kind = EVENT_DROP;
	e->location = location;
	e->drop_reason = reason;
	e->netns = skb_netns(skb);
	e->ifindex_in = BPF_CORE_READ(skb, skb_iif);
	e->ifindex_out = BPF_CORE_READ(skb, dev, ifindex);
	submit(e);
}

/* BTF-typed tracepoint: arguments are typed, skb is a trusted pointer. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb_btf, struct sk_buff *skb, void *location, enum skb_drop_reason reason)
{
	on_drop(skb, (__u64)location, reason);
	return 0;
}

/* Plain tracepoint, for kernels where tp_btf cannot be loaded. */
SEC("tracepoint/skb/kfree_skb")
int kfree_skb_tp(struct trace_event_raw_kfree_skb *ctx)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(ctx->reason))
		reason = ctx->reason;
	on_drop(ctx->skbaddr, (__u64)ctx->location, reason);
	return 0;
}
