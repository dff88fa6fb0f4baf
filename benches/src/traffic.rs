//! A deterministic generator of VoIP call traffic: N calls, each a SIP dialog (INVITE with SDP,
//! 180, 200 with SDP, ACK, … BYE, 200) and bidirectional G.711 A-law RTP every 20 ms, some with an
//! RFC 2833 DTMF digit. Frames come out in timestamp order, ready for a pcap file or a wire.
//!
//! Why it exists: every benchmark (offline import, live capture side by side with tcpdump, memory
//! at 20,000 calls) needs the same traffic at a chosen size, and needs to know exactly what was in
//! it to count loss from what was sent rather than from what the recorder says it saw.
//!
//! The per-packet path writes into the caller's buffer and allocates nothing once warm: RTP frames
//! are a 54-byte header patched in place plus a slice of a precomputed A-law tone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// RTP packet interval: 20 ms of 8 kHz audio, 160 samples.
pub const PTIME_NS: i64 = 20_000_000;
const SAMPLES: u32 = 160;
const PT_PCMA: u8 = 8;
const PT_EVENT: u8 = 101;
/// Ethernet + IPv4 + UDP.
const L2L4: usize = 14 + 20 + 8;
pub const SIP_PORT: u16 = 5060;
/// Digits the DTMF calls send, chosen by call number.
pub const DIGITS: &[u8; 12] = b"0123456789*#";

/// What to generate.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Calls in total.
    pub calls: u32,
    /// Each call's length from INVITE to BYE.
    pub duration_ns: i64,
    /// Call `i` starts at `start_ns + i * ramp_ns / calls`. Concurrency is about
    /// `calls * min(1, duration / ramp)`.
    pub ramp_ns: i64,
    /// Every k-th call (k > 0) sends one RFC 2833 digit from the caller one second in; 0: none.
    pub dtmf_every: u32,
    /// Time of the first INVITE.
    pub start_ns: i64,
    /// Ethernet addresses written into every frame.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            calls: 100,
            duration_ns: 10_000_000_000,
            ramp_ns: 1_000_000_000,
            dtmf_every: 10,
            start_ns: 1_700_000_000_000_000_000,
            src_mac: [0x02, 0, 0, 0, 0, 0xa1],
            dst_mac: [0x02, 0, 0, 0, 0, 0xb1],
        }
    }
}

/// What one generated call looks like, so a bench can check the recording against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFacts {
    pub call_id: String,
    pub caller: String,
    pub callee: String,
    pub caller_rtp: u64,
    pub callee_rtp: u64,
    pub dtmf: Option<char>,
}

/// RTP starts this long after the INVITE (the 200 OK and ACK come first).
const MEDIA_START_NS: i64 = 120_000_000;
/// The callee's stream runs this far behind the caller's, as real phones are never in phase.
const CALLEE_PHASE_NS: i64 = 7_000_000;
/// Where in the call the DTMF digit starts (or half the call, if shorter).
const DTMF_AT_NS: i64 = 1_000_000_000;
/// Ticks a digit occupies: 5 event packets (100 ms) and 3 end-of-event retransmissions.
const DTMF_TICKS: u32 = 8;

impl Workload {
    /// `calls` calls of `duration` seconds starting over `ramp` seconds, a DTMF digit in every tenth.
    pub fn calls(calls: u32, duration: f64, ramp: f64) -> Workload {
        Workload {
            calls,
            duration_ns: (duration * 1e9) as i64,
            ramp_ns: (ramp * 1e9) as i64,
            dtmf_every: 10,
            ..Default::default()
        }
    }

    pub fn call_start(&self, i: u32) -> i64 {
        self.start_ns + (self.ramp_ns as i128 * i as i128 / self.calls.max(1) as i128) as i64
    }

    fn media_end(&self) -> i64 {
        self.duration_ns.max(MEDIA_START_NS + CALLEE_PHASE_NS + PTIME_NS)
    }

    /// RTP packets the caller (`callee == false`) or callee sends in one call.
    fn rtp_count(&self, callee: bool) -> u64 {
        let first = MEDIA_START_NS + if callee { CALLEE_PHASE_NS } else { 0 };
        let span = self.media_end() - first;
        ((span + PTIME_NS - 1) / PTIME_NS) as u64
    }

    /// Every frame the workload produces.
    pub fn total_frames(&self) -> u64 {
        self.calls as u64 * (self.rtp_count(false) + self.rtp_count(true) + 6)
    }

    /// Total RTP packets (both directions, all calls).
    pub fn total_rtp(&self) -> u64 {
        self.calls as u64 * (self.rtp_count(false) + self.rtp_count(true))
    }

