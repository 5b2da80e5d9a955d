//! The [`Mesh`]: one peer's whole mesh state machine.
//!
//! It owns the control connections (each a [`Session`] plus the peer it leads to), the
//! topology and its routes, the targets to dial, and the applications' gossip channels.
//! The IO shell drives it:
//!
//! - inputs: [`Mesh::handle_connected`] (a TCP connection is up, accepted or dialled),
//!   [`Mesh::handle_bytes`], [`Mesh::handle_closed`], [`Mesh::handle_dial_failed`],
//!   [`Mesh::handle_timeout`], and the user's commands ([`Mesh::connect`],
//!   [`Mesh::forget`], [`Mesh::with_channel`], [`Mesh::set_established`], ...);
//! - outputs, to drain after every input: [`Mesh::poll_transmit`] (bytes to write to a
//!   connection), [`Mesh::poll_action`] (dial, close), [`Mesh::poll_event`] (for the
//!   layers above and the logs) and [`Mesh::poll_timeout`] (when to call
//!   [`Mesh::handle_timeout`] next).
//!
//! Every input takes `now`; randomness comes from the seed in [`MeshConfig`]. Nothing
//! here blocks, sleeps or touches a socket.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::gossip::{GossipContext, GossipSend, Gossiper, PeerSummary};
use crate::maker::{Origin, TargetState, Targets};
use crate::peer::{PeerName, PeerUid};
use crate::routes::{RouteKind, Routes};
use crate::session::{Role, Session, SessionConfig, SleeveKeys};
use crate::topology::{ConnectionInfo, Incarnation, Topology, TopologyDelta, TopologyNotice};
use crate::wire::{self, Announce, Features, GossipBody, Message};

/// The caller's handle on one TCP connection.
pub type ConnId = u64;

/// The name of the built-in topology channel (applications may not use it).
pub const TOPOLOGY_CHANNEL: &str = "topology";

/// Settings of one peer. [`MeshConfig::new`] gives Weave's defaults.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: PeerName,
    pub nickname: String,
    /// Random per start.
    pub uid: PeerUid,
    /// Orders incarnations of one name: the caller passes the wall clock at start (in
    /// milliseconds), so a restarted peer's record replaces its old one everywhere.
    pub generation: u64,
    /// The TCP port we accept connections on (told to peers for discovery).
    pub listen_port: u16,
    pub session: SessionConfig,
    /// Dial addresses learned from the topology (`--no-discovery` turns it off).
    pub discovery: bool,
    /// At most this many connections; 0 means no limit.
    pub conn_limit: usize,
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed.
    pub liveness_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Periodic anti-entropy with one random neighbour (a hash in steady state, so it
    /// can be frequent).
    pub gossip_interval: Duration,
    /// Our own topology changes are batched for this long before they are broadcast.
    pub topology_flush_delay: Duration,
    /// Route and peer-set recalculation is coalesced over this long.
    pub recalc_delay: Duration,
    /// An unreachable peer is forgotten after this long (it stays out of routes and of
    /// the live peer set at once).
    pub gc_grace: Duration,
    /// Mark connections established as soon as the handshake completes. The daemon sets
    /// this until the data plane reports on its UDP path itself.
    pub auto_establish: bool,
    /// Seeds the peer's random choices (session keys, jitter, gossip targets).
    pub seed: u64,
    pub software: String,
}

impl MeshConfig {
    pub fn new(name: PeerName, nickname: String, seed: u64) -> Self {
        Self {
            name,
            nickname,
            uid: seed.rotate_left(17) ^ 0x005e_ed0f,
            generation: 0,
            listen_port: 6783,
            session: SessionConfig::default(),
            discovery: true,
            conn_limit: 200,
            heartbeat_interval: Duration::from_secs(10),
            liveness_timeout: Duration::from_secs(35),
            handshake_timeout: Duration::from_secs(10),
            gossip_interval: Duration::from_secs(5),
            topology_flush_delay: Duration::from_millis(50),
            recalc_delay: Duration::from_millis(50),
            gc_grace: Duration::from_secs(5),
            auto_establish: true,
            seed,
            software: String::new(),
        }
    }
}

/// Something for the IO shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Resolve `target` (`host:port`) and connect; then call [`Mesh::handle_connected`]
    /// with the target, or [`Mesh::handle_dial_failed`].
    Dial { target: String },
    /// Write what is queued for this connection, then close it. Do not report the close
    /// back with [`Mesh::handle_closed`]; the mesh has already forgotten it.
    Close { conn: ConnId },
}

/// Something that happened, for the layers above and for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection finished its handshake and was accepted.
    ConnectionUp {
        conn: ConnId,
        peer: PeerName,
        nickname: String,
        remote_addr: SocketAddr,
        outbound: bool,
        /// The same at both ends: the data plane's heartbeats carry it.
        conn_uid: u64,
        /// Data-plane keys, when a password is set.
        sleeve_keys: Option<SleeveKeys>,
    },
    /// A connection ended (`peer` is `None` if it never completed its handshake).
    ConnectionDown {
        conn: ConnId,
        peer: Option<PeerName>,
        reason: String,
    },
    PeerAdded(PeerSummary),
    PeerRemoved(PeerName),
    /// The topology changed: routes may be different.
    TopologyChanged,
    /// Another live peer uses our name.
    NameCollision {
        uid: PeerUid,
        nickname: String,
        addr: Option<SocketAddr>,
    },
    /// A message for the layer above from a neighbour (see [`Mesh::send_direct`]).
    Direct {
        from: PeerName,
        tag: u16,
        payload: Vec<u8>,
    },
    /// A gossip message could not be used; logged, counted, not fatal.
    GossipRejected {
        channel: String,
        from: PeerName,
        error: String,
    },
}

/// Counters for metrics and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub gossip_rejected: u64,
    pub connections_terminated: u64,
}

struct Remote {
    name: PeerName,
    nickname: String,
    incarnation: Incarnation,
    conn_uid: u64,
    listen_port: u16,
    software: String,
    ready_at: Instant,
}

