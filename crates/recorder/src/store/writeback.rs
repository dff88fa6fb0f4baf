//! A thread that performs a recorder's file writes, so that the thread recording calls never
//! waits in `write(2)`.
//!
//! Why: a buffered write copies the sealed chunk into the page cache, and on this project's VMs
//! that copy (page allocation, faults the host must serve) cost as much CPU as decoding,
//! assembling, encrypting and hashing the packets put together: importing 1,000 generated calls
//! with one worker took 1.8-2.0 s, and 1.1-1.3 s with the writes left out. Here the worker seals
//! and hashes a chunk, copies it into a pooled buffer (no allocation in steady state) and queues it;
//! this thread writes the queue in order. The pool is bounded ([`MAX_BUFFERS`], 64 MiB), so a disk
//! that stays behind slows the worker down as a blocking write would, instead of growing memory;
//! a stall shorter than the pool lasts costs the worker nothing.
//!
//! Durability is unchanged: a recording is called complete only after its last write has been
//! performed ([`Writeback::done`] has reached the sequence number [`Writeback::sent`] gave when it
//! finished) *and then* a filesystem sync has started and completed (see [`super::syncer`]).
//! A failed write is reported through [`Writeback::take_errors`] with the file's path; the file
//! then fails `verify`, as with a failed synchronous write. If the process dies, what is still
//! queued is lost with it, as unflushed chunk buffers always were: at most `MAX_BUFFERS` (4,096)
//! chunks, and while the thread keeps up (it has a core to itself for a copy) a few milliseconds of
//! audio.
//!
//! The same thread keeps recordings out of the page cache ([`forget`]): a recording's pages are
//! dropped once the sink finds it durable ([`WriteQueue::forget`]), and a long call's as it grows.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender, bounded};

use crate::priority::WriterPlace;

/// Buffers per sink, allocated when the thread starts and recycled: 256 of 16 KiB (a chunk,
/// with the tail held in front of it, is at most ~14.5 KiB): 4 MiB per sink, about a second of
/// one worker's output at 1,000 calls. The worker allocates nothing for writes while these do.
const BUFFERS: usize = 256;
const BUFFER_BYTES: usize = 16 * 1024;
/// Buffers a sink may have at most (64 MiB): when the writing thread falls behind, the worker
/// takes fresh buffers up to this many before it waits for one to come back, and the thread
/// frees what comes back beyond [`BUFFERS`] idle ones once it has caught up.
///
/// Why: the thread's writes stall now and then (the kernel throttles a writer while the page
/// cache holds too many dirty pages, the cores are busy), and 4 MiB is 55 ms of the worker's
/// output at 12,000 calls going on (72 MB/s). A worker waiting for a buffer leaves its capture
/// socket unread: an AF_XDP socket holds 160 ms of frames at 400 kpps (65,536 UMEM frames of
/// 2 KiB for packets of ~214 bytes), and in the live bench at 12,000 calls going on the inline
/// worker's store tick waited up to 213 ms and the socket dropped 1.1-2.6 % of the packets.
/// Sealed chunks are the densest place to buffer: 64 MiB hold ~0.9 s of that output.
const MAX_BUFFERS: usize = 4096;
/// Errors kept until the sink collects them.
const MAX_ERRORS: usize = 1000;

/// Forget requests that may wait in the queue besides the writes; one that finds the queue full is
/// dropped (it is only a hint to the page cache, see [`WriteQueue::forget`]).
const FORGETS: usize = 4096;
/// A recording's pages are dropped from the page cache as it grows, in steps of this many bytes:
/// each time a write crosses a multiple of it, everything before the previous multiple goes
/// (for G.711, data written a minute or more earlier, long since synced; see [`forget`]).
const FORGET_STEP: u64 = 1 << 20;

/// One queued write: the recording's file if it keeps it open (otherwise the thread opens `path`
/// for appending, writes and closes it: calls beyond the open-file budget), the offset it starts
/// at, and the bytes.
struct Queued {
    file: Option<Arc<File>>,
    path: Arc<str>,
    at: u64,
    buf: Vec<u8>,
}

enum Req {
    Write(Queued),
    /// A finished recording is on disk: its pages may leave the page cache.
    Forget(Arc<str>),
    Stop,
}

