#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for a bounded time (default 20 s; first argument).
# cargo fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them for
# this command only. A crash fails the script and leaves the input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
targets=(decode sip_sdp rtp_path store_reader)
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -O "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>"fuzz/$t.log" \
    || { tail -40 "fuzz/$t.log"; echo "fuzz: $t found a crash (input under fuzz/artifacts/$t)"; exit 1; }
  tail -2 "fuzz/$t.log"
done
echo "fuzz: all targets ran clean"
