//! `cargo xtask`: the project's task runner. It drives the same scripts the README names, so that
//! a developer, CI and the demo all run one definition of each task.
//!
//!     cargo xtask demo [STORE]    real SIP calls → encrypted store → search → export
//!     cargo xtask test            everything CI runs
//!     cargo xtask fuzz [SECONDS]  each fuzz target for a bounded time
//!     cargo xtask rig up|down [NAME]   the virtual mirror port (namespaces, bridge, tc mirred)
//!     cargo xtask rig calls NAME N     sip-tester calls across it
//!     cargo xtask bench [WHICH] [--quick]  the benchmark harness (docs/BENCHMARKS.md)

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn script(name: &str, args: &[String]) -> Result<ExitCode> {
    let path = root().join("scripts").join(name);
    let status = Command::new("bash")
        .arg(&path)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot run {}", path.display()))?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::from(status.code().unwrap_or(1) as u8) })
}

fn main() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task.as_str() {
        "demo" => script("demo.sh", &rest),
        "test" => script("test.sh", &rest),
        "fuzz" => script("fuzz.sh", &rest),
        "rig" => script("rig.sh", &rest),
        "bench" => script("bench.sh", &rest),
        "" | "help" | "--help" | "-h" => {
            println!(
                "cargo xtask demo [STORE] | test | fuzz [SECONDS] | rig up|down|calls|noise|exec [NAME] ... | bench [all|micro|stages|import|index|memory|flood|xdp|live] [--quick]"
            );
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown task {other:?}; tasks: demo, test, fuzz, rig, bench"),
    }
}
