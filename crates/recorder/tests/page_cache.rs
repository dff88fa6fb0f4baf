//! A recording leaves the page cache once it is on disk: when the call is finished and durable
//! (where the sink is told to, as live capture does), and, while a long call lasts, its data more
//! than a step (1 MiB) behind what is being written.
//!
//! Why it matters: recordings are written once and read rarely, and a recorder writing 160 MB/s
//! would otherwise fill memory with them, while every write took a fresh page (on this project's
//! VMs several microseconds each from the host; see docs/BENCHMARKS.md). Residency is read with
//! `mincore(2)` on a mapping of the file, which does not fault pages in. The store lives under
//! the build's target directory, on disk: tmpfs cannot drop pages and would fail these checks.

use recorder::Side;
use recorder::engine::{CallRef, Sink};
use recorder::store::{Store, StoreSink};

mod common;
use common::summary;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;

fn call(c: u32) -> CallRef {
    CallRef { slot: c, uid: u64::from(c) + 1 }
}

fn store(name: &str) -> (tempfile::TempDir, Store) {
    let dir = tempfile::Builder::new().prefix(name).tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::init(&dir.path().join("store"), b"pass").unwrap();
    (dir, store)
}

/// Plays `packets` packets of 1,000 bytes into call `c`, 10 ms apart from `t`; returns the time after.
fn play(sink: &mut StoreSink<'_>, c: u32, packets: usize, mut t: i64) -> i64 {
    for n in 0..packets {
        let side = if n % 2 == 0 { Side::Caller } else { Side::Callee };
        let rtp: Vec<u8> = (0..1000).map(|i| (i + n) as u8).collect();
        sink.media(call(c), (n % 2) as u8, side, t, &rtp);
        t += 10_000_000;
        if n % 10 == 9 {
            sink.tick(t);
        }
    }
    t
}

/// Pages of `path` in `[from, to)` bytes that are in the page cache.
fn resident(path: &std::path::Path, from: usize, to: usize) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    let to = to.min(len);
    assert!(from < to, "{} holds {len} bytes, less than the {from} to look at", path.display());
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped below; never read.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    assert_ne!(map, libc::MAP_FAILED, "mmap {}", path.display());
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `vec` has a byte per page of the mapping.
    let r = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(map, len) };
    assert_eq!(r, 0, "mincore {}: {}", path.display(), std::io::Error::last_os_error());
    vec[from / PAGE..to.div_ceil(PAGE)].iter().filter(|&&b| b & 1 != 0).count()
}

/// Every recording in the store under `root`, found on disk.
fn recordings(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "crec") {
                out.push(p);
            }
        }
    }
    out
}

/// Records two finished calls and one in progress, with or without dropping finished ones; returns
/// the pages cached of each recording, by whether the index calls it complete.
fn cached_after(forget_finished: bool) -> Vec<(bool, usize)> {
    let (_dir, mut store) = store("page-cache-finished");
    {
        let mut sink = store.recorder().unwrap();
        sink.set_forget_finished(forget_finished);
        for c in 0..3 {
            sink.call_started(call(c), &format!("call-{c}"), 0);
        }
        let mut t = 0;
        for c in 0..3 {
            t = play(&mut sink, c, 500, t);
        }
        for c in 0..2 {
            sink.call_ended(call(c), summary(&format!("call-{c}")));
        }
        sink.flush();
        sink.wait_writes();
        assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
        assert_eq!(sink.recorded, 2);
    }
    let ids = store.index.all_ids().unwrap();
    assert_eq!(ids.len(), 3);
    let mut out: Vec<(bool, usize)> = ids
        .into_iter()
        .map(|id| {
            let (rel, _, status) = store.index.file_of(id).unwrap().unwrap();
            let path = store.abs(&rel);
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(len > 400_000, "{rel}: {len} bytes");
            (status == "complete", resident(&path, 0, len))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_finished_durable_recording_leaves_the_page_cache_and_a_call_in_progress_stays() {
    let c = cached_after(true);
    assert_eq!(c.iter().filter(|(complete, _)| *complete).count(), 2, "{c:?}");
    for &(complete, cached) in &c {
        if complete {
            assert_eq!(cached, 0, "a finished, durable recording still has {cached} pages cached: {c:?}");
        } else {
            assert!(cached > 50, "the call in progress has {cached} pages cached, the check sees nothing: {c:?}");
        }
    }
}

/// Import's default: the kernel evicts finished recordings in its own time.
#[test]
fn by_default_a_finished_recording_stays_cached() {
    let c = cached_after(false);
    assert_eq!(c.iter().filter(|(complete, _)| *complete).count(), 2, "{c:?}");
    assert!(c.iter().all(|&(_, cached)| cached > 50), "{c:?}");
}

#[test]
fn a_long_call_leaves_what_lies_a_step_behind_its_end() {
    let (dir, mut store) = store("page-cache-long");
    let mut sink = store.recorder().unwrap();
    sink.call_started(call(0), "long", 0);
    // 1.5 MiB, synced, then past 2 MiB: the first MiB goes, the second stays.
    let t = play(&mut sink, 0, 1_500, 0);
    sink.wait_writes();
    recorder::store::syncer::sync_filesystem(dir.path()).unwrap();
    play(&mut sink, 0, 700, t);
    sink.wait_writes();
    let files = recordings(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let path = &files[0];
    let len = std::fs::metadata(path).unwrap().len() as usize;
    assert!(len > 2 * MIB, "{len} bytes");
    let first = resident(path, 0, MIB);
    let second = resident(path, MIB, 2 * MIB);
    assert_eq!(first, 0, "the first MiB, synced and a step behind, still has {first} pages cached");
    assert!(second > 200, "the second MiB has {second} of 256 pages cached: dropped too early");
    sink.call_ended(call(0), summary("long"));
    sink.flush();
    assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
}
