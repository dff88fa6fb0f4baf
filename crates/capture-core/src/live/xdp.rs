//! Loads callrec's XDP filter (capture-ebpf) onto an interface with aya and gives userspace its
//! maps: the signalling port set, the static media range, the media endpoints of calls in progress
//! (with the set of their ports), the AF_XDP socket map and the per-CPU verdict counters. Dropping
//! the filter detaches it. Loaded without an interface, it runs on frames in memory
//! ([`XdpFilter::test_run`]) for tests and benches.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use aya::maps::{Array, HashMap, MapData, PerCpuArray, XskMap};
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use capture_ebpf::{Counter, EP4_SEEN_SHIFT, EP4_WAYS, Ep4Bucket, MediaKey, MediaVal, PortSet};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::LiveError;

/// The verdict counters, summed over CPUs, in [`Counter::ALL`] order.
pub type Counters = [u64; Counter::ALL.len()];

pub struct XdpFilter {
    iface: String,
    mode: XdpMode,
    ebpf: Ebpf,
    xsks: XskMap<MapData>,
    media: MediaMap,
    /// Shared with [`MediaMap`], which keeps entry [`capture_ebpf::PORTS_MEDIA_KNOWN`].
    ports: Arc<Mutex<Array<MapData, PortSet>>>,
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
        Self::load(iface, Some(generic))
    }

    /// Loads the program without attaching it anywhere: for running it on frames in memory
    /// ([`XdpFilter::test_run`]), in tests and benches. Needs the same privileges as `attach`.
    pub fn load_detached() -> Result<XdpFilter, LiveError> {
        Self::load("(not attached)", None)
    }

    fn load(iface: &str, attach_generic: Option<bool>) -> Result<XdpFilter, LiveError> {
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
        let mut mode = if attach_generic == Some(true) { XdpMode::Skb } else { XdpMode::Driver };
        if let Some(generic) = attach_generic
            && let Err(e) = prog.attach(iface, mode)
        {
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
        let ports: Arc<Mutex<Array<MapData, PortSet>>> = Arc::new(Mutex::new(
            Array::try_from(take(&mut ebpf, capture_ebpf::MAP_PORTS)?).map_err(|e| err(iface, "ports", e))?,
        ));
        let media = MediaMap {
            iface: iface.to_string(),
            inner: Arc::new(Mutex::new(MediaInner {
                map: HashMap::try_from(take(&mut ebpf, capture_ebpf::MAP_MEDIA)?)
                    .map_err(|e| err(iface, "media", e))?,
                ep4: Array::try_from(take(&mut ebpf, capture_ebpf::MAP_MEDIA4)?)
                    .map_err(|e| err(iface, "media4", e))?,
                ports: ports.clone(),
                known: HashSet::default(),
                port_refs: std::collections::HashMap::default(),
                set: Box::default(),
                lingering: Vec::new(),
            })),
        };
        let counters = PerCpuArray::try_from(take(&mut ebpf, capture_ebpf::MAP_COUNTERS)?)
            .map_err(|e| err(iface, "counters", e))?;
        Ok(XdpFilter { iface: iface.to_string(), mode, ebpf, xsks, media, ports, counters })
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
        lock(&self.ports).set(capture_ebpf::PORTS_SIP, set, 0).map_err(|e| err(&self.iface, "setting SIP ports", e))
    }

    /// The opt-in static media port range (inclusive), for media negotiated out of sight.
    pub fn set_media_range(&mut self, range: Option<(u16, u16)>) -> Result<(), LiveError> {
        let mut set = PortSet::default();
        if let Some((lo, hi)) = range {
            for p in lo..=hi {
                set.insert(p);
            }
        }
        lock(&self.ports)
            .set(capture_ebpf::PORTS_MEDIA_RANGE, set, 0)
            .map_err(|e| err(&self.iface, "setting media range", e))
    }

    /// Benches only: `false` puts every port in the media port set, so that the program looks
    /// every UDP frame up in the endpoint hash, as it did before the set existed; `true` puts back
    /// the ports of the registered endpoints.
    #[doc(hidden)]
    pub fn bench_media_port_set(&self, on: bool) -> Result<(), LiveError> {
        let m = lock(&self.media.inner);
        let set = if on { *m.set } else { PortSet { bits: [0xff; 8192] } };
        lock(&self.ports)
            .set(capture_ebpf::PORTS_MEDIA_KNOWN, set, 0)
            .map_err(|e| err(&self.iface, "updating the media port set", e))
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
        let mut out = [0u64; Counter::ALL.len()];
        for c in Counter::ALL {
            if let Ok(v) = self.counters.get(&(c as u32), 0) {
                out[c as usize] = v.iter().sum();
            }
        }
        out
    }
}

