//! The offline per-stage bench: generated calls held in memory, run through the userspace path
//! one stage deeper each time (read, +decode, +dispatch, +assembly, +encrypted store). The cost of
//! a stage is the difference between its run and the one before.
//!
//! Why in memory: the import bench (`cargo xtask bench offline`) measures `callrec import` on a
//! file side by side with `tcpdump -r`, which includes reading the file; this one says where the
//! recorder's own time goes.

use std::path::Path;
use std::time::Instant;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::pipeline::{Frames, Pipeline, Stage, bench_store, raise_fd_limit};
use crate::traffic::{Generator, Workload};

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(
    calls: u32,
    duration: f64,
    ramp: f64,
    reps: usize,
    dir: &Path,
    only: Option<&str>,
    keep: bool,
) -> Result<Value> {
    raise_fd_limit();
    let w = Workload::calls(calls, duration, ramp);
    // The frames are held in memory with 32-bit offsets (a G.711 frame is 214 bytes).
    let bytes = w.total_rtp() * 214;
    ensure!(
        bytes < u32::MAX as u64,
        "{calls} calls for {duration} s are about {} GiB of frames; the stages bench holds at most 4 GiB: \
         use a shorter --duration",
        bytes >> 30
    );
    let mut frames = Frames::default();
    let mut scratch = Vec::new();
    let mut g = Generator::new(w.clone());
    frames.fill(&mut g, usize::MAX, &mut scratch);
    let n = frames.len() as f64;
    let mut rows = Vec::new();
    let mut prev_ns_per_pkt = 0.0;
    for stage in Stage::ALL {
        if only.is_some_and(|o| o != stage.name()) {
            continue;
        }
        let mut secs = Vec::new();
        let mut user = Vec::new();
        let mut sys = Vec::new();
        let mut delivered = (0, 0);
        // Stores are deleted only at the end, as in the import bench below (ext4's
        // `recently_deleted` scan would otherwise make each rep create its files slower).
        let mut stores = Vec::new();
        for _ in 0..reps.max(1) {
            let tmp = tempfile::tempdir_in(dir)?;
            let mut store = (stage == Stage::Store).then(|| bench_store(tmp.path())).transpose()?;
            let mut p = Pipeline::new(stage, store.as_mut())?;
            let (u0, s0) = process_cpu_s();
            let t = Instant::now();
            p.run(&frames);
            p.finish();
            secs.push(t.elapsed().as_secs_f64());
            let (u1, s1) = process_cpu_s();
            user.push(u1 - u0);
            sys.push(s1 - s0);
            ensure!(
                p.store_errors().is_empty(),
                "store errors: {:?}",
                &p.store_errors()[..p.store_errors().len().min(3)]
            );
            delivered = p.delivered();
            std::hint::black_box(p.checksum());
            if stage >= Stage::Dispatch {
                // Every generated frame belongs to a call, so steering must place every one.
                ensure!(p.routed() == frames.len() as u64, "dispatch placed {} of {} frames", p.routed(), frames.len());
            }
            drop(p);
            drop(store);
            if keep {
                let _ = tmp.keep();
            } else {
                stores.push(tmp);
            }
        }
        let s = median(&mut secs);
        let ns_per_pkt = s * 1e9 / n;
        if stage >= Stage::Assembly {
            ensure!(
                delivered.0 == w.total_rtp(),
                "{}: {} RTP packets delivered of {}",
                stage.name(),
                delivered.0,
                w.total_rtp()
            );
            ensure!(delivered.1 == calls as u64, "{}: {} calls completed of {calls}", stage.name(), delivered.1);
        }
        rows.push(json!({
            "stage": stage.name(),
            "seconds_median": s,
            "mpps": n / s / 1e6,
            "ns_per_packet": ns_per_pkt,
            "stage_ns_per_packet": ns_per_pkt - prev_ns_per_pkt,
            "calls_per_second": calls as f64 / s,
            // CPU time of the whole process (the store's sync thread included) per packet: user
            // time is steady between runs on a VM where system time (page-cache pages the host
            // must fault in) swings two- to fourfold.
            "user_ns_per_packet": median(&mut user) * 1e9 / n,
            "system_ns_per_packet": median(&mut sys) * 1e9 / n,
        }));
        prev_ns_per_pkt = ns_per_pkt;
    }
    Ok(json!({
        "bench": "stages",
        "calls": calls, "concurrency": w.concurrency(), "duration_s": duration,
        "frames": frames.len(), "bytes": frames.bytes(), "reps": reps,
        "stages": rows,
    }))
}

