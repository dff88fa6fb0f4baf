//! Frames on their way from a reader to a worker: copied once into a batch, steered by call.
//!
//! Shared by live capture (ring → workers) and parallel import (file → workers), so both hand
//! workers the same thing: the original frame, or for a datagram the reader reassembled from IP
//! fragments, one synthetic frame holding it whole (a worker's decoder has not seen the fragments).

use capture_core::Packet;

/// One frame handed to a worker: time, link type, and where its bytes lie in the batch buffer.
#[derive(Clone, Copy)]
pub struct Item {
    pub ts: i64,
    pub linktype: u32,
    pub off: u32,
    pub len: u32,
}

/// Frames for one worker, copied once out of the ring or file. Recycled through the worker's pool.
#[derive(Default)]
pub struct Batch {
    pub data: Vec<u8>,
    pub items: Vec<Item>,
}

pub const BATCH_FRAMES: usize = 256;
pub const BATCH_BYTES: usize = 256 * 1024;

impl Batch {
    /// Appends `frame`, whose decoded packet is `pkt`.
    pub fn push(&mut self, ts: i64, linktype: u32, frame: &[u8], pkt: &Packet<'_>) {
        let off = self.data.len() as u32;
        if frame.as_ptr_range().contains(&pkt.payload.as_ptr()) || pkt.payload.is_empty() {
            self.data.extend_from_slice(frame);
            self.items.push(Item { ts, linktype, off, len: frame.len() as u32 });
        } else {
            let f = capture_core::synth::Flow { src: pkt.src, dst: pkt.dst, sport: pkt.sport, dport: pkt.dport };
            let whole = capture_core::synth::udp_frame(&f, pkt.payload);
            self.data.extend_from_slice(&whole);
            self.items.push(Item {
                ts,
                linktype: capture_core::decode::linktype::ETHERNET,
                off,
                len: whole.len() as u32,
            });
        }
    }

    pub fn full(&self) -> bool {
        self.items.len() >= BATCH_FRAMES || self.data.len() >= BATCH_BYTES
    }

    pub fn frames(&self) -> impl Iterator<Item = (&Item, &[u8])> {
        self.items.iter().map(|it| (it, &self.data[it.off as usize..(it.off + it.len) as usize]))
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.data.clear();
    }
}
