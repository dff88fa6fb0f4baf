//! The recorder core as a sans-IO state machine: `handle(packet)` in, call events out to a [`Sink`].
//!
//! The engine rebuilds SIP dialogs (Call-ID + tags), binds RTP/RTCP to calls through the endpoints
//! negotiated in SDP (latching to the real source when NAT rewrites it), keeps per-stream statistics
//! and DTMF, and decides when a call is over. It never reads a clock or touches a file: time comes
//! with the packets, so a capture file replays exactly like the live capture did, and tests are
//! deterministic. One engine is one shard; calls can be spread over engines by Call-ID and media
//! endpoint.
//!
//! The per-RTP-packet path is: one hash lookup of the destination (or source) endpoint, an index into
//! the call slab, a scan of that call's few streams, fixed-size statistics, and the sink. It
//! allocates nothing.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use capture_core::{Held, Packet, Transport};
use rustc_hash::{FxHashMap, FxHasher};
use smallvec::SmallVec;

use crate::epmap::EndpointMap;
use crate::model::{CallSummary, Dtmf, DtmfSource, EndReason, Hold, Party, Side, StreamSummary, is_decodable};
use crate::rtp::{RtpPacket, StreamStats, TelephoneEvent, dtmf_char, looks_like_rtcp, rtcp_report_blocks};
use crate::sdp::Sdp;
use crate::sip::{NOT_UTF8, NameAddr, SipError, SipMessage, StartLine, looks_like_sip};
use crate::tcp::TcpReassembler;

/// Where the engine sends what it decides. Implemented by the recording store and by tests.
pub trait Sink {
    /// A new call. `slot` is small and dense (reused after the call ends); `uid` is unique.
    fn call_started(&mut self, call: CallRef, call_id: &str, start_ns: i64);
    /// A payload-type map the receiving `side` announced in SDP.
    fn payload_types(&mut self, call: CallRef, side: Side, map: &[(u8, &str, u32)]);
    /// One RTP packet (raw, header included) of stream `stream`, sent by `side`.
    fn media(&mut self, call: CallRef, stream: u8, side: Side, ts_ns: i64, rtp: &[u8]);
    /// The call is over; no more events for it.
    fn call_ended(&mut self, call: CallRef, summary: CallSummary);
    /// A hint that media of `call` follows within a few packets: load what [`Sink::media`] will
    /// read first (the call's record). Must not change anything observable.
    fn prefetch_call(&self, _call: CallRef) {}
    /// The second hint, a packet or two later: load what the call's record points to (the
    /// buffer the next media lands in).
    fn prefetch_media(&self, _call: CallRef) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallRef {
    pub slot: u32,
    pub uid: u64,
}

/// How far ahead in a batch [`Engine::handle_batch`] prefetches each level (packets).
pub const AHEAD_SLOT: usize = 8;
pub const AHEAD_CALL: usize = 4;
pub const AHEAD_DATA: usize = 2;
/// Hints kept between a packet's call and data stages: a power of two above their distance.
const HINTS: usize = (AHEAD_CALL - AHEAD_DATA + 1).next_power_of_two();

/// The front of a [`Call`] that media packets read: up to the end of the inline streams.
const CALL_HOT_BYTES: usize = std::mem::offset_of!(Call, streams) + std::mem::size_of::<SmallVec<[Stream; 2]>>();

/// Limits and timers. Memory is bounded by these, not by traffic.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_calls: usize,
    pub max_streams_per_call: usize,
    pub max_media_endpoints: usize,
    /// How long a call lingers after BYE/CANCEL/failure to catch late packets and auth retries.
    pub linger_ns: i64,
    /// Linger after a 401/407 challenge, waiting for the retry on the same Call-ID (a person may be
    /// typing a password: real captures show retries half a minute later).
    pub auth_linger_ns: i64,
    /// A call in setup without any answer for this long is ended as timeout.
    pub setup_timeout_ns: i64,
    /// An answered call with no SIP nor media for this long is ended as timeout.
    pub idle_timeout_ns: i64,
    /// Identical SIP messages within this window are counted once.
    pub dedup_window_ns: i64,
    pub max_dedup_entries: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_calls: 200_000,
            max_streams_per_call: 16,
            max_media_endpoints: 1_000_000,
            linger_ns: 2_000_000_000,
            auth_linger_ns: 120_000_000_000,
            setup_timeout_ns: 300_000_000_000,
            idle_timeout_ns: 600_000_000_000,
            dedup_window_ns: 4_000_000_000,
            max_dedup_entries: 200_000,
        }
    }
}

/// Counters for the import/capture summary.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub packets: u64,
    pub sip_messages: u64,
    pub sip_duplicates: u64,
    pub sip_malformed: FxHashMap<&'static str, u64>,
    pub sip_ignored: u64,
    pub rtp_packets: u64,
    pub rtp_duplicates: u64,
    pub rtcp_packets: u64,
    pub unmatched_udp: u64,
    pub unmatched_tcp: u64,
    pub calls_started: u64,
    pub calls_ended: u64,
    pub calls_refused: u64,
    /// RTP streams (SSRC and direction) found in calls.
    pub streams: u64,
    pub streams_refused: u64,
    /// Media endpoints not bound because `max_media_endpoints` was reached.
    pub endpoints_refused: u64,
}

