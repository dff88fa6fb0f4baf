//! `callrec capture`: live recording from mirror ports, the product's main job.
//!
//! Threads and what flows between them:
//!
//! ```text
//!  reader (one per interface queue)          worker (spare cores)             main thread
//!  ring → decode (+IP reassembly)            decode → Engine → StoreSink      signals, XDP maps,
//!       → Steering (Call-ID / endpoint)  ──▶  (its own index connection)      status file, logs
//!       → batch for worker W (1 copy)   batches over bounded crossbeam queues
//!  Learned ──▶ other readers   KernelChange ──▶ main (XDP media map)
//! ```
//!
//! With one receive queue and one worker (the default on two cores) the worker runs inline
//! instead: the reader hands each steered batch straight to its own `Engine` and `StoreSink`
//! (`--pipeline`, [`runs_inline`]), so no queue, no second thread on the cores and no batch
//! crossing between cores.
//!
//! A full worker queue drops the batch and counts it (never blocks the ring, whose own overflow
//! the kernel counts). Readers run ahead of workers, and the store's writing threads behind them
//! ([`recorder::priority`]): the ring is the shortest buffer. SIGINT/SIGTERM stop the readers;
//! workers drain their queues, end every call in progress as `capture-ended`, flush the index and
//! exit; the XDP program is detached last.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use capture_core::live::afpacket::{AfPacketConfig, AfPacketSource};
use capture_core::live::afxdp::{AfXdpConfig, AfXdpSource};
use capture_core::live::afxdp_pure::PureAfXdpSource;
use capture_core::live::pcapdev::PcapSource;
use capture_core::live::xdp::{MediaMap, XdpFilter};
use capture_core::live::{Backoff, Promisc, Source, now_ns};
use capture_core::{Decoded, Decoder};

use crossbeam::channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use recorder::batch::{Batch, steer};
use recorder::priority::WriterPlace;
use recorder::steer::{KernelChange, Learned, SteerConfig, Steering};
use recorder::store::Store;
use recorder::{Config, Engine};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// XDP filter in the driver + AF_XDP sockets (falls back to af-packet where XDP cannot attach).
    Xdp,
    /// AF_PACKET with a TPACKET_V3 ring.
    AfPacket,
    /// libpcap.
    Pcap,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::AfPacket => "af-packet",
            Mode::Pcap => "pcap",
        }
    }
}

/// Which crate drives the AF_XDP sockets of `--mode xdp` (the two are compared in
/// docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum XskCrate {
    /// xsk-rs (libxdp's ring helpers, built from C).
    #[default]
    XskRs,
    /// The pure-Rust `xdp` crate.
    Xdp,
}

/// Where the recording work runs (see `run`'s module doc and docs/BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Pipeline {
    /// Inline with one receive queue and one worker, queued otherwise.
    #[default]
    Auto,
    /// The reader records what it steers itself, on its own thread (one receive queue, one
    /// worker only).
    Inline,
    /// Readers hand batches to worker threads over bounded queues.
    Queued,
}

/// How a reader thread is scheduled (see `recorder::priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReaderPriority {
    /// Real-time (SCHED_FIFO 2; an inline worker's writing thread SCHED_FIFO 1) where the
    /// kernel allows it, the nice value otherwise.
    #[default]
    Realtime,
    /// A nice value 5 below the process's, never real-time.
    Nice,
}

