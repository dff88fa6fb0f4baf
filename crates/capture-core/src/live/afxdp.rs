//! AF_XDP receive path: one socket per interface receive queue, fed by callrec's XDP filter
//! through its XSKMAP. Zero-copy where the driver supports it, copy mode otherwise (veth).
//!
//! Built on xsk-rs (libxdp's ring helpers); the program is ours, so libxdp is told not to load
//! its default one. The UMEM frames cycle fill ring → kernel → rx ring → callback → fill ring;
//! they are handed back right after the batch's callbacks, so a frame is never held by a worker.

use std::num::NonZeroU32;

use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use super::xdp::XdpFilter;
use super::{LiveError, Source, SourceStats, now_ns};

/// Sizes of one socket's UMEM and rings.
#[derive(Debug, Clone, Copy)]
pub struct AfXdpConfig {
    /// UMEM frames (2 KiB each); at most `ring` of them sit in the fill ring at a time.
    pub frames: u32,
    /// Size of the fill and rx rings (a power of two).
    pub ring: u32,
    /// Ask for zero-copy first (falls back to copy mode when the driver refuses).
    pub zero_copy: bool,
}

impl Default for AfXdpConfig {
    /// 32,768 frames (64 MiB, like AF_PACKET's default 64 x 1 MiB ring): 130 ms of buffer at
    /// 250 kpps. With 4,096 frames (16 ms) a stall of the reader's core (the live bench saw the
    /// whole 2-core machine pause for 160 ms) overflowed the ring and lost SIP with the media.
    fn default() -> Self {
        AfXdpConfig { frames: 32768, ring: 32768, zero_copy: true }
    }
}

pub struct AfXdpSource {
    iface: String,
    queue: u32,
    zero_copy: bool,
    umem: Umem,
    rx: RxQueue,
    fq: FillQueue,
    _tx: TxQueue,
    _cq: CompQueue,
    descs: Vec<FrameDesc>,
    packets: u64,
    bytes: u64,
}

// The queues hold raw ring pointers that xsk-rs marks Send; the UMEM region is Send + Sync.
// A source lives on exactly one reader thread.

fn xerr(iface: &str, queue: u32, what: impl std::fmt::Display) -> LiveError {
    LiveError::AfXdp { iface: iface.to_string(), queue, what: what.to_string() }
}

/// Frames ahead of the one handled whose first lines are asked for (see [`AfXdpSource::poll`]).
const AHEAD: usize = 4;
/// Bytes of a frame asked for ahead: the headers and a G.711 packet's payload (214 bytes on the
/// wire) are four lines.
const PREFETCH_BYTES: usize = 256;

impl AfXdpSource {
    /// Opens the socket of `queue` on `iface` and registers it in `filter`'s XSKMAP.
    pub fn open(filter: &mut XdpFilter, queue: u32, cfg: AfXdpConfig) -> Result<AfXdpSource, LiveError> {
        let iface = filter.iface().to_string();
        let qsize = |n| QueueSize::new(n).map_err(|e| xerr(&iface, queue, e));
        let umem_cfg = UmemConfig::builder()
            .frame_size(FrameSize::new(2048).map_err(|e| xerr(&iface, queue, e))?)
            .fill_queue_size(qsize(cfg.ring)?)
            .comp_queue_size(qsize(64)?)
            .build()
            .map_err(|e| xerr(&iface, queue, e))?;
        let frames = NonZeroU32::new(cfg.frames).ok_or_else(|| xerr(&iface, queue, "zero UMEM frames"))?;
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| {
            let text = e.to_string();
            if text.contains("ermission") || text.contains("Cannot allocate") {
                LiveError::Permission {
                    what: format!("allocate the AF_XDP UMEM for {iface} queue {queue}"),
                    caps: super::missing_caps(&["CAP_IPC_LOCK", "CAP_NET_RAW"]),
                }
            } else {
                xerr(&iface, queue, format!("creating the UMEM: {text}"))
            }
        })?;
        let name = iface.parse().map_err(|e| xerr(&iface, queue, format!("interface name: {e}")))?;
        let attempt = |flags: BindFlags| {
            let sc = SocketConfig::builder()
                .rx_queue_size(QueueSize::new(cfg.ring).expect("checked above"))
                .tx_queue_size(QueueSize::new(64).expect("power of two"))
                .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                .bind_flags(flags | BindFlags::XDP_USE_NEED_WAKEUP)
                .build();
            // SAFETY: this UMEM is not shared, so the prog-load flag rule for shared UMEMs does not apply.
            unsafe { Socket::new(sc, &umem, &name, queue) }
        };
        let mut zero_copy = cfg.zero_copy;
        let created = if zero_copy {
            match attempt(BindFlags::XDP_ZEROCOPY) {
                Ok(s) => Ok(s),
                Err(_) => {
                    zero_copy = false;
                    attempt(BindFlags::XDP_COPY)
                }
            }
        } else {
            attempt(BindFlags::XDP_COPY)
        };
        let (tx, rx, fq_cq) = created.map_err(|e| {
            let text = format!("{e}");
            if text.contains("ermission") {
                LiveError::Permission {
                    what: format!("open an AF_XDP socket on {iface} queue {queue}"),
                    caps: super::missing_caps(&["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_IPC_LOCK"]),
                }
            } else {
                xerr(&iface, queue, format!("creating the socket: {text}"))
            }
        })?;
        let (mut fq, cq) = fq_cq.ok_or_else(|| xerr(&iface, queue, "no fill/completion queue for an unshared UMEM"))?;
        filter.register_socket(queue, rx.fd())?;
        // SAFETY: the descriptors come from this UMEM and nothing else references their frames.
        let filled = unsafe { fq.produce(&descs[..descs.len().min(cfg.ring as usize)]) };
        if filled == 0 {
            return Err(xerr(&iface, queue, "the fill ring took no frames"));
        }
        Ok(AfXdpSource { iface, queue, zero_copy, umem, rx, fq, _tx: tx, _cq: cq, descs, packets: 0, bytes: 0 })
    }

    #[inline]
    fn prefetch_frame(&self, d: &FrameDesc) {
        // SAFETY: the descriptor came from the rx ring, so it names a frame of this UMEM that
        // is ours until it goes back to the fill ring; nothing is read here.
        let bytes = unsafe { self.umem.data(d) }.contents();
        for off in (0..bytes.len().min(PREFETCH_BYTES)).step_by(64) {
            crate::prefetch::prefetch(bytes.as_ptr().wrapping_add(off));
        }
    }
}