impl XdpFilter {
    /// Runs the program `repeat` times on `frame` in the kernel (BPF_PROG_TEST_RUN, receive queue
    /// 0, no interface): its return code (XDP_DROP is 1, XDP_REDIRECT 4; a frame kept for an
    /// AF_XDP socket that is not registered is dropped and counted as `redirect_failed`) and the
    /// kernel's measured mean time per run in nanoseconds. The program's maps and counters are
    /// used and updated as for a received frame.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<(u32, u32), LiveError> {
        use std::os::fd::AsFd;
        let prog: &Xdp = self
            .ebpf
            .program(capture_ebpf::PROGRAM_NAME)
            .ok_or_else(|| err(&self.iface, "test run", "program missing"))?
            .try_into()
            .map_err(|e| err(&self.iface, "test run", e))?;
        let fd = prog.fd().map_err(|e| err(&self.iface, "test run", e))?.as_fd().as_raw_fd();
        prog_test_run(fd, frame, repeat, 0, 0).map_err(|e| err(&self.iface, "BPF_PROG_TEST_RUN", e))
    }
}

/// The `test` member of `union bpf_attr` (linux/bpf.h), up to `batch_size`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit, so that the kernel's check that nothing past `batch_size` is set reads zeros.
    pad: u32,
}

/// Runs the loaded program `prog_fd` `repeat` times on `frame` (BPF_PROG_TEST_RUN, no context,
/// no output buffer) with the command's `flags` and `batch_size` (both 0 for a plain run; the live
/// bench's sender uses live frames): the program's last return code and the kernel's mean time
/// per run in nanoseconds.
#[doc(hidden)]
pub fn prog_test_run(
    prog_fd: i32,
    frame: &[u8],
    repeat: u32,
    flags: u32,
    batch_size: u32,
) -> std::io::Result<(u32, u32)> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = TestRun {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        flags,
        batch_size,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid, zero-padded prefix of union bpf_attr for this command and lives
    // across the call; the kernel reads `frame` (data_size_in bytes) and writes back only
    // `retval` and `duration` (no output buffer is given).
    let r = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRun, std::mem::size_of::<TestRun>())
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
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

/// A poisoned lock only means another reader panicked mid-update; the maps stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kernel's table of media endpoints of calls in progress. Cloned into each reader thread, which
/// adds an endpoint the moment it parses the SDP that announces it (media may follow within a
/// millisecond); the lock is taken only for those rare SIP-driven changes, never per packet.
///
/// With the table it keeps the program's set of media ports (`ports` entry
/// [`capture_ebpf::PORTS_MEDIA_KNOWN`]): a port is in the set exactly while some endpoint this map
/// added, and has not removed, uses it. A port stays in the set for an endpoint the kernel's LRU
/// evicted on its own, which only costs the program a hash lookup that finds nothing.
///
/// An IPv4 endpoint also goes into `media4`, the program's direct table (one cache line per
/// lookup), when its bucket has a free way; the hash keeps every endpoint, so a full bucket only
/// costs the program the hash lookup. The program stamps the way it matched; [`MediaMap::remove_if_idle`]
/// reads both stamps.
#[derive(Clone)]
pub struct MediaMap {
    iface: String,
    inner: Arc<Mutex<MediaInner>>,
}