impl Stats {
    /// Adds another engine's counters (engines sharded over workers report one total).
    pub fn absorb(&mut self, o: &Stats) {
        self.packets += o.packets;
        self.sip_messages += o.sip_messages;
        self.sip_duplicates += o.sip_duplicates;
        for (k, v) in &o.sip_malformed {
            *self.sip_malformed.entry(k).or_default() += v;
        }
        self.sip_ignored += o.sip_ignored;
        self.rtp_packets += o.rtp_packets;
        self.rtp_duplicates += o.rtp_duplicates;
        self.rtcp_packets += o.rtcp_packets;
        self.unmatched_udp += o.unmatched_udp;
        self.unmatched_tcp += o.unmatched_tcp;
        self.calls_started += o.calls_started;
        self.calls_ended += o.calls_ended;
        self.calls_refused += o.calls_refused;
        self.streams += o.streams;
        self.streams_refused += o.streams_refused;
        self.endpoints_refused += o.endpoints_refused;
    }
}

#[derive(Debug, Clone, Copy)]
struct MediaRef {
    slot: u32,
    uid: u64,
    /// The party that receives at this endpoint.
    receiver: Side,
    /// Several live calls announced this endpoint (a media server answering every call on one
    /// port): the candidates are in `Engine::shared` and the packet's other endpoint decides.
    shared: bool,
}

