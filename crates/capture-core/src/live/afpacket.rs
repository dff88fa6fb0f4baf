//! AF_PACKET receive path with a TPACKET_V3 memory-mapped ring (`--mode af-packet`): for NICs or
//! kernels without XDP, and as a comparison point. The kernel fills whole blocks of frames and
//! hands a block over when it is full or its timeout retires it; we walk the block's frames in
//! place and give the block back. Several sockets on one interface form a fanout group that
//! spreads flows by hash, one reader each.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

use super::{LiveError, Source, SourceStats, ifindex, permission_or, setsockopt};

#[derive(Debug, Clone, Copy)]
pub struct AfPacketConfig {
    pub block_size: u32,
    pub blocks: u32,
    /// Milliseconds after which a partly filled block is handed over anyway.
    pub block_timeout_ms: u32,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        AfPacketConfig { block_size: 1 << 20, blocks: 64, block_timeout_ms: 10 }
    }
}

pub struct AfPacketSource {
    iface: String,
    member: u32,
    fd: OwnedFd,
    ring: *mut u8,
    ring_len: usize,
    block_size: usize,
    blocks: usize,
    current: usize,
    packets: u64,
    bytes: u64,
    drops: u64,
}

// SAFETY: the ring mapping belongs to this source alone and moves with it to its reader thread.
unsafe impl Send for AfPacketSource {}

impl AfPacketSource {
    /// Opens member `member` of a fanout group (`group` = Some(id)) or a lone socket on `iface`.
    pub fn open(iface: &str, member: u32, group: Option<u16>, cfg: AfPacketConfig) -> Result<Self, LiveError> {
        let idx = ifindex(iface)?;
        let io = |what: &'static str| move |source| LiveError::AfPacket { iface: iface.to_string(), what, source };
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        if raw < 0 {
            return Err(permission_or(iface, "open a packet socket", std::io::Error::last_os_error(), io("socket")));
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let version = libc::tpacket_versions::TPACKET_V3 as i32;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version).map_err(io("TPACKET_V3"))?;
        let frame_size = 2048u32;
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.block_size,
            tp_block_nr: cfg.blocks,
            tp_frame_size: frame_size,
            tp_frame_nr: cfg.block_size / frame_size * cfg.blocks,
            tp_retire_blk_tov: cfg.block_timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req).map_err(io("PACKET_RX_RING"))?;
        let ring_len = cfg.block_size as usize * cfg.blocks as usize;
        // SAFETY: mapping the ring the kernel just allocated for this socket.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_LOCKED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io("mmap of the ring")(std::io::Error::last_os_error()));
        }
        let src = AfPacketSource {
            iface: iface.to_string(),
            member,
            fd,
            ring: ring.cast(),
            ring_len,
            block_size: cfg.block_size as usize,
            blocks: cfg.blocks as usize,
            current: 0,
            packets: 0,
            bytes: 0,
            drops: 0,
        };
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        // SAFETY: binding to a sockaddr_ll of the right size.
        let r = unsafe {
            libc::bind(
                src.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io("bind")(std::io::Error::last_os_error()));
        }
        if let Some(id) = group {
            let arg: u32 = u32::from(id) | (libc::PACKET_FANOUT_HASH << 16);
            setsockopt(&src.fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg).map_err(io("PACKET_FANOUT"))?;
        }
        Ok(src)
    }

    fn block(&self, i: usize) -> *mut libc::tpacket_block_desc {
        // SAFETY: i < blocks, so the offset is inside the mapping.
        unsafe { self.ring.add(i * self.block_size).cast() }
    }
}

impl Drop for AfPacketSource {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what open() mapped.
        unsafe { libc::munmap(self.ring.cast(), self.ring_len) };
    }
}

impl Source for AfPacketSource {
    fn label(&self) -> String {
        format!("{} #{} af-packet (TPACKET_V3)", self.iface, self.member)
    }

    fn iface(&self) -> &str {
        &self.iface
    }

    fn queue(&self) -> u32 {
        self.member
    }

    fn wait(&mut self, timeout: Duration) {
        // POLLIN when a block is retired (full, or its timeout passed).
        super::wait_readable(self.fd.as_raw_fd(), timeout);
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(i64, &[u8])) -> Result<usize, LiveError> {
        let mut n = 0;
        // Whole blocks only: a block is handed back as a unit, so `max` is a soft limit.
        while n < max {
            let bd = self.block(self.current);
            // SAFETY: the block header lies at the start of the block; status is written by the
            // kernel, so it is read volatile and followed by an acquire fence before the frames.
            let status = unsafe { std::ptr::read_volatile(&raw const (*bd).hdr.bh1.block_status) };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            fence(Ordering::Acquire);
            // SAFETY: the block is ours until its status is set back to TP_STATUS_KERNEL.
            let (count, first) = unsafe { ((*bd).hdr.bh1.num_pkts, (*bd).hdr.bh1.offset_to_first_pkt) };
            let base = bd.cast::<u8>();
            let mut off = first as usize;
            for _ in 0..count {
                if off + size_of::<libc::tpacket3_hdr>() > self.block_size {
                    break;
                }
                // SAFETY: off stays inside the block (checked above and below).
                let h = unsafe { &*base.add(off).cast::<libc::tpacket3_hdr>() };
                let start = off + usize::from(h.tp_mac);
                let len = h.tp_snaplen as usize;
                if start + len <= self.block_size {
                    // SAFETY: the frame lies inside the block.
                    let data = unsafe { std::slice::from_raw_parts(base.add(start), len) };
                    let ts = i64::from(h.tp_sec) * 1_000_000_000 + i64::from(h.tp_nsec);
                    self.bytes += len as u64;
                    f(ts, data);
                    n += 1;
                }
                if h.tp_next_offset == 0 {
                    break;
                }
                off += h.tp_next_offset as usize;
            }
            fence(Ordering::Release);
            // SAFETY: handing the block back to the kernel.
            unsafe { std::ptr::write_volatile(&raw mut (*bd).hdr.bh1.block_status, libc::TP_STATUS_KERNEL) };
            self.current = (self.current + 1) % self.blocks;
        }
        self.packets += n as u64;
        Ok(n)
    }

    fn stats(&mut self) -> SourceStats {
        // SAFETY: zeroed plain data for getsockopt to fill.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: getsockopt into a buffer of the declared size. The kernel resets the counters
        // on every read, so they are accumulated here.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if r == 0 {
            self.drops += u64::from(st.tp_drops);
        }
        SourceStats { packets: self.packets, bytes: self.bytes, ring_drops: self.drops, other_drops: 0 }
    }
}
