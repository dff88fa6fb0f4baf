//! The live bench's in-kernel sender: frames handed to the kernel as XDP frames, the way a NIC
//! hands them to its driver's XDP program, instead of as skbs from a packet socket.
//!
//! Why it exists: on veth, a frame sent through a packet socket reaches the mirror port's XDP
//! program only after veth copies the skb into a page with XDP headroom, and all of it (the
//! socket's send path, that copy, the filter, the AF_XDP copy) runs in the sender's system call
//! on the sender's core. On the rig's two cores that made the generator offer `--mode xdp` less
//! than it offers tcpdump, which measures the rig, not the recorder. Here userspace writes a batch
//! of frames into an mmapped BPF array and runs bpf/xdpgen.bpf.c over them with
//! BPF_PROG_TEST_RUN in live-frames mode: each run copies one frame into a page-pool frame and
//! redirects it to the cable, whose peer (the mirror port) receives an XDP frame with no skb.
//! The sender attaches its program to the cable too (see [`XdpSender::new`]). The mirror port
//! must take XDP frames: it does when an XDP program is attached (callrec's
//! filter) or GRO is on (`ethtool -K mirror0 gro on`, which the live bench sets for every mode).

use std::os::fd::{AsFd, AsRawFd, RawFd};

use anyhow::{Context, Result, bail, ensure};
use aya::Ebpf;
use aya::maps::Map;
use aya::programs::{Xdp, XdpMode};

/// Slots in the `frames` map and the largest frame (keep in sync with bpf/xdpgen.bpf.c).
pub const SLOTS: usize = 1024;
pub const MAX_FRAME: usize = 2040;
const SLOT_BYTES: usize = 8 + MAX_FRAME;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpgen.bpf.o"));
/// Every frame's initial contents (the program overwrites them).
static BLANK: [u8; MAX_FRAME] = [0; MAX_FRAME];

/// `struct ctl` of the program.
#[repr(C)]
struct Ctl {
    next: u32,
    count: u32,
    ifindex: u32,
    bad: u32,
}

const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames the kernel runs between two flushes of the redirect queue (its maximum is 256).
const KERNEL_BATCH: u32 = 64;

struct Mapping {
    at: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, what: &str) -> Result<Mapping> {
        // SAFETY: a shared read-write mapping of a BPF_F_MMAPABLE array map of at least `len`
        // bytes; the kernel checks the length against the map.
        let at = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if at == libc::MAP_FAILED {
            bail!("cannot map the sender's {what} map: {}", std::io::Error::last_os_error());
        }
        Ok(Mapping { at: at as *mut u8, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}

/// Whether this kernel lets this process run XDP programs on live frames, i.e. whether the
/// in-kernel sender can work here at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveFrames {
    Allowed,
    /// The kernel refused (EPERM) though the process may load and run XDP programs otherwise:
    /// seen on a VM kernel whose root lacks CAP_SYS_RESOURCE, where a plain test run works.
    /// The text says so, with the capabilities the process lacks.
    Refused(String),
}

/// The sender's object with its program loaded into the kernel (not attached).
fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(OBJECT).context("cannot load the in-kernel sender (needs root)")?;
    program(&mut ebpf)?.load().context("the kernel refused the in-kernel sender")?;
    Ok(ebpf)
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut("xdpgen")
        .context("program xdpgen missing from the object")?
        .try_into()
        .context("xdpgen is not an XDP program")
}

/// Runs the sender's program once on a plain test frame and once on one live frame, without
/// attaching it anywhere and with no frame queued, so that the program drops them: what
/// `XdpSender::send` does, minus the traffic. Needs root (CAP_BPF); an error means the program
/// could not be loaded, or a run failed otherwise than by the kernel refusing live frames.
pub fn check_live_frames() -> Result<LiveFrames> {
    let mut ebpf = load()?;
    let prog = program(&mut ebpf)?;
    let fd = prog.fd()?.as_fd().as_raw_fd();
    capture_core::live::xdp::prog_test_run(fd, &BLANK[..64], 1, 0, 0)
        .context("BPF_PROG_TEST_RUN of the in-kernel sender (a plain test run, no live frames)")?;
    match capture_core::live::xdp::prog_test_run(fd, &BLANK[..64], 1, BPF_F_TEST_XDP_LIVE_FRAMES, 1) {
        Ok(_) => Ok(LiveFrames::Allowed),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            Ok(LiveFrames::Refused(format!("{} (a plain test run of the same program works)", refusal())))
        }
        Err(e) => Err(e).context("BPF_PROG_TEST_RUN (live frames) of the in-kernel sender"),
    }
}

