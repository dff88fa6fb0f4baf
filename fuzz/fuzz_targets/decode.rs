//! Fuzzes the frame decoder (all link types, tunnels, IP reassembly) and the capture-file reader.
#![no_main]
use capture_core::{CaptureReader, Decoder};
use libfuzzer_sys::fuzz_target;

const LINKTYPES: [u32; 8] = [1, 113, 276, 101, 0, 9, 228, 229];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut d = Decoder::default();
    // The same bytes as several frames, so fragments can meet.
    for (i, chunk) in rest.split(|&b| b == 0xa5).enumerate() {
        let _ = d.decode(i as i64 * 1_000_000, LINKTYPES[(sel as usize) % LINKTYPES.len()], chunk);
    }
    if let Ok(mut r) = CaptureReader::new(rest) {
        while let Ok(Some(f)) = r.next_frame() {
            let (ts, lt) = (f.ts_ns, f.linktype);
            let frame = f.data.to_vec();
            let _ = d.decode(ts, lt, &frame);
        }
    }
});
