use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::sleeve::{self, Body, Protection, SleeveEncoder};

fn peer(n: u64) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 | n)
}

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

fn eth(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len.max(14));
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.resize(len.max(14), 0x5a);
    f
}

fn out(next_hop: PeerName, src: PeerName, dst: PeerName, hops: u8) -> Output {
    Output {
        next_hop,
        tag: FrameTag { src, dst, hops },
    }
}

/// Us = 1, neighbours 2 and 3; 4 behind 2. Our floods go to 2 and 3; floods from 2
/// go on to 3 only... whatever the test sets.
fn star() -> (Forwarder, Instant) {
    let me = peer(1);
    let mut f = Forwarder::new(me, ForwarderConfig::default());
    let routes = RouteSnapshot::from_parts(
        me,
        [(peer(2), peer(2)), (peer(3), peer(3)), (peer(4), peer(2))],
        [
            (me, vec![peer(2), peer(3)]),
            (peer(2), vec![peer(3)]),
            (peer(4), vec![peer(3)]),
            (peer(3), vec![]),
        ],
    );
    f.set_routes(routes).unwrap();
    (f, Instant::now())
}

fn learn_remote(f: &mut Forwarder, m: Mac, owner: PeerName, now: Instant) {
    let mut d = Decision::new();
    let frame = eth(Mac::BROADCAST, m, 60);
    let from = f.routes().unicast_next_hop(owner).unwrap();
    f.handle_sleeve_frame(
        from,
        FrameTag {
            src: owner,
            dst: f.local(),
            hops: 64,
        },
        &frame,
        now,
        &mut d,
    );
    assert!(d.inject);
}

#[test]
fn tap_known_remote_unicast_goes_to_the_next_hop() {
    let (mut f, now) = star();
    learn_remote(&mut f, mac(44), peer(4), now);
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(mac(44), mac(11), 100), now, &mut d);
    assert_eq!(d.outputs, vec![out(peer(2), peer(1), peer(4), 64)]);
    assert!(!d.inject);
    assert_eq!(d.dropped, None);
    assert_eq!(f.lookup(mac(11), now), Some(Owner::Local));
    assert_eq!(f.peer_counters()[&peer(2)].forwarded_frames, 1);
    assert_eq!(f.peer_counters()[&peer(2)].forwarded_bytes, 100);
    assert_eq!(f.tap_counters().captured_frames, 1);
}

#[test]
fn tap_broadcast_multicast_and_unknown_unicast_flood_our_tree() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    for dst in [Mac::BROADCAST, Mac([0x01, 0, 0x5e, 0, 0, 1]), mac(99)] {
        f.handle_tap_frame(&eth(dst, mac(11), 60), now, &mut d);
        assert_eq!(
            d.outputs,
            vec![
                out(peer(2), peer(1), peer(2), 64),
                out(peer(3), peer(1), peer(3), 64)
            ],
            "dst {dst}"
        );
    }
    assert_eq!(f.peer_counters()[&peer(3)].forwarded_frames, 3);
}

#[test]
fn tap_local_destination_is_left_to_the_bridge() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(12), 60), now, &mut d);
    f.handle_tap_frame(&eth(mac(12), mac(11), 60), now, &mut d);
    assert!(d.outputs.is_empty());
    assert_eq!(d.dropped, Some(DropReason::LocalDestination));
    assert_eq!(
        f.tap_counters().dropped.get(DropReason::LocalDestination),
        1
    );
}

#[test]
fn tap_rejects_runts_stp_and_multicast_sources() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    f.handle_tap_frame(&[0u8; 13], now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::Malformed));
    for last in [0x00, 0x02, 0x0e, 0x0f] {
        f.handle_tap_frame(
            &eth(Mac([0x01, 0x80, 0xc2, 0, 0, last]), mac(11), 60),
            now,
            &mut d,
        );
        assert_eq!(d.dropped, Some(DropReason::LinkLocalControl));
        assert!(d.outputs.is_empty());
    }
    // 01:80:c2:00:00:10 is an ordinary multicast group.
    f.handle_tap_frame(
        &eth(Mac([0x01, 0x80, 0xc2, 0, 0, 0x10]), mac(11), 60),
        now,
        &mut d,
    );
    assert_eq!(d.outputs.len(), 2);
    f.handle_tap_frame(&eth(mac(12), Mac([0x03, 0, 0, 0, 0, 1]), 60), now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::InvalidSource));
    assert_eq!(f.lookup(Mac([0x03, 0, 0, 0, 0, 1]), now), None);
    let c = f.tap_counters();
    assert_eq!(c.captured_frames, 7);
    assert_eq!(c.dropped.get(DropReason::LinkLocalControl), 4);
    assert_eq!(c.dropped.total(), 6);
}

