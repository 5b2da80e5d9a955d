#!/usr/bin/env bash
# DNS benchmark: one host namespace running our daemon, one container namespace attached
# to it, and in the container, in the same run:
#   1. dnsmasq (the baseline) on 127.0.0.13:53 answering NAMES names from a hosts file,
#   2. our daemon's server on 127.0.0.12:53 (where containers find it) answering the
#      same names from its records (registered with `weave dns-add`),
# both queried by dnsperf over the container's loopback: first flat out (queries per
# second and average latency with 100 queries outstanding), then at a fixed, easy rate
# (latency unloaded). Prints each with its ratio to dnsmasq. Needs root, dnsperf,
# dnsmasq, ip.
#
#   benches/dns_bench.sh              # builds release first
#   DURATION=5 benches/dns_bench.sh   # shorter runs
#   WEAVE_BIN=/path/to/weave benches/dns_bench.sh   # that binary, no build (A/B runs)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
NAMES=${NAMES:-100}
RATE=${RATE:-2000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
[ -n "${WEAVE_BIN:-}" ] || cargo build --release --quiet --bin weave
WEAVE=$(realpath "${WEAVE_BIN:-$TARGET_DIR/release/weave}")

P="wd$$"
H="$P-h"; C="$P-c"
DIR=$(mktemp -d /tmp/weave-dns-bench.XXXXXX)

cleanup() {
    ip netns exec "$H" "$WEAVE" reset >/dev/null 2>&1 || true
    for ns in "$C" "$H"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for ns in "$H" "$C"; do
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
done
# The host's upstream: nothing (these names are all local).
mkdir -p "/etc/netns/$H"
echo "nameserver 192.0.2.53" > "/etc/netns/$H/resolv.conf"

nsx "$H" env WEAVE_STATE_DIR="$DIR/state" "$WEAVE" launch --nickname bench \
    --no-discovery --ipalloc-range 198.19.0.0/16 >/dev/null
nsx "$H" "$WEAVE" attach 198.18.0.1/16 --name client --netns "$C" >/dev/null

# The same names for both servers: nameK.weave.local -> 198.18.X.Y.
: > "$DIR/hosts"
: > "$DIR/queries"
for k in $(seq 1 "$NAMES"); do
    addr="198.18.$((k / 250 + 1)).$((k % 250 + 1))"
    echo "$addr name$k.weave.local" >> "$DIR/hosts"
    echo "name$k.weave.local A" >> "$DIR/queries"
    nsx "$H" "$WEAVE" dns-add "$addr" -h "name$k" >/dev/null
done

nsx "$C" dnsmasq --keep-in-foreground --no-resolv --no-hosts --user=root --pid-file= \
    --bind-interfaces --listen-address=127.0.0.13 --port=53 \
    --addn-hosts="$DIR/hosts" --log-facility="$DIR/dnsmasq.log" &
DNSMASQ=$!
sleep 0.5

# Both answer every name, with the same address.
check() {
    local server=$1 got
    got=$(nsx "$C" dig +short +time=2 +tries=1 "@$server" "name$NAMES.weave.local")
    if [ "$got" != "198.18.$((NAMES / 250 + 1)).$((NAMES % 250 + 1))" ]; then
        echo "$server does not answer name$NAMES (got '$got')" >&2
        exit 1
    fi
}
check 127.0.0.13
check 127.0.0.12

# Prints "<queries/s> <avg latency ms> <lost>" for server $1, extra dnsperf flags after.
perf() {
    local server=$1; shift
    nsx "$C" dnsperf -s "$server" -d "$DIR/queries" -l "$DURATION" "$@" 2>/dev/null | awk '
        /Queries lost:/ { lost = $3 }
        /Queries per second:/ { qps = $4 }
        /Average Latency \(s\):/ { lat = $4 * 1000 }
        END { printf "%s %s %s\n", qps, lat, lost }'
}

echo "measuring: flat out (dnsmasq, weave, dnsmasq, weave)" >&2
read -r m1_qps m1_lat m1_lost <<< "$(perf 127.0.0.13)"
read -r w1_qps w1_lat w1_lost <<< "$(perf 127.0.0.12)"
read -r m2_qps m2_lat m2_lost <<< "$(perf 127.0.0.13)"
read -r w2_qps w2_lat w2_lost <<< "$(perf 127.0.0.12)"
echo "measuring: at $RATE queries/s" >&2
read -r mr_qps mr_lat mr_lost <<< "$(perf 127.0.0.13 -Q "$RATE")"
read -r wr_qps wr_lat wr_lost <<< "$(perf 127.0.0.12 -Q "$RATE")"
kill "$DNSMASQ" 2>/dev/null || true

awk -v m1="$m1_qps" -v m2="$m2_qps" -v w1="$w1_qps" -v w2="$w2_qps" \
    -v ml1="$m1_lat" -v ml2="$m2_lat" -v wl1="$w1_lat" -v wl2="$w2_lat" \
    -v mlo="$m1_lost/$m2_lost" -v wlo="$w1_lost/$w2_lost" \
    -v mr="$mr_lat" -v wr="$wr_lat" -v rate="$RATE" -v names="$NAMES" 'BEGIN {
    m = (m1 + m2) / 2; w = (w1 + w2) / 2; ml = (ml1 + ml2) / 2; wl = (wl1 + wl2) / 2
    printf "%d local names, A queries over the container loopback\n", names
    printf "%-22s %12s %8s %14s %8s %10s %16s %8s\n", "server", "queries/s", "ratio", "avg latency ms", "ratio", "lost", "ms at " rate "/s", "ratio"
    printf "%-22s %12.0f %8.3f %14.3f %8.3f %10s %16.3f %8.3f\n", "dnsmasq (baseline)", m, 1, ml, 1, mlo, mr, 1
    printf "%-22s %12.0f %8.3f %14.3f %8.3f %10s %16.3f %8.3f\n", "weave", w, (m > 0 ? w / m : 0), wl, (ml > 0 ? wl / ml : 0), wlo, wr, (mr > 0 ? wr / mr : 0)
    printf "runs: dnsmasq %.0f %.0f, weave %.0f %.0f queries/s\n", m1, m2, w1, w2
}'