struct Conn {
    outbound: bool,
    remote_addr: SocketAddr,
    target: Option<String>,
    session: Session,
    conn_id: u64,
    opened: Instant,
    last_rx: Instant,
    next_heartbeat: Instant,
    remote: Option<Remote>,
    established: bool,
}

/// One peer of the mesh. See the module docs for how to drive it.
pub struct Mesh {
    config: MeshConfig,
    topology: Topology,
    routes: Routes,
    targets: Targets,
    conns: BTreeMap<ConnId, Conn>,
    /// The accepted connection to each neighbour.
    by_peer: BTreeMap<PeerName, ConnId>,
    channels: BTreeMap<String, Box<dyn Gossiper>>,
    /// Peers reachable in the topology, ourselves included: what applications see.
    live: BTreeMap<PeerName, PeerSummary>,
    unreachable_since: BTreeMap<PeerName, Instant>,
    /// When we last pushed anti-entropy to every neighbour because peers vanished, and
    /// when we will next.
    last_urgent_sync: Option<Instant>,
    urgent_sync_at: Option<Instant>,
    /// The discovered addresses last handed to the targets.
    discovered: BTreeSet<SocketAddr>,
    rng: ChaCha8Rng,
    transmits: VecDeque<(ConnId, Vec<u8>)>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    now: Instant,
    flush_at: Option<Instant>,
    recalc_at: Option<Instant>,
    next_anti_entropy: Instant,
    last_epoch: u64,
    collisions: Vec<String>,
    stats: MeshStats,
}

