// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * callrec's XDP filter for a mirror (SPAN) port.
 *
 * A mirror port carries everything that crosses the switch; the recorder needs only SIP and the
 * RTP/RTCP of calls in progress. This program keeps exactly that and drops the rest in the driver,
 * before an skb is ever allocated:
 *
 *   - SIP: UDP or TCP with a source or destination port in the `ports` set, entry 0 (userspace
 *     fills it from the configured signalling ports). TCP SIP flows are kept by port, so every
 *     segment of a known SIP connection passes.
 *   - Media: UDP whose destination or source (address, port) is in `media`, an LRU hash that
 *     userspace fills from the SDP it sees and empties at call end or after an idle timeout; or,
 *     opt-in, a port in the static range of `ports` entry 1 (media negotiated out of sight).
 *     `ports` entry 2 holds every port that some endpoint in `media` uses, kept by userspace with
 *     the map: the hash is looked up only for a port in it. Most of a mirror port's UDP belongs to
 *     no call, and for it two bit tests replace two hash lookups (a 20-byte hash and a bucket
 *     in a 4 MiB table each, where a bit test reads one cache line of an 8 KiB set). An IPv4
 *     endpoint is looked up first in `media4`, a direct table of one cache line per bucket that
 *     userspace fills with what it puts in `media`; the hash is looked up when that misses.
 *   - UDP fragments after the first carry no ports; they pass so that large SIP messages can be
 *     reassembled (they are rare on a voice network, and counted).
 *   - RTP-shaped UDP of no known endpoint (version 2, an audio or dynamic payload type or an RTCP
 *     packet type, ports above 1023), at most PROBE_RATE frames a second per CPU (bursts of
 *     PROBE_BURST): a call's first media packets. Userspace puts a call's endpoints in `media`
 *     as it reads the SIP that carries them, but when it is behind, that SIP still waits in the
 *     AF_XDP ring as the media behind it arrives here, and the filter dropped those packets (the
 *     first packets of 85 calls in one live run at 20,000 calls going on). Passed, they queue in
 *     the ring behind their SIP, so userspace reads the SIP first and records them; what belongs
 *     to no call userspace drops. The bound keeps a mirror port full of unknown RTP from reaching
 *     userspace at more than that rate.
 *
 * Parsed: Ethernet, 802.1Q/802.1ad (two tags), IPv4 (options), IPv6 (extension headers), UDP and
 * TCP, and one level of tunnel around them: IP-in-IP, GRE (plain, transparent Ethernet bridging,
 * ERSPAN II and III), VXLAN and GTP-U. Kept packets are redirected into the AF_XDP socket of their
 * receive queue through `xsks`; every verdict is counted per CPU in `counters` (the slot order is
 * the `Counter` enum of the Rust side, in lib.rs).
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_QUEUES 256
#define MAX_MEDIA 262144
/* The IPv4 endpoint table `media4`: 2^EP4_BITS buckets of EP4_WAYS endpoints, one cache line each. */
#define EP4_BITS 14
#define EP4_WAYS 8
#define EP4_SEEN_SHIFT 24 /* `seen` is bpf_ktime_get_ns() >> 24: units of ~16.8 ms, wrapping every ~18 min */
/* RTP-shaped frames of no known endpoint passed per second and CPU, and at most at once. */
#define PROBE_RATE 20000
#define PROBE_BURST 2000

enum counter {
    C_PASS_SIP = 0,
    C_PASS_MEDIA,
    C_PASS_RANGE,
    C_PASS_FRAGMENT,
    C_DROP_OTHER,
    C_DROP_NOT_IP,
    C_MALFORMED,
    C_REDIRECT_FAILED,
    C_PASS_PROBE,
    C_PROBE_OVER_RATE,
    C_COUNT,
};

/* Keep in sync with MediaKey in lib.rs. */
struct media_key {
    __u8 addr[16];  /* IPv4 in the first four bytes, the rest zero */
    __u16 port;     /* host byte order */
    __u8 family;    /* 4 or 6 */
    __u8 pad;
};

struct media_val {
    __u64 last_ns;  /* bpf_ktime_get_ns() of the last packet that matched */
};

struct port_set {
    __u8 bits[8192];
};

