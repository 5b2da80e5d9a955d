//! Multi-peer driver for the DNS records CRDT: N stores on a virtual clock exchanging
//! gossip through a network that loses, duplicates and reorders messages, with
//! partitions, peers leaving and returning, and restarts. After the faults stop and
//! anti-entropy runs, every peer must show exactly the live records their origins hold,
//! and nothing deleted may come back, even after tombstones expire.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use weave_dns::{NameStore, TOMBSTONE_LIFETIME};
use weave_mesh::gossip::GossipHarness;
use weave_mesh::{GossipSend, Gossiper, PeerName};

/// (name, addr, owner) of a record, as its origin's daemon would persist it.
type Own = (String, Ipv4Addr, String);
/// (name, addr, owner, origin) as every peer should see it.
type Seen = (String, Ipv4Addr, String, PeerName);

enum Kind {
    /// A broadcast from `origin`, merged with `merge_received`.
    Broadcast(PeerName),
    /// An anti-entropy answer or neighbour gossip, merged with `merge_delta`.
    Delta,
    /// An anti-entropy digest; the receiver answers with what the sender is missing.
    Digest,
}

struct Msg {
    from: usize,
    to: usize,
    kind: Kind,
    bytes: Vec<u8>,
}

struct Node {
    name: PeerName,
    store: NameStore,
    harness: GossipHarness,
    up: bool,
    /// What this peer's daemon believes it has registered (its persisted records).
    own: BTreeSet<Own>,
}

struct Sim {
    nodes: Vec<Node>,
    /// Partition group of each node; nodes talk only within a group.
    group: Vec<u8>,
    queue: VecDeque<Msg>,
    rng: ChaCha8Rng,
    now: Instant,
    loss: u32,
    dup: u32,
    /// Everything ever deleted on purpose (identity with origin).
    deleted: BTreeSet<Seen>,
    sent: usize,
}

fn peer(i: usize) -> PeerName {
    PeerName::from_u64(0x0200_0000_0000 + i as u64)
}

