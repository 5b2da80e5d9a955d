//! Application gossip over the simulated mesh: a test channel (a grow-only set of
//! strings, each tagged with its origin) checks that broadcasts reach every peer exactly
//! once in a stable topology, that unicasts cross several hops, that anti-entropy
//! repairs what a partition kept apart, and that a change costs bytes in proportion to
//! the change rather than to the cluster.

mod sim;

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use sim::{HostSpec, Sim};
use weave_mesh::gossip::{GossipContext, GossipError, Gossiper};
use weave_mesh::{PeerName, wire};

/// What every host's channel saw, shared with the test body.
#[derive(Default)]
struct Log {
    /// (host, item) -> how many broadcasts carrying it arrived.
    broadcasts: BTreeMap<(usize, String), u32>,
    unicasts: Vec<(usize, PeerName, String)>,
}

struct SetChannel {
    host: usize,
    items: BTreeSet<String>,
    log: Rc<RefCell<Log>>,
}

/// A message of the test channel, or why it is not one.
fn decode<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, GossipError> {
    wire::decode(bytes).map_err(|e| GossipError::Malformed(e.to_string()))
}

impl SetChannel {
    fn merge(&mut self, update: &[u8]) -> Result<Vec<String>, GossipError> {
        let items: Vec<String> = decode(update)?;
        Ok(items
            .into_iter()
            .filter(|item| self.items.insert(item.clone()))
            .collect())
    }
}

impl Gossiper for SetChannel {
    fn merge_received(
        &mut self,
        _: &mut GossipContext<'_>,
        _: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        let items: Vec<String> = decode(update)?;
        let mut log = self.log.borrow_mut();
        for item in &items {
            *log.broadcasts.entry((self.host, item.clone())).or_default() += 1;
        }
        drop(log);
        self.merge(update)?;
        // Relay everything received (not only what was new) so the test counts the
        // tree's deliveries exactly.
        Ok((!items.is_empty()).then(|| wire::encode(&items)))
    }

    fn merge_delta(
        &mut self,
        _: &mut GossipContext<'_>,
        _: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        let novel = self.merge(update)?;
        Ok((!novel.is_empty()).then(|| wire::encode(&novel)))
    }

    fn on_unicast(
        &mut self,
        _: &mut GossipContext<'_>,
        from: PeerName,
        message: &[u8],
    ) -> Result<(), GossipError> {
        let text: String = decode(message)?;
        self.log.borrow_mut().unicasts.push((self.host, from, text));
        Ok(())
    }

    fn complete(&self) -> Vec<u8> {
        wire::encode(&self.items.iter().cloned().collect::<Vec<_>>())
    }
}

fn set_of(sim: &Sim, host: usize) -> BTreeSet<String> {
    let channel: &dyn Any = sim
        .mesh(host)
        .channel::<SetChannel>("set")
        .expect("registered");
    channel
        .downcast_ref::<SetChannel>()
        .expect("type")
        .items
        .clone()
}

fn add_item(sim: &mut Sim, host: usize, item: &str) {
    let item = item.to_owned();
    sim.with_mesh(host, |mesh, now| {
        mesh.with_channel::<SetChannel, _>("set", now, |channel, ctx| {
            channel.items.insert(item.clone());
            ctx.broadcast(wire::encode(&vec![item]));
        })
    });
}

fn build(sim: &mut Sim, n: usize, log: &Rc<RefCell<Log>>) {
    build_with(sim, n, log, None);
}

fn build_with(
    sim: &mut Sim,
    n: usize,
    log: &Rc<RefCell<Log>>,
    configure: Option<fn(&mut weave_mesh::MeshConfig)>,
) {
    sim.add_random_hosts(n, n, |_, peers| {
        let log = log.clone();
        HostSpec {
            peers,
            configure: configure.map(|f| Box::new(f) as sim::ConfigureFn),
            channels: Some(Box::new(move |host| {
                vec![(
                    "set".to_owned(),
                    Box::new(SetChannel {
                        host,
                        items: BTreeSet::new(),
                        log: log.clone(),
                    }) as Box<dyn Gossiper>,
                )]
            })),
            ..HostSpec::default()
        }
    });
    for host in 0..n {
        sim.start(host);
    }
    let formed = sim.run_until_true(Duration::from_secs(60), Duration::from_millis(100), |s| {
        s.connection_components().len() == 1 && s.check_converged().is_ok()
    });
    assert!(formed.is_some(), "mesh formed");
}

