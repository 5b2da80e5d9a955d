//! The routes the forwarder uses, as a snapshot the daemon builds from the mesh.

use std::collections::HashMap;

use weave_mesh::PeerName;

/// Unicast next hops and per-origin broadcast next hops, as seen from `local`.
///
/// Built by the daemon from the mesh's route computation (BFS with each level sorted
/// by peer name, over established, symmetric connections) and swapped in whole with
/// [`Forwarder::set_routes`](super::Forwarder::set_routes). Lookups only: the order of
/// each broadcast list is kept as given, and nothing else is iterated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSnapshot {
    local: PeerName,
    unicast: HashMap<PeerName, PeerName>,
    broadcast: HashMap<PeerName, Box<[PeerName]>>,
    /// For each next hop of our own floods, every peer our floods reach through it (the
    /// next hop included), where known: what lets the forwarder skip a sleeve copy that
    /// only fast-path peers would receive.
    own_flood_reach: HashMap<PeerName, Box<[PeerName]>>,
}

impl RouteSnapshot {
    /// No routes: nothing reachable.
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            unicast: HashMap::new(),
            broadcast: HashMap::new(),
            own_flood_reach: HashMap::new(),
        }
    }

    /// From `(destination, next hop)` pairs and `(origin, next hops)` lists. The
    /// broadcast list for `local` itself is where our own floods go (normally all our
    /// established neighbours).
    pub fn from_parts(
        local: PeerName,
        unicast: impl IntoIterator<Item = (PeerName, PeerName)>,
        broadcast: impl IntoIterator<Item = (PeerName, Vec<PeerName>)>,
    ) -> Self {
        Self {
            local,
            unicast: unicast.into_iter().collect(),
            broadcast: broadcast
                .into_iter()
                .map(|(origin, hops)| (origin, hops.into_boxed_slice()))
                .collect(),
            own_flood_reach: HashMap::new(),
        }
    }

    pub fn set_unicast(&mut self, dst: PeerName, next_hop: PeerName) {
        self.unicast.insert(dst, next_hop);
    }

    pub fn set_broadcast(&mut self, origin: PeerName, next_hops: Vec<PeerName>) {
        self.broadcast.insert(origin, next_hops.into_boxed_slice());
    }

    /// Records that our own floods sent to `next_hop` reach exactly `peers` (which
    /// includes `next_hop`): its subtree in our broadcast tree.
    pub fn set_own_flood_reach(&mut self, next_hop: PeerName, peers: Vec<PeerName>) {
        self.own_flood_reach
            .insert(next_hop, peers.into_boxed_slice());
    }

    /// The peers our own floods reach through `next_hop`; `None` if not known.
    pub fn own_flood_reach(&self, next_hop: PeerName) -> Option<&[PeerName]> {
        self.own_flood_reach.get(&next_hop).map(|peers| &**peers)
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    /// Where to send a frame for `dst`; `None` if unreachable (or `dst` is us).
    pub fn unicast_next_hop(&self, dst: PeerName) -> Option<PeerName> {
        if dst == self.local {
            return None;
        }
        self.unicast.get(&dst).copied()
    }

    /// Where to pass on a flood that `origin` started; empty if nowhere.
    pub fn broadcast_next_hops(&self, origin: PeerName) -> &[PeerName] {
        self.broadcast.get(&origin).map_or(&[], |hops| hops)
    }
}
