//! Recordings whose chunks are flushed in batches (MD5 watermarks advanced side by side in SIMD
//! lanes) must be exactly what was recorded: every file authenticates, its watermark matches an
//! independent MD5 of the file (RustCrypto's `md-5`, used by `verify`), and its records come back
//! in order, byte for byte. Many calls of uneven packet sizes, ending at different times, so lanes
//! run streams of different lengths and refill mid-batch.

use recorder::Side;
use recorder::engine::{CallRef, Sink};
use recorder::model::{CallSummary, EndReason, Party};
use recorder::store::file::{FLUSH_INTERVAL_NS, Record, read_recording};
use recorder::store::{READY_WAIT_NS, Store, StoreSink, Verdict};

fn summary(call_id: &str, end_ns: i64) -> CallSummary {
    CallSummary {
        call_id: call_id.to_string(),
        caller: Party::default(),
        callee: Party::default(),
        start_ns: 0,
        answer_ns: None,
        end_ns,
        end_reason: EndReason::CallerBye,
        sip_code: None,
        codecs: Vec::new(),
        dtmf: Vec::new(),
        holds: Vec::new(),
        streams: Vec::new(),
        payload_types: Vec::new(),
        sip_messages: 0,
    }
}

/// Packet `n` of call `c`: length and contents differ per call and per packet.
fn packet(c: usize, n: usize) -> Vec<u8> {
    let len = 12 + (c * 37 + n * 11) % 300;
    (0..len).map(|i| (c * 131 + n * 7 + i) as u8).collect()
}

const CALLS: usize = 40;

/// Call `c` sends this many packets: the later calls outlive the earlier ones.
fn packets(c: usize) -> usize {
    150 + 13 * c
}

fn call(c: usize) -> CallRef {
    CallRef { slot: c as u32, uid: c as u64 + 1 }
}

/// Reads back the recording of index row `id`, which must be complete: the call's number (from
/// its Call-ID `call-N`), the Call-ID and its RTP packets in order.
fn read_call(store: &Store, key: &recorder::store::keys::PrivateStoreKey, id: i64) -> (usize, String, Vec<Vec<u8>>) {
    let (rel, _, _) = store.index.file_of(id).unwrap().unwrap();
    let contents = read_recording(&store.abs(&rel), key).unwrap();
    assert!(contents.complete, "call {id}: the recording has no final chunk");
    let call_id = contents
        .records
        .iter()
        .find_map(|r| match r {
            Record::Start { call_id, .. } => Some(call_id.clone()),
            _ => None,
        })
        .unwrap();
    let c: usize = call_id.strip_prefix("call-").unwrap().parse().unwrap();
    let rtp = contents
        .records
        .into_iter()
        .filter_map(|r| match r {
            Record::Rtp { rtp, .. } => Some(rtp),
            _ => None,
        })
        .collect();
    (c, call_id, rtp)
}

#[test]
fn batched_chunk_flushes_keep_every_recording_whole_and_its_watermark_right() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let batched;
    {
        let mut sink = store.recorder().unwrap();
        for c in 0..CALLS {
            sink.call_started(call(c), &format!("call-{c}"), 0);
        }
        let mut t = 0i64;
        for n in 0..=packets(CALLS - 1) {
            t += 20_000_000 / CALLS as i64;
            for c in 0..CALLS {
                if n < packets(c) {
                    let side = if n % 2 == 0 { Side::Caller } else { Side::Callee };
                    sink.media(call(c), (n % 2) as u8, side, t, &packet(c, n));
                } else if n == packets(c) {
                    sink.call_ended(call(c), summary(&format!("call-{c}"), t));
                }
            }
            sink.tick(t);
        }
        sink.flush();
        assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
        assert_eq!(sink.recorded, CALLS as u64);
        batched = sink.batched_chunks;
    }
    assert!(batched > 50, "only {batched} chunks went out in batches: the batched path was not exercised");
    let key = store.private_key(b"pass").unwrap();
    let ids = store.index.all_ids().unwrap();
    assert_eq!(ids.len(), CALLS);
    for id in ids {
        match store.verify(id, Some(&key)).unwrap() {
            Verdict::Ok { authenticated: true, chunks } => assert!(chunks > 1),
            v => panic!("call {id}: {v:?}"),
        }
        let (c, call_id, rtp) = read_call(&store, &key, id);
        let want: Vec<Vec<u8>> = (0..packets(c)).map(|n| packet(c, n)).collect();
        assert_eq!(rtp.len(), want.len(), "{call_id}: packet count");
        assert!(rtp == want, "{call_id}: packets differ");
    }
}