/* Keep in sync with Ep4Bucket in lib.rs. */
struct ep4_bucket {
    __u32 addr[EP4_WAYS]; /* the address's four bytes as they are in the packet */
    __u16 port[EP4_WAYS]; /* host byte order; 0: a free way */
    __u16 seen[EP4_WAYS]; /* bpf_ktime_get_ns() >> EP4_SEEN_SHIFT at the last match */
};

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, MAX_QUEUES);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, MAX_MEDIA);
    __type(key, struct media_key);
    __type(value, struct media_val);
} media SEC(".maps");

/* IPv4 endpoints that are also in `media`, by hash of address and port (see ep4_known). */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1 << EP4_BITS);
    __type(key, __u32);
    __type(value, struct ep4_bucket);
} media4 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 3);
    __type(key, __u32);
    __type(value, struct port_set);
} ports SEC(".maps");

/* The probe's token bucket, per CPU: credit left, and when it was last refilled. */
struct probe_bucket {
    __u64 credit;
    __u64 at_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct probe_bucket);
} probe SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, C_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

enum verdict { V_SIP, V_MEDIA, V_RANGE, V_FRAGMENT, V_DROP, V_MALFORMED, V_TUNNEL, V_PROBE, V_PROBE_DROP };

#define ETH_P_IPV4 0x0800
#define ETH_P_IPV6_ 0x86DD
#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ETH_P_TEB_ 0x6558
#define ETH_P_ERSPAN2 0x88BE
#define ETH_P_ERSPAN3 0x22EB
#define NEXT_ETHERNET 1 /* the tunnel carries an Ethernet frame */

struct cursor {
    void *pos;
    void *end;
};

/* Keeps clang from folding a variable packet offset into later constant offsets, which would
 * leave the verifier checking bounds on one pointer and seeing the access through another. */
#define opaque(x) asm volatile("" : "+r"(x))

static __always_inline void count(__u32 slot)
{
    __u64 *v = bpf_map_lookup_elem(&counters, &slot);
    if (v)
        *v += 1;
}

static __always_inline __u16 be16(const __u8 *p)
{
    return ((__u16)p[0] << 8) | p[1];
}

static __always_inline int port_in(__u32 set, __u16 port)
{
    struct port_set *s = bpf_map_lookup_elem(&ports, &set);
    if (!s)
        return 0;
    return (s->bits[(port >> 3) & 8191] >> (port & 7)) & 1;
}

/* Ethernet plus up to two VLAN tags; returns the ethertype or -1 when truncated. */
static __always_inline int parse_eth(struct cursor *c)
{
    __u8 *p = c->pos;
    if ((void *)(p + 14) > c->end)
        return -1;
    __u16 proto = ((__u16)p[12] << 8) | p[13];
    p += 14;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != ETH_P_8021Q_ && proto != ETH_P_8021AD_)
            break;
        if ((void *)(p + 4) > c->end)
            return -1;
        proto = ((__u16)p[2] << 8) | p[3];
        p += 4;
    }
    c->pos = p;
    return proto;
}

static __always_inline int media_known(__u8 family, const __u8 *addr, __u16 port)
{
    struct media_key k = {};
    k.family = family;
    k.port = port;
    if (family == 4)
        __builtin_memcpy(k.addr, addr, 4);
    else
        __builtin_memcpy(k.addr, addr, 16);
    struct media_val *v = bpf_map_lookup_elem(&media, &k);
    if (!v)
        return 0;
    v->last_ns = bpf_ktime_get_ns();
    return 1;
}

/* Whether an IPv4 endpoint is in `media4`: one array bucket, a cache line, where `media` reads a
 * bucket head and then an element elsewhere (two dependent misses, ~300 ns a frame on the rig at
 * 8,000 calls). `media4` holds a subset of `media` (an endpoint whose bucket is full, or one being
 * written while this reads, is found there instead), so a miss here is no verdict. Keep the hash
 * in sync with ep4_bucket() in lib.rs. */
static __always_inline int ep4_known(const __u8 *addr, __u16 port)
{
    __u32 a;
    __builtin_memcpy(&a, addr, 4);
    __u32 b = ((a ^ ((__u32)port * 0x9E3779B1u)) * 0x85EBCA6Bu) >> (32 - EP4_BITS);
    struct ep4_bucket *e = bpf_map_lookup_elem(&media4, &b);
    if (!e || port == 0)
        return 0;
#pragma unroll
    for (int i = 0; i < EP4_WAYS; i++) {
        if (e->port[i] == port && e->addr[i] == a) {
            __u16 now = bpf_ktime_get_ns() >> EP4_SEEN_SHIFT;
            if (e->seen[i] != now)
                e->seen[i] = now;
            return 1;
        }
    }
    return 0;
}

