//! The recording store on disk: keys, encrypted recording files and the index, and the [`Sink`]
//! that writes calls into it.
//!
//! ```text
//! STORE/keys/current.pub            public key capture encrypts for
//! STORE/keys/<key-id>.sealed        private key, sealed under the passphrase
//! STORE/recordings/YYYY/MM/DD/<file-id>.crec
//! STORE/index.sqlite (+ -wal)       the index and the audit table
//! ```

pub mod file;
pub mod fscheck;
pub mod index;
mod indexer;
pub mod keys;
pub mod md5x;
pub mod query;
pub mod syncer;
pub mod writeback;

pub use writeback::WriteWaits;
use writeback::{WriteQueue, Writeback};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use thiserror::Error;

use crate::engine::{CallRef, Sink};
use crate::model::{CallSummary, Side};
use file::{FileError, RecordingWriter};
use index::{Index, IndexError};
use keys::{KeyError, KeyWrapper, PrivateStoreKey, PublicStoreKey, hex};
use syncer::Syncer;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "{path} is not a callrec store (no keys/current.pub); create it with `callrec --store {path} init --passphrase-file FILE`"
    )]
    NotAStore { path: String },
    #[error("{path} already holds a callrec store; refusing to overwrite its keys")]
    Exists { path: String },
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("no call with id {0} in the index")]
    NoSuchCall(i64),
    #[error("cannot remove {path}: {source}")]
    Remove { path: String, source: std::io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    File(#[from] FileError),
}

pub struct Store {
    root: PathBuf,
    pub index: Index,
}

/// The outcome of verifying one recording.
#[derive(Debug)]
pub enum Verdict {
    Ok {
        chunks: u64,
        authenticated: bool,
    },
    /// Still being recorded, or capture was interrupted before the call ended.
    Incomplete {
        why: String,
    },
    Damaged {
        why: String,
    },
}

impl Store {
    pub fn init(root: &Path, passphrase: &[u8]) -> Result<Store, StoreError> {
        let keys_dir = root.join("keys");
        if keys_dir.join("current.pub").exists() {
            return Err(StoreError::Exists { path: root.display().to_string() });
        }
        for d in [root.to_path_buf(), keys_dir.clone(), root.join("recordings")] {
            std::fs::create_dir_all(&d)
                .map_err(|source| StoreError::Create { path: d.display().to_string(), source })?;
        }
        let (public, sealed) = keys::generate(passphrase)?;
        keys::write_private(&keys_dir.join(format!("{}.sealed", keys::key_id_hex(&public.id))), &sealed)?;
        keys::write_private(&keys_dir.join("current.pub"), &public.to_bytes())?;
        let index = Index::open(&root.join("index.sqlite"))?;
        Ok(Store { root: root.to_path_buf(), index })
    }

    pub fn open(root: &Path) -> Result<Store, StoreError> {
        if !root.join("keys").join("current.pub").exists() {
            return Err(StoreError::NotAStore { path: root.display().to_string() });
        }
        let index = Index::open(&root.join("index.sqlite"))?;
        Ok(Store { root: root.to_path_buf(), index })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn public_key(&self) -> Result<PublicStoreKey, StoreError> {
        Ok(PublicStoreKey::load(&self.root.join("keys").join("current.pub"))?)
    }

    /// Unseals the current private key.
    pub fn private_key(&self, passphrase: &[u8]) -> Result<PrivateStoreKey, StoreError> {
        let id = self.public_key()?.id;
        let path = self.root.join("keys").join(format!("{}.sealed", keys::key_id_hex(&id)));
        Ok(PrivateStoreKey::unseal(&path, passphrase)?)
    }

    pub fn abs(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Key rotation: a new key pair sealed under `new_passphrase`; every recording's data key is
    /// unwrapped with the old private key and wrapped for the new public key by rewriting its
    /// 256-byte header (audio is not touched), its MD5 watermark is updated in the index; then the
    /// new key becomes current and the old sealed key is erased.
    ///
    /// Crash-safe by resumption: the new public key waits in `keys/next.pub` until every header is
    /// rewritten, so running rotation again (with the old passphrase) finishes the job; headers
    /// already wrapped for the new key are skipped.
    pub fn rotate_key(&mut self, old: &PrivateStoreKey, new_passphrase: &[u8]) -> Result<Rotation, StoreError> {
        let keys_dir = self.root.join("keys");
        let next_path = keys_dir.join("next.pub");
        let next = if next_path.exists() {
            PublicStoreKey::load(&next_path)?
        } else {
            let (public, sealed) = keys::generate(new_passphrase)?;
            keys::write_private(&keys_dir.join(format!("{}.sealed", keys::key_id_hex(&public.id))), &sealed)?;
            keys::write_private(&next_path, &public.to_bytes())?;
            public
        };
        let mut report =
            Rotation { old_key: keys::key_id_hex(&old.id), new_key: keys::key_id_hex(&next.id), ..Default::default() };
        for id in self.index.all_ids()? {
            let Some((rel, _, status)) = self.index.file_of(id)? else { continue };
            let path = self.abs(&rel);
            if status != "complete" || !path.exists() {
                report.skipped.push(id);
                continue;
            }
            let mut header = file::read_header(&path)?;
            if header.key_id == next.id {
                report.already += 1;
                continue;
            }
            let dk = old
                .unwrap_key(&header.key_id, &header.eph_pub, &header.wrapped, &header.file_id)
                .map_err(|source| FileError::Key { path: path.display().to_string(), source })?;
            let (eph_pub, wrapped) = next.wrap(&dk, &header.file_id);
            header.key_id = next.id;
            header.eph_pub = eph_pub;
            header.wrapped = wrapped;
            file::rewrite_header(&path, &header)?;
            let md5 = file::md5_file(&path)?;
            self.index.set_md5(id, &md5)?;
            report.rewrapped += 1;
        }
        std::fs::rename(&next_path, keys_dir.join("current.pub"))
            .map_err(|source| StoreError::Create { path: keys_dir.display().to_string(), source })?;
        let old_sealed = keys_dir.join(format!("{}.sealed", keys::key_id_hex(&old.id)));
        if old.id != next.id {
            std::fs::remove_file(&old_sealed)
                .map_err(|source| StoreError::Remove { path: old_sealed.display().to_string(), source })?;
        }
        Ok(report)
    }

    /// A sink that records into this store.
    pub fn recorder(&mut self) -> Result<StoreSink<'_>, StoreError> {
        let key = self.public_key()?;
        Ok(StoreSink {
            store: self,
            key: KeyWrapper::new(key),
            open: Vec::new(),
            errors: Vec::new(),
            recorded: 0,
            batched_chunks: 0,
            max_create_ns: 0,
            max_index_ns: 0,
            last_tick: i64::MIN,
            scan_at: 0,
            scan_left: 0,
            ops: Vec::new(),
            rows: Default::default(),
            open_file_budget: default_open_file_budget(),
            open_files: 0,
            ready: Vec::with_capacity(md5x::MAX_JOBS),
            ready_since: 0,
            clock: i64::MIN,
            batch: Vec::with_capacity(md5x::MAX_JOBS),
            batch_width: md5x::lanes().width(),
            syncer: None,
            syncer_failed: false,
            writeback: None,
            writeback_failed: false,
            indexer: None,
            indexer_failed: false,
            forget_finished: false,
        })
    }

    /// Removes a recording and every index row about it.
    pub fn delete(&mut self, id: i64) -> Result<String, StoreError> {
        let Some((rel, md5, _)) = self.index.file_of(id)? else { return Err(StoreError::NoSuchCall(id)) };
        let path = self.abs(&rel);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Remove { path: path.display().to_string(), source }),
        }
        self.index.delete_call(id)?;
        Ok(md5.unwrap_or_default())
    }

    /// Checks a recording: MD5 watermark against the index and chunk framing always; with the
    /// private key also every chunk's authentication tag and the final-chunk marker.
    pub fn verify(&self, id: i64, key: Option<&PrivateStoreKey>) -> Result<Verdict, StoreError> {
        let Some((rel, md5, status)) = self.index.file_of(id)? else { return Err(StoreError::NoSuchCall(id)) };
        let path = self.abs(&rel);
        if !path.exists() {
            return Ok(Verdict::Damaged { why: format!("{} is missing", path.display()) });
        }
        if status != "complete" {
            return Ok(Verdict::Incomplete { why: format!("status {status}: recording was not finished") });
        }
        let actual = file::md5_file(&path)?;
        if md5.as_deref() != Some(actual.as_str()) {
            return Ok(Verdict::Damaged {
                why: format!("MD5 watermark mismatch: index {} file {actual}", md5.unwrap_or_else(|| "none".into())),
            });
        }
        let chunks = match file::check_structure(&path) {
            Ok(n) => n,
            Err(e) => return Ok(Verdict::Damaged { why: e.to_string() }),
        };
        if let Some(k) = key {
            match file::read_recording(&path, k) {
                Ok(c) if c.complete => {}
                Ok(_) => return Ok(Verdict::Damaged { why: "final chunk missing (file truncated)".into() }),
                Err(e) => return Ok(Verdict::Damaged { why: e.to_string() }),
            }
        }
        Ok(Verdict::Ok { chunks, authenticated: key.is_some() })
    }
}