/// What an empty [`EndpointMap`] slot holds; never read as a binding.
impl Default for MediaRef {
    fn default() -> Self {
        MediaRef { slot: u32::MAX, uid: 0, receiver: Side::Caller, shared: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Setup,
    Answered,
    /// BYE/CANCEL/failure seen; finalised after the linger time.
    Ending {
        reason: EndReason,
        at: i64,
        linger: i64,
    },
}

/// `repr(C)`, fields in the order the per-packet path reads them, so that the lines
/// [`Engine::handle_batch`] prefetches are the ones used: the search reads `ssrc` and `src`, the
/// update the rest up to `stats`; `dst` onwards is read rarely.
#[repr(C)]
struct Stream {
    ssrc: u32,
    src: SocketAddr,
    side: Side,
    audio_pt: Option<u8>,
    first_pt: u8,
    clock: u32,
    /// The last payload type seen and what it means (is it telephone-event, its clock), so the
    /// per-packet path does not search the payload-type maps. Cleared when SDP changes them.
    pt_cache: Option<(u8, bool, Option<u32>)>,
    stats: StreamStats,
    dst: SocketAddr,
    last_event_ts: Option<u32>,
    rtcp: Option<(u8, u32)>,
}

/// `repr(C)` with what every media packet reads first (see [`Engine::handle_batch`]).
#[repr(C)]
struct Call {
    uid: u64,
    last_ns: i64,
    answer_ns: Option<i64>,
    /// Last of the `Option<i64>` fields, the ones with the most spare values: `Option<Call>`
    /// keeps its tag in this field's, and the prefetched first lines must hold it.
    end_ns: Option<i64>,
    /// Inline for the usual two (one each way): the per-packet search and update then read the
    /// call's own lines, prefetched together, instead of following a pointer to another
    /// allocation (a dependent miss, often on another page).
    streams: SmallVec<[Stream; 2]>,
    call_id: Box<str>,
    caller_tag: Option<Box<str>>,
    caller: Party,
    callee: Party,
    start_ns: i64,
    phase: Phase,
    sip_code: Option<u16>,
    invite_cseq: u32,
    /// PT → (codec, clock) per receiving side.
    pt_map: [Vec<(u8, Box<str>, u32)>; 2],
    dtmf: Vec<Dtmf>,
    holds: Vec<Hold>,
    endpoints: Vec<(IpAddr, u16)>,
    sip_messages: u32,
}

impl Call {
    fn sender_of(&self, msg: &SipMessage<'_>) -> Side {
        let from_tag = msg.from().and_then(|f| f.tag);
        let from_caller = match (&self.caller_tag, from_tag) {
            (Some(c), Some(t)) => **c == *t,
            _ => true,
        };
        match (msg.status().is_some(), from_caller) {
            (false, true) | (true, false) => Side::Caller,
            _ => Side::Callee,
        }
    }

    fn codec(&self, receiver: Side, pt: u8) -> Option<(&str, u32)> {
        crate::sdp::lookup_pt(&self.pt_map[receiver.index()], &self.pt_map[receiver.other().index()], pt)
    }
}

/// The recorder state machine (one shard).
pub struct Engine {
    cfg: Config,
    calls: Vec<Option<Call>>,
    free: Vec<u32>,
    by_call_id: FxHashMap<Box<str>, u32>,
    media: EndpointMap<MediaRef>,
    shared: FxHashMap<(IpAddr, u16), Vec<MediaRef>>,
    dedup: FxHashMap<u64, i64>,
    tcp: TcpReassembler,
    next_uid: u64,
    last_sweep: i64,
    now: i64,
    stats: Stats,
}

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Engine {
            cfg,
            calls: Vec::new(),
            free: Vec::new(),
            by_call_id: FxHashMap::default(),
            media: EndpointMap::new(),
            shared: FxHashMap::default(),
            dedup: FxHashMap::default(),
            tcp: TcpReassembler::default(),
            next_uid: 1,
            last_sweep: i64::MIN,
            now: i64::MIN,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn active_calls(&self) -> usize {
        self.by_call_id.len()
    }

    /// Handles one decoded packet captured at `ts_ns`.
    pub fn handle(&mut self, pkt: &Packet<'_>, ts_ns: i64, sink: &mut impl Sink) {
        self.stats.packets += 1;
        if ts_ns > self.now {
            self.now = ts_ns;
        }
        if self.now.saturating_sub(self.last_sweep) >= 1_000_000_000 {
            self.sweep(sink);
        }
        match pkt.transport {
            Transport::Udp => self.on_udp(pkt, ts_ns, sink),
            Transport::Tcp { seq, flags } => {
                let src = SocketAddr::new(pkt.src, pkt.sport);
                let dst = SocketAddr::new(pkt.dst, pkt.dport);
                let mut msgs = std::mem::take(&mut self.tcp);
                let known = msgs.segment((src, dst), seq, flags, pkt.payload, ts_ns, |bytes| {
                    self.on_sip_bytes(bytes, true, ts_ns, sink);
                });
                self.tcp = msgs;
                if !known && !pkt.payload.is_empty() {
                    self.stats.unmatched_tcp += 1;
                }
            }
        }
    }

    /// Handles the packets `held` in `base` in order: the same as [`Engine::handle`] on each,
    /// but faster when many calls are up. With tens of thousands of calls, each packet's
    /// endpoint slot, call record (with its streams inline), the recording's record and the end
    /// of its chunk buffer are cache misses, each depending on the one before. Here the endpoint
    /// slot of the packet [`AHEAD_SLOT`] places ahead is prefetched, then (found in cache by
    /// then) [`AHEAD_CALL`] places ahead its call record and the sink's record, then
    /// [`AHEAD_DATA`] places ahead the buffer the sink's record points to, so a batch keeps
    /// several misses in flight instead of waiting for each in turn.
    pub fn handle_batch(&mut self, held: &[Held], base: &[u8], sink: &mut impl Sink) {
        // The first packets have nobody ahead of them to ask for their lines: ask for each stage
        // of all of them at once, so they wait for one miss per stage, not one after another.
        // The hint found for packet j at its call stage is kept in `hints[j % HINTS]` for its
        // data stage, AHEAD_CALL - AHEAD_DATA packets later: one table lookup instead of two.
        // A hint only says what to prefetch; `handle` looks the packet up again and decides.
        let mut hints = [None; HINTS];
        held.iter().take(AHEAD_SLOT).for_each(|h| self.prefetch_slot(h));
        for (j, h) in held.iter().enumerate().take(AHEAD_CALL) {
            hints[j % HINTS] = self.prefetch_call(h, sink);
        }
        for j in 0..held.len().min(AHEAD_DATA) {
            Self::prefetch_data(hints[j % HINTS], sink);
        }
        for (i, h) in held.iter().enumerate() {
            if let Some(h) = held.get(i + AHEAD_SLOT) {
                self.prefetch_slot(h);
            }
            if let Some(h) = held.get(i + AHEAD_CALL) {
                hints[(i + AHEAD_CALL) % HINTS] = self.prefetch_call(h, sink);
            }
            if i + AHEAD_DATA < held.len() {
                Self::prefetch_data(hints[(i + AHEAD_DATA) % HINTS], sink);
            }
            self.handle(&h.packet(base), h.ts, sink);
        }
    }

    /// The call a UDP packet's destination is bound to, when that is one call (no search among
    /// shared candidates: a hint may be wrong, never costly).
    #[inline]
    fn hinted(&self, p: &Held) -> Option<MediaRef> {
        if p.transport != Transport::Udp {
            return None;
        }
        self.media.get(&(p.dst, p.dport)).copied().filter(|m| !m.shared)
    }

    #[inline]
    fn prefetch_slot(&self, p: &Held) {
        if p.transport == Transport::Udp {
            self.media.prefetch(&(p.dst, p.dport));
        }
    }

    /// Prefetches the call record and the sink's record of the call `p` is hinted to; returns
    /// the hint.
    #[inline]
    fn prefetch_call(&self, p: &Held, sink: &impl Sink) -> Option<CallRef> {
        let m = self.hinted(p)?;
        if let Some(c) = self.calls.get(m.slot as usize) {
            // `Call` is `repr(C)` with what every media packet reads (the `Option` tag, the
            // inline streams) in front; an element need not start on a line.
            let at = c as *const Option<Call> as *const u8;
            let mut off = 0;
            while off < CALL_HOT_BYTES {
                crate::prefetch::prefetch(at.wrapping_add(off));
                off += 64;
            }
            crate::prefetch::prefetch(at.wrapping_add(CALL_HOT_BYTES - 1));
            sink.prefetch_call(CallRef { slot: m.slot, uid: m.uid });
        }
        Some(CallRef { slot: m.slot, uid: m.uid })
    }

    #[inline]
    fn prefetch_data(hint: Option<CallRef>, sink: &impl Sink) {
        if let Some(c) = hint {
            sink.prefetch_media(c);
        }
    }

    /// Lets time pass without a packet (live capture when the wire is quiet): calls whose linger
    /// or timeout has run out are ended. `now_ns` is on the packets' clock.
    pub fn poll(&mut self, now_ns: i64, sink: &mut impl Sink) {
        if now_ns > self.now {
            self.now = now_ns;
        }
        if self.now.saturating_sub(self.last_sweep) >= 1_000_000_000 {
            self.sweep(sink);
        }
    }

    /// Ends every call: those already ending with their reason, the rest as `capture-ended`.
    pub fn finish(&mut self, sink: &mut impl Sink) {
        for slot in 0..self.calls.len() as u32 {
            if let Some(call) = &self.calls[slot as usize] {
                let reason = match call.phase {
                    Phase::Ending { reason, .. } => reason,
                    _ => EndReason::CaptureEnded,
                };
                let end = call.end_ns.unwrap_or(call.last_ns);
                self.end_call(slot, reason, end, sink);
            }
        }
    }

    /// Picks the call of a shared endpoint: the one that also owns the packet's other endpoint,
    /// else the most recent.
    fn resolve(&self, ep: (IpAddr, u16), other: (IpAddr, u16), m: MediaRef) -> MediaRef {
        if !m.shared {
            return m;
        }
        let Some(cands) = self.shared.get(&ep) else { return m };
        let other_uid = self.media.get(&other).map(|o| o.uid);
        cands.iter().rev().find(|c| Some(c.uid) == other_uid).or(cands.last()).copied().unwrap_or(m)
    }

    /// Binds an endpoint to a call, sharing it when another live call holds it too, and remembers
    /// it on the call so that ending the call unbinds it. Refused past the configured endpoint
    /// limit; with `only_if_free` (latching) it never touches an endpoint that is already bound.
    fn bind(&mut self, ep: (IpAddr, u16), r: MediaRef, only_if_free: bool) {
        let taken = self.media.contains_key(&ep);
        if only_if_free && taken {
            return;
        }
        if !taken && self.media.len() >= self.cfg.max_media_endpoints {
            self.stats.endpoints_refused += 1;
            return;
        }
        let Some(Some(call)) = self.calls.get_mut(r.slot as usize) else { return };
        if call.uid != r.uid {
            return;
        }
        if !call.endpoints.contains(&ep) {
            call.endpoints.push(ep);
        }
        match self.media.get_mut(&ep) {
            Some(old) if old.uid != r.uid => {
                let list = self.shared.entry(ep).or_default();
                if list.is_empty() {
                    list.push(MediaRef { shared: false, ..*old });
                }
                list.retain(|c| c.uid != r.uid);
                list.push(r);
                *old = MediaRef { shared: true, ..r };
            }
            Some(old) => {
                let shared = old.shared;
                *old = MediaRef { shared, ..r };
                if let Some(list) = self.shared.get_mut(&ep) {
                    list.retain(|c| c.uid != r.uid);
                    list.push(r);
                }
            }
            None => {
                self.media.insert(ep, r);
            }
        }
    }

    fn unbind(&mut self, ep: (IpAddr, u16), uid: u64) {
        if let Some(list) = self.shared.get_mut(&ep) {
            list.retain(|c| c.uid != uid);
            match list.len() {
                0 => {
                    self.shared.remove(&ep);
                    self.media.remove(&ep);
                }
                1 => {
                    let last = list[0];
                    self.shared.remove(&ep);
                    self.media.insert(ep, MediaRef { shared: false, ..last });
                }
                _ => {
                    let last = *list.last().unwrap();
                    self.media.insert(ep, MediaRef { shared: true, ..last });
                }
            }
        } else if self.media.get(&ep).is_some_and(|m| m.uid == uid) {
            self.media.remove(&ep);
        }
    }

    fn on_udp(&mut self, pkt: &Packet<'_>, ts: i64, sink: &mut impl Sink) {
        if let Some(m) = self.media.get(&(pkt.dst, pkt.dport)).copied() {
            let m = self.resolve((pkt.dst, pkt.dport), (pkt.src, pkt.sport), m);
            return self.on_media(m, m.receiver.other(), pkt, ts, sink);
        }
        if looks_like_sip(pkt.payload) {
            return self.on_sip_bytes(pkt.payload, false, ts, sink);
        }
        if let Some(m) = self.media.get(&(pkt.src, pkt.sport)).copied() {
            let m = self.resolve((pkt.src, pkt.sport), (pkt.dst, pkt.dport), m);
            // Symmetric RTP from a party's own SDP endpoint to an address we did not expect (NAT):
            // latch the destination as the other party's real receive address.
            let sender = m.receiver;
            self.bind((pkt.dst, pkt.dport), MediaRef { receiver: sender.other(), shared: false, ..m }, true);
            return self.on_media(m, sender, pkt, ts, sink);
        }
        self.stats.unmatched_udp += 1;
    }

    fn on_media(&mut self, m: MediaRef, sender: Side, pkt: &Packet<'_>, ts: i64, sink: &mut impl Sink) {
        let Some(Some(call)) = self.calls.get_mut(m.slot as usize) else { return };
        if call.uid != m.uid {
            return;
        }
        call.last_ns = ts;
        let cref = CallRef { slot: m.slot, uid: m.uid };
        if looks_like_rtcp(pkt.payload) {
            self.stats.rtcp_packets += 1;
            let streams = &mut call.streams;
            rtcp_report_blocks(pkt.payload, |rb| {
                // A report from one side describes the stream the other side sends.
                if let Some(s) = streams.iter_mut().find(|s| s.ssrc == rb.ssrc && s.side == sender.other()) {
                    s.rtcp = Some((rb.fraction_lost, rb.jitter));
                }
            });
            return;
        }
        let Some(rtp) = RtpPacket::new_checked(pkt.payload) else {
            self.stats.unmatched_udp += 1;
            return;
        };
        self.stats.rtp_packets += 1;
        let ssrc = rtp.ssrc();
        let pt = rtp.payload_type();
        let src = SocketAddr::new(pkt.src, pkt.sport);
        let mut latch = None;
        let idx = match call.streams.iter().position(|s| s.ssrc == ssrc && s.src == src) {
            Some(i) => i,
            None => {
                // Reply-path symmetry beats SDP: a packet sent from where another stream of this
                // call is delivered comes from that stream's receiver. This corrects the direction
                // when relays or NAT make the SDP addresses disagree with the wire.
                let sender = match call.streams.iter().find(|s| s.dst == src) {
                    Some(s) => s.side.other(),
                    None => sender,
                };
                if call.streams.len() >= self.cfg.max_streams_per_call {
                    self.stats.streams_refused += 1;
                    return;
                }
                let clock = call.codec(sender.other(), pt).map_or(8000, |c| c.1);
                call.streams.push(Stream {
                    side: sender,
                    ssrc,
                    audio_pt: None,
                    first_pt: pt,
                    stats: StreamStats::default(),
                    clock,
                    src,
                    dst: SocketAddr::new(pkt.dst, pkt.dport),
                    last_event_ts: None,
                    rtcp: None,
                    pt_cache: None,
                });
                // Latch (below): with symmetric RTP the sender also receives at the address it
                // sends from, which is its real address when NAT or a relay rewrote the SDP.
                latch = Some(((pkt.src, pkt.sport), MediaRef { receiver: sender, shared: false, ..m }));
                self.stats.streams += 1;
                call.streams.len() - 1
            }
        };
        let sender = call.streams[idx].side;
        let (is_event, codec_clock) = match call.streams[idx].pt_cache {
            Some((cached, ev, clock)) if cached == pt => (ev, clock),
            _ => {
                let (ev, clock) = match call.codec(sender.other(), pt) {
                    Some((c, clock)) => (c.eq_ignore_ascii_case("telephone-event"), Some(clock)),
                    None => (false, None),
                };
                call.streams[idx].pt_cache = Some((pt, ev, clock));
                (ev, clock)
            }
        };
        let s = &mut call.streams[idx];
        let arrival = s.stats.update(rtp.sequence(), rtp.timestamp(), ts, s.clock, rtp.payload().len());
        if arrival == crate::rtp::Arrival::Duplicate {
            self.stats.rtp_duplicates += 1;
            return;
        }
        if is_event {
            if let Some(ev) = TelephoneEvent::parse(rtp.payload())
                && s.last_event_ts != Some(rtp.timestamp())
                && let Some(digit) = ev.digit()
            {
                s.last_event_ts = Some(rtp.timestamp());
                let clock = codec_clock.unwrap_or(8000).max(1);
                call.dtmf.push(Dtmf {
                    at_ns: ts,
                    digit,
                    source: DtmfSource::Rfc4733,
                    side: sender,
                    duration_ms: (ev.duration as u64 * 1000 / clock as u64) as u32,
                });
            }
        } else if s.audio_pt.is_none() && pt != 13 && !(72..=79).contains(&pt) {
            s.audio_pt = Some(pt);
            if let Some(clock) = codec_clock {
                s.clock = clock;
            }
        }
        sink.media(cref, idx as u8, sender, ts, pkt.payload);
        if let Some((ep, r)) = latch {
            self.bind(ep, r, true);
        }
    }

    fn on_sip_bytes(&mut self, mut bytes: &[u8], stream: bool, ts: i64, sink: &mut impl Sink) {
        // A datagram holds one message; a TCP chunk handed over by the reassembler holds exactly one.
        loop {
            match SipMessage::parse(bytes, stream) {
                Ok((msg, used)) => {
                    if msg.length_inferred && msg.content_length().is_some() {
                        *self
                            .stats
                            .sip_malformed
                            .entry("invalid Content-Length (body taken as rest of datagram)")
                            .or_default() += 1;
                    }
                    self.on_sip(&msg, ts, sink);
                    bytes = &bytes[used..];
                    if stream || bytes.iter().all(|b| b.is_ascii_whitespace()) {
                        return;
                    }
                }
                Err(SipError::Incomplete) => return,
                Err(SipError::Malformed(NOT_UTF8)) => {
                    // Latin-1 display names exist in the wild: record the call with a lossy copy
                    // (rare, so the allocation does not matter).
                    let owned = String::from_utf8_lossy(bytes).into_owned();
                    if let Ok((msg, _)) = SipMessage::parse(owned.as_bytes(), false) {
                        self.on_sip(&msg, ts, sink);
                    }
                    return;
                }
                Err(SipError::NotSip(why)) | Err(SipError::Malformed(why)) => {
                    *self.stats.sip_malformed.entry(why).or_default() += 1;
                    return;
                }
            }
        }
    }

    fn is_duplicate(&mut self, msg: &SipMessage<'_>, call_id: &str, ts: i64) -> bool {
        let mut h = FxHasher::default();
        match msg.start {
            StartLine::Request { method, uri } => (0u8, method, uri).hash(&mut h),
            StartLine::Response { code, .. } => (1u8, code).hash(&mut h),
        }
        call_id.hash(&mut h);
        msg.cseq().hash(&mut h);
        msg.from().and_then(|f| f.tag).hash(&mut h);
        msg.to().and_then(|t| t.tag).hash(&mut h);
        msg.body.hash(&mut h);
        let key = h.finish();
        if self.dedup.len() >= self.cfg.max_dedup_entries {
            let window = self.cfg.dedup_window_ns;
            let now = self.now;
            self.dedup.retain(|_, t| now - *t <= window);
            if self.dedup.len() >= self.cfg.max_dedup_entries {
                self.dedup.clear();
            }
        }
        match self.dedup.insert(key, ts) {
            Some(prev) => (ts - prev).abs() <= self.cfg.dedup_window_ns,
            None => false,
        }
    }

    fn on_sip(&mut self, msg: &SipMessage<'_>, ts: i64, sink: &mut impl Sink) {
        let Some(call_id) = msg.call_id() else {
            *self.stats.sip_malformed.entry("no Call-ID header").or_default() += 1;
            return;
        };
        let Some((cseq, cseq_method)) = msg.cseq() else {
            *self.stats.sip_malformed.entry("no valid CSeq header").or_default() += 1;
            return;
        };
        self.stats.sip_messages += 1;
        if self.is_duplicate(msg, call_id, ts) {
            self.stats.sip_duplicates += 1;
            return;
        }
        let slot = match self.by_call_id.get(call_id) {
            Some(&s) => s,
            None if msg.method() == Some("INVITE") => match self.new_call(msg, call_id, ts, sink) {
                Some(s) => s,
                None => return,
            },
            None => {
                self.stats.sip_ignored += 1;
                return;
            }
        };
        let linger = self.cfg.linger_ns;
        let auth_linger = self.cfg.auth_linger_ns;
        let call = self.calls[slot as usize].as_mut().expect("indexed call exists");
        let cref = CallRef { slot, uid: call.uid };
        call.last_ns = ts;
        call.sip_messages += 1;
        let sender = call.sender_of(msg);
        let mut sdp_offer_in_request = false;
        match msg.start {
            StartLine::Request { method, .. } => match method {
                "INVITE" => {
                    sdp_offer_in_request = true;
                    let initial = call.answer_ns.is_none() && msg.to().and_then(|t| t.tag).is_none();
                    if initial {
                        call.invite_cseq = cseq;
                        if let Phase::Ending { reason: EndReason::Failed, .. } = call.phase {
                            // Retry on the same Call-ID (digest authentication, 3xx redirect).
                            call.phase = Phase::Setup;
                            call.sip_code = None;
                            call.end_ns = None;
                        }
                    }
                }
                "BYE" if !matches!(call.phase, Phase::Ending { .. }) => {
                    let reason = if sender == Side::Caller { EndReason::CallerBye } else { EndReason::CalleeBye };
                    call.phase = Phase::Ending { reason, at: ts, linger };
                    call.end_ns = Some(ts);
                }
                "CANCEL" if call.answer_ns.is_none() && !matches!(call.phase, Phase::Ending { .. }) => {
                    call.phase = Phase::Ending { reason: EndReason::Cancel, at: ts, linger };
                    call.end_ns = Some(ts);
                }
                "INFO" => {
                    if let Some((digit, duration_ms)) = info_dtmf(msg) {
                        call.dtmf.push(Dtmf {
                            at_ns: ts,
                            digit,
                            source: DtmfSource::SipInfo,
                            side: sender,
                            duration_ms,
                        });
                    }
                }
                "UPDATE" => sdp_offer_in_request = call.answer_ns.is_some(),
                _ => {}
            },
            StartLine::Response { code, .. } => {
                if cseq_method.eq_ignore_ascii_case("INVITE") {
                    let for_initial = cseq == call.invite_cseq && call.answer_ns.is_none();
                    if (200..300).contains(&code) && call.answer_ns.is_none() {
                        call.answer_ns = Some(ts);
                        call.sip_code = Some(code);
                        if !matches!(call.phase, Phase::Ending { .. }) {
                            call.phase = Phase::Answered;
                        }
                    } else if code >= 300 && for_initial && !matches!(call.phase, Phase::Ending { .. }) {
                        call.sip_code = Some(code);
                        call.end_ns = Some(ts);
                        call.phase = match code {
                            487 => Phase::Ending { reason: EndReason::Cancel, at: ts, linger },
                            401 | 407 => Phase::Ending { reason: EndReason::Failed, at: ts, linger: auth_linger },
                            _ => Phase::Ending { reason: EndReason::Failed, at: ts, linger },
                        };
                    } else if code >= 300 && for_initial && call.phase_is_cancel() {
                        call.sip_code = Some(code);
                    }
                }
            }
        }
        if msg.has_sdp() {
            let sdp = Sdp::parse(msg.body);
            if let Some(audio) = sdp.audio() {
                // Hold is an offer (re-INVITE/UPDATE) after answer that stops sending or receiving.
                if sdp_offer_in_request && call.answer_ns.is_some() {
                    let open = call.holds.last().is_some_and(|h| h.end_ns.is_none());
                    if audio.is_hold() && !open {
                        call.holds.push(Hold { start_ns: ts, end_ns: None, by: sender });
                    } else if !audio.is_hold() && open && call.holds.last().is_some_and(|h| h.by == sender) {
                        call.holds.last_mut().unwrap().end_ns = Some(ts);
                    }
                }
                let map: Vec<(u8, Box<str>, u32)> = audio
                    .payload_types
                    .iter()
                    .filter_map(|&pt| audio.codec_of(pt).map(|(c, r)| (pt, Box::<str>::from(canonical_codec(c)), r)))
                    .collect();
                if !map.is_empty() && call.pt_map[sender.index()] != map {
                    let view: Vec<(u8, &str, u32)> = map.iter().map(|(p, c, r)| (*p, &**c, *r)).collect();
                    sink.payload_types(cref, sender, &view);
                    call.pt_map[sender.index()] = map;
                    for st in &mut call.streams {
                        st.pt_cache = None;
                    }
                }
                for ep in sdp.audio_endpoints() {
                    self.bind(ep, MediaRef { slot, uid: cref.uid, receiver: sender, shared: false }, false);
                }
            }
        }
    }

    fn new_call(&mut self, msg: &SipMessage<'_>, call_id: &str, ts: i64, sink: &mut impl Sink) -> Option<u32> {
        if self.by_call_id.len() >= self.cfg.max_calls {
            self.stats.calls_refused += 1;
            return None;
        }
        let from = msg.from().unwrap_or_default();
        let to = msg.to().unwrap_or_default();
        let pai = msg.p_asserted_identity();
        let party = |n: NameAddr<'_>, fallback_name: &str| Party {
            number: n.user().to_string(),
            name: if n.display.is_empty() { fallback_name.to_string() } else { n.display.to_string() },
            uri: n.uri.to_string(),
        };
        let caller = match pai {
            Some(p) => party(p, from.display),
            None => party(from, ""),
        };
        let uid = self.next_uid;
        self.next_uid += 1;
        let call = Call {
            uid,
            call_id: call_id.into(),
            caller_tag: from.tag.map(Into::into),
            caller,
            callee: party(to, ""),
            start_ns: ts,
            answer_ns: None,
            last_ns: ts,
            phase: Phase::Setup,
            sip_code: None,
            invite_cseq: msg.cseq().map_or(0, |c| c.0),
            pt_map: [Vec::new(), Vec::new()],
            streams: SmallVec::new(),
            dtmf: Vec::new(),
            holds: Vec::new(),
            endpoints: Vec::new(),
            sip_messages: 0,
            end_ns: None,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.calls[s as usize] = Some(call);
                s
            }
            None => {
                self.calls.push(Some(call));
                (self.calls.len() - 1) as u32
            }
        };
        self.by_call_id.insert(call_id.into(), slot);
        self.stats.calls_started += 1;
        sink.call_started(CallRef { slot, uid }, call_id, ts);
        Some(slot)
    }

