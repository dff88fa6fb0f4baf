//! Durability without stalling the recorder: a thread that syncs the store's filesystem over and
//! over, and tells the sink which recordings are on disk.
//!
//! The index may call a recording complete only once its bytes would survive a power cut. Syncing
//! in the recording thread (one `syncfs` before each index commit) stalled that thread for as long
//! as the disk took to write a second of audio, during which its queue filled; and the kernel, left
//! alone, writes dirty pages only after 30 s, so each sync found a whole batch to write. Here a
//! thread syncs once every [`PERIOD`]: dirty data goes out a period at a time, and a recording
//! finished at sync epoch `e` is durable once a sync that *started* after it, epoch `e + 1`, has
//! completed. The sink asks [`Syncer::need`] when a recording finishes and checks
//! [`Syncer::durable`] at each commit; only [`Syncer::wait`] (end of input) blocks, and it has the
//! next sync start at once instead of at the end of the period.
//!
//! Why a period and not back to back: each sync makes the filesystem allocate blocks for every
//! recording written since the previous one (ext4 allocates at writeback), so syncing as fast as
//! the disk allows cut every recording into many small allocations, and the kernel's writeback
//! workers' CPU time, on the cores the capture needs, grew with the number of syncs, not with the
//! bytes. See docs/BENCHMARKS.md, "Syncing once a second".
//!
//! The same thread checkpoints the index's write-ahead log ([`Syncer::start_with_index`]): a
//! checkpoint copies the WAL into the database and syncs it, and with SQLite's autocheckpoint it
//! runs inside whichever commit crosses the threshold, i.e. in a capture worker, away from its
//! queue. The recorder's connections therefore never checkpoint; this thread does, every
//! [`CHECKPOINT_EVERY`], in PASSIVE mode (it waits for no reader or writer). (Whether that stall
//! caused the live bench's losses was not shown: the workers' longest store tick there was under
//! 90 ms, see docs/BENCHMARKS.md.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The shortest time from the start of one sync to the start of the next, unless a caller of
/// [`Syncer::wait`] is waiting. A recording finished while recording goes on is durable (and
/// indexed as complete) within two periods and a sync.
///
/// Two seconds since the nineteenth session (one from the fifteenth): each sync has the
/// filesystem allocate blocks for every recording written since the last one, so the kernel's
/// writeback work grows with recordings times syncs; together with the two-second flush interval
/// ([`super::file::FLUSH_INTERVAL_NS`]) it cut that work to 0.53-0.60 of what it was at 20,000
/// calls going on (docs/BENCHMARKS.md, "Flushing and syncing every two seconds"). The price: a
/// finished call is indexed complete up to about five seconds after its end instead of three,
/// and a power cut loses up to a flush interval and a period of what calls in progress sent.
pub const PERIOD: Duration = Duration::from_secs(2);
/// How often the index's WAL is checkpointed (when a checkpoint is asked for).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

struct Shared {
    /// Epoch of the sync in progress or last started.
    started: AtomicU64,
    /// Epoch of the last sync that completed without error.
    done: AtomicU64,
    stop: AtomicBool,
    /// Someone waits ([`Syncer::wait`]): the next sync starts as soon as the current one ends.
    hurry: AtomicBool,
    /// The last failure, reported once by [`Syncer::take_error`].
    error: Mutex<Option<String>>,
}

pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread syncing the filesystem that holds `dir`.
    pub fn start(dir: &Path) -> Result<Syncer, String> {
        Syncer::spawn(dir, None, PERIOD)
    }

    /// Like [`Syncer::start`], and the thread also checkpoints the WAL of the SQLite database
    /// `index` (whose writers should then set `wal_autocheckpoint` to 0).
    pub fn start_with_index(dir: &Path, index: &Path) -> Result<Syncer, String> {
        Syncer::spawn(dir, Some(index.to_path_buf()), PERIOD)
    }

    fn spawn(dir: &Path, index: Option<PathBuf>, period: Duration) -> Result<Syncer, String> {
        let shared = Arc::new(Shared {
            started: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let owned: PathBuf = dir.to_path_buf();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("callrec-sync".into())
            .spawn(move || run(&owned, &s, index, period))
            .map_err(|e| format!("cannot start the sync thread for {}: {e}", dir.display()))?;
        Ok(Syncer { shared, thread: Some(thread) })
    }

    /// The epoch that makes a recording finished now durable once [`Syncer::durable`] reaches it.
    pub fn need(&self) -> u64 {
        self.shared.started.load(Ordering::Acquire) + 1
    }

    /// Whether everything finished before [`Syncer::need`] returned `epoch` is on disk.
    pub fn durable(&self, epoch: u64) -> bool {
        self.shared.done.load(Ordering::Acquire) >= epoch
    }

    /// Blocks until `epoch` is durable, or the syncer reports an error. The syncs it needs start
    /// without waiting out the period.
    pub fn wait(&self, epoch: u64) -> Result<(), String> {
        if self.durable(epoch) {
            return Ok(());
        }
        // Once is enough: the thread clears the flag only as it starts a sync, and every sync
        // that starts from here on is one `epoch` needs (it was asked for before this call).
        self.shared.hurry.store(true, Ordering::Release);
        self.wake();
        while !self.durable(epoch) {
            if let Some(e) = self.take_error() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Ends the thread's pause, if it is pausing.
    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// A sync failure since the last call, if any.
    pub fn take_error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|mut e| e.take())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(dir: &Path, s: &Shared, index: Option<PathBuf>, period: Duration) {
    let mut conn: Option<rusqlite::Connection> = None;
    let mut last_checkpoint = std::time::Instant::now();
    while !s.stop.load(Ordering::Acquire) {
        if let Some(ix) = &index
            && last_checkpoint.elapsed() >= CHECKPOINT_EVERY
        {
            last_checkpoint = std::time::Instant::now();
            if let Err(e) = checkpoint(ix, &mut conn)
                && let Ok(mut slot) = s.error.lock()
            {
                *slot = Some(e);
            }
        }
        // A waiter who came before this sync starts is served by it.
        s.hurry.store(false, Ordering::Release);
        let epoch = s.started.fetch_add(1, Ordering::AcqRel) + 1;
        let t = std::time::Instant::now();
        match sync_filesystem(dir) {
            Ok(()) => s.done.store(epoch, Ordering::Release),
            Err(e) => {
                if let Ok(mut slot) = s.error.lock() {
                    *slot = Some(e);
                }
                // Retry after a pause; nothing is called durable meanwhile.
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        }
        // The next sync starts a period after this one started, or as soon as someone waits.
        let next = t + period;
        while !s.stop.load(Ordering::Acquire) && !s.hurry.load(Ordering::Acquire) {
            let Some(rest) = next.checked_duration_since(std::time::Instant::now()) else { break };
            std::thread::park_timeout(rest);
        }
    }
}

/// Copies what the WAL of `index` holds into the database, without waiting for anyone.
fn checkpoint(index: &Path, conn: &mut Option<rusqlite::Connection>) -> Result<(), String> {
    let err = |e: rusqlite::Error| format!("cannot checkpoint the index {}: {e}", index.display());
    if conn.is_none() {
        *conn = Some(rusqlite::Connection::open(index).map_err(err)?);
    }
    let c = conn.as_ref().expect("opened above");
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(err)
}

/// Flushes the filesystem holding `dir` (all its dirty data, one call).
pub fn sync_filesystem(dir: &Path) -> Result<(), String> {
    let f = std::fs::File::open(dir).map_err(|e| format!("cannot open {} to sync it: {e}", dir.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(format!("cannot sync the filesystem of {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wait` returns once a sync that started after `need` has completed, and a recording
    /// finished later needs a later sync.
    #[test]
    fn an_epoch_is_durable_only_after_a_later_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = Syncer::start(dir.path()).unwrap();
        let first = s.need();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        let e = s.need();
        assert!(e >= first);
        s.wait(e).unwrap();
        assert!(s.durable(e));
        assert!(s.need() > e, "a later recording needs a later sync");
        assert!(s.take_error().is_none());
    }

    /// Between syncs the thread pauses for its period, yet a waiter is served at once: with a
    /// period of an hour, no second sync starts by itself, and `wait` still returns.
    #[test]
    fn the_thread_pauses_for_its_period_but_not_for_a_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let s = Syncer::spawn(dir.path(), None, Duration::from_secs(3600)).unwrap();
        while !s.durable(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(s.shared.started.load(Ordering::Acquire), 1, "a second sync started within its period");
        let s = Arc::new(s);
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = s.clone();
        // On its own thread, so that a wait that never returns fails the test instead of hanging it.
        std::thread::spawn(move || tx.send(waiter.wait(waiter.need())));
        let r = rx.recv_timeout(Duration::from_secs(60));
        assert!(matches!(r, Ok(Ok(()))), "wait did not return within a minute of an hour-long period: {r:?}");
        assert!(s.shared.started.load(Ordering::Acquire) >= 2);
    }

    /// With an index to look after, the thread copies its WAL into the database (the writer
    /// itself never checkpoints).
    #[test]
    fn the_sync_thread_checkpoints_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t (x BLOB);").unwrap();
        for _ in 0..100 {
            c.execute("INSERT INTO t VALUES (zeroblob(20000))", []).unwrap();
        }
        let db_len = || std::fs::metadata(&path).unwrap().len();
        assert!(db_len() < 100_000, "the rows are only in the WAL: {} bytes", db_len());
        let s = Syncer::start_with_index(dir.path(), &path).unwrap();
        let t = std::time::Instant::now();
        while db_len() < 2_000_000 && t.elapsed() < CHECKPOINT_EVERY * 5 {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(db_len() >= 2_000_000, "no checkpoint: the database holds {} bytes", db_len());
        assert!(s.take_error().is_none());
        let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 100);
    }

    #[test]
    fn a_missing_directory_is_reported_not_called_durable() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let s = Syncer::start(&gone).unwrap();
        let e = s.need();
        let err = s.wait(e).unwrap_err();
        assert!(err.contains("gone"), "{err}");
        assert!(!s.durable(e));
    }
}