/// Starts call 0 and commits its index row; returns a second handle on the store (to read the
/// index and the key while the sink records), the index ids and the recording's path.
fn start_call_0(sink: &mut StoreSink<'_>, root: &std::path::Path) -> (Store, Vec<i64>, std::path::PathBuf) {
    sink.call_started(call(0), "call-0", 0);
    sink.flush();
    let other = Store::open(root).unwrap();
    let ids = other.index.all_ids().unwrap();
    let (rel, _, _) = other.index.file_of(ids[0]).unwrap().unwrap();
    let path = other.abs(&rel);
    (other, ids, path)
}

/// Starts calls `0..n` at time 0 and commits their index rows (so the files can be found; the
/// start records stay pending); returns their recordings' paths.
fn start_calls(sink: &mut StoreSink<'_>, root: &std::path::Path, n: usize) -> Vec<std::path::PathBuf> {
    for c in 0..n {
        sink.call_started(call(c), &format!("call-{c}"), 0);
    }
    sink.flush();
    let other = Store::open(root).unwrap();
    other
        .index
        .all_ids()
        .unwrap()
        .into_iter()
        .map(|id| other.abs(&other.index.file_of(id).unwrap().unwrap().0))
        .collect()
}

/// Chunk writes end on block boundaries (the rest waits for the next write), yet everything
/// recorded reaches the file within a flush interval of capture time, as before.
#[test]
fn chunk_writes_end_on_blocks_and_nothing_waits_longer_than_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let mut sink = store.recorder().unwrap();
    let (other, ids, path) = start_call_0(&mut sink, &root);
    let key = other.private_key(b"pass").unwrap();
    let len = || std::fs::metadata(&path).unwrap().len();
    let mut lengths = std::collections::BTreeSet::new();
    let n = 300;
    for i in 0..n {
        let side = if i % 2 == 0 { Side::Caller } else { Side::Callee };
        sink.media(call(0), (i % 2) as u8, side, i as i64 * 1_000_000, &packet(0, i));
        sink.wait_writes();
        lengths.insert(len());
    }
    assert!(lengths.len() > 4, "only {lengths:?}: the chunks were not written as they filled");
    for l in &lengths {
        assert!(*l == 256 || l % 4096 == 0, "a write ended mid-block: file length {l} (all: {lengths:?})");
    }
    // Nothing more for a flush interval: the last partial chunk and the held tail are written.
    let later = FLUSH_INTERVAL_NS + 500_000_000;
    sink.tick(later);
    sink.wait_writes();
    let contents = read_recording(&path, &key).unwrap();
    assert!(!contents.complete);
    let rtp = contents.records.iter().filter(|r| matches!(r, Record::Rtp { .. })).count();
    assert_eq!(rtp, n, "packets on disk a flush interval after the last one");
    sink.call_ended(call(0), summary("call-0", later));
    sink.flush();
    assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
    drop(sink);
    assert!(matches!(store.verify(ids[0], Some(&key)).unwrap(), Verdict::Ok { authenticated: true, .. }));
    assert!(read_recording(&path, &key).unwrap().complete);
}

/// Writes happen on the sink's writing thread; a write that fails there (here: a call beyond the
/// open-file budget, whose file vanished, so reopening it fails) is reported as the sink's error,
/// naming the file.
#[test]
fn a_failed_write_on_the_writing_thread_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let mut sink = store.recorder().unwrap();
    sink.set_open_file_budget(0);
    let (_, _, path) = start_call_0(&mut sink, &root);
    std::fs::remove_file(&path).unwrap();
    for i in 0..200 {
        sink.media(call(0), 0, Side::Caller, i as i64 * 1_000_000, &packet(0, i));
    }
    sink.call_ended(call(0), summary("call-0", 300_000_000));
    sink.flush();
    let path = path.display().to_string();
    assert!(sink.errors.iter().any(|e| e.contains("I/O error") && e.contains(&path)), "errors: {:?}", sink.errors);
}

