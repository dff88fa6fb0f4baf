//! Inputs the fuzzers found. Each once crashed something; they must decode (or fail) cleanly.

use capture_core::Decoder;

/// etherparse 0.21's IPv6 extension iterator read past its buffer on this frame (AddressSanitizer:
/// heap-buffer-overflow), which is why the IP layer is parsed in capture-core itself.
#[test]
fn ipv6_extension_chain_overflow() {
    let data = include_bytes!("data/ipv6-ext-overflow.bin");
    let (&sel, rest) = data.split_first().unwrap();
    let linktypes = [1u32, 113, 276, 101, 0, 9, 228, 229];
    let mut d = Decoder::default();
    for (i, chunk) in rest.split(|&b| b == 0xa5).enumerate() {
        let _ = d.decode(i as i64, linktypes[sel as usize % linktypes.len()], chunk);
    }
}
