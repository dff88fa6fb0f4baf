#!/usr/bin/env bash
# The benchmark harness (docs/BENCHMARKS.md quotes what it prints). Results go to docs/bench/ as
# JSON, the live bench's loss chart to docs/bench/loss.svg.
#
#   scripts/bench.sh [all|micro|stages|import|index|memory|flood|xdp|live] [--quick]
#
#   micro   criterion: decode, dispatch, assembly, encrypted store per packet (30,000 calls up)
#   stages  per-stage cost on 1,000 concurrent 30 s calls held in memory
#   import  `callrec import` vs `tcpdump -r -w /dev/null` on the same generated capture
#   index   ingest rate and search latency on a 10-million-call index (--quick: 1 million)
#   memory  resident memory with 20,000 calls in progress
#   flood   memory under INVITEs with fresh Call-IDs and RTP of no call
#   xdp     the XDP filter's kernel time per frame, with and without its media port set (root)
#   live    callrec xdp vs af-packet vs tcpdump on the virtual mirror port (root)
#
# Set BENCH_WORKERS="1 2" to repeat the live bench for several worker counts (e.g. "1 2 4 8 16"
# on a machine with that many cores).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
quick=${2:-}
out=docs/bench
mkdir -p "$out"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p callrec -p callrec-bench
bin=target/release
run() { echo "== $*" >&2; "$@"; }

want() { [ "$what" = all ] || [ "$what" = "$1" ]; }

if want micro; then
  run cargo bench -q -p callrec-bench --bench hotpath 2>&1 | grep -v '^Warning\|^Benchmarking\|^$' | tee "$out/micro.txt"
fi
if want stages; then
  run $bin/callrec-bench stages --calls 1000 --duration 30 --reps 3 | tee "$out/stages.json"
fi
if want import; then
  run $bin/callrec-bench import --calls 1000 --duration 30 --reps 5 | tee "$out/import.json"
fi
if want index; then
  rows=10000000
  [ "$quick" = --quick ] && rows=1000000
  run $bin/callrec-bench index --rows "$rows" --db /var/tmp/callrec-bench-index --queries 200 | tee "$out/index.json"
  rm -rf /var/tmp/callrec-bench-index
fi
if want memory; then
  run $bin/callrec-bench memory --calls 20000 --duration 20 --ramp 5 | tee "$out/memory.json"
fi
if want flood; then
  run $bin/callrec-bench flood --invites 300000 --stray-rtp 1000000 --max-calls 100000 | tee "$out/flood.json"
fi
if want xdp; then
  [ "$(id -u)" -eq 0 ] || { echo "bench: the XDP filter bench needs root: sudo cargo xtask bench xdp" >&2; exit 1; }
  run $bin/callrec-bench xdp-filter --endpoints 20000 | tee "$out/xdp-filter.json"
fi
if want live; then
  [ "$(id -u)" -eq 0 ] || { echo "bench: the live bench needs root: sudo cargo xtask bench live" >&2; exit 1; }
  for w in ${BENCH_WORKERS:-2}; do
    run $bin/callrec-bench live --loads 1000,2000,3000,4000,5000,6000 --workers "$w" --out "$out/live-w$w.json" >/dev/null
  done
  first=$(echo "${BENCH_WORKERS:-2}" | awk '{print $1}')
  run $bin/callrec-bench plot "$out/live-w$first.json" "$out/loss.svg"
  # A busy mirror port: two background frames per call frame.
  run $bin/callrec-bench live --loads 500,1000,1500,2000 --noise 2 --workers 2 --out "$out/live-noise2-w2.json" >/dev/null
  run $bin/callrec-bench plot "$out/live-noise2-w2.json" "$out/loss-noise.svg"
  # The switch left out: frames sent straight into the mirror port's cable (a higher ceiling).
  run $bin/callrec-bench live --loads 4000,5000,6000,7000 --inject mirror --workers 2 --out "$out/live-inject-mirror.json" >/dev/null
  # The mirror port fed XDP frames by an in-kernel sender, as a NIC's driver would (no skb, no
  # veth copy on the sender's core): the rig's highest ceiling. `auto`: where the kernel refuses
  # the sender's live frames (some VMs' root), a packet socket into the cable instead; the
  # result's "inject" says which ran.
  run $bin/callrec-bench live --loads 5000,6000,8000,10000 --inject auto --workers 2 --out "$out/live-inject-xdp.json" >/dev/null
  run $bin/callrec-bench plot "$out/live-inject-xdp.json" "$out/loss-inject-xdp.svg"
  # Calls ending all the time, as on a contact centre's port: calls of 20 s starting over 40 s,
  # so half of them are going on at once and 300 end every second, with callrec's own default
  # worker count (the cores its reader leaves). The standard side-by-side run since the
  # thirteenth session (docs/BENCHMARKS.md, "One worker or two on two cores").
  run $bin/callrec-bench live --loads 12000,16000,20000 --duration 20 --ramp 40 --inject auto --out "$out/live-churn.json" >/dev/null
  run $bin/callrec-bench plot "$out/live-churn.json" "$out/loss-churn.svg"
fi
