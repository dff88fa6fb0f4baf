//! Helpers shared by the end-to-end tests: run the real `callrec` binary against a temporary store.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn callrec() -> &'static str {
    env!("CARGO_BIN_EXE_callrec")
}

/// The shared real-world captures. Missing captures are a loud failure, not a silent skip: set
/// CALLREC_NO_SHARED_PCAPS=1 to opt out explicitly.
pub fn pcaps_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/pcaps");
    if dir.join("SOURCES.md").exists() {
        return Some(dir.canonicalize().unwrap());
    }
    if std::env::var_os("CALLREC_NO_SHARED_PCAPS").is_some() {
        eprintln!("SKIPPED: ../shared/pcaps is absent and CALLREC_NO_SHARED_PCAPS is set");
        return None;
    }
    panic!(
        "../shared/pcaps (the real-world test captures) is missing at {}; put the project checkout next to \
         shared/, or set CALLREC_NO_SHARED_PCAPS=1 to skip these tests explicitly",
        dir.display()
    );
}

pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub pass: PathBuf,
}

impl TestStore {
    pub fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("passphrase");
        std::fs::write(&pass, "correct horse battery staple\n").unwrap();
        let t = TestStore { dir, pass };
        t.ok(&["init", "--passphrase-file", t.pass.to_str().unwrap()]);
        t
    }

    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(callrec()).arg("--store").arg(self.store()).args(args).output().expect("run callrec")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "callrec {args:?} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn search(&self, conds: &[&str]) -> Vec<Value> {
        let mut args = vec!["search", "--json"];
        for c in conds {
            args.push("--where");
            args.push(c);
        }
        let out = self.ok(&args);
        match serde_json::from_str::<Value>(&out).unwrap() {
            Value::Array(v) => v,
            other => panic!("search --json printed {other}"),
        }
    }

    pub fn import(&self, file: &Path) -> String {
        self.ok(&["import", file.to_str().unwrap()])
    }

    pub fn export_wav(&self, id: i64) -> (u32, Vec<i16>, Vec<i16>) {
        let out = self.dir.path().join(format!("call{id}.wav"));
        self.ok(&[
            "export",
            &id.to_string(),
            "--format",
            "wav",
            "--out",
            out.to_str().unwrap(),
            "--passphrase-file",
            self.pass.to_str().unwrap(),
        ]);
        let mut r = hound::WavReader::open(&out).unwrap();
        let spec = r.spec();
        assert_eq!(spec.channels, 2);
        let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        let left = s.iter().step_by(2).copied().collect();
        let right = s.iter().skip(1).step_by(2).copied().collect();
        (spec.sample_rate, left, right)
    }

    /// Every file in the store, recursively.
    pub fn files(&self) -> Vec<PathBuf> {
        fn walk(d: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() { walk(&p, out) } else { out.push(p) }
            }
        }
        let mut v = Vec::new();
        walk(&self.store(), &mut v);
        v
    }
}

/// One RTP packet read straight from a capture (independently of the recorder's engine).
pub struct CapRtp {
    pub src: String,
    pub dst: String,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub payload: Vec<u8>,
}

/// All UDP payloads that look like RTP with the given payload type, from a capture file.
pub fn capture_rtp(path: &Path, pts: &[u8]) -> Vec<CapRtp> {
    use capture_core::{CaptureReader, Decoded, Decoder, Transport};
    let mut r = CaptureReader::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    let mut d = Decoder::default();
    let mut out = Vec::new();
    while let Ok(Some(f)) = r.next_frame() {
        if let Ok(Decoded::Packet(p)) = d.decode(f.ts_ns, f.linktype, f.data)
            && p.transport == Transport::Udp
        {
            let b = p.payload;
            if b.len() > 12 && b[0] >> 6 == 2 && pts.contains(&(b[1] & 0x7f)) && b[0] & 0x30 == 0 && b[0] & 0x0f == 0 {
                out.push(CapRtp {
                    src: std::net::SocketAddr::new(p.src, p.sport).to_string(),
                    dst: std::net::SocketAddr::new(p.dst, p.dport).to_string(),
                    ssrc: u32::from_be_bytes(b[8..12].try_into().unwrap()),
                    seq: u16::from_be_bytes([b[2], b[3]]),
                    ts: u32::from_be_bytes(b[4..8].try_into().unwrap()),
                    pt: b[1] & 0x7f,
                    payload: b[12..].to_vec(),
                });
            }
        }
    }
    out
}