/// Every setting of `capture`, as flags; each can also come from the TOML file of `--config`
/// (same names, with `_` for `-`; flags win).
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureArgs {
    /// Configuration file (TOML) with any of these settings, and `store`.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Mirror interface to record from (repeat for several).
    #[arg(long = "iface", value_name = "IF")]
    #[serde(default, rename = "interfaces")]
    pub ifaces: Vec<String>,
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Receive queues (AF_XDP sockets, or AF_PACKET fanout members) per interface [default: all
    /// the interface's queues for xdp, 1 otherwise].
    #[arg(long, value_name = "N")]
    pub queues: Option<u32>,
    /// Worker threads that assemble and store calls [default: the cores left after one per receive
    /// queue (the readers), at least 1, at most 8].
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
    /// Where the worker runs when there is one receive queue and one worker: `inline` on the
    /// reader's thread (no queue, no hand-over between cores) or `queued` on a thread of its own
    /// behind a queue of batches [default: auto, inline where it applies].
    #[arg(long, value_enum, value_name = "HOW")]
    pub pipeline: Option<Pipeline>,
    /// SIP signalling port kept by the XDP filter (repeat; default 5060 and 5061).
    #[arg(long = "sip-port", value_name = "PORT")]
    #[serde(default)]
    pub sip_ports: Vec<u16>,
    /// Opt-in static media range LO-HI kept by the XDP filter, for media negotiated out of sight.
    #[arg(long, value_name = "LO-HI")]
    pub media_ports: Option<String>,
    /// Attach XDP in generic (skb) mode instead of driver mode.
    #[arg(long)]
    #[serde(default)]
    pub xdp_generic: bool,
    /// The crate that drives the AF_XDP sockets in xdp mode [default: xsk-rs].
    #[arg(long, value_enum, value_name = "CRATE")]
    pub af_xdp_crate: Option<XskCrate>,
    /// UMEM frames (2 KiB each) of every AF_XDP socket, and the size of its fill and receive
    /// rings: a power of two from 64 to 1,048,576 [default 32768: 64 MiB, about 32 ms of frames at
    /// 1 Mpps; 65536 when the worker runs inline (`--pipeline`), where no queue follows them].
    /// The frames are the only buffer between the kernel and the reader; one that is not
    /// scheduled for longer than they last loses frames (`ring_drops`/`other_drops`).
    #[arg(long, value_name = "N")]
    pub xdp_frames: Option<u32>,
    /// How the reader threads (one per receive queue; with an inline worker, the whole recording
    /// path) are scheduled: `realtime` (SCHED_FIFO 2, and 1 for an inline worker's writing
    /// thread; needs CAP_SYS_NICE, falls back to `nice` with a warning) or `nice` (5 below the
    /// process; the writing threads 4 below) [default: realtime].
    #[arg(long, value_enum, value_name = "HOW")]
    pub reader_priority: Option<ReaderPriority>,
    /// Seconds without SIP or media after which a call's endpoints leave the filter [default 600].
    #[arg(long, value_name = "SECS")]
    pub media_idle_timeout: Option<u64>,
    /// Seconds between status log lines on stderr (0: only warnings) [default 10].
    #[arg(long, value_name = "SECS")]
    pub log_interval: Option<u64>,
    /// Stop by itself after this many seconds (tests, demos).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// The store, from the configuration file (the global --store flag wins).
    #[arg(skip)]
    pub store: Option<PathBuf>,
    /// Retention default in days for `purge` (recorded in the status; enforcement is `purge`'s).
    #[arg(skip)]
    pub retention_days: Option<u32>,
}

impl CaptureArgs {
    /// Reads `--config` and fills what the flags left unset.
    pub fn resolve(mut self) -> Result<CaptureArgs> {
        let Some(path) = self.config.clone() else { return Ok(self) };
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let file: CaptureArgs =
            toml::from_str(&text).with_context(|| format!("{}: invalid configuration", path.display()))?;
        if self.ifaces.is_empty() {
            self.ifaces = file.ifaces;
        }
        if self.sip_ports.is_empty() {
            self.sip_ports = file.sip_ports;
        }
        self.mode = self.mode.or(file.mode);
        self.queues = self.queues.or(file.queues);
        self.workers = self.workers.or(file.workers);
        self.pipeline = self.pipeline.or(file.pipeline);
        self.media_ports = self.media_ports.or(file.media_ports);
        self.xdp_generic |= file.xdp_generic;
        self.af_xdp_crate = self.af_xdp_crate.or(file.af_xdp_crate);
        self.xdp_frames = self.xdp_frames.or(file.xdp_frames);
        self.reader_priority = self.reader_priority.or(file.reader_priority);
        self.media_idle_timeout = self.media_idle_timeout.or(file.media_idle_timeout);
        self.log_interval = self.log_interval.or(file.log_interval);
        self.duration = self.duration.or(file.duration);
        self.store = file.store;
        self.retention_days = file.retention_days;
        Ok(self)
    }
}

/// AF_XDP frames per socket when the worker runs inline and `--xdp-frames` is not given: twice
/// the default, 128 MiB. With no queue behind it the UMEM is the only buffer between the kernel
/// and the recording work, so it takes over part of the queue's job: on the live bench at 6,000
/// calls going on, inline with 32,768 frames lost 1,608 and 3,214 frames at the socket in two of
/// three runs, with 65,536 none in three (docs/BENCHMARKS.md, "The worker inline on the reader's
/// thread").
const INLINE_XDP_FRAMES: u32 = 65536;

/// The AF_XDP socket sizes for `--xdp-frames` (checked here, so that a bad value is named before
/// any interface is touched); without it, the default, or [`INLINE_XDP_FRAMES`] for an inline
/// worker.
fn xdp_config(frames: Option<u32>, inline: bool) -> Result<AfXdpConfig> {
    let mut cfg = AfXdpConfig::default();
    if inline {
        cfg.frames = INLINE_XDP_FRAMES;
        cfg.ring = INLINE_XDP_FRAMES;
    }
    if let Some(n) = frames {
        if !n.is_power_of_two() || !(64..=1 << 20).contains(&n) {
            bail!("--xdp-frames {n}: must be a power of two from 64 to 1048576 (e.g. 32768 or 65536)");
        }
        cfg.frames = n;
        cfg.ring = n;
    }
    Ok(cfg)
}

fn parse_range(s: &str) -> Result<(u16, u16)> {
    let (a, b) = s.split_once('-').with_context(|| format!("--media-ports {s}: expected LO-HI, e.g. 16384-32767"))?;
    let (lo, hi): (u16, u16) = (
        a.trim().parse().with_context(|| format!("--media-ports {s}: {a} is not a port"))?,
        b.trim().parse().with_context(|| format!("--media-ports {s}: {b} is not a port"))?,
    );
    if lo > hi {
        bail!("--media-ports {s}: the low port is above the high one");
    }
    Ok((lo, hi))
}

/// Workers when `--workers` is not given: the cores the readers leave, at least one, at most 8.
///
/// Why not one per core: under load a reader never sleeps (it spins on its ring while frames
/// flow), so a worker placed on its core takes time from the one thread that cannot catch up
/// later, and the workers, their writing threads and the reader preempt one another all the time.
/// On this project's 2-core rig, at 8,000 calls going on with calls ending all the time, one worker
/// lost far less than two and used less CPU and memory (docs/BENCHMARKS.md, "One worker or two on
/// two cores").
fn default_workers(cpus: usize, readers: usize) -> u32 {
    cpus.saturating_sub(readers).clamp(1, 8) as u32
}

/// Whether the one worker runs on the reader's thread (see [`Pipeline`]).
///
/// Why inline where it applies: with one reader and one worker, a queue between them buys a
/// buffer (the AF_XDP frames are one too: 32 ms at 1 Mpps by default) at the price of a second
/// thread on the cores, the hand-over of every batch between cores and the sleeps and wake-ups of
/// a worker waiting for the next one (docs/BENCHMARKS.md, "The worker inline on the reader's
/// thread").
fn runs_inline(pipeline: Pipeline, readers: usize, workers: u32) -> Result<bool> {
    let one_each = readers == 1 && workers == 1;
    match pipeline {
        Pipeline::Auto => Ok(one_each),
        Pipeline::Inline if one_each => Ok(true),
        Pipeline::Inline => bail!(
            "--pipeline inline needs one receive queue and one worker, and there are {readers} queue(s) and \
             {workers} worker(s): add --queues 1 --workers 1, or use --pipeline queued"
        ),
        Pipeline::Queued => Ok(false),
    }
}

/// Batches a worker's queue holds before the reader drops (and counts) frames for it.
const QUEUE_BATCHES: usize = 1024;

#[derive(Default)]
struct ReaderStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    ring_drops: AtomicU64,
    other_drops: AtomicU64,
    queue_drops: AtomicU64,
    unmatched: AtomicU64,
    not_decoded: AtomicU64,
}

#[derive(Default)]
struct WorkerStats {
    packets: AtomicU64,
    /// Batches taken from the queue (packets / batches: how full the reader's batches were).
    batches: AtomicU64,
    active_calls: AtomicU64,
    calls_started: AtomicU64,
    recorded: AtomicU64,
    store_errors: AtomicU64,
    /// How far behind the wire the worker is (ns between a frame's capture and its processing).
    lag_ns: AtomicU64,
    /// The longest the worker spent on one batch of frames, and on one periodic store tick
    /// (chunk flushes, index commit), in µs: a worker away from its queue this long makes the
    /// reader drop what does not fit in the queue.
    max_batch_us: AtomicU64,
    max_tick_us: AtomicU64,
    /// Times the worker waited for its writing thread's buffers (the disk, or that thread, fell
    /// behind), in total and at most, in µs: time away from its queue too.
    write_waits: AtomicU64,
    write_wait_us: AtomicU64,
    max_write_wait_us: AtomicU64,
    /// The longest recording creation and index write of the worker's store, in µs.
    max_create_us: AtomicU64,
    max_index_us: AtomicU64,
    /// Where the worker's writing thread runs, once it has started.
    writer_place: OnceLock<WriterPlace>,
}

/// A writing thread's place in words for the status file: "realtime 1", "nice -4", or null
/// before it has started.
fn place_json(p: Option<&WriterPlace>) -> serde_json::Value {
    match p {
        Some(WriterPlace::Realtime(prio)) => json!(format!("realtime {prio}")),
        Some(WriterPlace::Nice(n)) => json!(format!("nice {n}")),
        None => serde_json::Value::Null,
    }
}

struct WorkerLink {
    tx: Sender<Batch>,
    pool: Receiver<Batch>,
}

