#!/usr/bin/env bash
# The demo: builds weave, makes three "hosts" as network namespaces on one underlay
# bridge, launches a weave router on each (host 2 and 3 know only host 1), and shows
# them forming a mesh. Needs root. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cargo build --release --quiet
WEAVE="$PWD/target/release/weave"
PREFIX="wdemo$$"
WORK=$(mktemp -d /tmp/weave-demo.XXXXXX)
HOSTS=(host1 host2 host3)

cleanup() {
    for h in "${HOSTS[@]}"; do
        ip netns exec "$PREFIX-$h" "$WEAVE" stop >/dev/null 2>&1 || true
        ip netns del "$PREFIX-$h" 2>/dev/null || true
    done
    ip netns del "$PREFIX-ul" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

on() { local h=$1; shift; ip netns exec "$PREFIX-$h" env WEAVE_STATE_DIR="$WORK/$h" "$@"; }

# The underlay: a bridge in its own namespace, each host's eth0 on it (192.0.2.0/24).
ip netns add "$PREFIX-ul"
ip -n "$PREFIX-ul" link add br0 type bridge
ip -n "$PREFIX-ul" link set br0 up
i=1
for h in "${HOSTS[@]}"; do
    ip netns add "$PREFIX-$h"
    ip -n "$PREFIX-$h" link set lo up
    ip link add "$PREFIX-$i" type veth peer name eth0 netns "$PREFIX-$h"
    ip link set "$PREFIX-$i" netns "$PREFIX-ul"
    ip -n "$PREFIX-ul" link set "$PREFIX-$i" master br0 up
    ip -n "$PREFIX-$h" addr add "192.0.2.$i/24" dev eth0
    ip -n "$PREFIX-$h" link set eth0 up
    i=$((i + 1))
done

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "host1: weave launch --password demo"
on host1 env WEAVE_PASSWORD=demo "$WEAVE" launch --nickname host1
step "host2, host3: weave launch --password demo 192.0.2.1   (they know only host1)"
on host2 env WEAVE_PASSWORD=demo "$WEAVE" launch --nickname host2 192.0.2.1
on host3 env WEAVE_PASSWORD=demo "$WEAVE" launch --nickname host3 192.0.2.1

# Wait until host3 has found host2 by itself (discovery) and all links are up.
for _ in $(seq 1 100); do
    if on host3 "$WEAVE" status connections 2>/dev/null | grep -c established | grep -q 2; then break; fi
    sleep 0.1
done

step "host3: weave status"
on host3 "$WEAVE" status
step "host3: weave status connections"
on host3 "$WEAVE" status connections
step "host3: weave status peers"
on host3 "$WEAVE" status peers
step "host2 stops; host1 and host3 notice at once"
on host2 "$WEAVE" stop
sleep 0.5
on host1 "$WEAVE" status peers
step "host2 comes back (it remembers its peers)"
on host2 "$WEAVE" launch --nickname host2 --password demo
sleep 1
on host1 "$WEAVE" status | grep -E "Connections|Peers"
