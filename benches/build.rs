//! Builds the live bench's in-kernel sender (bpf/xdpgen.bpf.c) with clang into
//! $OUT_DIR/xdpgen.bpf.o, which src/xdpgen.rs embeds; the same toolchain as the recorder's XDP
//! filter (crates/capture-ebpf/build.rs; `scripts/setup.sh` installs clang and libbpf's headers).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/xdpgen.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("xdpgen.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("callrec-bench: `{clang}` failed to compile {src} ({s}); see the errors above"),
        Err(e) => panic!(
            "callrec-bench: cannot run `{clang}` ({e}): run `bash scripts/setup.sh` (or `apt-get install clang \
             llvm libbpf-dev`), or set CLANG=/path/to/clang"
        ),
    }
}
