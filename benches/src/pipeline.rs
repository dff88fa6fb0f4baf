//! The recorder's userspace path, cut into stages so each can be measured alone and cumulatively:
//! decode → dispatch (steering to a worker) → assembly (engine) → encrypted write (store).
//!
//! Why it exists: the criterion micro-benches, the offline per-stage bench and the zero-allocation
//! test must run exactly the code `callrec capture` and `callrec import` run, in the same order,
//! without the I/O around it. Frames live in one contiguous arena ([`Frames`]) so that feeding them
//! costs nothing the recorder would not also pay.

use std::path::Path;

use anyhow::{Context, Result};
use capture_core::{Decoded, Decoder};
use recorder::batch::{Batch, steer};
use recorder::steer::{KernelChange, Learned, SteerConfig, Steering};
use recorder::store::{Store, StoreSink};
use recorder::{Config, Engine, Sink};

use crate::traffic::Generator;

/// Frames in one buffer: (timestamp, start, end) into `data`.
#[derive(Default)]
pub struct Frames {
    pub data: Vec<u8>,
    pub index: Vec<(i64, u32, u32)>,
}

impl Frames {
    pub fn clear(&mut self) {
        self.data.clear();
        self.index.clear();
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Appends up to `n` frames from `g`; returns how many.
    pub fn fill(&mut self, g: &mut Generator, n: usize, scratch: &mut Vec<u8>) -> usize {
        let mut k = 0;
        while k < n {
            let Some(ts) = g.next_frame(scratch) else { break };
            self.push(ts, scratch);
            k += 1;
        }
        k
    }

    /// Appends every frame from `g` with a timestamp before `until`.
    pub fn fill_until(&mut self, g: &mut Generator, until: i64, scratch: &mut Vec<u8>) -> usize {
        let mut k = 0;
        while g.peek_ts().is_some_and(|t| t < until) {
            let ts = g.next_frame(scratch).expect("peeked");
            self.push(ts, scratch);
            k += 1;
        }
        k
    }

    /// Appends one frame. Panics past 4 GiB (offsets are 32-bit); callers size their workloads.
    pub fn push(&mut self, ts: i64, frame: &[u8]) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(frame);
        let end = u32::try_from(self.data.len()).expect("Frames holds at most 4 GiB of frames");
        self.index.push((ts, start, end));
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &[u8])> {
        self.index.iter().map(|&(ts, s, e)| (ts, &self.data[s as usize..e as usize]))
    }
}

/// How far down the path a run goes; each stage includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Touch every frame's bytes (the cost of reading the input at all).
    Read,
    /// Link/IP/UDP decoding.
    Decode,
    /// Steering by call to a worker (the live reader's job).
    Dispatch,
    /// SIP dialogs, SDP, stream lookup, RTP statistics (null sink).
    Assembly,
    /// Encrypted chunked recording files and the SQLite index.
    Store,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Read, Stage::Decode, Stage::Dispatch, Stage::Assembly, Stage::Store];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Decode => "decode",
            Stage::Dispatch => "dispatch",
            Stage::Assembly => "assembly",
            Stage::Store => "store",
        }
    }
}

/// Counts only: the assembly stage without any storage.
#[derive(Default)]
pub struct NullSink {
    pub media: u64,
    pub calls: u64,
}

impl Sink for NullSink {
    fn call_started(&mut self, _: recorder::CallRef, _: &str, _: i64) {}
    fn payload_types(&mut self, _: recorder::CallRef, _: recorder::Side, _: &[(u8, &str, u32)]) {}
    fn media(&mut self, _: recorder::CallRef, _: u8, _: recorder::Side, _: i64, _: &[u8]) {
        self.media += 1;
    }
    fn call_ended(&mut self, _: recorder::CallRef, _: recorder::CallSummary) {
        self.calls += 1;
    }
}

/// Frames a reader stages and steers at a time: what a live reader's poll returns at most, and
/// what fills a worker's batch ([`recorder::batch::BATCH_FRAMES`]).
pub const WINDOW: usize = recorder::batch::BATCH_FRAMES;

/// One worker's path, run to `stage`, the way live capture runs it: a reader decodes frames into
/// a staged [`Batch`], [`steer`]s it with look-ahead into the worker's batch, and the worker
/// hands that to [`Engine::handle_batch`]. Holds its state across batches so steady state can be
/// measured after a warm-up.
pub struct Pipeline<'s> {
    pub decoder: Decoder,
    staged: Batch,
    path: Stages<'s>,
}

/// Everything after decoding: steering, engine, sink.
struct Stages<'s> {
    stage: Stage,
    steering: Steering,
    engine: Engine,
    learned: Vec<Learned>,
    kernel: Vec<KernelChange>,
    worker: Batch,
    sink: Either<'s>,
    checksum: u64,
    routed: u64,
}

// One per pipeline, matched on every packet: boxing the store would add a pointer chase to the
// path being measured.
#[allow(clippy::large_enum_variant)]
enum Either<'s> {
    Null(NullSink),
    Store(StoreSink<'s>),
}