/// What a key rotation did.
#[derive(Debug, Default)]
pub struct Rotation {
    pub old_key: String,
    pub new_key: String,
    pub rewrapped: u64,
    /// Headers already wrapped for the new key (a resumed rotation).
    pub already: u64,
    /// Calls not rotated: still recording, or their file is missing (see `verify`).
    pub skipped: Vec<i64>,
}

/// `repr(C)`: what [`Sink::media`] reads first (`uid`, `queued`, then the writer's buffer, see
/// [`RecordingWriter`]) lies in the first lines, the ones [`Sink::prefetch_call`] loads.
#[repr(C)]
struct OpenRecording {
    uid: u64,
    /// Its ready chunk waits in [`StoreSink::ready`].
    queued: bool,
    slot: u32,
    writer: RecordingWriter,
    rel: String,
    keep_open: bool,
}

impl AsMut<RecordingWriter> for OpenRecording {
    fn as_mut(&mut self) -> &mut RecordingWriter {
        &mut self.writer
    }
}

/// The longest, in capture time, a ready chunk waits in [`StoreSink::ready`] for others to fill
/// a batch before [`StoreSink::tick`] flushes what is there: a fifth of
/// [`file::BATCH_GRACE_NS`], so a chunk queued because its flush interval is over goes out with
/// a batch, not alone. With thousands of calls a batch fills within milliseconds.
pub const READY_WAIT_NS: i64 = 20_000_000;