#[test]
fn tap_unicast_to_an_unreachable_owner_floods() {
    let (mut f, now) = star();
    learn_remote(&mut f, mac(44), peer(4), now);
    let mut routes = f.routes().clone();
    routes = RouteSnapshot::from_parts(
        routes.local(),
        [(peer(2), peer(2)), (peer(3), peer(3))],
        [(peer(1), vec![peer(2), peer(3)])],
    );
    f.set_routes(routes).unwrap();
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(mac(44), mac(11), 60), now, &mut d);
    assert_eq!(d.outputs.len(), 2);
}

#[test]
fn sleeve_frame_for_another_peer_is_relayed_with_one_hop_less() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    let tag = FrameTag {
        src: peer(3),
        dst: peer(4),
        hops: 10,
    };
    f.handle_sleeve_frame(peer(3), tag, &eth(mac(44), mac(33), 80), now, &mut d);
    assert_eq!(d.outputs, vec![out(peer(2), peer(3), peer(4), 9)]);
    assert!(!d.inject);
    // Relays learn nothing.
    assert_eq!(f.lookup(mac(33), now), None);
    assert_eq!(f.peer_counters()[&peer(2)].relayed_frames, 1);
    assert_eq!(f.peer_counters()[&peer(3)].received_bytes, 80);
}

#[test]
fn relay_refusals() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    let frame = eth(mac(44), mac(33), 60);
    let t = |src, dst, hops| FrameTag { src, dst, hops };
    f.handle_sleeve_frame(peer(3), t(peer(3), peer(9), 10), &frame, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::NoRoute));
    f.handle_sleeve_frame(peer(3), t(peer(3), peer(4), 1), &frame, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::HopLimit));
    f.handle_sleeve_frame(peer(3), t(peer(3), peer(4), 0), &frame, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::HopLimit));
    // 2 sends us a frame for 4, but our route to 4 is via 2: routes disagree.
    f.handle_sleeve_frame(peer(2), t(peer(2), peer(4), 10), &frame, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::RouteLoop));
    assert!(d.outputs.is_empty());
    f.handle_sleeve_frame(peer(2), t(peer(1), peer(4), 10), &frame, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::LoopedBack));
    let c3 = f.peer_counters()[&peer(3)];
    assert_eq!(c3.dropped.get(DropReason::HopLimit), 2);
    assert_eq!(c3.dropped.get(DropReason::NoRoute), 1);
    assert_eq!(c3.received_frames, 3);
}

#[test]
fn sleeve_broadcast_for_us_is_learned_injected_and_passed_down_the_tree() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    let tag = FrameTag {
        src: peer(4),
        dst: peer(1),
        hops: 7,
    };
    f.handle_sleeve_frame(peer(2), tag, &eth(Mac::BROADCAST, mac(44), 90), now, &mut d);
    assert!(d.inject);
    assert_eq!(d.outputs, vec![out(peer(3), peer(4), peer(3), 6)]);
    assert_eq!(f.lookup(mac(44), now), Some(Owner::Remote(peer(4))));
    assert_eq!(
        f.poll_event(),
        Some(Event::MacDiscovered {
            mac: mac(44),
            owner: Owner::Remote(peer(4))
        })
    );
    let c4 = f.peer_counters()[&peer(4)];
    assert_eq!((c4.injected_frames, c4.injected_bytes), (1, 90));
    assert_eq!(f.peer_counters()[&peer(3)].relayed_frames, 1);
    // Last hop: injected, not relayed, and that is counted.
    let tag = FrameTag { hops: 1, ..tag };
    f.handle_sleeve_frame(peer(2), tag, &eth(Mac::BROADCAST, mac(44), 90), now, &mut d);
    assert!(d.inject);
    assert!(d.outputs.is_empty());
    assert_eq!(d.dropped, Some(DropReason::HopLimit));
}

