//! `callrec import`: capture files through the same decoder, engine and store as live capture.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use capture_core::{CaptureReader, Decoded, Decoder, Ignored, Packet};
use crossbeam::channel::{Receiver, Sender, bounded};
use recorder::engine::Stats;
use recorder::steer::{SteerConfig, Steering};
use recorder::store::Store;
use recorder::{Config, Engine};
use serde_json::json;

use recorder::batch::{Batch, steer};

/// Counts bytes read, for the progress bar.
struct Counting<R> {
    inner: R,
    pb: indicatif::ProgressBar,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pb.inc(n as u64);
        Ok(n)
    }
}

fn ignored_reason(i: Ignored) -> String {
    match i {
        Ignored::NotIp(et) => format!("not IP (ethertype/protocol {et:#06x})"),
        Ignored::IpProtocol(p) => format!("IP protocol {p} (not UDP/TCP)"),
        Ignored::LinkType(l) => format!("unsupported link type {l}"),
        Ignored::FragmentHeld => "IP fragment (held for reassembly)".into(),
        Ignored::NestedFragment => "fragment inside a reassembled datagram".into(),
        Ignored::FragmentDropped => "IP fragment refused by reassembly limits".into(),
        Ignored::GtpControl => "GTP-U signalling".into(),
    }
}

pub fn run(dir: &Path, files: &[PathBuf], json_out: bool, user: &str, workers: usize) -> Result<ExitCode> {
    let mut store = Store::open(dir)?;
    let mut failed = 0;
    let mut summaries = Vec::new();
    for path in files {
        let r = if workers > 1 { import_parallel(dir, path, workers) } else { import_one(&mut store, path) };
        match r {
            Ok(s) => {
                store.index.audit(user, "import", &path.display().to_string(), &format!("{} calls", s["calls"]))?;
                if !json_out {
                    print_summary(&s);
                }
                summaries.push(s);
            }
            Err(e) => {
                failed += 1;
                eprintln!("callrec: error: {}: {e:#}", path.display());
                summaries.push(json!({"file": path.display().to_string(), "error": format!("{e:#}")}));
            }
        }
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn import_one(store: &mut Store, path: &Path) -> Result<serde_json::Value> {
    let mut engine = Engine::new(Config::default());
    let mut sink = store.recorder()?;
    // Packets go to the engine a batch at a time, as in live capture, so it can look ahead.
    let mut staged = Batch::default();
    let mut latest = i64::MIN;
    let input = read_packets(path, |pkt, ts, last_ts| {
        if let Some(p) = pkt {
            staged.push(ts, p);
        }
        latest = last_ts;
        if staged.full() {
            engine.handle_batch(&staged.packets, &staged.data, &mut sink);
            staged.clear();
            sink.tick(last_ts);
        }
    })?;
    engine.handle_batch(&staged.packets, &staged.data, &mut sink);
    if latest > i64::MIN {
        sink.tick(latest);
    }
    engine.finish(&mut sink);
    sink.flush();
    let st = engine.stats().clone();
    let errors = std::mem::take(&mut sink.errors);
    let recorded = sink.recorded;
    drop(sink);
    Ok(summary(path, input, &st, recorded, errors, 1))
}

/// Reads every frame of the capture at `path` (with a progress bar), decodes it, counts what
/// the input holds in an [`Input`], and calls `on_frame(packet, ts, latest ts)`
/// for each frame: `packet` is `None` for frames that carry nothing to record.
fn read_packets(path: &Path, mut on_frame: impl FnMut(Option<&Packet<'_>>, i64, i64)) -> Result<Input> {
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot open: {e}"))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pb = crate::progress_bar(len, &path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    // No BufReader: the capture reader reads large pieces into its own buffer.
    let mut reader = CaptureReader::new(Counting { inner: f, pb: pb.clone() })?;
    let mut decoder = Decoder::default();
    let mut input =
        Input { frames: 0, skipped: BTreeMap::new(), malformed: BTreeMap::new(), read_error: None, time_went_back: 0 };
    let mut last_ts = i64::MIN;
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                input.read_error = Some(e.to_string());
                break;
            }
        };
        input.frames += 1;
        let ts = frame.ts_ns;
        if ts < last_ts {
            input.time_went_back += 1;
        }
        last_ts = last_ts.max(ts);
        match decoder.decode(ts, frame.linktype, frame.data) {
            Ok(Decoded::Packet(p)) => on_frame(Some(&p), ts, last_ts),
            Ok(Decoded::Ignored(i)) => {
                *input.skipped.entry(ignored_reason(i)).or_default() += 1;
                on_frame(None, ts, last_ts);
            }
            Err(e) => {
                *input.malformed.entry(format!("frame decode: {e}")).or_default() += 1;
                on_frame(None, ts, last_ts);
            }
        }
    }
    pb.finish_and_clear();
    Ok(input)
}

