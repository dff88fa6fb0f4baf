//! `callrec`: the operator's command line. Every subcommand is scriptable (stable output fields,
//! exit codes, `--json`/`--csv`), quiet when piped, and writes an audit entry when it reads or
//! changes recordings.

mod capture;
mod import;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use recorder::store::query::{CallView, Filter, load_call};
use recorder::store::{Store, Verdict, file, keys};

#[derive(Parser)]
#[command(
    name = "callrec",
    version,
    about = "Passive VoIP call recorder: record, search, export, verify and erase calls"
)]
struct Cli {
    /// The recording store (created by `init`).
    #[arg(long, global = true, env = "CALLREC_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Wav,
    Opus,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a store: directories, the key pair (private key sealed under the passphrase), the index.
    Init {
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
    },
    /// Record the calls in pcap/pcapng files.
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Worker threads recording calls (calls are steered to workers as in live capture);
        /// default: one per CPU, at most 8.
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Find calls. EXPR is `FIELD OP [VALUE]`, e.g. `from = 1234`, `start after 2024-05-01`.
    Search {
        #[arg(long = "where", value_name = "EXPR")]
        conds: Vec<String>,
        /// Matches either party's number or name.
        #[arg(long, value_name = "T")]
        text: Option<String>,
        #[arg(long, value_name = "N")]
        limit: Option<i64>,
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        #[arg(long)]
        csv: bool,
    },
    /// Everything known about one call.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Decrypt a call to stereo audio (left: caller, right: callee).
    Export {
        id: i64,
        #[arg(long, value_enum, default_value = "wav")]
        format: Format,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[arg(long, value_name = "FILE", env = "CALLREC_PASSPHRASE_FILE")]
        passphrase_file: PathBuf,
    },
    /// Check MD5 watermarks and chunk framing (and, with the passphrase, every authenticated chunk).
    Verify {
        ids: Vec<i64>,
        #[arg(long, value_name = "FILE", env = "CALLREC_PASSPHRASE_FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Erase calls: recording files and every index row about them.
    Delete {
        ids: Vec<i64>,
        #[arg(long = "where", value_name = "EXPR")]
        conds: Vec<String>,
        /// Show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Replace the store key: new key pair, every recording's data key re-wrapped (headers only).
    RotateKey {
        /// Passphrase of the current key.
        #[arg(long, value_name = "FILE", env = "CALLREC_PASSPHRASE_FILE")]
        passphrase_file: PathBuf,
        /// Passphrase to seal the new key with (default: the current one).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Record live from mirror interfaces until SIGINT or SIGTERM (the product's main job).
    Capture(capture::CaptureArgs),
    /// State of the running capture: active calls, packets/s, drops per interface and queue.
    /// Exits 0 while capture runs, 3 when it does not.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the audit log.
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

/// The allocator: mimalloc rather than glibc's. The recorder holds one chunk buffer (up to
/// 14.5 KiB) and one call record per call in progress and touches a few lines of each per
/// packet; with glibc's heap those lie scattered among everything else allocated, with
/// mimalloc's size-class pages they lie together, and the hot path misses the cache and TLB less
/// (criterion `store_30k_calls_thread_cpu`, 30,000 calls: ~2.4 -> ~2.8 Mpps, docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("callrec: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The OS user running the command, for audit entries.
pub fn os_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(String::from))
    });
    let name = uid.as_ref().and_then(|uid| {
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .find(|l| l.split(':').nth(2) == Some(uid.as_str()))
            .and_then(|l| l.split(':').next().map(String::from))
    });
    match (name, uid) {
        (Some(n), Some(u)) => format!("{n} (uid {u})"),
        (None, Some(u)) => format!("uid {u}"),
        _ => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    }
}

fn store_dir(cli_store: &Option<PathBuf>) -> Result<PathBuf> {
    cli_store.clone().context("no store given: pass --store DIR or set CALLREC_STORE")
}

fn open_store(dir: &Path) -> Result<Store> {
    Ok(Store::open(dir)?)
}

