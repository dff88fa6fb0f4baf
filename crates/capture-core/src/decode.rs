//! Frame decoding: from a link-layer frame down to the UDP or TCP payload that carries SIP or RTP.
//!
//! A mirror port sees everything the switch sees, so tunnels and stacked headers are normal, not
//! exotic: 802.1Q/QinQ, PPPoE, MPLS, GRE (incl. PPTP), ERSPAN I/II/III, IP-in-IP, VXLAN and GTP-U
//! are peeled here. IP headers (IPv4 options, IPv6 extension headers) are parsed here too, bounds-checked;
//! everything else is read in place. Decoding borrows the frame and allocates nothing, except when
//! an IP fragment has to be held for reassembly (see [`crate::defrag`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::defrag::{Defrag, FragKey, FragOutcome};

/// LINKTYPE_* values understood by [`Decoder`].
pub mod linktype {
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    pub const PPP: u32 = 9;
    pub const RAW_OLD: u32 = 12;
    pub const RAW_OLD2: u32 = 14;
    pub const PPP_HDLC: u32 = 50;
    pub const RAW: u32 = 101;
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

/// How deep tunnels may nest before a frame is refused (a loop of crafted headers ends here).
const MAX_DEPTH: u8 = 12;

/// Transport of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp { seq: u32, flags: u8 },
}

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
}

/// A UDP or TCP packet with its payload, borrowed from the frame or the reassembly buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub transport: Transport,
    pub payload: &'a [u8],
}

/// A decoded packet held for a moment in a batch, its payload kept as a position in the batch's
/// buffer instead of a borrow, so a worker can decode a whole batch first and then run it
/// through the engine with look-ahead (`recorder::Engine::handle_batch`), without a lifetime
/// tying the held packets to the decoder.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub ts: i64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub transport: Transport,
    off: u32,
    len: u32,
}

impl Packet<'_> {
    /// The packet, captured at `ts`, as a [`Held`] relative to `base`; `None` when its payload
    /// does not lie in `base` (a datagram reassembled from fragments lies in the decoder).
    #[inline]
    pub fn hold(&self, ts: i64, base: &[u8]) -> Option<Held> {
        let off = (self.payload.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
        if off + self.payload.len() > base.len() {
            return None;
        }
        Some(Held {
            ts,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            transport: self.transport,
            off: u32::try_from(off).ok()?,
            len: self.payload.len() as u32,
        })
    }
}

impl Held {
    /// The packet again, its payload in `base`, which must be the buffer given to
    /// [`Packet::hold`] (another buffer gives another payload, or an empty one if too short).
    #[inline]
    pub fn packet<'b>(&self, base: &'b [u8]) -> Packet<'b> {
        let (off, len) = (self.off as usize, self.len as usize);
        Packet {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            transport: self.transport,
            payload: base.get(off..off + len).unwrap_or_default(),
        }
    }
}

/// Frames that are fine but carry nothing callrec records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Not IP (ARP, STP, LLDP, …): the ethertype or PPP protocol.
    NotIp(u16),
    /// IP, but neither UDP nor TCP nor a tunnel (ICMP, SCTP, OSPF, …).
    IpProtocol(u8),
    /// A link type this decoder does not know.
    LinkType(u32),
    /// A fragment was stored; the datagram is not complete yet.
    FragmentHeld,
    /// A fragment inside a datagram that was itself reassembled from fragments.
    NestedFragment,
    /// A fragment that the reassembly limits refused (see [`crate::defrag::Limits`]).
    FragmentDropped,
    /// GTP-U signalling (echo, error indication), not user traffic.
    GtpControl,
}

#[derive(Debug, Clone, Copy)]
pub enum Decoded<'a> {
    Packet(Packet<'a>),
    Ignored(Ignored),
}

/// A frame that could not be decoded: which layer, and what was wrong with it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{layer}: {what}")]
pub struct DecodeError {
    pub layer: &'static str,
    pub what: &'static str,
}

fn err<T>(layer: &'static str, what: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError { layer, what })
}

fn be16(b: &[u8], at: usize, layer: &'static str) -> Result<u16, DecodeError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => err(layer, "truncated header"),
    }
}

/// The decoder: stateless except for IP reassembly.
#[derive(Default)]
pub struct Decoder {
    defrag: Defrag,
}

enum Step<'a> {
    Done(Decoded<'a>),
    Reassembled { src: IpAddr, dst: IpAddr, proto: u8, depth: u8 },
}

impl Decoder {
    pub fn new(defrag: Defrag) -> Self {
        Decoder { defrag }
    }

    pub fn defrag(&self) -> &Defrag {
        &self.defrag
    }

