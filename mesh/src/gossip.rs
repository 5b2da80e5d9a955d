//! Gossip channels: how applications (IPAM, DNS) replicate their state over the mesh.
//!
//! An application registers one [`Gossiper`] per channel with the [`crate::Mesh`]. Its
//! state is a CRDT: the three merges below are associative, commutative and idempotent, so
//! updates may arrive late, twice or out of order. Updates are deltas: a change costs bytes
//! in proportion to the change, not to the cluster (Weave gossiped whole states, which is
//! what broke it at 150-300 hosts).
//!
//! How updates travel:
//! - [`GossipSend::Broadcast`]: to every reachable peer, once each in a stable topology,
//!   along the sender's broadcast tree. Each hop calls [`Gossiper::merge_received`] and
//!   relays what it returns.
//! - [`GossipSend::Unicast`]: to one peer, relayed hop by hop if it is not a neighbour;
//!   the destination calls [`Gossiper::on_unicast`].
//! - [`GossipSend::Neighbours`]: to a few random neighbours (2·log2 N), who call
//!   [`Gossiper::merge_delta`] and pass on what was new to them in the same way.
//! - Anti-entropy: on every new connection and periodically with one random neighbour, the
//!   mesh exchanges [`Gossiper::digest`]s and sends each side only what it lacks
//!   ([`Gossiper::missing`]), merged with [`Gossiper::merge_delta`]; what that merge
//!   returns is broadcast, so a healed partition spreads in one sweep.
//!
//! A merge that fails (a conflict, a malformed update) is logged and counted; it does not
//! tear down the connection it arrived on (Weave's did, turning a data conflict into a
//! partition and a reconnect storm).

use std::any::Any;
use std::collections::BTreeMap;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::peer::{PeerName, PeerUid};

/// What applications know of a live peer in the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    pub name: PeerName,
    pub nickname: String,
    pub uid: PeerUid,
}

/// A message an application asks the mesh to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipSend {
    /// To every reachable peer along our broadcast tree.
    Broadcast(Vec<u8>),
    /// To one peer, relayed by intermediate peers when it is not a neighbour.
    Unicast(PeerName, Vec<u8>),
    /// To a random subset of neighbours, which relay what is new to them.
    Neighbours(Vec<u8>),
}

/// A failed merge or a message the application could not use. Logged and counted by the
/// mesh, never fatal to the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    #[error("malformed gossip: {0}")]
    Malformed(String),
    #[error("conflicting gossip: {0}")]
    Conflict(String),
}

/// What an application's callbacks may use: the time, who we are, the live peers, a
/// seeded random source, and an outbox for messages to send.
pub struct GossipContext<'a> {
    now: Instant,
    local: PeerName,
    peers: &'a BTreeMap<PeerName, PeerSummary>,
    rng: &'a mut ChaCha8Rng,
    outbox: &'a mut Vec<GossipSend>,
}