impl Mesh {
    pub fn new(config: MeshConfig, now: Instant) -> Self {
        let incarnation = Incarnation {
            generation: config.generation,
            uid: config.uid,
        };
        let topology = Topology::new(config.name, config.nickname.clone(), incarnation);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let first_gossip = now + jittered(config.gossip_interval, rng.next_u64());
        let mut live = BTreeMap::new();
        live.insert(
            config.name,
            PeerSummary {
                name: config.name,
                nickname: config.nickname.clone(),
                uid: config.uid,
            },
        );
        Self {
            topology,
            routes: Routes::default(),
            targets: Targets::default(),
            conns: BTreeMap::new(),
            by_peer: BTreeMap::new(),
            channels: BTreeMap::new(),
            live,
            unreachable_since: BTreeMap::new(),
            last_urgent_sync: None,
            urgent_sync_at: None,
            discovered: BTreeSet::new(),
            rng,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            now,
            flush_at: None,
            recalc_at: None,
            next_anti_entropy: first_gossip,
            last_epoch: 0,
            collisions: Vec::new(),
            stats: MeshStats::default(),
            config,
        }
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    pub fn name(&self) -> PeerName {
        self.config.name
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn stats(&self) -> &MeshStats {
        &self.stats
    }

    /// Peers reachable in the topology, ourselves included.
    pub fn live_peers(&self) -> &BTreeMap<PeerName, PeerSummary> {
        &self.live
    }

    /// Name collisions we have seen (for status).
    pub fn collisions(&self) -> &[String] {
        &self.collisions
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The neighbour through which frames for `dst` go, if it is reachable.
    pub fn next_hop(&mut self, kind: RouteKind, dst: PeerName) -> Option<PeerName> {
        self.routes.next_hop(&self.topology, kind, dst)
    }

    /// For every reachable peer, the neighbour through which to reach it.
    pub fn unicast_routes(&mut self, kind: RouteKind) -> BTreeMap<PeerName, PeerName> {
        self.routes.unicast_table(&self.topology, kind).clone()
    }

    /// The neighbours we forward `origin`'s broadcasts to.
    pub fn broadcast_hops(&mut self, kind: RouteKind, origin: PeerName) -> Vec<PeerName> {
        self.routes
            .broadcast_hops(&self.topology, kind, origin)
            .to_vec()
    }

    // ----- applications -----

    /// Registers an application's gossip channel. Its state is sent to neighbours as
    /// connections come up, and merged from theirs.
    pub fn register_channel(&mut self, name: &str, gossiper: Box<dyn Gossiper>) {
        assert_ne!(name, TOPOLOGY_CHANNEL, "the topology channel is built in");
        self.channels.insert(name.to_owned(), gossiper);
    }

    /// Read access to a channel's state.
    pub fn channel<T: Gossiper>(&self, name: &str) -> Option<&T> {
        let gossiper: &dyn Any = self.channels.get(name)?.as_ref();
        gossiper.downcast_ref::<T>()
    }

    /// Runs `f` on a channel's state with a context to send gossip through; what it
    /// sends goes out afterwards. `None` if there is no such channel of type `T`.
    pub fn with_channel<T: Gossiper, R>(
        &mut self,
        name: &str,
        now: Instant,
        f: impl FnOnce(&mut T, &mut GossipContext<'_>) -> R,
    ) -> Option<R> {
        self.now = now;
        self.call_channel(name, |gossiper, ctx| {
            let gossiper: &mut dyn Any = gossiper;
            gossiper.downcast_mut::<T>().map(|state| f(state, ctx))
        })
        .flatten()
    }

    /// Sends a message to a neighbour's layer above (it arrives as [`Event::Direct`]).
    /// False if `peer` is not a neighbour.
    pub fn send_direct(&mut self, peer: PeerName, tag: u16, payload: Vec<u8>) -> bool {
        let Some(&conn) = self.by_peer.get(&peer) else {
            return false;
        };
        self.send(conn, &Message::Direct { tag, payload });
        true
    }

    // ----- user commands -----

    /// Adds targets (already normalised `host:port`), dropping all others first if
    /// `replace`. They are dialled on the next [`Mesh::handle_timeout`].
    pub fn connect(&mut self, targets: &[String], replace: bool, now: Instant) {
        self.now = now;
        if replace {
            let old: Vec<String> = self.targets.direct().cloned().collect();
            for key in old {
                self.targets.forget(&key);
            }
        }
        for target in targets {
            self.targets.add_direct(target.clone(), now);
        }
    }

    /// Forgets targets; their connections stay up but will not be retried.
    pub fn forget(&mut self, targets: &[String]) {
        for target in targets {
            self.targets.forget(target);
        }
    }

    /// The data plane reports whether the UDP path to `peer` works both ways.
    pub fn set_established(&mut self, peer: PeerName, established: bool, now: Instant) {
        self.now = now;
        let Some(&conn_id) = self.by_peer.get(&peer) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if conn.established == established {
            return;
        }
        conn.established = established;
        self.publish_connection(conn_id);
    }

    /// Closes every connection (for `weave stop`): each peer is told why.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in ids {
            self.close(conn, "peer is shutting down".into());
        }
    }

    // ----- IO inputs -----

    /// A TCP connection is up: accepted (`target` is `None`) or dialled for `target`.
    pub fn handle_connected(
        &mut self,
        conn_id: ConnId,
        remote_addr: SocketAddr,
        target: Option<String>,
        now: Instant,
    ) {
        self.now = now;
        let outbound = target.is_some();
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let role = if outbound {
            Role::Initiator
        } else {
            Role::Responder
        };
        let conn = Conn {
            outbound,
            remote_addr,
            target,
            session: Session::new(&self.config.session, role, seed),
            conn_id: self.rng.next_u64(),
            opened: now,
            last_rx: now,
            next_heartbeat: now + self.config.heartbeat_interval,
            remote: None,
            established: false,
        };
        let features = Message::Features(Features {
            name: self.config.name,
            nickname: self.config.nickname.clone(),
            incarnation: self.topology.local_record().incarnation,
            conn_id: conn.conn_id,
            listen_port: self.config.listen_port,
            software: self.config.software.clone(),
        });
        self.conns.insert(conn_id, conn);
        self.send(conn_id, &features);
        self.after_input();
    }

    /// Bytes read from a connection.
    pub fn handle_bytes(&mut self, conn_id: ConnId, bytes: &[u8], now: Instant) {
        self.now = now;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        conn.last_rx = now;
        self.stats.bytes_received += bytes.len() as u64;
        let result = conn.session.handle_input(bytes);
        self.flush_session(conn_id);
        if let Err(err) = result {
            self.close(conn_id, err.to_string());
            self.after_input();
            return;
        }
        while let Some(payload) = self
            .conns
            .get_mut(&conn_id)
            .and_then(|c| c.session.poll_message())
        {
            self.stats.messages_received += 1;
            match Message::decode(&payload) {
                Ok(message) => self.handle_message(conn_id, message),
                Err(err) => {
                    self.close(conn_id, err.to_string());
                    break;
                }
            }
        }
        self.after_input();
    }

    /// The connection closed or failed (EOF, reset, write error).
    pub fn handle_closed(&mut self, conn_id: ConnId, reason: &str, now: Instant) {
        self.now = now;
        self.forget_conn(conn_id, reason.to_owned());
        self.after_input();
    }

    /// A dial for `target` failed before a connection was made.
    pub fn handle_dial_failed(&mut self, target: &str, error: &str, now: Instant) {
        self.now = now;
        let random = self.rng.next_u64();
        self.targets
            .failed(target, error.to_owned(), None, now, random);
        self.after_input();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.check_connections();
        if self.flush_at.is_some_and(|at| at <= now) {
            self.flush_at = None;
            if let Some(delta) = self.topology.take_local_delta() {
                self.broadcast_topology(self.config.name, delta, None);
            }
        }
        let gc_due = self
            .unreachable_since
            .values()
            .any(|since| *since + self.config.gc_grace <= now);
        if gc_due || self.recalc_at.is_some_and(|at| at <= now) {
            self.recalc_at = None;
            self.recalculate();
        }
        if self.urgent_sync_at.is_some_and(|at| at <= now) {
            self.urgent_sync_at = None;
            self.last_urgent_sync = Some(now);
            let hash = self.topology.digest_hash();
            let neighbours: Vec<ConnId> = self.by_peer.values().copied().collect();
            for conn in neighbours {
                self.send(conn, &Message::TopologyDigestHash { hash });
            }
        }
        if self.next_anti_entropy <= now {
            self.next_anti_entropy =
                now + jittered(self.config.gossip_interval, self.rng.next_u64());
            self.anti_entropy_round();
        }
        let channel_names: Vec<String> = self.channels.keys().cloned().collect();
        for name in channel_names {
            let due = self
                .channels
                .get(&name)
                .and_then(|g| g.poll_timeout())
                .is_some_and(|at| at <= now);
            if due {
                self.call_channel(&name, |gossiper, ctx| gossiper.handle_timeout(ctx));
            }
        }
        self.dial_due_targets();
        self.after_input();
    }

    // ----- IO outputs -----

    pub fn poll_transmit(&mut self) -> Option<(ConnId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Mesh::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.poll_timeout_with_reason().map(|(at, _)| at)
    }

    /// [`Mesh::poll_timeout`] with what it is for (for debugging and the logs).
    pub fn poll_timeout_with_reason(&self) -> Option<(Instant, &'static str)> {
        let mut next = (self.next_anti_entropy, "anti-entropy");
        let mut consider = |at: Option<Instant>, reason: &'static str| {
            if let Some(at) = at
                && at < next.0
            {
                next = (at, reason);
            }
        };
        consider(self.flush_at, "topology flush");
        consider(self.recalc_at, "route recalculation");
        consider(self.urgent_sync_at, "anti-entropy after a loss");
        consider(self.targets.next_due(!self.at_conn_limit()), "dial");
        for conn in self.conns.values() {
            if conn.remote.is_some() {
                consider(Some(conn.next_heartbeat), "heartbeat");
                consider(
                    Some(conn.last_rx + self.config.liveness_timeout),
                    "liveness",
                );
            } else {
                consider(
                    Some(conn.opened + self.config.handshake_timeout),
                    "handshake timeout",
                );
            }
        }
        for gossiper in self.channels.values() {
            consider(gossiper.poll_timeout(), "application");
        }
        let gc = self
            .unreachable_since
            .values()
            .map(|since| *since + self.config.gc_grace)
            .min();
        consider(gc, "peer garbage collection");
        Some(next)
    }

    // ----- status -----

    /// The connections and targets, for `weave status connections` and `weave report`.
    pub fn connection_status(&self) -> Vec<ConnectionStatus> {
        let mut out = Vec::new();
        let mut covered = BTreeSet::new();
        for (id, conn) in &self.conns {
            if let Some(target) = &conn.target {
                covered.insert(target.clone());
            }
            let state = match (&conn.remote, conn.established) {
                (None, _) => ConnState::Connecting,
                (Some(_), false) => ConnState::Pending,
                (Some(_), true) => ConnState::Established,
            };
            out.push(ConnectionStatus {
                conn: Some(*id),
                outbound: conn.outbound,
                address: conn
                    .target
                    .clone()
                    .unwrap_or_else(|| conn.remote_addr.to_string()),
                state,
                error: None,
                retry_at: None,
                encrypted: conn.session.encrypted(),
                peer: conn.remote.as_ref().map(|r| (r.name, r.nickname.clone())),
                software: conn.remote.as_ref().map(|r| r.software.clone()),
            });
        }
        for (key, target) in self.targets.iter() {
            if covered.contains(key) {
                continue;
            }
            let (state, retry_at) = match &target.state {
                TargetState::Connecting => (ConnState::Connecting, None),
                TargetState::Connected => continue, // satisfied by another connection
                TargetState::Waiting { at } if target.last_error.is_some() => {
                    (ConnState::Failed, Some(*at))
                }
                TargetState::Waiting { .. } => (ConnState::Connecting, None),
                TargetState::Stopped => (ConnState::Failed, None),
            };
            out.push(ConnectionStatus {
                conn: None,
                outbound: true,
                address: key.clone(),
                state,
                error: target.last_error.clone(),
                retry_at,
                encrypted: false,
                peer: None,
                software: None,
            });
        }
        out
    }

    /// Whether `target` was named by the user (not discovered).
    pub fn is_direct_target(&self, target: &str) -> bool {
        self.targets
            .get(target)
            .is_some_and(|t| t.origin == Origin::Direct)
    }

    // ----- internals: connections -----

    fn check_connections(&mut self) {
        let now = self.now;
        let mut to_close = Vec::new();
        let mut to_beat = Vec::new();
        for (id, conn) in &self.conns {
            if conn.remote.is_none() {
                if now >= conn.opened + self.config.handshake_timeout {
                    to_close.push((*id, "handshake timed out".to_owned()));
                }
                continue;
            }
            if now >= conn.last_rx + self.config.liveness_timeout {
                let silent = now.duration_since(conn.last_rx).as_secs();
                to_close.push((*id, format!("no heartbeat for {silent}s")));
            } else if now >= conn.next_heartbeat {
                to_beat.push(*id);
            }
        }
        for (id, reason) in to_close {
            self.close(id, reason);
        }
        for id in to_beat {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.next_heartbeat = now + self.config.heartbeat_interval;
            }
            self.send(id, &Message::Heartbeat);
        }
    }