/// Recordings whose chunk or tail one [`StoreSink::tick`] writes at most (~3 ms of sealing,
/// hashing and queueing at 12 µs each); the scan goes on at the next tick.
pub const TICK_WRITES: usize = 256;

/// Index writes a sink queues before it commits them, whatever the capture time. Live capture
/// commits every second long before this; it bounds a dense import's transactions. 20,000 writes
/// (10,000 calls) per transaction index 57,000-58,000 calls/s into a 1 M-call index where 2,000
/// gave 43,000-46,000 (`callrec-bench index --batch`, two runs each): random keys (Call-ID,
/// numbers) dirty about one index page each per transaction, so fewer, larger transactions write
/// each hot page less often. A commit of 20,000 writes holds the index's write lock ~0.35 s.
pub const INDEX_BATCH: usize = 20_000;

/// An index write waiting for the next commit.
enum IndexOp {
    Started {
        uid: u64,
        file_id: String,
        call_id: String,
        start_ns: i64,
        rel: String,
    },
    /// `written`: the writing thread's sequence number of the recording's last write
    /// ([`Writeback::sent`] when it finished); `epoch`: the [`Syncer`] epoch after which the
    /// recording is on disk, known once the thread has performed that write.
    Completed {
        uid: u64,
        /// The recording's file, dropped from the page cache once it is durable.
        path: Arc<str>,
        summary: Box<CallSummary>,
        md5: String,
        bytes: u64,
        written: u64,
        epoch: Option<u64>,
    },
}

