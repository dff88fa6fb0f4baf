//! RTP (RFC 3550) and RTCP views, per-stream receive statistics (loss, duplicates, reordering,
//! interarrival jitter) and an E-model MOS estimate, plus RFC 4733 telephone-events.
//!
//! Everything here is fixed-size state updated in place: the per-packet path allocates nothing.

/// A checked view of an RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    payload_at: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Checks version 2, the CSRC list, header extension and padding; `None` if it is not RTP.
    pub fn new_checked(buf: &'a [u8]) -> Option<Self> {
        if buf.len() < 12 || buf[0] >> 6 != 2 {
            return None;
        }
        let cc = (buf[0] & 0x0f) as usize;
        let mut at = 12 + cc * 4;
        if buf[0] & 0x10 != 0 {
            let ext = buf.get(at + 2..at + 4)?;
            at += 4 + u16::from_be_bytes([ext[0], ext[1]]) as usize * 4;
        }
        let mut end = buf.len();
        if buf[0] & 0x20 != 0 {
            let pad = *buf.last()? as usize;
            end = end.checked_sub(pad)?;
        }
        if at > end {
            return None;
        }
        Some(RtpPacket { buf, payload_at: at, payload_end: end })
    }

    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_at..self.payload_end]
    }
}

/// RTCP packet types 200..=204 (SR, RR, SDES, BYE, APP), plus 205/206 feedback.
pub fn looks_like_rtcp(b: &[u8]) -> bool {
    b.len() >= 8 && b[0] >> 6 == 2 && (200..=207).contains(&b[1])
}

/// One report block from an SR or RR: what the sender of the report heard from `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub jitter: u32,
}

/// Walks a compound RTCP packet and calls `f` for every report block.
pub fn rtcp_report_blocks(mut b: &[u8], mut f: impl FnMut(ReportBlock)) {
    while b.len() >= 8 && b[0] >> 6 == 2 {
        let count = (b[0] & 0x1f) as usize;
        let len = (u16::from_be_bytes([b[2], b[3]]) as usize + 1) * 4;
        let Some(pkt) = b.get(..len) else { return };
        let first_block = match pkt[1] {
            200 => 28,
            201 => 8,
            _ => usize::MAX,
        };
        if first_block != usize::MAX {
            for i in 0..count {
                let at = first_block + i * 24;
                let Some(rb) = pkt.get(at..at + 24) else { break };
                let cl = ((rb[5] as i32) << 16 | (rb[6] as i32) << 8 | rb[7] as i32) << 8 >> 8;
                f(ReportBlock {
                    ssrc: u32::from_be_bytes([rb[0], rb[1], rb[2], rb[3]]),
                    fraction_lost: rb[4],
                    cumulative_lost: cl,
                    jitter: u32::from_be_bytes([rb[12], rb[13], rb[14], rb[15]]),
                });
            }
        }
        b = &b[len..];
    }
}

/// Receive statistics of one stream (one SSRC, one direction).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamStats {
    pub packets: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub bytes: u64,
    base_seq: u32,
    /// Highest extended sequence number seen.
    max_ext: u32,
    /// Bit i set: extended sequence max_ext - i was received (for duplicate detection).
    recent: u64,
    started: bool,
    // Jitter (RFC 3550 A.8), in timestamp units scaled by 16.
    jitter_q4: u64,
    last_transit: Option<i64>,
    pub first_ts_ns: i64,
    pub last_ts_ns: i64,
}

/// `ns × clock / 10⁹` (truncated toward zero, kept to 64 bits as `as i64` would) without the
/// 128-bit division that costs every RTP packet a call into compiler-builtins (perf: ~1.5 % of
/// the hot path at 30,000 calls): the whole seconds and the rest are scaled apart, and both
/// divisions are by a constant. `rest × clock` stays below 10⁹ × 2³² < 2⁶³. Also how export
/// places audio in time.
#[inline]
pub(crate) fn ns_to_units(ns: i64, clock: u32) -> i64 {
    let clock = clock as i64;
    let (secs, rest) = (ns / 1_000_000_000, ns % 1_000_000_000);
    secs.wrapping_mul(clock).wrapping_add(rest * clock / 1_000_000_000)
}

/// What [`StreamStats::update`] decided about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    Late,
    Duplicate,
}

impl StreamStats {
    /// Accounts one packet. `clock` is the RTP clock rate (Hz) for jitter.
    pub fn update(&mut self, seq: u16, rtp_ts: u32, arrival_ns: i64, clock: u32, bytes: usize) -> Arrival {
        if !self.started {
            self.started = true;
            self.base_seq = seq as u32 | 0x1_0000; // start in cycle 1 so early reordering cannot underflow
            self.max_ext = self.base_seq;
            self.recent = 1;
            self.first_ts_ns = arrival_ns;
            self.account(rtp_ts, arrival_ns, clock, bytes);
            return Arrival::InOrder;
        }
        // Extend seq to the cycle closest to max_ext.
        let max = self.max_ext;
        let cand = (max & !0xffff) | seq as u32;
        let ext = [cand.wrapping_sub(0x1_0000), cand, cand.wrapping_add(0x1_0000)]
            .into_iter()
            .min_by_key(|&c| (c as i64 - max as i64).unsigned_abs())
            .unwrap();
        let arrival = if ext > max {
            let shift = ext - max;
            self.recent = if shift >= 64 { 1 } else { (self.recent << shift) | 1 };
            self.max_ext = ext;
            Arrival::InOrder
        } else {
            let back = max - ext;
            if back < 64 && self.recent & (1 << back) != 0 {
                Arrival::Duplicate
            } else {
                if back < 64 {
                    self.recent |= 1 << back;
                }
                Arrival::Late
            }
        };
        match arrival {
            Arrival::Duplicate => self.duplicates += 1,
            Arrival::Late => {
                self.out_of_order += 1;
                self.account(rtp_ts, arrival_ns, clock, bytes);
            }
            Arrival::InOrder => self.account(rtp_ts, arrival_ns, clock, bytes),
        }
        arrival
    }

