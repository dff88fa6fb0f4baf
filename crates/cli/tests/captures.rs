//! End to end on the 25 real captures in ../shared/pcaps: import, search, show, export, verify,
//! tamper detection, deletion with audit, and the no-plaintext guarantee.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn answered(calls: &[Value]) -> usize {
    calls.iter().filter(|c| !c["answer"].is_null()).count()
}

fn import_alone(name: &str) -> (TestStore, Vec<Value>) {
    let dir = pcaps_dir().unwrap();
    let t = TestStore::new();
    t.import(&dir.join(name));
    let calls = t.search(&[]);
    (t, calls)
}

/// The shared captures, sorted.
fn shared_captures(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_capture_imports_without_panic_or_hang() {
    let Some(dir) = pcaps_dir() else { return };
    let files = shared_captures(&dir);
    assert_eq!(files.len(), 25, "expected the 25 shared captures");
    let t = TestStore::new();
    for f in files {
        // A hang guard, not a speed test: benchmarks measure speed.
        let (tx, rx) = mpsc::channel();
        let store = t.store();
        let f2 = f.clone();
        std::thread::spawn(move || {
            let o = std::process::Command::new(callrec()).arg("--store").arg(store).arg("import").arg(&f2).output();
            let _ = tx.send(o);
        });
        let o = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("{} hangs", f.display())).unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{}: exit {}\n{out}\n{err}", f.display(), o.status);
        assert!(!err.contains("panicked"), "{}: {err}", f.display());
        assert!(out.contains("frames") && out.contains("calls"), "{}: summary missing: {out}", f.display());
        assert!(!out.contains("STORE ERRORS"), "{}: {out}", f.display());
    }
    let v = t.ok(&["verify", "--passphrase-file", t.pass.to_str().unwrap()]);
    assert!(!v.contains("DAMAGED"), "{v}");
}

#[test]
fn wswiki_g711_two_calls_pcmu_and_pcma() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("wswiki_sip-rtp-g711.pcap");
    assert_eq!(calls.len(), 2);
    let mut codecs: Vec<String> = calls.iter().map(|c| c["codecs"][0].as_str().unwrap().to_string()).collect();
    codecs.sort();
    assert_eq!(codecs, vec!["PCMA", "PCMU"]);
    assert_eq!(answered(&calls), 2);
}

#[test]
fn magicjack_one_two_way_call_after_401() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("wswiki_MagicJack_short_call.pcap");
    assert_eq!(calls.len(), 1, "the 401 retry is the same call");
    let c = &calls[0];
    assert!(!c["answer"].is_null());
    let dirs: Vec<&str> = c["streams"].as_array().unwrap().iter().map(|s| s["direction"].as_str().unwrap()).collect();
    assert!(dirs.contains(&"caller") && dirs.contains(&"callee"), "{dirs:?}");
    assert!(c["end_reason"].as_str().unwrap().ends_with("-bye"));
}

#[test]
fn voipshark_two_answered_legs() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("voipshark_SIP-RTP-Normal_Call.pcap");
    assert_eq!(calls.len(), 2);
    assert_eq!(answered(&calls), 2);
    for c in &calls {
        assert_eq!(c["streams"].as_array().unwrap().len(), 2, "{c}");
        assert_eq!(c["codecs"][0], "PCMU");
    }
}

#[test]
fn tcp_segmented_37_calls_32_answered() {
    let Some(_) = pcaps_dir() else { return };
    let (t, calls) = import_alone("heplify_sip_tcp_segmented_port6060.pcap");
    assert_eq!(calls.len(), 37);
    assert_eq!(answered(&calls), 32);
    let cancelled = t.search(&["end-reason = cancel"]);
    assert!(!cancelled.is_empty());
    let failed = t.search(&["end-reason = failed", "sip-code >= 400"]);
    assert!(failed.iter().any(|c| c["sip_code"] == 403 || c["sip_code"] == 486), "{failed:?}");
}

