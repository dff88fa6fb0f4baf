//! The live bench: generated calls played onto the rig's virtual mirror port, recorded by
//! `callrec capture --mode xdp`, by `callrec capture --mode af-packet`, and by `tcpdump -w` (the
//! baseline most users have), one after another on the same traffic, at rising offered loads.
//! Mode `xdp-pure` is `--mode xdp --af-xdp-crate xdp` (AF_XDP through the pure-Rust `xdp` crate
//! instead of xsk-rs), for comparing the two.
//!
//! Loss is counted from what the generator sent: RTP packets recorded in the index (the sum of
//! every stream's packet count) against RTP packets sent, and calls recorded complete (both
//! streams with every packet) against calls placed. For tcpdump, frames written against frames
//! sent. Alongside: CPU per core (from /proc/stat), the recorder's CPU (also per thread) and peak
//! memory, the kernel's worker threads' CPU (`kworker_cpu_s`: the recordings' page-cache writeback
//! runs there, off the recorder's books), its own drop counters, and bytes written.
//!
//! Needs root (network namespaces, XDP). Uses scripts/rig.sh with a name unique to the run and
//! takes the rig down afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::measure::{cpu_seconds, kworker_cpu_between, kworker_cpu_seconds, status_kib, thread_cpu_seconds};
use crate::traffic::Workload;
use crate::xdpgen::LiveFrames;

/// The live bench's settings: its command line (`callrec-bench live`), and the programs it runs.
#[derive(clap::Args, Clone)]
pub struct LiveOpts {
    /// Concurrent calls per run; offered load is 100 packets/s per call.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,3000")]
    pub loads: Vec<u32>,
    #[arg(long, value_delimiter = ',', default_value = "xdp,af-packet,tcpdump")]
    pub modes: Vec<String>,
    /// Seconds each call lasts.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds over which calls start.
    #[arg(long, default_value_t = 2.0)]
    pub ramp: f64,
    /// callrec's `--workers` [default: callrec's own, the cores its reader leaves: 1 on 2 cores]
    #[arg(long)]
    pub workers: Option<u32>,
    /// Background frames (not SIP, not RTP) after every call frame, as on a busy mirror port.
    #[arg(long, default_value_t = 0)]
    pub noise: u32,
    /// Where the generator sends: `phone` (phone A's interface: the switch forwards and
    /// mirrors every frame, as on a real SPAN port) or `mirror` (straight into the mirror
    /// port's cable, the switch left out: the same frames reach the recorder for about half
    /// the generator's kernel work, so the rig can offer more) or `xdp` (into the cable as XDP
    /// frames from an in-kernel sender, so the mirror port receives them as from a NIC's
    /// driver: no skb, no veth copy; the mirror port gets GRO on for every mode) or `auto`
    /// (`xdp` where the kernel lets the in-kernel sender run, `mirror` where it refuses live
    /// frames; the result's `inject` says which ran).
    #[arg(long, default_value = "phone", value_parser = ["phone", "mirror", "xdp", "auto"])]
    pub inject: String,
    /// callrec's `--xdp-frames` for `--mode xdp` (AF_XDP UMEM frames per socket) [default:
    /// callrec's].
    #[arg(long, value_name = "N")]
    pub xdp_frames: Option<u32>,
    /// callrec's `--pipeline` (`inline`: the one worker on the reader's thread; `queued`: on
    /// its own thread behind a queue) [default: callrec's, inline with one queue and worker].
    #[arg(long, value_name = "HOW", value_parser = ["auto", "inline", "queued"])]
    pub pipeline: Option<String>,
    /// Where recordings and captures go: `work` (the `--work` directory's own filesystem) or
    /// `journal` (a fresh journaled ext4 made for the bench on a loop device in `--work`, as
    /// an appliance's store would be; see `live::StoreFs` for why and docs/BENCHMARKS.md for
    /// what it changes).
    #[arg(long, default_value = "work", value_parser = ["work", "journal"])]
    pub store_fs: String,
    #[arg(long, default_value = "/var/tmp/callrec-bench-live")]
    pub work: PathBuf,
    /// The `callrec` binary to run (set by the caller: the one beside `callrec-bench`).
    #[arg(skip)]
    pub callrec: PathBuf,
    /// The generator, `callrec-gen` (likewise).
    #[arg(skip)]
    pub generator: PathBuf,
    /// scripts/rig.sh.
    #[arg(skip)]
    pub rig_script: PathBuf,
}

