//! A recorder writes its index rows on a thread of its own: while someone else holds the index's
//! write lock (another recorder's commit, a long `callrec delete`, an operator's `sqlite3`), the
//! thread recording calls goes on, and the rows arrive once the lock is released, before a flush
//! returns.

use std::time::{Duration, Instant};

use recorder::engine::{CallRef, Sink};
use recorder::store::Store;

#[test]
fn a_locked_index_does_not_hold_up_the_recording_thread() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let mut store = Store::init(&root, b"pass").unwrap();
    let mut sink = store.recorder().unwrap();
    sink.call_started(CallRef { slot: 0, uid: 1 }, "call-0", 0);
    // Another connection takes the write lock (BEGIN IMMEDIATE) and keeps it.
    let mut holder = Store::open(&root).unwrap();
    holder.index.begin().unwrap();
    // The once-a-second commit: on the recording thread it would wait for the lock up to the
    // index's busy timeout (10 s) and then fail.
    let t = Instant::now();
    sink.tick(1_500_000_000);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "the recording thread waited {took:?} for the index lock");
    let reader = Store::open(&root).unwrap();
    assert!(reader.index.all_ids().unwrap().is_empty(), "a row was written through the lock");
    // Released: the row arrives, and a flush waits for it.
    holder.index.commit().unwrap();
    sink.flush();
    assert!(sink.errors.is_empty(), "store errors: {:?}", sink.errors);
    assert_eq!(reader.index.all_ids().unwrap().len(), 1);
}