impl Source for AfXdpSource {
    fn label(&self) -> String {
        format!("{} q{} af-xdp ({})", self.iface, self.queue, if self.zero_copy { "zero-copy" } else { "copy" })
    }

    fn iface(&self) -> &str {
        &self.iface
    }

    fn queue(&self) -> u32 {
        self.queue
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(i64, &[u8])) -> Result<usize, LiveError> {
        let max = max.min(self.descs.len());
        // SAFETY: the slots are overwritten with descriptors of received frames of our UMEM.
        let n = unsafe { self.rx.consume(&mut self.descs[..max]) };
        if n == 0 {
            if self.fq.needs_wakeup() {
                self.fq.wakeup(self.rx.fd_mut(), 0).map_err(|e| xerr(&self.iface, self.queue, e))?;
            }
            return Ok(0);
        }
        let ts = now_ns();
        // In copy mode the kernel wrote each frame from the core that received it (on a veth
        // rig, the sender's), so its lines are misses here, one frame after another. Asking for
        // a frame's first lines AHEAD frames early keeps several of those misses in flight.
        for d in self.descs[..n.min(AHEAD)].iter() {
            self.prefetch_frame(d);
        }
        for i in 0..n {
            if let Some(d) = self.descs[..n].get(i + AHEAD) {
                self.prefetch_frame(d);
            }
            let d = &self.descs[i];
            // SAFETY: the kernel handed this frame to us through the rx ring; it stays ours until
            // it is produced to the fill ring below.
            let data = unsafe { self.umem.data(d) };
            let bytes = data.contents();
            self.bytes += bytes.len() as u64;
            f(ts, bytes);
        }
        self.packets += n as u64;
        // SAFETY: the frames were consumed above and are no longer read.
        let mut back = 0;
        while back < n {
            back += unsafe { self.fq.produce(&self.descs[back..n]) };
            if back < n {
                std::hint::spin_loop();
            }
        }
        if self.fq.needs_wakeup() {
            self.fq.wakeup(self.rx.fd_mut(), 0).map_err(|e| xerr(&self.iface, self.queue, e))?;
        }
        Ok(n)
    }

    // No `wait` override: blocking in poll(2) on the XDP socket lost a packet in one of four
    // live test runs on veth (copy mode), so an idle AF_XDP reader sleeps (the default) instead.

    fn stats(&mut self) -> SourceStats {
        let (ring_drops, other_drops) = match self.rx.fd().xdp_statistics() {
            Ok(s) => (s.rx_ring_full(), s.rx_dropped() + s.rx_invalid_descs()),
            Err(_) => (0, 0),
        };
        SourceStats { packets: self.packets, bytes: self.bytes, ring_drops, other_drops }
    }
}
