//! Prints the calls the engine rebuilds from capture files, without storing anything:
//! `cargo run -p recorder --example calls -- FILE...`.
use capture_core::{CaptureReader, Decoded, Decoder};
use recorder::{Config, Engine, memsink::MemorySink};

fn main() {
    for path in std::env::args().skip(1) {
        let mut r = CaptureReader::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
        let mut d = Decoder::default();
        let mut e = Engine::new(Config::default());
        let mut sink = MemorySink::new(false);
        while let Ok(Some(f)) = r.next_frame() {
            let ts = f.ts_ns;
            if let Ok(Decoded::Packet(p)) = d.decode(ts, f.linktype, f.data) {
                e.handle(&p, ts, &mut sink);
            }
        }
        e.finish(&mut sink);
        println!("== {path}: {} calls; stats {:?}", sink.calls.len(), e.stats());
        for (c, _) in &sink.calls {
            println!(
                "  {} {}<{}> -> {}<{}> ans={} dur={}ms end={} code={:?} codecs={:?} dtmf={} holds={} streams={}",
                c.call_id,
                c.caller.number,
                c.caller.name,
                c.callee.number,
                c.callee.name,
                c.answer_ns.is_some(),
                c.duration_ms(),
                c.end_reason.as_str(),
                c.sip_code,
                c.codecs,
                c.dtmf_string(),
                c.holds.len(),
                c.streams
                    .iter()
                    .map(|s| format!("{}:{}:{}pk/{}lost", s.side.as_str(), s.codec, s.packets, s.lost))
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
    }
}
