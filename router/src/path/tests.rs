use std::time::{Duration, Instant};

use super::*;

const UID: u64 = 0x1234_5678_9abc_def0;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address literal")
}

/// Two ends of one connection over a simulated UDP path on a virtual clock. `a` dialled
/// `b`: it knows b's address; b learns a's from a's heartbeats. Control reports (TCP)
/// are delivered at once.
struct Pair {
    now: Instant,
    a: PathState,
    b: PathState,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
    /// Largest datagram the path carries; bigger ones vanish (no ICMP).
    path_mtu: u16,
    /// What the sending kernel refuses with EMSGSIZE (its interface MTU).
    local_limit: u16,
    cut: bool,
    /// Whether fragmented datagrams get through.
    fragments_pass: bool,
    a_events: Vec<PathEvent>,
    b_events: Vec<PathEvent>,
    sent_probes: usize,
}

impl Pair {
    fn new(ceiling: usize, path_mtu: u16) -> Self {
        let now = Instant::now();
        let a_addr = addr("192.0.2.1:6783");
        let b_addr = addr("192.0.2.2:6783");
        let config = PathConfig::default();
        Self {
            a: PathState::new(config.clone(), UID, Some(b_addr), ceiling, now),
            b: PathState::new(config, UID, None, ceiling, now),
            now,
            a_addr,
            b_addr,
            path_mtu,
            local_limit: u16::MAX,
            cut: false,
            fragments_pass: true,
            a_events: Vec::new(),
            b_events: Vec::new(),
            sent_probes: 0,
        }
    }

    /// Delivers everything queued, repeatedly, until both ends are quiet.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for from_a in [true, false] {
                let (src, dst, src_addr) = if from_a {
                    (&mut self.a, &mut self.b, self.a_addr)
                } else {
                    (&mut self.b, &mut self.a, self.b_addr)
                };
                while let Some(t) = src.poll_transmit() {
                    moved = true;
                    let size = match t {
                        Transmit::Heartbeat { .. } => 31 + 8,
                        Transmit::Probe { size, .. } => {
                            self.sent_probes += 1;
                            size
                        }
                        Transmit::Ack { .. } => 33,
                        // Sent without Don't Fragment: only whether fragments pass matters.
                        Transmit::FragProbe { .. } if self.fragments_pass => 0,
                        Transmit::FragProbe { .. } => continue,
                    };
                    if let Transmit::Probe { size, .. } = t
                        && size > self.local_limit
                    {
                        src.handle_too_big(size, self.now);
                        continue;
                    }
                    if self.cut || size > self.path_mtu {
                        continue;
                    }
                    match t {
                        Transmit::Heartbeat { to, connection } => {
                            assert_eq!(connection, UID);
                            // Sent to an address the peer no longer has: lost.
                            if to == (if from_a { self.b_addr } else { self.a_addr }) {
                                dst.handle_heartbeat(src_addr, self.now);
                            }
                        }
                        Transmit::Probe { size, .. } | Transmit::FragProbe { size, .. } => {
                            dst.handle_datagram(self.now);
                            dst.handle_probe(size, src_addr);
                        }
                        Transmit::Ack { size, .. } => {
                            dst.handle_datagram(self.now);
                            dst.handle_ack(size, self.now);
                        }
                    }
                }
            }
            for from_a in [true, false] {
                let (src, dst, log) = if from_a {
                    (&mut self.a, &mut self.b, &mut self.a_events)
                } else {
                    (&mut self.b, &mut self.a, &mut self.b_events)
                };
                while let Some(e) = src.poll_event() {
                    moved = true;
                    if let PathEvent::Tell { heard } = e {
                        dst.handle_report(heard, self.now);
                    }
                    log.push(e);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs the clock forward to `until`, firing timers as they come due.
    fn run_for(&mut self, span: Duration) {
        let until = self.now + span;
        loop {
            self.pump();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = until;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.pump();
    }
}

#[test]
fn dialler_and_acceptor_establish_and_the_acceptor_learns_the_address() {
    let mut p = Pair::new(1472, 1472);
    assert_eq!(p.b.addr(), None);
    assert!(!p.a.is_established() && !p.b.is_established());
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.b.addr(), Some(p.a_addr));
    assert!(p.a.is_established() && p.b.is_established());
    assert!(p.b_events.contains(&PathEvent::Address(p.a_addr)));
    assert!(p.a_events.contains(&PathEvent::Established(true)));
    assert!(p.b_events.contains(&PathEvent::Established(true)));
    // The whole interface MTU passes: found with one probe each way.
    assert_eq!(p.a.pmtu(), Some(1472));
    assert_eq!(p.b.pmtu(), Some(1472));
    assert_eq!(p.sent_probes, 2);
}

#[test]
fn nothing_is_established_while_only_one_direction_works() {
    let mut p = Pair::new(1472, 1472);
    // b never learns a's address if a's heartbeats never arrive: cut first.
    p.cut = true;
    p.run_for(Duration::from_secs(5));
    assert!(!p.a.is_established() && !p.b.is_established());
    assert_eq!(p.b.addr(), None);
    assert!(p.a_events.is_empty() && p.b_events.is_empty());
}

#[test]
fn heartbeats_slow_down_once_established() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    assert!(p.a.is_established());
    let t = p.a.poll_timeout().expect("a timer");
    assert!(t > p.now + Duration::from_secs(2), "keepalive pace");
}