struct Rig {
    name: String,
    script: PathBuf,
}

impl Rig {
    fn up(script: &Path) -> Result<Rig> {
        let name = format!("cb{}", std::process::id() % 100_000);
        let rig = Rig { name, script: script.to_path_buf() };
        checked(Command::new("bash").arg(script).args(["up", &rig.name])).context("rig up failed")?;
        Ok(rig)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }

    fn in_ns(&self, role: &str, prog: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(role)]).arg(prog);
        c
    }

    fn read(&self, role: &str, path: &str) -> Option<String> {
        let o = Command::new("ip").args(["netns", "exec", &self.ns(role), "cat", path]).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(&self.script).args(["down", &self.name]).output();
    }
}

/// Busy and total jiffies per CPU.
fn cpu_times() -> Vec<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn start_recorder(rig: &Rig, o: &LiveOpts, mode: &str, run_dir: &Path) -> Result<Child> {
    if mode == "tcpdump" {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &rig.ns("cap"), "tcpdump", "-i", "mirror0", "-s", "0", "-B", "65536", "-n", "-w"])
            .arg(run_dir.join("tcpdump.pcap"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run_dir.join("tcpdump.err"))?);
        let child = c.spawn().context("cannot start tcpdump")?;
        let until = Instant::now() + Duration::from_secs(15);
        while !std::fs::read_to_string(run_dir.join("tcpdump.err")).unwrap_or_default().contains("listening on") {
            ensure!(Instant::now() < until, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(child);
    }
    let (mode, xsk_crate) = if mode == "xdp-pure" { ("xdp", "xdp") } else { (mode, "xsk-rs") };
    let store = run_dir.join("store");
    let pass = run_dir.join("pass");
    std::fs::write(&pass, "bench passphrase\n")?;
    let init =
        Command::new(&o.callrec).arg("--store").arg(&store).args(["init", "--passphrase-file"]).arg(&pass).output()?;
    ensure!(init.status.success(), "callrec init: {}", String::from_utf8_lossy(&init.stderr));
    let child = rig
        .in_ns("cap", &o.callrec)
        .arg("--store")
        .arg(&store)
        .args(["capture", "--iface", "mirror0", "--mode", mode, "--af-xdp-crate", xsk_crate, "--log-interval", "0"])
        .args(o.workers.map(|n| format!("--workers={n}")))
        .args(o.xdp_frames.map(|n| format!("--xdp-frames={n}")))
        .args(o.pipeline.as_ref().map(|p| format!("--pipeline={p}")))
        .stdout(std::fs::File::create(run_dir.join("status.json"))?)
        .stderr(std::fs::File::create(run_dir.join("capture.err"))?)
        .spawn()
        .context("cannot start callrec capture")?;
    let until = Instant::now() + Duration::from_secs(30);
    while !store.join("capture-status.json").exists() {
        ensure!(
            Instant::now() < until,
            "callrec capture did not start: {}",
            std::fs::read_to_string(run_dir.join("capture.err"))?
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// What the index says was recorded: calls, complete calls (both streams, every packet), RTP packets.
fn recorded(store: &Path, w: &Workload) -> Result<(u64, u64, u64)> {
    let db =
        rusqlite::Connection::open_with_flags(store.join("index.sqlite"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let calls: i64 = db.query_row("SELECT count(*) FROM calls", [], |r| r.get(0))?;
    let rtp: i64 = db.query_row("SELECT coalesce(sum(packets), 0) FROM streams", [], |r| r.get(0))?;
    let f = w.facts(1);
    let complete: i64 = db.query_row(
        "SELECT count(*) FROM calls c WHERE c.status = 'complete' AND c.end_reason = 'caller-bye'
           AND (SELECT coalesce(sum(packets), 0) FROM streams s WHERE s.call = c.id) = ?1",
        [(f.caller_rtp + f.callee_rtp) as i64],
        |r| r.get(0),
    )?;
    Ok((calls as u64, complete as u64, rtp as u64))
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs `cmd` to the end; its trimmed stdout, or an error naming the command and carrying its
/// stderr (a missing program points at scripts/setup.sh).
fn checked(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("cannot run {cmd:?} (run scripts/setup.sh)"))?;
    ensure!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A filesystem of the bench's own for what the recorders write: ext4 with its journal (as
/// `mkfs.ext4` makes it, so as an appliance's store would be), on a loop device over a file in
/// `--work`, removed again at the end.
///
/// Why: every run writes thousands of recordings and deletes them after, and on a filesystem
/// without a journal (this project's VMs: ext4 on /dev/vda, `nojournal`) ext4's inode allocator
/// then steps over every inode deleted in the last 60-300 s, reading its inode-table block each
/// time (`find_inode_bit` → `recently_deleted`). Measured here: creating a recording (open +
/// header) took 72 µs on a quiet filesystem and 560-740 µs within minutes of deleting 5,000 of
/// them; 3,000 call starts a second then cost the 2-core machine more than a core, where
/// tcpdump creates one file. With a journal the allocator does not look back. The loop device
/// and the journal cost CPU of their own, though (docs/BENCHMARKS.md), so this is an option,
/// not the default.
pub struct StoreFs {
    image: PathBuf,
    device: String,
    pub mount: PathBuf,
}

impl StoreFs {
    pub fn make(work: &Path, bytes: u64) -> Result<StoreFs> {
        let image = work.join("store-fs.img");
        let mount = work.join("store-fs");
        let _ = Command::new("umount").arg(&mount).output();
        let _ = std::fs::remove_file(&image);
        std::fs::create_dir_all(&mount)?;
        checked(Command::new("fallocate").args(["-l", &bytes.to_string()]).arg(&image))?;
        let device = checked(Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&image))?;
        let fs = StoreFs { image, device, mount };
        // Inode tables and journal zeroed now, not by a kernel thread during the runs.
        checked(Command::new("mkfs.ext4").args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            &fs.device,
        ]))?;
        checked(Command::new("mount").args(["-o", "noatime", &fs.device]).arg(&fs.mount))?;
        Ok(fs)
    }
}

impl Drop for StoreFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).output();
        let _ = Command::new("losetup").args(["-d", &self.device]).output();
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// Run directories the bench is done with. On a filesystem where deleting files slows the next
/// creates down (ext4 without a journal, this project's VMs: see [`StoreFs`]) they are kept until
/// the bench ends, or until the next run needs their room, so that no run creates its recordings
/// among the inodes the previous run just freed; then they are deleted, the filesystem synced, and
/// the time noted in `work`, so that the next run (of this bench or the next one) starts only
/// once those inodes are [`GRAVEYARD`] old.
///
/// Why: the bench measured its own cleanup. Creating a file took 424-489 µs right after deleting
/// 5,000 and 50 µs 62 s after the deletion and a sync (5,000 creates each, same directory); a
/// 10,000-call run then spent seconds of CPU on creates that an appliance, which deletes by
/// retention, sees for a minute after a purge at most. Elsewhere (the journaled store) run
/// directories go at once, as before.
struct Trash {
    root: PathBuf,
    /// Deletions here slow creates down for [`GRAVEYARD`].
    graveyard: bool,
    kept: Vec<PathBuf>,
    /// Its modification time is the last deletion (kept across bench invocations).
    stamp: PathBuf,
}

/// How long after a deletion (and a sync of its inode tables) ext4 without a journal still steps
/// over the freed inodes (`RECENTCY_MIN` in fs/ext4/ialloc.c), with a second to spare.
const GRAVEYARD: Duration = Duration::from_secs(61);

impl Trash {
    /// Also takes over what an interrupted bench set aside in `root` (deleted at the end).
    fn new(root: &Path, work: &Path) -> Trash {
        let graveyard = recorder::store::fscheck::store_fs_warning(root).is_some();
        let kept = std::fs::read_dir(root)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("trash-"))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        Trash { root: root.to_path_buf(), graveyard, kept, stamp: work.join(".live-bench-deleted") }
    }

    /// Done with `dir`: deleted now, or kept (renamed aside) until [`Trash::empty`].
    fn discard(&mut self, dir: &Path) -> Result<()> {
        if !self.graveyard {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(());
        }
        let aside = self.root.join(format!("trash-{}-{}", std::process::id(), self.kept.len()));
        let _ = std::fs::remove_dir_all(&aside); // a leftover of the same name (a reused pid)
        std::fs::rename(dir, &aside)
            .with_context(|| format!("cannot move {} to {}", dir.display(), aside.display()))?;
        self.kept.push(aside);
        Ok(())
    }

    /// Makes room for a run that writes up to `bytes`: deletes what is kept if the filesystem
    /// lacks it. Then waits until the last deletion is [`GRAVEYARD`] old.
    fn before_run(&mut self, bytes: u64) {
        if !self.kept.is_empty() && free_bytes(&self.root).is_some_and(|f| f < bytes) {
            eprintln!("live: deleting {} earlier runs' recordings for room", self.kept.len());
            self.empty();
        }
        if !self.graveyard {
            return;
        }
        let age = std::fs::metadata(&self.stamp).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if let Some(wait) = age.and_then(|a| GRAVEYARD.checked_sub(a)) {
            eprintln!(
                "live: waiting {:.0} s: files were deleted on {}, an ext4 without a journal, where creates step \
                 over freed inodes for a minute",
                wait.as_secs_f64(),
                self.root.display()
            );
            std::thread::sleep(wait);
        }
    }

    /// Deletes what is kept, syncs the filesystem (a dirty inode table would keep the freed inodes
    /// in the way for 5 minutes more) and notes the time.
    fn empty(&mut self) {
        if self.kept.is_empty() {
            return;
        }
        for d in self.kept.drain(..) {
            let _ = std::fs::remove_dir_all(&d);
        }
        let _ = recorder::store::syncer::sync_filesystem(&self.root);
        let _ = std::fs::write(&self.stamp, b"");
    }
}

impl Drop for Trash {
    fn drop(&mut self) {
        self.empty();
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `p`.
fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a struct statvfs to fill.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// What a run at `calls` may write (tcpdump: ~230 bytes a frame, 100 frames a second per call),
/// with room to spare.
fn run_bytes(calls: u32, o: &LiveOpts) -> u64 {
    (calls as f64 * (o.duration + o.ramp) * 100.0 * 400.0) as u64 + (2 << 30)
}

fn one_run(rig: &Rig, o: &LiveOpts, trash: &mut Trash, mode: &str, calls: u32, flat_out: bool) -> Result<Value> {
    trash.before_run(run_bytes(calls, o));
    let run_dir = trash.root.join(format!("{mode}-{calls}{}", if flat_out { "-flat" } else { "" }));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    let w = Workload::calls(calls, o.duration, o.ramp);
    let rx_before: u64 =
        rig.read("cap", "/sys/class/net/mirror0/statistics/rx_packets").and_then(|s| s.parse().ok()).unwrap_or(0);
    let rec = if mode == "none" { None } else { Some(start_recorder(rig, o, mode, &run_dir)?) };
    let pid = rec.as_ref().map(|c| c.id().to_string());
    let cpu0 = cpu_times();
    let kw0 = kworker_cpu_seconds();
    let rcpu0 = pid.as_deref().and_then(cpu_seconds).unwrap_or(0.0);
    let threads0 = pid.as_deref().map(thread_cpu_seconds).unwrap_or_default();
    let t0 = Instant::now();
    let (ns, iface) = if o.inject == "phone" { ("a", "eth0") } else { ("sw", "cap0") };
    let mut sender = rig.in_ns(ns, &o.generator);
    sender.args([
        "send",
        iface,
        "--calls",
        &calls.to_string(),
        "--duration",
        &o.duration.to_string(),
        "--ramp",
        &o.ramp.to_string(),
    ]);
    if flat_out {
        sender.arg("--flat-out");
    }
    if o.inject == "xdp" {
        sender.args(["--xdp", "--batch", "256"]);
    }
    if o.noise > 0 {
        sender.args(["--noise", &o.noise.to_string()]);
    }
    let g = sender.output().context("cannot run callrec-gen")?;
    ensure!(g.status.success(), "callrec-gen: {}", String::from_utf8_lossy(&g.stderr));
    let sent: Value = serde_json::from_slice(&g.stdout).context("callrec-gen's report")?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_times();
    let kworker_s = kworker_cpu_between(&kw0, &kworker_cpu_seconds());
    let rcpu1 = pid.as_deref().and_then(cpu_seconds).unwrap_or(0.0);
    // Threads started during the run (the writing and sync threads start with the first
    // recording) count from zero.
    let threads: serde_json::Map<String, Value> = pid
        .as_deref()
        .map(thread_cpu_seconds)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, s)| {
            let before = threads0.get(&name).copied().unwrap_or(0.0);
            (name, json!(((s - before) * 100.0).round() / 100.0))
        })
        .collect();
    let hwm_mib = pid.as_deref().and_then(|p| status_kib(p, "VmHWM")).unwrap_or(0) as f64 / 1024.0;
    // Let the last packets drain and the calls' linger pass before stopping. tcpdump needs more
    // than its 1 s packet-buffer timeout: TPACKET_V3 hands a partly filled block to libpcap only
    // when the timeout retires it, and tcpdump stopped earlier never writes that block.
    std::thread::sleep(Duration::from_millis(3000));
    let cores: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| ((b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64 * 1000.0).round() / 10.0)
        .collect();
    let rx_after: u64 =
        rig.read("cap", "/sys/class/net/mirror0/statistics/rx_packets").and_then(|s| s.parse().ok()).unwrap_or(0);
    let frames_sent = sent["frames_sent"].as_u64().unwrap_or(0);
    let rtp_sent = sent["rtp_sent"].as_u64().unwrap_or(0);
    let mut out = json!({
        "mode": mode, "calls": calls, "flat_out": flat_out,
        "offered_pps": sent["pps"], "steady_pps": w.steady_pps(), "frames_sent": frames_sent, "rtp_sent": rtp_sent,
        "generator_max_lag_ms": sent["max_lag_ms"], "generator_xmit_drops": sent["xmit_drops"], "noise_sent": sent["noise_sent"], "mirror_rx_packets": rx_after.saturating_sub(rx_before),
        "wall_s": wall, "cpu_busy_percent_per_core": cores,
        "recorder_cpu_s": rcpu1 - rcpu0, "recorder_cpu_s_by_thread": threads, "recorder_peak_rss_mib": hwm_mib,
        "kworker_cpu_s": (kworker_s * 100.0).round() / 100.0,
    });
    let Some(child) = rec else {
        // Nothing recorded: an empty directory, not worth a wait.
        let _ = std::fs::remove_dir(&run_dir);
        return Ok(out);
    };
    signal(&child, libc::SIGTERM);
    let status = child.wait_with_output()?.status;
    if mode == "tcpdump" {
        let err = std::fs::read_to_string(run_dir.join("tcpdump.err")).unwrap_or_default();
        let num = |what: &str| -> u64 {
            err.lines().find(|l| l.contains(what)).and_then(|l| l.split_whitespace().next()?.parse().ok()).unwrap_or(0)
        };
        let captured = num("packets captured");
        out["captured"] = json!(captured);
        out["kernel_drops"] = json!(num("dropped by kernel"));
        out["lost"] = json!(frames_sent.saturating_sub(captured));
        out["loss_ratio"] = json!(frames_sent.saturating_sub(captured) as f64 / frames_sent.max(1) as f64);
        out["bytes_written"] = json!(std::fs::metadata(run_dir.join("tcpdump.pcap")).map(|m| m.len()).unwrap_or(0));
    } else {
        ensure!(
            status.success(),
            "callrec capture exited with {status}: {}",
            std::fs::read_to_string(run_dir.join("capture.err"))?
        );
        let st: Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join("status.json"))?).context("final status")?;
        let store = run_dir.join("store");
        let (calls_seen, complete, rtp_rec) = recorded(&store, &w)?;
        let q = st["queues"].as_array().cloned().unwrap_or_default();
        let sum = |k: &str| q.iter().map(|x| x[k].as_u64().unwrap_or(0)).sum::<u64>();
        out["calls_indexed"] = json!(calls_seen);
        out["calls_complete"] = json!(complete);
        out["rtp_recorded"] = json!(rtp_rec);
        out["lost"] = json!(rtp_sent.saturating_sub(rtp_rec));
        out["loss_ratio"] = json!(rtp_sent.saturating_sub(rtp_rec) as f64 / rtp_sent.max(1) as f64);
        out["reader_packets"] = json!(sum("packets"));
        // Which socket each reader used ("mirror0 q0 af-xdp (copy)", "… af-xdp/xdp-rs …", …).
        out["sources"] = json!(q.iter().map(|x| x["source"].clone()).collect::<Vec<_>>());
        out["ring_drops"] = json!(sum("ring_drops"));
        out["other_drops"] = json!(sum("other_drops"));
        out["queue_drops"] = json!(sum("queue_drops"));
        out["unmatched"] = json!(sum("unmatched"));
        out["xdp"] = st["xdp"]["mirror0"].clone();
        // Per worker, the longest time away from its queue (a batch, a store tick), in ms, and its
        // waits for the writing thread's buffers.
        out["workers"] = json!(
            st["workers"]
                .as_array()
                .map(|ws| ws
                    .iter()
                    .map(|w| json!({"max_batch_ms": w["max_batch_ms"], "max_tick_ms": w["max_tick_ms"],
                        "write_waits": w["write_waits"], "write_wait_ms": w["write_wait_ms"],
                        "max_write_wait_ms": w["max_write_wait_ms"],
                        "max_create_ms": w["max_create_ms"], "max_index_ms": w["max_index_ms"],
                        "packets": w["packets"], "batches": w["batches"]}))
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        );
        out["bytes_written"] = json!(dir_bytes(&store.join("recordings")));
    }
    trash.discard(&run_dir)?;
    Ok(out)
}