    fn account(&mut self, rtp_ts: u32, arrival_ns: i64, clock: u32, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.last_ts_ns = arrival_ns;
        let clock = clock.max(1);
        let arrival_units = ns_to_units(arrival_ns, clock);
        let transit = arrival_units.wrapping_sub(rtp_ts as i64);
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).unsigned_abs();
            // Ignore absurd jumps (timestamp resets): they are not network jitter.
            if d < clock as u64 * 10 {
                let j = self.jitter_q4 as i64;
                let j = j + ((d as i64 * 16) - j) / 16;
                self.jitter_q4 = j.max(0) as u64;
            }
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected from the sequence range seen.
    pub fn expected(&self) -> u64 {
        if !self.started { 0 } else { (self.max_ext - self.base_seq) as u64 + 1 }
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self, clock: u32) -> f64 {
        (self.jitter_q4 as f64 / 16.0) * 1000.0 / clock.max(1) as f64
    }

    /// E-model (ITU-T G.107, simplified) MOS estimate from loss and jitter, for narrowband voice.
    pub fn mos(&self, clock: u32) -> f64 {
        let expected = self.expected().max(1) as f64;
        let loss_pct = 100.0 * self.lost() as f64 / expected;
        mos_from(loss_pct, self.jitter_ms(clock))
    }
}

/// MOS from packet loss (percent) and jitter (ms), assuming 20 ms one-way base latency.
pub fn mos_from(loss_pct: f64, jitter_ms: f64) -> f64 {
    let effective_latency = 20.0 + 2.0 * jitter_ms + 10.0;
    let mut r = if effective_latency < 160.0 {
        93.2 - effective_latency / 40.0
    } else {
        93.2 - (effective_latency - 120.0) / 10.0
    };
    r -= 2.5 * loss_pct;
    let r = r.clamp(0.0, 100.0);
    let mos = 1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r);
    (mos.clamp(1.0, 4.5) * 100.0).round() / 100.0
}

/// An RFC 4733 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(p: &[u8]) -> Option<Self> {
        let b = p.get(..4)?;
        Some(TelephoneEvent { event: b[0], end: b[1] & 0x80 != 0, duration: u16::from_be_bytes([b[2], b[3]]) })
    }

    /// The DTMF character, for events 0–16.
    pub fn digit(&self) -> Option<char> {
        dtmf_char(self.event)
    }
}

pub fn dtmf_char(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => (b'0' + event) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + event - 12) as char,
        16 => '!',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32) -> Vec<u8> {
        let mut v = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        v[2..4].copy_from_slice(&seq.to_be_bytes());
        v[4..8].copy_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(&[0xff; 160]);
        v
    }

    #[test]
    fn ns_to_units_is_the_128_bit_product_and_quotient() {
        let reference = |ns: i64, clock: u32| (ns as i128 * clock as i128 / 1_000_000_000) as i64;
        let times = [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_763_942_400_123_456_789, // 2025, as captures carry
            -1,
            -999_999_999,
            -1_000_000_001,
            -1_763_942_400_123_456_789,
            i64::MAX,
            i64::MIN,
        ];
        let clocks = [1, 8_000, 16_000, 48_000, 90_000, u32::MAX];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random = (0..10_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as i64
        });
        for ns in times.into_iter().chain(random) {
            for clock in clocks {
                assert_eq!(ns_to_units(ns, clock), reference(ns, clock), "{ns} ns at {clock} Hz");
            }
        }
    }

    #[test]
    fn view() {
        let b = rtp(7, 1600);
        let p = RtpPacket::new_checked(&b).unwrap();
        assert_eq!((p.sequence(), p.timestamp(), p.ssrc(), p.payload().len()), (7, 1600, 1, 160));
        assert!(RtpPacket::new_checked(&b[..11]).is_none());
    }

    #[test]
    fn loss_dup_reorder_and_wrap() {
        let mut s = StreamStats::default();
        let seqs = [65530u16, 65531, 65533, 65532, 65532, 65535, 0, 1, 3];
        for (i, &q) in seqs.iter().enumerate() {
            s.update(q, i as u32 * 160, i as i64 * 20_000_000, 8000, 160);
        }
        assert_eq!(s.expected(), 10); // 65530..=3
        assert_eq!(s.packets, 8);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.out_of_order, 1);
        assert_eq!(s.lost(), 2); // 65534 and 2
    }

    #[test]
    fn perfect_stream_has_no_jitter_and_high_mos() {
        let mut s = StreamStats::default();
        for i in 0..100u32 {
            s.update(i as u16, i * 160, i as i64 * 20_000_000, 8000, 160);
        }
        assert!(s.jitter_ms(8000) < 0.01);
        assert!(s.mos(8000) > 4.3);
        assert!(mos_from(10.0, 30.0) < 4.0);
    }
}
