//! Fuzzes the recording reader: arbitrary bytes as a recording file, and a real recording with the
//! input XOR-ed over it (so mutations reach the authenticated chunks and the record parser).
#![no_main]
use libfuzzer_sys::fuzz_target;
use recorder::store::file::{RecordingWriter, read_recording_bytes};
use recorder::store::keys::PrivateStoreKey;
use std::sync::OnceLock;

struct Fixture {
    key: PrivateStoreKey,
    good: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("callrec-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (public, sealed) = recorder::store::keys::generate(b"fuzz").unwrap();
        let kp = dir.join("k");
        std::fs::write(&kp, sealed).unwrap();
        let key = PrivateStoreKey::unseal(&kp, b"fuzz").unwrap();
        let rp = dir.join("r.crec");
        let _ = std::fs::remove_file(&rp);
        let mut w = RecordingWriter::create(&rp, &public, 0, true).unwrap();
        w.start(0, "fuzz-call").unwrap();
        w.payload_types(recorder::Side::Caller, &[(0, "PCMU", 8000)]).unwrap();
        for i in 0..200u16 {
            let mut rtp = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            rtp[2..4].copy_from_slice(&i.to_be_bytes());
            rtp.extend_from_slice(&[0x55; 160]);
            w.rtp(0, recorder::Side::Caller, i as i64 * 20_000_000, &rtp).unwrap();
        }
        let summary: recorder::CallSummary = serde_json_stub();
        w.finish(&summary).unwrap();
        let good = std::fs::read(&rp).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Fixture { key, good }
    })
}

fn serde_json_stub() -> recorder::CallSummary {
    recorder::CallSummary {
        call_id: "fuzz-call".into(),
        caller: Default::default(),
        callee: Default::default(),
        start_ns: 0,
        answer_ns: None,
        end_ns: 1,
        end_reason: recorder::EndReason::CaptureEnded,
        sip_code: None,
        codecs: vec![],
        dtmf: vec![],
        holds: vec![],
        streams: vec![],
        payload_types: vec![],
        sip_messages: 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let _ = read_recording_bytes(data, "fuzz", &f.key);
    let mut m = f.good.clone();
    for (i, b) in data.iter().enumerate() {
        let at = (i * 131) % m.len();
        m[at] ^= b;
    }
    if data.len() % 3 == 1 {
        m.truncate(m.len().saturating_sub(data.len()));
    }
    if let Ok(c) = read_recording_bytes(&m, "fuzz", &f.key) {
        let _ = recorder::export::render(&c.records);
    }
});