struct MediaInner {
    map: HashMap<MapData, MediaKey, MediaVal>,
    /// The program's direct table of IPv4 endpoints: a copy of those in `map` that found a free
    /// way in their bucket (the program falls back to `map` when it misses).
    ep4: Array<MapData, Ep4Bucket>,
    ports: Arc<Mutex<Array<MapData, PortSet>>>,
    /// Endpoints added and not removed (the LRU's own evictions are not seen here).
    known: HashSet<MediaKey>,
    /// For each port in `set`, how many of `known` use it.
    port_refs: std::collections::HashMap<u16, u32>,
    /// What `ports` entry PORTS_MEDIA_KNOWN holds.
    set: Box<PortSet>,
    /// Endpoints whose removal found media still flowing; tried again by
    /// [`MediaMap::retry_lingering`].
    lingering: Vec<(MediaKey, std::time::Duration)>,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl MediaInner {
    /// Writes the port set to the kernel after one of its bits changed. The kernel copies the
    /// 8 KiB value over the old one while the program may be reading it; only the changed byte
    /// differs between the two, so a concurrent packet sees every other port as before.
    fn write_set(&self, iface: &str) -> Result<(), LiveError> {
        lock(&self.ports)
            .set(capture_ebpf::PORTS_MEDIA_KNOWN, *self.set, 0)
            .map_err(|e| err(iface, "updating the media port set", e))
    }

    /// The `media4` bucket of an IPv4 key, its copy from the kernel and the way that holds the
    /// key (None when the key is not there). None for IPv6 keys or when the map cannot be read.
    fn ep4_find(&self, key: &MediaKey) -> Option<(u32, Ep4Bucket, Option<usize>)> {
        if key.family != 4 {
            return None;
        }
        let octets = [key.addr[0], key.addr[1], key.addr[2], key.addr[3]];
        let b = capture_ebpf::ep4_bucket(octets, key.port);
        let v = self.ep4.get(&b, 0).ok()?;
        let addr = u32::from_le_bytes(octets);
        let way = (0..EP4_WAYS).find(|&i| v.port[i] == key.port && v.addr[i] == addr);
        Some((b, v, way))
    }

    /// Copies an IPv4 endpoint into `media4` if its bucket has a free way. Best effort: the
    /// endpoint is in the hash already, where the program finds it otherwise.
    fn ep4_add(&mut self, key: &MediaKey) {
        let Some((b, mut v, None)) = self.ep4_find(key) else { return };
        if let Some(i) = (0..EP4_WAYS).find(|&i| v.port[i] == 0) {
            v.addr[i] = u32::from_le_bytes([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]);
            v.port[i] = key.port;
            v.seen[i] = (monotonic_ns() >> EP4_SEEN_SHIFT) as u16;
            // The kernel copies the 64-byte bucket over the old one while the program may read
            // it: a packet then misses this way at worst and finds the endpoint in the hash.
            let _ = self.ep4.set(b, v, 0);
        }
    }

    /// Removes `key` if the program matched no packet for it within `grace`; false if it is
    /// still in use.
    fn remove_if_idle(&mut self, iface: &str, key: &MediaKey, grace: std::time::Duration) -> bool {
        let now = monotonic_ns();
        if let Ok(v) = self.map.get(key, 0)
            && now.saturating_sub(v.last_ns) < grace.as_nanos() as u64
        {
            return false;
        }
        let ep4 = self.ep4_find(key);
        if let Some((_, v, Some(i))) = ep4 {
            // Matched less than `grace` ago, to the stamp's resolution (~17 ms): still in use.
            let ago = ((now >> EP4_SEEN_SHIFT) as u16).wrapping_sub(v.seen[i]) as u64;
            if ago << EP4_SEEN_SHIFT < grace.as_nanos() as u64 {
                return false;
            }
        }
        if let Some((b, mut v, Some(i))) = ep4 {
            v.port[i] = 0;
            v.addr[i] = 0;
            v.seen[i] = 0;
            // Should this fail, the way keeps passing the endpoint's packets, as an LRU entry
            // that outlived its call would; userspace drops them as matching no call.
            if let Err(e) = self.ep4.set(b, v, 0) {
                eprintln!("callrec: warning: {}", err(iface, "removing a media endpoint from media4", e));
            }
        }
        // An endpoint that is not in the kernel map (evicted by the LRU) is fine.
        let _ = self.map.remove(key);
        if self.known.remove(key)
            && let Some(n) = self.port_refs.get_mut(&key.port)
        {
            *n -= 1;
            if *n == 0 {
                self.port_refs.remove(&key.port);
                self.set.remove(key.port);
                if let Err(e) = self.write_set(iface) {
                    // The port stays in the kernel's set: the program then looks the hash up for
                    // it, which finds nothing. Nothing is lost; say so once per failure.
                    eprintln!("callrec: warning: {e}");
                }
            }
        }
        true
    }
}

impl MediaMap {
    pub fn add(&self, ip: IpAddr, port: u16) -> Result<(), LiveError> {
        let key = MediaKey::new(ip, port);
        let mut m = lock(&self.inner);
        // A new call on an endpoint whose removal was waiting for its media to stop: it stays.
        m.lingering.retain(|(k, _)| *k != key);
        // The port goes into the set before the endpoint into the hash: a packet that finds the
        // endpoint always finds its port.
        if !m.known.contains(&key) {
            let refs = m.port_refs.entry(port).or_insert(0);
            *refs += 1;
            if *refs == 1 {
                m.set.insert(port);
                if let Err(e) = m.write_set(&self.iface) {
                    m.set.remove(port);
                    m.port_refs.remove(&port);
                    return Err(e);
                }
            }
            m.known.insert(key);
        }
        m.map
            .insert(key, MediaVal { last_ns: monotonic_ns() }, 0)
            .map_err(|e| err(&self.iface, "adding a media endpoint", e))?;
        m.ep4_add(&key);
        Ok(())
    }

    /// Removes an endpoint unless the filter matched a packet for it within `grace` (media still
    /// flowing, seen on a queue whose reader has not heard of the call's end); such an endpoint is
    /// tried again by [`MediaMap::retry_lingering`].
    pub fn remove_if_idle(&self, ip: IpAddr, port: u16, grace: std::time::Duration) {
        let key = MediaKey::new(ip, port);
        let mut m = lock(&self.inner);
        if !m.remove_if_idle(&self.iface, &key, grace) && !m.lingering.iter().any(|(k, _)| *k == key) {
            m.lingering.push((key, grace));
        }
    }

    /// Tries again to remove the endpoints whose media was still flowing when their call was
    /// released (every half second from the readers), so that one stream that outlives its
    /// call's BYE does not stay in the kernel's tables for good.
    pub fn retry_lingering(&self) {
        let mut m = lock(&self.inner);
        if m.lingering.is_empty() {
            return;
        }
        let mut waiting = std::mem::take(&mut m.lingering);
        waiting.retain(|(key, grace)| !m.remove_if_idle(&self.iface, key, *grace));
        m.lingering = waiting;
    }

    /// Endpoints added and not removed: an upper bound on those in the kernel map, whose LRU may
    /// have evicted some. Takes the readers' lock, which they hold only for SIP-driven changes;
    /// the status report asks once a second.
    pub fn len(&self) -> usize {
        lock(&self.inner).known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
