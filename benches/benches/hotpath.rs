//! Criterion micro-benches of the per-packet path, in steady state with 30,000 calls in progress
//! (so stream lookups hit a table of realistic size, not a warm cache line):
//! decode, decode+dispatch, +assembly (stream lookup, RTP statistics), +encrypted write, and the
//! chunk encryption and the MD5 watermark alone. Throughput is in packets (elements) per second on one core.
//!
//!     cargo bench -p callrec-bench --bench hotpath

use std::time::{Duration, Instant};

use callrec_bench::pipeline::{Frames, Pipeline, Stage, bench_store, raise_fd_limit};
use callrec_bench::traffic::{Generator, Workload};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use md5::Digest;

const CALLS: u32 = 30_000;
const BATCH: usize = 8192;

fn workload() -> Workload {
    // All calls set up within the first second, then an hour of media: the measured window is
    // steady state (no call starts or ends in it).
    Workload {
        calls: CALLS,
        duration_ns: 3_600_000_000_000,
        ramp_ns: 1_000_000_000,
        dtmf_every: 10,
        ..Default::default()
    }
}

fn stage_bench(c: &mut Criterion, stage: Stage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = (stage == Stage::Store).then(|| bench_store(dir.path()).expect("store"));
    let mut p = Pipeline::new(stage, store.as_mut()).expect("pipeline");
    let mut g = Generator::new(workload());
    let mut frames = Frames::default();
    let mut scratch = Vec::new();
    // Warm-up outside measurement: every call's SIP and first media.
    let t0 = g.peek_ts().expect("frames");
    frames.fill_until(&mut g, t0 + 1_500_000_000, &mut scratch);
    p.run(&frames);
    let mut group = c.benchmark_group("hotpath");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(6));
    group.sample_size(30);
    group.bench_function(format!("{}_30k_calls", stage.name()), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                frames.clear();
                frames.fill(&mut g, BATCH, &mut scratch);
                let t = Instant::now();
                p.run(&frames);
                spent += t.elapsed();
            }
            spent
        })
    });
    group.finish();
    assert!(p.store_errors().is_empty(), "store errors: {:?}", p.store_errors());
}

fn hotpath(c: &mut Criterion) {
    raise_fd_limit();
    for stage in [Stage::Decode, Stage::Dispatch, Stage::Assembly, Stage::Store] {
        stage_bench(c, stage);
    }
    // The chunk cipher alone, on a 60 KiB chunk (what a recording flushes): bytes per second.
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let mut buf = vec![0x55u8; 60 * 1024];
    let mut group = c.benchmark_group("crypto");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    let mut n = 0u64;
    group.bench_function("chacha20poly1305_60KiB_chunk", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), b"file-id", &mut buf).expect("encrypt")
        })
    });
    // The MD5 watermark over the same chunk.
    group.bench_function("md5_60KiB_chunk", |b| b.iter(|| md5::Md5::digest(&buf)));
    group.finish();
}

criterion_group!(benches, hotpath);
criterion_main!(benches);
