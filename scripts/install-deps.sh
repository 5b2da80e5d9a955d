#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a Debian machine (as root):
# network tools for the namespace lab and the clients the tests drive.
set -euo pipefail

packages=(iproute2 iptables iputils-ping iperf3 bind9-dnsutils dnsmasq-base dnsperf tcpdump procps psmisc gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs), stable 1.88 or newer" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install --locked cargo-nextest >/dev/null
fi