    /// Ends calls whose linger or timeout has passed.
    fn sweep(&mut self, sink: &mut impl Sink) {
        self.last_sweep = self.now;
        let now = self.now;
        let window = self.cfg.dedup_window_ns;
        self.dedup.retain(|_, t| now - *t <= window);
        self.tcp.expire(now);
        for slot in 0..self.calls.len() as u32 {
            let Some(call) = &self.calls[slot as usize] else { continue };
            let end = match call.phase {
                Phase::Ending { reason, at, linger } if now - at > linger => Some((reason, call.end_ns.unwrap_or(at))),
                Phase::Setup if now - call.last_ns > self.cfg.setup_timeout_ns => {
                    Some((EndReason::Timeout, call.last_ns))
                }
                Phase::Answered if now - call.last_ns > self.cfg.idle_timeout_ns => {
                    Some((EndReason::Timeout, call.last_ns))
                }
                _ => None,
            };
            if let Some((reason, at)) = end {
                self.end_call(slot, reason, at, sink);
            }
        }
    }

    fn end_call(&mut self, slot: u32, reason: EndReason, end_ns: i64, sink: &mut impl Sink) {
        let Some(call) = self.calls[slot as usize].take() else { return };
        self.free.push(slot);
        self.by_call_id.remove(&call.call_id);
        for &ep in &call.endpoints {
            self.unbind(ep, call.uid);
        }
        self.stats.calls_ended += 1;
        let cref = CallRef { slot, uid: call.uid };
        let summary = summarize(call, reason, end_ns);
        sink.call_ended(cref, summary);
    }
}