/// What the reading side of an import found.
struct Input {
    frames: u64,
    skipped: BTreeMap<String, u64>,
    malformed: BTreeMap<String, u64>,
    read_error: Option<String>,
    time_went_back: u64,
}

fn summary(
    path: &Path,
    input: Input,
    st: &Stats,
    recorded: u64,
    errors: Vec<String>,
    workers: usize,
) -> serde_json::Value {
    let Input { frames, mut skipped, mut malformed, read_error, time_went_back } = input;
    for (why, n) in &st.sip_malformed {
        *malformed.entry(format!("SIP: {why}")).or_default() += n;
    }
    if st.unmatched_udp > 0 {
        *skipped.entry("UDP not SIP and not media of a known call".into()).or_default() += st.unmatched_udp;
    }
    if st.unmatched_tcp > 0 {
        *skipped.entry("TCP not SIP".into()).or_default() += st.unmatched_tcp;
    }
    if st.sip_ignored > 0 {
        *skipped.entry("SIP outside any call (REGISTER, OPTIONS, …)".into()).or_default() += st.sip_ignored;
    }
    json!({
        "file": path.display().to_string(),
        "frames": frames,
        "calls": st.calls_started,
        "recorded": recorded,
        "calls_refused": st.calls_refused,
        "streams": st.streams,
        "sip_messages": st.sip_messages,
        "sip_duplicates": st.sip_duplicates,
        "rtp_packets": st.rtp_packets,
        "rtp_duplicates": st.rtp_duplicates,
        "rtcp_packets": st.rtcp_packets,
        "skipped": skipped,
        "malformed": malformed,
        "timestamps_out_of_order": time_went_back,
        "read_error": read_error,
        "store_errors": errors,
        "workers": workers,
    })
}

/// What one import worker returns.
struct WorkerResult {
    stats: Stats,
    recorded: u64,
    errors: Vec<String>,
}