impl Sim {
    fn new(n: usize, seed: u64) -> Self {
        let now = Instant::now();
        let nodes = (0..n)
            .map(|i| Node {
                name: peer(i),
                store: NameStore::new(peer(i), now),
                harness: GossipHarness::new(peer(i), seed ^ i as u64),
                up: true,
                own: BTreeSet::new(),
            })
            .collect();
        let mut sim = Self {
            nodes,
            group: vec![0; n],
            queue: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            loss: 0,
            dup: 0,
            deleted: BTreeSet::new(),
            sent: 0,
        };
        sim.update_topology();
        sim
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.next_u32() % 100 < percent
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next_u32() as usize) % n
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        self.nodes[a].up && self.nodes[b].up && self.group[a] == self.group[b]
    }

    /// Sets every node's view of the topology (the live peers it can reach) and tells
    /// the stores whose view changed.
    fn update_topology(&mut self) {
        for i in 0..self.nodes.len() {
            let want: BTreeSet<PeerName> = (0..self.nodes.len())
                .filter(|&j| j == i || self.reachable(i, j))
                .map(|j| self.nodes[j].name)
                .collect();
            let have: BTreeSet<PeerName> = self.nodes[i].harness.peers.keys().copied().collect();
            if want == have || !self.nodes[i].up {
                continue;
            }
            let node = &mut self.nodes[i];
            for gone in have.difference(&want) {
                node.harness.remove_peer(*gone);
            }
            for new in want.difference(&have) {
                node.harness.add_peer(*new, "p");
            }
            let now = self.now;
            node.store.on_peers_changed(&mut node.harness.ctx(now));
            self.collect(i);
        }
    }

    /// Moves node `i`'s outbox into the network.
    fn collect(&mut self, i: usize) {
        for send in self.nodes[i].harness.drain() {
            match send {
                GossipSend::Broadcast(bytes) => {
                    for to in 0..self.nodes.len() {
                        if to != i && self.reachable(i, to) {
                            self.queue.push_back(Msg {
                                from: i,
                                to,
                                kind: Kind::Broadcast(self.nodes[i].name),
                                bytes: bytes.clone(),
                            });
                        }
                    }
                }
                other => panic!("the dns store sends only broadcasts, got {other:?}"),
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        self.sent += 1;
        if !self.reachable(msg.from, msg.to) {
            return;
        }
        let now = self.now;
        let from = self.nodes[msg.from].name;
        let node = &mut self.nodes[msg.to];
        match msg.kind {
            Kind::Broadcast(origin) => {
                // Relays along the broadcast tree are redundant here: every peer gets
                // the broadcast directly (or loses it).
                node.store
                    .merge_received(&mut node.harness.ctx(now), origin, &msg.bytes)
                    .expect("valid gossip");
            }
            Kind::Delta => {
                // The mesh broadcasts what an anti-entropy merge changed.
                if let Some(changed) = node
                    .store
                    .merge_delta(&mut node.harness.ctx(now), from, &msg.bytes)
                    .expect("valid gossip")
                {
                    node.harness.outbox.push(GossipSend::Broadcast(changed));
                }
            }
            Kind::Digest => {
                if let Some(missing) = node.store.missing(&msg.bytes) {
                    self.queue.push_back(Msg {
                        from: msg.to,
                        to: msg.from,
                        kind: Kind::Delta,
                        bytes: missing,
                    });
                }
            }
        }
        self.collect(msg.to);
    }

    /// Delivers queued messages, losing, duplicating and reordering some.
    fn run_network(&mut self, max: usize) {
        for _ in 0..max {
            if self.queue.is_empty() {
                return;
            }
            let at = if self.queue.len() > 1 && self.chance(30) {
                self.pick(self.queue.len())
            } else {
                0
            };
            let msg = self.queue.remove(at).expect("index within the queue");
            if self.chance(self.loss) {
                continue;
            }
            if self.chance(self.dup) {
                self.queue.push_back(Msg {
                    from: msg.from,
                    to: msg.to,
                    kind: match msg.kind {
                        Kind::Broadcast(o) => Kind::Broadcast(o),
                        Kind::Delta => Kind::Delta,
                        Kind::Digest => Kind::Digest,
                    },
                    bytes: msg.bytes.clone(),
                });
            }
            self.deliver(msg);
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let now = self.now;
            let node = &mut self.nodes[i];
            if node.store.poll_timeout().is_some_and(|t| t <= now) {
                node.store.handle_timeout(&mut node.harness.ctx(now));
            }
            self.collect(i);
        }
    }

    /// One anti-entropy exchange between two reachable peers, both ways.
    fn anti_entropy(&mut self, a: usize, b: usize) {
        if a == b || !self.reachable(a, b) {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            let digest = self.nodes[x].store.digest();
            self.queue.push_back(Msg {
                from: x,
                to: y,
                kind: Kind::Digest,
                bytes: digest,
            });
        }
    }

    fn add(&mut self, i: usize, name: &str, addr: Ipv4Addr, owner: &str) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.store
            .add(name, addr, owner, now)
            .expect("valid record");
        node.own
            .insert((format!("{name}."), addr, owner.to_owned()));
        self.deleted
            .remove(&(format!("{name}."), addr, owner.to_owned(), node.name));
    }

    fn remove_owner(&mut self, i: usize, owner: &str) {
        let now = self.now;
        let node = &mut self.nodes[i];
        node.store.remove_owner(owner, now);
        let gone: Vec<Own> = node
            .own
            .iter()
            .filter(|(_, _, o)| o == owner)
            .cloned()
            .collect();
        for (name, addr, owner) in gone {
            node.own.remove(&(name.clone(), addr, owner.clone()));
            self.deleted.insert((name, addr, owner, node.name));
        }
    }

    /// The daemon restarts: a fresh store, its persisted records re-added, except that
    /// `lose` of them were removed while it was down (the container died meanwhile).
    fn restart(&mut self, i: usize, lose: usize) {
        let now = self.now;
        let name = self.nodes[i].name;
        let seed = self.rng.next_u64();
        let mut own: Vec<Own> = self.nodes[i].own.iter().cloned().collect();
        for _ in 0..lose.min(own.len()) {
            let at = self.pick(own.len());
            let (n, a, o) = own.remove(at);
            self.deleted.insert((n, a, o, name));
        }
        let node = &mut self.nodes[i];
        node.store = NameStore::new(name, now);
        node.harness = GossipHarness::new(name, seed);
        node.own = own.iter().cloned().collect();
        for (n, a, o) in &own {
            node.store.add(n, *a, o, now).expect("valid record");
        }
        // Its view of the topology starts empty and is rebuilt.
        let now = self.now;
        node.store.on_peers_changed(&mut node.harness.ctx(now));
        self.update_topology();
    }

    fn expected(&self) -> BTreeSet<Seen> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .flat_map(|n| {
                n.own
                    .iter()
                    .map(|(name, addr, owner)| (name.clone(), *addr, owner.clone(), n.name))
            })
            .collect()
    }

    fn seen(&self, i: usize) -> BTreeSet<Seen> {
        self.nodes[i]
            .store
            .entries()
            .into_iter()
            .map(|e| (e.name, e.addr, e.owner, e.origin))
            .collect()
    }

    /// Heals everything, stops the faults and runs anti-entropy until quiet.
    fn converge(&mut self) -> usize {
        self.group.iter_mut().for_each(|g| *g = 0);
        for n in &mut self.nodes {
            n.up = true;
        }
        self.loss = 0;
        self.dup = 0;
        self.update_topology();
        for round in 0..40 {
            self.tick(Duration::from_millis(100));
            self.run_network(1_000_000);
            let n = self.nodes.len();
            for a in 0..n {
                let b = (a + 1 + round % (n - 1)) % n;
                self.anti_entropy(a, b);
            }
            self.run_network(1_000_000);
            let want = self.expected();
            if (0..n).all(|i| self.seen(i) == want) && self.queue.is_empty() {
                return round;
            }
        }
        let want = self.expected();
        for i in 0..self.nodes.len() {
            let seen = self.seen(i);
            assert!(
                seen == want,
                "node {i} did not converge: extra {:?}, missing {:?}",
                seen.difference(&want).collect::<Vec<_>>(),
                want.difference(&seen).collect::<Vec<_>>()
            );
        }
        unreachable!("converged but the queue never emptied");
    }

    /// Nobody shows records of an origin outside its view of the topology.
    fn check_only_reachable_origins(&self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            for e in self.nodes[i].store.entries() {
                let j = self
                    .nodes
                    .iter()
                    .position(|n| n.name == e.origin)
                    .expect("a known origin");
                assert!(
                    i == j || self.reachable(i, j),
                    "node {i} shows {e:?} of unreachable {j}"
                );
            }
        }
    }

    fn check_nothing_deleted_is_live(&self) {
        for i in 0..self.nodes.len() {
            let seen = self.seen(i);
            let back: Vec<_> = self.deleted.intersection(&seen).collect();
            assert!(
                back.is_empty(),
                "node {i}: deleted records came back: {back:?}"
            );
        }
    }
}

