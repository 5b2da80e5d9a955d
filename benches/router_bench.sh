#!/usr/bin/env bash
# Data-plane benchmark: two hosts in network namespaces joined by one veth, each with a
# container namespace on its `weave` bridge. In one run, single-stream TCP throughput
# (iperf3 -t 10) and ping latency (100 pings, 10 ms apart; average and median) for:
#   1. the plain veth between the hosts (the baseline),
#   2. our overlay without a password: the kernel fast path (VXLAN), the default,
#   3. our overlay without a password over the sleeve (--no-fastdp),
#   4. our overlay with a password: the sleeve with ChaCha20-Poly1305,
# each with its ratio to the baseline. Needs root, iperf3, ping, ip.
#
#   benches/router_bench.sh            # builds release first
#   DURATION=5 benches/router_bench.sh # shorter runs
#   DURATION=0 PINGS=1000 benches/router_bench.sh  # latency only, more samples
#   PING_INTERVAL=0.2 benches/router_bench.sh      # pings further apart (idle path)
#   ROUNDS=5 benches/router_bench.sh   # five rounds, then the median of each figure
#   WEAVE=path/to/weave benches/router_bench.sh  # a prebuilt binary (no build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
PINGS=${PINGS:-100}
ROUNDS=${ROUNDS:-1}
PING_INTERVAL=${PING_INTERVAL:-0.01}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${WEAVE:-}" ]; then
    cargo build --release --quiet --bin weave
    WEAVE=$(realpath "$TARGET_DIR/release/weave")
fi

P="wb$$"
H1="$P-h1"; H2="$P-h2"; C1="$P-c1"; C2="$P-c2"
DIR=$(mktemp -d /tmp/weave-bench.XXXXXX)

