//! Packets on their way from a reader to a worker: decoded once, by the reader, and their payload
//! copied once into a batch; steered by call with look-ahead.
//!
//! Shared by live capture (ring → workers), parallel import (file → workers) and single-threaded
//! import (file → engine), so all three run the same per-packet path the hot-path benches measure
//! (`callrec_bench::pipeline`): the reader decodes frames into a staging batch, then
//! [`steer`] routes the whole batch with [`Steering::prefetch`] a few packets ahead and moves each
//! packet into its worker's batch, and the worker hands the batch to
//! [`crate::Engine::handle_batch`]. With tens of thousands of calls every table entry is a
//! cache miss; seeing a batch at once is what lets both sides ask for several in parallel.

use crate::engine::AHEAD_SLOT;
use crate::steer::{KernelChange, Learned, Steering};
use capture_core::{Held, Packet};

/// Decoded packets, their payloads in `data`. Recycled through the worker's pool.
#[derive(Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub packets: Vec<Held>,
}

pub const BATCH_FRAMES: usize = 256;
pub const BATCH_BYTES: usize = 256 * 1024;

impl Batch {
    /// Appends `pkt`, captured at `ts`: its addresses, and a copy of its payload (which may lie
    /// in a frame or, for a datagram reassembled from fragments, in the decoder).
    pub fn push(&mut self, ts: i64, pkt: &Packet<'_>) {
        let off = self.data.len();
        self.data.extend_from_slice(pkt.payload);
        let copy = Packet { payload: &self.data[off..], ..*pkt };
        let held = copy.hold(ts, &self.data).expect("the payload was just copied into the batch");
        self.packets.push(held);
    }

    /// Appends a packet held in another batch's buffer `base`.
    fn push_held(&mut self, h: &Held, base: &[u8]) {
        self.push(h.ts, &h.packet(base));
    }

    pub fn full(&self) -> bool {
        self.packets.len() >= BATCH_FRAMES || self.data.len() >= BATCH_BYTES
    }

    /// Holds more than a batch filled until [`Batch::full`] can: more than [`BATCH_FRAMES`]
    /// packets, or more than [`BATCH_BYTES`] and one largest datagram's payload.
    fn oversized(&self) -> bool {
        self.packets.len() > BATCH_FRAMES || self.data.len() > BATCH_BYTES + usize::from(u16::MAX)
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Capture time of the last packet.
    pub fn last_ts(&self) -> Option<i64> {
        self.packets.last().map(|h| h.ts)
    }

    pub fn clear(&mut self) {
        self.packets.clear();
        self.data.clear();
    }
}

/// Routes every packet of `staged` (in order) and moves it into `batches[worker]`, calling
/// `full(worker, batch)` whenever a batch fills (the caller sends it and leaves an empty one).
/// What steering learned and changed accumulates in `learned` and `kernel`. Returns how many
/// packets no worker wanted (UDP neither SIP nor media of a known call). Leaves `staged` empty.
///
/// With one worker whose batch is empty, the routed packets stay where they are and `staged`
/// becomes the worker's batch: no copy. Unless `staged` holds more than a batch: then it is
/// copied into batches of the usual size like with several workers, so that what a worker's
/// queue and pool hold stays bounded by their number of batches (callers should stage a batch
/// at a time, and keep this path).
pub fn steer(
    staged: &mut Batch,
    steering: &mut Steering,
    learned: &mut Vec<Learned>,
    kernel: &mut Vec<KernelChange>,
    batches: &mut [Batch],
    mut full: impl FnMut(usize, &mut Batch),
) -> u64 {
    let mut unmatched = 0;
    // The first packets have nobody ahead of them to prefetch their slots: ask for all at once.
    staged.packets.iter().take(AHEAD_SLOT).for_each(|a| steering.prefetch(&a.packet(&staged.data)));
    if let [only] = batches
        && only.is_empty()
        && !staged.oversized()
    {
        // Keep the routed packets in place (their payloads do not move), then swap.
        let Batch { data, packets } = staged;
        let mut kept = 0;
        for i in 0..packets.len() {
            if let Some(a) = packets.get(i + AHEAD_SLOT) {
                steering.prefetch(&a.packet(data));
            }
            let h = packets[i];
            if steering.route(&h.packet(data), h.ts, learned, kernel).is_some() {
                packets[kept] = h;
                kept += 1;
            } else {
                unmatched += 1;
            }
        }
        packets.truncate(kept);
        std::mem::swap(staged, only);
        if only.full() {
            full(0, only);
        }
        staged.clear();
        return unmatched;
    }
    let base = &staged.data[..];
    for (i, h) in staged.packets.iter().enumerate() {
        if let Some(a) = staged.packets.get(i + AHEAD_SLOT) {
            steering.prefetch(&a.packet(base));
        }
        let Some(w) = steering.route(&h.packet(base), h.ts, learned, kernel) else {
            unmatched += 1;
            continue;
        };
        let w = w as usize;
        batches[w].push_held(h, base);
        if batches[w].full() {
            full(w, &mut batches[w]);
        }
    }
    staged.clear();
    unmatched
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_core::synth::{Flow, udp_frame};
    use capture_core::{Decoded, Decoder, Transport};
    use std::net::{IpAddr, Ipv4Addr};

    fn decoded(frame: &[u8]) -> Packet<'_> {
        // A fresh decoder per frame: these frames are whole, so nothing is held.
        let mut d = Decoder::default();
        let (src, dst, sport, dport, transport, len) =
            match d.decode(7, capture_core::decode::linktype::ETHERNET, frame).unwrap() {
                Decoded::Packet(p) => (p.src, p.dst, p.sport, p.dport, p.transport, p.payload.len()),
                other => panic!("{other:?}"),
            };
        Packet { src, dst, sport, dport, transport, payload: &frame[frame.len() - len..] }
    }

