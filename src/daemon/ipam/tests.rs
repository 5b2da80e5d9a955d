//! The service against the real core on a real (single-peer) mesh and a real redb state:
//! flags, persistence across restarts, the request paths and their answers.

use std::time::Instant;

use tokio::sync::oneshot;
use weave_mesh::MeshConfig;

use super::*;

const ME: PeerName = PeerName::from_u64(0x0200_0000_0001);
const DEAD: PeerName = PeerName::from_u64(0x0200_0000_0002);

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test prefix")
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "weave-ipamd-test-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(init: &str) -> IpamSettings {
    IpamSettings {
        range: Some("198.18.0.0/16".parse().expect("literal")),
        default_subnet: None,
        init: init.parse().expect("valid init"),
    }
}

/// A daemon's IPAM half: state, mesh, service.
struct Node {
    state: Arc<State>,
    mesh: Mesh,
    service: IpamService,
}

impl Node {
    fn start(dir: &TempDir, settings: &IpamSettings) -> Self {
        let state = Arc::new(State::open(&dir.0).expect("state opens"));
        let mut mesh = Mesh::new(MeshConfig::new(ME, "me".to_owned(), 7), Instant::now());
        let service =
            IpamService::start(settings, 0, ME, false, state.clone(), &mut mesh).expect("starts");
        Self {
            state,
            mesh,
            service,
        }
    }

    /// Sends a request and flushes as the loop does; the answer if there is one yet.
    fn ask<T>(
        &mut self,
        make: impl FnOnce(oneshot::Sender<Result<T, IpamFailure>>) -> IpamRequest,
    ) -> oneshot::Receiver<Result<T, IpamFailure>> {
        let (tx, rx) = oneshot::channel();
        self.service.handle(&mut self.mesh, make(tx));
        self.service.flush(&mut self.mesh);
        rx
    }

    fn now<T: fmt::Debug>(
        &mut self,
        make: impl FnOnce(oneshot::Sender<Result<T, IpamFailure>>) -> IpamRequest,
    ) -> Result<T, IpamFailure> {
        let mut rx = self.ask(make);
        rx.try_recv().expect("answered at once")
    }

    fn allocate(&mut self, ident: &str) -> Result<Ipv4Net, IpamFailure> {
        self.now(|reply| IpamRequest::Allocate {
            ident: ident.to_owned(),
            subnet: None,
            reply,
        })
    }

    fn reclaim(&mut self, held: Vec<(String, Vec<Ipv4Net>)>) {
        self.now(|reply| IpamRequest::Reclaim { held, reply })
            .expect("reclaim answered");
    }

    fn report(&self) -> IpamReport {
        self.service.report(&self.mesh).expect("IPAM is on")
    }
}

#[test]
fn flags_parse_and_print_back() {
    for text in ["consensus", "consensus=3", "observer"] {
        assert_eq!(text.parse::<InitArg>().expect(text).to_string(), text);
    }
    let seeds: InitArg = "seed=02:00:00:00:00:01, 02:00:00:00:00:02,02:00:00:00:00:01"
        .parse()
        .expect("valid");
    assert_eq!(seeds, InitArg::Seed(vec![ME, DEAD]));
    assert_eq!(
        seeds.to_string(),
        "seed=02:00:00:00:00:01,02:00:00:00:00:02"
    );
    for bad in [
        "",
        "consensus=0",
        "consensus=x",
        "seed=",
        "seed=host1",
        "paxos",
    ] {
        assert!(bad.parse::<InitArg>().is_err(), "{bad:?}");
    }
    assert_eq!("".parse::<RangeArg>(), Ok(RangeArg(None)));
    assert_eq!(RangeArg(None).to_string(), "");
    assert_eq!(
        "198.18.0.0/15".parse::<RangeArg>().map(|r| r.to_string()),
        Ok("198.18.0.0/15".to_owned())
    );
    let host_bits = "198.18.0.1/15".parse::<RangeArg>().expect_err("host bits");
    assert!(
        host_bits.contains("give the network address"),
        "{host_bits}"
    );
    assert!("198.18.0.0/31".parse::<RangeArg>().is_err());
    assert!("web".parse::<RangeArg>().is_err());
}

#[test]
fn settings_are_checked_together_and_consensus_counts_launch_peers() {
    let mut s = settings("consensus");
    s.default_subnet = "198.18.4.0/24".parse().ok();
    assert_eq!(s.check(), Ok(()));
    s.default_subnet = "198.19.0.0/24".parse().ok();
    assert!(s.check().is_err_and(|e| e.contains("not inside")));
    s.range = None;
    assert!(s.check().is_err_and(|e| e.contains("IPAM is off")));
    assert_eq!(IpamSettings::default().range, DEFAULT_RANGE.parse().ok());
    let config = settings("consensus").config(2).expect("on");
    assert_eq!(config.init, InitMode::Consensus { peers: 3 });
    assert_eq!(config.init.quorum(), 2);
    let config = settings("consensus=5").config(2).expect("on");
    assert_eq!(config.init.quorum(), 3);
    assert!(
        IpamSettings {
            range: None,
            ..settings("consensus")
        }
        .config(0)
        .is_none()
    );
}