#[test]
fn sleeve_unicast_for_a_local_mac_is_injected_only_unknown_is_flooded_on() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(11), 60), now, &mut d);
    let tag = FrameTag {
        src: peer(2),
        dst: peer(1),
        hops: 5,
    };
    f.handle_sleeve_frame(peer(2), tag, &eth(mac(11), mac(22), 60), now, &mut d);
    assert!(d.inject);
    assert!(d.outputs.is_empty());
    assert_eq!(d.dropped, None);
    f.handle_sleeve_frame(peer(2), tag, &eth(mac(77), mac(22), 60), now, &mut d);
    assert!(d.inject);
    assert_eq!(d.outputs, vec![out(peer(3), peer(2), peer(3), 4)]);
}

#[test]
fn unicast_for_a_fast_peer_is_left_to_the_kernel() {
    let (mut f, now) = star();
    learn_remote(&mut f, mac(22), peer(2), now);
    learn_remote(&mut f, mac(33), peer(3), now);
    f.set_fast_peers(vec![peer(2), peer(2)]);
    assert_eq!(f.fast_peers(), [peer(2)]);
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(mac(22), mac(11), 60), now, &mut d);
    assert!(d.outputs.is_empty());
    assert_eq!(d.dropped, Some(DropReason::FastPath));
    assert_eq!(f.tap_counters().dropped.get(DropReason::FastPath), 1);
    // Peers the fast path does not reach still get theirs over the sleeve, and floods
    // still go down the whole tree (without the reach of each next hop in the routes,
    // nothing is known to be all fast).
    f.handle_tap_frame(&eth(mac(33), mac(11), 60), now, &mut d);
    assert_eq!(d.outputs, vec![out(peer(3), peer(1), peer(3), 64)]);
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(11), 60), now, &mut d);
    assert_eq!(d.outputs.len(), 2);
    f.set_fast_peers(Vec::new());
    f.handle_tap_frame(&eth(mac(22), mac(11), 60), now, &mut d);
    assert_eq!(d.outputs, vec![out(peer(2), peer(1), peer(2), 64)]);
}

/// The star with the reach of our own floods: 2 and 4 behind 2, 3 alone.
fn star_with_reach() -> (Forwarder, Instant) {
    let (mut f, now) = star();
    let mut routes = f.routes().clone();
    routes.set_own_flood_reach(peer(2), vec![peer(2), peer(4)]);
    routes.set_own_flood_reach(peer(3), vec![peer(3)]);
    f.set_routes(routes).unwrap();
    (f, now)
}

#[test]
fn own_floods_skip_the_sleeve_only_where_the_whole_subtree_is_fast() {
    let (mut f, now) = star_with_reach();
    let mut d = Decision::new();
    let broadcast = eth(Mac::BROADCAST, mac(11), 60);
    let hops = |d: &Decision| d.outputs.iter().map(|o| o.next_hop).collect::<Vec<_>>();
    f.handle_tap_frame(&broadcast, now, &mut d);
    assert_eq!(hops(&d), [peer(2), peer(3)]);
    // 3 is fast and alone behind itself: the kernel's copy is all it needs.
    f.set_fast_peers(vec![peer(3)]);
    f.handle_tap_frame(&broadcast, now, &mut d);
    assert_eq!(hops(&d), [peer(2)]);
    // 2 is fast but 4 behind it is not: 2 still gets a sleeve copy to pass on.
    f.set_fast_peers(vec![peer(2), peer(3)]);
    f.handle_tap_frame(&broadcast, now, &mut d);
    assert_eq!(hops(&d), [peer(2)]);
    assert_eq!(f.own_flood_hops(), [peer(2)]);
    // Everyone fast: nothing goes over the sleeve, and nothing counts as dropped.
    f.set_fast_peers(vec![peer(2), peer(3), peer(4)]);
    f.handle_tap_frame(&broadcast, now, &mut d);
    assert!(d.outputs.is_empty());
    assert_eq!(d.dropped, None);
    // Unknown unicast floods the same way; floods relayed for others are not pruned.
    f.handle_tap_frame(&eth(mac(99), mac(11), 60), now, &mut d);
    assert!(d.outputs.is_empty());
    let tag = FrameTag {
        src: peer(2),
        dst: peer(1),
        hops: 7,
    };
    f.handle_sleeve_frame(peer(2), tag, &eth(Mac::BROADCAST, mac(22), 60), now, &mut d);
    assert_eq!(hops(&d), [peer(3)]);
    // New routes without reach (or the fast path gone): full floods again.
    f.set_fast_peers(Vec::new());
    f.handle_tap_frame(&broadcast, now, &mut d);
    assert_eq!(hops(&d), [peer(2), peer(3)]);
    let (mut plain, _) = star();
    plain.set_fast_peers(vec![peer(2), peer(3), peer(4)]);
    assert_eq!(plain.own_flood_hops(), [peer(2), peer(3)]);
}

