//! The index bench: how fast finished calls are indexed, and how fast an operator's searches are
//! answered on an index of millions of calls (MiFID II keeps five years).
//!
//! Rows go in through the same [`Index`] calls the recorder makes (`insert_started` when a call
//! starts, `complete` when it ends, committed in the recorder's batches), in the recorder's order: with
//! `concurrent` calls in progress, call `i` is completed in the batch that starts call
//! `i + concurrent`, so the completing UPDATE finds a row written several batches earlier. File ids
//! are random-looking, as the recorder's are. Summaries are shaped like the generator's calls: two
//! parties, two G.711 streams, payload-type maps, a DTMF digit on every tenth call. Calls are spread evenly over five years. Searches are the ones `callrec search`
//! runs ([`Filter::ids`]): a caller number, a Call-ID, a one-hour date range, and free text.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use recorder::model::{CallSummary, Dtmf, DtmfSource, EndReason, Party, Side, StreamSummary};
use recorder::store::index::Index;
use recorder::store::query::Filter;
use serde_json::{Value, json};

use crate::stages::median;
use crate::traffic::{call_id, callee_number, caller_number};

const T0: i64 = 1_577_836_800_000_000_000; // 2020-01-01
const FIVE_YEARS_NS: i64 = 5 * 365 * 86_400 * 1_000_000_000;

fn start_of(i: u64, rows: u64) -> i64 {
    T0 + (FIVE_YEARS_NS as i128 * i as i128 / rows as i128) as i64
}

fn summary(i: u64, start: i64) -> CallSummary {
    let i32_ = i as u32;
    let stream = |index: u8, side: Side| StreamSummary {
        index,
        side,
        ssrc: i32_.wrapping_mul(2654435761) ^ index as u32,
        codec: "PCMA".into(),
        payload_type: 8,
        clock: 8000,
        src: Some(SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 10_000))),
        dst: Some(SocketAddr::from(([10, 128, (i >> 8) as u8, i as u8], 50_000))),
        packets: 1500,
        lost: 0,
        duplicates: 0,
        out_of_order: 0,
        jitter_ms: 0.4,
        mos: 4.4,
        first_ns: start + 120_000_000,
        last_ns: start + 30_000_000_000,
        rtcp_fraction_lost: None,
        rtcp_jitter_ms: None,
        decodable: true,
    };
    CallSummary {
        call_id: call_id(i32_),
        caller: Party {
            number: caller_number(i32_),
            name: format!("Caller {i}"),
            uri: format!("sip:{}@10.0.0.1", caller_number(i32_)),
        },
        callee: Party {
            number: callee_number(i32_),
            name: String::new(),
            uri: format!("sip:{}@10.128.0.1", callee_number(i32_)),
        },
        start_ns: start,
        answer_ns: Some(start + 100_000_000),
        end_ns: start + 30_000_000_000,
        end_reason: EndReason::CallerBye,
        sip_code: None,
        codecs: vec!["PCMA".into(), "telephone-event".into()],
        dtmf: if i.is_multiple_of(10) {
            vec![Dtmf {
                at_ns: start + 1_000_000_000,
                digit: '5',
                source: DtmfSource::Rfc4733,
                side: Side::Caller,
                duration_ms: 100,
            }]
        } else {
            vec![]
        },
        holds: vec![],
        streams: vec![stream(0, Side::Caller), stream(1, Side::Callee)],
        payload_types: vec![
            (Side::Caller, 8, "PCMA".into(), 8000),
            (Side::Caller, 101, "telephone-event".into(), 8000),
            (Side::Callee, 8, "PCMA".into(), 8000),
            (Side::Callee, 101, "telephone-event".into(), 8000),
        ],
        sip_messages: 6,
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] }
}

