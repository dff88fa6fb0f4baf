// Compiling a BPF program written in C with Debian's clang: shared by this crate's build.rs (the
// XDP filter) and benches/build.rs (the live bench's in-kernel sender), which `include!` it.
// Rust-to-BPF would need nightly's rust-src and a bpf-linker matched to rustc's LLVM; clang and
// libbpf's headers come from Debian packages (`scripts/setup.sh` installs them).

/// Compiles `src` (relative to the calling crate) into `$OUT_DIR/{object}`; `who` names the
/// crate in errors. Panics with how to get clang when it cannot.
fn clang_bpf(src: &str, object: &str, who: &str) {
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join(object);
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86_64-linux-gnu",
        Ok("aarch64") => "aarch64-linux-gnu",
        Ok(other) => panic!("{who}: no multiarch include directory known for target arch {other}"),
        Err(_) => "x86_64-linux-gnu",
    };
    let status = std::process::Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-D__TARGET_ARCH_x86"])
        .arg(format!("-I/usr/include/{arch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{who}: `{clang}` failed to compile {src} ({s}); see the errors above"),
        Err(e) => panic!(
            "{who}: cannot run `{clang}` ({e}). The BPF programs are C built with clang and libbpf's headers: \
             run `bash scripts/setup.sh` (or `apt-get install clang llvm libbpf-dev`), or set CLANG=/path/to/clang"
        ),
    }
}