#[test]
fn a_flood_from_a_fast_peer_is_not_injected_but_still_relayed() {
    let (mut f, now) = star();
    f.set_fast_peers(vec![peer(2)]);
    let mut d = Decision::new();
    let tag = FrameTag {
        src: peer(2),
        dst: peer(1),
        hops: 7,
    };
    f.handle_sleeve_frame(peer(2), tag, &eth(Mac::BROADCAST, mac(22), 60), now, &mut d);
    assert!(!d.inject, "the kernel delivered this one");
    assert_eq!(d.outputs, vec![out(peer(3), peer(2), peer(3), 6)]);
    assert_eq!(f.lookup(mac(22), now), Some(Owner::Remote(peer(2))));
    assert_eq!(
        f.peer_counters()[&peer(2)]
            .dropped
            .get(DropReason::FastPath),
        1
    );
    // A peer reached only through 2 is no fast peer: its floods are injected.
    let tag = FrameTag {
        src: peer(4),
        ..tag
    };
    f.handle_sleeve_frame(peer(2), tag, &eth(Mac::BROADCAST, mac(44), 60), now, &mut d);
    assert!(d.inject);
}

#[test]
fn tree_leading_back_is_pruned() {
    let me = peer(1);
    let mut f = Forwarder::new(me, ForwarderConfig::default());
    f.set_routes(RouteSnapshot::from_parts(
        me,
        [],
        [(peer(2), vec![peer(2), peer(3), peer(5)])],
    ))
    .unwrap();
    let mut d = Decision::new();
    let tag = FrameTag {
        src: peer(2),
        dst: me,
        hops: 5,
    };
    f.handle_sleeve_frame(
        peer(3),
        tag,
        &eth(Mac::BROADCAST, mac(22), 60),
        Instant::now(),
        &mut d,
    );
    assert_eq!(d.outputs, vec![out(peer(5), peer(2), peer(5), 4)]);
    assert_eq!(d.dropped, Some(DropReason::RouteLoop));
    assert_eq!(
        f.peer_counters()[&peer(3)]
            .dropped
            .get(DropReason::RouteLoop),
        2
    );
}

#[test]
fn sleeve_frame_errors() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    let tag = FrameTag {
        src: peer(2),
        dst: peer(1),
        hops: 5,
    };
    f.handle_sleeve_frame(peer(2), tag, &[1, 2, 3], now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::Malformed));
    assert!(!d.inject);
    let stp = eth(Mac([0x01, 0x80, 0xc2, 0, 0, 0]), mac(22), 60);
    f.handle_sleeve_frame(peer(2), tag, &stp, now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::LinkLocalControl));
    assert!(!d.inject);
    f.handle_sleeve_frame(peer(2), tag, &eth(mac(1), Mac::BROADCAST, 60), now, &mut d);
    assert_eq!(d.dropped, Some(DropReason::InvalidSource));
    assert!(!d.inject);
}

#[test]
fn mac_expiry_and_rate_limited_refresh() {
    let (mut f, t0) = star();
    let mut d = Decision::new();
    let frame = eth(Mac::BROADCAST, mac(11), 60);
    let min = |m: u64| Duration::from_secs(60 * m);
    f.handle_tap_frame(&frame, t0, &mut d);
    // Seen again 30 s later: too soon to rewrite the timestamp.
    f.handle_tap_frame(&frame, t0 + Duration::from_secs(30), &mut d);
    assert_eq!(
        f.lookup(mac(11), t0 + min(10) - Duration::from_millis(1)),
        Some(Owner::Local)
    );
    assert_eq!(f.lookup(mac(11), t0 + min(10)), None);
    // Seen 2 min in: refreshed, so it lives until 12 min.
    f.handle_tap_frame(&frame, t0 + min(2), &mut d);
    assert_eq!(f.lookup(mac(11), t0 + min(11)), Some(Owner::Local));
    assert_eq!(f.lookup(mac(11), t0 + min(12)), None);
    assert_eq!(
        f.macs(t0 + min(11)),
        vec![(mac(11), Owner::Local, t0 + min(2))]
    );
    // Expired entries behave as unknown: floods again.
    f.handle_tap_frame(&eth(mac(11), mac(12), 60), t0 + min(13), &mut d);
    assert_eq!(d.outputs.len(), 2);
    // And learning it again after expiry is a discovery, not a move.
    while f.poll_event().is_some() {}
    learn_remote(&mut f, mac(11), peer(4), t0 + min(13));
    assert_eq!(
        f.poll_event(),
        Some(Event::MacDiscovered {
            mac: mac(11),
            owner: Owner::Remote(peer(4))
        })
    );
}

