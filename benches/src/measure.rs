//! What a bench reads about processes and interfaces: resident memory and CPU time from `/proc`,
//! interface counters from `/sys`; and the two memory benches built on them.
//!
//! - `memory`: N concurrent generated calls through decode, dispatch, assembly and the encrypted
//!   store, generated on the fly (the frames are not held), sampling resident memory.
//! - `flood`: INVITEs with fresh Call-IDs that are never answered, and RTP that belongs to no call,
//!   through the same path: memory must stop growing at the configured limits.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use capture_core::synth::{Flow, udp_frame};
use serde_json::{Value, json};

use crate::pipeline::{Pipeline, Stage, bench_store, raise_fd_limit};
use crate::traffic::{Generator, Workload};

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM, …).
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').split_whitespace().next()?.parse().ok())
}

pub fn rss_mib() -> f64 {
    status_kib("self", "VmRSS").unwrap_or(0) as f64 / 1024.0
}

/// User + system CPU seconds of a process (all threads).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds from the text of a `/proc/.../stat` file.
fn stat_cpu_seconds(s: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tick)
}

/// User + system CPU seconds of the kernel's worker threads now alive (`kworker/…`: among other
/// work, the page-cache writeback that a recorder's writes and syncs cause), summed by PID so
/// that one read before and one after a run give each worker's share (one that exits in between
/// loses its time: a lower bound).
pub fn kworker_cpu_seconds() -> std::collections::BTreeMap<u32, f64> {
    let mut by_pid = std::collections::BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return by_pid };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else { continue };
        if stat.contains("(kworker/")
            && let Some(cpu) = stat_cpu_seconds(&stat)
        {
            by_pid.insert(pid, cpu);
        }
    }
    by_pid
}

/// CPU seconds the kernel's workers spent between two reads of [`kworker_cpu_seconds`].
pub fn kworker_cpu_between(
    before: &std::collections::BTreeMap<u32, f64>,
    after: &std::collections::BTreeMap<u32, f64>,
) -> f64 {
    after.iter().map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0)).filter(|d| *d > 0.0).sum()
}

/// User + system CPU seconds of each of a process's threads now alive, summed by thread name
/// (`callrec-worker-` for every worker: names are cut at 15 bytes).
pub fn thread_cpu_seconds(pid: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return by_name };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        let name = stat.find('(').zip(stat.rfind(')')).map(|(a, b)| stat[a + 1..b].to_string());
        if let (Some(name), Some(cpu)) = (name, stat_cpu_seconds(&stat)) {
            *by_name.entry(name).or_insert(0.0) += cpu;
        }
    }
    by_name
}

pub fn memory_bench(calls: u32, duration: f64, ramp: f64, dir: &Path) -> Result<Value> {
    raise_fd_limit();
    let w = Workload::calls(calls, duration, ramp);
    ensure!(w.concurrency() == calls, "ramp must not exceed duration, so that all calls are up at once");
    let tmp = tempfile::tempdir_in(dir)?;
    let mut store = bench_store(tmp.path())?;
    let base = rss_mib();
    let mut p = Pipeline::new(Stage::Store, Some(&mut store))?;
    let mut g = Generator::new(w.clone());
    let mut buf = Vec::with_capacity(2048);
    let (mut peak, mut at_full, mut n) = (base, 0.0f64, 0u64);
    let all_up = w.call_start(calls - 1) + 200_000_000;
    let t = Instant::now();
    while let Some(ts) = g.next_frame(&mut buf) {
        p.frame(ts, &buf);
        n += 1;
        if n.is_multiple_of(50_000) {
            let r = rss_mib();
            peak = peak.max(r);
            if ts >= all_up {
                at_full = at_full.max(r);
            }
        }
    }
    p.finish();
    let secs = t.elapsed().as_secs_f64();
    ensure!(p.store_errors().is_empty(), "store errors: {:?}", &p.store_errors()[..p.store_errors().len().min(3)]);
    let (rtp, done) = p.delivered();
    drop(p);
    Ok(json!({
        "bench": "memory",
        "concurrent_calls": calls, "duration_s": duration,
        "frames": n, "rtp_delivered": rtp, "rtp_expected": w.total_rtp(), "calls_recorded": done,
        "rss_before_mib": base, "rss_peak_mib": peak, "rss_all_calls_up_mib": at_full,
        "vm_hwm_mib": status_kib("self", "VmHWM").unwrap_or(0) as f64 / 1024.0,
        "seconds": secs,
        "note": "one process: generator (a few MB) + decode + steering + engine + encrypted store + index",
    }))
}