    /// Highest number of calls in progress at once.
    pub fn concurrency(&self) -> u32 {
        if self.ramp_ns <= self.duration_ns {
            self.calls
        } else {
            (((self.calls as i128 * self.duration_ns as i128 + self.ramp_ns as i128 - 1) / self.ramp_ns as i128) as u32)
                .min(self.calls)
        }
    }

    /// Offered load while `concurrency()` calls are up, in packets per second.
    pub fn steady_pps(&self) -> f64 {
        self.concurrency() as f64 * 2.0 * 1e9 / PTIME_NS as f64
    }

    pub fn dtmf_digit(&self, i: u32) -> Option<char> {
        (self.dtmf_every > 0 && i.is_multiple_of(self.dtmf_every))
            .then(|| DIGITS[(i / self.dtmf_every) as usize % 12] as char)
    }

    pub fn facts(&self, i: u32) -> CallFacts {
        CallFacts {
            call_id: call_id(i),
            caller: caller_number(i),
            callee: callee_number(i),
            caller_rtp: self.rtp_count(false),
            callee_rtp: self.rtp_count(true),
            dtmf: self.dtmf_digit(i),
        }
    }
}

pub fn call_id(i: u32) -> String {
    // A mixed, fixed-width id: the index's Call-ID search must not be helped by sorted keys.
    let h = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{h:016x}-{i}@gen.callrec.invalid")
}

pub fn caller_number(i: u32) -> String {
    format!("+4420{:08}", i)
}

pub fn callee_number(i: u32) -> String {
    format!("+4930{:08}", i)
}

fn caller_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0001 + i)
}

fn callee_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a80_0001 + i)
}

fn caller_rtp_port(i: u32) -> u16 {
    10_000 + 2 * (i % 20_000) as u16
}

fn callee_rtp_port(i: u32) -> u16 {
    50_000 + 2 * (i % 7_000) as u16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Invite,
    Ringing,
    Ok,
    Ack,
    /// RTP from the caller (false) or callee (true); `n` packets sent so far.
    Rtp {
        callee: bool,
        n: u32,
    },
    Bye,
    ByeOk,
}

/// One second of a 400 Hz tone in A-law, which each RTP packet takes 160 bytes of.
fn tone() -> Vec<u8> {
    (0..8000)
        .map(|n| {
            let s = (f64::sin(2.0 * std::f64::consts::PI * 400.0 * n as f64 / 8000.0) * 8000.0) as i16;
            linear_to_alaw(s)
        })
        .collect()
}

/// ITU-T G.711 A-law encoding of one sample.
pub fn linear_to_alaw(pcm: i16) -> u8 {
    let (mask, mut v) = if pcm >= 0 { (0xd5u8, pcm as i32) } else { (0x55u8, -(pcm as i32) - 1) };
    v = v.min(0x7fff);
    let seg = match v {
        0..=0xff => 0,
        0x100..=0x1ff => 1,
        0x200..=0x3ff => 2,
        0x400..=0x7ff => 3,
        0x800..=0xfff => 4,
        0x1000..=0x1fff => 5,
        0x2000..=0x3fff => 6,
        _ => 7,
    };
    let aval = if seg < 1 { (v >> 4) & 0x0f } else { (v >> (seg + 3)) & 0x0f };
    ((seg << 4) as u8 | aval as u8) ^ mask
}

/// The generator: an iterator over frames in time order, written into a caller-owned buffer.
pub struct Generator {
    w: Workload,
    heap: BinaryHeap<Reverse<(i64, u32, Step)>>,
    next_call: u32,
    tone: Vec<u8>,
    text: String,
    body: String,
}

impl Generator {
    pub fn new(w: Workload) -> Generator {
        let mut g = Generator {
            w,
            heap: BinaryHeap::new(),
            next_call: 0,
            tone: tone(),
            text: String::new(),
            body: String::new(),
        };
        g.admit();
        g
    }

    pub fn workload(&self) -> &Workload {
        &self.w
    }

    /// Calls enter the heap lazily, so a 10-million-call workload does not hold them all.
    fn admit(&mut self) {
        if self.next_call < self.w.calls {
            let i = self.next_call;
            self.heap.push(Reverse((self.w.call_start(i), i, Step::Invite)));
            self.next_call += 1;
        }
    }

