//! Steering for live capture: which worker gets a packet, so that a call's SIP and its media meet
//! on one worker (steer by call, not by packet), and which media endpoints the kernel filter must
//! let through.
//!
//! Sans-IO like the engine: the reader thread calls [`Steering::route`] with each decoded packet
//! and the packet's time, and gets a worker index back (or `None`: media of no known call). SIP is
//! parsed here only as far as Call-ID, method/status and SDP; the engine parses it again on its
//! worker. The rules:
//!
//! - A SIP message over UDP goes to the worker of its Call-ID. A new Call-ID goes to the worker
//!   that already owns one of its SDP endpoints (calls that share a media endpoint, as a PBX's
//!   single media port does, must be on one engine to be told apart), else to hash(Call-ID).
//! - SIP over TCP goes to one worker, which reassembles every stream; a Call-ID first seen there
//!   is pinned to that worker (a call's messages may use several connections, and a message may
//!   span segments, so neither the connection nor the Call-ID can spread TCP over workers).
//! - UDP that is not SIP goes to the owner of its destination endpoint, else of its source.
//! - A call's endpoints are released `linger` after BYE, CANCEL or a final failure (except
//!   401/407, which are retried on the same Call-ID), or when neither SIP nor media was seen for
//!   `idle`.
//!
//! With several reader threads (one per receive queue) each has a replica; what one replica learns
//! from SIP it returns as [`Learned`] events for the others to [`Steering::apply`], so no lock is
//! taken on the per-packet path. Endpoint additions and releases are also returned as
//! [`KernelChange`]s for the XDP filter's map.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use capture_core::{Packet, Transport};
use rustc_hash::{FxHashMap, FxHasher};

use crate::epmap::EndpointMap;
use crate::sdp::Sdp;
use crate::sip::{NOT_UTF8, SipError, SipMessage, StartLine, looks_like_sip};

pub type Endpoint = (IpAddr, u16);

/// The worker that reassembles all SIP over TCP (see [`Steering::route`]).
pub const TCP_WORKER: u32 = 0;

/// What one replica learned from SIP, for the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    Call { call_id: Box<str>, worker: u32, at: i64 },
    Endpoint { call_id: Box<str>, ep: Endpoint },
    Ended { call_id: Box<str>, at: i64 },
}

/// A change for the kernel's media endpoint map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChange {
    Add(Endpoint),
    Remove(Endpoint),
}

