//! Fuzzes the engine's packet path: a call is set up with a real INVITE/200, then the input is cut
//! into UDP and TCP packets between the call's endpoints and random ones, with random timing.
#![no_main]
use capture_core::{Packet, Transport};
use libfuzzer_sys::fuzz_target;
use recorder::memsink::MemorySink;
use recorder::{Config, Engine};
use std::net::{IpAddr, Ipv4Addr};

const INVITE: &[u8] = b"INVITE sip:b@x SIP/2.0\r\nCall-ID: f1\r\nFrom: <sip:1@x>;tag=a\r\nTo: <sip:2@x>\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";
const OK: &[u8] = b"SIP/2.0 200 OK\r\nCall-ID: f1\r\nFrom: <sip:1@x>;tag=a\r\nTo: <sip:2@x>;tag=b\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 5000 RTP/AVP 0\r\n";

fuzz_target!(|data: &[u8]| {
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    let mut e = Engine::new(Config::default());
    let mut sink = MemorySink::new(true);
    let sip = |p| Packet { src: a, dst: b, sport: 5060, dport: 5060, transport: Transport::Udp, payload: p };
    e.handle(&sip(INVITE), 0, &mut sink);
    e.handle(&Packet { src: b, dst: a, ..sip(OK) }, 1_000, &mut sink);
    let mut ts = 2_000i64;
    for chunk in data.split(|&x| x == 0x5a) {
        let Some((&ctl, body)) = chunk.split_first() else { continue };
        ts += (ctl as i64) * 7_000_000;
        let (src, dst, sport, dport) = match ctl & 3 {
            0 => (a, b, 4000, 5000),
            1 => (b, a, 5000, 4000),
            2 => (a, b, 5060, 5060),
            _ => (b, a, ctl as u16, 4000),
        };
        let transport = if ctl & 4 == 0 { Transport::Udp } else { Transport::Tcp { seq: ts as u32, flags: ctl >> 4 } };
        e.handle(&Packet { src, dst, sport, dport, transport, payload: body }, ts, &mut sink);
    }
    e.finish(&mut sink);
    for (summary, _) in &sink.calls {
        assert!(summary.end_ns >= summary.start_ns);
    }
});