    /// Time of the next frame, if any.
    pub fn peek_ts(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Writes the next frame into `out` (cleared first) and returns its timestamp.
    pub fn next_frame(&mut self, out: &mut Vec<u8>) -> Option<i64> {
        let Reverse((ts, i, step)) = self.heap.pop()?;
        out.clear();
        let start = self.w.call_start(i);
        let media_end = start + self.w.media_end();
        match step {
            Step::Invite => {
                self.admit();
                self.sip(out, i, Step::Invite);
                self.heap.push(Reverse((ts + 40_000_000, i, Step::Ringing)));
            }
            Step::Ringing => {
                self.sip(out, i, Step::Ringing);
                self.heap.push(Reverse((start + 100_000_000, i, Step::Ok)));
            }
            Step::Ok => {
                self.sip(out, i, Step::Ok);
                self.heap.push(Reverse((start + 110_000_000, i, Step::Ack)));
            }
            Step::Ack => {
                self.sip(out, i, Step::Ack);
                self.heap.push(Reverse((start + MEDIA_START_NS, i, Step::Rtp { callee: false, n: 0 })));
                self.heap.push(Reverse((
                    start + MEDIA_START_NS + CALLEE_PHASE_NS,
                    i,
                    Step::Rtp { callee: true, n: 0 },
                )));
            }
            Step::Rtp { callee, n } => {
                self.rtp(out, i, callee, n);
                let next = ts + PTIME_NS;
                if next < media_end {
                    self.heap.push(Reverse((next, i, Step::Rtp { callee, n: n + 1 })));
                } else if !callee {
                    self.heap.push(Reverse((media_end.max(next), i, Step::Bye)));
                }
            }
            Step::Bye => {
                self.sip(out, i, Step::Bye);
                self.heap.push(Reverse((ts + 5_000_000, i, Step::ByeOk)));
            }
            Step::ByeOk => self.sip(out, i, Step::ByeOk),
        }
        Some(ts)
    }

    fn headers(&self, out: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload_len: usize) {
        out.extend_from_slice(&self.w.dst_mac);
        out.extend_from_slice(&self.w.src_mac);
        out.extend_from_slice(&[0x08, 0x00]);
        let ip_start = out.len();
        let total = (20 + 8 + payload_len) as u16;
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        let mut acc = 0u32;
        for c in out[ip_start..ip_start + 20].chunks_exact(2) {
            acc += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        let c = !(acc as u16);
        out[ip_start + 10..ip_start + 12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&dport.to_be_bytes());
        out.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        // UDP checksum 0: "not computed", valid for IPv4 and cheap for a line-rate generator.
        out.extend_from_slice(&[0, 0]);
    }

    fn rtp(&mut self, out: &mut Vec<u8>, i: u32, callee: bool, n: u32) {
        let (src, dst, sport, dport) = if callee {
            (callee_ip(i), caller_ip(i), callee_rtp_port(i), caller_rtp_port(i))
        } else {
            (caller_ip(i), callee_ip(i), caller_rtp_port(i), callee_rtp_port(i))
        };
        let ssrc = (i.wrapping_mul(2654435761)) ^ if callee { 0x5a5a_0000 } else { 0x0000_a5a5 };
        let seq = (n as u16).wrapping_add(i as u16);
        let base_ts = i.wrapping_mul(7919);
        let ts = base_ts.wrapping_add(n * SAMPLES);
        // The caller of a DTMF call sends one digit: 5 event packets and 3 end packets.
        let dtmf_first = ((DTMF_AT_NS.min(self.w.duration_ns / 2) - MEDIA_START_NS).max(0) / PTIME_NS) as u32;
        let event = match self.w.dtmf_digit(i) {
            Some(d) if !callee && n >= dtmf_first && n < dtmf_first + DTMF_TICKS => Some((d, n - dtmf_first)),
            _ => None,
        };
        match event {
            None => {
                self.headers(out, src, dst, sport, dport, 12 + SAMPLES as usize);
                out.extend_from_slice(&[0x80, PT_PCMA]);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&ts.to_be_bytes());
                out.extend_from_slice(&ssrc.to_be_bytes());
                let off = (n as usize % 50) * SAMPLES as usize;
                out.extend_from_slice(&self.tone[off..off + SAMPLES as usize]);
            }
            Some((digit, k)) => {
                let code = match digit {
                    '*' => 10,
                    '#' => 11,
                    d => d as u8 - b'0',
                };
                let event_ts = base_ts.wrapping_add(dtmf_first * SAMPLES);
                let end = k >= 4;
                let dur = (SAMPLES * (k.min(4) + 1)) as u16;
                self.headers(out, src, dst, sport, dport, 12 + 4);
                out.extend_from_slice(&[0x80, PT_EVENT | if k == 0 { 0x80 } else { 0 }]);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&event_ts.to_be_bytes());
                out.extend_from_slice(&ssrc.to_be_bytes());
                out.extend_from_slice(&[code, if end { 0x80 | 10 } else { 10 }]);
                out.extend_from_slice(&dur.to_be_bytes());
            }
        }
        debug_assert!(out.len() >= L2L4);
    }