/// User and system CPU time of `who` (RUSAGE_SELF or RUSAGE_CHILDREN), in seconds.
fn cpu_s(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage only writes the struct passed in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// User and system CPU time of this process so far, in seconds.
fn process_cpu_s() -> (f64, f64) {
    cpu_s(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of this process's waited-for children so far, in seconds.
fn children_cpu_s() -> f64 {
    let (u, s) = cpu_s(libc::RUSAGE_CHILDREN);
    u + s
}

/// Writes `bytes` to a new file at `path` in 8 KiB writes (a recording's chunk size) and syncs
/// it; seconds taken.
fn write_floor(path: &Path, bytes: u64) -> Result<f64> {
    use std::io::Write;
    let buf = vec![0x5au8; 8192];
    let t = Instant::now();
    let mut f = std::fs::File::create(path)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_data()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Total size of the files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_bytes(&e.path())? } else { m.len() };
    }
    Ok(total)
}

/// `callrec import --workers W` for each W against `tcpdump -r FILE -w /dev/null` on the same
/// generated capture, run alternately `reps` times; medians and their ratios. `compare`: other
/// callrec builds (e.g. an older commit), run in the same repetitions right after this one with
/// the same worker counts, each reported with its time paired against this build's.
pub fn import_vs_tcpdump(
    callrec: &Path,
    compare: &[std::path::PathBuf],
    pcap: &Path,
    frames: u64,
    reps: usize,
    workers: &[usize],
    dir: &Path,
) -> Result<Value> {
    use std::process::Command;
    // (binary, workers) in the order each repetition runs them.
    let runs: Vec<(&Path, usize)> = workers
        .iter()
        .flat_map(|&w| std::iter::once(callrec).chain(compare.iter().map(|p| p.as_path())).map(move |b| (b, w)))
        .collect();
    let mut t_tcpdump = Vec::new();
    let mut t_import: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut cpu_import: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut last = Value::Null;
    // Stores are deleted only at the end: ext4 will not reuse an inode deleted in the last ~30 s,
    // and it finds that out by scanning, so creating files right after deleting a thousand costs
    // each new file hundreds of microseconds (seen in perf as `recently_deleted`), an artefact of
    // the bench, not of recording.
    let mut stores = Vec::new();
    // The bytes one import writes (recordings and index), once known; then each repetition also
    // times writing as many bytes in 8 KiB writes to a fresh file and syncing it: the cost of the
    // page-cache copy and the disk alone, which no recorder that keeps its recordings can beat.
    let mut written: Option<u64> = None;
    let mut t_floor = Vec::new();
    for _ in 0..reps.max(1) {
        // Start each run with no dirty pages from the last one being written back.
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let t = Instant::now();
        let o = Command::new("tcpdump").arg("-r").arg(pcap).args(["-w", "/dev/null"]).output()?;
        ensure!(o.status.success(), "tcpdump -r: {}", String::from_utf8_lossy(&o.stderr));
        t_tcpdump.push(t.elapsed().as_secs_f64());
        if let Some(bytes) = written {
            let tmp = tempfile::tempdir_in(dir)?;
            t_floor.push(write_floor(&tmp.path().join("floor.bin"), bytes)?);
            stores.push(tmp);
        }
        for (k, &(callrec, w)) in runs.iter().enumerate() {
            let tmp = tempfile::tempdir_in(dir)?;
            let store = tmp.path().join("store");
            let pass = tmp.path().join("pass");
            std::fs::write(&pass, "bench passphrase\n")?;
            let o = Command::new(callrec)
                .arg("--store")
                .arg(&store)
                .args(["init", "--passphrase-file"])
                .arg(&pass)
                .output()?;
            ensure!(o.status.success(), "callrec init: {}", String::from_utf8_lossy(&o.stderr));
            // SAFETY: as above.
            unsafe { libc::sync() };
            let cpu = children_cpu_s();
            let t = Instant::now();
            let o = Command::new(callrec)
                .arg("--store")
                .arg(&store)
                .args(["import", "--json", "--workers", &w.to_string()])
                .arg(pcap)
                .output()?;
            t_import[k].push(t.elapsed().as_secs_f64());
            cpu_import[k].push(children_cpu_s() - cpu);
            if written.is_none() {
                written = Some(dir_bytes(&store)?);
            }
            stores.push(tmp);
            ensure!(o.status.success(), "callrec import: {}", String::from_utf8_lossy(&o.stderr));
            last = serde_json::from_slice(&o.stdout)?;
            ensure!(last[0]["store_errors"].as_array().is_some_and(|a| a.is_empty()), "store errors: {last}");
        }
    }
    let td = median(&mut t_tcpdump.clone());
    let per_workers: Vec<Value> = runs
        .iter()
        .zip(t_import.iter().zip(&cpu_import))
        .map(|(&(bin, w), (t, cpu))| {
            let im = median(&mut t.clone());
            let cpu_ns = median(&mut cpu.clone()) * 1e9 / frames as f64;
            // Each import against the tcpdump run just before it: robust to the machine's pace
            // drifting between repetitions.
            let mut paired: Vec<f64> = t_tcpdump.iter().zip(t).map(|(td, im)| td / im).collect();
            let mut v = json!({"workers": w, "import_s": t, "import_mpps_median": frames as f64 / im / 1e6,
                   "calls_per_s": last[0]["calls"].as_f64().unwrap_or(0.0) / im, "import_over_tcpdump": td / im,
                   "paired_ratios": paired.clone(), "paired_ratio_median": median(&mut paired),
                   "import_cpu_s": cpu, "cpu_ns_per_frame_median": cpu_ns});
            if bin != callrec {
                // This build's run with the same workers in the same repetition.
                let this =
                    runs.iter().position(|&(b, w2)| b == callrec && w2 == w).expect("this build runs every count");
                let mut vs: Vec<f64> = t.iter().zip(&t_import[this]).map(|(c, n)| c / n).collect();
                v["binary"] = json!(bin.display().to_string());
                v["time_over_this_build"] = json!(vs.clone());
                v["time_over_this_build_median"] = json!(median(&mut vs));
            }
            v
        })
        .collect();
    drop(stores);
    // Paired with the tcpdump run of the same repetition (the first repetition has none: the
    // byte count comes from its import).
    let mut floor_ratio: Vec<f64> = t_tcpdump.iter().skip(1).zip(&t_floor).map(|(td, fl)| td / fl).collect();
    Ok(json!({
        "bench": "import_vs_tcpdump", "frames": frames, "reps": reps,
        "bytes_written_per_import": written,
        "write_floor_s": t_floor, "write_floor_over_tcpdump": floor_ratio.clone(),
        "write_floor_over_tcpdump_median": if floor_ratio.is_empty() { Value::Null } else { json!(median(&mut floor_ratio)) },
        "tcpdump_read_s": t_tcpdump, "tcpdump_mpps_median": frames as f64 / td / 1e6,
        "import": per_workers, "last_import_summary": last,
    }))
}
