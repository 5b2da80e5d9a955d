#!/usr/bin/env bash
# The demo: builds weave, makes three "hosts" as network namespaces on one underlay
# bridge, launches a weave router on each (host 2 and 3 know only host 1), and shows
# them forming a mesh, then attaches a container on host1 (web) and one on host3 (db)
# and shows them reaching each other by name. Needs root. Everything it creates is
# removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

cargo build --release --quiet
WEAVE="$(realpath "${CARGO_TARGET_DIR:-target}")/release/weave"
PREFIX="wdemo$$"
WORK=$(mktemp -d /tmp/weave-demo.XXXXXX)
HOSTS=(host1 host2 host3)

cleanup() {
    for c in web db; do
        ip netns del "$PREFIX-$c" 2>/dev/null || true
        rm -rf "/etc/netns/$PREFIX-$c"
    done
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

step "containers: web on host1, db on host3, attached with --name"
for c in web db; do
    ip netns add "$PREFIX-$c"
    ip -n "$PREFIX-$c" link set lo up
done
on host1 "$WEAVE" attach 198.18.0.1/16 --name web --netns "$PREFIX-web"
on host3 "$WEAVE" attach 198.18.0.3/16 --name db --netns "$PREFIX-db"
# Give the record a moment to reach host1 (gossip), then look it up.
for _ in $(seq 1 50); do
    if on host1 "$WEAVE" dns-lookup db >/dev/null 2>&1; then break; fi
    sleep 0.1
done
step "host1: weave status dns"
on host1 "$WEAVE" status dns
step "web (host1): its resolv.conf points at weave's DNS in its own namespace"
ip netns exec "$PREFIX-web" grep -v '^#' /etc/resolv.conf
step "web (host1): getent hosts db; ping -c1 db   (db is on host3)"
ip netns exec "$PREFIX-web" getent hosts db
for _ in $(seq 1 30); do
    if ip netns exec "$PREFIX-web" ping -c1 -W1 db >/dev/null 2>&1; then break; fi
    sleep 0.2
done
ip netns exec "$PREFIX-web" ping -c1 db