pub fn run(dir: &Path, args: CaptureArgs, user: &str) -> Result<ExitCode> {
    if args.ifaces.is_empty() {
        bail!("no interface to capture from: give --iface IF (or `interfaces = [\"IF\"]` in --config)");
    }
    let mut store = Store::open(dir)?;
    store.public_key()?;
    if let Some(w) = recorder::store::fscheck::store_fs_warning(dir) {
        eprintln!("callrec: warning: {w}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing the signal handlers")?;
    }
    let mode = args.mode.unwrap_or(Mode::Xdp);
    let sip_ports = if args.sip_ports.is_empty() { vec![5060, 5061] } else { args.sip_ports.clone() };
    let media_range = args.media_ports.as_deref().map(parse_range).transpose()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pipeline = args.pipeline.unwrap_or_default();
    // Whether the worker will run inline, from the configuration (the sources opened below must
    // agree; it only sizes the AF_XDP frames).
    let planned_inline = mode == Mode::Xdp && {
        let readers: usize =
            args.ifaces.iter().map(|i| args.queues.unwrap_or_else(|| capture_core::live::rx_queues(i)) as usize).sum();
        let workers = args.workers.unwrap_or_else(|| default_workers(cpus, readers)).max(1);
        runs_inline(pipeline, readers, workers).unwrap_or(false)
    };
    let xdp_cfg = xdp_config(args.xdp_frames, planned_inline)?;
    let idle_ns = args.media_idle_timeout.unwrap_or(600) as i64 * 1_000_000_000;

    // Sources first: a missing interface or capability fails before anything starts.
    let mut filters: Vec<XdpFilter> = Vec::new();
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    let mut promisc: Vec<Promisc> = Vec::new();
    let mut modes: Vec<String> = Vec::new();
    for (i, iface) in args.ifaces.iter().enumerate() {
        let mut used = mode;
        if mode == Mode::Xdp {
            match open_xdp(iface, &args, xdp_cfg, &sip_ports, media_range) {
                Ok((f, s)) => {
                    modes.push(format!(
                        "{iface}: xdp ({}), {}",
                        f.mode(),
                        s.iter().map(|s| s.label()).collect::<Vec<_>>().join(", ")
                    ));
                    filters.push(f);
                    sources.extend(s);
                }
                Err(e) => {
                    eprintln!("callrec: warning: {iface}: XDP capture unavailable ({e:#}); falling back to af-packet");
                    used = Mode::AfPacket;
                }
            }
        }
        match used {
            Mode::Xdp => {}
            Mode::AfPacket => {
                let n = args.queues.unwrap_or(1).max(1);
                let group = (n > 1).then_some(((std::process::id() as u16) ^ (i as u16)).max(1));
                for m in 0..n {
                    let s = AfPacketSource::open(iface, m, group, AfPacketConfig::default())
                        .with_context(|| format!("capture on {iface}"))?;
                    modes.push(s.label());
                    sources.push(Box::new(s));
                }
            }
            Mode::Pcap => {
                let s = PcapSource::open(iface, 64 << 20).with_context(|| format!("capture on {iface}"))?;
                modes.push(s.label());
                sources.push(Box::new(s));
            }
        }
        promisc.push(Promisc::enable(iface).with_context(|| format!("promiscuous mode on {iface}"))?);
    }
    let workers = args.workers.unwrap_or_else(|| default_workers(cpus, sources.len())).max(1);
    let inline = runs_inline(pipeline, sources.len(), workers)?;
    let started = now_ns();
    eprintln!(
        "callrec: capturing on {} with {workers} worker(s){} into {}; SIGINT or SIGTERM stops",
        modes.join("; "),
        if inline { " inline on the reader's thread" } else { "" },
        dir.display()
    );
    store.index.audit(user, "capture-start", &args.ifaces.join(","), &format!("mode {}", mode.as_str()))?;
    drop(store);

    // Workers: on threads of their own behind queues, or the one worker inline in the reader.
    let mut links = Vec::new();
    let mut worker_stats = Vec::new();
    let mut worker_threads = Vec::new();
    let mut inline_worker = None;
    for w in 0..workers {
        let stats = Arc::new(WorkerStats::default());
        worker_stats.push(Arc::clone(&stats));
        if inline {
            inline_worker = Some(InlineWorker { dir: dir.to_path_buf(), stats });
            continue;
        }
        let (tx, rx) = bounded::<Batch>(QUEUE_BATCHES);
        let (pool_tx, pool_rx) = bounded::<Batch>(QUEUE_BATCHES + 64);
        let d = dir.to_path_buf();
        let handle = std::thread::Builder::new()
            .name(format!("callrec-worker-{w}"))
            .spawn(move || worker(&d, workers as usize, rx, pool_tx, &stats))
            .context("starting a worker thread")?;
        links.push(WorkerLink { tx, pool: pool_rx });
        worker_threads.push(handle);
    }
    let links = Arc::new(links);

    // Readers, with their replicas' channels.
    let n_readers = sources.len();
    let (learn_txs, learn_rxs): (Vec<_>, Vec<_>) = (0..n_readers).map(|_| unbounded::<Learned>()).unzip();
    let readers_stop = Arc::new(AtomicBool::new(false));
    let mut reader_stats = Vec::new();
    let mut reader_labels = Vec::new();
    let mut reader_threads = Vec::new();
    for (i, (src, learn_rx)) in sources.into_iter().zip(learn_rxs).enumerate() {
        let peers: Vec<Sender<Learned>> =
            learn_txs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| t.clone()).collect();
        let stats = Arc::new(ReaderStats::default());
        reader_labels.push((src.iface().to_string(), src.queue(), src.label()));
        let ctx = ReaderCtx {
            links: Arc::clone(&links),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&readers_stop),
            peers,
            learn_rx,
            media_maps: filters.iter().map(XdpFilter::media).collect(),
            inline: inline_worker.take(),
            priority: args.reader_priority.unwrap_or_default(),
            // Steering tracks as many calls as the workers' engines can hold between them.
            steer: SteerConfig {
                workers,
                idle_ns,
                max_calls: Config::default().max_calls * workers as usize,
                ..Default::default()
            },
        };
        reader_threads.push(
            std::thread::Builder::new()
                .name(format!("callrec-reader-{i}"))
                .spawn(move || reader(src, ctx, workers as usize))
                .context("starting a reader thread")?,
        );
        reader_stats.push(stats);
    }
    drop(learn_txs);
    drop(links);

    // Main loop: kernel map upkeep, status, logs, stop.
    let status_path = dir.join("capture-status.json");
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let log_every = Duration::from_secs(args.log_interval.unwrap_or(10));
    let mut last_log = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(2);
    let mut prev_packets = 0u64;
    let mut prev_at = Instant::now();
    let mut pps = 0.0;
    let mut warned_drops = 0u64;
    let view = StatusView {
        started,
        mode: mode.as_str(),
        pipeline: if inline { "inline" } else { "queued" },
        readers: &reader_labels,
        retention_days: args.retention_days,
    };
    loop {
        let stopping = stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        if stopping {
            break;
        }
        if last_status.elapsed() >= Duration::from_secs(1) {
            let total: u64 = reader_stats.iter().map(|s| s.packets.load(Ordering::Relaxed)).sum();
            let dt = prev_at.elapsed().as_secs_f64();
            pps = (total - prev_packets) as f64 / dt.max(1e-3);
            prev_packets = total;
            prev_at = Instant::now();
            let status = view.render(true, pps, &reader_stats, &worker_stats, &filters);
            write_status(&status_path, &status);
            let drops = drops_of(&status);
            if drops > warned_drops {
                eprintln!("callrec: warning: {} packets lost so far (ring/queue drops); see `callrec status`", drops);
                warned_drops = drops;
            }
            if !log_every.is_zero() && last_log.elapsed() >= log_every {
                last_log = Instant::now();
                eprintln!(
                    "callrec: {:.0} packets/s, {} active calls, {} recorded, {} drops",
                    pps, status["totals"]["active_calls"], status["totals"]["recorded"], drops
                );
            }
            last_status = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    eprintln!("callrec: stopping: finishing calls in progress");
    readers_stop.store(true, Ordering::Relaxed);
    // Readers first (an inline worker ends its calls there), then the workers draining their queues.
    let mut worker_failed = false;
    for (t, what) in
        reader_threads.into_iter().map(|t| (t, "reader")).chain(worker_threads.into_iter().map(|t| (t, "worker")))
    {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                worker_failed = true;
                eprintln!("callrec: error: {what}: {e:#}");
            }
            Err(_) => {
                worker_failed = true;
                eprintln!("callrec: error: a {what} thread panicked");
            }
        }
    }
    let status = view.render(false, pps, &reader_stats, &worker_stats, &filters);
    write_status(&status_path, &status);
    drop(filters);
    drop(promisc);
    let mut store = Store::open(dir)?;
    let summary = format!(
        "{} packets, {} calls recorded, {} drops",
        status["totals"]["packets"], status["totals"]["recorded"], status["totals"]["drops"]
    );
    store.index.audit(user, "capture-stop", &args.ifaces.join(","), &summary)?;
    eprintln!("callrec: capture ended: {summary}");
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(if worker_failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn open_xdp(
    iface: &str,
    args: &CaptureArgs,
    cfg: AfXdpConfig,
    sip_ports: &[u16],
    media_range: Option<(u16, u16)>,
) -> Result<(XdpFilter, Vec<Box<dyn Source>>)> {
    let mut f = XdpFilter::attach(iface, args.xdp_generic)?;
    f.set_sip_ports(sip_ports)?;
    f.set_media_range(media_range)?;
    let queues = args.queues.unwrap_or_else(|| capture_core::live::rx_queues(iface));
    let mut out: Vec<Box<dyn Source>> = Vec::new();
    for q in 0..queues {
        out.push(match args.af_xdp_crate.unwrap_or_default() {
            XskCrate::XskRs => Box::new(AfXdpSource::open(&mut f, q, cfg)?),
            XskCrate::Xdp => Box::new(PureAfXdpSource::open(&mut f, q, cfg)?),
        });
    }
    Ok((f, out))
}

struct ReaderCtx {
    links: Arc<Vec<WorkerLink>>,
    stats: Arc<ReaderStats>,
    stop: Arc<AtomicBool>,
    peers: Vec<Sender<Learned>>,
    learn_rx: Receiver<Learned>,
    media_maps: Vec<MediaMap>,
    steer: SteerConfig,
    /// The one worker, run on this reader's thread (`--pipeline inline`).
    inline: Option<InlineWorker>,
    priority: ReaderPriority,
}

/// What a reader needs to run the one worker itself.
struct InlineWorker {
    dir: PathBuf,
    stats: Arc<WorkerStats>,
}

/// Where a reader's steered batches go: worker threads' queues, or its own inline worker.
enum Downstream<'s> {
    Queued(&'s [WorkerLink]),
    Inline(Box<WorkerCore<'s>>),
}

impl Downstream<'_> {
    fn deliver(&mut self, w: usize, b: &mut Batch, stats: &ReaderStats) {
        match self {
            Downstream::Queued(links) => send(&links[w], b, stats),
            Downstream::Inline(core) => core.handle(b),
        }
    }
}

fn reader(mut src: Box<dyn Source>, ctx: ReaderCtx, workers: usize) -> Result<()> {
    prioritise(&src.label(), ctx.priority);
    let mut inline_store = ctx.inline.as_ref().map(|w| Store::open(&w.dir)).transpose()?;
    let mut down = match (&mut inline_store, &ctx.inline) {
        (Some(store), Some(w)) => Downstream::Inline(Box::new(WorkerCore::new(store, workers, &w.stats)?)),
        _ => Downstream::Queued(&ctx.links),
    };
    let inline = matches!(down, Downstream::Inline(_));
    let linktype = src.linktype();
    let mut decoder = Decoder::default();
    let mut steering = Steering::new(ctx.steer);
    let mut batches: Vec<Batch> = (0..workers).map(|_| Batch::default()).collect();
    let mut staged = Batch::default();
    let mut learned = Vec::new();
    let mut kernel = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(1));
    let mut last_stats = Instant::now();
    let mut last_flush = Instant::now();
    // When the packets now staged began to gather (see `gathers`).
    let mut gather_since: Option<Instant> = None;
    let stats = Arc::clone(&ctx.stats);
    loop {
        for ev in ctx.learn_rx.try_iter() {
            steering.apply(&ev);
        }
        // Steered a batch at a time, with look-ahead: a poll's worth (256 frames for AF_XDP), or
        // less, because a source may hand more than it was asked for (AF_PACKET gives whole
        // blocks of up to ~4,900 frames) and with one worker the staged batch itself goes to
        // the worker's queue: staged whole, a block's worth made every batch in the queue and
        // its pool 1 MiB instead of 256 KiB, and an overloaded capture 1.3 GiB resident.
        let mut steer_staged = |staged: &mut Batch, down: &mut Downstream<'_>| {
            let unmatched = steer(staged, &mut steering, &mut learned, &mut kernel, &mut batches, |w, b| {
                down.deliver(w, b, &stats)
            });
            stats.unmatched.fetch_add(unmatched, Ordering::Relaxed);
        };
        let res = src.poll(256, &mut |ts, frame| {
            stats.bytes.fetch_add(frame.len() as u64, Ordering::Relaxed);
            stats.packets.fetch_add(1, Ordering::Relaxed);
            match decoder.decode(ts, linktype, frame) {
                Ok(Decoded::Packet(p)) => {
                    staged.push(ts, &p);
                    if staged.full() {
                        steer_staged(&mut staged, &mut down);
                    }
                }
                Ok(Decoded::Ignored(_)) | Err(_) => {
                    stats.not_decoded.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // One clock read per loop: on an idle wire this loop runs thousands of times a second.
        let now = Instant::now();
        let got = *res.as_ref().unwrap_or(&0);
        if staged.is_empty() {
            gather_since = None;
        } else if gather_since.is_none() {
            gather_since = Some(now);
        }
        let waited = gather_since.map_or(Duration::ZERO, |t| now.duration_since(t));
        let gathering = inline && res.is_ok() && gathers(got, staged.len(), waited);
        if !gathering {
            steer_staged(&mut staged, &mut down);
        }
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                eprintln!("callrec: error: {} stopped: {e}", src.label());
                break;
            }
        };
        if !learned.is_empty() {
            for ev in learned.drain(..) {
                for p in &ctx.peers {
                    let _ = p.send(ev.clone());
                }
            }
        }
        apply_kernel(&ctx.media_maps, &mut kernel);
        if let Downstream::Inline(core) = &mut down {
            // No queue to fill: what was steered is recorded now, so the one batch is empty again
            // for the next poll's packets to become it in place (`steer` copies none of them).
            if !batches[0].is_empty() {
                core.handle(&mut batches[0]);
            }
            // A poll's worth is often a few frames: the timers at most every millisecond.
            core.housekeep(now_ns(), n > 0, 1_000_000);
        }
        // Partial batches go out every 5 ms, not whenever a poll comes back empty: an AF_XDP
        // ring is empty between bursts many times a millisecond, and flushing then sent batches of
        // 13 frames on average at 5,500 calls (live bench), so the 1,024-batch queue held 130 ms
        // of traffic instead of seconds, and a worker's 100-ms store tick overflowed it.
        if !inline && now.duration_since(last_flush) >= Duration::from_millis(5) {
            for (w, b) in batches.iter_mut().enumerate() {
                if !b.is_empty() {
                    down.deliver(w, b, &stats);
                }
            }
            last_flush = now;
        }
        if now.duration_since(last_stats) >= Duration::from_millis(500) {
            let s = src.stats();
            stats.ring_drops.store(s.ring_drops, Ordering::Relaxed);
            stats.other_drops.store(s.other_drops, Ordering::Relaxed);
            steering.sweep(now_ns(), &mut kernel);
            apply_kernel(&ctx.media_maps, &mut kernel);
            for m in &ctx.media_maps {
                m.retry_lingering();
            }
            last_stats = now;
        }
        if ctx.stop.load(Ordering::Relaxed) {
            break;
        }
        if n == 0 {
            if let Some(t) = backoff.idle() {
                src.wait(t);
            }
        } else {
            backoff.reset();
            if gathering {
                std::thread::sleep(GATHER_NAP);
            }
        }
    }
    // What was gathered (or staged when the source failed) is recorded too.
    let unmatched =
        steer(&mut staged, &mut steering, &mut learned, &mut kernel, &mut batches, |w, b| down.deliver(w, b, &stats));
    stats.unmatched.fetch_add(unmatched, Ordering::Relaxed);
    for (w, b) in batches.iter_mut().enumerate() {
        if !b.is_empty() {
            down.deliver(w, b, &stats);
        }
    }
    let s = src.stats();
    stats.ring_drops.store(s.ring_drops, Ordering::Relaxed);
    stats.other_drops.store(s.other_drops, Ordering::Relaxed);
    if let Downstream::Inline(core) = down {
        core.finish();
    }
    Ok(())
}

/// Puts the calling reader thread ahead of the workers, the writing threads and everything else
/// on its cores: the socket's ring is the shortest buffer (see `recorder::priority`). Real-time
/// where asked and allowed; otherwise, or where refused, a nice value below the process's.
fn prioritise(label: &str, how: ReaderPriority) {
    use recorder::priority::{READER_NICE, READER_RT_PRIORITY, adjust_thread_nice, set_thread_fifo};
    if how == ReaderPriority::Realtime {
        match set_thread_fifo(READER_RT_PRIORITY) {
            Ok(()) => return,
            Err(e) => eprintln!(
                "callrec: warning: {label}: cannot make the reader real-time (SCHED_FIFO {READER_RT_PRIORITY}): {e}; \
                 using nice {READER_NICE:+} instead, which loses frames sooner while the cores are busy (give \
                 capture CAP_SYS_NICE and real-time time in its cgroup, or pass --reader-priority nice to \
                 silence this)"
            ),
        }
    }
    if let Err(e) = adjust_thread_nice(READER_NICE) {
        eprintln!(
            "callrec: warning: {label}: cannot raise the reader's priority (nice {READER_NICE:+}): {e}; it may \
             lose frames while the cores are busy (run capture as root, or give it CAP_SYS_NICE)"
        );
    }
}

/// Frames a poll must bring, packets that must be staged, and how long the first of them may
/// wait, for the inline worker to record what is staged now (see [`gathers`]).
const GATHER_BELOW: usize = 64;
const GATHER_UPTO: usize = 128;
const GATHER_FOR: Duration = Duration::from_millis(1);
/// How long the reader sleeps while it gathers: at 400 kpps, ~40 frames with the kernel's
/// default 50 µs timer slack; a 65,536-frame AF_XDP buffer holds 160 ms of that.
const GATHER_NAP: Duration = Duration::from_micros(50);

/// Whether the inline worker leaves the staged packets for later, and the reader naps, after a
/// poll that brought `got` frames (`staged` packets waiting, the first for `waited`).
///
/// Why: where frames trickle in (an AF_XDP socket fed one frame at a time, as veth does from a
/// packet socket) each poll finds a few, and recording them at once made batches of 5-10
/// packets against AF_PACKET's ~245 (whole blocks), with every batch's fixed cost (steering,
/// the engine's look-ahead, timers, clock reads, the ring's bookkeeping) paid per handful
/// (live bench, `--inject mirror`, 8,000 calls going on: the xdp reader thread's CPU 1.11 µs a
/// packet against af-packet's 0.59; docs/BENCHMARKS.md). A poll of [`GATHER_BELOW`] frames or
/// more, half a batch staged, anything staged for a millisecond or more, and an empty poll all
/// end the gathering, so a packet waits at most about a millisecond longer.
fn gathers(got: usize, staged: usize, waited: Duration) -> bool {
    got > 0 && got < GATHER_BELOW && staged < GATHER_UPTO && waited < GATHER_FOR
}

/// Applies the steering's endpoint changes to every interface's XDP media map.
fn apply_kernel(maps: &[MediaMap], changes: &mut Vec<KernelChange>) {
    for ch in changes.drain(..) {
        for m in maps {
            match ch {
                KernelChange::Add((ip, port)) => {
                    if let Err(e) = m.add(ip, port) {
                        eprintln!("callrec: warning: {e}");
                    }
                }
                KernelChange::Remove((ip, port)) => m.remove_if_idle(ip, port, Duration::from_secs(2)),
            }
        }
    }
}

/// Hands a full batch to its worker and takes an empty one from the worker's pool.
fn send(link: &WorkerLink, b: &mut Batch, stats: &ReaderStats) {
    let fresh = link.pool.try_recv().unwrap_or_default();
    let full = std::mem::replace(b, fresh);
    match link.tx.try_send(full) {
        Ok(()) => {}
        Err(TrySendError::Full(mut back)) | Err(TrySendError::Disconnected(mut back)) => {
            stats.queue_drops.fetch_add(back.len() as u64, Ordering::Relaxed);
            back.clear();
            *b = back;
        }
    }
}

/// A worker's recording work, wherever it runs: on a worker thread fed by a queue ([`worker`]),
/// or on the reader's own thread (`--pipeline inline`).
struct WorkerCore<'s> {
    engine: Engine,
    sink: recorder::store::StoreSink<'s>,
    stats: &'s WorkerStats,
    /// Capture time of the newest packet handled (see `store_clock`).
    newest: Option<i64>,
    last_tick: i64,
}

