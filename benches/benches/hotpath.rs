//! Criterion micro-benches of the per-packet path, in steady state with 30,000 calls in progress
//! (so stream lookups hit a table of realistic size, not a warm cache line):
//! decode, decode+dispatch, +assembly (stream lookup, RTP statistics), +encrypted write, and the
//! chunk encryption and the MD5 watermark alone. Throughput is in packets (elements) per second on one core;
//! `store_30k_calls_thread_cpu` counts the recording thread's CPU time instead of wall time.
//!
//!     cargo bench -p callrec-bench --bench hotpath
//!
//! `HOTPATH_STAGES=dispatch,assembly` runs only those stages' benches (each stage's setup, which
//! for the store creates 30,000 recordings, runs whatever criterion's name filter says).

use std::time::{Duration, Instant};

use callrec_bench::pipeline::{Frames, Pipeline, Stage, bench_store, raise_fd_limit};
use callrec_bench::traffic::{Generator, Workload};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use md5::Digest;
use recorder::store::md5x::{self, Job, Lanes, Md5State};

/// The allocator `callrec` uses (see its main.rs), so the benches measure the same heap.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    if stage == Stage::Store {
        // The recording thread's own CPU time (user + system), not wall time: the store hands
        // sealed chunks to its write-back thread, whose page-cache copy runs on the other core
        // (and on this VM waits for the host to fault pages in); wall time above includes waiting
        // for it when its buffer pool runs out. This is the per-core cost of the path itself.
        group.bench_function("store_30k_calls_thread_cpu", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    frames.clear();
                    frames.fill(&mut g, BATCH, &mut scratch);
                    let t = thread_cpu();
                    p.run(&frames);
                    spent += thread_cpu() - t;
                }
                spent
            })
        });
    }
    group.finish();
    assert!(p.store_errors().is_empty(), "store errors: {:?}", p.store_errors());
}

/// CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn hotpath(c: &mut Criterion) {
    raise_fd_limit();
    let only = std::env::var("HOTPATH_STAGES").ok();
    for stage in [Stage::Decode, Stage::Dispatch, Stage::Assembly, Stage::Store] {
        if only.as_ref().is_none_or(|o| o.split(',').any(|n| n == stage.name())) {
            stage_bench(c, stage);
        }
    }
    // The chunk cipher alone, on an 8 KiB chunk (what a recording flushes): bytes per second.
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7u8; 32]));
    let mut buf = vec![0x55u8; 8 * 1024];
    let mut group = c.benchmark_group("crypto");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    let mut n = 0u64;
    group.bench_function("chacha20poly1305_8KiB_chunk", |b| {
        b.iter(|| {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[..8].copy_from_slice(&n.to_le_bytes());
            cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), b"file-id", &mut buf).expect("encrypt")
        })
    });
    // ring's two AEADs: what the store seals with (AES-256-GCM where the CPU has AES instructions,
    // else ChaCha20-Poly1305; `recorder::store::file::Cipher`).
    for (name, alg) in [
        ("ring_chacha20poly1305_8KiB_chunk", &ring::aead::CHACHA20_POLY1305),
        ("ring_aes256gcm_8KiB_chunk", &ring::aead::AES_256_GCM),
    ] {
        let ring_key = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &[7u8; 32]).unwrap());
        group.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&n.to_le_bytes());
                ring_key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(b"file-id"),
                        &mut buf,
                    )
                    .expect("encrypt")
            })
        });
    }
    group.finish();
    watermark(c);
}

/// The MD5 watermark over 16 recordings' 8 KiB chunks: RustCrypto's md-5 one chunk at a time,
/// callrec's own one-stream MD5, and callrec's lanes (16 files side by side with AVX-512, 8 with
/// AVX2), all in one run so the ratios are side by side.
fn watermark(c: &mut Criterion) {
    const FILES: usize = 16;
    let chunks: Vec<Vec<u8>> = (0..FILES).map(|i| vec![i as u8 ^ 0x5a; 8 * 1024 + 20]).collect();
    let mut group = c.benchmark_group("watermark");
    group.throughput(Throughput::Bytes((FILES * chunks[0].len()) as u64));
    let mut md5s: Vec<md5::Md5> = (0..FILES).map(|_| md5::Md5::new()).collect();
    group.bench_function("md5_crate_16x8KiB", |b| {
        b.iter(|| {
            for (h, c) in md5s.iter_mut().zip(&chunks) {
                h.update(c);
            }
        })
    });
    let mut states: Vec<Md5State> = vec![Md5State::new(); FILES];
    for path in [Lanes::Scalar, md5x::lanes()] {
        group.bench_function(format!("callrec_{path:?}_16x8KiB").to_lowercase(), |b| {
            b.iter(|| {
                md5x::update_many_with(path, states.iter_mut().zip(&chunks).map(|(state, data)| Job { state, data }));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hotpath);
criterion_main!(benches);