/* Whether the UDP payload at `p` looks like RTP or RTCP: version 2, and an audio payload type
 * (0-34), a dynamic one (96-127) or an RTCP packet type (200-207), between ports above 1023. */
static __always_inline int rtp_shaped(const __u8 *p, const void *end, __u16 sport, __u16 dport)
{
    if ((void *)(p + 12) > end || sport < 1024 || dport < 1024 || (p[0] >> 6) != 2)
        return 0;
    __u8 pt = p[1] & 0x7f;
    return pt <= 34 || pt >= 96 || (p[1] >= 200 && p[1] <= 207);
}

/* Takes one frame's credit from this CPU's probe bucket; refills it (up to PROBE_BURST) only
 * when it is empty, so that a passing frame reads no clock. */
static __always_inline int probe_take(void)
{
    __u32 k = 0;
    struct probe_bucket *b = bpf_map_lookup_elem(&probe, &k);
    if (!b)
        return 0;
    if (b->credit) {
        b->credit -= 1;
        return 1;
    }
    __u64 now = bpf_ktime_get_ns();
    __u64 earned = (now - b->at_ns) / (1000000000ull / PROBE_RATE);
    if (!earned)
        return 0;
    b->credit = (earned > PROBE_BURST ? PROBE_BURST : earned) - 1;
    b->at_ns = now;
    return 1;
}

/* UDP after its IP header: SIP port, known media, a tunnel, the static range, a probe, or drop. */
static __always_inline int udp_verdict(struct cursor *c, __u8 family, const __u8 *saddr, const __u8 *daddr,
                                       int depth, int *next)
{
    __u8 *u = c->pos;
    if ((void *)(u + 8) > c->end)
        return V_MALFORMED;
    __u16 sport = be16(u), dport = be16(u + 2);
    if (port_in(0, sport) || port_in(0, dport))
        return V_SIP;
    int dknown = port_in(2, dport), sknown = port_in(2, sport);
    if (family == 4 && ((dknown && ep4_known(daddr, dport)) || (sknown && ep4_known(saddr, sport))))
        return V_MEDIA;
    if ((dknown && media_known(family, daddr, dport)) || (sknown && media_known(family, saddr, sport)))
        return V_MEDIA;
    if (depth == 0 && (dport == 4789 || dport == 8472)) {
        c->pos = u + 16; /* UDP + VXLAN header */
        *next = NEXT_ETHERNET;
        return V_TUNNEL;
    }
    if (depth == 0 && dport == 2152) {
        __u8 *g = u + 8;
        if ((void *)(g + 8) > c->end)
            return V_MALFORMED;
        if ((g[0] >> 5) != 1 || g[1] != 0xff) /* GTPv1, G-PDU only */
            return V_DROP;
        __u8 *p = g + 8;
        if (g[0] & 0x07) {
            if ((void *)(g + 12) > c->end)
                return V_MALFORMED;
            __u8 ext = (g[0] & 0x04) ? g[11] : 0;
            p = g + 12;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                if (!ext)
                    break;
                if ((void *)(p + 1) > c->end)
                    return V_MALFORMED;
                __u32 len = (__u32)p[0] * 4;
                if (len == 0 || len > 64)
                    return V_MALFORMED;
                __u8 *last = p + len - 1; /* the next extension's type */
                if ((void *)(last + 1) > c->end)
                    return V_MALFORMED;
                ext = *last;
                p = last + 1;
            }
            if (ext)
                return V_DROP;
        }
        if ((void *)(p + 1) > c->end)
            return V_MALFORMED;
        __u8 v = p[0] >> 4;
        c->pos = p;
        *next = v == 4 ? ETH_P_IPV4 : v == 6 ? ETH_P_IPV6_ : 0;
        return *next ? V_TUNNEL : V_DROP;
    }
    if (port_in(1, dport) || port_in(1, sport))
        return V_RANGE;
    if (rtp_shaped(u + 8, c->end, sport, dport))
        return probe_take() ? V_PROBE : V_PROBE_DROP;
    return V_DROP;
}