#[test]
fn pmtu_binary_search_finds_a_silent_limit() {
    // A 9000-byte interface, a 1500-byte hop in the middle that drops bigger packets
    // without ICMP.
    let mut p = Pair::new(8972, 1472);
    p.run_for(Duration::from_secs(10));
    for end in [&p.a, &p.b] {
        let found = end.pmtu().expect("measured");
        assert!(found <= 1472, "{found}");
        assert!(
            found + PathConfig::default().pmtu_granularity >= 1472,
            "{found}"
        );
        assert!(end.is_established());
        assert_eq!(end.max_datagram(), found);
    }
}

#[test]
fn emsgsize_cuts_the_search_short() {
    let mut p = Pair::new(8972, 1472);
    p.local_limit = 1472;
    // Every size the kernel refuses fails at once, without waiting for a timeout.
    p.run_for(Duration::from_secs(1));
    for end in [&p.a, &p.b] {
        let found = end.pmtu().expect("measured within a second");
        assert!((1464..=1472).contains(&found), "{found}");
    }
}

#[test]
fn emsgsize_on_data_lowers_the_size_in_use_and_measures_again() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    assert_eq!(p.a.max_datagram(), 1472);
    p.path_mtu = 1400;
    p.local_limit = 1400;
    p.a.handle_too_big(1472, p.now);
    assert!(p.a.max_datagram() < 1472);
    p.run_for(Duration::from_secs(3));
    let found = p.a.pmtu().expect("measured");
    assert!((1392..=1400).contains(&found), "{found}");
    assert!(p.a_events.contains(&PathEvent::Mtu(found)));
    assert!(p.a.is_established(), "a smaller MTU is no reason to stop");
}

#[test]
fn silence_breaks_the_path_and_heartbeats_heal_it() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    assert!(p.a.is_established() && p.b.is_established());
    p.cut = true;
    p.run_for(Duration::from_secs(20));
    assert!(p.a.is_established(), "not yet timed out");
    p.run_for(Duration::from_secs(15));
    assert!(!p.a.is_established() && !p.b.is_established());
    assert!(p.a_events.contains(&PathEvent::Tell { heard: false }));
    assert!(p.a_events.contains(&PathEvent::Established(false)));
    // Heartbeats went back to the fast pace: healing takes about one interval.
    p.cut = false;
    p.run_for(Duration::from_secs(1));
    assert!(p.a.is_established() && p.b.is_established());
}

#[test]
fn data_keeps_the_path_alive_without_heartbeats_arriving() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    // Heartbeats are lost, but frames keep arriving both ways.
    p.cut = true;
    for _ in 0..40 {
        p.run_for(Duration::from_secs(1));
        p.a.handle_datagram(p.now);
        p.b.handle_datagram(p.now);
    }
    assert!(p.a.is_established() && p.b.is_established());
}

#[test]
fn the_acceptor_follows_an_address_change() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    let moved = addr("198.51.100.7:40000");
    p.a_addr = moved;
    p.run_for(Duration::from_secs(6));
    assert_eq!(p.b.addr(), Some(moved));
    assert!(p.b_events.contains(&PathEvent::Address(moved)));
    assert!(p.b.is_established());
}

#[test]
fn the_peer_saying_it_no_longer_hears_us_unestablishes() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(2));
    p.a.handle_report(false, p.now);
    assert!(!p.a.is_established());
    p.a.handle_report(true, p.now);
    assert!(p.a.is_established());
}

#[test]
fn timers_are_always_pending_while_the_address_is_known() {
    let now = Instant::now();
    let a = PathState::new(
        PathConfig::default(),
        UID,
        Some(addr("192.0.2.2:6783")),
        1472,
        now,
    );
    assert!(a.poll_timeout().is_some());
    let b = PathState::new(PathConfig::default(), UID, None, 1472, now);
    assert_eq!(
        b.poll_timeout(),
        None,
        "nothing to do until a heartbeat arrives"
    );
}

#[test]
fn path_report_round_trip_and_rejections() {
    for heard in [true, false] {
        let r = PathReport {
            conn_uid: UID,
            heard,
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), 10);
        assert_eq!(PathReport::decode(&bytes), Ok(r));
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xff; 5]);
        assert_eq!(
            PathReport::decode(&longer),
            Ok(r),
            "future fields are ignored"
        );
        for n in 0..bytes.len() {
            assert_eq!(PathReport::decode(&bytes[..n]), Err(Error::Truncated));
        }
        let mut v2 = bytes;
        v2[0] = 2;
        assert_eq!(PathReport::decode(&v2), Err(Error::UnsupportedVersion(2)));
    }
}

#[test]
fn fragmentation_is_tested_once_the_mtu_is_known() {
    let mut p = Pair::new(1472, 1472);
    p.run_for(Duration::from_secs(3));
    assert!(p.a.allows_fragments() && p.b.allows_fragments());
    assert!(p.a_events.contains(&PathEvent::Fragmentation(true)));

    let mut p = Pair::new(1472, 1472);
    p.fragments_pass = false;
    p.run_for(Duration::from_secs(5));
    assert!(p.a.is_established(), "established without fragments");
    assert!(!p.a.allows_fragments() && !p.b.allows_fragments());
    assert!(p.a_events.contains(&PathEvent::Fragmentation(false)));
}
