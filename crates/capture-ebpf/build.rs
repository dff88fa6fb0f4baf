//! Builds the XDP program (src/callrec.bpf.c) with Debian's clang into $OUT_DIR/callrec.bpf.o, which
//! lib.rs embeds (see clang_bpf.rs for why C and clang).

include!("clang_bpf.rs");

fn main() {
    println!("cargo:rerun-if-changed=clang_bpf.rs");
    clang_bpf("src/callrec.bpf.c", "callrec.bpf.o", "capture-ebpf");
}