    fn sip(&mut self, out: &mut Vec<u8>, i: u32, step: Step) {
        let (a, b) = (caller_ip(i), callee_ip(i));
        let (from_caller, first_line, cseq, with_sdp) = match step {
            Step::Invite => {
                (true, format_args!("INVITE sip:{}@{b}:5060 SIP/2.0", callee_number(i)).to_string(), "1 INVITE", true)
            }
            Step::Ringing => (false, "SIP/2.0 180 Ringing".to_string(), "1 INVITE", false),
            Step::Ok => (false, "SIP/2.0 200 OK".to_string(), "1 INVITE", true),
            Step::Ack => (true, format!("ACK sip:{}@{b}:5060 SIP/2.0", callee_number(i)), "1 ACK", false),
            Step::Bye => (true, format!("BYE sip:{}@{b}:5060 SIP/2.0", callee_number(i)), "2 BYE", false),
            Step::ByeOk => (false, "SIP/2.0 200 OK".to_string(), "2 BYE", false),
            Step::Rtp { .. } => unreachable!("RTP is not SIP"),
        };
        self.body.clear();
        if with_sdp {
            let (ip, port) = if from_caller { (a, caller_rtp_port(i)) } else { (b, callee_rtp_port(i)) };
            let _ = write!(
                self.body,
                "v=0\r\no=- {i} 1 IN IP4 {ip}\r\ns=callrec-gen\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
                 a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
            );
        }
        let to_tag = if step == Step::Invite { String::new() } else { format!(";tag=b{i:x}") };
        self.text.clear();
        let _ = write!(
            self.text,
            "{first_line}\r\nVia: SIP/2.0/UDP {a}:5060;branch=z9hG4bK{i:x}{cseq_n}\r\nMax-Forwards: 70\r\n\
             From: \"Caller {i}\" <sip:{from}@{a}>;tag=a{i:x}\r\nTo: <sip:{to}@{b}>{to_tag}\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq}\r\nContact: <sip:{contact}>\r\nUser-Agent: callrec-gen\r\n",
            cseq_n = &cseq[..1],
            from = caller_number(i),
            to = callee_number(i),
            cid = call_id(i),
            contact = if from_caller {
                format!("{}@{a}:5060", caller_number(i))
            } else {
                format!("{}@{b}:5060", callee_number(i))
            },
        );
        if with_sdp {
            self.text.push_str("Content-Type: application/sdp\r\n");
        }
        let _ = write!(self.text, "Content-Length: {}\r\n\r\n{}", self.body.len(), self.body);
        let (src, dst) = if from_caller { (a, b) } else { (b, a) };
        self.headers(out, src, dst, SIP_PORT, SIP_PORT, self.text.len());
        out.extend_from_slice(self.text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_core::{Decoded, Decoder, Transport};

    #[test]
    fn frames_are_in_time_order_and_counted_exactly() {
        let w = Workload {
            calls: 7,
            duration_ns: 3_000_000_000,
            ramp_ns: 500_000_000,
            dtmf_every: 2,
            ..Default::default()
        };
        let mut g = Generator::new(w.clone());
        let mut buf = Vec::new();
        let (mut n, mut last, mut rtp, mut sip) = (0u64, i64::MIN, 0u64, 0u64);
        let mut dec = Decoder::default();
        while let Some(ts) = g.next_frame(&mut buf) {
            assert!(ts >= last, "frame {n} goes back in time");
            last = ts;
            n += 1;
            let Ok(Decoded::Packet(p)) = dec.decode(ts, 1, &buf) else { panic!("frame {n} does not decode") };
            assert_eq!(p.transport, Transport::Udp);
            if p.dport == SIP_PORT { sip += 1 } else { rtp += 1 }
        }
        assert_eq!(n, w.total_frames());
        assert_eq!(rtp, w.total_rtp());
        assert_eq!(sip, 6 * 7);
        assert_eq!(w.concurrency(), 7);
        assert_eq!(w.facts(0).dtmf, Some('0'));
        assert_eq!(w.facts(1).dtmf, None);
        assert_eq!(w.facts(2).dtmf, Some('1'));
    }

    #[test]
    fn alaw_matches_g711_reference_points() {
        // Values from ITU-T G.711 tables (as used by every A-law codec).
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
    }
}
