//! Live capture end to end: the virtual mirror port (scripts/rig.sh: phones, switch, SPAN copy into
//! a capture namespace), `callrec capture` on the mirror interface, real sip-tester calls with audio
//! and DTMF, background traffic that is neither SIP nor RTP. Afterwards every call must be in the
//! index with the right parties, its duration within 100 ms of sipp's own message trace, its DTMF,
//! and audio equal sample for sample to what was sent and echoed; in XDP mode the filter's counters
//! must show the background traffic dropped in the kernel. Also: SIGTERM mid-call leaves a
//! finished, verifiable, playable recording of the call so far.
//!
//! Needs root (namespaces, XDP); when not root it fails and says how to run it, unless
//! CALLREC_SKIP_ROOT_TESTS=1 opts out explicitly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn root_or_skip() -> bool {
    capture_core::live::root_or_skip("network namespaces, XDP")
}

fn rig_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rig.sh")
}

/// A rig with a name unique to this test run; brought down on drop, even when the test fails.
struct Rig {
    name: String,
}

impl Rig {
    fn up(tag: &str) -> Rig {
        let name = format!("cr{}{tag}", std::process::id());
        let o = Command::new("bash").arg(rig_script()).args(["up", &name]).output().unwrap();
        assert!(
            o.status.success(),
            "rig up: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Rig { name }
    }

    fn script(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(rig_script()).arg(args[0]).arg(&self.name).args(&args[1..]);
        c
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.script(&["down"]).output();
    }
}

fn start_capture(rig: &Rig, t: &TestStore, mode: &str, extra: &[&str]) -> Child {
    let child = Command::new("ip")
        .args(["netns", "exec", &format!("{}-cap", rig.name), callrec(), "--store"])
        .arg(t.store())
        .args(["capture", "--iface", "mirror0", "--mode", mode, "--log-interval", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = t.store().join("capture-status.json");
    let until = Instant::now() + Duration::from_secs(30);
    while !status.exists() {
        assert!(Instant::now() < until, "capture did not start (no {})", status.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn stop_capture(child: Child) -> (Value, String) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "capture exited with {}: {err}", o.status);
    let status: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("final status: {e}: {err}"));
    (status, err)
}

/// From sipp's message trace: Call-ID → (INVITE sent, BYE sent), in ns since the epoch.
fn sipp_times(dir: &Path) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("sipp-messages-") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let (mut invite, mut bye, mut call_id) = (None, None, None);
        for block in text.split("----------------------------------------------- ").skip(1) {
            let (stamp, rest) = block.split_once('\n').unwrap();
            let ts = parse_stamp(stamp.trim());
            let sent = rest.starts_with("UDP message sent");
            let first = rest.lines().nth(2).unwrap_or("");
            if sent && first.starts_with("INVITE ") && invite.is_none() {
                invite = Some(ts);
                call_id = rest.lines().find_map(|l| l.strip_prefix("Call-ID: ")).map(|s| s.trim().to_string());
            }
            if sent && first.starts_with("BYE ") {
                bye = Some(ts);
            }
        }
        if let (Some(i), Some(b), Some(c)) = (invite, bye, call_id) {
            out.push((c, i, b));
        }
    }
    out
}

/// "2026-11-23 02:08:00.033929" (sipp's local time; these machines run in UTC) → ns since the epoch.
fn parse_stamp(s: &str) -> i64 {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]");
    time::PrimitiveDateTime::parse(s, fmt)
        .unwrap_or_else(|e| panic!("sipp time {s:?}: {e}"))
        .assume_utc()
        .unix_timestamp_nanos() as i64
}

