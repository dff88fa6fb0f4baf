//! A thread that performs a recorder's file writes, so that the thread recording calls never
//! waits in `write(2)`.
//!
//! Why: a buffered write copies the sealed chunk into the page cache, and on this project's VMs
//! that copy (page allocation, faults the host must serve) cost as much CPU as decoding,
//! assembling, encrypting and hashing the packets put together: importing 1,000 generated calls
//! with one worker took 1.8-2.0 s, and 1.1-1.3 s with the writes left out. Here the worker seals
//! and hashes a chunk, copies it into a pooled buffer (no allocation in steady state) and queues it;
//! this thread writes the queue in order. The buffers are a fixed pool, so a disk that falls
//! behind slows the worker down as a blocking write would, instead of growing memory.
//!
//! Durability is unchanged: a recording is called complete only after its last write has been
//! performed ([`Writeback::done`] has reached the sequence number [`Writeback::sent`] gave when it
//! finished) *and then* a filesystem sync has started and completed (see [`super::syncer`]).
//! A failed write is reported through [`Writeback::take_errors`] with the file's path; the file
//! then fails `verify`, as with a failed synchronous write. If the process dies, what is still
//! queued is lost with it, as unflushed chunk buffers always were: at most `BUFFERS` (256) chunks, and
//! while the thread keeps up (it has a core to itself for a copy) a few milliseconds of audio.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender, bounded};

/// Buffers per sink, allocated when the thread starts and recycled: at most this many writes
/// are queued or in progress, and the worker allocates nothing for writes afterwards. 256 of
/// 16 KiB (a chunk, with the tail held in front of it, is at most ~14.5 KiB): 4 MiB per sink,
/// about a second of one worker's output at 1,000 calls.
const BUFFERS: usize = 256;
const BUFFER_BYTES: usize = 16 * 1024;
/// Errors kept until the sink collects them.
const MAX_ERRORS: usize = 1000;

/// One queued write: the recording's file if it keeps it open (otherwise the thread opens `path`
/// for appending, writes and closes it: calls beyond the open-file budget), and the bytes.
struct Queued {
    file: Option<Arc<File>>,
    path: Arc<str>,
    buf: Vec<u8>,
}

enum Req {
    Write(Queued),
    Stop,
}