impl Call {
    fn phase_is_cancel(&self) -> bool {
        matches!(self.phase, Phase::Ending { reason: EndReason::Cancel, .. })
    }
}

fn summarize(mut call: Call, reason: EndReason, end_ns: i64) -> CallSummary {
    let mut streams = Vec::with_capacity(call.streams.len());
    let mut codecs: Vec<String> = Vec::new();
    for (i, s) in call.streams.iter().enumerate() {
        let pt = s.audio_pt.unwrap_or(s.first_pt);
        let codec = call.codec(s.side.other(), pt).map_or_else(|| format!("PT{pt}"), |c| c.0.to_string());
        if s.audio_pt.is_some() && !codecs.iter().any(|c| c.eq_ignore_ascii_case(&codec)) {
            codecs.push(codec.clone());
        }
        streams.push(StreamSummary {
            index: i as u8,
            side: s.side,
            ssrc: s.ssrc,
            decodable: is_decodable(&codec),
            codec,
            payload_type: pt,
            clock: s.clock,
            src: Some(s.src),
            dst: Some(s.dst),
            packets: s.stats.packets,
            lost: s.stats.lost(),
            duplicates: s.stats.duplicates,
            out_of_order: s.stats.out_of_order,
            jitter_ms: (s.stats.jitter_ms(s.clock) * 100.0).round() / 100.0,
            mos: s.stats.mos(s.clock),
            first_ns: s.stats.first_ts_ns,
            last_ns: s.stats.last_ts_ns,
            rtcp_fraction_lost: s.rtcp.map(|r| r.0 as f64 / 256.0),
            rtcp_jitter_ms: s.rtcp.map(|r| r.1 as f64 * 1000.0 / s.clock.max(1) as f64),
        });
    }
    if codecs.is_empty() {
        // No media seen: report what was negotiated (first codec of the answer, else the offer).
        for side in [Side::Callee, Side::Caller] {
            if let Some((_, c, _)) = call.pt_map[side.index()].first() {
                codecs.push(c.to_string());
                break;
            }
        }
    }
    if let Some(h) = call.holds.last_mut()
        && h.end_ns.is_none()
    {
        h.end_ns = Some(end_ns);
    }
    let payload_types = [Side::Caller, Side::Callee]
        .into_iter()
        .flat_map(|side| call.pt_map[side.index()].iter().map(move |(p, c, r)| (side, *p, c.to_string(), *r)))
        .collect();
    CallSummary {
        call_id: call.call_id.to_string(),
        caller: call.caller,
        callee: call.callee,
        start_ns: call.start_ns,
        answer_ns: call.answer_ns,
        end_ns: end_ns.max(call.start_ns),
        end_reason: reason,
        sip_code: call.sip_code,
        codecs,
        dtmf: call.dtmf,
        holds: call.holds,
        streams,
        payload_types,
        sip_messages: call.sip_messages,
    }
}