pub fn flood_bench(invites: u32, stray_rtp: u32, max_calls: usize) -> Result<Value> {
    raise_fd_limit();
    let tmp = tempfile::tempdir()?;
    let mut store = bench_store(tmp.path())?;
    let base = rss_mib();
    let mut p = Pipeline::new(Stage::Store, Some(&mut store))?;
    p.set_max_calls(max_calls);
    let mut samples = Vec::new();
    let t0 = 1_700_000_000_000_000_000i64;
    let total = invites as u64 + stray_rtp as u64;
    let step = (total / 20).max(1);
    let (mut inv_left, mut rtp_left) = (invites, stray_rtp);
    for k in 0..total {
        let ts = t0 + k as i64 * 10_000; // 100k packets per second of capture time
        let frame = if inv_left > 0 && (k % 2 == 0 || rtp_left == 0) {
            let i = invites - inv_left;
            inv_left -= 1;
            let body = format!(
                "v=0\r\no=- 1 1 IN IP4 10.9.0.1\r\ns=-\r\nc=IN IP4 10.9.{}.{}\r\nt=0 0\r\nm=audio {} RTP/AVP 8\r\n",
                (i >> 8) & 255,
                i & 255,
                10_000 + (i % 50_000)
            );
            let sip = format!(
                "INVITE sip:flood@10.9.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.0.1;branch=z9hG4bK{i}\r\nFrom: <sip:f{i}@10.9.0.1>;tag={i}\r\n\
                 To: <sip:flood@10.9.0.2>\r\nCall-ID: flood-{i}@attacker\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            udp_frame(&flow(0x0a09_0001, 0x0a09_0002, 5060, 5060), sip.as_bytes())
        } else {
            rtp_left = rtp_left.saturating_sub(1);
            let mut rtp = vec![0x80, 8, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
            rtp.extend_from_slice(&[0xd5; 160]);
            udp_frame(&flow(0x0b00_0000 + (k as u32 & 0xff_ffff), 0x0c00_0000 + (k as u32 >> 3), 20_000, 30_000), &rtp)
        };
        p.frame(ts, &frame);
        if (k + 1) % step == 0 {
            samples.push(
                json!({"packets": k + 1, "rss_mib": rss_mib(), "calls_tracked_by_steering": p.steering().calls()}),
            );
        }
    }
    let st = p.engine().stats().clone();
    let peak = status_kib("self", "VmHWM").unwrap_or(0) as f64 / 1024.0;
    p.finish();
    ensure!(p.store_errors().is_empty(), "store errors: {:?}", &p.store_errors()[..p.store_errors().len().min(3)]);
    Ok(json!({
        "bench": "flood",
        "invites": invites, "stray_rtp": stray_rtp, "max_calls": max_calls,
        "calls_started": st.calls_started, "calls_refused": st.calls_refused, "unmatched_udp": st.unmatched_udp,
        "rss_before_mib": base, "vm_hwm_mib": peak, "samples": samples,
    }))
}

fn flow(src: u32, dst: u32, sport: u16, dport: u16) -> Flow {
    Flow { src: Ipv4Addr::from(src).into(), dst: Ipv4Addr::from(dst).into(), sport, dport }
}