fn name_of(k: usize) -> String {
    format!("h{k}.weave.local")
}

fn addr_of(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, (k / 250) as u8, (k % 250) as u8 + 1)
}

/// One random run of `steps` operations on `n` peers.
fn chaos(seed: u64, n: usize, steps: usize) {
    let mut sim = Sim::new(n, seed);
    sim.loss = 20;
    sim.dup = 10;
    let mut counter = 0;
    for _ in 0..steps {
        let op = sim.pick(100);
        let i = sim.pick(n);
        match op {
            0..=39 if sim.nodes[i].up => {
                counter += 1;
                // Names repeat across peers, so some names have several addresses.
                let name = name_of(counter % 7);
                sim.add(i, &name, addr_of(counter), &format!("c{counter}"));
            }
            40..=54 if sim.nodes[i].up => {
                let owners: Vec<String> =
                    sim.nodes[i].own.iter().map(|(_, _, o)| o.clone()).collect();
                if !owners.is_empty() {
                    let o = owners[sim.pick(owners.len())].clone();
                    sim.remove_owner(i, &o);
                }
            }
            55..=62 => {
                // A partition into two random groups.
                for g in 0..n {
                    sim.group[g] = (sim.rng.next_u32() % 2) as u8;
                }
                sim.update_topology();
            }
            63..=68 => {
                sim.group.iter_mut().for_each(|g| *g = 0);
                sim.update_topology();
            }
            69..=73 => {
                // A peer leaves the topology (its store lives on) or returns.
                sim.nodes[i].up = !sim.nodes[i].up;
                sim.update_topology();
            }
            74..=77 if sim.nodes[i].up => {
                let lose = sim.pick(2);
                sim.restart(i, lose);
            }
            78..=89 => {
                let j = sim.pick(n);
                sim.anti_entropy(i, j);
            }
            _ => {}
        }
        sim.tick(Duration::from_millis(50));
        let burst = sim.pick(30);
        sim.run_network(burst);
        sim.check_only_reachable_origins();
    }
    let rounds = sim.converge();
    sim.check_nothing_deleted_is_live();

    // Long after: tombstones expire everywhere; anti-entropy keeps running; the state
    // must not change and nothing deleted may resurface.
    let want = sim.expected();
    for _ in 0..3 {
        sim.tick(TOMBSTONE_LIFETIME / 2);
        sim.tick(Duration::from_secs(61));
        for a in 0..n {
            sim.anti_entropy(a, (a + 1) % n);
        }
        sim.run_network(1_000_000);
    }
    for i in 0..n {
        assert!(
            sim.seen(i) == want,
            "seed {seed}: node {i} changed after tombstones expired"
        );
    }
    sim.check_nothing_deleted_is_live();
    assert!(rounds < 40);
}

