#!/usr/bin/env bash
# Places real SIP calls with sip-tester between two throw-away network namespaces and captures them.
#   scripts/sipp-calls.sh OUT.pcap [CALLS]
# Caller: sipp's uac_pcap scenario (G.711 A-law audio from /usr/share/sip-tester/g711a.pcap, then an
# RFC 2833 DTMF '1'); callee: sipp uas with -rtp_echo. tcpdump records the caller's veth. The
# namespaces get names unique to this run and are deleted on exit, even after a failure.
# Needs root (ip netns). Prints sipp's own statistics file path on success.
set -euo pipefail
out=${1:?usage: $0 OUT.pcap [CALLS]}
calls=${2:-3}
if [ "$(id -u)" -ne 0 ]; then
  echo "sipp-calls: needs root for network namespaces (run with sudo)" >&2
  exit 1
fi
for t in sipp tcpdump ip; do
  command -v "$t" >/dev/null || { echo "sipp-calls: $t missing; run scripts/setup.sh" >&2; exit 1; }
done
tag="cr$$$(printf '%04x' $((RANDOM)))"
ns_a="${tag}a" ns_b="${tag}b" va="${tag}x" vb="${tag}y"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "$va" type veth peer name "$vb"
ip link set "$va" netns "$ns_a"
ip link set "$vb" netns "$ns_b"
ip -n "$ns_a" addr add 10.201.0.1/24 dev "$va"
ip -n "$ns_b" addr add 10.201.0.2/24 dev "$vb"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set lo up; done
ip -n "$ns_a" link set "$va" up
ip -n "$ns_b" link set "$vb" up

# The stock scenario plays pcap/… relative to its working directory: point it at the packaged files.
# (`sipp -sd` exits non-zero after dumping, so check the output instead.)
{ sipp -sd uac_pcap || true; } | sed 's#pcap/#/usr/share/sip-tester/#g' > "$work/uac.xml"
grep -q '</scenario>' "$work/uac.xml" || { echo "sipp-calls: could not dump the uac_pcap scenario" >&2; exit 1; }

ip netns exec "$ns_b" sipp -sn uas -rtp_echo -i 10.201.0.2 -p 5060 -nostdin >"$work/uas.log" 2>&1 &
pids+=($!)
ip netns exec "$ns_a" tcpdump -i "$va" -s 0 -U -w "$out" >"$work/tcpdump.log" 2>&1 &
pids+=($!)
# Give tcpdump and the uas a moment to open their sockets.
for _ in $(seq 50); do
  [ -s "$out" ] && ip netns exec "$ns_b" ss -lun 2>/dev/null | grep -q 10.201.0.2:5060 && break
  sleep 0.1
done
rc=0
(cd "$work" && ip netns exec "$ns_a" sipp -sf "$work/uac.xml" 10.201.0.2:5060 -i 10.201.0.1 -p 5061 \
  -m "$calls" -r "$calls" -l "$calls" -nostdin -trace_stat -stf "$work/stat.csv" >"$work/uac.log" 2>&1) || rc=$?
sleep 1
kill "${pids[1]}" 2>/dev/null || true
wait "${pids[1]}" 2>/dev/null || true
if [ "$rc" -ne 0 ]; then
  echo "sipp-calls: sipp uac exited with $rc" >&2
  tail -20 "$work/uac.log" >&2 || true
  exit 1
fi
echo "sipp-calls: $calls calls captured to $out"
