//! Decodes raw G.722 (stdin) to s16le (stdout) with callrec's decoder: `… --example g722_raw < in > out`.
use std::io::{Read, Write};
fn main() {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).unwrap();
    let mut out = Vec::new();
    recorder::g722::G722Decoder::default().decode(&input, &mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|s| s.to_le_bytes()).collect();
    std::io::stdout().write_all(&bytes).unwrap();
}