#[test]
fn sweep_frees_expired_entries() {
    let (mut f, t0) = star();
    let mut d = Decision::new();
    assert_eq!(f.poll_timeout(), None);
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(11), 60), t0, &mut d);
    let first = f.poll_timeout().unwrap();
    assert!(first > t0);
    f.handle_timeout(first);
    assert_eq!(f.stats().macs, 1);
    let late = t0 + Duration::from_secs(601);
    f.handle_timeout(late);
    assert_eq!(f.stats().macs, 0);
    assert_eq!(f.poll_timeout(), None);
}

#[test]
fn conflicting_claims_latest_wins_and_is_reported() {
    let (mut f, now) = star();
    let mut d = Decision::new();
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(50), 60), now, &mut d);
    learn_remote(&mut f, mac(50), peer(4), now);
    learn_remote(&mut f, mac(50), peer(3), now);
    f.handle_tap_frame(&eth(Mac::BROADCAST, mac(50), 60), now, &mut d);
    let events: Vec<_> = std::iter::from_fn(|| f.poll_event()).collect();
    assert_eq!(
        events,
        vec![
            Event::MacDiscovered {
                mac: mac(50),
                owner: Owner::Local
            },
            Event::MacMoved {
                mac: mac(50),
                from: Owner::Local,
                to: Owner::Remote(peer(4))
            },
            Event::MacMoved {
                mac: mac(50),
                from: Owner::Remote(peer(4)),
                to: Owner::Remote(peer(3))
            },
            Event::MacMoved {
                mac: mac(50),
                from: Owner::Remote(peer(3)),
                to: Owner::Local
            },
        ]
    );
    assert_eq!(f.lookup(mac(50), now), Some(Owner::Local));
}

#[test]
fn table_and_event_caps_hold() {
    let me = peer(1);
    let config = ForwarderConfig {
        max_macs: 10,
        max_events: 4,
        ..ForwarderConfig::default()
    };
    let mut f = Forwarder::new(me, config);
    let now = Instant::now();
    let mut d = Decision::new();
    for i in 0..20 {
        f.handle_tap_frame(&eth(Mac::BROADCAST, mac(i), 60), now, &mut d);
    }
    let stats = f.stats();
    assert_eq!(stats.macs, 10);
    assert_eq!(stats.mac_table_full, 10);
    assert_eq!(stats.events_lost, 6);
    assert_eq!(std::iter::from_fn(|| f.poll_event()).count(), 4);
    // Unlearned MACs still work as unknown unicast.
    assert_eq!(f.lookup(mac(15), now), None);
}

#[test]
fn forget_peer_drops_its_macs_and_counters() {
    let (mut f, now) = star();
    learn_remote(&mut f, mac(44), peer(4), now);
    learn_remote(&mut f, mac(45), peer(4), now);
    learn_remote(&mut f, mac(33), peer(3), now);
    f.forget_peer(peer(4));
    assert_eq!(f.lookup(mac(44), now), None);
    assert_eq!(f.lookup(mac(45), now), None);
    assert_eq!(f.lookup(mac(33), now), Some(Owner::Remote(peer(3))));
    assert!(!f.peer_counters().contains_key(&peer(4)));
}

#[test]
fn routes_for_another_peer_are_refused() {
    let mut f = Forwarder::new(peer(1), ForwarderConfig::default());
    assert_eq!(
        f.set_routes(RouteSnapshot::new(peer(2))),
        Err(Error::WrongLocalPeer {
            local: peer(1),
            got: peer(2)
        })
    );
    assert_eq!(RouteSnapshot::new(peer(1)).unicast_next_hop(peer(1)), None);
}

// ---- Random topologies: the forwarders of a whole mesh, wired through the codec ----

type Graph = BTreeMap<PeerName, BTreeSet<PeerName>>;