    fn at_conn_limit(&self) -> bool {
        self.config.conn_limit != 0 && self.conns.len() >= self.config.conn_limit
    }

    fn dial_due_targets(&mut self) {
        for target in self.targets.due(self.now, !self.at_conn_limit()) {
            self.actions.push_back(Action::Dial { target });
        }
    }

    /// Closes a connection on our side: tell the peer why, then drop it.
    fn close(&mut self, conn_id: ConnId, reason: String) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        if conn.session.is_established() {
            self.send(
                conn_id,
                &Message::Close {
                    reason: reason.clone(),
                },
            );
        }
        self.actions.push_back(Action::Close { conn: conn_id });
        self.forget_conn(conn_id, reason);
    }

    fn forget_conn(&mut self, conn_id: ConnId, reason: String) {
        let Some(conn) = self.conns.remove(&conn_id) else {
            return;
        };
        self.stats.connections_terminated += 1;
        let random = self.rng.next_u64();
        let peer = conn.remote.as_ref().map(|r| r.name);
        if let Some(remote) = &conn.remote
            && self.by_peer.get(&remote.name) == Some(&conn_id)
        {
            self.by_peer.remove(&remote.name);
            self.topology.set_local_connection(remote.name, None);
            self.schedule_flush();
            let lived = self.now.saturating_duration_since(remote.ready_at);
            self.targets
                .peer_down(remote.name, &reason, lived, self.now, random);
        }
        if let Some(target) = &conn.target {
            let satisfied = peer.is_some_and(|p| self.by_peer.contains_key(&p));
            match (satisfied, peer) {
                (true, Some(p)) => self.targets.connected(target, p),
                _ => {
                    let lived = conn
                        .remote
                        .as_ref()
                        .map(|r| self.now.saturating_duration_since(r.ready_at));
                    if self
                        .targets
                        .get(target)
                        .is_some_and(|t| t.state != TargetState::Stopped)
                    {
                        self.targets
                            .failed(target, reason.clone(), lived, self.now, random);
                    }
                }
            }
        }
        self.events.push_back(Event::ConnectionDown {
            conn: conn_id,
            peer,
            reason,
        });
    }

    fn send(&mut self, conn_id: ConnId, message: &Message) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        self.stats.messages_sent += 1;
        if let Err(err) = conn.session.send(&message.encode()) {
            self.close(conn_id, err.to_string());
            return;
        }
        self.flush_session(conn_id);
    }

    fn flush_session(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        while let Some(bytes) = conn.session.poll_transmit() {
            self.stats.bytes_sent += bytes.len() as u64;
            self.transmits.push_back((conn_id, bytes));
        }
    }

    fn handle_message(&mut self, conn_id: ConnId, message: Message) {
        let from = self
            .conns
            .get(&conn_id)
            .and_then(|c| c.remote.as_ref())
            .map(|r| r.name);
        let Some(from) = from else {
            match message {
                Message::Features(features) => self.handle_features(conn_id, features),
                Message::Close { reason } => self.peer_closed(conn_id, reason),
                _ => self.close(conn_id, "protocol error: message before features".into()),
            }
            return;
        };
        match message {
            Message::Features(_) => {
                self.close(conn_id, "protocol error: features sent twice".into())
            }
            Message::Heartbeat => {}
            Message::Close { reason } => self.peer_closed(conn_id, reason),
            Message::TopologyDigestHash { hash } => {
                if hash != self.topology.digest_hash() {
                    let digest = self.topology.digest();
                    self.send(
                        conn_id,
                        &Message::TopologyDigest {
                            digest,
                            reply: true,
                        },
                    );
                }
            }
            Message::TopologyBroadcast { origin, delta } => {
                // Relay only what was new to us: that stops loops when views (and so
                // trees) differ; what a subtree misses, anti-entropy repairs.
                let relay = self.topology.merge(&delta);
                self.pull_gaps(conn_id, &delta);
                self.after_topology_merge();
                if !relay.is_empty() {
                    self.broadcast_topology(origin, relay, Some(from));
                }
            }
            Message::TopologyDigest { digest, reply } => {
                let missing = self.topology.missing(&digest);
                if !missing.is_empty() {
                    self.send(conn_id, &Message::TopologyRepair { delta: missing });
                }
                if reply {
                    let digest = self.topology.digest();
                    self.send(
                        conn_id,
                        &Message::TopologyDigest {
                            digest,
                            reply: false,
                        },
                    );
                }
            }
            Message::TopologyRepair { delta } => self.merge_topology_repair(delta, from),
            Message::TopologyAnnounce(Announce { records }) => {
                let wanted = self.topology.wants(&records);
                if !wanted.is_empty() {
                    self.send(conn_id, &Message::TopologyPull { records: wanted });
                }
            }
            Message::TopologyPull { records } => {
                let delta = self.topology.pull(&records);
                if !delta.is_empty() {
                    self.send(conn_id, &Message::TopologyRepair { delta });
                }
            }
            Message::Gossip { channel, body } => self.handle_gossip(conn_id, from, channel, body),
            Message::NameCollision { text } => {
                let addr = self.conns.get(&conn_id).map(|c| c.remote_addr);
                self.report_collision(0, String::new(), addr, text);
            }
            Message::Direct { tag, payload } => {
                self.events.push_back(Event::Direct { from, tag, payload })
            }
        }
    }

    fn handle_features(&mut self, conn_id: ConnId, features: Features) {
        let local = self.topology.local_record().incarnation;
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        if features.name == self.config.name {
            let target = conn.target.clone();
            let addr = conn.remote_addr;
            if features.incarnation.uid == local.uid {
                if let Some(target) = &target {
                    self.targets
                        .stop(target, "cannot connect to ourself".into());
                }
                self.close(conn_id, "cannot connect to ourself".into());
            } else {
                let reason = format!(
                    "peer name collision: {} ({}) at {addr} uses our name; give one of them another --name",
                    features.name, features.nickname
                );
                if let Some(target) = &target {
                    self.targets.stop(target, reason.clone());
                }
                self.report_collision(
                    features.incarnation.uid,
                    features.nickname.clone(),
                    Some(addr),
                    reason.clone(),
                );
                self.close(conn_id, reason);
            }
            return;
        }
        let conn_uid = conn.conn_id ^ features.conn_id;
        // One connection per pair of peers: both ends keep the same one.
        if let Some(&other_id) = self.by_peer.get(&features.name) {
            let other = self.conns.get(&other_id).and_then(|c| c.remote.as_ref());
            let verdict = match other {
                // A peer that restarted: its new incarnation replaces the old one. An
                // older incarnation never comes back, so one showing up while a newer is
                // connected is a second live peer with the same name.
                Some(other) if other.incarnation != features.incarnation => {
                    if features.incarnation > other.incarnation {
                        Duplicate::KeepNew
                    } else {
                        Duplicate::Collision(other.nickname.clone())
                    }
                }
                Some(other) if conn_uid >= other.conn_uid => Duplicate::KeepOld,
                _ => Duplicate::KeepNew,
            };
            match verdict {
                Duplicate::KeepNew => {
                    // The old connection's target is satisfied by the new one.
                    self.by_peer.remove(&features.name);
                    if let Some(target) =
                        self.conns.get_mut(&other_id).and_then(|c| c.target.take())
                    {
                        self.targets.connected(&target, features.name);
                    }
                    self.close(other_id, "duplicate connection".into());
                }
                Duplicate::KeepOld => {
                    if let Some(target) = self.conns.get_mut(&conn_id).and_then(|c| c.target.take())
                    {
                        self.targets.connected(&target, features.name);
                    }
                    self.close(conn_id, "duplicate connection".into());
                    return;
                }
                Duplicate::Collision(other_nickname) => {
                    let addr = self.conns.get(&conn_id).map(|c| c.remote_addr);
                    let text = format!(
                        "{COLLISION}: {} ({}) and {other_nickname} both use the name {}; give one of them another --name",
                        features.nickname,
                        addr.map(|a| a.ip().to_string()).unwrap_or_default(),
                        features.name,
                    );
                    self.report_collision(
                        features.incarnation.uid,
                        features.nickname.clone(),
                        addr,
                        text.clone(),
                    );
                    if let Some(target) = self.conns.get_mut(&conn_id).and_then(|c| c.target.take())
                    {
                        self.targets.stop(&target, text.clone());
                    }
                    // Tell both: the one we refuse (in the close) and the one we keep.
                    self.send(other_id, &Message::NameCollision { text: text.clone() });
                    self.close(conn_id, text);
                    return;
                }
            }
        }
        let limit = self.config.conn_limit;
        let Some(conn) = self.conns.get_mut(&conn_id) else {
            return;
        };
        if !conn.outbound && limit != 0 && self.by_peer.len() >= limit {
            self.close(conn_id, format!("too many connections ({limit})"));
            return;
        }
        conn.established = self.config.auto_establish;
        conn.remote = Some(Remote {
            name: features.name,
            nickname: features.nickname.clone(),
            incarnation: features.incarnation,
            conn_uid,
            listen_port: features.listen_port,
            software: features.software,
            ready_at: self.now,
        });
        let (remote_addr, outbound, target) =
            (conn.remote_addr, conn.outbound, conn.target.clone());
        let sleeve_keys = conn.session.sleeve_keys();
        self.by_peer.insert(features.name, conn_id);
        if let Some(target) = &target {
            self.targets.connected(target, features.name);
        }
        self.publish_connection(conn_id);
        // Anti-entropy with the new neighbour: each side sends what the other lacks.
        let digest = self.topology.digest();
        self.send(
            conn_id,
            &Message::TopologyDigest {
                digest,
                reply: true,
            },
        );
        self.send_channel_digests(conn_id);
        self.events.push_back(Event::ConnectionUp {
            conn: conn_id,
            peer: features.name,
            nickname: features.nickname,
            remote_addr,
            outbound,
            conn_uid,
            sleeve_keys,
        });
    }

    /// The peer closed the connection and told us why.
    fn peer_closed(&mut self, conn_id: ConnId, reason: String) {
        if reason.starts_with(COLLISION) {
            // The peer found we share a name with another live peer: report it here
            // too, and do not keep dialling into the collision.
            let (uid, addr) = (0, self.conns.get(&conn_id).map(|c| c.remote_addr));
            self.report_collision(uid, String::new(), addr, reason.clone());
            if let Some(target) = self.conns.get_mut(&conn_id).and_then(|c| c.target.take()) {
                self.targets.stop(&target, reason.clone());
            }
        }
        self.forget_conn(conn_id, format!("peer closed: {reason}"));
    }

    /// Puts our view of a ready connection into our topology record.
    fn publish_connection(&mut self, conn_id: ConnId) {
        let Some(conn) = self.conns.get(&conn_id) else {
            return;
        };
        let Some(remote) = &conn.remote else { return };
        let info = ConnectionInfo {
            addr: Some(wire::dialable(
                conn.remote_addr,
                conn.outbound,
                remote.listen_port,
            )),
            outbound: conn.outbound,
            established: conn.established,
        };
        self.topology.set_local_connection(remote.name, Some(info));
        self.schedule_flush();
    }

    fn report_collision(
        &mut self,
        uid: PeerUid,
        nickname: String,
        addr: Option<SocketAddr>,
        text: String,
    ) {
        if !self.collisions.contains(&text) {
            self.collisions.push(text);
        }
        self.events.push_back(Event::NameCollision {
            uid,
            nickname,
            addr,
        });
    }

    // ----- internals: topology -----

    fn schedule_flush(&mut self) {
        if self.flush_at.is_none() {
            self.flush_at = Some(self.now + self.config.topology_flush_delay);
        }
    }

    /// Sends a topology delta down `origin`'s broadcast tree (except back to `from`).
    fn broadcast_topology(
        &mut self,
        origin: PeerName,
        delta: TopologyDelta,
        from: Option<PeerName>,
    ) {
        let hops = self
            .routes
            .broadcast_hops(&self.topology, RouteKind::Gossip, origin)
            .to_vec();
        let message = Message::TopologyBroadcast { origin, delta };
        for hop in hops {
            if Some(hop) != from
                && let Some(&conn) = self.by_peer.get(&hop)
            {
                self.send(conn, &message);
            }
        }
    }

    fn merge_topology_repair(&mut self, delta: TopologyDelta, from: PeerName) {
        let novel = self.topology.merge(&delta);
        if let Some(&conn) = self.by_peer.get(&from) {
            self.pull_gaps(conn, &delta);
        }
        self.after_topology_merge();
        if novel.is_empty() {
            return;
        }
        // Tell the other neighbours what we now have; they pull what they lack.
        let records = self.topology.announcement(&novel);
        let message = Message::TopologyAnnounce(Announce { records });
        let neighbours: Vec<(PeerName, ConnId)> =
            self.by_peer.iter().map(|(p, c)| (*p, *c)).collect();
        for (peer, conn) in neighbours {
            if peer != from {
                self.send(conn, &message);
            }
        }
    }

    /// A delta skipped versions we never saw (lost to a broadcast tree that changed under
    /// it): ask the neighbour that sent it for the rest at once, rather than waiting for
    /// periodic anti-entropy.
    fn pull_gaps(&mut self, conn_id: ConnId, delta: &TopologyDelta) {
        let gaps = self.topology.gaps(delta);
        if !gaps.is_empty() {
            self.send(conn_id, &Message::TopologyPull { records: gaps });
        }
    }

    fn after_topology_merge(&mut self) {
        while let Some(notice) = self.topology.poll_notice() {
            match notice {
                TopologyNotice::NameCollision { uid, nickname } => {
                    let text = format!(
                        "peer name collision: another live peer ({nickname}) uses our name {}; give one of them another --name",
                        self.config.name
                    );
                    self.report_collision(uid, nickname, None, text);
                }
            }
        }
        // We may have had to move past an older incarnation of ourselves.
        if self.topology.local_record().incarnation.generation != self.config.generation {
            self.schedule_flush();
        }
    }

    /// Runs after every input: notices topology changes and schedules recalculation.
    fn after_input(&mut self) {
        let epoch = self.topology.epoch();
        if epoch != self.last_epoch {
            self.last_epoch = epoch;
            if self.recalc_at.is_none() {
                self.recalc_at = Some(self.now + self.config.recalc_delay);
            }
        }
    }

    /// Recomputes reachability: updates the live peer set, forgets peers unreachable
    /// for longer than the grace period, and refreshes discovered targets.
    fn recalculate(&mut self) {
        let now = self.now;
        let reachable = self.routes.reachable(&self.topology, RouteKind::Gossip);
        for record in self.topology.records() {
            if !reachable.contains(&record.name) {
                self.unreachable_since.entry(record.name).or_insert(now);
            }
        }
        self.unreachable_since
            .retain(|name, _| !reachable.contains(name) && self.topology.record(*name).is_some());
        let keep: BTreeSet<PeerName> = self
            .unreachable_since
            .iter()
            .filter(|(_, since)| **since + self.config.gc_grace > now)
            .map(|(name, _)| *name)
            .collect();
        for gone in self.topology.remove_unreachable(&reachable, &keep) {
            self.unreachable_since.remove(&gone);
        }
        let live: BTreeMap<PeerName, PeerSummary> = self
            .topology
            .records()
            .filter(|r| reachable.contains(&r.name))
            .map(|r| {
                (
                    r.name,
                    PeerSummary {
                        name: r.name,
                        nickname: r.nickname.clone(),
                        uid: r.incarnation.uid,
                    },
                )
            })
            .collect();
        let mut changed = false;
        for (name, summary) in &live {
            if self.live.get(name) != Some(summary) {
                changed = true;
                self.events.push_back(Event::PeerAdded(summary.clone()));
            }
        }
        let mut lost = false;
        for name in self.live.keys() {
            if !live.contains_key(name) {
                changed = true;
                lost = true;
                self.events.push_back(Event::PeerRemoved(*name));
            }
        }
        if lost && self.urgent_sync_at.is_none() {
            // Peers vanished: a partition or a crash. Broadcast trees computed from views
            // that still show the lost links drop some of the news, so push anti-entropy
            // to every neighbour (a hash each; a digest exchange only where views differ).
            let earliest = self
                .last_urgent_sync
                .map_or(now, |last| last + URGENT_SYNC_INTERVAL);
            self.urgent_sync_at = Some(earliest.max(now));
        }
        self.live = live;
        self.last_epoch = self.topology.epoch();
        self.events.push_back(Event::TopologyChanged);
        if changed {
            let names: Vec<String> = self.channels.keys().cloned().collect();
            for name in names {
                self.call_channel(&name, |gossiper, ctx| gossiper.on_peers_changed(ctx));
            }
        }
        if self.config.discovery {
            // Formatting every address on every recalculation showed up in profiles at
            // a thousand peers: only touch the targets when the set changed.
            let addresses = self.discovered_addresses();
            if addresses != self.discovered {
                let keys: BTreeSet<String> = addresses.iter().map(SocketAddr::to_string).collect();
                self.targets.set_discovered(&keys, now);
                self.discovered = addresses;
            }
        }
    }

    /// Addresses at which other peers reach peers we have no connection to.
    fn discovered_addresses(&self) -> BTreeSet<SocketAddr> {
        let mut addresses = BTreeSet::new();
        for record in self.topology.records() {
            for (remote, info) in record.connections() {
                if remote == self.config.name || self.by_peer.contains_key(&remote) {
                    continue;
                }
                if let Some(addr) = info.addr {
                    addresses.insert(addr);
                }
            }
        }
        addresses
    }

    /// Periodic anti-entropy with one random neighbour (a hash in steady state, so it
    /// can be frequent). on every channel.
    fn anti_entropy_round(&mut self) {
        if self.by_peer.is_empty() {
            return;
        }
        let index = (self.rng.next_u64() % self.by_peer.len() as u64) as usize;
        let Some((_, &conn)) = self.by_peer.iter().nth(index) else {
            return;
        };
        // Usually nothing differs: a hash settles that in 8 bytes.
        let hash = self.topology.digest_hash();
        self.send(conn, &Message::TopologyDigestHash { hash });
        self.send_channel_digests(conn);
    }

    // ----- internals: application gossip -----

    /// Sends every channel's digest to `conn`, asking for one back (anti-entropy: each
    /// side then sends what the other lacks).
    fn send_channel_digests(&mut self, conn: ConnId) {
        let digests: Vec<(String, Vec<u8>)> = self
            .channels
            .iter()
            .map(|(n, g)| (n.clone(), g.digest()))
            .collect();
        for (channel, payload) in digests {
            self.send(
                conn,
                &Message::Gossip {
                    channel,
                    body: GossipBody::Digest {
                        payload,
                        reply: true,
                    },
                },
            );
        }
    }

    fn call_channel<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut dyn Gossiper, &mut GossipContext<'_>) -> R,
    ) -> Option<R> {
        let gossiper = self.channels.get_mut(name)?;
        let mut outbox = Vec::new();
        let mut ctx = GossipContext::new(
            self.now,
            self.config.name,
            &self.live,
            &mut self.rng,
            &mut outbox,
        );
        let result = f(gossiper.as_mut(), &mut ctx);
        for send in outbox {
            self.dispatch(name, send, None);
        }
        Some(result)
    }

    /// Sends what an application asked for (`except` is the neighbour the triggering
    /// message came from).
    fn dispatch(&mut self, channel: &str, send: GossipSend, except: Option<PeerName>) {
        match send {
            GossipSend::Broadcast(payload) => {
                let body = GossipBody::Broadcast {
                    origin: self.config.name,
                    payload,
                };
                self.relay_broadcast(channel, self.config.name, body, except);
            }
            GossipSend::Unicast(dst, payload) => {
                let body = GossipBody::Unicast {
                    src: self.config.name,
                    dst,
                    payload,
                };
                self.forward_unicast(channel, dst, body);
            }
            GossipSend::Neighbours(payload) => {
                let mut neighbours: Vec<ConnId> = self
                    .by_peer
                    .iter()
                    .filter(|(p, _)| Some(**p) != except)
                    .map(|(_, c)| *c)
                    .collect();
                let fanout = fanout(self.live.len()).min(neighbours.len());
                // Partial Fisher-Yates: the first `fanout` are a uniform random subset.
                for i in 0..fanout {
                    let j = i + (self.rng.next_u64() % (neighbours.len() - i) as u64) as usize;
                    neighbours.swap(i, j);
                }
                let message = Message::Gossip {
                    channel: channel.to_owned(),
                    body: GossipBody::Delta { payload },
                };
                for conn in neighbours.into_iter().take(fanout) {
                    self.send(conn, &message);
                }
            }
        }
    }

    fn relay_broadcast(
        &mut self,
        channel: &str,
        origin: PeerName,
        body: GossipBody,
        except: Option<PeerName>,
    ) {
        let hops = self
            .routes
            .broadcast_hops(&self.topology, RouteKind::Gossip, origin)
            .to_vec();
        let message = Message::Gossip {
            channel: channel.to_owned(),
            body,
        };
        for hop in hops {
            if Some(hop) != except
                && let Some(&conn) = self.by_peer.get(&hop)
            {
                self.send(conn, &message);
            }
        }
    }

    fn forward_unicast(&mut self, channel: &str, dst: PeerName, body: GossipBody) {
        let Some(hop) = self.routes.next_hop(&self.topology, RouteKind::Gossip, dst) else {
            tracing::debug!(%dst, channel, "no route for gossip unicast; dropped");
            return;
        };
        if let Some(&conn) = self.by_peer.get(&hop) {
            self.send(
                conn,
                &Message::Gossip {
                    channel: channel.to_owned(),
                    body,
                },
            );
        }
    }

    fn handle_gossip(
        &mut self,
        conn_id: ConnId,
        from: PeerName,
        channel: String,
        body: GossipBody,
    ) {
        if !self.channels.contains_key(&channel) {
            // A channel we do not run: still relay what is addressed past us, so peers
            // with different applications interoperate.
            match body {
                GossipBody::Broadcast { origin, .. } => {
                    self.relay_broadcast(&channel, origin, body, Some(from))
                }
                GossipBody::Unicast { dst, .. } if dst != self.config.name => {
                    self.forward_unicast(&channel, dst, body)
                }
                _ => {}
            }
            return;
        }
        match body {
            GossipBody::Broadcast { origin, payload } => {
                let result =
                    self.call_channel(&channel, |g, ctx| g.merge_received(ctx, origin, &payload));
                match result {
                    Some(Ok(Some(relay))) => {
                        let body = GossipBody::Broadcast {
                            origin,
                            payload: relay,
                        };
                        self.relay_broadcast(&channel, origin, body, Some(from));
                    }
                    Some(Err(err)) => self.gossip_rejected(&channel, from, err.to_string()),
                    _ => {}
                }
            }
            GossipBody::Unicast { src, dst, payload } => {
                if dst == self.config.name {
                    let result =
                        self.call_channel(&channel, |g, ctx| g.on_unicast(ctx, src, &payload));
                    if let Some(Err(err)) = result {
                        self.gossip_rejected(&channel, src, err.to_string());
                    }
                } else {
                    self.forward_unicast(&channel, dst, GossipBody::Unicast { src, dst, payload });
                }
            }
            GossipBody::Delta { payload } | GossipBody::Repair { payload } => {
                let result =
                    self.call_channel(&channel, |g, ctx| g.merge_delta(ctx, from, &payload));
                match result {
                    Some(Ok(Some(novel))) => {
                        self.dispatch(&channel, GossipSend::Neighbours(novel), Some(from))
                    }
                    Some(Err(err)) => self.gossip_rejected(&channel, from, err.to_string()),
                    _ => {}
                }
            }
            GossipBody::Digest { payload, reply } => {
                let (missing, digest) = {
                    let gossiper = &self.channels[&channel];
                    (gossiper.missing(&payload), reply.then(|| gossiper.digest()))
                };
                if let Some(missing) = missing {
                    let body = GossipBody::Repair { payload: missing };
                    self.send(
                        conn_id,
                        &Message::Gossip {
                            channel: channel.clone(),
                            body,
                        },
                    );
                }
                if let Some(payload) = digest {
                    let body = GossipBody::Digest {
                        payload,
                        reply: false,
                    };
                    self.send(conn_id, &Message::Gossip { channel, body });
                }
            }
        }
    }

    fn gossip_rejected(&mut self, channel: &str, from: PeerName, error: String) {
        self.stats.gossip_rejected += 1;
        tracing::warn!(channel, %from, %error, "gossip rejected");
        self.events.push_back(Event::GossipRejected {
            channel: channel.to_owned(),
            from,
            error,
        });
    }
}