    /// Decodes one frame captured at `ts_ns` on a link of type `linktype`.
    pub fn decode<'a>(&'a mut self, ts_ns: i64, linktype: u32, frame: &'a [u8]) -> Result<Decoded<'a>, DecodeError> {
        let mut w = Walk { defrag: Some(&mut self.defrag), ts_ns };
        match w.link(linktype, frame)? {
            Step::Done(d) => Ok(d),
            Step::Reassembled { src, dst, proto, depth } => {
                let data = self.defrag.output();
                let mut w = Walk { defrag: None, ts_ns };
                match w.ip_payload(src, dst, proto, data, depth)? {
                    Step::Done(d) => Ok(d),
                    Step::Reassembled { .. } => Ok(Decoded::Ignored(Ignored::NestedFragment)),
                }
            }
        }
    }

    /// Drops reassembly state older than the timeout (call now and then with the current time).
    pub fn expire(&mut self, now_ns: i64) {
        self.defrag.expire(now_ns);
    }
}

struct Walk<'d> {
    defrag: Option<&'d mut Defrag>,
    ts_ns: i64,
}

impl Walk<'_> {
    fn link<'a>(&mut self, linktype: u32, f: &'a [u8]) -> Result<Step<'a>, DecodeError> {
        use linktype::*;
        match linktype {
            ETHERNET => self.ethernet(f, 0),
            LINUX_SLL => {
                let proto = be16(f, 14, "linux-sll")?;
                self.ethertype(proto, &f[16..], 0)
            }
            LINUX_SLL2 => {
                let proto = be16(f, 0, "linux-sll2")?;
                if f.len() < 20 {
                    return err("linux-sll2", "truncated header");
                }
                self.ethertype(proto, &f[20..], 0)
            }
            RAW | RAW_OLD | RAW_OLD2 => self.ip(f, 0),
            IPV4 | IPV6 => self.ip(f, 0),
            NULL | LOOP => {
                let Some(fam) = f.get(..4) else { return err("loopback", "truncated header") };
                let le = u32::from_le_bytes(fam.try_into().unwrap());
                let be = u32::from_be_bytes(fam.try_into().unwrap());
                match (le.min(be), &f[4..]) {
                    (2, rest) | (24 | 28 | 30, rest) => self.ip(rest, 0),
                    (other, _) => Ok(Step::Done(Decoded::Ignored(Ignored::NotIp(other as u16)))),
                }
            }
            PPP | PPP_HDLC => self.ppp(f, 0),
            other => Ok(Step::Done(Decoded::Ignored(Ignored::LinkType(other)))),
        }
    }

    fn ethernet<'a>(&mut self, f: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        let et = be16(f, 12, "ethernet")?;
        self.ethertype(et, &f[14..], depth)
    }

    fn ethertype<'a>(&mut self, mut et: u16, mut p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return err("tunnel", "headers nested too deep");
        }
        // VLAN tags (802.1Q, 802.1ad QinQ, old 0x9100) stack any number of times.
        while matches!(et, 0x8100 | 0x88a8 | 0x9100 | 0x9200) {
            et = be16(p, 2, "802.1q")?;
            p = &p[4..];
        }
        match et {
            0x0800 | 0x86dd => self.ip(p, depth),
            0x8864 => {
                // PPPoE session: ver/type, code, session id, length, then PPP protocol.
                let len = be16(p, 4, "pppoe")? as usize;
                let body = &p[6..];
                let body = &body[..len.min(body.len())];
                self.ppp_proto(body, depth)
            }
            0x8847 | 0x8848 => self.mpls(p, depth),
            0x6558 => self.ethernet(p, depth + 1),
            _ => Ok(Step::Done(Decoded::Ignored(Ignored::NotIp(et)))),
        }
    }

    /// PPP with optional HDLC address/control bytes (0xff 0x03).
    fn ppp<'a>(&mut self, p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        let p = if p.starts_with(&[0xff, 0x03]) { &p[2..] } else { p };
        self.ppp_proto(p, depth)
    }

    fn ppp_proto<'a>(&mut self, p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        let Some(&first) = p.first() else { return err("ppp", "truncated header") };
        // Protocol field compression: an odd first byte is a one-byte protocol.
        let (proto, rest) = if first & 1 == 1 { (first as u16, &p[1..]) } else { (be16(p, 0, "ppp")?, &p[2..]) };
        match proto {
            0x0021 | 0x0057 => self.ip(rest, depth + 1),
            other => Ok(Step::Done(Decoded::Ignored(Ignored::NotIp(other)))),
        }
    }

    fn mpls<'a>(&mut self, mut p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        loop {
            let Some(label) = p.get(..4) else { return err("mpls", "truncated label stack") };
            p = &p[4..];
            if label[2] & 1 == 1 {
                break;
            }
        }
        match p.first().map(|b| b >> 4) {
            Some(4) | Some(6) => self.ip(p, depth + 1),
            // Pseudowire control word (first nibble 0), then Ethernet.
            Some(0) if p.len() >= 4 + 14 => self.ethernet(&p[4..], depth + 1),
            Some(_) => self.ethernet(p, depth + 1),
            None => err("mpls", "no payload after label stack"),
        }
    }

    fn ip<'a>(&mut self, p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        let ip = match p.first().map(|b| b >> 4) {
            Some(4) => parse_ipv4(p)?,
            Some(6) => parse_ipv6(p)?,
            _ => return err("ip", "neither IPv4 nor IPv6"),
        };
        if let Some(frag) = ip.frag {
            let key = FragKey { src: ip.src, dst: ip.dst, id: frag.id, proto: ip.proto };
            let Some(defrag) = self.defrag.as_deref_mut() else {
                return Ok(Step::Done(Decoded::Ignored(Ignored::NestedFragment)));
            };
            return Ok(match defrag.insert(self.ts_ns, key, frag.offset, frag.more, ip.payload) {
                FragOutcome::Held => Step::Done(Decoded::Ignored(Ignored::FragmentHeld)),
                FragOutcome::Dropped => Step::Done(Decoded::Ignored(Ignored::FragmentDropped)),
                FragOutcome::Complete => Step::Reassembled { src: ip.src, dst: ip.dst, proto: ip.proto, depth },
            });
        }
        self.ip_payload(ip.src, ip.dst, ip.proto, ip.payload, depth)
    }

    fn ip_payload<'a>(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        p: &'a [u8],
        depth: u8,
    ) -> Result<Step<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return err("tunnel", "headers nested too deep");
        }
        match proto {
            17 => {
                if p.len() < 8 {
                    return err("udp", "truncated header");
                }
                let sport = u16::from_be_bytes([p[0], p[1]]);
                let dport = u16::from_be_bytes([p[2], p[3]]);
                let ulen = u16::from_be_bytes([p[4], p[5]]) as usize;
                // Trust the UDP length only when it fits; some captures pad or truncate.
                let end = if (8..=p.len()).contains(&ulen) { ulen } else { p.len() };
                let body = &p[8..end];
                if let Some(step) = self.udp_tunnel(sport, dport, body, depth)? {
                    return Ok(step);
                }
                Ok(Step::Done(Decoded::Packet(Packet {
                    src,
                    dst,
                    sport,
                    dport,
                    transport: Transport::Udp,
                    payload: body,
                })))
            }
            6 => {
                if p.len() < 20 {
                    return err("tcp", "truncated header");
                }
                let off = ((p[12] >> 4) as usize) * 4;
                if off < 20 || off > p.len() {
                    return err("tcp", "bad data offset");
                }
                Ok(Step::Done(Decoded::Packet(Packet {
                    src,
                    dst,
                    sport: u16::from_be_bytes([p[0], p[1]]),
                    dport: u16::from_be_bytes([p[2], p[3]]),
                    transport: Transport::Tcp { seq: u32::from_be_bytes([p[4], p[5], p[6], p[7]]), flags: p[13] },
                    payload: &p[off..],
                })))
            }
            4 | 41 => self.ip(p, depth + 1),
            47 => self.gre(p, depth + 1),
            other => Ok(Step::Done(Decoded::Ignored(Ignored::IpProtocol(other)))),
        }
    }

    fn udp_tunnel<'a>(
        &mut self,
        sport: u16,
        dport: u16,
        p: &'a [u8],
        depth: u8,
    ) -> Result<Option<Step<'a>>, DecodeError> {
        // VXLAN: 8-byte header with the I flag, then Ethernet.
        if (dport == 4789 || dport == 8472) && p.len() >= 8 + 14 && p[0] & 0x08 != 0 {
            return self.ethernet(&p[8..], depth + 1).map(Some);
        }
        // GTP-U (v1, G-PDU) carries user IP packets.
        if (dport == 2152 || sport == 2152) && p.len() >= 8 && p[0] >> 5 == 1 && p[0] & 0x10 != 0 {
            if p[1] != 0xff {
                return Ok(Some(Step::Done(Decoded::Ignored(Ignored::GtpControl))));
            }
            let mut at = 8;
            if p[0] & 0x07 != 0 {
                at = 12;
                let mut next = *p.get(11).ok_or(DecodeError { layer: "gtp-u", what: "truncated header" })?;
                while next != 0 {
                    let len =
                        *p.get(at).ok_or(DecodeError { layer: "gtp-u", what: "truncated extension" })? as usize * 4;
                    if len == 0 || at + len > p.len() {
                        return err("gtp-u", "bad extension header length");
                    }
                    next = p[at + len - 1];
                    at += len;
                }
            }
            let inner = p.get(at..).ok_or(DecodeError { layer: "gtp-u", what: "truncated header" })?;
            return self.ip(inner, depth + 1).map(Some);
        }
        Ok(None)
    }

    fn gre<'a>(&mut self, p: &'a [u8], depth: u8) -> Result<Step<'a>, DecodeError> {
        let flags = be16(p, 0, "gre")?;
        let proto = be16(p, 2, "gre")?;
        let version = flags & 0x7;
        let mut at = 4;
        if flags & 0x8000 != 0 {
            at += 4; // checksum + reserved
        }
        if flags & 0x2000 != 0 || version == 1 {
            at += 4; // key (PPTP: payload length + call id)
        }
        let has_seq = flags & 0x1000 != 0;
        if has_seq {
            at += 4;
        }
        if version == 1 && flags & 0x0080 != 0 {
            at += 4; // PPTP acknowledgement
        }
        let Some(inner) = p.get(at..) else { return err("gre", "truncated header") };
        match proto {
            // ERSPAN type II has a sequence number and an 8-byte header; type I has neither.
            0x88be if has_seq => match inner.get(8..) {
                Some(eth) => self.ethernet(eth, depth + 1),
                None => err("erspan", "truncated header"),
            },
            0x88be => self.ethernet(inner, depth + 1),
            0x22eb => {
                // ERSPAN type III: 12 bytes, plus an 8-byte platform sub-header when O is set.
                let Some(h) = inner.get(..12) else { return err("erspan", "truncated header") };
                let skip = if h[11] & 0x01 != 0 { 20 } else { 12 };
                match inner.get(skip..) {
                    Some(eth) => self.ethernet(eth, depth + 1),
                    None => err("erspan", "truncated header"),
                }
            }
            0x880b => self.ppp(inner, depth + 1),
            et => self.ethertype(et, inner, depth + 1),
        }
    }
}

