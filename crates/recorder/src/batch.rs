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
/// becomes the worker's batch: no copy.
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

    #[test]
    fn a_pushed_packet_comes_back_with_its_addresses_time_and_payload() {
        let f = Flow {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            sport: 4000,
            dport: 5004,
        };
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
}