fn check_calls(t: &TestStore, keep: &Path, expected: usize) {
    let calls = t.search(&["from = sipp"]);
    assert_eq!(calls.len(), expected, "{calls:#?}");
    let times = sipp_times(keep);
    assert_eq!(times.len(), expected, "sipp message traces in {}", keep.display());
    let sent = capture_rtp(Path::new("/usr/share/sip-tester/g711a.pcap"), &[8]);
    let at_phone = capture_rtp(&keep.join("phone-a.pcap"), &[8]);
    for c in &calls {
        let call_id = c["call_id"].as_str().unwrap();
        assert_eq!(c["to"], "service");
        assert_eq!(c["end_reason"], "caller-bye", "{c:#}");
        assert_eq!(c["codecs"][0], "PCMA");
        let caller_dtmf = dtmf_of(c, "caller");
        assert_eq!(caller_dtmf, "1", "{call_id}");
        let (_, invite, bye) =
            times.iter().find(|(id, _, _)| id == call_id).unwrap_or_else(|| panic!("{call_id} not in sipp's trace"));
        let sipp_ms = (bye - invite) / 1_000_000;
        let d = c["duration_ms"].as_i64().unwrap();
        assert!((d - sipp_ms).abs() <= 100, "{call_id}: duration {d} ms, sipp says {sipp_ms} ms");
        let (_, left, right) = t.export_wav(c["id"].as_i64().unwrap());
        let streams = c["streams"].as_array().unwrap();
        let caller = streams.iter().find(|s| s["direction"] == "caller" && s["codec"] == "PCMA").unwrap();
        let callee = streams.iter().find(|s| s["direction"] == "callee" && s["codec"] == "PCMA").unwrap();
        let sent_refs: Vec<&CapRtp> = sent.iter().collect();
        assert_stream_in_channel(&format!("{call_id} caller audio vs g711a.pcap"), &sent_refs, &left, true);
        assert_eq!(caller["packets"].as_u64().unwrap() as usize, sent.len(), "{call_id}: every packet sipp played");
        let echo: Vec<&CapRtp> = at_phone
            .iter()
            .filter(|p| p.src == callee["src"].as_str().unwrap() && p.dst == callee["dst"].as_str().unwrap())
            .collect();
        assert_eq!(echo.len(), callee["packets"].as_u64().unwrap() as usize, "{call_id}: echo packets at phone A");
        assert_stream_in_channel(&format!("{call_id} callee echo"), &echo, &right, true);
    }
    let v = t.ok(&["verify", "--passphrase-file", t.pass.to_str().unwrap()]);
    assert_eq!(v.matches("ok ").count(), expected, "{v}");
}