/// Weave's BFS from `start`, levels sorted by name, stopping when it dequeues
/// `stop_at`: the first hop to each peer found, and every peer found (start included).
fn bfs(
    graph: &Graph,
    start: PeerName,
    stop_at: Option<PeerName>,
) -> (BTreeMap<PeerName, PeerName>, BTreeSet<PeerName>) {
    let mut first_hop: BTreeMap<PeerName, PeerName> = BTreeMap::new();
    let mut reached: BTreeSet<PeerName> = BTreeSet::from([start]);
    let mut next = vec![start];
    while !next.is_empty() {
        let mut level = std::mem::take(&mut next);
        level.sort();
        for cur in level {
            if Some(cur) == stop_at {
                return (first_hop, reached);
            }
            for &n in &graph[&cur] {
                if reached.insert(n) {
                    next.push(n);
                    let hop = if cur == start { n } else { first_hop[&cur] };
                    first_hop.insert(n, hop);
                }
            }
        }
    }
    assert!(stop_at.is_none(), "connected graph");
    (first_hop, reached)
}

/// How broadcast next hops are derived; both give exactly-once delivery on a stable
/// topology, and the forwarder must work with either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trees {
    /// Weave's: my neighbours that the origin's BFS had not found when it got to me.
    WeavePruned,
    /// weave-mesh's: my children in the origin's BFS spanning tree.
    SpanningChildren,
}

/// The BFS tree from `root` (FIFO, neighbours in name order): each peer's parent.
fn parents(graph: &Graph, root: PeerName) -> BTreeMap<PeerName, PeerName> {
    let mut parent = BTreeMap::new();
    let mut seen = BTreeSet::from([root]);
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        for &n in &graph[&p] {
            if seen.insert(n) {
                parent.insert(n, p);
                queue.push_back(n);
            }
        }
    }
    parent
}

/// The snapshot the mesh will give `me`: BFS next hops, and per origin the broadcast
/// next hops under `trees`.
fn snapshot(graph: &Graph, me: PeerName, trees: Trees) -> RouteSnapshot {
    let (unicast, _) = bfs(graph, me, None);
    let mut broadcast = Vec::new();
    for &origin in graph.keys() {
        let hops = match trees {
            Trees::WeavePruned => {
                let (_, reached) = bfs(graph, origin, Some(me));
                graph[&me]
                    .iter()
                    .copied()
                    .filter(|n| !reached.contains(n))
                    .collect()
            }
            Trees::SpanningChildren => parents(graph, origin)
                .into_iter()
                .filter(|&(_, parent)| parent == me)
                .map(|(peer, _)| peer)
                .collect(),
        };
        broadcast.push((origin, hops));
    }
    let mut snapshot = RouteSnapshot::from_parts(me, unicast, broadcast);
    if trees == Trees::SpanningChildren {
        // Our own tree's subtrees, as the daemon derives them (there from unicast).
        let parent: BTreeMap<PeerName, PeerName> = parents(graph, me).into_iter().collect();
        let mut reach: BTreeMap<PeerName, Vec<PeerName>> = BTreeMap::new();
        for &peer in parent.keys() {
            let mut child = peer;
            while parent[&child] != me {
                child = parent[&child];
            }
            reach.entry(child).or_default().push(peer);
        }
        for (hop, peers) in reach {
            snapshot.set_own_flood_reach(hop, peers);
        }
    }
    snapshot
}

/// A bridge port a host's bridge learned a MAC on: our TAP (the sleeve) or the VXLAN
/// port with the peer behind it (the kernel fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    Tap,
    Vxlan(PeerName),
}

/// The forwarders of a whole mesh, and around them a model of each host's bridge and
/// kernel fast path: the bridge learns where MACs are, sends a frame for a MAC learned
/// behind the VXLAN port straight to that peer's kernel, and floods anything else to
/// our TAP and to every fast peer (the two ports are isolated: nothing crosses from
/// one overlay to the other).
struct Mesh {
    hosts: BTreeMap<PeerName, (Forwarder, Mac)>,
    bridges: BTreeMap<PeerName, BTreeMap<Mac, Port>>,
    fast: BTreeMap<PeerName, Vec<PeerName>>,
    now: Instant,
}

impl Mesh {
    fn new(graph: &Graph, trees: Trees) -> Self {
        let hosts = graph
            .keys()
            .enumerate()
            .map(|(i, &p)| {
                let mut f = Forwarder::new(p, ForwarderConfig::default());
                f.set_routes(snapshot(graph, p, trees)).unwrap();
                (p, (f, Mac([0x02, 0xaa, 0, 0, (i >> 8) as u8, i as u8])))
            })
            .collect();
        Self {
            hosts,
            bridges: BTreeMap::new(),
            fast: BTreeMap::new(),
            now: Instant::now(),
        }
    }

