//! TCP stream reassembly for SIP: in-order delivery per direction, out-of-order segments held within
//! a bound, and Content-Length framing so that several messages per segment and one message over
//! several segments both come out as whole messages.
//!
//! A flow is tracked only once a segment that starts like SIP is seen, so the mirror port's other
//! TCP traffic costs one content check per segment. Memory is bounded per flow and in the number of
//! flows; a flow idle for longer than the timeout is forgotten.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use crate::sip::{SipError, SipMessage, looks_like_sip};

const MAX_FLOWS: usize = 65_536;
const MAX_BUFFERED: usize = 256 * 1024;
const IDLE_NS: i64 = 300_000_000_000;

#[derive(Default)]
struct Flow {
    next_seq: u32,
    buf: Vec<u8>,
    ooo: BTreeMap<u32, Vec<u8>>,
    ooo_bytes: usize,
    last_ns: i64,
}

#[derive(Default)]
pub struct TcpReassembler {
    flows: FxHashMap<(SocketAddr, SocketAddr), Flow>,
    pub gaps: u64,
    pub resyncs: u64,
}

/// Sequence comparison modulo 2^32.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl TcpReassembler {
    /// Feeds one segment; calls `on_message` with each complete SIP message. Returns whether the
    /// segment belonged to a SIP flow.
    pub fn segment(
        &mut self,
        (src, dst): (SocketAddr, SocketAddr),
        seq: u32,
        flags: u8,
        payload: &[u8],
        ts: i64,
        mut on_message: impl FnMut(&[u8]),
    ) -> bool {
        use capture_core::decode::tcp_flags::{FIN, RST};
        let key = (src, dst);
        if !self.flows.contains_key(&key) {
            if payload.is_empty() || !looks_like_sip(payload) {
                return false;
            }
            if self.flows.len() >= MAX_FLOWS {
                self.expire(ts);
                if self.flows.len() >= MAX_FLOWS {
                    return false;
                }
            }
            self.flows.insert(key, Flow { next_seq: seq, ..Default::default() });
        }
        let flow = self.flows.get_mut(&key).expect("inserted");
        flow.last_ns = ts;
        if !payload.is_empty() {
            deliver(flow, seq, payload, &mut self.gaps);
        }
        drain(flow, &mut on_message, &mut self.resyncs);
        if flags & (FIN | RST) != 0 {
            self.flows.remove(&key);
        }
        true
    }

    pub fn expire(&mut self, now: i64) {
        self.flows.retain(|_, f| now - f.last_ns <= IDLE_NS);
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }
}

fn deliver(flow: &mut Flow, seq: u32, payload: &[u8], gaps: &mut u64) {
    let end = seq.wrapping_add(payload.len() as u32);
    if !seq_lt(flow.next_seq, end) {
        return; // entirely old: a retransmission
    }
    if seq_lt(flow.next_seq, seq) {
        // A hole before this segment: hold it, within bounds.
        if flow.ooo_bytes + payload.len() > MAX_BUFFERED {
            // Give up on the hole: skip to the earliest held data and count the gap.
            *gaps += 1;
            flow.buf.clear();
            let first = flow.ooo.keys().next().copied().unwrap_or(seq);
            flow.next_seq = first;
            flush_ooo(flow);
            if seq_lt(flow.next_seq, seq) {
                flow.ooo.insert(seq, payload.to_vec());
                flow.ooo_bytes += payload.len();
            } else {
                deliver(flow, seq, payload, gaps);
            }
            return;
        }
        flow.ooo_bytes += payload.len();
        flow.ooo.entry(seq).or_insert_with(|| payload.to_vec());
        return;
    }
    let skip = flow.next_seq.wrapping_sub(seq) as usize;
    flow.buf.extend_from_slice(&payload[skip..]);
    flow.next_seq = end;
    flush_ooo(flow);
    if flow.buf.len() > MAX_BUFFERED {
        flow.buf.clear();
        *gaps += 1;
    }
}

fn flush_ooo(flow: &mut Flow) {
    while let Some((&s, _)) = flow.ooo.iter().next() {
        if seq_lt(flow.next_seq, s) {
            break;
        }
        let data = flow.ooo.remove(&s).unwrap();
        flow.ooo_bytes -= data.len();
        let end = s.wrapping_add(data.len() as u32);
        if seq_lt(flow.next_seq, end) {
            let skip = flow.next_seq.wrapping_sub(s) as usize;
            flow.buf.extend_from_slice(&data[skip..]);
            flow.next_seq = end;
        }
    }
}

fn drain(flow: &mut Flow, on_message: &mut impl FnMut(&[u8]), resyncs: &mut u64) {
    let mut at = 0;
    loop {
        // Keep-alives (CRLF) between messages.
        while at < flow.buf.len() && matches!(flow.buf[at], b'\r' | b'\n') {
            at += 1;
        }
        if at >= flow.buf.len() {
            break;
        }
        match SipMessage::parse(&flow.buf[at..], true) {
            Ok((_, used)) => {
                on_message(&flow.buf[at..at + used]);
                at += used;
            }
            Err(SipError::Incomplete) => break,
            Err(_) => {
                // Lost framing: skip to the next line that starts a SIP message.
                *resyncs += 1;
                let rest = &flow.buf[at + 1..];
                match find_message_start(rest) {
                    Some(i) => at += 1 + i,
                    None => {
                        at = flow.buf.len();
                    }
                }
            }
        }
    }
    flow.buf.drain(..at);
}

fn find_message_start(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if (i == 0 || b[i - 1] == b'\n') && looks_like_sip(&b[i..]) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Vec<u8> {
        format!("OPTIONS sip:a SIP/2.0\r\nCall-ID: {n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 3\r\n\r\nabc").into_bytes()
    }

    #[test]
    fn splits_and_joins_and_reorders() {
        let a: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5060".parse().unwrap();
        let mut stream = msg(1);
        stream.extend(msg(2));
        stream.extend(b"\r\n\r\n");
        stream.extend(msg(3));
        let mut r = TcpReassembler::default();
        let mut out = Vec::new();
        // Send in 3 pieces, the last two swapped.
        let (p1, rest) = stream.split_at(30);
        let (p2, p3) = rest.split_at(70);
        let s0 = 1000u32;
        r.segment((a, b), s0, 0, p1, 0, |m| out.push(m.to_vec()));
        r.segment((a, b), s0 + 100, 0, p3, 0, |m| out.push(m.to_vec()));
        r.segment((a, b), s0 + 30, 0, p2, 0, |m| out.push(m.to_vec()));
        r.segment((a, b), s0 + 30, 0, p2, 0, |m| out.push(m.to_vec())); // retransmission
        assert_eq!(out, vec![msg(1), msg(2), msg(3)]);
    }

    #[test]
    fn ignores_non_sip_flows() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut r = TcpReassembler::default();
        assert!(!r.segment((a, a), 1, 0, b"GET / HTTP/1.1\r\n\r\n", 0, |_| panic!()));
        assert_eq!(r.flows(), 0);
    }
}
