//! Fuzzes the SIP message view (both framings, every accessor) and the SDP parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use recorder::sdp::Sdp;
use recorder::sip::SipMessage;

fuzz_target!(|data: &[u8]| {
    for stream in [false, true] {
        if let Ok((m, used)) = SipMessage::parse(data, stream) {
            assert!(used <= data.len());
            let _ = (m.call_id(), m.cseq(), m.content_type(), m.content_length(), m.top_via_branch());
            let _ = m.from().map(|f| f.user());
            let _ = m.to().map(|t| t.user());
            let _ = m.p_asserted_identity().map(|p| p.user());
            if m.has_sdp() {
                let s = Sdp::parse(m.body);
                if let Some(a) = s.audio() {
                    let _ = (a.is_hold(), a.codec_of(0));
                }
            }
        }
    }
    let s = Sdp::parse(data);
    for m in &s.media {
        for pt in &m.payload_types {
            let _ = m.codec_of(*pt);
        }
    }
});
