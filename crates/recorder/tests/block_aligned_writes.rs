//! How a recording reaches the file: in writes that end on a block boundary while the call lasts,
//! also when its packets come slower than its chunks were sized for.
//!
//! Why it matters: a buffered write that ends inside a new block makes the kernel zero-fill the
//! rest of that block first (`zero_user_segments`), and the recorder's held tail exists to avoid
//! that. A call that loses packets upstream fills its chunks late; its tail then came due before
//! the next chunk and went out alone, ending mid-block, in the overloaded live runs where time
//! mattered most (docs/BENCHMARKS.md).

use std::sync::OnceLock;

use recorder::Side;
use recorder::store::file::{FLUSH_INTERVAL_NS, Record, RecordingWriter, read_recording};
use recorder::store::keys::{self, PrivateStoreKey};

mod common;
use common::summary;

const T0: i64 = 1_700_000_000_000_000_000;
const BLOCK: u64 = 4096;

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend((0..160).map(|k| (k as u16 ^ seq) as u8));
    p
}

/// Plays a G.711 call (both sides, a packet each 20 ms per side) for `secs`, keeping only the
/// packets for which `keep(i)` holds, with the writer writing synchronously (no writing
/// thread), and ticking it every 100 ms as the store does. Returns the file sizes seen after each
/// write that left the file at a size not on a block boundary, before `finish`. Checks that the
/// recording reads back complete with every packet kept, in order, and that the file grew at
/// least every flush interval (two seconds) plus a tick, in capture time, while packets came (plus
/// the wait for the first packet of a chunk: at most 270 ms at the sparsest share used here, 5 %).
fn partial_writes(secs: i64, keep: impl Fn(i64) -> bool) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let (public, key) = key();
    let path = dir.path().join("r.crec");
    let mut w = RecordingWriter::create(&path, public, T0, true).unwrap();
    w.start(T0, "c@x").unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let mut last = size();
    let mut partial = Vec::new();
    let (mut grew_at, mut longest) = (T0, 0);
    let mut note = |now: u64, ts: i64, partial: &mut Vec<u64>| {
        if now != last {
            longest = longest.max(ts - grew_at);
            grew_at = ts;
            if !now.is_multiple_of(BLOCK) {
                partial.push(now);
            }
        }
        last = now;
    };
    let packets = secs * 100;
    let mut kept = Vec::new();
    for i in 0..packets {
        let ts = T0 + i * 10_000_000;
        if keep(i) {
            let side = if i % 2 == 0 { Side::Caller } else { Side::Callee };
            w.rtp((i % 2) as u8, side, ts, &rtp(i as u16)).unwrap();
            kept.push(rtp(i as u16));
            note(size(), ts, &mut partial);
        }
        if i % 10 == 9 {
            w.tick(ts).unwrap();
            note(size(), ts, &mut partial);
        }
    }
    assert!(longest <= FLUSH_INTERVAL_NS + 400_000_000, "the file did not grow for {longest} ns");
    w.finish(&summary("c@x")).unwrap();
    let c = read_recording(&path, key).unwrap();
    let read: Vec<Vec<u8>> =
        c.records.into_iter().filter_map(|r| if let Record::Rtp { rtp, .. } = r { Some(rtp) } else { None }).collect();
    assert!(c.complete);
    drop(dir);
    assert!(read == kept, "{} packets read back of {} written", read.len(), kept.len());
    partial
}

/// One store key for every test here (sealing it under a passphrase is slow by design).
fn key() -> (&'static keys::PublicStoreKey, &'static PrivateStoreKey) {
    static KEY: OnceLock<(keys::PublicStoreKey, PrivateStoreKey)> = OnceLock::new();
    let (p, k) = KEY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (public, sealed) = keys::generate(b"pw").unwrap();
        std::fs::write(dir.path().join("k"), sealed).unwrap();
        (public, PrivateStoreKey::unseal(&dir.path().join("k"), b"pw").unwrap())
    });
    (p, k)
}

/// Keeps `pct` % of the packets, spread over the call.
fn share(pct: i64) -> impl Fn(i64) -> bool {
    move |i| (i * 37 % 100) < pct
}

#[test]
fn a_call_with_every_packet_writes_whole_blocks() {
    assert_eq!(partial_writes(30, share(100)), Vec::<u64>::new());
}

/// Before the held tail went out with the records behind it, a call that lost a fifth of its
/// packets wrote 33 partial blocks in 30 s, and one that lost 40 % wrote 37.
#[test]
fn a_call_that_lost_packets_still_writes_whole_blocks() {
    assert_eq!(partial_writes(30, share(80)), Vec::<u64>::new(), "a fifth lost");
    let p = partial_writes(30, share(60));
    assert!(p.len() <= 25, "40 % lost: {} partial writes in 30 s: {p:?}", p.len());
}

/// A call too slow to fill a block within the flush interval still reaches the file every
/// interval (checked in `partial_writes`): with partial blocks then, about one an interval. The
/// shares kept are 40, 20 and 10 % of G.711's packets for a one-second interval, and as many
/// packets per interval for another (20, 10 and 5 % at two seconds).
#[test]
fn a_slow_call_still_reaches_the_file_every_flush_interval() {
    let intervals = 30_000_000_000 / FLUSH_INTERVAL_NS as usize;
    for pct in [40, 20, 10].map(|p| p * 1_000_000_000 / FLUSH_INTERVAL_NS) {
        let p = partial_writes(30, share(pct));
        let n = p.len();
        assert!((intervals * 2 / 3..=intervals + 1).contains(&n), "{pct} % kept: {n} partial writes in 30 s");
    }
}