static __always_inline int tcp_verdict(struct cursor *c)
{
    __u8 *t = c->pos;
    if ((void *)(t + 20) > c->end)
        return V_MALFORMED;
    return port_in(0, be16(t)) || port_in(0, be16(t + 2)) ? V_SIP : V_DROP;
}

/* GRE: the length of its header and what it carries. */
static __always_inline int gre_verdict(struct cursor *c, int *next)
{
    __u8 *g = c->pos;
    if ((void *)(g + 4) > c->end)
        return V_MALFORMED;
    if ((g[1] & 0x07) != 0) /* version 1 is PPTP: its PPP payload is not followed here */
        return V_DROP;
    __u16 proto = ((__u16)g[2] << 8) | g[3];
    __u32 len = 4;
    if (g[0] & 0x80)
        len += 4;
    if (g[0] & 0x20)
        len += 4;
    if (g[0] & 0x10)
        len += 4;
    __u8 *p = g + len;
    if (proto == ETH_P_IPV4 || proto == ETH_P_IPV6_) {
        c->pos = p;
        *next = proto;
        return V_TUNNEL;
    }
    if (proto == ETH_P_TEB_) {
        c->pos = p;
        *next = NEXT_ETHERNET;
        return V_TUNNEL;
    }
    if (proto == ETH_P_ERSPAN2) {
        c->pos = p + 8;
        *next = NEXT_ETHERNET;
        return V_TUNNEL;
    }
    if (proto == ETH_P_ERSPAN3) {
        if ((void *)(p + 12) > c->end)
            return V_MALFORMED;
        c->pos = p + 12 + ((p[11] & 0x01) ? 8 : 0);
        *next = NEXT_ETHERNET;
        return V_TUNNEL;
    }
    return V_DROP;
}

static __always_inline int l4_verdict(struct cursor *c, __u8 proto, __u8 family, const __u8 *saddr,
                                      const __u8 *daddr, int depth, int *next)
{
    switch (proto) {
    case IPPROTO_UDP:
        return udp_verdict(c, family, saddr, daddr, depth, next);
    case IPPROTO_TCP:
        return tcp_verdict(c);
    }
    if (depth > 0)
        return V_DROP;
    switch (proto) {
    case IPPROTO_IPIP:
        *next = ETH_P_IPV4;
        return V_TUNNEL;
    case IPPROTO_IPV6:
        *next = ETH_P_IPV6_;
        return V_TUNNEL;
    case IPPROTO_GRE:
        return gre_verdict(c, next);
    }
    return V_DROP;
}

static __always_inline int ipv4_verdict(struct cursor *c, int depth, int *next)
{
    __u8 *ip = c->pos;
    if ((void *)(ip + 20) > c->end)
        return V_MALFORMED;
    if ((ip[0] >> 4) != 4)
        return V_MALFORMED;
    __u32 ihl = (ip[0] & 0x0f) * 4;
    if (ihl < 20)
        return V_MALFORMED;
    if ((void *)(ip + ihl) > c->end)
        return V_MALFORMED;
    __u8 proto = ip[9];
    __u16 frag = (((__u16)ip[6] << 8) | ip[7]) & 0x3fff;
    if (frag) {
        if (proto != IPPROTO_UDP)
            return V_DROP;
        /* Later fragments carry no ports; keep every piece of a fragmented datagram so that
         * userspace can reassemble it and decide (SIP INVITEs with big SDP do fragment). */
        return V_FRAGMENT;
    }
    c->pos = ip + ihl;
    return l4_verdict(c, proto, 4, ip + 12, ip + 16, depth, next);
}

static __always_inline int ipv6_verdict(struct cursor *c, int depth, int *next)
{
    __u8 *ip = c->pos;
    if ((void *)(ip + 40) > c->end)
        return V_MALFORMED;
    if ((ip[0] >> 4) != 6)
        return V_MALFORMED;
    __u8 proto = ip[6];
    __u8 *p = ip + 40;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (proto == 0 || proto == 43 || proto == 60) {
            if ((void *)(p + 2) > c->end)
                return V_MALFORMED;
            __u32 len = ((__u32)p[1] + 1) * 8;
            proto = p[0];
            p += len;
        } else if (proto == 44) {
            if ((void *)(p + 8) > c->end)
                return V_MALFORMED;
            __u16 off = (((__u16)p[2] << 8) | p[3]);
            if ((off & 0xfff8) != 0 || (off & 1))
                return p[0] == IPPROTO_UDP ? V_FRAGMENT : V_DROP;
            proto = p[0];
            p += 8;
        } else {
            break;
        }
    }
    if ((void *)p > c->end)
        return V_MALFORMED;
    c->pos = p;
    return l4_verdict(c, proto, 6, ip + 8, ip + 24, depth, next);
}