    /// Turns the fast path on for every edge `fast_edge(a, b)` (asked with `a < b`).
    fn with_fast_path(
        mut self,
        graph: &Graph,
        fast_edge: impl Fn(PeerName, PeerName) -> bool,
    ) -> Self {
        for (&p, neighbours) in graph {
            let fast: Vec<PeerName> = neighbours
                .iter()
                .copied()
                .filter(|&n| fast_edge(p.min(n), p.max(n)))
                .collect();
            self.hosts
                .get_mut(&p)
                .unwrap()
                .0
                .set_fast_peers(fast.clone());
            self.fast.insert(p, fast);
        }
        self
    }

    fn is_fast(&self, host: PeerName, peer: PeerName) -> bool {
        self.fast.get(&host).is_some_and(|f| f.contains(&peer))
    }

    /// `host`'s bridge takes `frame` from `port`: learns its source, hands it to the
    /// container (counted in `delivered`).
    fn deliver(
        &mut self,
        host: PeerName,
        frame: &[u8],
        port: Port,
        delivered: &mut BTreeMap<PeerName, usize>,
    ) {
        let (_, src) = macs(frame).unwrap();
        self.bridges.entry(host).or_default().insert(src, port);
        *delivered.entry(host).or_insert(0) += 1;
    }

    /// Sends `frame` from a container on `origin` and runs the mesh until quiet. Every
    /// sleeve hop goes through the sleeve encoder and decoder. Returns how often each
    /// host delivered it to its containers (by the sleeve or by the kernel).
    fn run(&mut self, origin: PeerName, frame: &[u8]) -> BTreeMap<PeerName, usize> {
        let mut injected = BTreeMap::new();
        let mut d = Decision::new();
        let mut queue = VecDeque::new();
        let (dst, _) = macs(frame).unwrap();
        let port = if dst.is_multicast() {
            None
        } else {
            self.bridges.get(&origin).and_then(|b| b.get(&dst)).copied()
        };
        let kernel_to = match port {
            Some(Port::Vxlan(peer)) => vec![peer],
            Some(Port::Tap) => Vec::new(),
            None => self.fast.get(&origin).cloned().unwrap_or_default(),
        };
        for peer in kernel_to {
            self.deliver(peer, frame, Port::Vxlan(origin), &mut injected);
        }
        if matches!(port, Some(Port::Vxlan(_))) {
            return injected;
        }
        let (f, _) = self.hosts.get_mut(&origin).unwrap();
        f.handle_tap_frame(frame, self.now, &mut d);
        assert!(!d.inject);
        assert_eq!(
            d.dropped, None,
            "the bridge sends the TAP only what the sleeve carries"
        );
        for o in &d.outputs {
            queue.push_back((origin, *o));
        }
        let limit = self.hosts.len() * self.hosts.len() * 4;
        let mut steps = 0;
        let mut buf = vec![0u8; 2048];
        while let Some((from, o)) = queue.pop_front() {
            steps += 1;
            assert!(steps <= limit, "frame loops");
            let mut enc = SleeveEncoder::new(&mut buf, from, 2048, Protection::Clear).unwrap();
            enc.push(o.tag, frame).unwrap();
            let mut dg = enc.finish(None).unwrap().to_vec();
            let opened = sleeve::open(&mut dg, None).unwrap();
            assert_eq!(opened.header.sender, from);
            let Body::Frames(mut frames) = opened.body else {
                panic!("frames expected")
            };
            let got = frames.next().unwrap();
            assert_eq!(got.payload, frame);
            let (f, _) = self.hosts.get_mut(&o.next_hop).unwrap();
            f.handle_sleeve_frame(from, got.tag, got.payload, self.now, &mut d);
            let kernel_had_it = got.tag.dst == o.next_hop && self.is_fast(o.next_hop, got.tag.src);
            let expected_drop = kernel_had_it.then_some(DropReason::FastPath);
            assert_eq!(
                d.dropped, expected_drop,
                "{from} -> {}: {:?}",
                o.next_hop, got.tag
            );
            if d.inject {
                self.deliver(o.next_hop, frame, Port::Tap, &mut injected);
            }
            for next in &d.outputs {
                queue.push_back((o.next_hop, *next));
            }
        }
        injected
    }
}