struct Shared {
    /// Requests performed (written, or failed and reported), in order.
    done: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// The sending side, one per sink; cheap handles ([`WriteQueue`]) go to each recording.
pub struct Writeback {
    queue: WriteQueue,
    thread: Option<JoinHandle<()>>,
}

/// What a recording needs to queue its writes: cloned into each [`super::file::RecordingWriter`].
#[derive(Clone)]
pub struct WriteQueue {
    tx: Sender<Req>,
    pool: Receiver<Vec<u8>>,
    /// Requests queued so far by every handle of this sink (all on one thread).
    sent: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Writeback {
    /// Starts the writing thread. Call it on the thread that will queue the writes.
    pub fn start() -> Result<Writeback, String> {
        let (tx, rx) = bounded::<Req>(BUFFERS + 1);
        // Buffers come back here once written.
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(BUFFERS);
        // crossbeam allocates the first time a thread blocks on a channel (the thread's wait
        // context, the channel's list of waiters), which here would be the first time every
        // buffer is in use, in the middle of recording (`benches/tests/zero_alloc.rs` failed
        // when that fell in its window). Wait on the empty pool once instead: a millisecond, when
        // the first recording opens.
        let _ = pool_rx.recv_timeout(std::time::Duration::from_millis(1));
        for _ in 0..BUFFERS {
            let _ = pool_tx.try_send(Vec::with_capacity(BUFFER_BYTES));
        }
        let shared = Arc::new(Shared { done: AtomicU64::new(0), errors: Mutex::new(Vec::new()) });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("callrec-write".into())
            .spawn(move || {
                // Below the workers it serves (see `crate::priority`); raising one's own nice
                // value cannot fail for lack of privilege, and nothing depends on it.
                let _ = crate::priority::adjust_thread_nice(crate::priority::WRITER_NICE);
                run(&rx, &pool_tx, &s)
            })
            .map_err(|e| format!("cannot start the file-writing thread: {e}"))?;
        Ok(Writeback {
            queue: WriteQueue { tx, pool: pool_rx, sent: Arc::new(AtomicU64::new(0)), shared },
            thread: Some(thread),
        })
    }

    pub fn queue(&self) -> WriteQueue {
        self.queue.clone()
    }

    /// Requests queued so far: every write queued before this call has a sequence number at or
    /// below it.
    pub fn sent(&self) -> u64 {
        self.queue.sent.load(Ordering::Relaxed)
    }

    /// Requests performed so far (in order, so every one up to this number).
    pub fn done(&self) -> u64 {
        self.queue.shared.done.load(Ordering::Acquire)
    }

    /// Blocks until every write queued so far has been performed.
    pub fn drain(&self) {
        let want = self.sent();
        while self.done() < want {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Write failures since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        self.queue.shared.errors.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default()
    }
}

impl Drop for Writeback {
    /// Performs every queued write, then stops the thread.
    fn drop(&mut self) {
        let _ = self.queue.tx.send(Req::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WriteQueue {
    /// Queues `data` for the recording at `path` (`file`: its open file, if it keeps one), copied
    /// into a pooled buffer. Blocks while every buffer is queued or being written. Returns false if
    /// the writing thread is gone (the caller then writes itself).
    pub(crate) fn write(&self, file: Option<&Arc<File>>, path: &Arc<str>, data: &[u8]) -> bool {
        let Ok(mut buf) = self.pool.recv() else { return false };
        buf.clear();
        buf.extend_from_slice(data);
        if self.tx.send(Req::Write(Queued { file: file.cloned(), path: path.clone(), buf })).is_err() {
            return false;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }
}

fn run(rx: &Receiver<Req>, pool: &Sender<Vec<u8>>, s: &Shared) {
    while let Ok(req) = rx.recv() {
        let Req::Write(w) = req else { break };
        let r = match &w.file {
            Some(f) => (&**f).write_all(&w.buf),
            None => {
                std::fs::OpenOptions::new().append(true).open(Path::new(&*w.path)).and_then(|mut f| f.write_all(&w.buf))
            }
        };
        if let Err(e) = r
            && let Ok(mut errs) = s.errors.lock()
            && errs.len() < MAX_ERRORS
        {
            errs.push(format!("I/O error on {}: {e}", w.path));
        }
        s.done.fetch_add(1, Ordering::Release);
        let _ = pool.try_send(w.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes land in order, in files kept open and files opened per write alike; `done` reaches
    /// `sent` once drained; a write that fails is reported with its file's path; more writes than
    /// the pool has buffers go through (buffers come back).
    #[test]
    fn writes_in_order_and_failures_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let open_path: Arc<str> = dir.path().join("open").display().to_string().into();
        let closed_path: Arc<str> = dir.path().join("closed").display().to_string().into();
        let missing: Arc<str> = dir.path().join("no-such-dir/x").display().to_string().into();
        std::fs::write(&*closed_path, b"").unwrap();
        let file = Arc::new(File::create(&*open_path).unwrap());
        let wb = Writeback::start().unwrap();
        let q = wb.queue();
        let n = BUFFERS * 3;
        for i in 0..n {
            let b = [(i % 251) as u8; 3];
            assert!(q.write(Some(&file), &open_path, &b));
            assert!(q.write(None, &closed_path, &b));
        }
        assert!(q.write(None, &missing, b"lost"));
        wb.drain();
        assert_eq!(wb.done(), wb.sent());
        assert_eq!(wb.sent(), 2 * n as u64 + 1);
        let want: Vec<u8> = (0..n).flat_map(|i| [(i % 251) as u8; 3]).collect();
        assert!(std::fs::read(&*open_path).unwrap() == want, "kept-open file");
        assert!(std::fs::read(&*closed_path).unwrap() == want, "reopened file");
        let errs = wb.take_errors();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains(&*missing), "{errs:?}");
        assert!(wb.take_errors().is_empty(), "reported once");
    }
}