    fn flow(sport: u16, dport: u16) -> Flow {
        Flow { src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), sport, dport }
    }

    #[test]
    fn a_pushed_packet_comes_back_with_its_addresses_time_and_payload() {
        let f = flow(4000, 5004);
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| udp_frame(&f, &vec![i; 10 + i as usize])).collect();
        let mut b = Batch::default();
        for (i, fr) in frames.iter().enumerate() {
            b.push(100 + i as i64, &decoded(fr));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.last_ts(), Some(102));
        for (i, h) in b.packets.iter().enumerate() {
            let p = h.packet(&b.data);
            assert_eq!((h.ts, p.src, p.dst, p.sport, p.dport), (100 + i as i64, f.src, f.dst, 4000, 5004));
            assert_eq!(p.transport, Transport::Udp);
            assert_eq!(p.payload, &vec![i as u8; 10 + i][..]);
        }
        b.clear();
        assert!(b.is_empty() && b.data.is_empty());
    }

    /// With one worker, more than a batch staged at once (an AF_PACKET block's worth) reaches
    /// the worker as batches of the usual size, every packet once and in order.
    #[test]
    fn one_worker_gets_an_oversized_stage_in_batches_of_the_usual_size() {
        let f = flow(5060, 5060);
        let sip = |i: usize| {
            format!("OPTIONS sip:b@x SIP/2.0\r\nCall-ID: c{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        };
        let frames: Vec<Vec<u8>> = (0..3 * BATCH_FRAMES + 7).map(|i| udp_frame(&f, sip(i).as_bytes())).collect();
        let mut staged = Batch::default();
        for (i, fr) in frames.iter().enumerate() {
            staged.push(i as i64, &decoded(fr));
        }
        assert!(staged.oversized());
        let mut steering = Steering::new(crate::steer::SteerConfig { workers: 1, ..Default::default() });
        let (mut learned, mut kernel) = (Vec::new(), Vec::new());
        let mut batches = vec![Batch::default()];
        let mut sent = Vec::new();
        let unmatched = steer(&mut staged, &mut steering, &mut learned, &mut kernel, &mut batches, |_, b| {
            sent.push(std::mem::take(b));
        });
        assert_eq!(unmatched, 0);
        assert!(staged.is_empty());
        sent.push(std::mem::take(&mut batches[0]));
        assert!(sent.iter().all(|b| b.len() <= BATCH_FRAMES && !b.oversized()), "a batch over the usual size went out");
        let times: Vec<i64> = sent.iter().flat_map(|b| b.packets.iter().map(|h| h.ts)).collect();
        assert_eq!(times, (0..frames.len() as i64).collect::<Vec<_>>());
        // A batch's worth still takes the no-copy path: the staged buffer itself is handed on.
        for (i, fr) in frames.iter().take(BATCH_FRAMES / 2).enumerate() {
            staged.push(i as i64, &decoded(fr));
        }
        let at = staged.data.as_ptr();
        steer(&mut staged, &mut steering, &mut learned, &mut kernel, &mut batches, |_, _| {});
        assert_eq!(batches[0].data.as_ptr(), at);
        assert_eq!(batches[0].len(), BATCH_FRAMES / 2);
    }
}
