use super::*;
use proptest::prelude::*;

fn name(n: u8) -> PeerName {
    PeerName::from_bytes([0x7a, 0, 0, 0, 0, n])
}

const A_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Two peers probing each other over a link that delivers while `up`.
struct Pair {
    a: FastPaths,
    b: FastPaths,
    now: Instant,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        let mut a = FastPaths::new(name(1), FastPathConfig::default());
        let mut b = FastPaths::new(name(2), FastPathConfig::default());
        a.set_candidates([(name(2), B_ADDR)], now);
        b.set_candidates([(name(1), A_ADDR)], now);
        Self { a, b, now }
    }

    /// Runs both for `duration` in 100 ms steps; probes from a side are delivered
    /// while its direction is up.
    fn run(&mut self, duration: Duration, a_to_b: bool, b_to_a: bool) {
        let end = self.now + duration;
        while self.now < end {
            let now = self.now;
            let mut to_b = Vec::new();
            let mut to_a = Vec::new();
            self.a.poll_probes(now, |addr, p| {
                assert_eq!(addr, B_ADDR);
                to_b.push(p);
            });
            self.b.poll_probes(now, |addr, p| {
                assert_eq!(addr, A_ADDR);
                to_a.push(p);
            });
            if a_to_b {
                to_b.into_iter().for_each(|p| self.b.handle_probe(p, now));
            }
            if b_to_a {
                to_a.into_iter().for_each(|p| self.a.handle_probe(p, now));
            }
            self.now += Duration::from_millis(100);
        }
    }

    fn events(&mut self) -> (Vec<FastPathEvent>, Vec<FastPathEvent>) {
        let drain = |f: &mut FastPaths| std::iter::from_fn(|| f.poll_event()).collect();
        (drain(&mut self.a), drain(&mut self.b))
    }
}

#[test]
fn both_ends_come_up_within_a_round_of_probes() {
    let mut pair = Pair::new();
    pair.run(Duration::from_millis(300), true, true);
    assert_eq!(pair.a.fast_peers(), vec![name(2)]);
    assert_eq!(pair.b.fast_peers(), vec![name(1)]);
    let (a, b) = pair.events();
    assert_eq!(
        a,
        vec![FastPathEvent::Up {
            peer: name(2),
            addr: B_ADDR
        }]
    );
    assert_eq!(
        b,
        vec![FastPathEvent::Up {
            peer: name(1),
            addr: A_ADDR
        }]
    );
}

#[test]
fn one_way_loss_keeps_both_ends_off_the_fast_path() {
    let mut pair = Pair::new();
    pair.run(Duration::from_secs(10), true, false);
    assert!(pair.a.fast_peers().is_empty());
    assert!(
        pair.b.fast_peers().is_empty(),
        "b hears a, but a does not hear b"
    );
    assert_eq!(pair.events(), (vec![], vec![]));
}

#[test]
fn the_standing_says_which_way_the_probes_fail() {
    let mut pair = Pair::new();
    let standing = |f: &FastPaths, peer: u8, now: Instant| f.standing(name(peer), now);
    assert_eq!(standing(&pair.a, 2, pair.now), Some(Standing::Probing));
    assert_eq!(standing(&pair.a, 9, pair.now), None, "no candidate");
    pair.run(Duration::from_millis(300), true, true);
    assert_eq!(standing(&pair.a, 2, pair.now), Some(Standing::Fast));
    // b's probes stop reaching a: a misses them, b hears that a misses its probes.
    pair.run(Duration::from_secs(6), true, false);
    assert_eq!(
        standing(&pair.a, 2, pair.now),
        Some(Standing::NoProbesFromPeer)
    );
    assert_eq!(
        standing(&pair.b, 1, pair.now),
        Some(Standing::NoProbesToPeer)
    );
    pair.run(Duration::from_secs(2), true, true);
    assert_eq!(standing(&pair.b, 1, pair.now), Some(Standing::Fast));
    // A peer that never answers is probing for one silence period, then blocked.
    let now = pair.now;
    let mut lonely = FastPaths::new(name(1), FastPathConfig::default());
    lonely.set_candidates([(name(3), B_ADDR)], now);
    assert_eq!(
        lonely.standing(name(3), now + Duration::from_secs(3)),
        Some(Standing::Probing)
    );
    assert_eq!(
        lonely.standing(name(3), now + Duration::from_secs(4)),
        Some(Standing::NoProbesFromPeer)
    );
    assert_eq!(Standing::NoProbesToPeer.as_str(), "no-probes-to-peer");
}

#[test]
fn a_blocked_direction_takes_both_ends_down_and_healing_brings_them_back() {
    let mut pair = Pair::new();
    pair.run(Duration::from_secs(2), true, true);
    pair.events();
    // b's probes stop reaching a: a notices the silence, then tells b it no longer
    // hears it, and b goes down at a's next probe.
    pair.run(Duration::from_secs(5), true, false);
    assert!(pair.a.fast_peers().is_empty());
    assert!(pair.b.fast_peers().is_empty());
    let (a, b) = pair.events();
    assert_eq!(
        a,
        vec![FastPathEvent::Down {
            peer: name(2),
            addr: B_ADDR
        }]
    );
    assert_eq!(
        b,
        vec![FastPathEvent::Down {
            peer: name(1),
            addr: A_ADDR
        }]
    );
    pair.run(Duration::from_secs(3), true, true);
    assert_eq!(pair.a.fast_peers(), vec![name(2)]);
    assert_eq!(pair.b.fast_peers(), vec![name(1)]);
}