#[derive(Debug)]
struct CallEntry {
    worker: u32,
    endpoints: Vec<Endpoint>,
    last_ns: i64,
    ended_ns: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct EpEntry {
    worker: u32,
    /// Calls holding this endpoint.
    calls: u32,
    last_ns: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct SteerConfig {
    pub workers: u32,
    pub linger_ns: i64,
    pub idle_ns: i64,
    /// Most calls tracked at once (new Call-IDs beyond it are still routed, by hash, not tracked).
    pub max_calls: usize,
}

impl Default for SteerConfig {
    fn default() -> Self {
        SteerConfig { workers: 1, linger_ns: 5_000_000_000, idle_ns: 600_000_000_000, max_calls: 1_000_000 }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SteerStats {
    pub sip: u64,
    pub media: u64,
    pub unmatched: u64,
    pub calls_tracked: u64,
}

#[derive(Debug)]
pub struct Steering {
    cfg: SteerConfig,
    calls: FxHashMap<Box<str>, CallEntry>,
    endpoints: EndpointMap<EpEntry>,
    last_sweep: i64,
    pub stats: SteerStats,
}

fn hash_of(v: impl Hash) -> u64 {
    let mut h = FxHasher::default();
    v.hash(&mut h);
    h.finish()
}

impl Steering {
    pub fn new(cfg: SteerConfig) -> Self {
        assert!(cfg.workers > 0, "at least one worker");
        Steering {
            cfg,
            calls: FxHashMap::default(),
            endpoints: EndpointMap::new(),
            last_sweep: i64::MIN,
            stats: SteerStats::default(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.len()
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// A hint that `pkt` is routed a few packets from now: loads the endpoint slot its
    /// destination is looked up in (see `Engine::handle_batch` for why). Changes nothing.
    #[inline]
    pub fn prefetch(&self, pkt: &Packet<'_>) {
        if pkt.transport == Transport::Udp {
            self.endpoints.prefetch(&(pkt.dst, pkt.dport));
        }
    }

    /// The worker for `pkt`, or `None` for UDP that is neither SIP nor media of a known call.
    /// Learned facts go to `learned` (for other replicas) and kernel map changes to `kernel`.
    pub fn route(
        &mut self,
        pkt: &Packet<'_>,
        ts: i64,
        learned: &mut Vec<Learned>,
        kernel: &mut Vec<KernelChange>,
    ) -> Option<u32> {
        if ts.saturating_sub(self.last_sweep) >= 1_000_000_000 {
            self.sweep(ts, kernel);
        }
        match pkt.transport {
            Transport::Tcp { .. } => {
                // Every TCP segment goes to one worker. A message can span segments, so it cannot
                // be steered by Call-ID before reassembly, and one call's messages often travel on
                // several connections (each side opens its own), so no per-connection choice keeps
                // a call together. Calls signalled over TCP therefore share worker 0.
                let worker = TCP_WORKER;
                self.stats.sip += 1;
                if let Ok((msg, _)) = SipMessage::parse(pkt.payload, true) {
                    self.on_sip(&msg, Some(worker), ts, learned, kernel);
                }
                Some(worker)
            }
            Transport::Udp => {
                let dst = (pkt.dst, pkt.dport);
                let src = (pkt.src, pkt.sport);
                // The destination decides, unless it is shared by several calls (a PBX's single
                // media port) and the source belongs to one call only. The common case, a
                // destination owned by one call, costs one lookup: with tens of thousands of calls
                // each lookup is a cache miss.
                if let Some(e) = self.endpoints.get_mut(&dst) {
                    if e.calls <= 1 {
                        e.last_ns = ts;
                        self.stats.media += 1;
                        return Some(e.worker);
                    }
                    let dw = e.worker;
                    e.last_ns = ts;
                    let worker = match self.endpoints.get_mut(&src) {
                        Some(s) if s.calls == 1 => {
                            s.last_ns = ts;
                            s.worker
                        }
                        _ => dw,
                    };
                    self.stats.media += 1;
                    return Some(worker);
                }
                if let Some(e) = self.endpoints.get_mut(&src) {
                    e.last_ns = ts;
                    self.stats.media += 1;
                    return Some(e.worker);
                }
                if !looks_like_sip(pkt.payload) {
                    self.stats.unmatched += 1;
                    return None;
                }
                self.stats.sip += 1;
                match SipMessage::parse(pkt.payload, false) {
                    Ok((msg, _)) => Some(self.on_sip(&msg, None, ts, learned, kernel)),
                    // Latin-1 display names: the engine records these from a lossy copy, so the
                    // message must reach its call's worker (rare, so the copy does not matter).
                    Err(SipError::Malformed(NOT_UTF8)) => {
                        let owned = String::from_utf8_lossy(pkt.payload).into_owned();
                        match SipMessage::parse(owned.as_bytes(), false) {
                            Ok((msg, _)) => Some(self.on_sip(&msg, None, ts, learned, kernel)),
                            Err(_) => Some(self.malformed_worker(pkt.payload)),
                        }
                    }
                    // Malformed SIP still goes to a worker, whose engine counts it and says why.
                    Err(_) => Some(self.malformed_worker(pkt.payload)),
                }
            }
        }
    }

    fn malformed_worker(&self, payload: &[u8]) -> u32 {
        (hash_of(payload.get(..64)) % u64::from(self.cfg.workers)) as u32
    }

    fn on_sip(
        &mut self,
        msg: &SipMessage<'_>,
        pinned: Option<u32>,
        ts: i64,
        learned: &mut Vec<Learned>,
        kernel: &mut Vec<KernelChange>,
    ) -> u32 {
        let Some(call_id) = msg.call_id() else { return pinned.unwrap_or(0) };
        let sdp_eps = if msg.has_sdp() { Sdp::parse(msg.body).audio_endpoints() } else { Vec::new() };
        let worker = match self.calls.get_mut(call_id) {
            Some(c) => {
                c.last_ns = ts;
                c.worker
            }
            None => {
                let worker = pinned
                    .or_else(|| sdp_eps.iter().find_map(|ep| self.endpoints.get(ep).map(|e| e.worker)))
                    .unwrap_or((hash_of(call_id) % u64::from(self.cfg.workers)) as u32);
                if self.calls.len() >= self.cfg.max_calls {
                    return worker;
                }
                self.calls
                    .insert(call_id.into(), CallEntry { worker, endpoints: Vec::new(), last_ns: ts, ended_ns: None });
                self.stats.calls_tracked += 1;
                learned.push(Learned::Call { call_id: call_id.into(), worker, at: ts });
                worker
            }
        };
        for ep in sdp_eps {
            if self.bind(call_id, ep, ts) {
                kernel.push(KernelChange::Add(ep));
                learned.push(Learned::Endpoint { call_id: call_id.into(), ep });
            }
        }
        if ends_call(msg) {
            if let Some(c) = self.calls.get_mut(call_id) {
                c.ended_ns.get_or_insert(ts);
            }
            learned.push(Learned::Ended { call_id: call_id.into(), at: ts });
        } else if matches!(msg.start, StartLine::Request { method: "INVITE", .. })
            && let Some(c) = self.calls.get_mut(call_id)
        {
            // A retried INVITE (after 401/407 or a redirect) revives the call.
            c.ended_ns = None;
        }
        worker
    }

    /// Binds `ep` to the call; true when the endpoint is new to the table.
    fn bind(&mut self, call_id: &str, ep: Endpoint, ts: i64) -> bool {
        let Some(c) = self.calls.get_mut(call_id) else { return false };
        if c.endpoints.contains(&ep) {
            if let Some(e) = self.endpoints.get_mut(&ep) {
                e.last_ns = ts;
            }
            return false;
        }
        c.endpoints.push(ep);
        match self.endpoints.get_mut(&ep) {
            Some(e) => {
                e.calls += 1;
                e.last_ns = ts;
                false
            }
            None => {
                self.endpoints.insert(ep, EpEntry { worker: c.worker, calls: 1, last_ns: ts });
                true
            }
        }
    }

    /// Applies what another replica learned.
    pub fn apply(&mut self, ev: &Learned) {
        match ev {
            Learned::Call { call_id, worker, at } => {
                if self.calls.len() < self.cfg.max_calls {
                    self.calls.entry(call_id.clone()).or_insert(CallEntry {
                        worker: *worker,
                        endpoints: Vec::new(),
                        last_ns: *at,
                        ended_ns: None,
                    });
                }
            }
            Learned::Endpoint { call_id, ep } => {
                let at = self.calls.get(call_id).map_or(0, |c| c.last_ns);
                self.bind(call_id, *ep, at);
            }
            Learned::Ended { call_id, at } => {
                if let Some(c) = self.calls.get_mut(call_id) {
                    c.ended_ns.get_or_insert(*at);
                }
            }
        }
    }

    /// Releases calls that ended more than `linger` ago, or were idle (no SIP, no media seen
    /// here) for `idle`; endpoints no other call holds go to `kernel` as removals.
    pub fn sweep(&mut self, now: i64, kernel: &mut Vec<KernelChange>) {
        self.last_sweep = now;
        let (linger, idle) = (self.cfg.linger_ns, self.cfg.idle_ns);
        let endpoints = &mut self.endpoints;
        self.calls.retain(|_, c| {
            let media_last = c.endpoints.iter().filter_map(|ep| endpoints.get(ep)).map(|e| e.last_ns).max();
            let last = c.last_ns.max(media_last.unwrap_or(i64::MIN));
            let done = c.ended_ns.is_some_and(|t| now - t > linger) || now - last > idle;
            if done {
                for ep in &c.endpoints {
                    if let Some(e) = endpoints.get_mut(ep) {
                        e.calls -= 1;
                        if e.calls == 0 {
                            endpoints.remove(ep);
                            kernel.push(KernelChange::Remove(*ep));
                        }
                    }
                }
            }
            !done
        });
    }
}

/// BYE, CANCEL, or a final failure of an INVITE other than an authentication challenge.
fn ends_call(msg: &SipMessage<'_>) -> bool {
    match msg.start {
        StartLine::Request { method, .. } => method == "BYE" || method == "CANCEL",
        StartLine::Response { code, .. } => {
            code >= 300
                && code != 401
                && code != 407
                && msg.cseq().is_some_and(|(_, m)| m.eq_ignore_ascii_case("INVITE"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_core::decode::v4;

    fn sip(method_line: &str, call_id: &str, cseq: &str, sdp_port: Option<u16>) -> Vec<u8> {
        let body = sdp_port.map_or(String::new(), |p| {
            format!("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio {p} RTP/AVP 0\r\n")
        });
        let ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        format!(
            "{method_line}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n{ct}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn udp(payload: &[u8], sport: u16, dport: u16) -> Packet<'_> {
        Packet { src: v4(10, 0, 0, 9), dst: v4(10, 0, 0, 1), sport, dport, transport: Transport::Udp, payload }
    }

    #[test]
    fn media_follows_its_call_and_is_released_after_bye() {
        let mut s = Steering::new(SteerConfig { workers: 8, ..Default::default() });
        let (mut l, mut k) = (Vec::new(), Vec::new());
        let invite = sip("INVITE sip:b@x SIP/2.0", "call-1", "1 INVITE", Some(4000));
        let w = s.route(&udp(&invite, 5060, 5060), 1_000, &mut l, &mut k).unwrap();
        assert_eq!(k, vec![KernelChange::Add((v4(10, 0, 0, 1), 4000)), KernelChange::Add((v4(10, 0, 0, 1), 4001))]);
        assert_eq!(s.route(&udp(b"\x80\x00rtp", 7000, 4000), 2_000, &mut l, &mut k), Some(w));
        let reverse = Packet { src: v4(10, 0, 0, 1), dst: v4(10, 0, 0, 9), ..udp(b"\x80\x00rtp", 4000, 7000) };
        assert_eq!(s.route(&reverse, 2_000, &mut l, &mut k), Some(w), "by source too");
        assert_eq!(s.route(&udp(b"\x80\x00rtp", 7000, 4002), 2_000, &mut l, &mut k), None);
        k.clear();
        let bye = sip("BYE sip:b@x SIP/2.0", "call-1", "2 BYE", None);
        assert_eq!(s.route(&udp(&bye, 5060, 5060), 3_000_000_000, &mut l, &mut k), Some(w));
        assert!(k.is_empty(), "endpoints linger after BYE for late media");
        s.sweep(3_000_000_000 + s.cfg.linger_ns + 1, &mut k);
        assert_eq!(k.len(), 2);
        assert_eq!((s.calls(), s.endpoints()), (0, 0));
    }

    #[test]
    fn calls_sharing_an_endpoint_share_a_worker_and_replicas_agree() {
        let mut a = Steering::new(SteerConfig { workers: 16, ..Default::default() });
        let mut b = Steering::new(SteerConfig { workers: 16, ..Default::default() });
        let (mut l, mut k) = (Vec::new(), Vec::new());
        let mut first = None;
        for i in 0..40 {
            let invite = sip("INVITE sip:b@x SIP/2.0", &format!("shared-{i}"), "1 INVITE", Some(6000));
            let w = a.route(&udp(&invite, 5060, 5060), i, &mut l, &mut k).unwrap();
            assert_eq!(*first.get_or_insert(w), w, "call {i} shares port 6000 with call 0");
        }
        for ev in &l {
            b.apply(ev);
        }
        assert_eq!(b.route(&udp(b"\x80\x00", 9, 6000), 50, &mut Vec::new(), &mut Vec::new()), first);
        assert_eq!(b.calls(), 40);
        // Without a shared endpoint, Call-IDs spread over the workers.
        let workers: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| {
                let inv = sip("INVITE sip:b@x SIP/2.0", &format!("own-{i}"), "1 INVITE", Some(10_000 + 2 * i));
                a.route(&udp(&inv, 5060, 5060), 100, &mut l, &mut k).unwrap()
            })
            .collect();
        assert!(workers.len() > 8, "{workers:?}");
    }

    #[test]
    fn auth_challenge_keeps_the_call_and_idle_calls_expire() {
        let mut s = Steering::new(SteerConfig { workers: 2, idle_ns: 10_000, ..Default::default() });
        let (mut l, mut k) = (Vec::new(), Vec::new());
        let invite = sip("INVITE sip:b@x SIP/2.0", "c", "1 INVITE", Some(4000));
        s.route(&udp(&invite, 5060, 5060), 0, &mut l, &mut k);
        let challenge = sip("SIP/2.0 407 Proxy Authentication Required", "c", "1 INVITE", None);
        s.route(&udp(&challenge, 5060, 5060), 1, &mut l, &mut k);
        assert!(!l.iter().any(|e| matches!(e, Learned::Ended { .. })));
        k.clear();
        s.sweep(5_000, &mut k);
        assert_eq!(s.calls(), 1);
        s.sweep(20_001, &mut k);
        assert_eq!((s.calls(), k.len()), (0, 2));
    }
}
