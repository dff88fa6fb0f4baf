//! Live packet sources: AF_XDP behind callrec's XDP filter, AF_PACKET (TPACKET_V3) and libpcap.
//!
//! Each source is one receive path (an interface queue, or a fanout member) read by one thread,
//! without blocking: [`Source::poll`] hands over what the ring holds and returns at once, and the
//! reader backs off adaptively ([`Backoff`]) when there is nothing: a few spins, then it blocks in
//! [`Source::wait`] (poll(2) on the socket) until frames arrive, so a busy box polls at line rate
//! and an idle one does not burn its cores. Frames are borrowed from the ring for the length
//! of the callback (the one copy is the reader's, into a worker's batch).

pub mod afpacket;
pub mod afxdp;
pub mod afxdp_pure;
pub mod pcapdev;
pub mod xdp;

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LiveError {
    #[error("interface {iface} does not exist (check `ip link`, and the network namespace)")]
    NoInterface { iface: String },
    #[error("cannot {what}: permission denied; {caps}")]
    Permission { what: String, caps: String },
    #[error("XDP on {iface}: {what}")]
    Xdp { iface: String, what: String },
    #[error("AF_XDP socket on {iface} queue {queue}: {what}")]
    AfXdp { iface: String, queue: u32, what: String },
    #[error("AF_PACKET on {iface}: {what}: {source}")]
    AfPacket { iface: String, what: &'static str, source: std::io::Error },
    #[error("pcap on {iface}: {what}")]
    Pcap { iface: String, what: String },
}

/// Kernel-side counters of one source, since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    /// Dropped because the ring (or socket buffer) was full.
    pub ring_drops: u64,
    /// Other kernel-side losses (invalid descriptors, fill ring empty, interface drops).
    pub other_drops: u64,
}

/// One receive path.
pub trait Source: Send {
    /// Where it reads, for logs and `callrec status`: "eth0 q0 af-xdp (copy)".
    fn label(&self) -> String;
    /// Interface name.
    fn iface(&self) -> &str;
    /// Queue (AF_XDP) or fanout member (AF_PACKET) index.
    fn queue(&self) -> u32;
    /// The pcap link type of the frames (Ethernet for all sources here).
    fn linktype(&self) -> u32 {
        crate::decode::linktype::ETHERNET
    }
    /// Hands up to `max` frames to `f(ts_ns, frame)` without waiting; returns how many.
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(i64, &[u8])) -> Result<usize, LiveError>;
    fn stats(&mut self) -> SourceStats;
    /// Waits up to `timeout` for frames, giving the core away meanwhile. Sources with a
    /// descriptor block in poll(2) and wake on the first frame; the default sleeps.
    fn wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }
}

/// Blocks in poll(2) until `fd` is readable or `timeout` passes.
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one pollfd for the duration of the call; errors (EINTR) just end the wait early.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Wall-clock time in nanoseconds (CLOCK_REALTIME, like capture files' timestamps).
pub fn now_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Adaptive back-off for polling readers: spin while packets are flowing, then yield, then sleep
/// in growing steps up to `max_sleep`, and start over as soon as a poll finds something.
#[derive(Debug)]
pub struct Backoff {
    idle: u32,
    max_sleep: Duration,
}

impl Backoff {
    pub fn new(max_sleep: Duration) -> Self {
        Backoff { idle: 0, max_sleep }
    }

    pub fn reset(&mut self) {
        self.idle = 0;
    }

    /// Called after a poll that found nothing: spins, then yields, then says how long the reader
    /// should block in [`Source::wait`]. Spinning and yielding are kept short: on a small machine
    /// the reader shares its cores with the workers (and, on a test rig, the traffic source), so
    /// an idle reader must hand its core over quickly; blocking wakes on the first frame, so a
    /// ring (4,096 frames hold over 10 ms at 300 kpps) never waits on the timeout.
    pub fn idle(&mut self) -> Option<Duration> {
        self.idle = self.idle.saturating_add(1);
        match self.idle {
            0..=16 => {
                std::hint::spin_loop();
                None
            }
            17..=24 => {
                std::thread::yield_now();
                None
            }
            _ => Some(self.max_sleep),
        }
    }
}

/// Names the capabilities of `needed` that this process does not have in its effective set,
/// for permission errors ("missing CAP_BPF, CAP_PERFMON: run as root or `setcap ...`").
pub fn missing_caps(needed: &[&str]) -> String {
    let missing = lacking_caps(needed);
    if missing.is_empty() {
        format!(
            "the needed capabilities ({}) are present; check the memlock limit (ulimit -l) and LSM policy",
            needed.join(", ")
        )
    } else {
        format!(
            "missing {}: run as root, or grant them with `setcap cap_bpf,cap_net_admin,cap_net_raw,cap_perfmon,cap_ipc_lock+ep $(command -v callrec)`",
            missing.join(", ")
        )
    }
}

/// The capabilities of `needed` (names as in capabilities(7)) that are not in this process's
/// effective set; an unknown name counts as lacking.
pub fn lacking_caps<'a>(needed: &[&'a str]) -> Vec<&'a str> {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| u64::from_str_radix(v.trim(), 16).ok())))
        .flatten()
        .unwrap_or(0);
    let bit = |name: &str| match name {
        "CAP_NET_ADMIN" => Some(12),
        "CAP_NET_RAW" => Some(13),
        "CAP_IPC_LOCK" => Some(14),
        "CAP_SYS_ADMIN" => Some(21),
        "CAP_SYS_RESOURCE" => Some(24),
        "CAP_PERFMON" => Some(38),
        "CAP_BPF" => Some(39),
        _ => None,
    };
    needed.iter().copied().filter(|c| bit(c).is_none_or(|b| eff & (1u64 << b) == 0)).collect()
}