cleanup() {
    for h in "$H1" "$H2"; do
        ip netns pids "$h" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    sleep 0.3
    for ns in "$C1" "$C2" "$H1" "$H2"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for ns in "$H1" "$H2" "$C1" "$C2"; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
done
ip link add eth0 netns "$H1" type veth peer name eth0 netns "$H2"
nsx "$H1" ip addr add 192.0.2.1/24 dev eth0
nsx "$H2" ip addr add 192.0.2.2/24 dev eth0
nsx "$H1" ip link set eth0 up
nsx "$H2" ip link set eth0 up

# Prints "<Mbit/s> <ping avg ms>" for traffic from namespace $1 to address $2 (an
# iperf3 server runs in namespace $3).
measure() {
    local from=$1 to=$2 server=$3
    local mbits=0
    if [ "$DURATION" != 0 ]; then
        nsx "$server" iperf3 -s -1 -D -p 5201 >/dev/null
        sleep 0.3
        mbits=$(nsx "$from" iperf3 -c "$to" -p 5201 -t "$DURATION" -f m 2>/dev/null \
            | awk '/receiver/ { print $7 }')
    fi
    # Average (the figure compared with the baseline) and median (steadier when the
    # machine is busy) of the round trips.
    local rtts
    rtts=$(nsx "$from" ping -n -c "$PINGS" -i "$PING_INTERVAL" "$to" | sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' \
        | sort -g | awk '{ v[NR] = $1; s += $1 }
            END { if (NR) printf "%.3f %.3f", s / NR, v[int((NR + 1) / 2)]; else print "nan nan" }')
    echo "${mbits:-0} ${rtts}"
}

launch() {
    local host=$1; shift
    nsx "$host" env WEAVE_STATE_DIR="$DIR/$host" "$WEAVE" launch --nickname "$host" "$@" >/dev/null
}

plumb() {
    local host=$1 c=$2 addr=$3 mtu
    mtu=$(nsx "$host" env "$WEAVE" report -f '{{.Router.OverlayMtu}}')
    ip link add "vw$c" netns "$host" mtu "$mtu" type veth peer name ethwe netns "$c" mtu "$mtu"
    nsx "$host" ip link set "vw$c" master weave up
    nsx "$c" ip addr add "$addr/16" dev ethwe
    nsx "$c" ip link set ethwe up
}

unplumb() {
    nsx "$H1" ip link del "vw$C1" 2>/dev/null || true
    nsx "$H2" ip link del "vw$C2" 2>/dev/null || true
}

wait_ping() {
    for _ in $(seq 1 100); do
        nsx "$1" ping -q -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "no ping from $1 to $2" >&2
    return 1
}

# Waits until host $1's connection is on overlay $2 (fastdp or sleeve).
wait_overlay() {
    for _ in $(seq 1 100); do
        # The overlay is a word of its own (a sleeve line may also say fastdp=...).
        nsx "$1" "$WEAVE" status connections 2>/dev/null | grep -qE "(^| )$2( |$)" && return 0
        sleep 0.2
    done
    echo "$1 never got on $2" >&2
    return 1
}

# $1: the overlay to expect (fastdp or sleeve); the rest: launch flags.
overlay() {
    local expect=$1; shift
    launch "$H1" "$@"
    launch "$H2" "$@" 192.0.2.1
    plumb "$H1" "$C1" 198.18.0.1
    plumb "$H2" "$C2" 198.18.0.2
    wait_overlay "$H1" "$expect"
    wait_overlay "$H2" "$expect"
    wait_ping "$C1" 198.18.0.2
    measure "$C1" 198.18.0.2 "$C2"
    nsx "$H1" "$WEAVE" reset >/dev/null 2>&1 || true
    nsx "$H2" "$WEAVE" reset >/dev/null 2>&1 || true
    unplumb
}

# One round: the baseline and the overlays, measured back to back; prints the table
# and appends "<ratio> x3 <p50 +ms> x3" (fast path, sleeve, encrypted) to $SUMMARY.
round() {
    echo "measuring: veth baseline" >&2
    result=$(measure "$H1" 192.0.2.2 "$H2")
    read -r base_mbit base_ping base_p50 <<< "$result"
    echo "measuring: overlay, no password (fast path)" >&2
    result=$(overlay fastdp)
    read -r fast_mbit fast_ping fast_p50 <<< "$result"
    echo "measuring: overlay, no password, sleeve" >&2
    result=$(overlay sleeve --no-fastdp)
    read -r clear_mbit clear_ping clear_p50 <<< "$result"
    echo "measuring: overlay, password (sleeve)" >&2
    result=$(overlay sleeve --password bench-secret)
    read -r sealed_mbit sealed_ping sealed_p50 <<< "$result"

    awk -v b="$base_mbit" -v bp="$base_ping" -v bm="$base_p50" \
        -v f="$fast_mbit" -v fp="$fast_ping" -v fm="$fast_p50" \
        -v c="$clear_mbit" -v cp="$clear_ping" -v cm="$clear_p50" \
        -v s="$sealed_mbit" -v sp="$sealed_ping" -v sm="$sealed_p50" -v out="$SUMMARY" 'BEGIN {
        printf "%-26s %8s %7s %12s %9s %12s %9s\n", "path", "Gbit/s", "ratio", "ping avg ms", "avg +ms", "ping p50 ms", "p50 +ms"
        printf "%-26s %8.2f %7.3f %12.3f %9.3f %12.3f %9.3f\n", "veth (baseline)", b/1000, 1, bp, 0, bm, 0
        printf "%-26s %8.2f %7.3f %12.3f %9.3f %12.3f %9.3f\n", "unencrypted, fast path", f/1000, (b>0?f/b:0), fp, fp-bp, fm, fm-bm
        printf "%-26s %8.2f %7.3f %12.3f %9.3f %12.3f %9.3f\n", "unencrypted, sleeve", c/1000, (b>0?c/b:0), cp, cp-bp, cm, cm-bm
        printf "%-26s %8.2f %7.3f %12.3f %9.3f %12.3f %9.3f\n", "encrypted (sleeve)", s/1000, (b>0?s/b:0), sp, sp-bp, sm, sm-bm
        printf "%.3f %.3f %.3f %.3f %.3f %.3f\n", (b>0?f/b:0), (b>0?c/b:0), (b>0?s/b:0), fm-bm, cm-bm, sm-bm >> out
    }'
}

SUMMARY="$DIR/summary"
for r in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $r of $ROUNDS"
    round
done
if [ "$ROUNDS" -gt 1 ]; then
    # The median of each column over the rounds: one noisy round does not decide.
    echo "median of $ROUNDS rounds:"
    for col in 1 2 3 4 5 6; do
        cut -d' ' -f"$col" "$SUMMARY" | sort -g | awk '{ v[NR] = $1 } END {
            printf "%s ", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
    done | awk '{ printf "  ratio fast path %.3f, sleeve %.3f, encrypted %.3f; ping p50 +%.3f / +%.3f / +%.3f ms\n", $1, $2, $3, $4, $5, $6 }'
fi
