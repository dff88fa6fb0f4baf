// SPDX-License-Identifier: MIT OR GPL-2.0
/*
 * The live bench's in-kernel sender (`callrec-gen send --xdp`).
 *
 * A SPAN port on a real NIC hands the XDP program frames in the driver's own buffers. A frame
 * sent into a veth through a packet socket arrives instead as an skb that veth must first copy
 * into a page with XDP headroom, in the sender's system call, on the sender's core; on a
 * two-core rig that copy and the socket's send path decide how much the generator can offer.
 *
 * This program is run by BPF_PROG_TEST_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES):
 * each run takes the next frame userspace wrote into `frames` (an mmapped array, one slot per
 * frame), copies it into the kernel's page-pool frame, trims the frame to its length and
 * redirects it to `ctl.ifindex` (the mirror port's cable), whose peer then receives an XDP
 * frame: no skb, no copy before the recorder's XDP program sees it, as from a NIC.
 *
 * Userspace also attaches the program to that cable: a test run of more than one frame installs
 * its program in the kernel's XDP dispatcher and removes it afterwards, two RCU grace periods
 * (~25 ms here) per run, unless the program is there already because it is attached. Frames that
 * really arrive on the cable (none on the rig) pass untouched.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Keep in sync with xdpgen.rs. */
#define SLOTS 1024
#define MAX_FRAME 2040

struct slot {
    __u32 len;
    __u32 pad;
    __u8 data[MAX_FRAME];
};

struct ctl {
    __u32 next;     /* slot of the next run (the program advances it) */
    __u32 count;    /* slots filled for this test run */
    __u32 ifindex;  /* where to redirect */
    __u32 bad;      /* runs that found no valid frame */
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct slot);
    __uint(max_entries, SLOTS);
} frames SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct ctl);
    __uint(max_entries, 1);
} ctl SEC(".maps");

SEC("xdp")
int xdpgen(struct xdp_md *ctx)
{
    __u32 zero = 0;
    struct ctl *c = bpf_map_lookup_elem(&ctl, &zero);
    if (!c)
        return XDP_ABORTED;
    /* Attached to the cable itself (see xdpgen.rs): what really arrives there goes on as usual. */
    if (ctx->ingress_ifindex == c->ifindex)
        return XDP_PASS;
    /* One test run executes on one CPU, frame after frame: no other writer of `next`. */
    __u32 i = c->next;
    c->next = i + 1;
    struct slot *s = i < c->count ? bpf_map_lookup_elem(&frames, &i) : 0;
    if (!s) {
        c->bad++;
        return XDP_DROP;
    }
    __u32 len = s->len;
    long room = (long)ctx->data_end - (long)ctx->data;
    if (len < 14 || len > MAX_FRAME || len > room) {
        c->bad++;
        return XDP_DROP;
    }
    if (bpf_xdp_store_bytes(ctx, 0, s->data, len) || bpf_xdp_adjust_tail(ctx, (int)len - (int)room)) {
        c->bad++;
        return XDP_DROP;
    }
    return bpf_redirect(c->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
