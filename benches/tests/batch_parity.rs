//! The batched path (stage, steer with look-ahead, `Engine::handle_batch`) that live capture and
//! import run records exactly what handing the engine one packet at a time records: every call's
//! summary and every media packet, in order. The look-ahead only prefetches; this checks that it
//! changes nothing, with calls starting and ending inside batches, DTMF, and batches that end
//! in the middle of a call's setup.

use callrec_bench::traffic::{Generator, Workload};
use capture_core::{Decoded, Decoder};
use recorder::batch::{Batch, steer};
use recorder::memsink::MemorySink;
use recorder::steer::{SteerConfig, Steering};
use recorder::{Config, Engine};

fn frames() -> Vec<(i64, Vec<u8>)> {
    // 400 calls of 3 s starting over 4 s: calls begin and end throughout.
    let w = Workload {
        calls: 400,
        duration_ns: 3_000_000_000,
        ramp_ns: 4_000_000_000,
        dtmf_every: 3,
        ..Default::default()
    };
    let mut g = Generator::new(w);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(ts) = g.next_frame(&mut buf) {
        out.push((ts, buf.clone()));
    }
    out
}

fn one_at_a_time(frames: &[(i64, Vec<u8>)]) -> MemorySink {
    let (mut d, mut e, mut sink) = (Decoder::default(), Engine::new(Config::default()), MemorySink::new(true));
    for (ts, f) in frames {
        if let Ok(Decoded::Packet(p)) = d.decode(*ts, 1, f) {
            e.handle(&p, *ts, &mut sink);
        }
    }
    e.finish(&mut sink);
    sink
}

/// Batches of `size` frames (the last one shorter), as a reader stages them. With `drain` the
/// worker's batch is handled after every staged batch (so steering hands the staged batch over
/// whole); without, it fills across staged batches (so steering copies packets into it) and is
/// handled when full and at the end.
fn batched(frames: &[(i64, Vec<u8>)], size: usize, drain: bool) -> MemorySink {
    let (mut d, mut e, mut sink) = (Decoder::default(), Engine::new(Config::default()), MemorySink::new(true));
    let mut steering = Steering::new(SteerConfig { workers: 1, ..Default::default() });
    let (mut staged, mut worker) = (Batch::default(), [Batch::default()]);
    let (mut learned, mut kernel) = (Vec::new(), Vec::new());
    let mut unmatched = 0;
    for chunk in frames.chunks(size) {
        for (ts, f) in chunk {
            if let Ok(Decoded::Packet(p)) = d.decode(*ts, 1, f) {
                staged.push(*ts, &p);
            }
        }
        unmatched += steer(&mut staged, &mut steering, &mut learned, &mut kernel, &mut worker, |_, b| {
            e.handle_batch(&b.packets, &b.data, &mut sink);
            b.clear();
        });
        if drain {
            e.handle_batch(&worker[0].packets, &worker[0].data, &mut sink);
            worker[0].clear();
        }
    }
    e.handle_batch(&worker[0].packets, &worker[0].data, &mut sink);
    e.finish(&mut sink);
    assert_eq!(unmatched, 0, "steering dropped packets of known calls");
    sink
}

#[test]
fn batched_path_records_exactly_what_one_packet_at_a_time_records() {
    let frames = frames();
    let want = one_at_a_time(&frames);
    assert_eq!(want.calls.len(), 400);
    assert!(want.media_packets > 100_000, "{} media packets", want.media_packets);
    assert!(want.calls.iter().any(|(s, _)| !s.dtmf.is_empty()), "the workload has DTMF");
    for (size, drain) in [(1, true), (7, true), (256, true), (7, false), (100, false)] {
        let got = batched(&frames, size, drain);
        assert_eq!(got.media_packets, want.media_packets, "batch size {size}, drain {drain}");
        assert_eq!(format!("{:?}", got.calls), format!("{:?}", want.calls), "batch size {size}, drain {drain}");
    }
}