/// What to say when the kernel refuses live frames.
fn refusal() -> String {
    let lacking = capture_core::live::lacking_caps(&["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_RESOURCE"]);
    let caps = if lacking.is_empty() {
        "with CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_SYS_RESOURCE".to_string()
    } else {
        format!("this process lacks {}", lacking.join(", "))
    };
    format!(
        "this kernel refuses BPF_PROG_TEST_RUN with live frames (EPERM; {caps}), so the in-kernel \
         sender (`--inject xdp`) cannot run here; `--inject mirror` sends into the mirror port's cable \
         through a packet socket instead"
    )
}

pub struct XdpSender {
    // The maps and program stay loaded while `ebpf` lives; the mappings are dropped first.
    frames: Mapping,
    ctl: Mapping,
    prog_fd: RawFd,
    _ebpf: Ebpf,
}

impl XdpSender {
    /// Loads the sender for `iface` (an interface of this network namespace whose peer takes XDP
    /// frames). Needs root (CAP_BPF, CAP_NET_ADMIN).
    pub fn new(iface: &str) -> Result<XdpSender> {
        let ifindex = capture_core::live::ifindex(iface)?;
        let mut ebpf = load()?;
        let prog = program(&mut ebpf)?;
        // Attached so that each test run finds it in the kernel's XDP dispatcher already: a run
        // of more than one frame otherwise adds it there and takes it out again, each change
        // waiting for an RCU grace period (~25 ms a run on the rig, against ~50 µs). Detached
        // when `ebpf` is dropped.
        prog.attach(iface, XdpMode::Driver)
            .with_context(|| format!("cannot attach the in-kernel sender to {iface} (native XDP)"))?;
        let prog_fd = prog.fd()?.as_fd().as_raw_fd();
        let map_fd = |name: &str| -> Result<RawFd> {
            match ebpf.map(name) {
                Some(Map::Array(m)) => Ok(m.fd().as_fd().as_raw_fd()),
                _ => bail!("map {name} missing from the sender's object"),
            }
        };
        let frames = Mapping::new(map_fd("frames")?, SLOTS * SLOT_BYTES, "frames")?;
        let ctl = Mapping::new(map_fd("ctl")?, 4096, "ctl")?;
        // SAFETY: the ctl mapping holds one `Ctl` at its start.
        unsafe { (ctl.at as *mut Ctl).write(Ctl { next: 0, count: 0, ifindex, bad: 0 }) };
        Ok(XdpSender { frames, ctl, prog_fd, _ebpf: ebpf })
    }

    /// Sends `frames` (at most [`SLOTS`]) in one test run; returns how many the program could not send (too long,
    /// too short). Frames the receiving side drops are not seen here (the cable's `tx_dropped`
    /// counts them).
    pub fn send<'a>(&mut self, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<u64> {
        let mut n = 0;
        for (i, f) in frames.into_iter().enumerate() {
            ensure!(i < SLOTS, "at most {SLOTS} frames per batch");
            ensure!(f.len() <= MAX_FRAME, "a {}-byte frame: the in-kernel sender takes at most {MAX_FRAME}", f.len());
            n = i + 1;
            // SAFETY: slot i lies within the mapping (i < SLOTS); `len` then `data`, as in `struct slot`.
            unsafe {
                let slot = self.frames.at.add(i * SLOT_BYTES);
                (slot as *mut u32).write(f.len() as u32);
                std::ptr::copy_nonoverlapping(f.as_ptr(), slot.add(8), f.len());
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let ctl = self.ctl.at as *mut Ctl;
        // SAFETY: the program reads and writes `ctl` only during the test run below, which this
        // thread waits for.
        let bad_before = unsafe {
            (*ctl).next = 0;
            (*ctl).count = n as u32;
            (*ctl).bad
        };
        capture_core::live::xdp::prog_test_run(
            self.prog_fd,
            &BLANK,
            n as u32,
            BPF_F_TEST_XDP_LIVE_FRAMES,
            KERNEL_BATCH.min(n as u32),
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                anyhow::anyhow!("BPF_PROG_TEST_RUN (live frames): {}", refusal())
            } else {
                anyhow::Error::new(e).context("BPF_PROG_TEST_RUN (live frames)")
            }
        })?;
        // SAFETY: as above; the run is over.
        Ok(unsafe { (*ctl).bad.wrapping_sub(bad_before) } as u64)
    }
}