/// One spelling per codec, so that searches and reports agree whatever case the SDP used.
fn canonical_codec(name: &str) -> String {
    if name.eq_ignore_ascii_case("telephone-event") { "telephone-event".into() } else { name.to_ascii_uppercase() }
}

/// DTMF from a SIP INFO body: application/dtmf-relay (`Signal=5`, `Duration=160`) or application/dtmf.
fn info_dtmf(msg: &SipMessage<'_>) -> Option<(char, u32)> {
    let ct = msg.content_type()?.to_ascii_lowercase();
    let body = std::str::from_utf8(msg.body).ok()?;
    if ct.contains("dtmf-relay") {
        let mut digit = None;
        let mut duration = 0;
        for line in body.lines() {
            let (k, v) = line.split_once('=')?;
            match k.trim().to_ascii_lowercase().as_str() {
                "signal" => digit = v.trim().chars().next().map(|c| c.to_ascii_uppercase()),
                "duration" => duration = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        let d = digit?;
        return (d.is_ascii_digit() || matches!(d, '*' | '#' | 'A'..='D')).then_some((d, duration));
    }
    if ct.contains("application/dtmf") {
        let t = body.trim();
        if let Ok(n) = t.parse::<u8>() {
            return dtmf_char(n).map(|d| (d, 0));
        }
        return t.chars().next().filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#')).map(|d| (d, 0));
    }
    None
}
