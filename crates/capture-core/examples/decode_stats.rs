//! Prints per-file decode statistics for capture files: `cargo run --example decode_stats -- FILE...`.
use std::collections::BTreeMap;

use capture_core::{CaptureReader, Decoded, Decoder};

fn main() {
    for path in std::env::args().skip(1) {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let mut r = match CaptureReader::new(std::io::BufReader::new(file)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        let mut d = Decoder::default();
        let (mut udp, mut tcp) = (0, 0);
        let mut other: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            let f = match r.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    *other.entry(format!("read error: {e}")).or_default() += 1;
                    break;
                }
            };
            match d.decode(f.ts_ns, f.linktype, f.data) {
                Ok(Decoded::Packet(p)) => match p.transport {
                    capture_core::Transport::Udp => udp += 1,
                    _ => tcp += 1,
                },
                Ok(Decoded::Ignored(i)) => *other.entry(format!("{i:?}")).or_default() += 1,
                Err(e) => *other.entry(format!("error {e}")).or_default() += 1,
            }
        }
        println!("{path}: udp {udp} tcp {tcp} {other:?}");
    }
}
