//! Builds the XDP program (src/callrec.bpf.c) with Debian's clang into $OUT_DIR/callrec.bpf.o, which
//! lib.rs embeds. Rust-to-BPF would need nightly's rust-src and a bpf-linker matched to rustc's LLVM;
//! clang and libbpf's headers come from Debian packages (`scripts/setup.sh` installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/callrec.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("callrec.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok(other) => panic!("capture-ebpf: no multiarch include directory known for target arch {other}"),
        Err(_) => "x86_64-linux-gnu",
    };
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-D__TARGET_ARCH_x86"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("capture-ebpf: `{clang}` failed to compile {src} ({s}); see the errors above"),
        Err(e) => panic!(
            "capture-ebpf: cannot run `{clang}` ({e}). The XDP program is C built with clang and libbpf's headers: \
             run `bash scripts/setup.sh` (or `apt-get install clang llvm libbpf-dev`), or set CLANG=/path/to/clang"
        ),
    }
}