#[test]
fn allocations_are_persisted_and_survive_a_restart() {
    let dir = TempDir::new("restart");
    let seeded = settings(&format!("seed={ME}"));
    let mut node = Node::start(&dir, &seeded);
    // A first start has no trusted state: nothing is allocated before the re-claim.
    let mut early = node.ask(|reply| IpamRequest::Allocate {
        ident: "early".to_owned(),
        subnet: None,
        reply,
    });
    assert!(early.try_recv().is_err(), "waits for the re-claim");
    node.reclaim(vec![("web".to_owned(), vec![net("198.18.0.7/16")])]);
    assert_eq!(early.try_recv(), Ok(Ok(net("198.18.0.1/16"))));
    assert_eq!(node.allocate("db"), Ok(net("198.18.0.2/16")));
    // Idempotent per identity.
    assert_eq!(node.allocate("db"), Ok(net("198.18.0.2/16")));
    let report = node.report();
    assert_eq!(report.status, "ready");
    assert_eq!(report.active_ips, 3);
    assert!(!report.reclaiming);
    drop(node);

    // Back with its data: the same ring and allocations, allocating at once.
    let mut node = Node::start(&dir, &seeded);
    assert!(node.service.trusted);
    assert_eq!(node.allocate("db"), Ok(net("198.18.0.2/16")));
    assert_eq!(node.allocate("next"), Ok(net("198.18.0.3/16")));
    let owned = node
        .now(|reply| IpamRequest::Owned { reply })
        .expect("owned");
    assert_eq!(owned["web"], vec![Ipv4Addr::new(198, 18, 0, 7)]);
    assert_eq!(owned.len(), 4);
    assert_eq!(
        node.now(|reply| IpamRequest::Lookup {
            ident: "web".to_owned(),
            subnet: None,
            reply,
        }),
        Ok(vec![net("198.18.0.7/16")])
    );
    assert!(matches!(
        node.now(|reply| IpamRequest::Lookup {
            ident: "web".to_owned(),
            subnet: "198.18.1.0/24".parse().ok(),
            reply,
        }),
        Err(IpamFailure::NotFound(_))
    ));
    // Frees: by address (only the holder's), and all of an identity.
    let addr = Ipv4Addr::new(198, 18, 0, 2);
    assert!(matches!(
        node.now(|reply| IpamRequest::Free {
            ident: "web".to_owned(),
            addr,
            reply,
        }),
        Err(IpamFailure::Invalid(_))
    ));
    assert_eq!(
        node.now(|reply| IpamRequest::Free {
            ident: "db".to_owned(),
            addr,
            reply,
        }),
        Ok(())
    );
    assert!(matches!(
        node.now(|reply| IpamRequest::Free {
            ident: "db".to_owned(),
            addr,
            reply,
        }),
        Err(IpamFailure::NotFound(_))
    ));
    assert_eq!(
        node.now(|reply| IpamRequest::FreeIdent {
            ident: "web".to_owned(),
            reply,
        }),
        Ok(vec![Ipv4Addr::new(198, 18, 0, 7)])
    );
    drop(node);
    let mut node = Node::start(&dir, &seeded);
    let owned = node
        .now(|reply| IpamRequest::Owned { reply })
        .expect("owned");
    let idents: Vec<&str> = owned.keys().map(String::as_str).collect();
    assert_eq!(idents, ["early", "next"]);
    // The freed address is the lowest free one again.
    assert_eq!(node.allocate("again"), Ok(net("198.18.0.2/16")));
}

#[test]
fn a_changed_range_starts_afresh() {
    let dir = TempDir::new("range");
    let mut node = Node::start(&dir, &settings(&format!("seed={ME}")));
    node.reclaim(Vec::new());
    assert_eq!(node.allocate("web"), Ok(net("198.18.0.1/16")));
    drop(node);
    let mut other = settings(&format!("seed={ME}"));
    other.range = "198.19.0.0/16".parse().ok();
    let mut node = Node::start(&dir, &other);
    assert!(!node.service.trusted);
    node.reclaim(Vec::new());
    assert_eq!(node.allocate("web"), Ok(net("198.19.0.1/16")));
    let owned = node
        .now(|reply| IpamRequest::Owned { reply })
        .expect("owned");
    assert_eq!(owned.len(), 1, "nothing of the old range is left");
}

