//! SDP (RFC 4566/8866) as far as recording needs it: where each side wants to receive RTP and RTCP,
//! which payload types mean which codec, and the media direction (for hold).

use std::net::IpAddr;

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtpmap {
    pub pt: u8,
    pub encoding: String,
    pub clock: u32,
    pub channels: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// "audio", "video", "image" (T.38), …
    pub kind: String,
    pub port: u16,
    pub proto: String,
    pub addr: Option<IpAddr>,
    pub payload_types: Vec<u8>,
    pub rtpmap: Vec<Rtpmap>,
    pub ptime: Option<u32>,
    pub rtcp_port: Option<u16>,
    pub rtcp_addr: Option<IpAddr>,
    pub rtcp_mux: bool,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sdp {
    pub media: Vec<Media>,
}

fn parse_addr(v: &str) -> Option<IpAddr> {
    // "IN IP4 1.2.3.4" (possibly with /ttl)
    let mut it = v.split_whitespace();
    let _net = it.next()?;
    let _fam = it.next()?;
    let a = it.next()?;
    a.split('/').next()?.parse().ok()
}

fn parse_direction(a: &str) -> Option<Direction> {
    Some(match a {
        "sendrecv" => Direction::SendRecv,
        "sendonly" => Direction::SendOnly,
        "recvonly" => Direction::RecvOnly,
        "inactive" => Direction::Inactive,
        _ => return None,
    })
}

/// The static payload types of RFC 3551 that a call recorder meets.
pub fn static_rtpmap(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        _ => return None,
    })
}

/// The codec of a payload type: as the receiving side announced it (RFC 3264: an SDP lists the types
/// its author expects to receive), else as the sending side did, else the static table.
pub fn lookup_pt<'a, S: AsRef<str>>(
    receiver: &'a [(u8, S, u32)],
    sender: &'a [(u8, S, u32)],
    pt: u8,
) -> Option<(&'a str, u32)> {
    receiver
        .iter()
        .chain(sender)
        .find(|(p, _, _)| *p == pt)
        .map(|(_, c, r)| (c.as_ref(), *r))
        .or_else(|| static_rtpmap(pt))
}

impl Sdp {
    /// Parses an SDP body. Unknown or broken lines are skipped: a recorder records what it can.
    pub fn parse(body: &[u8]) -> Sdp {
        let text = String::from_utf8_lossy(body);
        let mut sdp = Sdp::default();
        let mut session_addr = None;
        let mut session_dir = Direction::SendRecv;
        for line in text.lines() {
            let line = line.trim_end();
            let Some((k, v)) = line.split_once('=') else { continue };
            let cur = sdp.media.last_mut();
            match (k, cur) {
                ("c", None) => session_addr = parse_addr(v),
                ("c", Some(m)) => m.addr = parse_addr(v).or(m.addr),
                ("m", _) => {
                    let mut it = v.split_whitespace();
                    let kind = it.next().unwrap_or("").to_string();
                    let port = it.next().and_then(|p| p.split('/').next()?.parse().ok()).unwrap_or(0);
                    let proto = it.next().unwrap_or("").to_string();
                    let payload_types = it.filter_map(|p| p.parse().ok()).collect();
                    sdp.media.push(Media {
                        kind,
                        port,
                        proto,
                        addr: session_addr,
                        payload_types,
                        rtpmap: Vec::new(),
                        ptime: None,
                        rtcp_port: None,
                        rtcp_addr: None,
                        rtcp_mux: false,
                        direction: session_dir,
                    });
                }
                ("a", cur) => {
                    let (name, val) = v.split_once(':').unwrap_or((v, ""));
                    match (name, cur) {
                        (d, None) => {
                            if let Some(dir) = parse_direction(d) {
                                session_dir = dir;
                            }
                        }
                        ("rtpmap", Some(m)) => {
                            let (pt, enc) = val.split_once(' ').unwrap_or((val, ""));
                            let mut parts = enc.trim().split('/');
                            let (Ok(pt), Some(name)) = (pt.trim().parse::<u8>(), parts.next()) else { continue };
                            let clock = parts.next().and_then(|c| c.parse().ok()).unwrap_or(8000);
                            let channels = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                            if !name.is_empty() {
                                m.rtpmap.push(Rtpmap { pt, encoding: name.to_string(), clock, channels });
                            }
                        }
                        ("ptime", Some(m)) => m.ptime = val.trim().parse().ok(),
                        ("rtcp", Some(m)) => {
                            let mut it = val.splitn(2, ' ');
                            m.rtcp_port = it.next().and_then(|p| p.trim().parse().ok());
                            m.rtcp_addr = it.next().and_then(parse_addr);
                        }
                        ("rtcp-mux", Some(m)) => m.rtcp_mux = true,
                        (d, Some(m)) => {
                            if let Some(dir) = parse_direction(d) {
                                m.direction = dir;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        sdp
    }

    /// The first audio stream with a usable port.
    /// The (address, port) pairs a call's audio arrives on: RTP, and RTCP unless muxed. What the
    /// engine binds to the call and what capture steers and lets through the XDP filter.
    pub fn audio_endpoints(&self) -> Vec<(IpAddr, u16)> {
        let mut eps = Vec::with_capacity(2);
        if let Some(audio) = self.audio()
            && let Some(addr) = audio.addr.filter(|a| !a.is_unspecified())
        {
            eps.push((addr, audio.port));
            if !audio.rtcp_mux {
                let rtcp_addr = audio.rtcp_addr.unwrap_or(addr);
                eps.push((rtcp_addr, audio.rtcp_port.unwrap_or(audio.port.wrapping_add(1))));
            }
        }
        eps
    }

    pub fn audio(&self) -> Option<&Media> {
        self.media.iter().find(|m| m.kind == "audio" && m.port != 0)
    }
}

impl Media {
    /// Codec name and clock rate of a payload type, from rtpmap or the static table.
    pub fn codec_of(&self, pt: u8) -> Option<(&str, u32)> {
        self.rtpmap.iter().find(|r| r.pt == pt).map(|r| (r.encoding.as_str(), r.clock)).or_else(|| static_rtpmap(pt))
    }

    /// Whether this media puts the call on hold: not sending both ways, or a null address.
    pub fn is_hold(&self) -> bool {
        self.direction != Direction::SendRecv || self.addr.is_some_and(|a| a.is_unspecified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offer() {
        let body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\na=rtcp:4005 IN IP4 10.0.0.9\r\n\
a=sendonly\r\nm=video 0 RTP/AVP 96\r\n";
        let sdp = Sdp::parse(body);
        let a = sdp.audio().unwrap();
        assert_eq!(a.port, 4000);
        assert_eq!(a.addr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.payload_types, vec![8, 0, 101]);
        assert_eq!(a.codec_of(101), Some(("telephone-event", 8000)));
        assert_eq!(a.codec_of(8), Some(("PCMA", 8000)));
        assert_eq!(a.ptime, Some(30));
        assert_eq!((a.rtcp_port, a.rtcp_addr), (Some(4005), Some("10.0.0.9".parse().unwrap())));
        assert!(a.is_hold());
        assert_eq!(sdp.media.len(), 2);
    }

    #[test]
    fn garbage_does_not_panic() {
        let sdp = Sdp::parse(b"m=\na=rtpmap:\na=rtpmap:999 x\nc=IN\nm=audio 99999999 RTP\n");
        assert!(sdp.audio().is_none());
    }
}