impl<'a> GossipContext<'a> {
    pub fn new(
        now: Instant,
        local: PeerName,
        peers: &'a BTreeMap<PeerName, PeerSummary>,
        rng: &'a mut ChaCha8Rng,
        outbox: &'a mut Vec<GossipSend>,
    ) -> Self {
        Self {
            now,
            local,
            peers,
            rng,
            outbox,
        }
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    /// Our own peer name.
    pub fn local(&self) -> PeerName {
        self.local
    }

    /// The peers currently in the topology (reachable from us), ourselves included.
    pub fn peers(&self) -> &BTreeMap<PeerName, PeerSummary> {
        self.peers
    }

    pub fn is_live(&self, peer: PeerName) -> bool {
        self.peers.contains_key(&peer)
    }

    /// A random number from the mesh's seeded generator (deterministic in simulation).
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    pub fn broadcast(&mut self, update: Vec<u8>) {
        self.outbox.push(GossipSend::Broadcast(update));
    }

    pub fn unicast(&mut self, to: PeerName, message: Vec<u8>) {
        self.outbox.push(GossipSend::Unicast(to, message));
    }

    pub fn gossip_neighbours(&mut self, update: Vec<u8>) {
        self.outbox.push(GossipSend::Neighbours(update));
    }
}

/// One application's replicated state on one channel. See the module docs for when each
/// method is called. All byte slices come from the network: decode them totally and
/// answer bad input with [`GossipError::Malformed`], never a panic.
pub trait Gossiper: Any {
    /// Merge an update `origin` broadcast. Return what to relay onward along `origin`'s
    /// broadcast tree: the part that was new to us, or `None` to stop.
    fn merge_received(
        &mut self,
        ctx: &mut GossipContext<'_>,
        origin: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError>;

    /// Merge neighbour gossip or an anti-entropy answer. Return only what changed here
    /// (`None` if nothing did), which the mesh passes on.
    fn merge_delta(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError>;

    /// A message `from` addressed to us alone.
    fn on_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        message: &[u8],
    ) -> Result<(), GossipError>;

    /// Our complete state, in a form `merge_delta` accepts.
    fn complete(&self) -> Vec<u8>;

    /// A small summary of our state for anti-entropy. The default is a hash of
    /// [`Self::complete`], which only tells "same or different"; states with per-origin
    /// versions should send those so [`Self::missing`] can send just the difference.
    fn digest(&self) -> Vec<u8> {
        fnv1a(&self.complete()).to_be_bytes().to_vec()
    }

    /// What a neighbour whose digest is `their_digest` lacks of our state, or `None` if
    /// nothing. The default sends our complete state when the digests differ.
    fn missing(&self, their_digest: &[u8]) -> Option<Vec<u8>> {
        (self.digest() != their_digest).then(|| self.complete())
    }

    /// Peers joined or left the topology (`ctx.peers()` is the new set).
    fn on_peers_changed(&mut self, _ctx: &mut GossipContext<'_>) {}

    /// Called when the deadline from [`Self::poll_timeout`] has passed.
    fn handle_timeout(&mut self, _ctx: &mut GossipContext<'_>) {}

    /// When the application next wants [`Self::handle_timeout`], if ever.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// 64-bit FNV-1a: a cheap, stable digest for "same or different" comparisons. Not
/// collision resistant; do not use it where an adversary chooses the input and a
/// collision would matter (the sessions are authenticated, so gossip is not such input).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Owns what a [`GossipContext`] borrows, for driving a [`Gossiper`] without a mesh
/// (unit tests of applications, and the pair drivers in their crates).
pub struct GossipHarness {
    pub local: PeerName,
    pub peers: BTreeMap<PeerName, PeerSummary>,
    pub rng: ChaCha8Rng,
    pub outbox: Vec<GossipSend>,
}

impl GossipHarness {
    pub fn new(local: PeerName, seed: u64) -> Self {
        let mut peers = BTreeMap::new();
        peers.insert(
            local,
            PeerSummary {
                name: local,
                nickname: format!("{local}"),
                uid: seed,
            },
        );
        Self {
            local,
            peers,
            rng: ChaCha8Rng::seed_from_u64(seed),
            outbox: Vec::new(),
        }
    }

    /// Adds a live peer.
    pub fn add_peer(&mut self, name: PeerName, nickname: &str) {
        self.peers.insert(
            name,
            PeerSummary {
                name,
                nickname: nickname.to_owned(),
                uid: name.as_u64(),
            },
        );
    }

    pub fn remove_peer(&mut self, name: PeerName) {
        self.peers.remove(&name);
    }

    pub fn ctx(&mut self, now: Instant) -> GossipContext<'_> {
        GossipContext::new(
            now,
            self.local,
            &self.peers,
            &mut self.rng,
            &mut self.outbox,
        )
    }

    /// Takes the messages sent so far.
    pub fn drain(&mut self) -> Vec<GossipSend> {
        std::mem::take(&mut self.outbox)
    }
}