#[test]
fn a_withdrawn_or_moved_candidate_goes_down_at_once() {
    let mut pair = Pair::new();
    pair.run(Duration::from_secs(1), true, true);
    pair.events();
    let now = pair.now;
    pair.a
        .set_candidates([(name(2), Ipv4Addr::new(198, 18, 0, 9))], now);
    assert_eq!(
        pair.a.poll_event(),
        Some(FastPathEvent::Down {
            peer: name(2),
            addr: B_ADDR
        })
    );
    assert!(pair.a.fast_peers().is_empty());
    pair.a.set_candidates([], now);
    assert_eq!(pair.a.poll_event(), None, "it was not fast any more");
    assert_eq!(pair.a.poll_timeout(), None, "no one to probe");
}

#[test]
fn probes_for_another_peer_or_from_a_stranger_are_ignored() {
    let now = Instant::now();
    let mut a = FastPaths::new(name(1), FastPathConfig::default());
    a.set_candidates([(name(2), B_ADDR)], now);
    for probe in [
        Probe {
            from: name(2),
            to: name(3),
            heard: true,
        },
        Probe {
            from: name(4),
            to: name(1),
            heard: true,
        },
    ] {
        a.handle_probe(probe, now);
    }
    assert_eq!(a.rejected(), 2);
    assert!(a.candidates()[&name(2)].heard_at.is_none());
    assert!(a.fast_peers().is_empty());
}

#[test]
fn our_own_name_is_never_a_candidate() {
    let now = Instant::now();
    let mut a = FastPaths::new(name(1), FastPathConfig::default());
    a.set_candidates([(name(1), A_ADDR), (name(2), B_ADDR)], now);
    assert_eq!(
        a.candidates().keys().copied().collect::<Vec<_>>(),
        [name(2)]
    );
}

#[test]
fn a_probe_round_trips_through_its_vxlan_encoding() {
    let probe = Probe {
        from: name(1),
        to: name(2),
        heard: true,
    };
    let mut buf = [0u8; Probe::VXLAN_LEN];
    assert_eq!(probe.encode_vxlan(&mut buf), Probe::VXLAN_LEN);
    assert_eq!(buf[0], 0x08, "VXLAN I flag");
    assert_eq!(&buf[4..7], &PROBE_VNI.to_be_bytes()[1..]);
    let frame = &buf[VXLAN_HEADER_LEN..];
    assert_eq!(frame[6] & 0x03, 0x02, "locally administered unicast source");
    assert_eq!(Probe::decode_frame(frame), Ok(probe));
    for len in 0..ETHERNET_HEADER_LEN + PROBE_BODY_LEN {
        assert_eq!(
            Probe::decode_frame(&frame[..len]),
            Err(ProbeError::Truncated)
        );
    }
    let mut other = frame.to_vec();
    other[12] = 0x08;
    assert_eq!(Probe::decode_frame(&other), Err(ProbeError::NotAProbe));
    let mut newer = frame.to_vec();
    newer[ETHERNET_HEADER_LEN + 4] = 2;
    assert_eq!(
        Probe::decode_frame(&newer),
        Err(ProbeError::UnsupportedVersion(2))
    );
}

proptest! {
    #[test]
    fn decoding_any_frame_never_panics(frame in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Probe::decode_frame(&frame);
    }

    #[test]
    fn any_probe_round_trips(from in any::<[u8; 6]>(), to in any::<[u8; 6]>(), heard in any::<bool>()) {
        let probe = Probe { from: PeerName::from_bytes(from), to: PeerName::from_bytes(to), heard };
        let mut buf = [0u8; Probe::VXLAN_LEN];
        probe.encode_vxlan(&mut buf);
        prop_assert_eq!(Probe::decode_frame(&buf[VXLAN_HEADER_LEN..]), Ok(probe));
    }
}

#[test]
fn mac_claims_report_new_moved_and_forgotten_macs() {
    let mac = |n: u8| Mac([0x02, 0, 0, 0, 0, n]);
    let (a, b) = (MacHolder::Peer(A_ADDR), MacHolder::Peer(B_ADDR));
    let mut claims = MacClaims::new(2);
    assert_eq!(claims.observe(mac(1), MacHolder::ThisHost), MacClaim::New);
    assert_eq!(claims.observe(mac(1), MacHolder::ThisHost), MacClaim::Same);
    // A frame from a peer with our container's MAC.
    assert_eq!(
        claims.observe(mac(1), a),
        MacClaim::Moved {
            from: MacHolder::ThisHost
        }
    );
    assert_eq!(claims.observe(mac(1), b), MacClaim::Moved { from: a });
    // A stale deletion changes nothing; the current holder's forgets it.
    claims.forget(mac(1), a);
    assert_eq!(claims.observe(mac(1), b), MacClaim::Same);
    claims.forget(mac(1), b);
    assert!(claims.is_empty());
    assert_eq!(
        claims.observe(mac(1), a),
        MacClaim::New,
        "no conflict after forgetting"
    );
    // Bounded.
    assert_eq!(claims.observe(mac(2), a), MacClaim::New);
    assert_eq!(claims.observe(mac(3), a), MacClaim::Untracked);
    assert_eq!(claims.len(), 2);
}