impl<'s> WorkerCore<'s> {
    fn new(store: &'s mut Store, workers: usize, stats: &'s WorkerStats) -> Result<Self> {
        let mut sink = store.recorder()?;
        // The process's open-file limit is shared by every worker's recordings.
        sink.set_open_file_budget(recorder::store::default_open_file_budget() / workers.max(1));
        // Calls end all the time: their pages are freed for the writes of the calls still going on.
        sink.set_forget_finished(true);
        Ok(WorkerCore { engine: Engine::new(Config::default()), sink, stats, newest: None, last_tick: i64::MIN })
    }

    /// Records a batch and empties it.
    fn handle(&mut self, batch: &mut Batch) {
        let t = Instant::now();
        self.engine.handle_batch(&batch.packets, &batch.data, &mut self.sink);
        let stats = self.stats;
        stats.max_batch_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.packets.fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(last) = batch.last_ts() {
            stats.lag_ns.store(now_ns().saturating_sub(last).max(0) as u64, Ordering::Relaxed);
            self.newest = Some(last);
        }
        batch.clear();
    }

    /// Timers of the engine and the store: while `busy`, when `busy_gap_ns` passed since the
    /// last time (0: after every batch); every 10 ms while idle.
    fn housekeep(&mut self, now: i64, busy: bool, busy_gap_ns: i64) {
        if !busy {
            self.stats.lag_ns.store(0, Ordering::Relaxed);
        }
        let every = if busy { busy_gap_ns } else { 10_000_000 };
        if now.saturating_sub(self.last_tick) < every {
            return;
        }
        self.last_tick = now;
        let t = Instant::now();
        self.engine.poll(now, &mut self.sink);
        self.sink.tick(store_clock(now, self.newest, busy));
        self.stats.max_tick_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        let stats = self.stats;
        stats.active_calls.store(self.engine.active_calls() as u64, Ordering::Relaxed);
        stats.calls_started.store(self.engine.stats().calls_started, Ordering::Relaxed);
        stats.recorded.store(self.sink.recorded, Ordering::Relaxed);
        stats.store_errors.store(self.sink.errors.len() as u64, Ordering::Relaxed);
        let w = self.sink.write_waits();
        stats.write_waits.store(w.count, Ordering::Relaxed);
        stats.write_wait_us.store(w.total_ns / 1_000, Ordering::Relaxed);
        stats.max_write_wait_us.store(w.max_ns / 1_000, Ordering::Relaxed);
        stats.max_create_us.store(self.sink.max_create_ns / 1_000, Ordering::Relaxed);
        stats.max_index_us.store(self.sink.max_index_ns / 1_000, Ordering::Relaxed);
        if let Some(p) = self.sink.writer_place() {
            let _ = stats.writer_place.set(p);
        }
    }

