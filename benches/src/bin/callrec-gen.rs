//! `callrec-gen`: writes generated call traffic to a pcap file, or plays it onto an interface.
//!
//!     callrec-gen pcap OUT.pcap --calls 1000 --duration 30 [--ramp 1] [--dtmf-every 10]
//!     callrec-gen send IFACE --calls 5000 --duration 20 [--ramp 2] [--flat-out] [--noise N] [--xdp]
//!
//! `send` paces frames by their timestamps (real time) unless `--flat-out`, which sends as fast as
//! the socket takes them to measure the rig's ceiling. It prints one JSON object: frames sent,
//! RTP packets, seconds, achieved packets per second, and send errors by kind.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use callrec_bench::send;
use callrec_bench::traffic::{Generator, Workload};
use capture_core::PcapWriter;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "callrec-gen", about = "Generated SIP/RTP call traffic for callrec's benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Shape {
    /// Calls in total.
    #[arg(long, default_value_t = 100)]
    calls: u32,
    /// Seconds from INVITE to BYE.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds over which call starts are spread (concurrency ≈ calls × min(1, duration / ramp)).
    #[arg(long, default_value_t = 1.0)]
    ramp: f64,
    /// Every k-th call sends an RFC 2833 digit (0: none).
    #[arg(long, default_value_t = 10)]
    dtmf_every: u32,
}

impl Shape {
    fn workload(&self) -> Result<Workload> {
        anyhow::ensure!(self.calls > 0, "--calls must be at least 1");
        anyhow::ensure!(self.duration >= 0.2, "--duration must be at least 0.2 seconds");
        anyhow::ensure!(self.ramp >= 0.0, "--ramp must not be negative");
        Ok(Workload { dtmf_every: self.dtmf_every, ..Workload::calls(self.calls, self.duration, self.ramp) })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the traffic to a pcap file (nanosecond timestamps).
    Pcap {
        out: PathBuf,
        #[command(flatten)]
        shape: Shape,
    },
    /// Send the traffic on an interface through a raw AF_PACKET socket, in batches.
    Send {
        iface: String,
        #[command(flatten)]
        shape: Shape,
        /// Ignore timestamps and send as fast as possible (measures the rig's ceiling).
        #[arg(long)]
        flat_out: bool,
        /// Frames per sendmmsg batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Background frames (UDP to port 5140, not SIP, not RTP) sent after every call frame.
        #[arg(long, default_value_t = 0)]
        noise: u32,
        /// Hand the frames to the kernel as XDP frames (BPF_PROG_TEST_RUN live frames, redirected
        /// to IFACE), as a NIC's driver would, instead of as skbs from a packet socket. IFACE's
        /// peer must take XDP frames (an XDP program attached, or GRO on). Batches up to 512.
        #[arg(long)]
        xdp: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("callrec-gen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Pcap { out, shape } => {
            let w = shape.workload()?;
            let f = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
            let mut pw = PcapWriter::new(std::io::BufWriter::with_capacity(1 << 20, f), 1)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let mut g = Generator::new(w.clone());
            let mut buf = Vec::with_capacity(2048);
            let mut n = 0u64;
            while let Some(ts) = g.next_frame(&mut buf) {
                pw.write(ts, &buf).with_context(|| format!("cannot write {}", out.display()))?;
                n += 1;
            }
            use std::io::Write;
            pw.into_inner().flush().with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "file": out.display().to_string(), "frames": n, "calls": w.calls,
                    "concurrency": w.concurrency(), "rtp_packets": w.total_rtp(),
                })
            );
            Ok(())
        }
        Cmd::Send { iface, shape, flat_out, batch, noise, xdp } => {
            let w = shape.workload()?;
            let report = send::play(&iface, w, flat_out, batch, noise, xdp)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