/// One line of `weave status connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    pub conn: Option<ConnId>,
    pub outbound: bool,
    pub address: String,
    pub state: ConnState,
    pub error: Option<String>,
    pub retry_at: Option<Instant>,
    pub encrypted: bool,
    pub peer: Option<(PeerName, String)>,
    pub software: Option<String>,
}

/// Connection states as `weave status` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnState {
    /// Dialling, or in the handshake.
    Connecting,
    /// Handshake done, the data path not yet confirmed.
    Pending,
    Established,
    /// The last attempt failed; see the error and retry time.
    Failed,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Pending => "pending",
            Self::Established => "established",
            Self::Failed => "failed",
        }
    }
}

/// How a close reason (and status) starts when two live peers share a name.
const COLLISION: &str = "peer name collision";

/// What to do with a second connection to a peer we are connected to.
enum Duplicate {
    KeepNew,
    KeepOld,
    /// Two live peers with one name; the nickname of the one we keep.
    Collision(String),
}

/// At most one anti-entropy push to all neighbours per this interval.
const URGENT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How many neighbours neighbour gossip goes to: 2·log2(peers), as Weave Mesh 0.4.
fn fanout(peers: usize) -> usize {
    let log2 = usize::BITS - peers.max(1).leading_zeros();
    (2 * log2 as usize).max(1)
}

/// `base` scaled by a factor in [0.5, 1.5) drawn from `random`.
fn jittered(base: Duration, random: u64) -> Duration {
    base.mul_f64(0.5 + (random % 1_000_000) as f64 / 1_000_000.0)
}