/// When many recordings' flush timers fall due at once, one tick writes at most
/// `TICK_WRITES` of them and the next ticks go on where it stopped, until every one is written.
#[test]
fn a_tick_writes_at_most_its_budget_and_the_next_ticks_write_the_rest() {
    use recorder::store::TICK_WRITES;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let calls = 2 * TICK_WRITES + TICK_WRITES / 3;
    let mut sink = store.recorder().unwrap();
    let paths = start_calls(&mut sink, &root, calls);
    assert_eq!(paths.len(), calls);
    sink.wait_writes();
    let header = |p: &std::path::PathBuf| std::fs::metadata(p).unwrap().len();
    let headers: Vec<u64> = paths.iter().map(header).collect();
    let grown = |sink: &StoreSink<'_>| {
        sink.wait_writes();
        paths.iter().zip(&headers).filter(|(p, h)| header(p) > **h).count()
    };
    assert_eq!(grown(&sink), 0, "written before their flush interval was up");
    // A flush interval later every start record is due: the first tick writes its budget's worth.
    let due = FLUSH_INTERVAL_NS + 500_000_000;
    sink.tick(due);
    assert_eq!(grown(&sink), TICK_WRITES);
    sink.tick(due + 1_000_000);
    assert_eq!(grown(&sink), 2 * TICK_WRITES);
    sink.tick(due + 2_000_000);
    assert_eq!(grown(&sink), calls, "the third tick wrote the rest");
    assert!(sink.errors.is_empty(), "{:?}", sink.errors);
}

/// Calls whose packets come slower than a chunk fills (here 12.5 a second, a chunk every 3.5 s)
/// flush by time. Their chunks go out in batches, their MD5 watermarks side by side, and each file
/// still grows once per flush interval while its packets come (plus the packet spacing and the
/// batch's wait); the recordings read back whole and verify.
#[test]
fn slow_calls_flush_by_time_in_batches_within_the_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let (batched, chunks_flushed);
    let n = 250; // 20 s of packets at 80 ms
    let mut sent: Vec<Vec<usize>> = vec![Vec::new(); CALLS];
    {
        let mut sink = store.recorder().unwrap();
        let paths = start_calls(&mut sink, &root, CALLS);
        let size = |p: &std::path::PathBuf| std::fs::metadata(p).unwrap().len();
        let mut grew: Vec<(u64, i64)> = paths.iter().map(|p| (size(p), 0)).collect();
        let mut longest = 0;
        // Every call sends a packet each 80 ms, the calls spread over the interval; a tick each 10 ms.
        for step in 0..n * 8 {
            let t = step as i64 * 10_000_000;
            for c in (0..CALLS).filter(|c| (step + c) % 8 == 0) {
                let k = (step + c) / 8;
                let side = if k % 2 == 0 { Side::Caller } else { Side::Callee };
                sink.media(call(c), (k % 2) as u8, side, t, &packet(c, k));
                sent[c].push(k);
            }
            sink.tick(t);
            sink.wait_writes();
            for (p, (len, at)) in paths.iter().zip(grew.iter_mut()) {
                let now = size(p);
                if now != *len {
                    longest = longest.max(t - *at);
                    *len = now;
                    *at = t;
                }
            }
        }
        // The interval, then the next packet (80 ms apart), the batch's wait and a tick.
        let bound = FLUSH_INTERVAL_NS + 80_000_000 + READY_WAIT_NS + 10_000_000;
        assert!(longest <= bound, "a file did not grow for {longest} ns");
        for c in 0..CALLS {
            sink.call_ended(call(c), summary(&format!("call-{c}"), n as i64 * 80_000_000));
        }
        sink.flush();
        assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
        batched = sink.batched_chunks;
        chunks_flushed = paths.len() as u64 * (n as u64 * 80 / 2000);
    }
    // About one chunk per call per flush interval went out by time; nearly all of them batched
    // (the final chunks, written by `call_ended`, are not).
    assert!(batched * 10 >= chunks_flushed * 8, "{batched} chunks batched of about {chunks_flushed} flushed by time");
    let key = store.private_key(b"pass").unwrap();
    for id in store.index.all_ids().unwrap() {
        assert!(matches!(store.verify(id, Some(&key)).unwrap(), Verdict::Ok { authenticated: true, .. }));
        let (c, call_id, rtp) = read_call(&store, &key, id);
        let want: Vec<Vec<u8>> = sent[c].iter().map(|&k| packet(c, k)).collect();
        assert!(rtp == want, "{call_id}: {} packets read back, {} sent", rtp.len(), want.len());
    }
}