/// For tests that need root (network namespaces, BPF, XDP): true when this process runs as root.
/// Otherwise the test must not pass silently: this panics with how to run it (`needs` says what
/// for), unless `CALLREC_SKIP_ROOT_TESTS` is set, which opts out explicitly (returns false and
/// says so on stderr).
#[doc(hidden)]
pub fn root_or_skip(needs: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CALLREC_SKIP_ROOT_TESTS").is_some() {
        eprintln!("SKIPPED: not root and CALLREC_SKIP_ROOT_TESTS is set");
        return false;
    }
    panic!("this test needs root ({needs}): run `sudo -E cargo test`, or set CALLREC_SKIP_ROOT_TESTS=1 to skip it");
}

/// The interface index of `iface`.
pub fn ifindex(iface: &str) -> Result<u32, LiveError> {
    let name = std::ffi::CString::new(iface).map_err(|_| LiveError::NoInterface { iface: iface.to_string() })?;
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 { Err(LiveError::NoInterface { iface: iface.to_string() }) } else { Ok(idx) }
}

/// Receive queues of `iface` (from sysfs; 1 where it cannot tell).
pub fn rx_queues(iface: &str) -> u32 {
    std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count() as u32)
        .unwrap_or(1)
        .max(1)
}

/// Keeps `iface` in promiscuous mode while alive (a mirror port delivers frames addressed to other
/// hosts). Uses a packet-socket membership, so the kernel drops it when the process exits however
/// it exits; the socket itself receives nothing.
pub struct Promisc {
    fd: std::os::fd::OwnedFd,
}

impl Promisc {
    pub fn enable(iface: &str) -> Result<Promisc, LiveError> {
        use std::os::fd::FromRawFd;
        let idx = ifindex(iface)?;
        let io = |what| move |source| LiveError::AfPacket { iface: iface.to_string(), what, source };
        // SAFETY: plain socket(2); protocol 0 means no packets are queued to it.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(permission_or(iface, "open a packet socket", std::io::Error::last_os_error(), io("socket")));
        }
        // SAFETY: raw is a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let mreq = libc::packet_mreq {
            mr_ifindex: idx as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq).map_err(io("promiscuous mode"))?;
        Ok(Promisc { fd })
    }
}

impl std::fmt::Debug for Promisc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Promisc({:?})", self.fd)
    }
}

pub(crate) fn setsockopt<T>(fd: &impl std::os::fd::AsRawFd, level: i32, name: i32, val: &T) -> std::io::Result<()> {
    // SAFETY: val points to a live T of the size we pass.
    let r = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (val as *const T).cast(), size_of::<T>() as libc::socklen_t)
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

pub(crate) fn permission_or(
    iface: &str,
    what: &str,
    e: std::io::Error,
    other: impl FnOnce(std::io::Error) -> LiveError,
) -> LiveError {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        LiveError::Permission { what: format!("{what} on {iface}"), caps: missing_caps(&["CAP_NET_RAW"]) }
    } else {
        other(e)
    }
}
