//! Real SIP traffic: sip-tester places calls between two network namespaces (uac_pcap against
//! uas -rtp_echo), tcpdump captures them, `callrec import` records them. Needs root; when not root
//! the test fails and says how to run it, unless CALLREC_SKIP_ROOT_TESTS=1 opts out explicitly.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn sipp_calls_through_namespaces_are_recorded() {
    if !capture_core::live::root_or_skip("network namespaces") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/sipp-calls.sh");
    let t = TestStore::new();
    let pcap = t.dir.path().join("sipp.pcap");
    let calls = 3;
    let o = Command::new("bash").arg(&script).arg(&pcap).arg(calls.to_string()).output().unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    t.import(&pcap);
    let found = t.search(&["from = sipp"]);
    assert_eq!(found.len(), calls, "{found:?}");
    // What sipp sent: the audio of its g711a.pcap and one RFC 2833 '1'.
    let sent = capture_rtp(Path::new("/usr/share/sip-tester/g711a.pcap"), &[8]);
    assert!(sent.len() > 100);
    let recorded_rtp = capture_rtp(&pcap, &[8]);
    for c in &found {
        assert_eq!(c["to"], "service");
        assert!(!c["answer"].is_null());
        assert_eq!(c["end_reason"], "caller-bye");
        assert_eq!(c["codecs"][0], "PCMA");
        let caller_dtmf = dtmf_of(c, "caller");
        assert_eq!(caller_dtmf, "1");
        let d = c["duration_ms"].as_i64().unwrap();
        assert!((8_500..10_500).contains(&d), "duration {d} ms");
        let (_, left, right) = t.export_wav(c["id"].as_i64().unwrap());
        let streams = c["streams"].as_array().unwrap();
        let caller = streams.iter().find(|s| s["direction"] == "caller" && s["codec"] == "PCMA").unwrap();
        let callee = streams.iter().find(|s| s["direction"] == "callee" && s["codec"] == "PCMA").unwrap();
        // The caller's channel holds exactly what sipp played; the callee's holds the echo.
        let sent_refs: Vec<&CapRtp> = sent.iter().collect();
        assert_stream_in_channel("caller audio vs g711a.pcap", &sent_refs, &left, true);
        let echo: Vec<&CapRtp> = recorded_rtp
            .iter()
            .filter(|p| p.src == callee["src"].as_str().unwrap() && p.dst == callee["dst"].as_str().unwrap())
            .collect();
        assert_stream_in_channel("callee echo", &echo, &right, true);
        assert_eq!(caller["packets"], callee["packets"], "the echo returns every packet");
    }
    let v = t.ok(&["verify", "--passphrase-file", t.pass.to_str().unwrap()]);
    assert_eq!(v.matches("ok ").count(), calls, "{v}");
}
