#!/usr/bin/env bash
# Runs every test of callrec: installs what they need, checks formatting and lints, runs the unit,
# end-to-end and root-level tests (network namespaces + sip-tester), then a short bounded run of each
# fuzz target. CI runs exactly this (see .ci/run). Run it as root so the namespace tests can run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" -ne 0 ] && [ -z "${CALLREC_SKIP_ROOT_TESTS:-}" ]; then
  echo "test.sh: the namespace tests need root: run 'sudo bash scripts/test.sh' (or set CALLREC_SKIP_ROOT_TESTS=1 to skip them)" >&2
  exit 1
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
echo "== fuzz (short bounded runs)"
bash scripts/fuzz.sh "${CALLREC_FUZZ_SECONDS:-20}"