#[test]
fn a_lone_consensus_peer_makes_its_ring_when_asked() {
    let dir = TempDir::new("consensus");
    let mut node = Node::start(&dir, &settings("consensus"));
    node.reclaim(Vec::new());
    assert_eq!(node.report().status, "idle");
    assert_eq!(node.report().init, "consensus=1");
    assert_eq!(node.now(|reply| IpamRequest::Prime { reply }), Ok(()));
    assert_eq!(node.allocate("web"), Ok(net("198.18.0.1/16")));
    assert_eq!(node.report().seeds, [ME.to_string()]);
}

/// The first allocation makes the ring and is answered within the same request (the
/// core finishes it inside the call; its event must still reach the caller).
#[test]
fn a_lone_consensus_peer_answers_the_first_allocation_without_prime() {
    let dir = TempDir::new("consensus-first");
    let mut node = Node::start(&dir, &settings("consensus"));
    node.reclaim(Vec::new());
    assert_eq!(node.allocate("web"), Ok(net("198.18.0.1/16")));
    assert_eq!(node.report().status, "ready");
}

#[test]
fn a_peer_awaiting_consensus_says_so_and_callers_that_give_up_are_forgotten() {
    let dir = TempDir::new("quorum");
    let mut node = Node::start(&dir, &settings("consensus=3"));
    node.reclaim(Vec::new());
    let waiting = node.ask(|reply| IpamRequest::Allocate {
        ident: "web".to_owned(),
        subnet: None,
        reply,
    });
    let prime = node.ask(|reply| IpamRequest::Prime { reply });
    let report = node.report();
    assert_eq!(report.status, "awaiting consensus (quorum: 2, known: 1)");
    assert_eq!(report.pending_allocates, 1);
    // The callers time out (drop their answer channels): the request is cancelled.
    drop(waiting);
    drop(prime);
    node.service.flush(&mut node.mesh);
    assert_eq!(node.report().pending_allocates, 0);
    assert!(node.service.waiters.is_empty());
    assert!(node.service.ring_waiters.is_empty());
}

#[test]
fn rmpeer_takes_over_a_dead_peers_ranges_and_refuses_the_living() {
    let dir = TempDir::new("rmpeer");
    let mut node = Node::start(&dir, &settings(&format!("seed={ME},{DEAD}")));
    node.reclaim(Vec::new());
    let report = node.report();
    let dead = report
        .owners
        .iter()
        .find(|o| o.peer == DEAD.to_string())
        .expect("the dead peer owns half");
    assert!(!dead.reachable);
    assert_eq!(dead.addresses, 32768);
    assert_eq!(report.unreachable_owners, 1);
    for (peer, want) in [
        (ME.to_string(), "cannot rmpeer ourselves"),
        ("me".to_owned(), "cannot rmpeer ourselves"),
        ("nobody".to_owned(), "no peer called \"nobody\""),
    ] {
        let got = node.now(|reply| IpamRequest::Rmpeer { peer, reply });
        assert!(
            got.as_ref().is_err_and(|e| e.to_string().starts_with(want)),
            "{got:?}"
        );
    }
    let taken = node.now(|reply| IpamRequest::Rmpeer {
        peer: DEAD.to_string(),
        reply,
    });
    assert_eq!(taken, Ok(format!("32768 IPs taken over from {DEAD}")));
    let report = node.report();
    assert_eq!(report.owners.len(), 1);
    assert_eq!(report.owned_ips, 65536);
    assert_eq!(report.unreachable_owners, 0);
}

#[test]
fn ipam_off_refuses_politely() {
    let dir = TempDir::new("off");
    let off = IpamSettings {
        range: None,
        ..settings("consensus")
    };
    let mut node = Node::start(&dir, &off);
    assert!(node.service.report(&node.mesh).is_none());
    let refused = node.allocate("web").expect_err("off");
    assert!(
        refused.to_string().starts_with("IPAM is disabled"),
        "{refused}"
    );
    // The container task is not held up.
    node.reclaim(vec![("web".to_owned(), vec![net("198.18.0.7/16")])]);
}

#[test]
fn identities_are_checked() {
    let dir = TempDir::new("ident");
    let mut node = Node::start(&dir, &settings(&format!("seed={ME}")));
    node.reclaim(Vec::new());
    for bad in ["", "a\0b"] {
        assert!(matches!(node.allocate(bad), Err(IpamFailure::Invalid(_))));
    }
    // Subnets outside the range are refused.
    let outside = node.now(|reply| IpamRequest::Allocate {
        ident: "x".to_owned(),
        subnet: "198.20.0.0/24".parse().ok(),
        reply,
    });
    assert!(
        matches!(outside, Err(IpamFailure::Invalid(_))),
        "{outside:?}"
    );
    let _ = &node.state;
}
