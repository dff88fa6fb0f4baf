#!/usr/bin/env bash
# The main job on a built-in default, until live capture lands (issue 3): sets the machine up,
# builds callrec, places real SIP calls with sip-tester between two throw-away network namespaces,
# records the capture into an encrypted store, lists the calls and exports one to WAV.
#   sudo bash scripts/demo.sh [STORE_DIR]     (default ./demo-store)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-demo-store}
bash scripts/setup.sh
cargo build --release -q -p callrec
bin=target/release/callrec
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pass="$store.passphrase"
if [ ! -e "$store/keys/current.pub" ]; then
  [ -e "$pass" ] || { head -c 24 /dev/urandom | base64 > "$pass"; chmod 600 "$pass"; }
  "$bin" --store "$store" init --passphrase-file "$pass"
fi
bash scripts/sipp-calls.sh "$work/calls.pcap" 3
"$bin" --store "$store" import "$work/calls.pcap"
echo
"$bin" --store "$store" search --where "from = sipp" --limit 10
id=$("$bin" --store "$store" search --where "from = sipp" --limit 1 --csv | awk -F, 'NR==2 {print $1}')
"$bin" --store "$store" export "$id" --format wav --out "$store-call-$id.wav" --passphrase-file "$pass"
"$bin" --store "$store" verify "$id" --passphrase-file "$pass"
echo
echo "demo: store in $store (passphrase file $pass), call $id exported to $store-call-$id.wav"
