/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The record the kernel side hands to userspace. bpf2go generates the Go
 * types from this file's BTF (-type event, tuple, target_key, stage,
 * event_kind), so C and Go cannot drift.
 */
#ifndef SVCTRACE_H
#define SVCTRACE_H

/*
 * Observation points. Each netfilter observer program is compiled for one
 * stage; userspace attaches it at that stage's priority on every hook where
 * the stage exists. Two neighbouring stages bracket one piece of netfilter:
 * what differs between them is what that piece did.
 */
enum stage {
	STAGE_NONE = 0,
	STAGE_PRE_CONNTRACK,  /* -201: before conntrack (-200) */
	STAGE_POST_CONNTRACK, /* -199: after conntrack */
	STAGE_PRE_DNAT,       /* -101: before DNAT (-100) */
	STAGE_POST_DNAT,      /* -99: after DNAT */
	STAGE_PRE_FILTER,     /* -1: before the filter table (0) */
	STAGE_POST_FILTER,    /* 1: after the filter table */
	STAGE_PRE_SNAT,       /* 99: before SNAT (100) */
	STAGE_POST_SNAT,      /* 101: after SNAT */
	STAGE_LAST,           /* INT_MAX-1: last point before conntrack confirm */
};

enum event_kind {
	EVENT_HOOK = 1, /* a netfilter observer saw the packet */
	EVENT_DROP = 2, /* skb:kfree_skb freed a packet of a followed connection */
	EVENT_COUNT = 3, /* packets of a connection counted, not reported (the event budget) */
};

/* event.flags */
#define EVENT_F_PKT 0x1   /* pkt holds the packet's own L3/L4 tuple */
#define EVENT_F_CT 0x2    /* ct, ct_*, orig and reply are valid */
#define EVENT_F_INNER 0x4 /* inner holds the tuple embedded in an ICMP error */
#define EVENT_F_FRAG 0x8  /* non-first fragment: no L4 header */

/* The first bytes of the packet, from its IP header, kept in each event
 * for pcapng: its headers by default, at most CAP_MAX. */
#define CAP_MAX 128 /* IPv6 + TCP with every option is 100 */

/* Addresses are 16 bytes; IPv4 is stored IPv4-mapped (::ffff:a.b.c.d). Ports
 * are in network byte order; for ICMP echo sport carries the identifier. */
struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct event {
	__u64 ts;       /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 skb;      /* packet identity (skb address) */
	__u64 ct;       /* conntrack entry identity (nf_conn address) */
	__u64 location; /* EVENT_DROP: kernel address that freed the skb */
	__u32 netns;    /* network namespace inode number */
	__u32 ifindex_in;
	__u32 ifindex_out;
	__u32 len;
	__u32 skb_mark;
	__u32 ct_mark;
	__u32 ct_status; /* enum ip_conntrack_status bits */
	__u32 drop_reason; /* enum skb_drop_reason, kernel-specific numbering */
	__u16 ct_zone;
	__u8 kind;   /* enum event_kind */
	__u8 hook;   /* enum nf_inet_hooks */
	__u8 family; /* NFPROTO_IPV4 (2) or NFPROTO_IPV6 (10) */
	__u8 stage;  /* enum stage */
	__u8 ctinfo; /* enum ip_conntrack_info */
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 flags; /* EVENT_F_* */
	__u8 pad;
	struct tuple pkt;
	struct tuple orig;
	struct tuple reply;
	struct tuple inner;
	__u16 cap_len; /* bytes of data captured */
	__u16 pad2[3];
	__u64 bytes[2];   /* EVENT_COUNT: bytes (IP) counted, original and reply direction */
	__u32 packets[2]; /* EVENT_COUNT: packets counted */
	__u8 data[CAP_MAX];
};

/* Filter key: a watched address, port and IP protocol. */
struct target_key {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

#endif