#[test]
fn broadcasts_reach_every_peer_exactly_once_and_unicasts_cross_hops() {
    let log = Rc::new(RefCell::new(Log::default()));
    let mut sim = Sim::new(Sim::seed_from_env(30));
    let n = 20;
    build(&mut sim, n, &log);
    for host in 0..n {
        add_item(&mut sim, host, &format!("item-{host}"));
    }
    sim.run_for(Duration::from_secs(2));
    let log_ref = log.borrow();
    for host in 0..n {
        for origin in 0..n {
            let count = log_ref
                .broadcasts
                .get(&(host, format!("item-{origin}")))
                .copied()
                .unwrap_or(0);
            let expected = u32::from(host != origin);
            assert_eq!(
                count, expected,
                "host {host} got item-{origin} {count} times"
            );
        }
    }
    drop(log_ref);
    let all: BTreeSet<String> = (0..n).map(|h| format!("item-{h}")).collect();
    for host in 0..n {
        assert_eq!(set_of(&sim, host), all);
    }
    // A unicast to the peer farthest from host 0 arrives once, from host 0.
    let target = n - 1;
    let target_name = sim.name_of(target);
    let source_name = sim.name_of(0);
    sim.with_mesh(0, |mesh, now| {
        mesh.with_channel::<SetChannel, _>("set", now, |_, ctx| {
            ctx.unicast(target_name, wire::encode(&"hello".to_owned()))
        })
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        log.borrow().unicasts,
        vec![(target, source_name, "hello".to_owned())]
    );
}

#[test]
fn anti_entropy_repairs_what_a_partition_kept_apart() {
    let log = Rc::new(RefCell::new(Log::default()));
    let mut sim = Sim::new(Sim::seed_from_env(31));
    let n = 20;
    build(&mut sim, n, &log);
    let left: Vec<usize> = (0..n / 2).collect();
    let right: Vec<usize> = (n / 2..n).collect();
    sim.partition(&left, &right);
    sim.run_for(Duration::from_secs(60));
    for host in 0..n {
        add_item(&mut sim, host, &format!("during-{host}"));
    }
    sim.run_for(Duration::from_secs(5));
    sim.heal();
    let all: BTreeSet<String> = (0..n).map(|h| format!("during-{h}")).collect();
    let healed = sim.run_until_true(Duration::from_secs(300), Duration::from_millis(500), |s| {
        (0..n).all(|h| set_of(s, h) == all)
    });
    assert!(healed.is_some(), "every host has every item after the heal");
}

#[test]
fn a_change_costs_bytes_in_proportion_to_the_change_not_the_cluster() {
    let mut per_change = Vec::new();
    for n in [10, 40] {
        let log = Rc::new(RefCell::new(Log::default()));
        let mut sim = Sim::new(Sim::seed_from_env(32));
        // Keep periodic traffic (heartbeats, anti-entropy) out of the measurement.
        build_with(
            &mut sim,
            n,
            &log,
            Some(|c| {
                c.gossip_interval = Duration::from_secs(3600);
                c.heartbeat_interval = Duration::from_secs(3600);
                c.liveness_timeout = Duration::from_secs(7200);
            }),
        );
        for host in 0..n {
            add_item(&mut sim, host, &format!("warm-{host}"));
        }
        sim.run_for(Duration::from_secs(5));
        let before = sim.bytes_sent().0;
        add_item(&mut sim, 0, "one-more");
        sim.run_for(Duration::from_secs(1));
        let spent = sim.bytes_sent().0 - before;
        per_change.push((n, spent as f64 / (n - 1) as f64));
    }
    let (small, large) = (per_change[0].1, per_change[1].1);
    eprintln!("bytes per receiving peer for one change: {per_change:?}");
    // With whole-state gossip the per-peer cost would grow with the state (n items); with
    // deltas it stays flat.
    assert!(
        large < small * 1.5,
        "per-peer cost grew with the cluster: {per_change:?}"
    );
}