/// Import with `workers` threads: this thread reads and decodes the file and steers each packet
/// by call (the live capture's steering), workers run an engine and a store sink each. Channels
/// block rather than drop: an import loses nothing to a slow disk, it waits.
fn import_parallel(dir: &Path, path: &Path, workers: usize) -> Result<serde_json::Value> {
    let mut steering = Steering::new(SteerConfig {
        workers: workers as u32,
        max_calls: Config::default().max_calls * workers,
        ..Default::default()
    });
    let (mut learned, mut kernel) = (Vec::new(), Vec::new());
    let mut unmatched = 0u64;
    let (input, results) = std::thread::scope(|scope| -> Result<(Input, Vec<WorkerResult>)> {
        let mut links: Vec<(Sender<Batch>, Receiver<Batch>)> = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (tx, rx) = bounded::<Batch>(64);
            let (pool_tx, pool_rx) = bounded::<Batch>(80);
            handles.push(scope.spawn(move || import_worker(dir, workers, rx, pool_tx)));
            links.push((tx, pool_rx));
        }
        let mut batches: Vec<Batch> = (0..workers).map(|_| Batch::default()).collect();
        let send = |w: usize, b: &mut Batch, links: &[(Sender<Batch>, Receiver<Batch>)]| {
            let fresh = links[w].1.try_recv().unwrap_or_default();
            // A worker that failed has dropped its receiver; its error is reported on join.
            let _ = links[w].0.send(std::mem::replace(b, fresh));
        };
        // Decoded packets are staged and steered a batch at a time, with look-ahead.
        let mut staged = Batch::default();
        let mut steer_staged = |staged: &mut Batch, batches: &mut [Batch]| {
            learned.clear();
            kernel.clear();
            unmatched += steer(staged, &mut steering, &mut learned, &mut kernel, batches, |w, b| send(w, b, &links));
        };
        let input = read_packets(path, |pkt, ts, _| {
            let Some(pkt) = pkt else { return };
            staged.push(ts, pkt);
            if staged.full() {
                steer_staged(&mut staged, &mut batches);
            }
        });
        steer_staged(&mut staged, &mut batches);
        for (w, b) in batches.iter_mut().enumerate() {
            if !b.is_empty() {
                send(w, b, &links);
            }
        }
        drop(links);
        let results = handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("an import worker panicked"))?)
            .collect::<Result<Vec<_>>>()?;
        Ok((input?, results))
    })?;
    let mut st = Stats::default();
    let (mut recorded, mut errors) = (0, Vec::new());
    for r in results {
        st.absorb(&r.stats);
        recorded += r.recorded;
        errors.extend(r.errors);
    }
    st.unmatched_udp += unmatched;
    Ok(summary(path, input, &st, recorded, errors, workers))
}

fn import_worker(dir: &Path, workers: usize, rx: Receiver<Batch>, pool: Sender<Batch>) -> Result<WorkerResult> {
    let mut store = Store::open(dir).context("import worker")?;
    let mut sink = store.recorder()?;
    sink.set_open_file_budget(recorder::store::default_open_file_budget() / workers.max(1));
    let mut engine = Engine::new(Config::default());
    let mut last = i64::MIN;
    for mut batch in rx {
        engine.handle_batch(&batch.packets, &batch.data, &mut sink);
        last = batch.packets.iter().map(|h| h.ts).fold(last, i64::max);
        sink.tick(last);
        batch.clear();
        let _ = pool.try_send(batch);
    }
    engine.finish(&mut sink);
    sink.flush();
    let stats = engine.stats().clone();
    Ok(WorkerResult { stats, recorded: sink.recorded, errors: std::mem::take(&mut sink.errors) })
}

fn print_summary(s: &serde_json::Value) {
    println!(
        "{}: {} frames, {} calls ({} recorded), {} streams, {} SIP messages ({} duplicates), {} RTP packets ({} duplicates), {} RTCP",
        s["file"].as_str().unwrap_or("?"),
        s["frames"],
        s["calls"],
        s["recorded"],
        s["streams"],
        s["sip_messages"],
        s["sip_duplicates"],
        s["rtp_packets"],
        s["rtp_duplicates"],
        s["rtcp_packets"]
    );
    for (key, label) in [("skipped", "skipped"), ("malformed", "malformed")] {
        if let Some(m) = s[key].as_object() {
            let total: u64 = m.values().filter_map(|v| v.as_u64()).sum();
            println!("  {label}: {total}");
            for (why, n) in m {
                println!("    {n:>7}  {why}");
            }
        }
    }
    if let Some(e) = s["read_error"].as_str() {
        println!("  warning: {e}; everything before it was imported");
    }
    if s["timestamps_out_of_order"].as_u64().unwrap_or(0) > 0 {
        println!("  note: {} frames have timestamps earlier than a previous frame", s["timestamps_out_of_order"]);
    }
    if let Some(errs) = s["store_errors"].as_array().filter(|a| !a.is_empty()) {
        println!("  STORE ERRORS: {}", errs.len());
        for e in errs.iter().take(10) {
            println!("    {}", e.as_str().unwrap_or("?"));
        }
    }
}