impl<'s> Pipeline<'s> {
    /// A pipeline to `stage`; `store` is needed (only) for [`Stage::Store`].
    pub fn new(stage: Stage, store: Option<&'s mut Store>) -> Result<Pipeline<'s>> {
        let sink = match (stage, store) {
            (Stage::Store, Some(s)) => Either::Store(s.recorder().context("cannot open the store for writing")?),
            (Stage::Store, None) => anyhow::bail!("the store stage needs a store"),
            _ => Either::Null(NullSink::default()),
        };
        Ok(Pipeline {
            decoder: Decoder::default(),
            staged: Batch::default(),
            path: Stages {
                stage,
                steering: Steering::new(SteerConfig { workers: 1, ..Default::default() }),
                engine: Engine::new(Config::default()),
                learned: Vec::with_capacity(64),
                kernel: Vec::with_capacity(64),
                worker: Batch::default(),
                sink,
                checksum: 0,
                routed: 0,
            },
        })
    }

    pub fn stage(&self) -> Stage {
        self.path.stage
    }

    pub fn engine(&self) -> &Engine {
        &self.path.engine
    }

    pub fn steering(&self) -> &Steering {
        &self.path.steering
    }

    /// A sum over what the stage read (keeps the read and decode stages from being optimised away).
    pub fn checksum(&self) -> u64 {
        self.path.checksum
    }

    /// Packets steering sent to the worker.
    pub fn routed(&self) -> u64 {
        self.path.routed
    }

    /// Replaces the engine and steering with ones limited to `max_calls` calls (flood bench).
    pub fn set_max_calls(&mut self, max_calls: usize) {
        self.path.engine = Engine::new(Config { max_calls, ..Default::default() });
        self.path.steering = Steering::new(SteerConfig { workers: 1, max_calls, ..Default::default() });
    }

    /// Runs one frame through the stages, as a batch of one (for benches that measure memory,
    /// not speed).
    pub fn frame(&mut self, ts: i64, frame: &[u8]) {
        self.take(ts, frame);
        self.path.batch(&mut self.staged);
    }

    /// Runs `frames` through the stages [`WINDOW`] frames at a time.
    pub fn run(&mut self, frames: &Frames) {
        for chunk in frames.index.chunks(WINDOW) {
            for &(ts, s, e) in chunk {
                self.take(ts, &frames.data[s as usize..e as usize]);
            }
            self.path.batch(&mut self.staged);
        }
    }

    /// Reads or decodes one frame; from the dispatch stage on, stages the packet.
    #[inline]
    fn take(&mut self, ts: i64, frame: &[u8]) {
        if self.path.stage == Stage::Read {
            // What any reader pays: the bytes are read once.
            let sum = frame.iter().fold(0u64, |a, &b| a.wrapping_add(b as u64));
            self.path.checksum = self.path.checksum.wrapping_add(sum);
            return;
        }
        let Ok(Decoded::Packet(p)) = self.decoder.decode(ts, 1, frame) else { return };
        if self.path.stage == Stage::Decode {
            self.path.checksum = self.path.checksum.wrapping_add(p.payload.len() as u64);
            return;
        }
        self.staged.push(ts, &p);
    }

    /// Ends every call and commits the index.
    pub fn finish(&mut self) {
        match &mut self.path.sink {
            Either::Null(s) => self.path.engine.finish(s),
            Either::Store(s) => {
                self.path.engine.finish(s);
                s.flush();
            }
        }
    }

    /// Media packets the sink received and calls it completed.
    pub fn delivered(&self) -> (u64, u64) {
        match &self.path.sink {
            Either::Null(s) => (s.media, s.calls),
            Either::Store(s) => (self.path.engine.stats().rtp_packets, s.recorded),
        }
    }

    pub fn store_errors(&self) -> &[String] {
        match &self.path.sink {
            Either::Store(s) => &s.errors,
            Either::Null(_) => &[],
        }
    }
}

impl Stages<'_> {
    /// Steers the staged packets into the worker's batch, then (from the assembly stage on)
    /// assembles and stores that batch.
    fn batch(&mut self, staged: &mut Batch) {
        if staged.is_empty() {
            return;
        }
        let Stages { stage, steering, engine, learned, kernel, worker, sink, routed, .. } = self;
        learned.clear();
        kernel.clear();
        let mut work = |b: &mut Batch| {
            *routed += b.len() as u64;
            match sink {
                Either::Null(_) if *stage == Stage::Dispatch => {}
                Either::Null(s) => engine.handle_batch(&b.packets, &b.data, s),
                Either::Store(s) => {
                    engine.handle_batch(&b.packets, &b.data, s);
                    if let Some(ts) = b.last_ts() {
                        s.tick(ts);
                    }
                }
            }
            b.clear();
        };
        steer(staged, steering, learned, kernel, std::slice::from_mut(worker), |_, b| work(b));
        work(worker);
    }
}

/// A fresh store in `dir` (the passphrase is only for the bench).
pub fn bench_store(dir: &Path) -> Result<Store> {
    Store::init(dir, b"bench passphrase, not a secret")
        .with_context(|| format!("cannot create a store in {}", dir.display()))
}

/// Raises the open-file limit to the hard limit: a recorder holds one file per call in progress.
pub fn raise_fd_limit() -> u64 {
    recorder::store::raise_fd_limit()
}
