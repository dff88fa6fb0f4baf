//! The per-RTP-packet path allocates nothing in steady state: decode, dispatch (steering),
//! assembly (engine) and the encrypted store, with a counting global allocator around them.
//!
//! Steady state means every call is up and every buffer has grown to its working size; the
//! measured window (three seconds of capture time, 200 calls, 60,000 RTP packets) includes the
//! once-a-second work too: chunk encryption and writes, index commits, steering sweeps.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use callrec_bench::pipeline::{Frames, Pipeline, Stage, bench_store};
use callrec_bench::traffic::{Generator, Workload};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn steady_state_allocations(stage: Stage) -> (u64, usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = (stage == Stage::Store).then(|| bench_store(dir.path()).unwrap());
    let mut p = Pipeline::new(stage, store.as_mut()).unwrap();
    let w =
        Workload { calls: 200, duration_ns: 60_000_000_000, ramp_ns: 500_000_000, dtmf_every: 0, ..Default::default() };
    let mut g = Generator::new(w);
    let (mut warm, mut window, mut scratch) = (Frames::default(), Frames::default(), Vec::new());
    let t0 = g.peek_ts().unwrap();
    warm.fill_until(&mut g, t0 + 3_000_000_000, &mut scratch);
    window.fill_until(&mut g, t0 + 6_000_000_000, &mut scratch);
    p.run(&warm);
    let before = ALLOCS.load(Ordering::Relaxed);
    p.run(&window);
    let n = ALLOCS.load(Ordering::Relaxed) - before;
    assert!(p.store_errors().is_empty(), "{:?}", p.store_errors());
    (n, window.len())
}

/// One test, so no other test thread allocates while the counter is read.
#[test]
fn per_rtp_packet_path_allocates_nothing_in_steady_state() {
    let (n, packets) = steady_state_allocations(Stage::Assembly);
    assert!(packets >= 29_000, "window too small: {packets}");
    assert_eq!(n, 0, "{n} allocations over {packets} RTP packets (decode + dispatch + assembly)");
    let (n, packets) = steady_state_allocations(Stage::Store);
    assert_eq!(n, 0, "{n} allocations over {packets} RTP packets (… + encrypted chunks + index commits)");
}