#[test]
fn dtmf2_digits_and_603() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("wswiki_SIP_DTMF2.pcap");
    assert_eq!(calls.len(), 2);
    let ans = calls.iter().find(|c| !c["answer"].is_null()).unwrap();
    // In capture order the digits are 6 7 8 9 1 2 3 (frames 339…623); as a set: 1236789.
    assert_eq!(ans["dtmf"], "6789123");
    let mut sorted: Vec<char> = ans["dtmf"].as_str().unwrap().chars().collect();
    sorted.sort();
    assert_eq!(sorted.iter().collect::<String>(), "1236789");
    assert_eq!(ans["end_reason"], "capture-ended");
    let rejected = calls.iter().find(|c| c["answer"].is_null()).unwrap();
    assert_eq!(rejected["sip_code"], 603);
    assert_eq!(rejected["end_reason"], "failed");
}

#[test]
fn ipv6_fragmented_call() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("sngrep_ipv6frag.pcap");
    assert_eq!(calls.len(), 1);
    assert!(!calls[0]["answer"].is_null());
    assert_eq!(calls[0]["codecs"][0], "AMR-WB");
}

#[test]
fn sip_over_tcp_call() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("heplify_sip_ipv4_tcp.pcap");
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!((c["from"].as_str(), c["to"].as_str()), (Some("101"), Some("201")));
    assert_eq!(c["end_reason"], "callee-bye");
    assert_eq!(c["streams"].as_array().unwrap().len(), 2);
}

#[test]
fn tunnels_and_encapsulations() {
    let Some(_) = pcaps_dir() else { return };
    let (_t, calls) = import_alone("heplify_erspan_hold_refer.pcapng");
    assert_eq!(calls.len(), 3, "GRE/TEB mirrored calls");
    assert!(calls.iter().all(|c| c["holds"].as_array().unwrap().len() == 1), "hold periods recorded");
    let (_t, calls) = import_alone("wswiki_DTMFsipinfo_pppoe.pcap");
    assert_eq!(calls.len(), 1, "PPPoE");
    assert!(!calls[0]["dtmf"].as_str().unwrap().is_empty(), "SIP INFO DTMF");
    let (_t, calls) = import_alone("sngrep_ipip_tcp.pcap");
    assert_eq!(calls.len(), 1, "IP-in-IP");
    let (_t, calls) = import_alone("arkime_volte_gtp_ipv6.pcap");
    assert_eq!(calls.len(), 1, "GTP-U");
    let (_t, calls) = import_alone("heplify_FAX-Call-t38-reinvite.pcap");
    assert_eq!(calls.len(), 2, "messages seen on several hops count once");
}

