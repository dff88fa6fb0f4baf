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

    pub fn push(&mut self, ts: i64, frame: &[u8]) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(frame);
        self.index.push((ts, start, self.data.len() as u32));
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

/// One worker's path, run to `stage`. Holds its state across batches so steady state can be
/// measured after a warm-up.
pub struct Pipeline<'s> {
    pub stage: Stage,
    pub decoder: Decoder,
    pub steering: Steering,
    pub engine: Engine,
    learned: Vec<Learned>,
    kernel: Vec<KernelChange>,
    sink: Either<'s>,
    pub checksum: u64,
    pub routed: u64,
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
            stage,
            decoder: Decoder::default(),
            steering: Steering::new(SteerConfig { workers: 1, ..Default::default() }),
            engine: Engine::new(Config::default()),
            learned: Vec::with_capacity(64),
            kernel: Vec::with_capacity(64),
            sink,
            checksum: 0,
            routed: 0,
        })
    }

    /// Runs one frame through the stages.
    #[inline]
    pub fn frame(&mut self, ts: i64, frame: &[u8]) {
        if self.stage == Stage::Read {
            // What any reader pays: the bytes are read once.
            self.checksum = self.checksum.wrapping_add(frame.iter().fold(0u64, |a, &b| a.wrapping_add(b as u64)));
            return;
        }
        let Ok(Decoded::Packet(p)) = self.decoder.decode(ts, 1, frame) else { return };
        if self.stage == Stage::Decode {
            self.checksum = self.checksum.wrapping_add(p.payload.len() as u64);
            return;
        }
        self.learned.clear();
        self.kernel.clear();
        if self.steering.route(&p, ts, &mut self.learned, &mut self.kernel).is_some() {
            self.routed += 1;
        }
        match &mut self.sink {
            Either::Null(_) if self.stage == Stage::Dispatch => {}
            Either::Null(s) => self.engine.handle(&p, ts, s),
            Either::Store(s) => {
                self.engine.handle(&p, ts, s);
                s.tick(ts);
            }
        }
    }

    pub fn run(&mut self, frames: &Frames) {
        for (ts, f) in frames.iter() {
            self.frame(ts, f);
        }
    }

    /// Ends every call and commits the index.
    pub fn finish(&mut self) {
        match &mut self.sink {
            Either::Null(s) => self.engine.finish(s),
            Either::Store(s) => {
                self.engine.finish(s);
                s.flush();
            }
        }
    }

    /// Media packets the sink received and calls it completed.
    pub fn delivered(&self) -> (u64, u64) {
        match &self.sink {
            Either::Null(s) => (s.media, s.calls),
            Either::Store(s) => (self.engine.stats().rtp_packets, s.recorded),
        }
    }

    pub fn store_errors(&self) -> &[String] {
        match &self.sink {
            Either::Store(s) => &s.errors,
            Either::Null(_) => &[],
        }
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
