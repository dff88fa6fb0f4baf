//! A thread that writes a recorder's index rows, so that the thread recording calls never waits
//! for SQLite.
//!
//! Why: a sink commits its queued index writes once a second (calls started, calls finished and
//! durable), and the commit ran on the recording thread, which in live capture with one worker is
//! the reader: while it wrote rows nobody read the capture socket, and a commit waits for SQLite's
//! write lock, which another recorder, a `callrec delete` or an operator's `sqlite3` may hold (up
//! to the index's 10-s busy timeout; then the batch failed). In the live bench at 14,000 calls
//! going on (2 cores) the longest index write on that thread was 68 ms (`max_index_ms`, then
//! counting the end of input's commit; docs/BENCHMARKS.md, "The writing thread's priority").
//! Here the sink hands each commit's ready writes over as one batch and goes on; this thread,
//! on its own connection to the same index, applies them in one transaction. What the index says
//! is unchanged: a call is marked complete only in a batch the sink sent after its recording was
//! durable, and batches are applied in order. [`Indexer::wait`] (end of input) blocks until every
//! batch sent is committed, so the index is whole when a sink is flushed or dropped.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel::{Sender, bounded};

use super::IndexOp;
use super::index::Index;

/// Errors kept until the sink collects them.
const MAX_ERRORS: usize = 1000;
/// Batches that may wait for the thread (a sink sends one a second): while the index stays
/// locked by someone else (each statement waits up to the index's 10-s busy timeout, then fails
/// and is reported) up to a minute of them queue, and only then does the sink wait, so memory
/// stays bounded.
const QUEUED_BATCHES: usize = 64;

struct Shared {
    /// Batches committed (or failed and reported), in order.
    done: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub(super) struct Indexer {
    tx: Option<Sender<Vec<IndexOp>>>,
    sent: u64,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    /// Opens a second connection to the index at `path` and starts the thread. `checkpoint`: let
    /// commits checkpoint the WAL (SQLite's default), for when no sync thread does it.
    pub(super) fn start(path: &Path, checkpoint: bool) -> Result<Indexer, String> {
        let mut index = Index::open(path).map_err(|e| format!("cannot open the index for its writing thread: {e}"))?;
        if !checkpoint && let Err(e) = index.set_autocheckpoint(0) {
            return Err(e.to_string());
        }
        let shared = Arc::new(Shared { done: AtomicU64::new(0), errors: Mutex::new(Vec::new()) });
        let s = shared.clone();
        let (tx, rx) = bounded::<Vec<IndexOp>>(QUEUED_BATCHES);
        let thread = std::thread::Builder::new()
            .name("callrec-index".into())
            .spawn(move || {
                let mut rows = rustc_hash::FxHashMap::default();
                let mut errs = Vec::new();
                while let Ok(batch) = rx.recv() {
                    apply(&mut index, &mut rows, batch, &mut errs);
                    if !errs.is_empty()
                        && let Ok(mut e) = s.errors.lock()
                    {
                        let room = MAX_ERRORS.saturating_sub(e.len());
                        e.extend(errs.drain(..).take(room));
                    }
                    errs.clear();
                    s.done.fetch_add(1, Ordering::Release);
                }
            })
            .map_err(|e| format!("cannot start the index-writing thread: {e}"))?;
        Ok(Indexer { tx: Some(tx), sent: 0, shared, thread: Some(thread) })
    }

    /// Hands a batch over (waiting only if [`QUEUED_BATCHES`] are queued); it comes back if the
    /// thread is gone (the caller applies it itself).
    pub(super) fn send(&mut self, batch: Vec<IndexOp>) -> Result<(), Vec<IndexOp>> {
        match &self.tx {
            Some(tx) => tx.send(batch).map(|()| self.sent += 1).map_err(|e| e.0),
            None => Err(batch),
        }
    }

    /// Blocks until every batch sent so far is committed (or the thread is gone).
    pub(super) fn wait(&self) {
        while self.shared.done.load(Ordering::Acquire) < self.sent
            && self.thread.as_ref().is_some_and(|t| !t.is_finished())
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Failures since the last call.
    pub(super) fn take_errors(&self) -> Vec<String> {
        self.shared.errors.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}

impl Drop for Indexer {
    /// Commits every batch sent, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Applies `batch` to `index` in one transaction: rows for calls started (their ids kept in
/// `rows`, by call uid), completion for calls finished. Failures go to `errs`.
pub(super) fn apply(
    index: &mut Index,
    rows: &mut rustc_hash::FxHashMap<u64, i64>,
    batch: impl IntoIterator<Item = IndexOp>,
    errs: &mut Vec<String>,
) {
    for op in batch {
        let r = match op {
            IndexOp::Started { uid, file_id, call_id, start_ns, rel } => {
                index.insert_started(&file_id, &call_id, start_ns, &rel).map(|row| {
                    rows.insert(uid, row);
                })
            }
            IndexOp::Completed { uid, summary, md5, bytes, .. } => match rows.remove(&uid) {
                Some(row) => index.complete(row, &summary, &md5, bytes),
                None => Ok(()), // its start failed to index, and was reported then
            },
        };
        if let Err(e) = r {
            errs.push(e.to_string());
        }
    }
    if let Err(e) = index.commit() {
        errs.push(e.to_string());
    }
}
