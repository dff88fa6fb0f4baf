//! Synthetic frames for tests, benchmarks and traffic generators: Ethernet + IPv4/IPv6 + UDP/TCP,
//! optionally VLAN-tagged or split into IP fragments. Checksums are filled in (IPv4 header, UDP over
//! IPv4) so the frames are also valid on a real wire.

use std::net::IpAddr;

/// Where a synthetic datagram goes.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn csum(data: &[u8], mut acc: u32) -> u16 {
    for c in data.chunks(2) {
        acc += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn ethernet(out: &mut Vec<u8>, vlan: Option<u16>, ethertype: u16) {
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    if let Some(id) = vlan {
        out.extend_from_slice(&0x8100u16.to_be_bytes());
        out.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn ip_header(out: &mut Vec<u8>, f: &Flow, proto: u8, payload_len: usize, id: u16, frag: u16) {
    match (f.src, f.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&frag.to_be_bytes());
            out.extend_from_slice(&[64, proto, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let c = csum(&out[start..start + 20], 0);
            out[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        _ => panic!("synthetic flow mixes IPv4 and IPv6 addresses"),
    }
}

fn udp_segment(f: &Flow, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&f.sport.to_be_bytes());
    udp.extend_from_slice(&f.dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (f.src, f.dst) {
        let mut pseudo = 0u32;
        for w in [s.octets(), d.octets()] {
            pseudo += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
        }
        pseudo += 17 + udp.len() as u32;
        let c = match csum(&udp, pseudo) {
            0 => 0xffff,
            c => c,
        };
        udp[6..8].copy_from_slice(&c.to_be_bytes());
    }
    udp
}

fn ethertype_of(f: &Flow) -> u16 {
    if f.src.is_ipv4() { 0x0800 } else { 0x86dd }
}

/// An Ethernet frame carrying one UDP datagram.
pub fn udp_frame(f: &Flow, payload: &[u8]) -> Vec<u8> {
    udp_frame_vlan(f, None, payload)
}

/// Like [`udp_frame`], with an optional 802.1Q tag.
pub fn udp_frame_vlan(f: &Flow, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let udp = udp_segment(f, payload);
    let mut out = Vec::with_capacity(14 + 4 + 40 + udp.len());
    ethernet(&mut out, vlan, ethertype_of(f));
    ip_header(&mut out, f, 17, udp.len(), 1, 0x4000);
    out.extend_from_slice(&udp);
    out
}

/// A UDP datagram split into IPv4 fragments of at most `mtu_payload` bytes (rounded to 8).
pub fn udp_fragments_v4(f: &Flow, id: u16, payload: &[u8], mtu_payload: usize) -> Vec<Vec<u8>> {
    let udp = udp_segment(f, payload);
    let step = (mtu_payload / 8).max(1) * 8;
    let mut frames = Vec::new();
    let mut off = 0;
    while off < udp.len() {
        let end = (off + step).min(udp.len());
        let more = end < udp.len();
        let mut out = Vec::new();
        ethernet(&mut out, None, 0x0800);
        let frag = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
        ip_header(&mut out, f, 17, end - off, id, frag);
        out.extend_from_slice(&udp[off..end]);
        frames.push(out);
        off = end;
    }
    frames
}

/// An Ethernet frame carrying one TCP segment (flags: PSH|ACK unless given).
pub fn tcp_frame(f: &Flow, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&f.sport.to_be_bytes());
    tcp.extend_from_slice(&f.dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    let mut out = Vec::new();
    ethernet(&mut out, None, ethertype_of(f));
    ip_header(&mut out, f, 6, tcp.len(), 1, 0x4000);
    out.extend_from_slice(&tcp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoded, Decoder, Ignored, Transport, linktype, v4};

    fn flow() -> Flow {
        Flow { src: v4(10, 0, 0, 1), dst: v4(10, 0, 0, 2), sport: 5060, dport: 5062 }
    }

    #[test]
    fn decodes_vlan_udp() {
        let frame = udp_frame_vlan(&flow(), Some(42), b"hello");
        let mut d = Decoder::default();
        match d.decode(0, linktype::ETHERNET, &frame).unwrap() {
            Decoded::Packet(p) => {
                assert_eq!((p.sport, p.dport, p.payload), (5060, 5062, &b"hello"[..]));
                assert_eq!(p.transport, Transport::Udp);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reassembles_v4_fragments_through_decoder() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let frames = udp_fragments_v4(&flow(), 77, &payload, 1400);
        assert_eq!(frames.len(), 3);
        let mut d = Decoder::default();
        for f in &frames[..2] {
            assert!(matches!(d.decode(0, linktype::ETHERNET, f).unwrap(), Decoded::Ignored(Ignored::FragmentHeld)));
        }
        match d.decode(0, linktype::ETHERNET, &frames[2]).unwrap() {
            Decoded::Packet(p) => assert_eq!(p.payload, &payload[..]),
            other => panic!("{other:?}"),
        }
    }

    fn payload_of(frame: &[u8]) -> Vec<u8> {
        let mut d = Decoder::default();
        match d.decode(0, linktype::ETHERNET, frame).unwrap() {
            Decoded::Packet(p) => p.payload.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    /// An IPv4 packet (no Ethernet header) from an Ethernet frame built by these helpers.
    fn ip_of(frame: &[u8]) -> &[u8] {
        &frame[14..]
    }

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut v = vec![0u8; 12];
        v.extend_from_slice(&ethertype.to_be_bytes());
        v
    }

    fn outer_ip(proto: u8, inner: &[u8]) -> Vec<u8> {
        let mut v = eth(0x0800);
        let f = Flow { src: v4(192, 0, 2, 1), dst: v4(192, 0, 2, 2), sport: 0, dport: 0 };
        ip_header(&mut v, &f, proto, inner.len(), 9, 0);
        v.extend_from_slice(inner);
        v
    }

    #[test]
    fn tunnels_and_stacks() {
        let inner = udp_frame(&flow(), b"INVITE");
        // QinQ: 802.1ad outer tag, 802.1Q inner tag.
        let mut qinq = eth(0x88a8);
        qinq.extend_from_slice(&[0, 10, 0x81, 0x00, 0, 20, 0x08, 0x00]);
        qinq.extend_from_slice(ip_of(&inner));
        assert_eq!(payload_of(&qinq), b"INVITE");
        // MPLS: two labels, bottom of stack on the second.
        let mut mpls = eth(0x8847);
        mpls.extend_from_slice(&[0, 0, 0x10, 64, 0, 0, 0x21, 64]);
        mpls.extend_from_slice(ip_of(&inner));
        assert_eq!(payload_of(&mpls), b"INVITE");
        // VXLAN (UDP 4789) carrying the whole inner Ethernet frame.
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&inner);
        let outer = udp_frame(&Flow { src: v4(192, 0, 2, 1), dst: v4(192, 0, 2, 2), sport: 40000, dport: 4789 }, &vx);
        assert_eq!(payload_of(&outer), b"INVITE");
        // ERSPAN type II: GRE with sequence number, protocol 0x88be, 8-byte ERSPAN header.
        let mut gre = vec![0x10, 0x00, 0x88, 0xbe, 0, 0, 0, 1];
        gre.extend_from_slice(&[0x10, 0, 0, 1, 0, 0, 0, 0]);
        gre.extend_from_slice(&inner);
        assert_eq!(payload_of(&outer_ip(47, &gre)), b"INVITE");
        // ERSPAN type III: 12-byte header, no platform sub-header.
        let mut gre3 = vec![0x10, 0x00, 0x22, 0xeb, 0, 0, 0, 1];
        gre3.extend_from_slice(&[0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        gre3.extend_from_slice(&inner);
        assert_eq!(payload_of(&outer_ip(47, &gre3)), b"INVITE");
        // IP-in-IP and GTP-U.
        assert_eq!(payload_of(&outer_ip(4, ip_of(&inner))), b"INVITE");
        let mut gtp = vec![0x30, 0xff, 0, 0, 0, 0, 0, 1];
        gtp.extend_from_slice(ip_of(&inner));
        let outer = udp_frame(&Flow { src: v4(192, 0, 2, 1), dst: v4(192, 0, 2, 2), sport: 2152, dport: 2152 }, &gtp);
        assert_eq!(payload_of(&outer), b"INVITE");
    }

    #[test]
    fn truncated_frames_are_errors() {
        let frame = udp_frame(&flow(), b"hello world");
        let mut d = Decoder::default();
        for cut in 0..frame.len() {
            // Every prefix decodes to something or an error: never a panic.
            let _ = d.decode(0, linktype::ETHERNET, &frame[..cut]);
        }
    }
}