#[test]
fn chaos_runs_converge() {
    for seed in 0..24 {
        chaos(seed, 6, 300);
    }
}

#[test]
fn chaos_with_more_peers() {
    for seed in 100..104 {
        chaos(seed, 12, 600);
    }
}

#[test]
fn broadcasts_alone_spread_changes_on_a_clean_network() {
    let mut sim = Sim::new(5, 1);
    sim.add(0, "web.weave.local", addr_of(1), "c1");
    sim.add(3, "web.weave.local", addr_of(2), "c2");
    sim.tick(Duration::from_millis(1));
    sim.run_network(10_000);
    for i in 0..5 {
        assert_eq!(
            sim.nodes[i].store.lookup_name("web.weave.local"),
            vec![addr_of(1), addr_of(2)]
        );
    }
    sim.remove_owner(0, "c1");
    sim.tick(Duration::from_millis(1));
    sim.run_network(10_000);
    for i in 0..5 {
        assert_eq!(
            sim.nodes[i].store.lookup_name("web.weave.local"),
            vec![addr_of(2)]
        );
    }
    // Only changed records travel: the removal is one record.
    assert_eq!(sim.nodes[1].store.len(), 2);
}

#[test]
fn a_peer_that_leaves_takes_its_names_and_brings_them_back() {
    let mut sim = Sim::new(5, 2);
    for i in 0..5 {
        sim.add(i, &name_of(i), addr_of(i), &format!("c{i}"));
    }
    sim.converge();
    sim.nodes[4].up = false;
    sim.update_topology();
    for i in 0..4 {
        assert!(
            sim.nodes[i].store.lookup_name(&name_of(4)).is_empty(),
            "node {i}"
        );
        assert_eq!(
            sim.nodes[i].store.lookup_name(&name_of(3)),
            vec![addr_of(3)]
        );
    }
    // A partition: each side keeps only its own side's names.
    sim.group = vec![0, 0, 1, 1, 1];
    sim.update_topology();
    assert!(sim.nodes[0].store.lookup_name(&name_of(2)).is_empty());
    assert_eq!(
        sim.nodes[0].store.lookup_name(&name_of(1)),
        vec![addr_of(1)]
    );
    assert!(sim.nodes[2].store.lookup_name(&name_of(0)).is_empty());
    // Heal and return: a single anti-entropy exchange across the healed link, plus the
    // broadcast of what it changed, restores everything everywhere.
    sim.group = vec![0; 5];
    sim.nodes[4].up = true;
    sim.update_topology();
    sim.anti_entropy(1, 4);
    sim.run_network(10_000);
    sim.anti_entropy(0, 2);
    sim.run_network(10_000);
    let want = sim.expected();
    for i in 0..5 {
        assert_eq!(sim.seen(i), want, "node {i}");
    }
}

#[test]
fn a_restarted_peer_retracts_what_it_lost_and_keeps_the_rest() {
    let mut sim = Sim::new(5, 3);
    for k in 0..6 {
        sim.add(0, &name_of(k), addr_of(k), &format!("c{k}"));
    }
    sim.converge();
    sim.restart(0, 2);
    assert_eq!(sim.deleted.len(), 2);
    sim.converge();
    sim.check_nothing_deleted_is_live();
    for i in 0..5 {
        assert_eq!(sim.seen(i).len(), 4);
    }
    let counts: BTreeMap<usize, usize> = (0..5)
        .map(|i| (i, sim.nodes[i].store.local_entry_count()))
        .collect();
    assert_eq!(counts[&0], 4);
    assert!(
        counts
            .iter()
            .filter(|(i, _)| **i != 0)
            .all(|(_, c)| *c == 0)
    );
}
