#!/usr/bin/env bash
# Installs everything callrec's build, demo and tests need on a fresh Debian machine (run as root).
# Idempotent: packages already present are skipped by apt, cargo tools by `cargo install --locked`'s own check.
set -euo pipefail

pkgs=(
  build-essential pkg-config cmake clang llvm libbpf-dev libelf-dev zlib1g-dev m4
  sip-tester tcpdump tshark iproute2 iputils-ping procps ethtool mount e2fsprogs
  libspandsp-dev libpcap-dev python3
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run this script as root (sudo $0)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