/// Writes calls from the engine into the store. Errors (disk full, …) are collected, never panics.
///
/// Index writes are queued and applied in one short transaction per commit (every second of
/// capture time, or every [`INDEX_BATCH`] writes), so several sinks sharing one index (capture workers) hold
/// SQLite's write lock only for the statements themselves.
///
/// Durability: a [`Syncer`] thread syncs the store's filesystem every [`syncer::PERIOD`] (two
/// seconds), and a finished recording is marked complete only by a commit after a sync that
/// started after its last write, so the index never says "complete" about a file that a power cut
/// could still lose, and the recording thread never waits for the disk (except at the end of
/// input, [`StoreSink::flush`]).
pub struct StoreSink<'a> {
    store: &'a mut Store,
    /// Wraps each recording's data key for the store key (an ephemeral exchange per second).
    key: KeyWrapper,
    open: Vec<Option<OpenRecording>>,
    pub errors: Vec<String>,
    pub recorded: u64,
    /// Chunks flushed in batches (their MD5 advanced in SIMD lanes); the others flushed alone.
    pub batched_chunks: u64,
    /// The longest this thread took to create one recording (directory, file, header) and to
    /// commit one batch of index rows while recording (hand it to the index-writing thread, or
    /// write it where that thread is not running; not the end of input's commit, which waits for
    /// everything), in ns: time a live worker spends away from its packets.
    pub max_create_ns: u64,
    pub max_index_ns: u64,
    last_tick: i64,
    /// The scan of the recordings' flush timers (see [`StoreSink::scan`]): the next slot, and
    /// how many slots are left to look at.
    scan_at: usize,
    scan_left: usize,
    ops: Vec<IndexOp>,
    /// Index rows of calls whose start is committed, by call uid.
    rows: rustc_hash::FxHashMap<u64, i64>,
    /// Files kept open between chunks; calls beyond it reopen their file for each chunk.
    open_file_budget: usize,
    open_files: usize,
    /// Calls (slot, uid) whose chunk is ready (full, or its flush interval over), waiting
    /// to be flushed together (see [`file::flush_batch`]): as many as the CPU hashes side by side,
    /// or for at most [`READY_WAIT_NS`].
    ready: Vec<(u32, u64)>,
    /// Capture time at which the first of `ready` was queued.
    ready_since: i64,
    /// The newest capture time this sink has seen (packets and ticks).
    clock: i64,
    /// Where a batch's recordings are held while it flushes (kept to reuse its allocation).
    batch: Vec<OpenRecording>,
    batch_width: usize,
    /// Started when the first recording finishes; `None` before, or if it could not start (then
    /// each commit syncs in this thread, as a fallback).
    syncer: Option<Syncer>,
    /// The sync thread could not be started (reported once); commits then sync in this thread.
    syncer_failed: bool,
    /// The thread that performs the recordings' writes (started with the first recording); `None`
    /// before, or if it could not start (then this thread writes).
    writeback: Option<Writeback>,
    writeback_failed: bool,
    /// The thread that writes the index rows (started with the first commit); `None` before, or
    /// if it could not start (then this thread writes them).
    indexer: Option<indexer::Indexer>,
    indexer_failed: bool,
    /// See [`StoreSink::set_forget_finished`].
    forget_finished: bool,
}

