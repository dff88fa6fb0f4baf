//! A [`Sink`] that keeps everything in memory: for tests, fuzzing and benchmarks of the engine alone.

use crate::engine::{CallRef, Sink};
use crate::model::{CallSummary, Side};

#[derive(Debug, Clone)]
pub struct StoredPacket {
    pub stream: u8,
    pub side: Side,
    pub ts_ns: i64,
    pub rtp: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct MemorySink {
    /// Finished calls with their packets, in the order they ended.
    pub calls: Vec<(CallSummary, Vec<StoredPacket>)>,
    open: Vec<Option<Vec<StoredPacket>>>,
    /// Keep packet bytes (off: count only, for benchmarks).
    pub keep_packets: bool,
    pub media_packets: u64,
}

impl MemorySink {
    pub fn new(keep_packets: bool) -> Self {
        MemorySink { keep_packets, ..Default::default() }
    }
}

impl Sink for MemorySink {
    fn call_started(&mut self, call: CallRef, _call_id: &str, _start_ns: i64) {
        let slot = call.slot as usize;
        if self.open.len() <= slot {
            self.open.resize_with(slot + 1, || None);
        }
        self.open[slot] = Some(Vec::new());
    }

    fn payload_types(&mut self, _call: CallRef, _side: Side, _map: &[(u8, &str, u32)]) {}

    fn media(&mut self, call: CallRef, stream: u8, side: Side, ts_ns: i64, rtp: &[u8]) {
        self.media_packets += 1;
        if self.keep_packets
            && let Some(Some(v)) = self.open.get_mut(call.slot as usize)
        {
            v.push(StoredPacket { stream, side, ts_ns, rtp: rtp.to_vec() });
        }
    }

    fn call_ended(&mut self, call: CallRef, summary: CallSummary) {
        let packets = self.open.get_mut(call.slot as usize).and_then(Option::take).unwrap_or_default();
        self.calls.push((summary, packets));
    }
}
