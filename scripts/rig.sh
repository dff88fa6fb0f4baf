#!/usr/bin/env bash
# The virtual mirror port: two phones and a switch in network namespaces, and a capture namespace
# whose interface receives a copy of every frame the switch forwards (SPAN emulated with tc clsact +
# mirred on the switch's ports).
#
#   scripts/rig.sh up [NAME]                 create (or re-create) the rig; prints its facts
#   scripts/rig.sh down [NAME]               remove it and everything running in it
#   scripts/rig.sh calls NAME N [DIR]        N sip-tester calls phone A → phone B (G.711 A-law audio,
#                                            RFC 2833 DTMF '1'; B echoes audio). DIR keeps sipp's
#                                            message trace and a capture taken at phone A.
#   scripts/rig.sh noise NAME SECONDS        background traffic that is not SIP/RTP: pings and UDP
#   scripts/rig.sh exec NAME a|b|sw|cap CMD  run CMD inside one of the rig's namespaces
#
#   phone A  NAME-a   eth0 10.77.0.1 ─┐
#                                      ├─ NAME-sw: bridge br0 (ports pa0, pb0; their ingress is
#   phone B  NAME-b   eth0 10.77.0.2 ─┘            mirrored to cap0)
#   capture  NAME-cap mirror0 (no address; the mirror port)
#
# NAME defaults to "callrec"; tests use names unique to their run. Needs root.
set -euo pipefail
cmd=${1:-}
name=${2:-callrec}
ns_a="$name-a" ns_b="$name-b" ns_sw="$name-sw" ns_cap="$name-cap"
A=10.77.0.1 B=10.77.0.2

die() { echo "rig: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root for network namespaces (run with sudo)"

rig_down() {
  for ns in "$ns_a" "$ns_b" "$ns_sw" "$ns_cap"; do
    if ip netns list | grep -qw "^$ns"; then
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] && kill $pids 2>/dev/null || true
      sleep 0.2
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
      ip netns del "$ns" 2>/dev/null || true
    fi
  done
}

rig_up() {
  command -v tc >/dev/null || die "tc missing; run scripts/setup.sh"
  rig_down
  trap 'rig_down' ERR
  for ns in "$ns_a" "$ns_b" "$ns_sw" "$ns_cap"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
  done
  # Each veth pair is created with both ends already in their namespaces, so concurrent rigs never
  # see each other's interface names.
  ip link add eth0 netns "$ns_a" type veth peer name pa0 netns "$ns_sw"
  ip link add eth0 netns "$ns_b" type veth peer name pb0 netns "$ns_sw"
  ip link add mirror0 netns "$ns_cap" type veth peer name cap0 netns "$ns_sw"
  ip -n "$ns_sw" link add br0 type bridge
  for p in pa0 pb0; do
    ip -n "$ns_sw" link set "$p" master br0
    ip -n "$ns_sw" link set "$p" up
  done
  ip -n "$ns_sw" link set br0 up
  ip -n "$ns_sw" link set cap0 up
  ip -n "$ns_a" addr add "$A/24" dev eth0
  ip -n "$ns_b" addr add "$B/24" dev eth0
  ip -n "$ns_a" link set eth0 up
  ip -n "$ns_b" link set eth0 up
  ip -n "$ns_cap" link set mirror0 up
  # SPAN: every frame entering the switch from a phone is copied out of cap0.
  for p in pa0 pb0; do
    ip netns exec "$ns_sw" tc qdisc add dev "$p" clsact
    ip netns exec "$ns_sw" tc filter add dev "$p" ingress protocol all u32 match u32 0 0 \
      action mirred egress mirror dev cap0
  done
  # Wait for the bridge ports to forward (no STP, so this is quick).
  for _ in $(seq 50); do
    ip netns exec "$ns_a" ping -c 1 -W 0.2 "$B" >/dev/null 2>&1 && break
    sleep 0.1
  done
  ip netns exec "$ns_a" ping -c 1 -W 1 "$B" >/dev/null || die "phone A cannot reach phone B through the switch"
  trap - ERR
  echo "rig $name: phones $ns_a ($A) and $ns_b ($B), switch $ns_sw, mirror port mirror0 in $ns_cap"
}

