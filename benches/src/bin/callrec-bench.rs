//! `callrec-bench`: the benches that are programs rather than criterion micro-benches.
//!
//!     callrec-bench stages --calls 1000 --duration 30        per-stage cost of the userspace path
//!     callrec-bench index --rows 10000000 --db DIR           index ingest rate and search latency
//!     callrec-bench memory --calls 20000 --duration 20       resident memory with N calls in progress
//!     callrec-bench flood --invites 2000000                  memory under an INVITE / stray-RTP flood
//!     callrec-bench live --loads 500,1000,2000               xdp vs af-packet vs tcpdump on the rig (root)
//!     callrec-bench plot LIVE.json OUT.svg                   loss against offered load
//!     callrec-bench xdp-filter --endpoints 20000             the XDP filter's time per frame (root)
//!
//! Each prints one JSON object on stdout; `cargo xtask bench` collects them into docs/BENCHMARKS.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use callrec_bench::{indexbench, live, measure, plot, stages};

#[derive(Parser)]
#[command(name = "callrec-bench", about = "callrec's offline, index and memory benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Per-stage cost of decode, dispatch, assembly and encrypted store on generated calls in memory.
    Stages {
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[arg(long, default_value_t = 1.0)]
        ramp: f64,
        /// Repetitions of each stage (the median is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Where the store stage writes (a temporary directory under it).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Run only this stage (read, decode, dispatch, assembly, store), e.g. under a profiler.
        #[arg(long)]
        only: Option<String>,
        /// Leave the stores on disk (under --dir), for A/B runs back to back: deleting a store makes
        /// the next files created on ext4 without a journal slower for minutes (`recently_deleted`).
        #[arg(long)]
        keep: bool,
    },
    /// `callrec import` against `tcpdump -r` on the same generated capture (alternating, medians).
    Import {
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Worker counts to run import with (each against the same tcpdump runs).
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        workers: Vec<usize>,
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Another callrec build (e.g. an older commit's target/release/callrec) to run in the
        /// same repetitions, right after this build, for an old/new comparison (repeatable).
        #[arg(long)]
        compare: Vec<PathBuf>,
    },
    /// Index ingest (rows per second) and search latency (median, p99) on an index of N calls.
    Index {
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        /// Calls in progress while rows go in: each call's completion is written this many call
        /// starts after its start, as a recorder with that many concurrent calls does.
        #[arg(long, default_value_t = 5_000)]
        concurrent: u64,
        /// Index writes (call starts and completions) per transaction; by default the recorder's.
        #[arg(long, default_value_t = recorder::store::INDEX_BATCH)]
        batch: usize,
        /// Directory for the index (kept, so later runs can reuse it with --reuse).
        #[arg(long)]
        db: PathBuf,
        /// Queries per kind.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Reuse an index already filled to --rows by an earlier run.
        #[arg(long)]
        reuse: bool,
    },
    /// Peak resident memory while recording N concurrent calls (generated, through the store).
    Memory {
        #[arg(long, default_value_t = 20_000)]
        calls: u32,
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        #[arg(long, default_value_t = 5.0)]
        ramp: f64,
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
    /// Memory under a flood of INVITEs with fresh Call-IDs and RTP of no call.
    Flood {
        #[arg(long, default_value_t = 1_000_000)]
        invites: u32,
        #[arg(long, default_value_t = 1_000_000)]
        stray_rtp: u32,
        /// The engine's call limit for the run (the configured bound memory must stay under).
        #[arg(long, default_value_t = 200_000)]
        max_calls: usize,
    },
    /// Live capture side by side on the virtual mirror port (root): loss against offered load.
    Live {
        #[command(flatten)]
        opts: live::LiveOpts,
        /// Where the JSON result goes (also printed).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Draws the loss chart from a live bench result.
    Plot { live_json: PathBuf, out_svg: PathBuf },
    /// The XDP filter's kernel time per frame (BPF_PROG_TEST_RUN), by kind of frame, with the
    /// media port set and without it (every UDP frame looked up in the endpoint hash), alternating.
    XdpFilter {
        /// Media endpoints registered (two per call).
        #[arg(long, default_value_t = 20_000)]
        endpoints: u32,
        /// Runs of the program per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        repeat: u32,
        /// Measurements of each kind and setting (the median is reported).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
}

/// The allocator `callrec` uses (see its main.rs), so the benches measure the same heap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callrec-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let out = match cli.cmd {
        Cmd::Stages { calls, duration, ramp, reps, dir, only, keep } => {
            stages::run(calls, duration, ramp, reps, &dir, only.as_deref(), keep)?
        }
        Cmd::Import { calls, duration, reps, workers, dir, compare } => {
            let bin = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
            let tmp = tempfile::tempdir_in(&dir)?;
            let pcap = tmp.path().join(format!("calls{calls}.pcap"));
            let w = callrec_bench::traffic::Workload::calls(calls, duration, 1.0);
            let mut pw = capture_core::PcapWriter::new(
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&pcap)?),
                1,
            )?;
            let mut g = callrec_bench::traffic::Generator::new(w.clone());
            let mut buf = Vec::new();
            while let Some(ts) = g.next_frame(&mut buf) {
                pw.write(ts, &buf)?;
            }
            std::io::Write::flush(&mut pw.into_inner())?;
            stages::import_vs_tcpdump(&bin.join("callrec"), &compare, &pcap, w.total_frames(), reps, &workers, &dir)?
        }
        Cmd::Index { rows, concurrent, batch, db, queries, reuse } => {
            indexbench::run(rows, concurrent, batch, &db, queries, reuse)?
        }
        Cmd::Memory { calls, duration, ramp, dir } => measure::memory_bench(calls, duration, ramp, &dir)?,
        Cmd::Flood { invites, stray_rtp, max_calls } => measure::flood_bench(invites, stray_rtp, max_calls)?,
        Cmd::Live { mut opts, out } => {
            let bin = std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default();
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default();
            opts.callrec = bin.join("callrec");
            opts.generator = bin.join("callrec-gen");
            opts.rig_script = root.join("scripts/rig.sh");
            let v = live::run(&opts)?;
            if let Some(p) = out {
                std::fs::write(&p, serde_json::to_string_pretty(&v)?)?;
            }
            v
        }
        Cmd::XdpFilter { endpoints, repeat, rounds } => callrec_bench::xdpbench::run(endpoints, repeat, rounds)?,
        Cmd::Plot { live_json, out_svg } => {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&live_json)?)?;
            plot::loss_chart(&v, &out_svg)?;
            serde_json::json!({"plot": out_svg.display().to_string()})
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
