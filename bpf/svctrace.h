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
	EVENT_PATH = 4,  /* a packet's observations through the namespace's hooks: struct packet_path */
	/* A connection held and answered (hold_ns) came to grief after all:
	 * ts is when it was answered, ct and its tuples name it; what follows
	 * of it is reported. */
	EVENT_SETTLED = 5,
};

/* event.flags */
#define EVENT_F_PKT 0x1   /* pkt holds the packet's own L3/L4 tuple */
#define EVENT_F_CT 0x2    /* ct, ct_*, orig and reply are valid */
#define EVENT_F_INNER 0x4 /* inner holds the tuple embedded in an ICMP error */
#define EVENT_F_FRAG 0x8  /* non-first fragment: no L4 header */
/* pkt is an overlay's packet (VXLAN, UDP to an overlay port) carrying, in
 * inner, the packet of a followed connection; tcp_flags are inner's */
#define EVENT_F_ENCAP 0x10

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
	/* EVENT_COUNT, and the record of a reported packet that ends a quiet
	 * run (read as counted before it): bytes (IP) counted, original and
	 * reply direction, and packets. */
	__u64 bytes[2];
	__u32 packets[2];
	__u8 data[CAP_MAX];
};

/*
 * A packet's way through a namespace's netfilter hooks, reported once as it
 * leaves them (the last observer of LOCAL_IN or POSTROUTING, a drop, or the
 * next observed packet on the CPU) instead of one event per observer: the
 * first observation in full (e, kind EVENT_PATH), then each later one as a
 * step holding what an observer reads that can change on the way. A tuple
 * index of a step is 0 for the header's own tuple (e.pkt, e.orig, e.reply)
 * and k for tuples[k-1], the addresses translations made.
 */
#define PATH_STEPS 11
#define PATH_TUPLES 6

struct path_step {
	__u64 ct;
	__u32 dt; /* ns after e.ts */
	__u32 ifindex_in;
	__u32 ifindex_out;
	__u32 len;
	__u32 skb_mark;
	__u32 ct_mark;
	__u32 ct_status;
	__u16 ct_zone;
	__u8 stage;
	__u8 hook;
	__u8 ctinfo;
	__u8 flags; /* EVENT_F_CT */
	__u8 pkt;   /* tuple indexes, see above */
	__u8 orig;
	__u8 reply;
	__u8 pad[3];
};

struct packet_path {
	struct event e;
	__u8 nsteps;
	__u8 ntuples;
	__u8 data_step;  /* the step (1-based) data1 was captured at; 0: none */
	__u8 data_step2; /* the step data2 was captured at; 0: none */
	__u16 cap_len1;
	__u16 cap_len2;
	struct path_step steps[PATH_STEPS];
	struct tuple tuples[PATH_TUPLES];
	__u8 data1[CAP_MAX]; /* the packet after its first translation */
	__u8 data2[CAP_MAX]; /* after its last, if it had more than one */
};

/* A path held for a connection not yet answered (hold_ns): the i-th of
 * conntrack entry ct's. */
struct held_key {
	__u64 ct;
	__u32 i;
	__u32 pad;
};

/* Filter key: a watched address, port and IP protocol. */
struct target_key {
	__u8 addr[16];
	__u16 port;
	__u8 proto;
	__u8 pad;
};

#endif