/// Decodes G.711 with Python's `audioop` (CPython's C implementation): an independent decoder.
pub fn independent_g711(payload: &[u8], alaw: bool) -> Vec<i16> {
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in");
    let outp = dir.path().join("out");
    std::fs::write(&inp, payload).unwrap();
    let func = if alaw { "alaw2lin" } else { "ulaw2lin" };
    let script = format!(
        "import warnings,sys\nwarnings.simplefilter('ignore')\nimport audioop\n\
         open(sys.argv[2],'wb').write(audioop.{func}(open(sys.argv[1],'rb').read(), 2))"
    );
    let st = Command::new("python3").arg("-c").arg(script).arg(&inp).arg(&outp).status().expect(
        "python3 is needed for the independent G.711 decoder (Debian: apt-get install python3; audioop is in CPython up to 3.12)",
    );
    assert!(st.success(), "python3 audioop failed (CPython ≥ 3.13 has no audioop)");
    std::fs::read(&outp).unwrap().chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

/// Checks that each stream's decoded payloads sit in `chan` in order, at the offsets their RTP
/// timestamps give, relative to the first packet.
pub fn assert_stream_in_channel(name: &str, packets: &[&CapRtp], chan: &[i16], alaw: bool) {
    let mut pk: Vec<&&CapRtp> = packets.iter().collect();
    pk.sort_by_key(|p| p.ts.wrapping_sub(packets[0].ts) as i32);
    pk.dedup_by_key(|p| p.seq);
    let all: Vec<u8> = pk.iter().flat_map(|p| p.payload.iter().copied()).collect();
    let decoded = independent_g711(&all, alaw);
    // Locate the first packet whose audio is not flat, to anchor the search.
    let mut at = 0;
    let mut anchor = None;
    for p in &pk {
        let s = &decoded[at..at + p.payload.len()];
        if s.iter().any(|&x| x != s[0]) {
            anchor = Some((p, s.to_vec()));
            break;
        }
        at += p.payload.len();
    }
    let (ap, asamples) = anchor.unwrap_or_else(|| panic!("{name}: stream is flat, nothing to compare"));
    let pos = chan
        .windows(asamples.len())
        .position(|w| w == &asamples[..])
        .unwrap_or_else(|| panic!("{name}: the decoded audio of packet seq {} is not in the exported channel", ap.seq));
    let base = pos as i64 - ap.ts.wrapping_sub(pk[0].ts) as i32 as i64;
    let mut at = 0;
    let mut checked = 0;
    for p in &pk {
        let n = p.payload.len();
        let off = base + p.ts.wrapping_sub(pk[0].ts) as i32 as i64;
        assert!(off >= 0 && (off as usize + n) <= chan.len(), "{name}: packet seq {} falls outside the export", p.seq);
        assert_eq!(
            &chan[off as usize..off as usize + n],
            &decoded[at..at + n],
            "{name}: samples of packet seq {} differ",
            p.seq
        );
        at += n;
        checked += 1;
    }
    assert!(checked > 10, "{name}: only {checked} packets compared");
}

/// Decodes G.722 with spandsp (an independent reference implementation), through a small C tool
/// built on first use (`libspandsp-dev`, installed by scripts/setup.sh).
pub fn independent_g722(payload: &[u8]) -> Vec<i16> {
    use std::io::Write;
    use std::process::Stdio;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/g722_ref.c");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("g722_ref");
    let st = Command::new("cc").arg("-O1").arg("-o").arg(&bin).arg(&src).arg("-lspandsp").status().expect("cc");
    assert!(st.success(), "building the spandsp reference decoder failed: install libspandsp-dev (scripts/setup.sh)");
    let mut child = Command::new(&bin).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout.chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

/// The DTMF digits one side of a call (`search --json` row) sent, in order.
pub fn dtmf_of(call: &Value, direction: &str) -> String {
    call["dtmf_events"]
        .as_array()
        .expect("dtmf_events")
        .iter()
        .filter(|d| d["direction"] == direction)
        .map(|d| d["digit"].as_str().unwrap_or("?").to_string())
        .collect()
}
