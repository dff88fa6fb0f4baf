//! AF_XDP receive path on the pure-Rust `xdp` crate (0.8), the alternative to [`super::afxdp`]
//! (xsk-rs, which builds libxdp from C). Same socket, same XSKMAP registration, same frame cycle
//! (fill ring → kernel → rx ring → callback → fill ring, handed back after each batch), so the
//! two can be compared on the same traffic (`callrec capture --af-xdp-crate xdp`, and the live
//! bench's `xdp-pure` mode); see docs/BENCHMARKS.md for which one is the default and why.
//!
//! Differences that matter here: `xdp` 0.8 does not map the rings' flags word, so it cannot tell
//! whether the kernel asked for a wakeup; the socket is therefore bound without
//! `XDP_USE_NEED_WAKEUP`, which copy mode (veth, and any driver without zero-copy) never needs for
//! receiving, and which a zero-copy driver then does without by polling its queue itself.

use std::ffi::CString;

use xdp::nic::NicIndex;
use xdp::slab::{HeapSlab, Slab};
use xdp::socket::{XdpSocket, XdpSocketBuilder};
use xdp::umem::{FrameSize, UmemCfgBuilder};
use xdp::{FillRing, RingConfigBuilder, RxRing, Umem};

use super::afxdp::AfXdpConfig;
use super::xdp::XdpFilter;
use super::{LiveError, Source, SourceStats, now_ns};

pub struct PureAfXdpSource {
    iface: String,
    queue: u32,
    zero_copy: bool,
    // Field order is drop order: the rings and the socket go before the UMEM they point into.
    rx: RxRing,
    fill: FillRing,
    socket: XdpSocket,
    umem: Umem,
    /// Received frames of the current batch (allocated once, never grows).
    slab: HeapSlab,
    packets: u64,
    bytes: u64,
}

// SAFETY: the source is created on one thread and moved to its reader thread, where it stays. The
// raw pointers inside (the UMEM mapping, the mapped rings, and the frames in `slab`, which is
// empty between calls) point into memory mapped for the whole process, valid from any thread, and
// only `&mut self` methods touch them, so no two threads use them at once.
unsafe impl Send for PureAfXdpSource {}

fn xerr(iface: &str, queue: u32, what: impl std::fmt::Display) -> LiveError {
    LiveError::AfXdp { iface: iface.to_string(), queue, what: what.to_string() }
}

/// Largest batch one poll takes from the rx ring.
const BATCH: usize = 256;