pub fn run(o: &LiveOpts) -> Result<Value> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the live bench needs root (network namespaces, XDP): run `sudo cargo xtask bench live`");
    }
    for p in [&o.callrec, &o.generator] {
        ensure!(
            p.exists(),
            "{} is missing: build with `cargo build --release -p callrec -p callrec-bench`",
            p.display()
        );
    }
    // Whether the in-kernel sender can run here is known only by asking the kernel.
    let resolved;
    let o = if matches!(o.inject.as_str(), "xdp" | "auto") {
        let live = crate::xdpgen::check_live_frames().context("--inject xdp: probing the in-kernel sender")?;
        let inject = match (o.inject.as_str(), live) {
            ("xdp", LiveFrames::Refused(why)) => bail!("--inject xdp: {why}"),
            (_, LiveFrames::Refused(why)) => {
                eprintln!("live: --inject auto: mirror, not xdp: {why}");
                "mirror"
            }
            (_, LiveFrames::Allowed) => "xdp",
        };
        resolved = LiveOpts { inject: inject.into(), ..o.clone() };
        &resolved
    } else {
        o
    };
    std::fs::create_dir_all(&o.work)?;
    let rig = Rig::up(&o.rig_script)?;
    if o.inject == "xdp" {
        // XDP frames sent into a veth reach its peer only if that runs an XDP program or has
        // GRO on (then veth's NAPI builds skbs from them for the packet sockets).
        checked(Command::new("ip").args(["netns", "exec", &rig.ns("cap"), "ethtool", "-K", "mirror0", "gro", "on"]))?;
    }
    let mut runs = Vec::new();
    // The rig's ceiling: the generator flat out, nothing recording.
    let top = *o.loads.iter().max().unwrap_or(&1000);
    // Room for the largest run: tcpdump writes ~230 bytes per frame, 100 frames a second per call.
    let store_fs = match o.store_fs.as_str() {
        "journal" => Some(StoreFs::make(&o.work, run_bytes(top, o))?),
        "work" => None,
        other => bail!("--store-fs {other}: expected journal or work"),
    };
    let root = store_fs.as_ref().map_or(o.work.as_path(), |f| f.mount.as_path());
    let mut trash = Trash::new(root, &o.work);
    let ceiling = one_run(&rig, o, &mut trash, "none", top, true)?;
    eprintln!("live: generator alone, flat out: {:.0} packets/s", ceiling["offered_pps"].as_f64().unwrap_or(0.0));
    for &calls in &o.loads {
        for mode in &o.modes {
            let r =
                one_run(&rig, o, &mut trash, mode, calls, false).with_context(|| format!("{mode} at {calls} calls"))?;
            eprintln!(
                "live: {mode:>9} {calls:>6} calls {:>8.0} pps offered: lost {} ({:.4}%), complete calls {}",
                r["offered_pps"].as_f64().unwrap_or(0.0),
                r["lost"],
                r["loss_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                r["calls_complete"]
            );
            runs.push(r);
        }
    }
    Ok(
        json!({"bench": "live", "inject": o.inject, "xdp_frames": o.xdp_frames, "pipeline": o.pipeline, "store_fs": o.store_fs, "duration_s": o.duration, "ramp_s": o.ramp, "workers": o.workers, "ceiling": ceiling, "runs": runs}),
    )
}