impl StoreSink<'_> {
    fn slot(&mut self, call: CallRef) -> Option<&mut OpenRecording> {
        self.open.get_mut(call.slot as usize)?.as_mut().filter(|r| r.uid == call.uid)
    }

    fn note_err(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < 1000 {
            self.errors.push(e.to_string());
        }
    }

    /// Whether a finished recording's pages are dropped from the page cache once it is durable
    /// (off by default). Live capture turns it on: calls end all the time there, and the writes
    /// of the calls still going on reuse the freed pages; in live runs with 6,000 calls going on
    /// and 300 ending a second the writing threads used 7.0-8.3 s of CPU against 9.0-13.5 s
    /// without, and the whole recorder less in 9 of 9 pairs (docs/BENCHMARKS.md). An import
    /// finishes most of its recordings at the end of its input, where dropping them would only
    /// add time (3-8 % here) that the kernel's own eviction spends later. A long call's pages go
    /// while it lasts either way ([`writeback`]).
    pub fn set_forget_finished(&mut self, on: bool) {
        self.forget_finished = on;
    }

    /// How many recording files this sink may keep open at once (the rest are reopened per chunk).
    /// Several sinks in one process (capture workers) share the process limit.
    pub fn set_open_file_budget(&mut self, n: usize) {
        self.open_file_budget = n;
    }

    /// Queues a recording's ready chunk for the next batch, and flushes the batch once it is as
    /// wide as the CPU hashes.
    fn queue_ready(&mut self, slot: u32, uid: u64) {
        if self.ready.is_empty() {
            self.ready_since = self.clock;
        }
        self.ready.push((slot, uid));
        if self.ready.len() >= self.batch_width {
            self.flush_ready();
        }
    }

    /// Flushes the ready chunks waiting in `ready` as one batch.
    fn flush_ready(&mut self) {
        let now = self.clock;
        let mut batch = std::mem::take(&mut self.batch);
        for (slot, uid) in self.ready.drain(..) {
            let Some(cell) = self.open.get_mut(slot as usize) else { continue };
            match cell {
                Some(r) if r.uid == uid && r.queued => {
                    r.queued = false;
                    // A chunk that flushed alone meanwhile (it outgrew its slack) is not sent early.
                    if r.writer.batch_ready(now) {
                        batch.extend(cell.take());
                    }
                }
                _ => {}
            }
        }
        self.batched_chunks += batch.len() as u64;
        let errors = &mut self.errors;
        file::flush_batch(&mut batch, now, |e| {
            if errors.len() < 1000 {
                errors.push(e.to_string());
            }
        });
        for r in batch.drain(..) {
            let slot = r.slot as usize;
            self.open[slot] = Some(r);
        }
        self.batch = batch;
    }

    /// Applies the queued index writes whose recordings are durable, in order, in one transaction;
    /// the rest wait for a later commit. With `wait`, first waits until all of them are durable.
    fn commit_durable(&mut self, wait: bool) {
        if self.ops.is_empty() {
            // What was handed to the index thread before is committed by now, if asked.
            if wait && let Some(ix) = &self.indexer {
                ix.wait();
                for e in ix.take_errors() {
                    self.note_err(e);
                }
            }
            return;
        }
        if wait && let Some(wb) = &self.writeback {
            wb.drain();
        }
        self.take_write_errors();
        // A finished recording gets its sync epoch once its last write has been performed: a sync
        // that starts after that makes it durable.
        let done = self.writeback.as_ref().map(Writeback::done);
        let mut need = None;
        for op in &mut self.ops {
            if let IndexOp::Completed { epoch: e @ None, written, .. } = op
                && done.is_none_or(|d| d >= *written)
            {
                *e = Some(*need.get_or_insert_with(|| self.syncer.as_ref().map_or(0, Syncer::need)));
            }
        }
        let unwritten = |op: &IndexOp| matches!(op, IndexOp::Completed { epoch: None, .. });
        let last_epoch = self.ops.iter().rev().find_map(|op| match op {
            IndexOp::Completed { epoch: Some(e), .. } => Some(*e),
            _ => None,
        });
        let mut errs = Vec::new();
        let ready = match (&self.syncer, last_epoch) {
            (_, None) => self.ops.iter().position(unwritten).unwrap_or(self.ops.len()),
            (Some(s), Some(last)) => {
                if wait && let Err(e) = s.wait(last) {
                    // Nothing is marked complete that is not on disk: the writes stay queued.
                    errs.push(e);
                }
                errs.extend(s.take_error());
                self.ops
                    .iter()
                    .position(|op| match op {
                        IndexOp::Completed { epoch, .. } => !epoch.is_some_and(|e| s.durable(e)),
                        IndexOp::Started { .. } => false,
                    })
                    .unwrap_or(self.ops.len())
            }
            (None, Some(_)) => match syncer::sync_filesystem(self.store.root()) {
                Ok(()) => self.ops.iter().position(unwritten).unwrap_or(self.ops.len()),
                Err(e) => {
                    errs.push(e);
                    0
                }
            },
        };
        for e in errs {
            self.note_err(e);
        }
        if ready == 0 {
            return;
        }
        let t = Instant::now();
        // On disk: the finished recordings' pages are clean and of no further use in the cache.
        if self.forget_finished
            && let Some(wb) = &self.writeback
        {
            for op in &self.ops[..ready] {
                if let IndexOp::Completed { path, .. } = op {
                    wb.forget(path);
                }
            }
        }
        // The index thread applies the batch, in order after those before it; if it cannot
        // start (or has stopped), this thread does.
        self.start_indexer();
        let batch: Vec<IndexOp> = self.ops.drain(..ready).collect();
        let unsent = match &mut self.indexer {
            Some(ix) => ix.send(batch).err(),
            None => Some(batch),
        };
        let mut errs = Vec::new();
        if let Some(batch) = unsent {
            if self.indexer.take().is_some() {
                self.indexer_failed = true;
                errs.push(
                    "the index-writing thread stopped: this thread writes the index from now on (calls it had \
                     started may stay marked as recording)"
                        .to_string(),
                );
            }
            indexer::apply(&mut self.store.index, &mut self.rows, batch, &mut errs);
        }
        // Not the end of input's commit, which waits for everything anyway.
        if !wait {
            self.max_index_ns = self.max_index_ns.max(t.elapsed().as_nanos() as u64);
        }
        if let Some(ix) = &self.indexer {
            if wait {
                ix.wait();
            }
            errs.extend(ix.take_errors());
        }
        for e in errs {
            self.note_err(e);
        }
    }

    /// Starts the index-writing thread, if not running (or failed to start). Its connection
    /// leaves checkpoints to the sync thread where that runs (see [`StoreSink::start_syncer`]).
    fn start_indexer(&mut self) {
        if self.indexer.is_none() && !self.indexer_failed {
            let path = PathBuf::from(self.store.index.path());
            match indexer::Indexer::start(&path, self.syncer.is_none()) {
                Ok(ix) => self.indexer = Some(ix),
                Err(e) => {
                    self.indexer_failed = true;
                    self.note_err(e);
                }
            }
        }
    }

    fn commit(&mut self) {
        self.commit_durable(false)
    }

    /// The sync epoch a recording finished now needs.
    fn durable_epoch(&mut self) -> u64 {
        self.start_syncer();
        self.syncer.as_ref().map_or(0, Syncer::need)
    }

    /// A handle on the writing thread, started on first use; `None` if it cannot start (reported
    /// once; this thread then writes).
    fn write_queue(&mut self) -> Option<WriteQueue> {
        if self.writeback.is_none() && !self.writeback_failed {
            match Writeback::start() {
                Ok(w) => self.writeback = Some(w),
                Err(e) => {
                    self.writeback_failed = true;
                    self.note_err(e);
                }
            }
        }
        self.writeback.as_ref().map(Writeback::queue)
    }

    /// Reports the writing thread's failures (with the file's path) as this sink's errors.
    fn take_write_errors(&mut self) {
        let errs = self.writeback.as_ref().map(Writeback::take_errors).unwrap_or_default();
        for e in errs {
            self.note_err(e);
        }
    }

    /// Starts the sync thread, if not running (or failed to start).
    ///
    /// It starts with the first recording, not when the first one finishes: from then on dirty
    /// recordings go to disk continuously, a few seconds behind, instead of all at once when the
    /// first call ends (import of 1,000 generated 30-second calls: the first sync came at the end
    /// of the file and took 0.41 s of its 1.75 s).
    fn start_syncer(&mut self) {
        if self.syncer.is_none() && !self.syncer_failed {
            let index = std::path::PathBuf::from(self.store.index.path());
            match Syncer::start_with_index(self.store.root(), &index) {
                Ok(s) => {
                    // The sync thread checkpoints the WAL from now on; this connection's commits
                    // stay short (see `syncer`).
                    if let Err(e) = self.store.index.set_autocheckpoint(0) {
                        self.note_err(e);
                    }
                    self.syncer = Some(s);
                }
                Err(e) => {
                    // Not retried for every call: without the thread, each commit syncs first.
                    self.syncer_failed = true;
                    self.note_err(e);
                }
            }
        }
    }

    /// Periodic work in capture time: flushes the ready chunks that have waited
    /// [`READY_WAIT_NS`] for a full batch; once a second, commits the index batch and starts a
    /// scan that queues the chunks whose flush interval is over for a batch and writes the held
    /// tails whose interval is over, at most [`TICK_WRITES`] recordings' worth per call (the
    /// rest on the next calls).
    pub fn tick(&mut self, now_ns: i64) {
        self.clock = self.clock.max(now_ns);
        if !self.ready.is_empty() && self.clock.saturating_sub(self.ready_since) >= READY_WAIT_NS {
            self.flush_ready();
        }
        if now_ns.saturating_sub(self.last_tick) >= 1_000_000_000 {
            self.last_tick = now_ns;
            self.flush_ready();
            self.commit();
            // A scan still under way from the last second goes on from where it is.
            if self.scan_left == 0 {
                self.scan_left = self.open.len();
            }
        }
        if self.scan_left > 0 {
            self.scan(now_ns);
        }
    }

    /// Goes on with the scan of the recordings' flush timers: up to [`TICK_WRITES`] of them
    /// written, or every one left to look at.
    ///
    /// Why a budget: the timers fall due together when the capture clock jumps (the store
    /// ticks in the wall clock once the worker's queue runs dry, see the capture's
    /// `store_clock`) or when calls' packets come slower than a chunk fills (calls slowed by a
    /// generator at its ceiling, low-rate codecs). In the live bench at 12,000 calls going on, one
    /// scan wrote 3,000-5,600 chunks and tails (12 µs each) and took 50-93 ms every few seconds:
    /// on the inline worker that is time its AF_XDP socket goes unread.
    fn scan(&mut self, now_ns: i64) {
        let len = self.open.len();
        let mut written = 0;
        while self.scan_left > 0 && written < TICK_WRITES {
            self.scan_left -= 1;
            if self.scan_at >= len {
                self.scan_at = 0;
            }
            let at = self.scan_at;
            self.scan_at += 1;
            let Some(r) = self.open.get_mut(at).and_then(Option::as_mut) else { continue };
            // A chunk whose flush interval is over goes out with a batch (its tail with it), not
            // alone here.
            if r.writer.batch_due(now_ns) {
                if !r.queued {
                    r.queued = true;
                    let (slot, uid) = (r.slot, r.uid);
                    written += 1;
                    self.queue_ready(slot, uid);
                }
                continue;
            }
            match r.writer.tick(now_ns) {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    written += 1;
                    self.note_err(e.to_string());
                }
            }
        }
        // The round is over: what it queued goes out now, not after the ready wait.
        if self.scan_left == 0 && !self.ready.is_empty() {
            self.flush_ready();
        }
    }

    /// How this sink's recording thread has waited for its writing thread's buffers (none while
    /// it writes without one).
    pub fn write_waits(&self) -> WriteWaits {
        self.writeback.as_ref().map(Writeback::waits).unwrap_or_default()
    }

    /// Where this sink's writing thread runs (real-time or a nice value); `None` before it has
    /// started or while this sink writes without one.
    pub fn writer_place(&self) -> Option<crate::priority::WriterPlace> {
        self.writeback.as_ref().and_then(Writeback::place)
    }

    /// Blocks until the writing thread has performed every write handed to it so far, so the
    /// files hold everything this sink has written out (tests read recordings in progress).
    pub fn wait_writes(&self) {
        if let Some(wb) = &self.writeback {
            wb.drain();
        }
    }

    /// Writes waiting chunks, waits until every finished recording is on disk and commits the
    /// index. Call when the input ends.
    pub fn flush(&mut self) {
        self.flush_ready();
        self.commit_durable(true);
    }
}

