#!/usr/bin/env bash
# The main job on the built-in default: sets the machine up, builds callrec, brings up the virtual
# mirror port (scripts/rig.sh: two phones and a switch whose ports are mirrored into a capture
# namespace), records live with the XDP filter + AF_XDP while sip-tester places calls with audio and
# DTMF (and background traffic the filter drops), stops capture with SIGTERM, lists the recorded
# calls, exports one to WAV and verifies it. Leaves nothing behind but the store.
#   sudo bash scripts/demo.sh [STORE_DIR]     (default ./demo-store)
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-demo-store}
calls=${DEMO_CALLS:-4}
bash scripts/setup.sh
cargo build --release -q -p callrec
bin=$PWD/target/release/callrec
rig="callrec-demo-$$"
work=$(mktemp -d)
cap_pid=
cleanup() {
  [ -n "$cap_pid" ] && kill -TERM "$cap_pid" 2>/dev/null && wait "$cap_pid" 2>/dev/null || true
  bash scripts/rig.sh down "$rig" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
pass="$store.passphrase"
if [ ! -e "$store/keys/current.pub" ]; then
  [ -e "$pass" ] || { head -c 24 /dev/urandom | base64 > "$pass"; chmod 600 "$pass"; }
  "$bin" --store "$store" init --passphrase-file "$pass"
fi
store=$(cd "$store" && pwd)
bash scripts/rig.sh up "$rig"
ip netns exec "$rig-cap" "$bin" --store "$store" capture --iface mirror0 --mode xdp --log-interval 5 \
  > "$work/capture.json" &
cap_pid=$!
for _ in $(seq 100); do [ -e "$store/capture-status.json" ] && break; sleep 0.1; done
bash scripts/rig.sh noise "$rig" 14 &
noise=$!
bash scripts/rig.sh calls "$rig" "$calls"
wait "$noise" || true
echo
"$bin" --store "$store" status || true
kill -TERM "$cap_pid"
wait "$cap_pid"
cap_pid=
python3 - "$work/capture.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
x = s.get("xdp", {}).get("mirror0", {})
print(f"\ncapture: {s['totals']['packets']} packets reached userspace, {s['totals']['recorded']} calls recorded, "
      f"{s['totals']['drops']} lost; XDP kept {x.get('passed_sip')} SIP + {x.get('passed_media')} media "
      f"and dropped {x.get('dropped')} other packets in the driver")
PY
echo
"$bin" --store "$store" search --where "from = sipp" --limit 10
id=$("$bin" --store "$store" search --where "from = sipp" --limit 1 --csv | awk -F, 'NR==2 {print $1}')
"$bin" --store "$store" export "$id" --format wav --out "$store-call-$id.wav" --passphrase-file "$pass"
"$bin" --store "$store" verify --passphrase-file "$pass"
echo
echo "demo: store in $store (passphrase file $pass), call $id exported to $store-call-$id.wav"
