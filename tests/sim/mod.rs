//! A deterministic N-peer simulation of the mesh: real `Mesh` state machines (real
//! handshakes, codecs, gossip), a virtual clock, a seeded RNG, and a model network of
//! TCP connections with per-link latency, jitter, loss (as retransmission delay), resets,
//! partitions, and host crashes and restarts.
//!
//! The control plane runs over TCP, so bytes on one connection arrive in order and once;
//! loss shows up as delay (a retransmission timeout) and duplication and reordering happen
//! where they do in reality: between messages that take different paths (broadcast
//! relays, anti-entropy, announcements), which the CRDT merges must absorb.
//!
//! A failing run prints its seed; `SIM_SEED=<seed>` replays it.

#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use weave_mesh::routes::RouteKind;
use weave_mesh::{Action, ConnId, Event, Gossiper, Mesh, MeshConfig, PeerName};

/// Index of a simulated host.
pub type HostId = usize;

/// Properties of the underlay between two hosts.
#[derive(Debug, Clone, Copy)]
pub struct LinkModel {
    pub latency: Duration,
    pub jitter: Duration,
    /// Probability that a chunk of bytes needs a retransmission (adds `rto`).
    pub loss: f64,
    pub rto: Duration,
    /// Probability per chunk that the connection is reset.
    pub reset: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::from_micros(500),
            loss: 0.0,
            rto: Duration::from_millis(200),
            reset: 0.0,
        }
    }
}

/// Adjusts a host's mesh configuration before each start.
pub type ConfigureFn = Box<dyn Fn(&mut MeshConfig)>;
/// Makes a host's application channels on each start.
pub type ChannelsFn = Box<dyn Fn(HostId) -> Vec<(String, Box<dyn Gossiper>)>>;

/// How a new peer is configured.
#[derive(Default)]
pub struct HostSpec {
    pub peers: Vec<HostId>,
    pub password: Option<[u8; 32]>,
    pub configure: Option<ConfigureFn>,
    /// Channels to register on every start (restarts included).
    pub channels: Option<ChannelsFn>,
}

impl HostSpec {
    /// A host that names `peers` to connect to, otherwise as by default.
    pub fn joining(peers: Vec<HostId>) -> Self {
        Self {
            peers,
            ..Self::default()
        }
    }
}

struct Host {
    name: PeerName,
    addr: SocketAddr,
    spec: HostSpec,
    mesh: Option<Mesh>,
    incarnation: u64,
    /// The mesh's current timeout as last reported (to discard stale heap entries).
    timeout: Option<Instant>,
}

/// One end of a simulated TCP connection.
#[derive(Debug, Clone, Copy)]
struct End {
    host: HostId,
    incarnation: u64,
    conn: ConnId,
}

struct SimConn {
    ends: [End; 2],
    /// When the last chunk in each direction arrives (TCP keeps order).
    last_arrival: [Instant; 2],
    /// Whether each end has seen `handle_connected`.
    open: [bool; 2],
    closed: bool,
}

#[derive(Debug)]
enum SimEvent {
    /// Both ends of a new connection learn of it.
    Connected { conn: usize },
    /// A dial failed.
    DialFailed {
        host: HostId,
        incarnation: u64,
        target: String,
        error: &'static str,
    },
    /// Bytes arrive at `side` of `conn`.
    Deliver {
        conn: usize,
        side: usize,
        bytes: Vec<u8>,
    },
    /// The other side closed (FIN or reset) the connection.
    Closed {
        conn: usize,
        side: usize,
        reason: &'static str,
    },
    /// A host's mesh timeout.
    Timeout { host: HostId },
}

/// The simulated world.
pub struct Sim {
    pub seed: u64,
    pub start: Instant,
    pub now: Instant,
    rng: ChaCha8Rng,
    hosts: Vec<Host>,
    conns: Vec<SimConn>,
    /// Hosts' conn ids -> simulated connection.
    by_end: BTreeMap<(HostId, u64, ConnId), (usize, usize)>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    pending: BTreeMap<usize, SimEvent>,
    seq: u64,
    next_event_id: usize,
    next_conn_id: ConnId,
    /// Underlay links that are cut (unordered pairs).
    cut: BTreeSet<(HostId, HostId)>,
    /// If set, only these pairs can reach each other at all (e.g. a line).
    reachable_pairs: Option<BTreeSet<(HostId, HostId)>>,
    pub link: LinkModel,
    /// The target each dial in flight was for.
    dial_targets: BTreeMap<usize, String>,
    /// Events the meshes reported, for tests that look for them.
    pub events: Vec<(HostId, Event)>,
    pub keep_events: bool,
}