impl Sink for StoreSink<'_> {
    fn call_started(&mut self, call: CallRef, call_id: &str, start_ns: i64) {
        let t = Instant::now();
        let day = crate::timefmt::rfc3339_ms(start_ns);
        let (y, m, d) = (&day[..4], &day[5..7], &day[8..10]);
        let dir_rel = format!("recordings/{y}/{m}/{d}");
        let dir = self.store.abs(&dir_rel);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return self.note_err(format!("cannot create {}: {e}", dir.display()));
        }
        // File names are random and independent of anything about the call (no number leaks).
        let mut tmp_id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut tmp_id);
        let rel = format!("{dir_rel}/{}.crec", hex(&tmp_id));
        let keep_open = self.open_files < self.open_file_budget;
        let mut writer =
            match RecordingWriter::create_wrapped(&self.store.abs(&rel), &mut self.key, start_ns, keep_open) {
                Ok(w) => w,
                Err(e) => return self.note_err(e),
            };
        self.max_create_ns = self.max_create_ns.max(t.elapsed().as_nanos() as u64);
        if keep_open {
            self.open_files += 1;
        }
        if let Err(e) = writer.start(start_ns, call_id) {
            self.note_err(e);
        }
        self.ops.push(IndexOp::Started {
            uid: call.uid,
            file_id: hex(&writer.file_id()),
            call_id: call_id.to_string(),
            start_ns,
            rel: rel.clone(),
        });
        let slot = call.slot as usize;
        if self.open.len() <= slot {
            self.open.resize_with(slot + 1, || None);
        }
        if let Some(q) = self.write_queue() {
            writer.set_write_queue(q);
        }
        self.open[slot] = Some(OpenRecording { uid: call.uid, slot: call.slot, writer, rel, keep_open, queued: false });
        self.start_syncer();
        if self.ops.len() >= INDEX_BATCH {
            self.commit();
        }
    }

    fn payload_types(&mut self, call: CallRef, side: Side, map: &[(u8, &str, u32)]) {
        if let Some(r) = self.slot(call)
            && let Err(e) = r.writer.payload_types(side, map)
        {
            self.note_err(e);
        }
    }

    fn media(&mut self, call: CallRef, stream: u8, side: Side, ts_ns: i64, rtp: &[u8]) {
        self.clock = self.clock.max(ts_ns);
        let Some(r) = self.slot(call) else { return };
        match r.writer.rtp(stream, side, ts_ns, rtp) {
            Ok(true) if !r.queued => {
                r.queued = true;
                self.queue_ready(call.slot, call.uid);
            }
            Ok(_) => {}
            Err(e) => self.note_err(e),
        }
    }

    fn prefetch_call(&self, call: CallRef) {
        if let Some(r) = self.open.get(call.slot as usize) {
            let at = r as *const Option<OpenRecording> as *const u8;
            crate::prefetch::prefetch(at);
            crate::prefetch::prefetch(at.wrapping_add(64));
        }
    }

    fn prefetch_media(&self, call: CallRef) {
        if let Some(Some(r)) = self.open.get(call.slot as usize) {
            r.writer.prefetch_append();
        }
    }

    fn call_ended(&mut self, call: CallRef, summary: CallSummary) {
        let Some(r) = self.open.get_mut(call.slot as usize).and_then(Option::take) else { return };
        if r.uid != call.uid {
            return;
        }
        if r.keep_open {
            self.open_files -= 1;
        }
        let path = r.writer.path().clone();
        match r.writer.finish(&summary) {
            Ok(done) => {
                // Written already (or by this thread): its sync epoch is known now; otherwise
                // once the writing thread has performed its last write (see `commit_durable`).
                let written = self.writeback.as_ref().map_or(0, Writeback::sent);
                let epoch = self.writeback.as_ref().is_none_or(|w| w.done() >= written).then(|| self.durable_epoch());
                self.ops.push(IndexOp::Completed {
                    uid: r.uid,
                    path,
                    summary: Box::new(summary),
                    md5: done.md5,
                    bytes: done.bytes,
                    written,
                    epoch,
                });
                self.recorded += 1;
            }
            Err(e) => self.note_err(format!("{}: {e}", r.rel)),
        }
        if self.ops.len() >= INDEX_BATCH {
            self.commit();
        }
    }
}