fn unseal(store: &Store, pf: &Path) -> Result<keys::PrivateStoreKey> {
    let pass = keys::read_passphrase(pf)?;
    Ok(store.private_key(&pass)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    let user = os_user();
    // One open file per call in progress: lift the soft limit before capture or import needs it.
    recorder::store::raise_fd_limit();
    if let Cmd::Capture(args) = cli.cmd {
        let args = args.resolve()?;
        let dir = cli.store.clone().or_else(|| args.store.clone());
        let dir = store_dir(&dir)?;
        return capture::run(&dir, args, &user);
    }
    let dir = store_dir(&cli.store)?;
    match cli.cmd {
        Cmd::Capture(_) => unreachable!("handled above"),
        Cmd::Status { json } => capture::status(&dir, json),
        Cmd::Init { passphrase_file } => {
            let pass = keys::read_passphrase(&passphrase_file)?;
            let mut store = Store::init(&dir, &pass)?;
            let id = keys::key_id_hex(&store.public_key()?.id);
            store.index.audit(&user, "init", "store", &format!("key {id}"))?;
            println!("created store {} with key {id}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Import { files, json, workers } => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let workers = workers.unwrap_or(cpus.min(8));
            anyhow::ensure!((1..=256).contains(&workers), "--workers must be between 1 and 256, got {workers}");
            import::run(&dir, &files, json, &user, workers)
        }
        Cmd::Search { conds, text, limit, json, csv } => {
            let mut store = open_store(&dir)?;
            let mut f = Filter::default();
            for c in &conds {
                f.add_where(c)?;
            }
            if let Some(t) = &text {
                f.add_text(t);
            }
            let ids = f.ids(&store.index, limit)?;
            let mut calls = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(c) = load_call(&store.index, *id)? {
                    calls.push(c);
                }
            }
            let desc = format!("where {conds:?} text {text:?}: {} calls", calls.len());
            store.index.audit(&user, "search", "index", &desc)?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &calls)?;
                writeln!(out)?;
            } else if csv {
                print_csv(&mut out, &calls)?;
            } else {
                print_table(&mut out, &calls)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show { id, json } => {
            let mut store = open_store(&dir)?;
            let call = load_call(&store.index, id)?.with_context(|| format!("no call with id {id} in the index"))?;
            store.index.audit(&user, "show", &format!("call {id}"), "")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&call)?);
            } else {
                print_show(&call);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export { id, format, out, passphrase_file } => {
            let mut store = open_store(&dir)?;
            let (rel, _, _) = store.index.file_of(id)?.with_context(|| format!("no call with id {id} in the index"))?;
            let key = unseal(&store, &passphrase_file)?;
            let contents = file::read_recording(&store.abs(&rel), &key)?;
            let audio = recorder::export::render(&contents.records);
            match format {
                Format::Wav => recorder::export::write_wav(&audio, &out)?,
                Format::Opus => {
                    let f = std::fs::File::create(&out).with_context(|| format!("cannot create {}", out.display()))?;
                    recorder::export::write_ogg_opus(&audio, std::io::BufWriter::new(f))?
                        .flush()
                        .with_context(|| format!("cannot write {}", out.display()))?;
                }
            }
            let secs = audio.left.len() as f64 / audio.rate as f64;
            store.index.audit(
                &user,
                "export",
                &format!("call {id}"),
                &format!("to {} ({secs:.1} s)", out.display()),
            )?;
            eprintln!("exported call {id}: {secs:.2} s at {} Hz to {}", audio.rate, out.display());
            if !contents.complete {
                eprintln!(
                    "warning: recording of call {id} has no final chunk (capture was interrupted); exported what is there"
                );
            }
            if !audio.undecodable.is_empty() {
                eprintln!("note: not decodable, exported as silence: {}", audio.undecodable.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { ids, passphrase_file } => {
            let mut store = open_store(&dir)?;
            let key = match &passphrase_file {
                Some(p) => Some(unseal(&store, p)?),
                None => None,
            };
            let ids = if ids.is_empty() { store.index.all_ids()? } else { ids };
            let (mut ok, mut bad, mut incomplete) = (0, 0, 0);
            for id in &ids {
                match store.verify(*id, key.as_ref()) {
                    Ok(Verdict::Ok { chunks, authenticated }) => {
                        ok += 1;
                        let how = if authenticated { "md5 + authenticated chunks" } else { "md5 + framing" };
                        println!("ok {id} ({chunks} chunks, {how})");
                    }
                    Ok(Verdict::Incomplete { why }) => {
                        incomplete += 1;
                        println!("INCOMPLETE {id}: {why}");
                    }
                    Ok(Verdict::Damaged { why }) => {
                        bad += 1;
                        println!("DAMAGED {id}: {why}");
                    }
                    Err(e) => {
                        bad += 1;
                        println!("DAMAGED {id}: {e}");
                    }
                }
            }
            let detail = format!("{ok} ok, {bad} damaged, {incomplete} incomplete");
            store.index.audit(&user, "verify", &format!("{} calls", ids.len()), &detail)?;
            eprintln!(
                "{detail}{}",
                if key.is_none() { " (give --passphrase-file to authenticate every chunk)" } else { "" }
            );
            Ok(if bad > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Cmd::Delete { ids, conds, dry_run, yes } => {
            let mut store = open_store(&dir)?;
            if ids.is_empty() == conds.is_empty() {
                bail!("name the calls to delete either by ID or with --where EXPR (not both, not neither)");
            }
            let targets = if ids.is_empty() {
                let mut f = Filter::default();
                for c in &conds {
                    f.add_where(c)?;
                }
                f.ids(&store.index, None)?
            } else {
                for id in &ids {
                    if store.index.file_of(*id)?.is_none() {
                        bail!("no call with id {id} in the index; nothing was deleted");
                    }
                }
                ids
            };
            if dry_run {
                for id in &targets {
                    println!("would delete {id}");
                }
                eprintln!("{} calls would be deleted (dry run)", targets.len());
                return Ok(ExitCode::SUCCESS);
            }
            if !yes {
                bail!(
                    "deleting {} calls erases them for good; add --yes to confirm (or --dry-run to list them)",
                    targets.len()
                );
            }
            for id in &targets {
                let md5 = store.delete(*id)?;
                store.index.audit(&user, "delete", &format!("call {id}"), &format!("recording md5 {md5} erased"))?;
                println!("deleted {id}");
            }
            store.index.checkpoint()?;
            eprintln!("{} calls deleted", targets.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::RotateKey { passphrase_file, new_passphrase_file } => {
            let mut store = open_store(&dir)?;
            let old = unseal(&store, &passphrase_file)?;
            let new_pass = keys::read_passphrase(new_passphrase_file.as_deref().unwrap_or(&passphrase_file))?;
            let r = store.rotate_key(&old, &new_pass)?;
            let detail = format!(
                "key {} -> {}: {} recordings re-wrapped, {} already done, {} skipped",
                r.old_key,
                r.new_key,
                r.rewrapped,
                r.already,
                r.skipped.len()
            );
            store.index.audit(&user, "rotate-key", "store", &detail)?;
            println!("{detail}");
            if !r.skipped.is_empty() {
                eprintln!("not rotated (still recording or file missing): {:?}", r.skipped);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { limit, json } => {
            let store = open_store(&dir)?;
            let rows = store.index.audit_log(limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!("{}\t{}\t{}\t{}\t{}\t{}", r.id, r.at, r.user, r.action, r.target, r.detail);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn fmt_dur(ms: Option<i64>) -> String {
    match ms {
        Some(ms) => format!("{}:{:02}.{:01}", ms / 60_000, (ms / 1000) % 60, (ms % 1000) / 100),
        None => "-".into(),
    }
}

fn print_table(out: &mut impl Write, calls: &[CallView]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:>6}  {:<24}  {:<18}  {:<18}  {:>9}  {:<14}  {:<10}  DTMF",
        "ID", "START", "FROM", "TO", "DURATION", "END", "CODECS"
    )?;
    for c in calls {
        let end = match (&c.end_reason, c.sip_code) {
            (Some(r), Some(code)) if r == "failed" => format!("{r} {code}"),
            (Some(r), _) => r.clone(),
            (None, _) => c.status.clone(),
        };
        writeln!(
            out,
            "{:>6}  {:<24}  {:<18}  {:<18}  {:>9}  {:<14}  {:<10}  {}",
            c.id,
            c.start,
            c.from,
            c.to,
            fmt_dur(c.duration_ms),
            end,
            c.codecs.join(","),
            c.dtmf
        )?;
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

fn print_csv(out: &mut impl Write, calls: &[CallView]) -> std::io::Result<()> {
    writeln!(
        out,
        "id,call_id,from,from_name,to,to_name,start,answer,end,duration_ms,end_reason,sip_code,codecs,dtmf,md5"
    )?;
    for c in calls {
        let row = [
            c.id.to_string(),
            c.call_id.clone(),
            c.from.clone(),
            c.from_name.clone(),
            c.to.clone(),
            c.to_name.clone(),
            c.start.clone(),
            c.answer.clone().unwrap_or_default(),
            c.end.clone().unwrap_or_default(),
            c.duration_ms.map(|d| d.to_string()).unwrap_or_default(),
            c.end_reason.clone().unwrap_or_default(),
            c.sip_code.map(|d| d.to_string()).unwrap_or_default(),
            c.codecs.join(" "),
            c.dtmf.clone(),
            c.md5.clone().unwrap_or_default(),
        ];
        writeln!(out, "{}", row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","))?;
    }
    Ok(())
}

fn print_show(c: &CallView) {
    let party = |num: &str, name: &str, uri: &str| {
        if name.is_empty() { format!("{num}  <{uri}>") } else { format!("{num} \"{name}\"  <{uri}>") }
    };
    println!("Call {}  ({})", c.id, c.call_id);
    println!("  From      {}", party(&c.from, &c.from_name, &c.from_uri));
    println!("  To        {}", party(&c.to, &c.to_name, &c.to_uri));
    println!("  Start     {}", c.start);
    println!("  Answered  {}", c.answer.as_deref().unwrap_or("not answered"));
    println!("  End       {}", c.end.as_deref().unwrap_or("-"));
    println!("  Duration  {}", fmt_dur(c.duration_ms));
    let reason = c.end_reason.as_deref().unwrap_or("-");
    let code = c.sip_code.map(|x| format!(" (SIP {x})")).unwrap_or_default();
    println!("  Ended     {reason}{code}");
    println!("  Codecs    {}", if c.codecs.is_empty() { "-".into() } else { c.codecs.join(", ") });
    println!("  Status    {}   {} bytes   MD5 {}", c.status, c.bytes.unwrap_or(0), c.md5.as_deref().unwrap_or("-"));
    println!("  File      {}", c.file);
    if c.streams.is_empty() {
        println!("  Streams   none (no media seen)");
    }
    for s in &c.streams {
        println!(
            "  Stream    {:<6} ssrc {:08x} {:<6} {} pkts, {} lost, {} dup, {} late, jitter {:.2} ms, MOS {:.2}{}  {} -> {}",
            s.direction,
            s.ssrc,
            s.codec,
            s.packets,
            s.lost,
            s.duplicates,
            s.out_of_order,
            s.jitter_ms,
            s.mos,
            if s.decodable { "" } else { "  (not decodable)" },
            s.src.as_deref().unwrap_or("?"),
            s.dst.as_deref().unwrap_or("?")
        );
    }
    if !c.dtmf_events.is_empty() {
        println!("  DTMF      {}", c.dtmf);
        for d in &c.dtmf_events {
            println!(
                "            {} at +{} ms by {} ({}, {} ms)",
                d.digit, d.offset_ms, d.direction, d.source, d.duration_ms
            );
        }
    }
    for h in &c.holds {
        println!("  Hold      {} .. {} by {}", h.start, h.end.as_deref().unwrap_or("end"), h.by);
    }
}

pub fn progress_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}
