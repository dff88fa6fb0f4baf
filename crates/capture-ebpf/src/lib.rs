//! callrec's kernel side: the XDP filter for a mirror port (C in `callrec.bpf.c`, compiled by
//! build.rs) embedded as an ELF object for aya to load, and the types of the maps it shares with
//! userspace. The layouts here mirror the C structs field for field.

/// The compiled XDP object (program `callrec_filter`; maps `xsks`, `media`, `media4`, `ports`,
/// `counters`).
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/callrec.bpf.o"));

/// Name of the XDP program in [`PROGRAM`].
pub const PROGRAM_NAME: &str = "callrec_filter";
pub const MAP_XSKS: &str = "xsks";
pub const MAP_MEDIA: &str = "media";
pub const MAP_PORTS: &str = "ports";
pub const MAP_COUNTERS: &str = "counters";
pub const MAP_MEDIA4: &str = "media4";
/// RTP-shaped frames of no known endpoint the filter passes per second and CPU (`PROBE_RATE` in
/// the C program: keep in sync), and at most at once (`PROBE_BURST`).
pub const PROBE_RATE: u64 = 20_000;
pub const PROBE_BURST: u64 = 2_000;

/// Entries of the `ports` map.
pub const PORTS_SIP: u32 = 0;
pub const PORTS_MEDIA_RANGE: u32 = 1;
/// Every port of an endpoint in the `media` map (kept with it by userspace): the program looks
/// an endpoint up in the hash only if its port is here.
pub const PORTS_MEDIA_KNOWN: u32 = 2;
/// Capacity of the `media` LRU map (endpoints of calls in progress).
pub const MAX_MEDIA: u32 = 262_144;
/// Capacity of the `xsks` map: receive queues per interface.
pub const MAX_QUEUES: u32 = 256;

/// A media endpoint: key of the `media` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MediaKey {
    /// IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub pad: u8,
}

// SAFETY: plain old data with no padding holes (16 + 2 + 1 + 1 bytes, alignment 2).
unsafe impl aya::Pod for MediaKey {}

impl MediaKey {
    pub fn new(ip: core::net::IpAddr, port: u16) -> Self {
        let mut k = MediaKey { port, ..Default::default() };
        match ip {
            core::net::IpAddr::V4(a) => {
                k.family = 4;
                k.addr[..4].copy_from_slice(&a.octets());
            }
            core::net::IpAddr::V6(a) => {
                k.family = 6;
                k.addr = a.octets();
            }
        }
        k
    }
}

/// Value of the `media` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MediaVal {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet that matched.
    pub last_ns: u64,
}

// SAFETY: a single u64.
unsafe impl aya::Pod for MediaVal {}

/// Buckets of the `media4` map (a power of two) and endpoints per bucket.
pub const EP4_BITS: u32 = 14;
pub const EP4_BUCKETS: u32 = 1 << EP4_BITS;
pub const EP4_WAYS: usize = 8;
/// `Ep4Bucket::seen` is `bpf_ktime_get_ns() >> EP4_SEEN_SHIFT` (units of ~16.8 ms; a u16 of them
/// wraps every ~18 min, so an endpoint idle for a multiple of that looks recent for one check).
pub const EP4_SEEN_SHIFT: u32 = 24;

/// A bucket of the `media4` map: IPv4 media endpoints that are also in `media`, found with one
/// cache line read (the program looks here before the hash).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ep4Bucket {
    /// The address's four bytes as in the packet (`u32::from_le_bytes(octets)`).
    pub addr: [u32; EP4_WAYS],
    /// Host byte order; 0: a free way.
    pub port: [u16; EP4_WAYS],
    /// When the program last matched the endpoint, in units of `EP4_SEEN_SHIFT`.
    pub seen: [u16; EP4_WAYS],
}

// SAFETY: plain old data with no padding (32 + 16 + 16 = 64 bytes, alignment 64).
unsafe impl aya::Pod for Ep4Bucket {}

/// The `media4` bucket of an IPv4 endpoint; the same hash as `ep4_known` in callrec.bpf.c.
pub fn ep4_bucket(addr: [u8; 4], port: u16) -> u32 {
    let a = u32::from_le_bytes(addr);
    (a ^ (port as u32).wrapping_mul(0x9E37_79B1)).wrapping_mul(0x85EB_CA6B) >> (32 - EP4_BITS)
}

/// A set of UDP/TCP ports, one bit each: value of the `ports` map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PortSet {
    pub bits: [u8; 8192],
}

// SAFETY: a byte array.
unsafe impl aya::Pod for PortSet {}

impl Default for PortSet {
    fn default() -> Self {
        PortSet { bits: [0; 8192] }
    }
}

impl PortSet {
    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 3)] |= 1 << (port & 7);
    }

    pub fn remove(&mut self, port: u16) {
        self.bits[usize::from(port >> 3)] &= !(1 << (port & 7));
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port >> 3)] & (1 << (port & 7)) != 0
    }
}

/// Slots of the per-CPU `counters` map, in the order of `enum counter` in the C program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    PassSip = 0,
    PassMedia,
    PassRange,
    PassFragment,
    DropOther,
    DropNotIp,
    Malformed,
    RedirectFailed,
    /// RTP-shaped frames of no known endpoint passed within the probe's rate (see the C program).
    PassProbe,
    /// RTP-shaped frames of no known endpoint dropped beyond it (also counted in `DropOther`).
    ProbeOverRate,
}

impl Counter {
    pub const ALL: [Counter; 10] = [
        Counter::PassSip,
        Counter::PassMedia,
        Counter::PassRange,
        Counter::PassFragment,
        Counter::DropOther,
        Counter::DropNotIp,
        Counter::Malformed,
        Counter::RedirectFailed,
        Counter::PassProbe,
        Counter::ProbeOverRate,
    ];

    /// The name used in `callrec status` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Counter::PassSip => "passed_sip",
            Counter::PassMedia => "passed_media",
            Counter::PassRange => "passed_static_range",
            Counter::PassFragment => "passed_fragment",
            Counter::DropOther => "dropped",
            Counter::DropNotIp => "dropped_not_ip",
            Counter::Malformed => "malformed",
            Counter::RedirectFailed => "redirect_failed",
            Counter::PassProbe => "passed_probe",
            Counter::ProbeOverRate => "probe_over_rate",
        }
    }
}