rig_calls() {
  local n=${1:?usage: rig.sh calls NAME N [DIR]} keep=${2:-}
  command -v sipp >/dev/null || die "sipp missing; run scripts/setup.sh"
  ip netns list | grep -qw "^$ns_a" || die "rig $name is not up (scripts/rig.sh up $name)"
  local work
  work=$(mktemp -d)
  local pids=()
  # shellcheck disable=SC2317
  cleanup_calls() {
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$keep" ]; then mkdir -p "$keep"; cp -f "$work"/*.log "$work"/*.pcap "$keep"/ 2>/dev/null || true; fi
    rm -rf "$work"
  }
  trap cleanup_calls RETURN
  { sipp -sd uac_pcap || true; } | sed 's#pcap/#/usr/share/sip-tester/#g' > "$work/uac.xml"
  grep -q '</scenario>' "$work/uac.xml" || die "could not dump sipp's uac_pcap scenario"
  ip netns exec "$ns_b" sipp -sn uas -rtp_echo -i "$B" -p 5060 -nostdin >"$work/uas.log" 2>&1 &
  pids+=($!)
  ip netns exec "$ns_a" tcpdump -i eth0 -s 0 -U -w "$work/phone-a.pcap" udp >"$work/tcpdump.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    [ -s "$work/phone-a.pcap" ] && ip netns exec "$ns_b" ss -lun 2>/dev/null | grep -q "$B:5060" && break
    sleep 0.1
  done
  # One caller instance per call, each with its own SIP and media ports: the uac_pcap scenario
  # plays the same RTP (same SSRC, sequence numbers and timestamps) in every call, so calls from one
  # instance, sharing one media port, could not be told apart by anyone.
  local rc=0 i
  local uacs=()
  for i in $(seq 0 $((n - 1))); do
    (cd "$work" && exec ip netns exec "$ns_a" sipp -sf "$work/uac.xml" "$B:5060" -i "$A" -p $((5061 + i)) \
      -mp $((6000 + 10 * (i + 1))) -m 1 -nostdin -trace_msg -message_file "$work/sipp-messages-$i.log" \
      >"$work/uac-$i.log" 2>&1) &
    uacs+=($!)
    sleep 0.3
  done
  for p in "${uacs[@]}"; do wait "$p" || rc=$?; done
  sleep 0.5
  if [ "$rc" -ne 0 ]; then
    tail -20 "$work"/uac-*.log >&2 || true
    die "a sipp uac exited with $rc"
  fi
  echo "rig $name: $n calls placed"
}

rig_noise() {
  local secs=${1:?usage: rig.sh noise NAME SECONDS}
  ip netns list | grep -qw "^$ns_a" || die "rig $name is not up"
  ip netns exec "$ns_a" ping -q -i 0.05 -w "$secs" "$B" >/dev/null 2>&1 &
  # Non-SIP, non-RTP UDP: syslog-like datagrams to a port nothing negotiated.
  ip netns exec "$ns_a" bash -c "end=\$((SECONDS + $secs)); while [ \$SECONDS -lt \$end ]; do
      for i in \$(seq 20); do echo '<13>noise from the rig' > /dev/udp/$B/5140; done; sleep 0.1; done" 2>/dev/null &
  wait
}

case "$cmd" in
  up) rig_up ;;
  down) rig_down; echo "rig $name: down" ;;
  calls) shift 2; rig_calls "$@" ;;
  noise) shift 2; rig_noise "$@" ;;
  exec)
    role=${3:?usage: rig.sh exec NAME a|b|sw|cap CMD...}
    shift 3
    ip netns exec "$name-$role" "$@"
    ;;
  *) die "usage: rig.sh up|down|calls|noise|exec [NAME] ..." ;;
esac