impl Drop for StoreSink<'_> {
    fn drop(&mut self) {
        self.commit_durable(true);
    }
}

/// Recording files one sink keeps open by default: the open-file limit less a reserve for the
/// index, sockets, rings and the files export and verify open.
pub fn default_open_file_budget() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 512;
    }
    (lim.rlim_cur as usize).saturating_sub(256)
}

/// Open files a recorder asks for when it may raise its hard limit: 262,144, above the most calls
/// a worker's engine tracks by default (`engine::Config::max_calls`, 200,000), so that each call's
/// file can stay open. The kernel's `fs.nr_open` (1,048,576 by default) caps it.
pub const WANT_OPEN_FILES: u64 = 1 << 18;

/// Raises this process's open-file limit and returns the new soft limit. A recorder keeps one file
/// open per call in progress, so the default soft limit (1024 on most systems) would refuse the
/// 1021st concurrent call, and a call beyond the limit less a reserve is reopened for each chunk
/// (see [`default_open_file_budget`]). With `CAP_SYS_RESOURCE` (root) both limits go up to
/// [`WANT_OPEN_FILES`] where the hard limit is lower (it was 20,000 on the bench's VM: past
/// 19,744 calls going on, every further call cost an open and a close per chunk); otherwise the
/// soft limit goes up to the hard one. Call once at startup.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = WANT_OPEN_FILES.min(nr_open()) as libc::rlim_t;
        if lim.rlim_max < want {
            let more = libc::rlimit { rlim_cur: want, rlim_max: want };
            // Refused without CAP_SYS_RESOURCE: then the hard limit stays as it is.
            if libc::setrlimit(libc::RLIMIT_NOFILE, &more) == 0 {
                return want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The kernel's ceiling on a process's open-file limit (`fs.nr_open`); its default where unreadable.
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}