impl PureAfXdpSource {
    /// Opens the socket of `queue` on `filter`'s interface and registers it in the XSKMAP.
    pub fn open(filter: &mut XdpFilter, queue: u32, cfg: AfXdpConfig) -> Result<PureAfXdpSource, LiveError> {
        let iface = filter.iface().to_string();
        let e = |what: String| xerr(&iface, queue, what);
        let name = CString::new(iface.clone()).map_err(|_| e("interface name has a NUL byte".into()))?;
        let nic = NicIndex::lookup_by_name(&name)
            .map_err(|err| e(format!("looking the interface up: {err}")))?
            .ok_or_else(|| e("no such interface".into()))?;
        let umem_cfg = UmemCfgBuilder { frame_size: FrameSize::TwoK, frame_count: cfg.frames, ..Default::default() }
            .build()
            .map_err(|err| e(format!("UMEM configuration: {err}")))?;
        let mut umem = Umem::map(umem_cfg).map_err(|err| {
            if err.kind() == std::io::ErrorKind::PermissionDenied || err.raw_os_error() == Some(libc::ENOMEM) {
                LiveError::Permission {
                    what: format!("allocate the AF_XDP UMEM for {iface} queue {queue}"),
                    caps: super::missing_caps(&["CAP_IPC_LOCK", "CAP_NET_RAW"]),
                }
            } else {
                e(format!("creating the UMEM: {err}"))
            }
        })?;
        let rings = RingConfigBuilder { rx_count: cfg.ring, tx_count: 0, fill_count: cfg.ring, completion_count: 64 }
            .build()
            .map_err(|err| e(format!("ring configuration: {err}")))?;
        // Zero-copy first when asked for; a driver that refuses it fails the bind, and a fresh
        // socket (registration is per socket) binds in copy mode.
        let attempt = |zero_copy: bool| -> Result<_, LiveError> {
            let mut b = XdpSocketBuilder::new().map_err(|err| {
                if err.to_string().contains("ermission") {
                    LiveError::Permission {
                        what: format!("open an AF_XDP socket on {iface} queue {queue}"),
                        caps: super::missing_caps(&["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_IPC_LOCK"]),
                    }
                } else {
                    e(format!("creating the socket: {err}"))
                }
            })?;
            let (r, mut flags) = b.build_rings(&umem, rings).map_err(|err| e(format!("creating the rings: {err}")))?;
            if zero_copy {
                flags.force_zerocopy();
            } else {
                flags.force_copy();
            }
            let socket = b.bind(nic, queue, flags).map_err(|err| e(format!("binding the socket: {err}")))?;
            Ok((socket, r))
        };
        let mut zero_copy = cfg.zero_copy;
        let (socket, rings) = match attempt(zero_copy) {
            Ok(s) => s,
            Err(_) if zero_copy => {
                zero_copy = false;
                attempt(false)?
            }
            Err(err) => return Err(err),
        };
        let rx = rings.rx_ring.ok_or_else(|| e("no rx ring".into()))?;
        let mut fill = rings.fill_ring;
        filter.register_socket(queue, &socket)?;
        // SAFETY: the UMEM outlives the socket and rings (field order above).
        let filled = unsafe { fill.enqueue(&mut umem, cfg.ring as usize) };
        if filled == 0 {
            return Err(e("the fill ring took no frames".into()));
        }
        Ok(PureAfXdpSource {
            iface,
            queue,
            zero_copy,
            rx,
            fill,
            socket,
            umem,
            slab: HeapSlab::with_capacity(BATCH),
            packets: 0,
            bytes: 0,
        })
    }
}

impl Source for PureAfXdpSource {
    fn label(&self) -> String {
        format!("{} q{} af-xdp/xdp-rs ({})", self.iface, self.queue, if self.zero_copy { "zero-copy" } else { "copy" })
    }

    fn iface(&self) -> &str {
        &self.iface
    }

    fn queue(&self) -> u32 {
        self.queue
    }

    fn poll(&mut self, max: usize, f: &mut dyn FnMut(i64, &[u8])) -> Result<usize, LiveError> {
        let _ = max; // One batch of at most `BATCH` frames (the slab's size) per call.
        // SAFETY: the packets are returned to the UMEM below, before it can be dropped.
        let n = unsafe { self.rx.recv(&self.umem, &mut self.slab) };
        if n == 0 {
            return Ok(0);
        }
        let ts = now_ns();
        // `recv` pushes to the front, so the oldest frame is at the back.
        while let Some(p) = self.slab.pop_back() {
            self.bytes += p.len() as u64;
            f(ts, &p);
            self.umem.free_packet(p);
        }
        // Back to the kernel at once: the kernel took a fill-ring entry for every frame it
        // handed out, so there is room for all of them.
        let mut back = 0;
        while back < n {
            // SAFETY: as above.
            let k = unsafe { self.fill.enqueue(&mut self.umem, n - back) };
            if k == 0 {
                std::hint::spin_loop();
            }
            back += k;
        }
        self.packets += n as u64;
        Ok(n)
    }

    fn stats(&mut self) -> SourceStats {
        let (ring_drops, other_drops) = match self.socket.statistics() {
            Ok(s) => (s.rx_ring_full, s.rx_dropped + s.rx_invalid_descs),
            Err(_) => (0, 0),
        };
        SourceStats { packets: self.packets, bytes: self.bytes, ring_drops, other_drops }
    }
}