    /// Ends every call in progress (`capture-ended`) and flushes the store.
    fn finish(mut self: Box<Self>) {
        self.engine.finish(&mut self.sink);
        self.sink.flush();
        self.publish();
        for e in self.sink.errors.iter().take(10) {
            eprintln!("callrec: store error: {e}");
        }
    }
}

fn worker(dir: &Path, workers: usize, rx: Receiver<Batch>, pool: Sender<Batch>, stats: &WorkerStats) -> Result<()> {
    let mut store = Store::open(dir)?;
    let mut core = Box::new(WorkerCore::new(&mut store, workers, stats)?);
    let mut idle = Duration::ZERO;
    loop {
        // Waits without spinning: crossbeam's blocking receive spins (PAUSE) and yields before
        // it sleeps, and with batches arriving every few milliseconds perf found the workers on
        // the rig spending a quarter of their CPU time in that spin (6 % of all samples at 4,000
        // calls), time the generator, the reader and the other worker needed on two cores. The
        // queue holds QUEUE_BATCHES batches, so looking again after at most a millisecond's
        // sleep costs only latency.
        match rx.try_recv() {
            Ok(mut batch) => {
                idle = Duration::ZERO;
                core.handle(&mut batch);
                let _ = pool.try_send(batch);
            }
            Err(crossbeam::channel::TryRecvError::Empty) => {
                stats.lag_ns.store(0, Ordering::Relaxed);
                idle = (idle * 2).clamp(Duration::from_micros(50), Duration::from_millis(1));
                std::thread::sleep(idle);
            }
            Err(crossbeam::channel::TryRecvError::Disconnected) => break,
        }
        core.housekeep(now_ns(), idle.is_zero(), 0);
    }
    core.finish();
    Ok(())
}