fn pair(a: HostId, b: HostId) -> (HostId, HostId) {
    (a.min(b), a.max(b))
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            seed,
            start,
            now: start,
            rng: ChaCha8Rng::seed_from_u64(seed),
            hosts: Vec::new(),
            conns: Vec::new(),
            by_end: BTreeMap::new(),
            queue: BinaryHeap::new(),
            pending: BTreeMap::new(),
            seq: 0,
            next_event_id: 0,
            next_conn_id: 1,
            cut: BTreeSet::new(),
            reachable_pairs: None,
            link: LinkModel::default(),
            dial_targets: BTreeMap::new(),
            events: Vec::new(),
            keep_events: false,
        }
    }

    /// The seed from `SIM_SEED`, or `default`.
    pub fn seed_from_env(default: u64) -> u64 {
        std::env::var("SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// The underlay address of a host (documentation ranges; ports tell hosts apart
    /// beyond 250 of them).
    pub fn addr_of(index: HostId) -> SocketAddr {
        let ip = Ipv4Addr::new(192, 0, 2, (index % 250) as u8 + 1);
        SocketAddr::new(IpAddr::V4(ip), 6783 + (index / 250) as u16)
    }

    pub fn name_of(&self, host: HostId) -> PeerName {
        self.hosts[host].name
    }

    /// The peer name host `index` gets (known before it is added, for its channels).
    pub fn name_for(index: HostId) -> PeerName {
        PeerName::from_u64(0x0200_0000_0000 + index as u64 * 0x1_0001 + 1)
    }

    /// Adds `n` hosts (not started) on a random connected underlay of this run's seed
    /// (see [`random_underlay`], with `extra` edges beyond its tree) and restricts the
    /// underlay to it. `spec` makes each host's spec from its id and named peers.
    pub fn add_random_hosts(
        &mut self,
        n: usize,
        extra: usize,
        mut spec: impl FnMut(HostId, Vec<HostId>) -> HostSpec,
    ) {
        let (edges, named) = random_underlay(n, extra, self.seed);
        for peers in named {
            let host = self.host_count();
            self.add_host(spec(host, peers));
        }
        self.restrict_underlay(&edges);
    }

    /// Adds a host (not started).
    pub fn add_host(&mut self, spec: HostSpec) -> HostId {
        let index = self.hosts.len();
        let name = Self::name_for(index);
        self.hosts.push(Host {
            name,
            addr: Self::addr_of(index),
            spec,
            mesh: None,
            incarnation: 0,
            timeout: None,
        });
        index
    }

    /// Starts (or restarts) a host's daemon: a new UID and generation, same name.
    pub fn start(&mut self, host: HostId) {
        let h = &mut self.hosts[host];
        h.incarnation += 1;
        let seed =
            self.seed ^ (host as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (h.incarnation << 48);
        let mut config = MeshConfig::new(h.name, format!("host{host}"), seed);
        config.generation = (self.now - self.start).as_millis() as u64 + 1;
        config.listen_port = h.addr.port();
        config.session.psk = h.spec.password;
        if let Some(configure) = &h.spec.configure {
            configure(&mut config);
        }
        let mut mesh = Mesh::new(config, self.now);
        if let Some(channels) = &h.spec.channels {
            for (name, gossiper) in channels(host) {
                mesh.register_channel(&name, gossiper);
            }
        }
        let targets: Vec<String> = h
            .spec
            .peers
            .iter()
            .map(|p| Self::addr_of(*p).to_string())
            .collect();
        mesh.connect(&targets, false, self.now);
        h.mesh = Some(mesh);
        self.drain(host);
    }

    /// Stops a host gracefully: its peers see the connections close at once.
    pub fn stop(&mut self, host: HostId) {
        if let Some(mesh) = self.hosts[host].mesh.as_mut() {
            mesh.shutdown(self.now);
        }
        self.drain(host);
        self.crash(host);
    }

    /// Kills a host: its peers only notice through timeouts.
    pub fn crash(&mut self, host: HostId) {
        self.hosts[host].mesh = None;
        self.hosts[host].timeout = None;
        for conn in self.conns.iter_mut() {
            if conn.ends.iter().any(|e| e.host == host) {
                conn.closed = true;
            }
        }
    }

    pub fn is_running(&self, host: HostId) -> bool {
        self.hosts[host].mesh.is_some()
    }

    pub fn mesh(&self, host: HostId) -> &Mesh {
        self.hosts[host].mesh.as_ref().expect("host is running")
    }

    pub fn mesh_mut(&mut self, host: HostId) -> &mut Mesh {
        self.hosts[host].mesh.as_mut().expect("host is running")
    }

    /// Runs `f` on a host's mesh and sends whatever it produced.
    pub fn with_mesh<R>(&mut self, host: HostId, f: impl FnOnce(&mut Mesh, Instant) -> R) -> R {
        let now = self.now;
        let result = f(self.mesh_mut(host), now);
        self.drain(host);
        result
    }

    /// Only these pairs may reach each other (others cannot even dial).
    pub fn restrict_underlay(&mut self, pairs: &[(HostId, HostId)]) {
        self.reachable_pairs = Some(pairs.iter().map(|(a, b)| pair(*a, *b)).collect());
    }

    /// Cuts the underlay between every host in `a` and every host in `b`.
    pub fn partition(&mut self, a: &[HostId], b: &[HostId]) {
        for x in a {
            for y in b {
                self.cut.insert(pair(*x, *y));
            }
        }
    }

    pub fn cut_link(&mut self, a: HostId, b: HostId) {
        self.cut.insert(pair(a, b));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn restore_link(&mut self, a: HostId, b: HostId) {
        self.cut.remove(&pair(a, b));
    }

    fn can_reach(&self, a: HostId, b: HostId) -> bool {
        let key = pair(a, b);
        !self.cut.contains(&key)
            && self
                .reachable_pairs
                .as_ref()
                .is_none_or(|pairs| pairs.contains(&key))
    }

    fn schedule(&mut self, at: Instant, event: SimEvent) {
        let id = self.next_event_id;
        self.next_event_id += 1;
        self.seq += 1;
        self.pending.insert(id, event);
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn jitter(&mut self) -> Duration {
        let max = self.link.jitter.as_nanos() as u64;
        if max == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rng.next_u64() % max)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    /// Drains a host's outputs into the model network.
    fn drain(&mut self, host: HostId) {
        let incarnation = self.hosts[host].incarnation;
        loop {
            let Some(mesh) = self.hosts[host].mesh.as_mut() else {
                return;
            };
            if let Some((conn, bytes)) = mesh.poll_transmit() {
                self.transmit(host, incarnation, conn, bytes);
                continue;
            }
            if let Some(action) = mesh.poll_action() {
                match action {
                    Action::Dial { target } => self.dial(host, incarnation, target),
                    Action::Close { conn } => {
                        self.close(host, incarnation, conn, "connection closed by peer")
                    }
                }
                continue;
            }
            if let Some(event) = mesh.poll_event() {
                if self.keep_events {
                    self.events.push((host, event));
                }
                continue;
            }
            break;
        }
        let timeout = self.hosts[host].mesh.as_ref().and_then(Mesh::poll_timeout);
        if timeout != self.hosts[host].timeout {
            self.hosts[host].timeout = timeout;
            if let Some(at) = timeout {
                self.schedule(at.max(self.now), SimEvent::Timeout { host });
            }
        }
    }

    fn dial(&mut self, host: HostId, incarnation: u64, target: String) {
        let listener = self.hosts.iter().position(|h| h.addr.to_string() == target);
        let now = self.now;
        let failed = |error| SimEvent::DialFailed {
            host,
            incarnation,
            target: target.clone(),
            error,
        };
        let Some(remote) = listener else {
            self.schedule(now + self.link.latency * 2, failed("no route to host"));
            return;
        };
        if !self.can_reach(host, remote) {
            self.schedule(now + Duration::from_secs(3), failed("connect timed out"));
            return;
        }
        if self.hosts[remote].mesh.is_none() {
            self.schedule(now + self.link.latency * 2, failed("connection refused"));
            return;
        }
        let dialer_conn = self.next_conn_id;
        let acceptor_conn = self.next_conn_id + 1;
        self.next_conn_id += 2;
        let index = self.conns.len();
        self.conns.push(SimConn {
            ends: [
                End {
                    host,
                    incarnation,
                    conn: dialer_conn,
                },
                End {
                    host: remote,
                    incarnation: self.hosts[remote].incarnation,
                    conn: acceptor_conn,
                },
            ],
            last_arrival: [now, now],
            open: [false, false],
            closed: false,
        });
        self.by_end
            .insert((host, incarnation, dialer_conn), (index, 0));
        self.by_end.insert(
            (remote, self.hosts[remote].incarnation, acceptor_conn),
            (index, 1),
        );
        let at = now + self.link.latency * 3 / 2;
        self.schedule(at, SimEvent::Connected { conn: index });
        // The dialer's target travels with the connection.
        self.dial_targets.insert(index, target);
    }

    fn transmit(&mut self, host: HostId, incarnation: u64, conn: ConnId, bytes: Vec<u8>) {
        let Some(&(index, side)) = self.by_end.get(&(host, incarnation, conn)) else {
            return;
        };
        if self.conns[index].closed {
            return;
        }
        let other = 1 - side;
        let (a, b) = (
            self.conns[index].ends[0].host,
            self.conns[index].ends[1].host,
        );
        if !self.can_reach(a, b) {
            return; // black-holed: the peers find out through heartbeats
        }
        if self.chance(self.link.reset) {
            self.conns[index].closed = true;
            let at = self.now + self.link.latency;
            self.schedule(
                at,
                SimEvent::Closed {
                    conn: index,
                    side: other,
                    reason: "connection reset by peer",
                },
            );
            self.schedule(
                at,
                SimEvent::Closed {
                    conn: index,
                    side,
                    reason: "connection reset",
                },
            );
            return;
        }
        let mut at = self.now + self.link.latency + self.jitter();
        if self.chance(self.link.loss) {
            at += self.link.rto;
        }
        let at = at.max(self.conns[index].last_arrival[other]);
        self.conns[index].last_arrival[other] = at;
        self.schedule(
            at,
            SimEvent::Deliver {
                conn: index,
                side: other,
                bytes,
            },
        );
    }

    fn close(&mut self, host: HostId, incarnation: u64, conn: ConnId, reason: &'static str) {
        let Some(&(index, side)) = self.by_end.get(&(host, incarnation, conn)) else {
            return;
        };
        if self.conns[index].closed {
            return;
        }
        self.conns[index].closed = true;
        let other = 1 - side;
        // The FIN follows the data already in flight.
        let at = (self.now + self.link.latency).max(self.conns[index].last_arrival[other]);
        let (a, b) = (
            self.conns[index].ends[0].host,
            self.conns[index].ends[1].host,
        );
        if self.can_reach(a, b) {
            self.schedule(
                at,
                SimEvent::Closed {
                    conn: index,
                    side: other,
                    reason,
                },
            );
        }
    }

    fn end_mesh(&mut self, end: End) -> Option<&mut Mesh> {
        let host = &mut self.hosts[end.host];
        if host.incarnation != end.incarnation {
            return None;
        }
        host.mesh.as_mut()
    }

    /// Processes events until `deadline` (virtual time).
    pub fn run_until(&mut self, deadline: Instant) {
        let mut same_instant = 0u32;
        while let Some(Reverse((at, _, id))) = self.queue.peek().copied() {
            if at > deadline {
                break;
            }
            self.queue.pop();
            same_instant = if at <= self.now { same_instant + 1 } else { 0 };
            self.now = self.now.max(at);
            let Some(event) = self.pending.remove(&id) else {
                continue;
            };
            if same_instant > 2_000_000 {
                let timeout = match &event {
                    SimEvent::Timeout { host } => self.hosts[*host]
                        .mesh
                        .as_ref()
                        .and_then(Mesh::poll_timeout_with_reason),
                    _ => None,
                };
                panic!(
                    "livelock at {:?}: {event:?}, its timeout {timeout:?}",
                    self.now - self.start
                );
            }
            self.process(event);
        }
        self.now = self.now.max(deadline);
    }

    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now + duration;
        self.run_until(deadline);
    }

    /// Runs until `done` holds (checked every `step`) or `limit` passes; returns the
    /// virtual time it took, or `None` on timeout.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Option<Duration> {
        let begin = self.now;
        while self.now - begin < limit {
            if done(self) {
                return Some(self.now - begin);
            }
            self.run_for(step);
        }
        done(self).then(|| self.now - begin)
    }

    fn process(&mut self, event: SimEvent) {
        let now = self.now;
        match event {
            SimEvent::Timeout { host } => {
                let due = self.hosts[host].timeout.is_some_and(|t| t <= now);
                if due {
                    self.hosts[host].timeout = None;
                    if let Some(mesh) = self.hosts[host].mesh.as_mut() {
                        mesh.handle_timeout(now);
                    }
                    self.drain(host);
                }
            }
            SimEvent::DialFailed {
                host,
                incarnation,
                target,
                error,
            } => {
                if self.hosts[host].incarnation == incarnation {
                    if let Some(mesh) = self.hosts[host].mesh.as_mut() {
                        mesh.handle_dial_failed(&target, error, now);
                    }
                    self.drain(host);
                }
            }
            SimEvent::Connected { conn } => {
                let target = self.dial_targets.remove(&conn);
                let [dialer, acceptor] = self.conns[conn].ends;
                if self.conns[conn].closed || self.end_mesh(acceptor).is_none() {
                    self.conns[conn].closed = true;
                    if let (Some(mesh), Some(target)) = (self.end_mesh(dialer), target) {
                        mesh.handle_dial_failed(&target, "connection refused", now);
                    }
                    self.drain(dialer.host);
                    return;
                }
                let dialer_addr = SocketAddr::new(
                    self.hosts[dialer.host].addr.ip(),
                    40000 + (conn % 20000) as u16,
                );
                let acceptor_addr = self.hosts[acceptor.host].addr;
                self.conns[conn].open = [true, true];
                if let Some(mesh) = self.end_mesh(acceptor) {
                    mesh.handle_connected(acceptor.conn, dialer_addr, None, now);
                }
                self.drain(acceptor.host);
                if let Some(mesh) = self.end_mesh(dialer) {
                    mesh.handle_connected(dialer.conn, acceptor_addr, target, now);
                }
                self.drain(dialer.host);
            }
            SimEvent::Deliver { conn, side, bytes } => {
                let end = self.conns[conn].ends[side];
                if let Some(mesh) = self.end_mesh(end) {
                    mesh.handle_bytes(end.conn, &bytes, now);
                }
                self.drain(end.host);
            }
            SimEvent::Closed { conn, side, reason } => {
                let end = self.conns[conn].ends[side];
                self.conns[conn].closed = true;
                if let Some(mesh) = self.end_mesh(end) {
                    mesh.handle_closed(end.conn, reason, now);
                }
                self.drain(end.host);
            }
        }
    }

    // ----- invariants -----

    pub fn running(&self) -> Vec<HostId> {
        (0..self.hosts.len())
            .filter(|h| self.hosts[*h].mesh.is_some())
            .collect()
    }

    /// Hosts that can reach each other through the current underlay and connections:
    /// the components of the graph of live connections.
    pub fn connection_components(&self) -> Vec<BTreeSet<HostId>> {
        let running = self.running();
        let index_of: BTreeMap<PeerName, HostId> =
            running.iter().map(|h| (self.hosts[*h].name, *h)).collect();
        let mut adjacency: BTreeMap<HostId, BTreeSet<HostId>> = BTreeMap::new();
        for &h in &running {
            let record = self.mesh(h).topology().local_record();
            for (remote, _) in record.connections() {
                if let Some(&r) = index_of.get(&remote) {
                    adjacency.entry(h).or_default().insert(r);
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut components = Vec::new();
        for &h in &running {
            if seen.contains(&h) {
                continue;
            }
            let mut component = BTreeSet::from([h]);
            let mut stack = vec![h];
            seen.insert(h);
            while let Some(x) = stack.pop() {
                for &y in adjacency.get(&x).into_iter().flatten() {
                    // Count only connections both ends report.
                    let back = adjacency.get(&y).is_some_and(|s| s.contains(&x));
                    if back && seen.insert(y) {
                        component.insert(y);
                        stack.push(y);
                    }
                }
            }
            components.push(component);
        }
        components
    }

    /// Checks that every running host's view equals the truth for its component:
    /// exactly the component's peers, each with the connections it really has.
    /// Returns a description of the first difference.
    pub fn check_converged(&self) -> Result<(), String> {
        for component in self.connection_components() {
            let truth: BTreeMap<PeerName, BTreeSet<PeerName>> = component
                .iter()
                .map(|h| {
                    let record = self.mesh(*h).topology().local_record();
                    (
                        self.hosts[*h].name,
                        record.connections().map(|(r, _)| r).collect(),
                    )
                })
                .collect();
            for &h in &component {
                let view: BTreeMap<PeerName, BTreeSet<PeerName>> = self
                    .mesh(h)
                    .live_peers()
                    .keys()
                    .map(|p| {
                        let conns = self
                            .mesh(h)
                            .topology()
                            .record(*p)
                            .map(|r| r.connections().map(|(x, _)| x).collect());
                        (*p, conns.unwrap_or_default())
                    })
                    .collect();
                if view != truth {
                    let missing: Vec<_> = truth.keys().filter(|p| !view.contains_key(p)).collect();
                    let extra: Vec<_> = view.keys().filter(|p| !truth.contains_key(p)).collect();
                    let differing: Vec<_> = truth
                        .iter()
                        .filter(|(p, c)| view.get(p).is_some_and(|v| v != *c))
                        .map(|(p, _)| p)
                        .collect();
                    return Err(format!(
                        "host {h} ({}): view of its component of {} differs: missing {missing:?}, extra {extra:?}, \
                         stale records of {differing:?}",
                        self.hosts[h].name,
                        component.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that routes agree: from every host, following each host's own next hops
    /// reaches every other host of its component without loops, and a broadcast from any
    /// origin, forwarded by each host along its own computation of the tree, reaches
    /// every other host exactly once.
    pub fn check_routes(&mut self, kind: RouteKind) -> Result<(), String> {
        let components = self.connection_components();
        for component in components {
            let members: Vec<HostId> = component.iter().copied().collect();
            let host_of: BTreeMap<PeerName, HostId> =
                members.iter().map(|h| (self.hosts[*h].name, *h)).collect();
            for &origin in &members {
                let origin_name = self.hosts[origin].name;
                let mut received: BTreeMap<HostId, u32> = BTreeMap::new();
                let mut frontier = vec![origin];
                let mut steps = 0;
                while let Some(at) = frontier.pop() {
                    steps += 1;
                    if steps > members.len() * members.len() + 10 {
                        return Err(format!("broadcast from {origin} loops"));
                    }
                    for hop in self.mesh_mut(at).broadcast_hops(kind, origin_name) {
                        let Some(&next) = host_of.get(&hop) else {
                            return Err(format!(
                                "host {at} forwards {origin}'s broadcast to unknown {hop}"
                            ));
                        };
                        *received.entry(next).or_default() += 1;
                        frontier.push(next);
                    }
                }
                for &h in &members {
                    let count = received.get(&h).copied().unwrap_or(0);
                    let expected = u32::from(h != origin);
                    if count != expected {
                        return Err(format!("broadcast from {origin} reached {h} {count} times"));
                    }
                }
                for &dst in &members {
                    let dst_name = self.hosts[dst].name;
                    let mut at = origin;
                    let mut hops = 0;
                    while at != dst {
                        let Some(next) = self.mesh_mut(at).next_hop(kind, dst_name) else {
                            return Err(format!("host {at} has no route to {dst}"));
                        };
                        at = *host_of
                            .get(&next)
                            .ok_or_else(|| format!("route via unknown peer {next}"))?;
                        hops += 1;
                        if hops > members.len() {
                            return Err(format!("unicast from {origin} to {dst} loops"));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Sum and maximum of bytes sent per running host.
    pub fn bytes_sent(&self) -> (u64, u64) {
        let per_host: Vec<u64> = self
            .running()
            .iter()
            .map(|h| self.mesh(*h).stats().bytes_sent)
            .collect();
        (
            per_host.iter().sum(),
            per_host.iter().copied().max().unwrap_or(0),
        )
    }

    /// How many connections each running host has.
    pub fn degrees(&self) -> Vec<usize> {
        self.running()
            .iter()
            .map(|h| {
                self.mesh(*h)
                    .topology()
                    .local_record()
                    .connections()
                    .count()
            })
            .collect()
    }
}

/// A random connected graph on `n` hosts: a random tree (each host hangs off a random
/// earlier one, which it names as its peer) plus `extra` random edges. Returns the
/// edges and each host's named peers.
pub fn random_underlay(
    n: usize,
    extra: usize,
    seed: u64,
) -> (Vec<(HostId, HostId)>, Vec<Vec<HostId>>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut edges = Vec::new();
    let mut named = vec![Vec::new(); n];
    for (i, peers) in named.iter_mut().enumerate().skip(1) {
        let parent = next(i);
        edges.push((parent, i));
        peers.push(parent);
    }
    for _ in 0..extra {
        let (a, b) = (next(n), next(n));
        if a != b {
            edges.push((a, b));
        }
    }
    (edges, named)
}