fn arb_graph() -> impl Strategy<Value = Graph> {
    (2usize..14)
        .prop_flat_map(|n| {
            (
                prop::collection::btree_set(1u64..(1 << 48), n),
                prop::collection::vec(any::<prop::sample::Index>(), n),
                prop::collection::vec(
                    (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                    0..2 * n,
                ),
            )
        })
        .prop_filter("names distinct", |(names, ..)| names.len() >= 2)
        .prop_map(|(names, tree, extra)| {
            let names: Vec<PeerName> = names.into_iter().map(PeerName::from_u64).collect();
            let n = names.len();
            let mut g: Graph = names.iter().map(|&p| (p, BTreeSet::new())).collect();
            let mut link = |a: PeerName, b: PeerName| {
                if a != b {
                    g.get_mut(&a).unwrap().insert(b);
                    g.get_mut(&b).unwrap().insert(a);
                }
            };
            // A random spanning tree keeps it connected; extra edges add cycles.
            for i in 1..n {
                link(names[i], names[tree[i].index(i)]);
            }
            for (a, b) in extra {
                link(names[a.index(n)], names[b.index(n)]);
            }
            g
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn floods_reach_every_host_exactly_once_and_unicasts_only_their_owner(
        graph in arb_graph(),
        spanning in any::<bool>(),
        fast_edges in any::<u64>(),
    ) {
        let trees = if spanning { Trees::SpanningChildren } else { Trees::WeavePruned };
        // Some direct links carry a kernel fast path (none at all in a quarter of cases).
        let names: Vec<PeerName> = graph.keys().copied().collect();
        let position = |p: PeerName| names.iter().position(|&n| n == p).unwrap();
        let fast_edge = |a: PeerName, b: PeerName| {
            fast_edges & 3 != 0 && fast_edges >> ((position(a) * 5 + position(b)) % 62 + 2) & 1 == 1
        };
        let mut mesh = Mesh::new(&graph, trees).with_fast_path(&graph, fast_edge);
        let peers: Vec<PeerName> = graph.keys().copied().collect();
        let macs: BTreeMap<PeerName, Mac> = mesh.hosts.iter().map(|(&p, (_, m))| (p, *m)).collect();

        // Unknown unicast floods like a broadcast, before anyone learned anything.
        let unknown = eth(Mac([0x02, 0xbb, 0, 0, 0, 1]), macs[&peers[0]], 64);
        let got = mesh.run(peers[0], &unknown);
        let everyone_else: BTreeMap<PeerName, usize> =
            peers.iter().filter(|&&p| p != peers[0]).map(|&p| (p, 1)).collect();
        prop_assert_eq!(got, everyone_else);

        // A broadcast from every host reaches every other host exactly once.
        for &origin in &peers {
            let got = mesh.run(origin, &eth(Mac::BROADCAST, macs[&origin], 60));
            let expected: BTreeMap<PeerName, usize> =
                peers.iter().filter(|&&p| p != origin).map(|&p| (p, 1)).collect();
            prop_assert_eq!(got, expected, "broadcast from {}", origin);
        }

        // Everyone has now learned every MAC: a unicast reaches exactly its owner.
        for &from in &peers {
            for &to in &peers {
                if from == to {
                    continue;
                }
                let got = mesh.run(from, &eth(macs[&to], macs[&from], 100));
                prop_assert_eq!(got, BTreeMap::from([(to, 1)]), "unicast {} -> {}", from, to);
            }
        }
    }
}

#[test]
fn line_topology_relays_the_whole_way() {
    // 1 - 2 - 3 - ... - 20: the longest paths, every hop a relay.
    let names: Vec<PeerName> = (1..=20).map(peer).collect();
    let mut g: Graph = names.iter().map(|&p| (p, BTreeSet::new())).collect();
    for w in names.windows(2) {
        g.get_mut(&w[0]).unwrap().insert(w[1]);
        g.get_mut(&w[1]).unwrap().insert(w[0]);
    }
    let mut mesh = Mesh::new(&g, Trees::WeavePruned);
    let m1 = mesh.hosts[&names[0]].1;
    let m20 = mesh.hosts[&names[19]].1;
    let got = mesh.run(names[19], &eth(Mac::BROADCAST, m20, 60));
    assert_eq!(got.len(), 19);
    assert!(got.values().all(|&n| n == 1));
    let got = mesh.run(names[0], &eth(m20, m1, 60));
    assert_eq!(got, BTreeMap::from([(names[19], 1)]));
    // Relayed by 2..=19.
    for p in &names[1..19] {
        assert!(
            mesh.hosts[p]
                .0
                .peer_counters()
                .values()
                .any(|c| c.relayed_frames > 0)
        );
    }
}