/// The time a worker's store ticks in: capture time, as `StoreSink::tick` expects, i.e. the
/// newest packet handled while the queue has batches, and the wall clock `now` once it is empty
/// (then the two agree up to the queue's latency).
///
/// Why: a chunk or a held tail is written when its oldest record is a second old. Measured on
/// the wall clock, a worker running behind its queue finds every record older by the lag, so
/// the further behind it is, the more held tails it writes alone (a partial-block write the
/// kernel zero-fills; in a losing live run at 10,000 calls perf found `zero_user_segments` as
/// costly as the page-cache copy in the writing thread) and the more chunks it writes before
/// they are full: more work exactly when the worker has least time. `StoreSink::tick` is
/// documented to take capture time; the worker passed the wall clock. (Live bench, 10,000 calls,
/// five alternating pairs, docs/BENCHMARKS.md: no clear difference in loss at this VM's noise,
/// medians 0.33 % before and 0.40 % after, every call complete in 2 of the 5 runs after and in
/// none before.)
fn store_clock(now: i64, newest: Option<i64>, busy: bool) -> i64 {
    match newest {
        Some(t) if busy => t.min(now),
        _ => now,
    }
}

struct StatusView<'a> {
    started: i64,
    mode: &'static str,
    /// "inline" (the one worker on the reader's thread) or "queued".
    pipeline: &'static str,
    readers: &'a [(String, u32, String)],
    retention_days: Option<u32>,
}

