//! Loads callrec's XDP filter (capture-ebpf) onto an interface with aya and gives userspace its
//! maps: the signalling port set, the static media range, the media endpoints of calls in progress,
//! the AF_XDP socket map and the per-CPU verdict counters. Dropping the filter detaches it.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use capture_ebpf::{Counter, MediaKey, MediaVal, PortSet};
use std::sync::{Arc, Mutex};

use super::LiveError;

/// The verdict counters, summed over CPUs, in [`Counter::ALL`] order.
pub type Counters = [u64; 8];

pub struct XdpFilter {
    iface: String,
    mode: XdpMode,
    _ebpf: Ebpf,
    xsks: XskMap<MapData>,
    media: MediaMap,
    ports: Array<MapData, PortSet>,
    counters: PerCpuArray<MapData, u64>,
}

fn err(iface: &str, what: &str, e: impl std::fmt::Display) -> LiveError {
    LiveError::Xdp { iface: iface.to_string(), what: format!("{what}: {e}") }
}

impl XdpFilter {
    /// Loads the program and attaches it to `iface`, in driver (native) mode when the driver has
    /// it and in generic (skb) mode otherwise, unless `generic` asks for skb mode outright.
    pub fn attach(iface: &str, generic: bool) -> Result<XdpFilter, LiveError> {
        super::ifindex(iface)?;
        let mut ebpf = EbpfLoader::new().load(capture_ebpf::PROGRAM).map_err(|e| {
            let text = e.to_string();
            let detail = format!("{e:?}");
            if detail.contains("PermissionDenied") || detail.contains("Operation not permitted") {
                LiveError::Permission {
                    what: format!("load the XDP program for {iface}"),
                    caps: super::missing_caps(&["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]),
                }
            } else {
                err(iface, "loading the XDP program", text)
            }
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(capture_ebpf::PROGRAM_NAME)
            .ok_or_else(|| err(iface, "loading", "program callrec_filter missing from the object"))?
            .try_into()
            .map_err(|e| err(iface, "loading", e))?;
        prog.load().map_err(|e| match e {
            aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
                let log = verifier_log.to_string();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                err(
                    iface,
                    "the kernel verifier refused the XDP program",
                    format!("{io_error}; log ends: {}", tail.join(" | ")),
                )
            }
            e => err(iface, "loading the XDP program", e),
        })?;
        let mut mode = if generic { XdpMode::Skb } else { XdpMode::Driver };
        if let Err(e) = prog.attach(iface, mode) {
            if generic {
                return Err(attach_error(iface, e));
            }
            mode = XdpMode::Skb;
            prog.attach(iface, mode).map_err(|e| attach_error(iface, e))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| err(iface, "loading", format!("map {name} missing from the object")))
        };
        let xsks = XskMap::try_from(take(&mut ebpf, capture_ebpf::MAP_XSKS)?).map_err(|e| err(iface, "xsks", e))?;
        let media = MediaMap {
            iface: iface.to_string(),
            map: Arc::new(Mutex::new(
                HashMap::try_from(take(&mut ebpf, capture_ebpf::MAP_MEDIA)?).map_err(|e| err(iface, "media", e))?,
            )),
            count: Arc::default(),
        };
        let ports = Array::try_from(take(&mut ebpf, capture_ebpf::MAP_PORTS)?).map_err(|e| err(iface, "ports", e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, capture_ebpf::MAP_COUNTERS)?)
            .map_err(|e| err(iface, "counters", e))?;
        Ok(XdpFilter { iface: iface.to_string(), mode, _ebpf: ebpf, xsks, media, ports, counters })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// "driver" or "generic".
    pub fn mode(&self) -> &'static str {
        match self.mode {
            XdpMode::Skb => "generic",
            _ => "driver",
        }
    }

    /// The signalling ports (UDP and TCP) whose packets always pass.
    pub fn set_sip_ports(&mut self, ports: &[u16]) -> Result<(), LiveError> {
        let mut set = PortSet::default();
        for &p in ports {
            set.insert(p);
        }
        self.ports.set(capture_ebpf::PORTS_SIP, set, 0).map_err(|e| err(&self.iface, "setting SIP ports", e))
    }

    /// The opt-in static media port range (inclusive), for media negotiated out of sight.
    pub fn set_media_range(&mut self, range: Option<(u16, u16)>) -> Result<(), LiveError> {
        let mut set = PortSet::default();
        if let Some((lo, hi)) = range {
            for p in lo..=hi {
                set.insert(p);
            }
        }
        self.ports.set(capture_ebpf::PORTS_MEDIA_RANGE, set, 0).map_err(|e| err(&self.iface, "setting media range", e))
    }

    /// A handle on the media endpoint map that reader threads can keep.
    pub fn media(&self) -> MediaMap {
        self.media.clone()
    }

    /// Endpoints currently in the kernel map.
    pub fn media_len(&self) -> usize {
        self.media.len()
    }

    /// Hands receive queue `queue`'s packets to an AF_XDP socket.
    pub fn register_socket(&mut self, queue: u32, fd: &impl AsRawFd) -> Result<(), LiveError> {
        self.xsks
            .set(queue, fd.as_raw_fd(), 0)
            .map_err(|e| err(&self.iface, &format!("registering the AF_XDP socket of queue {queue}"), e))
    }

    pub fn counters(&self) -> Counters {
        let mut out = [0u64; 8];
        for c in Counter::ALL {
            if let Ok(v) = self.counters.get(&(c as u32), 0) {
                out[c as usize] = v.iter().sum();
            }
        }
        out
    }
}

/// (slot, name) of every verdict counter, for reports.
pub fn counter_names() -> Vec<(usize, &'static str)> {
    Counter::ALL.iter().map(|&c| (c as usize, c.name())).collect()
}

fn attach_error(iface: &str, e: aya::programs::ProgramError) -> LiveError {
    let text = format!("{e:?}");
    if text.contains("No such device") || text.contains("ENODEV") {
        LiveError::NoInterface { iface: iface.to_string() }
    } else if text.contains("Operation not permitted") {
        LiveError::Permission { what: format!("attach XDP to {iface}"), caps: super::missing_caps(&["CAP_NET_ADMIN"]) }
    } else {
        err(iface, "attaching XDP", text)
    }
}

/// The kernel's table of media endpoints of calls in progress. Cloned into each reader thread, which
/// adds an endpoint the moment it parses the SDP that announces it (media may follow within a
/// millisecond); the lock is taken only for those rare SIP-driven changes, never per packet.
#[derive(Clone)]
pub struct MediaMap {
    iface: String,
    map: Arc<Mutex<HashMap<MapData, MediaKey, MediaVal>>>,
    /// Endpoints added minus endpoints removed, kept here so that reporting the size does not walk
    /// the kernel map (one syscall per key) under the lock the readers need. The LRU's own
    /// evictions are not seen, so this is an upper bound.
    count: Arc<std::sync::atomic::AtomicUsize>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl MediaMap {
    pub fn add(&self, ip: IpAddr, port: u16) -> Result<(), LiveError> {
        let key = MediaKey::new(ip, port);
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let new = m.get(&key, 0).is_err();
        m.insert(key, MediaVal { last_ns: monotonic_ns() }, 0)
            .map_err(|e| err(&self.iface, "adding a media endpoint", e))?;
        if new {
            self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes an endpoint unless the filter matched a packet for it within `grace` (media still
    /// flowing, seen on a queue whose reader has not heard of the call's end). An endpoint that is
    /// not there (evicted by the LRU) is fine.
    pub fn remove_if_idle(&self, ip: IpAddr, port: u16, grace: std::time::Duration) {
        let key = MediaKey::new(ip, port);
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(v) = m.get(&key, 0)
            && monotonic_ns().saturating_sub(v.last_ns) < grace.as_nanos() as u64
        {
            return;
        }
        if m.remove(&key).is_ok() {
            let _ = self.count.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| Some(n.saturating_sub(1)),
            );
        }
    }

    /// Endpoints in the kernel map (an upper bound; see `count`).
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