pub fn run(rows: u64, concurrent: u64, batch: usize, db: &Path, queries: usize, reuse: bool) -> Result<Value> {
    std::fs::create_dir_all(db).with_context(|| format!("cannot create {}", db.display()))?;
    let path = db.join("index.sqlite");
    let mut ingest = Value::Null;
    if !reuse {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        let mut index = Index::open(&path)?;
        let t = Instant::now();
        let mut checkpoints = Vec::new();
        let mut last = (Instant::now(), 0u64);
        let step = (rows / 10).max(1);
        let mut in_progress = std::collections::VecDeque::with_capacity(concurrent as usize + 1);
        for i in 0..rows + concurrent {
            if i < rows {
                let start = start_of(i, rows);
                // The recorder's file ids are 16 random bytes; a multiplicative hash spreads these alike.
                let file_id = (i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
                let id = index.insert_started(
                    &format!("{file_id:032x}"),
                    &call_id(i as u32),
                    start,
                    &format!("recordings/x/{file_id:032x}.crec"),
                )?;
                in_progress.push_back((i, id, start));
            }
            if i >= concurrent || i >= rows {
                let Some((done, id, start)) = in_progress.pop_front() else { break };
                index.complete(id, &summary(done, start), "0123456789abcdef0123456789abcdef", 600_000)?;
                if (done + 1) % step == 0 {
                    let now = Instant::now();
                    checkpoints.push(
                        json!({"rows": done + 1, "rows_per_s": (done + 1 - last.1) as f64 / (now - last.0).as_secs_f64()}),
                    );
                    last = (now, done + 1);
                }
            }
            if index.pending_writes() >= batch {
                index.commit()?;
            }
        }
        index.commit()?;
        let secs = t.elapsed().as_secs_f64();
        ingest = json!({"rows": rows, "concurrent": concurrent, "batch": batch, "seconds": secs, "rows_per_s": rows as f64 / secs, "by_tenth": checkpoints});
    }
    let index = Index::open(&path)?;
    let size_mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let mut results = serde_json::Map::new();
    let pick = |k: usize| -> u64 { ((k as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % rows };
    type Build = dyn Fn(u64) -> Result<(Filter, Option<usize>)>;
    let kinds: Vec<(&str, Box<Build>)> = vec![
        (
            "number",
            Box::new(|i| {
                let mut f = Filter::default();
                f.add_where(&format!("from = {}", caller_number(i as u32)))?;
                Ok((f, Some(1)))
            }),
        ),
        (
            "call_id",
            Box::new(|i| {
                let mut f = Filter::default();
                f.add_where(&format!("call-id = {}", call_id(i as u32)))?;
                Ok((f, Some(1)))
            }),
        ),
        (
            "date_range_1h",
            Box::new(move |i| {
                let s = start_of(i, rows) / 1_000_000_000;
                let fmt = |t: i64| recorder::timefmt::rfc3339_ms(t * 1_000_000_000);
                let mut f = Filter::default();
                f.add_where(&format!("start >= {}", fmt(s)))?;
                f.add_where(&format!("start < {}", fmt(s + 3600)))?;
                Ok((f, None))
            }),
        ),
        (
            "text",
            Box::new(|i| {
                let mut f = Filter::default();
                // The last digits of a caller number, as an operator types a fragment.
                f.add_text(&caller_number(i as u32)[6..]);
                Ok((f, None))
            }),
        ),
    ];
    for (name, build) in &kinds {
        // Text search scans every row: fewer samples keep the bench finite on 10M rows.
        let n = if *name == "text" { queries.min(10) } else { queries };
        let mut lat = Vec::with_capacity(n);
        let mut found = 0usize;
        for k in 0..n {
            let i = pick(k);
            let (f, expect) = build(i)?;
            let t = Instant::now();
            let ids = f.ids(&index, None)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
            if let Some(e) = expect {
                ensure!(ids.len() == e, "{name} search for call {i} found {} calls, expected {e}", ids.len());
            } else {
                ensure!(!ids.is_empty(), "{name} search for call {i} found nothing");
            }
            found += ids.len();
        }
        results.insert(
            name.to_string(),
            json!({
                "queries": n, "median_ms": median(&mut lat.clone()), "p99_ms": percentile(&mut lat, 0.99),
                "max_ms": lat.last().copied().unwrap_or(0.0), "mean_results": found as f64 / n.max(1) as f64,
            }),
        );
    }
    Ok(json!({"bench": "index", "rows": rows, "db_mb": size_mb, "ingest": ingest, "search": results}))
}