impl StatusView<'_> {
    fn render(
        &self,
        running: bool,
        pps: f64,
        readers: &[Arc<ReaderStats>],
        workers: &[Arc<WorkerStats>],
        filters: &[XdpFilter],
    ) -> serde_json::Value {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let queues: Vec<_> = self
            .readers
            .iter()
            .zip(readers)
            .map(|((iface, q, label), s)| {
                json!({
                    "interface": iface, "queue": q, "source": label,
                    "packets": ld(&s.packets), "bytes": ld(&s.bytes),
                    "ring_drops": ld(&s.ring_drops), "other_drops": ld(&s.other_drops),
                    "queue_drops": ld(&s.queue_drops), "unmatched": ld(&s.unmatched),
                    "not_decoded": ld(&s.not_decoded),
                })
            })
            .collect();
        let ws: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({
                    "worker": i, "packets": ld(&s.packets), "batches": ld(&s.batches),
                    "active_calls": ld(&s.active_calls),
                    "calls": ld(&s.calls_started), "recorded": ld(&s.recorded),
                    "store_errors": ld(&s.store_errors), "lag_ms": ld(&s.lag_ns) as f64 / 1e6,
                    "max_batch_ms": ld(&s.max_batch_us) as f64 / 1e3, "max_tick_ms": ld(&s.max_tick_us) as f64 / 1e3,
                    "write_waits": ld(&s.write_waits), "write_wait_ms": ld(&s.write_wait_us) as f64 / 1e3,
                    "max_write_wait_ms": ld(&s.max_write_wait_us) as f64 / 1e3,
                    "max_create_ms": ld(&s.max_create_us) as f64 / 1e3, "max_index_ms": ld(&s.max_index_us) as f64 / 1e3,
                    "writer_priority": place_json(s.writer_place.get()),
                })
            })
            .collect();
        let xdp: serde_json::Map<String, serde_json::Value> = filters
            .iter()
            .map(|f| {
                let c = f.counters();
                let mut m = serde_json::Map::new();
                m.insert("attach_mode".into(), json!(f.mode()));
                for k in capture_core::live::xdp::counter_names() {
                    m.insert(k.1.into(), json!(c[k.0]));
                }
                m.insert("media_endpoints".into(), json!(f.media_len()));
                (f.iface().to_string(), serde_json::Value::Object(m))
            })
            .collect();
        let sum = |f: fn(&ReaderStats) -> &AtomicU64| readers.iter().map(|s| ld(f(s))).sum::<u64>();
        let drops = sum(|s| &s.ring_drops) + sum(|s| &s.other_drops) + sum(|s| &s.queue_drops);
        json!({
            "pid": std::process::id(),
            "running": running,
            "mode": self.mode,
            "pipeline": self.pipeline,
            "started": recorder::timefmt::rfc3339_ms(self.started),
            "updated": recorder::timefmt::rfc3339_ms(now_ns()),
            "uptime_s": (now_ns() - self.started) as f64 / 1e9,
            "retention_days": self.retention_days,
            "totals": {
                "packets": sum(|s| &s.packets),
                "packets_per_s": pps.round(),
                "active_calls": workers.iter().map(|s| ld(&s.active_calls)).sum::<u64>(),
                "calls": workers.iter().map(|s| ld(&s.calls_started)).sum::<u64>(),
                "recorded": workers.iter().map(|s| ld(&s.recorded)).sum::<u64>(),
                "drops": drops,
                "ring_drops": sum(|s| &s.ring_drops),
                "queue_drops": sum(|s| &s.queue_drops),
                "max_worker_lag_ms": workers.iter().map(|s| ld(&s.lag_ns)).max().unwrap_or(0) as f64 / 1e6,
            },
            "queues": queues,
            "workers": ws,
            "xdp": xdp,
        })
    }
}

fn drops_of(status: &serde_json::Value) -> u64 {
    status["totals"]["drops"].as_u64().unwrap_or(0)
}