struct Frag {
    id: u32,
    offset: usize,
    more: bool,
}

struct IpView<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload: &'a [u8],
    frag: Option<Frag>,
}

/// IPv4 header with options; the total length bounds the payload when it fits (captures may pad).
fn parse_ipv4(p: &[u8]) -> Result<IpView<'_>, DecodeError> {
    if p.len() < 20 {
        return err("ipv4", "truncated header");
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    if ihl < 20 || ihl > p.len() {
        return err("ipv4", "bad header length");
    }
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    // A total length of 0 happens with TSO captures: take what was captured.
    let end = if (ihl..=p.len()).contains(&total) { total } else { p.len() };
    let flags_off = u16::from_be_bytes([p[6], p[7]]);
    let more = flags_off & 0x2000 != 0;
    let offset = (flags_off & 0x1fff) as usize * 8;
    let frag = (more || offset != 0).then(|| Frag { id: u16::from_be_bytes([p[4], p[5]]) as u32, offset, more });
    Ok(IpView {
        src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
        dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
        proto: p[9],
        payload: &p[ihl..end],
        frag,
    })
}

/// IPv6 header and its extension-header chain (hop-by-hop, routing, destination options,
/// fragment, authentication), bounds-checked at every step.
fn parse_ipv6(p: &[u8]) -> Result<IpView<'_>, DecodeError> {
    if p.len() < 40 {
        return err("ipv6", "truncated header");
    }
    let plen = u16::from_be_bytes([p[4], p[5]]) as usize;
    let end = if plen != 0 && 40 + plen <= p.len() { 40 + plen } else { p.len() };
    let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).unwrap()));
    let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).unwrap()));
    let mut next = p[6];
    let mut at = 40;
    let mut frag = None;
    for _ in 0..16 {
        match next {
            // Hop-by-hop, routing, destination options (8-octet units) and AH (4-octet units).
            0 | 43 | 60 | 51 => {
                let h = p.get(at..at + 2).ok_or(DecodeError { layer: "ipv6", what: "truncated extension header" })?;
                let len = if next == 51 { (h[1] as usize + 2) * 4 } else { (h[1] as usize + 1) * 8 };
                if at + len > end {
                    return err("ipv6", "extension header longer than the packet");
                }
                next = h[0];
                at += len;
            }
            44 => {
                let h = p.get(at..at + 8).ok_or(DecodeError { layer: "ipv6", what: "truncated fragment header" })?;
                let off = u16::from_be_bytes([h[2], h[3]]);
                let more = off & 1 != 0;
                let offset = (off >> 3) as usize * 8;
                if more || offset != 0 {
                    frag = Some(Frag { id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]), offset, more });
                }
                next = h[0];
                at += 8;
            }
            _ => {
                if at > end {
                    return err("ipv6", "headers longer than the packet");
                }
                return Ok(IpView { src, dst, proto: next, payload: &p[at..end], frag });
            }
        }
    }
    err("ipv6", "too many extension headers")
}

/// Handy for tests and generators: an IPv4 address from octets.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}