#[test]
fn search_operators() {
    let Some(_) = pcaps_dir() else { return };
    let (t, calls) = import_alone("heplify_sip_tcp_segmented_port6060.pcap");
    let n = calls.len();
    assert_eq!(
        t.search(&["from starts-with 79"]).len(),
        calls.iter().filter(|c| c["from"].as_str().unwrap().starts_with("79")).count()
    );
    assert_eq!(
        t.search(&["from ends-with 77"]).len(),
        calls.iter().filter(|c| c["from"].as_str().unwrap().ends_with("77")).count()
    );
    assert_eq!(t.search(&["to = 699800"]).len(), calls.iter().filter(|c| c["to"] == "699800").count());
    assert_eq!(t.search(&["to != 699800"]).len(), n - t.search(&["to = 699800"]).len());
    assert_eq!(
        t.search(&["from matches ^7[0-9]{10}$"]).len(),
        calls
            .iter()
            .filter(|c| {
                let f = c["from"].as_str().unwrap();
                f.len() == 11 && f.starts_with('7') && f.chars().all(|x| x.is_ascii_digit())
            })
            .count()
    );
    assert_eq!(
        t.search(&["from like 7912*"]).len(),
        calls.iter().filter(|c| c["from"].as_str().unwrap().starts_with("7912")).count()
    );
    assert!(!t.search(&["from-name contains мария"]).is_empty(), "case-insensitive Unicode contains");
    assert_eq!(
        t.search(&["codec = G729"]).len(),
        calls.iter().filter(|c| c["codecs"].as_array().unwrap().iter().any(|x| x == "G729")).count()
    );
    assert_eq!(
        t.search(&["duration > 60s"]).len(),
        calls.iter().filter(|c| c["duration_ms"].as_i64().unwrap() > 60_000).count()
    );
    assert_eq!(
        t.search(&["start after 2018-07-19", "start before 2018-07-20"]).len(),
        0,
        "the capture is on 2018-07-19 itself"
    );
    assert_eq!(t.search(&["start = 2018-07-19"]).len(), n);
    assert_eq!(t.search(&["start between 2018-07-19 and 2018-07-19"]).len(), n);
    assert_eq!(t.search(&["start older-than 30d"]).len(), n);
    assert_eq!(t.search(&["start newer-than 30d"]).len(), 0);
    assert_eq!(t.search(&["from-name empty"]).len() + t.search(&["from-name not-empty"]).len(), n);
    let limited = t.ok(&["search", "--limit", "3", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&limited).unwrap().as_array().unwrap().len(), 3);
    let text = t.ok(&["search", "--text", "Баскова", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().len(), 1);
    let csv = t.ok(&["search", "--csv", "--where", "to = 699800"]);
    assert!(csv.starts_with("id,call_id,from"));
    let bad = t.run(&["search", "--where", "colour = red"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown field"));
    // JSON fields the scripts rely on.
    let c = &calls[0];
    for k in [
        "id",
        "call_id",
        "from",
        "from_name",
        "to",
        "to_name",
        "start",
        "answer",
        "end",
        "duration_ms",
        "end_reason",
        "codecs",
        "dtmf",
        "md5",
        "streams",
    ] {
        assert!(c.get(k).is_some(), "missing {k}");
    }
    let show = t.ok(&["show", &c["id"].to_string()]);
    assert!(show.contains(c["call_id"].as_str().unwrap()));
}

#[test]
fn g711_exports_hold_exactly_the_decoded_payloads() {
    let Some(dir) = pcaps_dir() else { return };
    for name in [
        "wswiki_sip-rtp-g711.pcap",
        "wswiki_MagicJack_short_call.pcap",
        "voipshark_SIP-RTP-Normal_Call.pcap",
        "wswiki_SIP_DTMF2.pcap",
        "heplify_sip_ipv4_tcp.pcap",
        "heplify_SIP_CALL_RTP_G711_rtcp.pcap",
    ] {
        let path = dir.join(name);
        let t = TestStore::new();
        t.import(&path);
        let cap = capture_rtp(&path, &[0, 8]);
        let mut streams_checked = 0;
        for c in t.search(&[]) {
            let streams = c["streams"].as_array().unwrap();
            if !streams.iter().any(|s| s["codec"] == "PCMU" || s["codec"] == "PCMA") {
                continue;
            }
            let (rate, left, right) = t.export_wav(c["id"].as_i64().unwrap());
            assert_eq!(rate, 8000);
            for s in streams.iter().filter(|s| s["codec"] == "PCMU" || s["codec"] == "PCMA") {
                let ssrc = s["ssrc"].as_u64().unwrap() as u32;
                let (src, dst) = (s["src"].as_str().unwrap(), s["dst"].as_str().unwrap());
                let pk: Vec<&CapRtp> = cap.iter().filter(|p| p.ssrc == ssrc && p.src == src && p.dst == dst).collect();
                let chan = if s["direction"] == "caller" { &left } else { &right };
                let label = format!("{name} call {} ssrc {ssrc:08x}", c["call_id"]);
                assert_stream_in_channel(&label, &pk, chan, s["codec"] == "PCMA");
                streams_checked += 1;
            }
        }
        assert!(streams_checked > 0, "{name}: no G.711 stream checked");
    }
}

fn only_recording(t: &TestStore) -> std::path::PathBuf {
    let recs: Vec<_> = t.files().into_iter().filter(|p| p.extension().is_some_and(|e| e == "crec")).collect();
    assert_eq!(recs.len(), 1, "{recs:?}");
    recs[0].clone()
}

fn verify_fails(t: &TestStore, id: &str, with_key: bool) -> String {
    let mut args = vec!["verify", id];
    if with_key {
        args.extend(["--passphrase-file", t.pass.to_str().unwrap()]);
    }
    let o = t.run(&args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(!o.status.success(), "verify should fail: {out}");
    assert!(out.contains(&format!("DAMAGED {id}")), "{out}");
    out
}

#[test]
fn tampering_is_detected() {
    let Some(dir) = pcaps_dir() else { return };
    let t = TestStore::new();
    t.import(&dir.join("wswiki_sip-rtp-g722.pcap"));
    let id = t.search(&[])[0]["id"].to_string();
    let rec = only_recording(&t);
    let good = std::fs::read(&rec).unwrap();
    let v = t.ok(&["verify", &id, "--passphrase-file", t.pass.to_str().unwrap()]);
    assert!(v.contains(&format!("ok {id}")), "{v}");

    // One byte altered in the middle.
    let mut b = good.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&rec, &b).unwrap();
    verify_fails(&t, &id, false);
    verify_fails(&t, &id, true);

    // Truncated.
    std::fs::write(&rec, &good[..good.len() - 100]).unwrap();
    verify_fails(&t, &id, false);

    // Two chunks swapped: framing intact, MD5 and authentication fail.
    let chunks = chunk_spans(&good);
    assert!(chunks.len() >= 3, "need several chunks, got {}", chunks.len());
    let (a, c) = (chunks[0].clone(), chunks[1].clone());
    let mut swapped = good[..a.start].to_vec();
    swapped.extend_from_slice(&good[c.clone()]);
    swapped.extend_from_slice(&good[a.clone()]);
    swapped.extend_from_slice(&good[c.end..]);
    assert_eq!(swapped.len(), good.len());
    std::fs::write(&rec, &swapped).unwrap();
    verify_fails(&t, &id, false);
    let out = verify_fails(&t, &id, true);
    assert!(out.contains("MD5"), "{out}");

    // Restored: fine again; and the audit table names who verified.
    std::fs::write(&rec, &good).unwrap();
    t.ok(&["verify", &id]);
    let audit = t.ok(&["audit", "--json"]);
    let user = String::from_utf8(std::process::Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    assert!(audit.contains(user.trim()), "{audit}");
    assert!(audit.contains("\"verify\""));
}

/// Byte ranges of the chunks in a recording (after the 256-byte header).
fn chunk_spans(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut at = 256;
    let mut v = Vec::new();
    while at + 4 <= b.len() {
        let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        v.push(at..at + 4 + len);
        at += 4 + len;
    }
    v
}

#[test]
fn delete_erases_file_rows_and_audits() {
    let Some(dir) = pcaps_dir() else { return };
    let t = TestStore::new();
    t.import(&dir.join("wswiki_sip-rtp-g711.pcap"));
    let calls = t.search(&[]);
    assert_eq!(calls.len(), 2);
    let victim = &calls[0];
    let id = victim["id"].to_string();
    let file = t.store().join(victim["file"].as_str().unwrap_or_default());
    let show = t.ok(&["show", &id, "--json"]);
    let v: Value = serde_json::from_str(&show).unwrap();
    let file = if file.is_file() { file } else { t.store().join(v["file"].as_str().unwrap()) };
    assert!(file.is_file());
    let dry = t.ok(&["delete", &id, "--dry-run"]);
    assert!(dry.contains("would delete"));
    assert!(file.is_file(), "dry run deletes nothing");
    let no = t.run(&["delete", &id]);
    assert!(!no.status.success(), "delete without --yes must refuse");
    t.ok(&["delete", &id, "--yes"]);
    assert!(!file.exists(), "recording removed from disk");
    assert_eq!(t.search(&[]).len(), 1);
    assert!(t.search(&[&format!("id = {id}")]).is_empty());
    assert!(!t.run(&["show", &id]).status.success());
    // Nothing in the index names the deleted call any more (its Call-ID), except nowhere.
    let call_id = victim["call_id"].as_str().unwrap();
    let db = std::fs::read(t.store().join("index.sqlite")).unwrap();
    assert!(!contains(&db, call_id.as_bytes()), "the index file still holds the deleted Call-ID");
    let audit = t.ok(&["audit"]);
    assert!(audit.contains(&format!("delete\tcall {id}")), "{audit}");
    // By expression.
    t.ok(&["delete", "--where", "codec = PCMA", "--yes"]);
    t.ok(&["delete", "--where", "codec = PCMU", "--yes"]);
    assert!(t.search(&[]).is_empty());
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_plaintext_audio_on_disk() {
    let Some(dir) = pcaps_dir() else { return };
    let t = TestStore::new();
    let mut payloads = Vec::new();
    for name in ["wswiki_sip-rtp-g711.pcap", "voipshark_SIP-RTP-Normal_Call.pcap", "wswiki_MagicJack_short_call.pcap"] {
        t.import(&dir.join(name));
        payloads.extend(capture_rtp(&dir.join(name), &[0, 8]).into_iter().map(|p| p.payload).filter(|p| {
            // Payloads of pure digital silence repeat everywhere; real audio is what must not leak.
            p.len() >= 160 && p.iter().any(|&b| b != p[0])
        }));
    }
    assert!(payloads.len() > 1000);
    for f in t.files() {
        let data = std::fs::read(&f).unwrap();
        assert!(!contains(&data, b"RIFF") || !contains(&data, b"WAVE"), "{} looks like a WAV file", f.display());
        for p in payloads.iter().step_by(7) {
            assert!(!contains(&data, &p[..32]), "{} holds a plaintext RTP payload", f.display());
        }
    }
}

#[test]
fn g722_export_matches_the_spandsp_reference() {
    let Some(dir) = pcaps_dir() else { return };
    let path = dir.join("wswiki_sip-rtp-g722.pcap");
    let t = TestStore::new();
    t.import(&path);
    let calls = t.search(&[]);
    assert_eq!(calls.len(), 1);
    let s = &calls[0]["streams"][0];
    assert_eq!((s["codec"].as_str(), s["decodable"].as_bool()), (Some("G722"), Some(true)));
    let (rate, left, right) = t.export_wav(calls[0]["id"].as_i64().unwrap());
    assert_eq!(rate, 16_000, "G.722 is 16 kHz audio on an 8 kHz RTP clock");
    let chan = if s["direction"] == "caller" { &left } else { &right };
    let mut pk = capture_rtp(&path, &[9]);
    pk.sort_by_key(|p| p.seq);
    assert_eq!(pk.len(), 425);
    // The stream has no loss, so the decoder state runs over the payloads in order: the channel must
    // hold the reference decoding of their concatenation, contiguously.
    let all: Vec<u8> = pk.iter().flat_map(|p| p.payload.iter().copied()).collect();
    let reference = independent_g722(&all);
    assert_eq!(reference.len(), all.len() * 2);
    let probe = &reference[2000..2400];
    let at =
        chan.windows(probe.len()).position(|w| w == probe).expect("reference audio not found in the export") - 2000;
    assert_eq!(&chan[at..at + reference.len()], &reference[..]);
}

#[test]
fn key_rotation_rewraps_headers_only() {
    let Some(dir) = pcaps_dir() else { return };
    let t = TestStore::new();
    t.import(&dir.join("wswiki_sip-rtp-g711.pcap"));
    let before = t.search(&[]);
    let id = before[0]["id"].as_i64().unwrap();
    let (_, l0, r0) = t.export_wav(id);
    let rec = t.store().join(before[0]["file"].as_str().unwrap());
    let old_bytes = std::fs::read(&rec).unwrap();
    let new_pass = t.dir.path().join("new-pass");
    std::fs::write(&new_pass, "a completely different passphrase").unwrap();
    let out = t.ok(&[
        "rotate-key",
        "--passphrase-file",
        t.pass.to_str().unwrap(),
        "--new-passphrase-file",
        new_pass.to_str().unwrap(),
    ]);
    assert!(out.contains("2 recordings re-wrapped"), "{out}");
    let new_bytes = std::fs::read(&rec).unwrap();
    assert_ne!(old_bytes[..256], new_bytes[..256], "the header changed");
    assert_eq!(old_bytes[256..], new_bytes[256..], "the audio chunks did not");
    // The old passphrase opens nothing any more; the new one opens everything, and the watermarks follow.
    assert!(!t.run(&["verify", "--passphrase-file", t.pass.to_str().unwrap()]).status.success());
    let v = t.ok(&["verify", "--passphrase-file", new_pass.to_str().unwrap()]);
    assert_eq!(v.matches("ok ").count(), 2, "{v}");
    let after = t.search(&[]);
    assert_ne!(before[0]["md5"], after.iter().find(|c| c["id"] == id).unwrap()["md5"]);
    let out = t.dir.path().join("rotated.wav");
    t.ok(&["export", &id.to_string(), "--out", out.to_str().unwrap(), "--passphrase-file", new_pass.to_str().unwrap()]);
    let mut r = hound::WavReader::open(&out).unwrap();
    let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let l1: Vec<i16> = s.iter().step_by(2).copied().collect();
    let r1: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
    assert_eq!((l0, r0), (l1, r1), "same audio after rotation");
    assert!(t.ok(&["audit"]).contains("rotate-key"));
}

#[test]
fn opus_calls_decode_and_export_to_ogg() {
    let Some(dir) = pcaps_dir() else { return };
    let t = TestStore::new();
    t.import(&dir.join("wswiki_sip-rtp-opus.pcap"));
    let c = &t.search(&[])[0];
    assert_eq!(c["codecs"][0], "OPUS");
    let id = c["id"].as_i64().unwrap();
    let (rate, left, right) = t.export_wav(id);
    assert_eq!(rate, 48_000);
    let energy: i64 = left.iter().chain(&right).map(|&x| (x as i64).abs()).sum();
    assert!(energy > 1_000_000, "decoded Opus is not silent");
    let ogg = t.dir.path().join("call.opus");
    t.ok(&[
        "export",
        &id.to_string(),
        "--format",
        "opus",
        "--out",
        ogg.to_str().unwrap(),
        "--passphrase-file",
        t.pass.to_str().unwrap(),
    ]);
    let b = std::fs::read(&ogg).unwrap();
    assert!(b.starts_with(b"OggS") && b.windows(8).any(|w| w == b"OpusHead"), "not Ogg Opus");
}

/// The calls of a store as a comparable set: everything search prints except what depends on the
/// order rows were written in or on random file keys (id, file, md5, bytes).
fn call_set(t: &TestStore) -> Vec<Value> {
    let mut calls: Vec<Value> = t
        .search(&[])
        .into_iter()
        .map(|mut c| {
            for k in ["id", "file", "md5", "bytes"] {
                c.as_object_mut().unwrap().remove(k);
            }
            c
        })
        .collect();
    calls.sort_by_key(|c| {
        (c["call_id"].as_str().unwrap_or("").to_string(), c["start"].as_str().unwrap_or("").to_string())
    });
    calls
}

#[test]
fn parallel_import_records_exactly_what_one_worker_records() {
    let Some(dir) = pcaps_dir() else { return };
    let files = shared_captures(&dir);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let mut outcomes = Vec::new();
        for workers in ["1", "3"] {
            let t = TestStore::new();
            let out = t.ok(&["import", "--json", "--workers", workers, f.to_str().unwrap()]);
            let mut summary: Value = serde_json::from_str(&out).unwrap();
            summary[0].as_object_mut().unwrap().remove("workers");
            outcomes.push((summary, call_set(&t)));
        }
        assert_eq!(outcomes[0].0, outcomes[1].0, "{name}: import summaries differ between 1 and 3 workers");
        assert_eq!(outcomes[0].1, outcomes[1].1, "{name}: recorded calls differ between 1 and 3 workers");
    }
}