fn record_calls(mode: &str, extra: &[&str], tag: &str) -> (TestStore, Value) {
    let rig = Rig::up(tag);
    let t = TestStore::new();
    let keep = t.dir.path().join("sipp");
    let cap = start_capture(&rig, &t, mode, extra);
    let mut noise = rig.script(&["noise", "14"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let o = rig.script(&["calls", "3", keep.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "calls: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let _ = noise.wait();
    let (status, err) = stop_capture(cap);
    assert_eq!(status["totals"]["drops"], 0, "{status:#}\n{err}");
    // The workers' stalls are on the books: recordings were created and indexed, and three
    // calls never ran the writing thread out of buffers.
    let ws = status["workers"].as_array().expect("workers");
    let ms = |w: &Value, k: &str| w[k].as_f64().unwrap_or_else(|| panic!("{k}: {w:#}"));
    assert!(ws.iter().any(|w| ms(w, "max_create_ms") > 0.0 && ms(w, "max_index_ms") > 0.0), "{ws:#?}");
    assert!(ws.iter().all(|w| w["write_waits"] == 0 && ms(w, "max_write_wait_ms") == 0.0), "{ws:#?}");
    // The writing threads' places (recorder::priority): real-time below a real-time reader that
    // records inline; a worker thread of its own (queued, or more than one) is ordinary, and so
    // is its writing thread. At least one worker recorded, so at least one place is checked.
    assert!(ws.iter().any(|w| w["writer_priority"].is_string()), "{ws:#?}");
    let inline = status["pipeline"] == "inline";
    let rt_reader = !err.contains("cannot make the reader real-time");
    for w in ws {
        // A worker the steering gave no call never started a writing thread.
        if w["recorded"] == 0 && w["writer_priority"].is_null() {
            continue;
        }
        let place = w["writer_priority"].as_str().unwrap_or_else(|| panic!("writer_priority: {w:#}"));
        if inline && rt_reader {
            assert_eq!(place, "realtime 1", "{w:#}");
        } else {
            assert!(place.starts_with("nice "), "{w:#}");
        }
    }
    let link =
        Command::new("ip").args(["-n", &format!("{}-cap", rig.name), "link", "show", "mirror0"]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mirror0") && !link.contains(" xdp"), "XDP must be detached when capture exits: {link}");
    check_calls(&t, &keep, 3);
    (t, status)
}

#[test]
fn xdp_capture_records_sipp_calls_and_drops_background_in_kernel() {
    if !root_or_skip() {
        return;
    }
    // The one worker on the reader's thread, as on a 2-core box.
    let (_t, status) = record_calls("xdp", &["--workers", "1", "--pipeline", "inline"], "x");
    check_xdp_status(&status, "mirror0 q0 af-xdp (copy)");
    assert_eq!(status["pipeline"], "inline");
}

#[test]
fn xdp_capture_through_the_pure_rust_xdp_crate_records_the_same_calls() {
    if !root_or_skip() {
        return;
    }
    // Two workers behind queues.
    let (_t, status) = record_calls("xdp", &["--af-xdp-crate", "xdp", "--workers", "2"], "xp");
    check_xdp_status(&status, "mirror0 q0 af-xdp/xdp-rs (copy)");
    assert_eq!(status["pipeline"], "queued");
    assert_eq!(status["workers"].as_array().map(Vec::len), Some(2));
}

/// XDP attached, kept the calls' SIP and media, dropped the background in the kernel, and the
/// reader was `source`.
fn check_xdp_status(status: &Value, source: &str) {
    assert_eq!(status["mode"], "xdp");
    let x = &status["xdp"]["mirror0"];
    assert!(x.is_object(), "XDP did not attach: {status:#}");
    // 14 s of pings every 50 ms and 200 datagrams/s to a port no call uses.
    assert!(x["dropped"].as_u64().unwrap() > 1000, "{x:#}");
    assert!(x["passed_sip"].as_u64().unwrap() >= 3 * 6, "{x:#}");
    assert!(x["passed_media"].as_u64().unwrap() > 3 * 400, "{x:#}");
    assert_eq!(x["redirect_failed"], 0);
    // What passed is what the readers got: the background never reached userspace.
    let q = &status["queues"][0];
    assert_eq!(q["unmatched"], 0, "{q:#}");
    assert_eq!(q["source"], source);
}

#[test]
fn af_packet_capture_records_the_same_calls() {
    if !root_or_skip() {
        return;
    }
    let (_t, status) = record_calls("af-packet", &["--workers", "1", "--pipeline", "queued"], "p");
    assert_eq!(status["pipeline"], "queued");
    assert_eq!(status["queues"][0]["source"], "mirror0 #0 af-packet (TPACKET_V3)");
    assert!(
        status["queues"][0]["unmatched"].as_u64().unwrap() > 1000,
        "background reaches userspace and is dropped there"
    );
}

#[test]
fn sigterm_mid_call_leaves_a_finished_verifiable_recording() {
    if !root_or_skip() {
        return;
    }
    let rig = Rig::up("t");
    let t = TestStore::new();
    let keep = t.dir.path().join("sipp");
    // Inline: ending calls in progress is the reader's job there.
    let cap = start_capture(&rig, &t, "xdp", &["--workers", "1"]);
    let mut calls = rig
        .script(&["calls", "1", keep.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let (status, err) = stop_capture(cap);
    let _ = calls.wait();
    assert_eq!(status["totals"]["recorded"], 1, "{status:#}\n{err}");
    assert_eq!(status["pipeline"], "inline");
    let found = t.search(&["from = sipp"]);
    assert_eq!(found.len(), 1);
    let c = &found[0];
    assert_eq!(c["end_reason"], "capture-ended");
    let d = c["duration_ms"].as_i64().unwrap();
    assert!((2_500..5_000).contains(&d), "duration {d} ms");
    let v = t.ok(&["verify", "--passphrase-file", t.pass.to_str().unwrap()]);
    assert!(v.contains("ok "), "{v}");
    // Playable: the caller channel holds the beginning of what sipp played, sample for sample.
    let (_, left, _) = t.export_wav(c["id"].as_i64().unwrap());
    let caller =
        c["streams"].as_array().unwrap().iter().find(|s| s["direction"] == "caller" && s["codec"] == "PCMA").unwrap();
    let n = caller["packets"].as_u64().unwrap() as usize;
    assert!(n > 50, "{n} packets recorded");
    let mut sent = capture_rtp(Path::new("/usr/share/sip-tester/g711a.pcap"), &[8]);
    sent.sort_by_key(|p| p.seq);
    let prefix: Vec<&CapRtp> = sent.iter().take(n).collect();
    assert_stream_in_channel("caller audio so far", &prefix, &left, true);
}