/// Writes the status atomically (temporary file + rename), so `callrec status` never reads half.
fn write_status(path: &Path, status: &serde_json::Value) {
    let tmp = path.with_extension("json.tmp");
    let ok = serde_json::to_vec_pretty(status).ok().and_then(|b| std::fs::write(&tmp, b).ok()).is_some();
    if ok {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// `callrec status`: what the running capture reports (from STORE/capture-status.json).
pub fn status(dir: &Path, json_out: bool) -> Result<ExitCode> {
    let path = dir.join("capture-status.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if json_out {
                println!("{}", json!({"running": false}));
            } else {
                println!("no capture has run on {}", dir.display());
            }
            return Ok(ExitCode::from(3));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut st: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not a capture status file", path.display()))?;
    let pid = st["pid"].as_u64().unwrap_or(0) as i32;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
    let running = st["running"].as_bool().unwrap_or(false) && alive;
    st["running"] = json!(running);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        let t = &st["totals"];
        println!(
            "capture {} (pid {pid}, mode {}, {} workers, since {}, updated {})",
            if running { "running" } else { "not running" },
            st["mode"].as_str().unwrap_or("?"),
            st["pipeline"].as_str().unwrap_or("queued"),
            st["started"].as_str().unwrap_or("?"),
            st["updated"].as_str().unwrap_or("?")
        );
        println!(
            "  {} active calls, {} calls seen, {} recorded; {} packets/s; drops since start: {} (ring {}, queue {}); worker lag {} ms",
            t["active_calls"],
            t["calls"],
            t["recorded"],
            t["packets_per_s"],
            t["drops"],
            t["ring_drops"],
            t["queue_drops"],
            t["max_worker_lag_ms"]
        );
        for q in st["queues"].as_array().into_iter().flatten() {
            println!(
                "  {:<40} packets {:>10}  ring drops {:>6}  queue drops {:>6}  unmatched {:>8}",
                q["source"].as_str().unwrap_or("?"),
                q["packets"],
                q["ring_drops"],
                q["queue_drops"],
                q["unmatched"]
            );
        }
        for w in st["workers"].as_array().into_iter().flatten() {
            println!(
                "  worker {:<3} active {:>5}  recorded {:>7}  packets {:>10}  lag {} ms  longest batch {} ms, tick {} ms, \
                 recording created {} ms, index write {} ms  waited for write buffers {} times ({} ms, longest {} ms), \
                 writing thread {}",
                w["worker"],
                w["active_calls"],
                w["recorded"],
                w["packets"],
                w["lag_ms"],
                w["max_batch_ms"],
                w["max_tick_ms"],
                w["max_create_ms"],
                w["max_index_ms"],
                w["write_waits"],
                w["write_wait_ms"],
                w["max_write_wait_ms"],
                w["writer_priority"].as_str().unwrap_or("not started")
            );
        }
        if let Some(x) = st["xdp"].as_object() {
            for (iface, c) in x {
                let fields: Vec<String> = c
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k} {}", v.as_str().map_or(v.to_string(), String::from)))
                    .collect();
                println!("  xdp {iface}: {}", fields.join(", "));
            }
        }
    }
    Ok(if running { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While batches are flowing the store ticks in capture time, never ahead of the wall clock;
    /// when the queue is empty (or nothing was handled yet) it ticks on the wall clock.
    #[test]
    fn the_store_ticks_in_capture_time_while_busy() {
        let now = 10_000_000_000;
        assert_eq!(store_clock(now, Some(now - 400_000_000), true), now - 400_000_000);
        assert_eq!(store_clock(now, Some(now - 400_000_000), false), now);
        assert_eq!(store_clock(now, None, true), now);
        assert_eq!(store_clock(now, Some(now + 5), true), now, "a packet stamped ahead of the clock");
    }

    #[test]
    fn the_shipped_configuration_parses_and_flags_win() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/callrec.toml");
        let args = CaptureArgs { config: Some(shipped), mode: Some(Mode::AfPacket), ..Default::default() };
        let r = args.resolve().unwrap();
        assert_eq!(r.ifaces, vec!["eth1".to_string()]);
        assert_eq!(r.mode, Some(Mode::AfPacket), "the flag wins over the file's xdp");
        assert_eq!(r.sip_ports, vec![5060, 5061]);
        assert_eq!(r.store.as_deref(), Some(Path::new("/var/lib/callrec")));
        assert_eq!((r.media_idle_timeout, r.log_interval, r.retention_days), (Some(600), Some(60), Some(1825)));
    }

    /// The writing thread's place reads as words in the status file.
    #[test]
    fn the_writing_threads_place_reads_in_words() {
        assert_eq!(place_json(None), serde_json::Value::Null);
        assert_eq!(place_json(Some(&WriterPlace::Realtime(1))), json!("realtime 1"));
        assert_eq!(place_json(Some(&WriterPlace::Nice(-4))), json!("nice -4"));
    }

    #[test]
    fn the_reader_priority_comes_from_the_file_unless_a_flag_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let resolve = |text: &str, flag: Option<ReaderPriority>| {
            std::fs::write(&file, text).unwrap();
            CaptureArgs { config: Some(file.clone()), reader_priority: flag, ..Default::default() }.resolve()
        };
        for (text, want) in [("nice", ReaderPriority::Nice), ("realtime", ReaderPriority::Realtime)] {
            let got = resolve(&format!("reader_priority = \"{text}\"\n"), None).unwrap().reader_priority;
            assert_eq!(got, Some(want), "{text}");
        }
        let flag_wins = resolve("reader_priority = \"nice\"\n", Some(ReaderPriority::Realtime)).unwrap();
        assert_eq!(flag_wins.reader_priority, Some(ReaderPriority::Realtime));
        let err = format!("{:#}", resolve("reader_priority = \"fifo\"\n", None).unwrap_err());
        assert!(err.contains("c.toml") && err.contains("fifo"), "{err}");
        assert_eq!(ReaderPriority::default(), ReaderPriority::Realtime, "real-time unless asked otherwise");
    }

    #[test]
    fn configuration_errors_name_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "interfaces = [\"eth1\"]\nworkerz = 3\n").unwrap();
        let e = CaptureArgs { config: Some(p.clone()), ..Default::default() }.resolve().unwrap_err();
        let text = format!("{e:#}");
        assert!(text.contains("bad.toml") && text.contains("workerz"), "{text}");
        assert!(parse_range("2000-1000").is_err());
        assert_eq!(parse_range("16384-32767").unwrap(), (16384, 32767));
    }

    #[test]
    fn the_inline_reader_gathers_a_trickle_but_not_a_burst_an_idle_ring_or_an_old_packet() {
        let us = Duration::from_micros;
        assert!(gathers(5, 5, us(0)));
        assert!(gathers(63, 127, us(999)));
        assert!(!gathers(0, 5, us(0)), "an empty poll: record what is staged");
        assert!(!gathers(64, 64, us(0)), "a burst");
        assert!(!gathers(5, 128, us(0)), "half a batch staged");
        assert!(!gathers(5, 40, us(1000)), "the first packet waited a millisecond");
    }

    /// `--xdp-frames` sizes the UMEM and both rings; a value the kernel would refuse is named
    /// with the flag before any interface is touched, and the file's value yields to the flag.
    #[test]
    fn the_worker_runs_inline_only_with_one_reader_and_one_worker() {
        assert!(runs_inline(Pipeline::Auto, 1, 1).unwrap());
        assert!(!runs_inline(Pipeline::Auto, 2, 1).unwrap());
        assert!(!runs_inline(Pipeline::Auto, 1, 2).unwrap());
        assert!(runs_inline(Pipeline::Inline, 1, 1).unwrap());
        assert!(!runs_inline(Pipeline::Queued, 1, 1).unwrap());
        let e = runs_inline(Pipeline::Inline, 4, 1).unwrap_err().to_string();
        assert!(e.contains("4 queue(s)") && e.contains("--queues 1 --workers 1"), "{e}");
        assert!(runs_inline(Pipeline::Inline, 1, 3).is_err());
    }

    #[test]
    fn workers_default_to_the_cores_the_readers_leave() {
        assert_eq!(default_workers(2, 1), 1);
        assert_eq!(default_workers(4, 1), 3);
        assert_eq!(default_workers(16, 4), 8);
        assert_eq!(default_workers(16, 12), 4);
        // Never none: more readers than cores still get a worker.
        assert_eq!(default_workers(1, 1), 1);
        assert_eq!(default_workers(2, 4), 1);
    }

    #[test]
    fn xdp_frames_must_be_a_power_of_two_in_range() {
        let d = AfXdpConfig::default();
        let c = xdp_config(None, false).unwrap();
        assert_eq!((c.frames, c.ring), (d.frames, d.ring));
        let c = xdp_config(Some(65536), false).unwrap();
        assert_eq!((c.frames, c.ring), (65536, 65536));
        // Inline, the UMEM is the only buffer: twice the default, unless the flag says otherwise.
        let c = xdp_config(None, true).unwrap();
        assert_eq!((c.frames, c.ring), (INLINE_XDP_FRAMES, INLINE_XDP_FRAMES));
        assert!(INLINE_XDP_FRAMES > d.frames);
        let c = xdp_config(Some(4096), true).unwrap();
        assert_eq!((c.frames, c.ring), (4096, 4096));
        for bad in [0, 32, 1000, 1 << 21] {
            let e = format!("{:#}", xdp_config(Some(bad), false).unwrap_err());
            assert!(e.contains("--xdp-frames") && e.contains(&bad.to_string()), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "xdp_frames = 131072\n").unwrap();
        let r = CaptureArgs { config: Some(p.clone()), ..Default::default() }.resolve().unwrap();
        assert_eq!(r.xdp_frames, Some(131072));
        let flag = CaptureArgs { config: Some(p), xdp_frames: Some(4096), ..Default::default() };
        assert_eq!(flag.resolve().unwrap().xdp_frames, Some(4096));
    }

    #[test]
    fn the_af_xdp_crate_comes_from_the_file_unless_a_flag_says_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "af_xdp_crate = \"xdp\"\n").unwrap();
        let r = CaptureArgs { config: Some(p.clone()), ..Default::default() }.resolve().unwrap();
        assert_eq!(r.af_xdp_crate, Some(XskCrate::Xdp));
        let flag = CaptureArgs { config: Some(p.clone()), af_xdp_crate: Some(XskCrate::XskRs), ..Default::default() };
        assert_eq!(flag.resolve().unwrap().af_xdp_crate, Some(XskCrate::XskRs));
        std::fs::write(&p, "af_xdp_crate = \"libxdp\"\n").unwrap();
        let e = format!("{:#}", CaptureArgs { config: Some(p), ..Default::default() }.resolve().unwrap_err());
        assert!(e.contains("c.toml") && e.contains("libxdp"), "{e}");
    }
}
