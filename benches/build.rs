//! Builds the live bench's in-kernel sender (bpf/xdpgen.bpf.c) into $OUT_DIR/xdpgen.bpf.o, which
//! src/xdpgen.rs embeds, with the recorder's own BPF build step (crates/capture-ebpf/clang_bpf.rs).

include!("../crates/capture-ebpf/clang_bpf.rs");

fn main() {
    println!("cargo:rerun-if-changed=../crates/capture-ebpf/clang_bpf.rs");
    clang_bpf("bpf/xdpgen.bpf.c", "xdpgen.bpf.o", "callrec-bench");
}