/* Everything after the link layer, in a global function: the verifier checks it once on its
 * own, with `off` as an unknown bounded offset, instead of once per path through the caller
 * (inlining the whole parser for the outer and the tunnelled packet multiplies the paths past the
 * verifier's budget). */
struct l3_out {
    __u32 off;  /* where a tunnel's inner packet starts */
    __u32 next; /* its ethertype, or NEXT_ETHERNET */
};

__attribute__((noinline)) int l3_classify(struct xdp_md *ctx, __u32 off, __u32 ethertype, __u32 depth,
                                          struct l3_out *out)
{
    if (!out)
        return V_MALFORMED;
    if (off > 511)
        return V_MALFORMED;
    void *data = (void *)(long)ctx->data;
    __u64 o = off;
    opaque(o);  /* so that clang keeps the mask: it is what bounds the offset for the verifier */
    o &= 511;
    void *pos = data + o;
    struct cursor c = { .pos = pos, .end = (void *)(long)ctx->data_end };
    int next = 0;
    int v;
    if (ethertype == ETH_P_IPV4)
        v = ipv4_verdict(&c, depth, &next);
    else if (ethertype == ETH_P_IPV6_)
        v = ipv6_verdict(&c, depth, &next);
    else
        return -1;
    if (v == V_TUNNEL) {
        out->off = (__u32)(c.pos - data);
        out->next = next;
    }
    return v;
}

/* Ethernet and VLAN tags at `off`; the ethertype, or -1 when truncated. */
__attribute__((noinline)) int eth_classify(struct xdp_md *ctx, __u32 off, struct l3_out *out)
{
    if (!out)
        return -1;
    if (off > 511)
        return -1;
    void *data = (void *)(long)ctx->data;
    __u64 o = off;
    opaque(o);  /* so that clang keeps the mask: it is what bounds the offset for the verifier */
    o &= 511;
    void *pos = data + o;
    struct cursor c = { .pos = pos, .end = (void *)(long)ctx->data_end };
    int proto = parse_eth(&c);
    if (proto >= 0)
        out->off = (__u32)(c.pos - data);
    return proto;
}

SEC("xdp")
int callrec_filter(struct xdp_md *ctx)
{
    struct l3_out o = {};
    int proto = eth_classify(ctx, 0, &o);
    if (proto < 0) {
        count(C_MALFORMED);
        return XDP_DROP;
    }
    int v = l3_classify(ctx, o.off, proto, 0, &o);
    if (v < 0) {
        count(C_DROP_NOT_IP);
        return XDP_DROP;
    }
    if (v == V_TUNNEL) {
        if (o.next == NEXT_ETHERNET) {
            proto = eth_classify(ctx, o.off, &o);
            v = proto < 0 ? V_MALFORMED : l3_classify(ctx, o.off, proto, 1, &o);
        } else {
            v = l3_classify(ctx, o.off, o.next, 1, &o);
        }
        if (v < 0 || v == V_TUNNEL)
            v = V_DROP;
    }
    switch (v) {
    case V_SIP:
        count(C_PASS_SIP);
        break;
    case V_MEDIA:
        count(C_PASS_MEDIA);
        break;
    case V_RANGE:
        count(C_PASS_RANGE);
        break;
    case V_FRAGMENT:
        count(C_PASS_FRAGMENT);
        break;
    case V_PROBE:
        count(C_PASS_PROBE);
        break;
    case V_PROBE_DROP:
        count(C_PROBE_OVER_RATE); /* a part of C_DROP_OTHER */
        count(C_DROP_OTHER);
        return XDP_DROP;
    case V_MALFORMED:
        count(C_MALFORMED);
        return XDP_DROP;
    default:
        count(C_DROP_OTHER);
        return XDP_DROP;
    }
    long r = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
    if (r != XDP_REDIRECT)
        count(C_REDIRECT_FAILED);
    return r;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