struct Shared {
    /// Requests performed (written, or failed and reported), in order.
    done: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Times the recording thread waited for a buffer to come back (all [`MAX_BUFFERS`] in use),
    /// in total and at most, in ns: the writing thread was that far behind (see [`WriteWaits`]).
    waits: AtomicU64,
    waited_ns: AtomicU64,
    max_wait_ns: AtomicU64,
    /// Where the thread runs, once it has placed itself (see [`Writeback::place`]).
    place: OnceLock<WriterPlace>,
}

/// How often and how long the thread recording calls waited for the writing thread's buffers:
/// while it waits it reads no packets, so a capture's socket fills (live bench, seventeenth
/// session: five of the eight longest stalls of a losing run were such waits). Reported in
/// capture's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteWaits {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
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
    /// Buffers in existence (idle in the pool, queued, or being written): at most [`MAX_BUFFERS`].
    buffers: Arc<AtomicUsize>,
    /// Requests queued so far by every handle of this sink (all on one thread).
    sent: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Writeback {
    /// Starts the writing thread. Call it on the thread that will queue the writes.
    pub fn start() -> Result<Writeback, String> {
        let (tx, rx) = bounded::<Req>(MAX_BUFFERS + FORGETS + 1);
        // Buffers come back here once written.
        let (pool_tx, pool_rx) = bounded::<Vec<u8>>(MAX_BUFFERS);
        // crossbeam allocates the first time a thread blocks on a channel (the thread's wait
        // context, the channel's list of waiters), which here would be the first time every
        // buffer is in use, in the middle of recording (`benches/tests/zero_alloc.rs` failed
        // when that fell in its window). Wait on the empty pool once instead: a millisecond, when
        // the first recording opens.
        let _ = pool_rx.recv_timeout(std::time::Duration::from_millis(1));
        for _ in 0..BUFFERS {
            let _ = pool_tx.try_send(Vec::with_capacity(BUFFER_BYTES));
        }
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            waits: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            max_wait_ns: AtomicU64::new(0),
            place: OnceLock::new(),
        });
        // A real-time starter (the inline worker on a real-time reader) gets a real-time writing
        // thread, one priority below it; any other one a writing thread at `WRITER_NICE`.
        let starter_realtime = crate::priority::thread_policy().is_ok_and(|p| p == libc::SCHED_FIFO);
        let s = shared.clone();
        let buffers = Arc::new(AtomicUsize::new(BUFFERS));
        let b = buffers.clone();
        let thread = std::thread::Builder::new()
            .name("callrec-write".into())
            .spawn(move || {
                // Ahead of the workers it serves and of every ordinary thread, behind a real-time
                // reader (see `crate::priority`). Where neither real-time nor a lower nice value
                // is allowed (no CAP_SYS_NICE) it keeps what it inherited.
                if let Ok(place) = crate::priority::set_writer_priority(starter_realtime) {
                    let _ = s.place.set(place);
                }
                run(&rx, &pool_tx, &b, &s)
            })
            .map_err(|e| format!("cannot start the file-writing thread: {e}"))?;
        Ok(Writeback {
            queue: WriteQueue { tx, pool: pool_rx, buffers, sent: Arc::new(AtomicU64::new(0)), shared },
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

    /// See [`WriteQueue::forget`].
    pub fn forget(&self, path: &Arc<str>) {
        self.queue.forget(path)
    }

    /// Where the writing thread runs (real-time or a nice value); `None` until it has started,
    /// or where the kernel let it have neither (it then keeps the starter's nice value).
    pub fn place(&self) -> Option<WriterPlace> {
        self.queue.shared.place.get().copied()
    }

    /// How the recording thread has waited for buffers so far.
    pub fn waits(&self) -> WriteWaits {
        let s = &self.queue.shared;
        WriteWaits {
            count: s.waits.load(Ordering::Relaxed),
            total_ns: s.waited_ns.load(Ordering::Relaxed),
            max_ns: s.max_wait_ns.load(Ordering::Relaxed),
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
    /// Queues `data` for the recording at `path` (`file`: its open file, if it keeps one), to be
    /// appended at offset `at` (the file's length when it is written), copied into a pooled
    /// buffer: an idle one, else a fresh one while there are fewer than [`MAX_BUFFERS`], else the
    /// next to come back (it blocks). Returns false if the writing thread is gone (the caller then
    /// writes itself).
    pub(crate) fn write(&self, file: Option<&Arc<File>>, path: &Arc<str>, at: u64, data: &[u8]) -> bool {
        let buf = match self.pool.try_recv() {
            Ok(b) => Ok(b),
            // Only this thread adds buffers, so the count cannot pass the limit between the two.
            Err(_) if self.buffers.load(Ordering::Relaxed) < MAX_BUFFERS => {
                self.buffers.fetch_add(1, Ordering::Relaxed);
                Ok(Vec::with_capacity(BUFFER_BYTES))
            }
            Err(_) => {
                let t = std::time::Instant::now();
                let b = self.pool.recv();
                let ns = t.elapsed().as_nanos() as u64;
                let s = &self.shared;
                s.waits.fetch_add(1, Ordering::Relaxed);
                s.waited_ns.fetch_add(ns, Ordering::Relaxed);
                s.max_wait_ns.fetch_max(ns, Ordering::Relaxed);
                b
            }
        };
        let Ok(mut buf) = buf else { return false };
        buf.clear();
        buf.extend_from_slice(data);
        if self.tx.send(Req::Write(Queued { file: file.cloned(), path: path.clone(), at, buf })).is_err() {
            return false;
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Asks the writing thread to drop the recording at `path` from the page cache: call it once
    /// the recording is finished and durable (its pages are clean, so they are freed, not
    /// written). Never blocks: with the queue full the hint is skipped and the kernel evicts the
    /// pages in its own time.
    pub(crate) fn forget(&self, path: &Arc<str>) {
        if self.tx.try_send(Req::Forget(path.clone())).is_ok() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(rx: &Receiver<Req>, pool: &Sender<Vec<u8>>, buffers: &AtomicUsize, s: &Shared) {
    while let Ok(req) = rx.recv() {
        let w = match req {
            Req::Write(w) => w,
            Req::Forget(path) => {
                if let Ok(f) = File::open(Path::new(&*path)) {
                    forget(&f, 0);
                }
                s.done.fetch_add(1, Ordering::Release);
                continue;
            }
            Req::Stop => break,
        };
        let end = w.at + w.buf.len() as u64;
        // Crossing a step: what lies more than a step behind goes from the page cache.
        let old = (end / FORGET_STEP).saturating_sub(1) * FORGET_STEP;
        let forget_to = (w.at / FORGET_STEP != end / FORGET_STEP && old > 0).then_some(old);
        let mut opened: Option<File> = None;
        let file = match &w.file {
            Some(f) => Ok(&**f),
            None => std::fs::OpenOptions::new().append(true).open(Path::new(&*w.path)).map(|f| &*opened.insert(f)),
        };
        let r = file.and_then(|mut f| {
            f.write_all(&w.buf)?;
            if let Some(n) = forget_to {
                forget(f, n);
            }
            Ok(())
        });
        if let Err(e) = r
            && let Ok(mut errs) = s.errors.lock()
            && errs.len() < MAX_ERRORS
        {
            errs.push(format!("I/O error on {}: {e}", w.path));
        }
        // Caught up (the pool holds its first allocation's worth idle): what the worker took
        // beyond that while this thread was behind is freed.
        if pool.len() >= BUFFERS {
            buffers.fetch_sub(1, Ordering::Relaxed);
        } else {
            let _ = pool.try_send(w.buf);
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

/// Drops the first `len` bytes of `file` (all of it for 0) from the page cache.
///
/// Why: a recording is written once and read rarely (export, verify), so its pages are worth
/// nothing in the cache. Left there they crowd out what is read again (the index), and the
/// writes keep taking fresh pages: on this project's VMs a page the guest has not touched lately
/// costs 5-11 µs to fault in from the host, against 1.6 µs for one just freed, and an 8 KiB
/// append to one of 5,000 files cost 19-22 µs of CPU with the finished files left cached against
/// 8.9-9.5 µs with them dropped (plus 1.3-1.7 µs for the dropping; docs/BENCHMARKS.md). Clean
/// pages are freed; dirty ones are left (the kernel starts writing them, as the syncer would).
/// Failure only means the kernel evicts the pages in its own time, so it is not reported.
fn forget(file: &File, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fadvise on a descriptor we hold for the call; it only advises the kernel.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, len as libc::off_t, libc::POSIX_FADV_DONTNEED) };
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
            assert!(q.write(Some(&file), &open_path, (i * 3) as u64, &b));
            assert!(q.write(None, &closed_path, (i * 3) as u64, &b));
        }
        assert!(q.write(None, &missing, 0, b"lost"));
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

    /// The writing thread of a real-time starter (the inline worker on a real-time reader) runs
    /// real-time below it; that of an ordinary starter at `WRITER_NICE`. Where the kernel refuses
    /// real-time (no CAP_SYS_NICE) neither is real-time.
    #[test]
    fn the_writing_thread_follows_its_starters_class() {
        use crate::priority::{READER_RT_PRIORITY, WRITER_RT_PRIORITY, set_thread_fifo};
        let place_of = |wb: &Writeback| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while wb.place().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            wb.place()
        };
        let (rt, place) = std::thread::spawn(move || {
            let rt = set_thread_fifo(READER_RT_PRIORITY).is_ok();
            let wb = Writeback::start().unwrap();
            (rt, place_of(&wb))
        })
        .join()
        .unwrap();
        if rt {
            assert_eq!(place, Some(WriterPlace::Realtime(WRITER_RT_PRIORITY)));
        } else {
            assert!(!matches!(place, Some(WriterPlace::Realtime(_))), "{place:?}");
        }
        let place = std::thread::spawn(move || place_of(&Writeback::start().unwrap())).join().unwrap();
        assert!(!matches!(place, Some(WriterPlace::Realtime(_))), "an ordinary starter: {place:?}");
    }

    /// A writing thread that falls behind does not hold the worker up until the sink has
    /// [`MAX_BUFFERS`] buffers; then the worker waits for one to come back, and the wait is
    /// counted ([`Writeback::waits`]); once the thread has caught up, the buffers beyond
    /// [`BUFFERS`] are freed. The file is a FIFO nobody reads yet,
    /// so the thread's first writes fill the pipe and the next one blocks.
    #[test]
    fn a_stalled_writer_gets_more_buffers_up_to_the_limit_and_frees_them_after() {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // The read end first (non-blocking), so opening the write end does not wait.
        let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let file = Arc::new(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
        let path: Arc<str> = fifo.display().to_string().into();
        let wb = Writeback::start().unwrap();
        assert_eq!(wb.waits(), WriteWaits::default());
        let q = wb.queue();
        let chunk = vec![7u8; BUFFER_BYTES];
        let total = MAX_BUFFERS + 64;
        let written = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (q, file, path, written) = (q.clone(), file.clone(), path.clone(), written.clone());
            std::thread::spawn(move || {
                for i in 0..total {
                    assert!(q.write(Some(&file), &path, (i * BUFFER_BYTES) as u64, &chunk));
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // The pipe takes a few writes (64 KiB), then the thread blocks and the worker runs
        // through every buffer the sink may have, and waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while written.load(Ordering::Relaxed) < MAX_BUFFERS && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let before = written.load(Ordering::Relaxed);
        assert!(before >= MAX_BUFFERS, "the worker waited after {before} writes, with {BUFFERS} buffers to start with");
        assert!(before < total, "the worker never waited: {before} writes queued while nothing was written");
        assert_eq!(q.buffers.load(Ordering::Relaxed), MAX_BUFFERS);
        // Reading the pipe lets the thread catch up; every write arrives, in order.
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < total * BUFFER_BYTES {
            match reader.read(&mut buf) {
                Ok(n) => {
                    assert!(buf[..n].iter().all(|&b| b == 7));
                    got += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("reading the FIFO: {e}"),
            }
            assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(30), "read {got} bytes");
        }
        worker.join().unwrap();
        wb.drain();
        assert!(wb.take_errors().is_empty());
        // The worker's wait is on the books: it lasted at least the 200 ms slept above.
        let w = wb.waits();
        assert!(w.count >= 1 && w.max_ns >= 200_000_000 && w.total_ns >= w.max_ns, "{w:?}");
        assert_eq!(q.buffers.load(Ordering::Relaxed), BUFFERS, "the extra buffers were freed once caught up");
    }
}
