//! The switch: MAC learning and, for each frame, where its copies go.
//!
//! Frames come from two sides. From our TAP ([`Forwarder::handle_tap_frame`]): the
//! source MAC is learned as local, then a frame for a MAC on a remote peer goes to that
//! peer's unicast next hop, a frame for a local MAC is left to the bridge, and
//! broadcast, multicast and unknown unicast go down our broadcast tree. From the sleeve
//! ([`Forwarder::handle_sleeve_frame`]): a frame tagged for another peer is relayed
//! towards it; a frame tagged for us teaches us its source MAC, is injected into our
//! TAP and, unless it was for a local MAC, continues down the origin's broadcast tree,
//! each copy re-tagged for the next hop it goes to. In a stable topology every peer
//! gets a flood exactly once (the trees are computed identically everywhere by the
//! mesh); the hop limit in each tag bounds loops while peers disagree.
//!
//! The forwarder decides; the caller does. Each call fills a caller-owned [`Decision`]
//! (reused, so no allocation once warm) and counts what it decided, per peer.

mod fdb;
mod routes;

pub use fdb::{Mac, Owner};
pub use routes::RouteSnapshot;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use weave_mesh::PeerName;

use crate::Error;
use crate::sleeve::FrameTag;
use fdb::{Fdb, Learned};

/// Tunables; the defaults are Weave's where Weave had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// A MAC not heard from for this long is forgotten (Weave: 10 min).
    pub mac_ttl: Duration,
    /// An entry's timestamp is refreshed at most this often (Weave: 1 min).
    pub mac_refresh: Duration,
    /// Cap on learned MACs, so a flood of made-up source addresses cannot grow the
    /// table without bound; past it new MACs are not learned (their frames flood).
    pub max_macs: usize,
    /// Hops a frame we send may take. Bounds loops while routes disagree.
    pub hop_limit: u8,
    /// Cap on queued events; beyond it events are counted as lost.
    pub max_events: usize,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            mac_ttl: Duration::from_secs(600),
            mac_refresh: Duration::from_secs(60),
            max_macs: 65_536,
            hop_limit: 64,
            max_events: 1024,
        }
    }
}

/// One copy of a frame to send: to `next_hop`, carrying `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Output {
    pub next_hop: PeerName,
    pub tag: FrameTag,
}

/// Why a frame, or one copy of it, was not sent. Also the counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    Malformed,
    /// For 01:80:c2:00:00:0x (STP, LACP, LLDP...), which a bridge must not forward.
    LinkLocalControl,
    /// Multicast source MAC, which no station may use.
    InvalidSource,
    /// From our TAP for a MAC on our own bridge: the bridge delivers it.
    LocalDestination,
    /// No route to the frame's destination peer.
    NoRoute,
    /// Tagged with us as source but arriving from the network.
    LoopedBack,
    /// A relay would send it back where it came from: the peers' routes disagree.
    RouteLoop,
    /// Its hop limit ran out before it could be relayed.
    HopLimit,
    /// For (or flooded by) a peer the kernel fast path reaches: the kernel carries
    /// the frame, so the sleeve's copy would be a duplicate.
    FastPath,
}

impl DropReason {
    pub const ALL: [Self; 9] = [
        Self::Malformed,
        Self::LinkLocalControl,
        Self::InvalidSource,
        Self::LocalDestination,
        Self::NoRoute,
        Self::LoopedBack,
        Self::RouteLoop,
        Self::HopLimit,
        Self::FastPath,
    ];

    /// A short snake_case label, for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::LinkLocalControl => "link_local_control",
            Self::InvalidSource => "invalid_source",
            Self::LocalDestination => "local_destination",
            Self::NoRoute => "no_route",
            Self::LoopedBack => "looped_back",
            Self::RouteLoop => "route_loop",
            Self::HopLimit => "hop_limit",
            Self::FastPath => "fast_path",
        }
    }
}

/// Counts per [`DropReason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn add(&mut self, reason: DropReason) {
        self.0[reason as usize] += 1;
    }
}

/// What the forwarder decided for one frame. Reuse one across calls: each call clears
/// it, and `outputs` keeps its capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Write the frame to our TAP.
    pub inject: bool,
    /// Copies to send, each to its next hop with its tag.
    pub outputs: Vec<Output>,
    /// Why the frame, or a copy it would otherwise have had, was dropped.
    pub dropped: Option<DropReason>,
}

impl Decision {
    pub fn new() -> Self {
        Self::default()
    }

    fn clear(&mut self) {
        self.inject = false;
        self.outputs.clear();
        self.dropped = None;
    }
}

/// What the forwarder counted for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Frames from our TAP sent with this peer as next hop.
    pub forwarded_frames: u64,
    pub forwarded_bytes: u64,
    /// Frames from elsewhere relayed with this peer as next hop.
    pub relayed_frames: u64,
    pub relayed_bytes: u64,
    /// Frames in datagrams this peer sent us.
    pub received_frames: u64,
    pub received_bytes: u64,
    /// Frames this peer captured that we injected into our TAP.
    pub injected_frames: u64,
    pub injected_bytes: u64,
    /// Frames this peer sent us that we dropped (wholly or a copy), by reason.
    pub dropped: DropCounts,
}

/// What the forwarder counted for frames from our TAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    pub captured_frames: u64,
    pub captured_bytes: u64,
    pub dropped: DropCounts,
}

/// Table-wide figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// MACs in the table (some may have expired and await the next sweep).
    pub macs: usize,
    /// New MACs not learned because the table was full.
    pub mac_table_full: u64,
    /// Events dropped because the queue was full.
    pub events_lost: u64,
}

/// Something worth logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A MAC seen for the first time (or again after it expired).
    MacDiscovered { mac: Mac, owner: Owner },
    /// A MAC claimed by another owner than the one we knew: the latest claim wins
    /// (the container moved, or two claim one address).
    MacMoved { mac: Mac, from: Owner, to: Owner },
}

/// The forwarding core of one peer.
#[derive(Debug)]
pub struct Forwarder {
    local: PeerName,
    config: ForwarderConfig,
    routes: RouteSnapshot,
    /// Peers the kernel fast path reaches, sorted (see [`Forwarder::set_fast_peers`]).
    fast: Vec<PeerName>,
    /// Where our own floods go over the sleeve: our broadcast next hops, less those
    /// whose whole subtree the fast path reaches (see [`Forwarder::set_fast_peers`]).
    own_flood_hops: Vec<PeerName>,
    fdb: Fdb,
    next_sweep: Option<Instant>,
    events: VecDeque<Event>,
    events_lost: u64,
    tap: TapCounters,
    peers: BTreeMap<PeerName, PeerCounters>,
}

const ETHERNET_HEADER_LEN: usize = 14;

fn macs(frame: &[u8]) -> Option<(Mac, Mac)> {
    let header = frame.get(..ETHERNET_HEADER_LEN)?;
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&header[..6]);
    src.copy_from_slice(&header[6..12]);
    Some((Mac(dst), Mac(src)))
}

impl Forwarder {
    /// A forwarder for peer `local`, with no routes yet (everything but local
    /// delivery is dropped as [`DropReason::NoRoute`] or goes nowhere).
    pub fn new(local: PeerName, config: ForwarderConfig) -> Self {
        Self {
            local,
            fdb: Fdb::new(config.max_macs),
            config,
            routes: RouteSnapshot::new(local),
            fast: Vec::new(),
            own_flood_hops: Vec::new(),
            next_sweep: None,
            events: VecDeque::new(),
            events_lost: 0,
            tap: TapCounters::default(),
            peers: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    pub fn config(&self) -> &ForwarderConfig {
        &self.config
    }

    /// Swaps in the routes the mesh computed. The snapshot must be for this peer.
    pub fn set_routes(&mut self, routes: RouteSnapshot) -> Result<(), Error> {
        if routes.local() != self.local {
            return Err(Error::WrongLocalPeer {
                local: self.local,
                got: routes.local(),
            });
        }
        self.routes = routes;
        self.prune_own_floods();
        Ok(())
    }

    pub fn routes(&self) -> &RouteSnapshot {
        &self.routes
    }

    /// The peers our bridge reaches directly through the kernel's VXLAN port (see
    /// [`crate::fastpath`]). The bridge floods a frame to both that port and our TAP,
    /// so the sleeve must not carry a second copy to them: a unicast for such a peer
    /// is left to the kernel, and a flood from such a peer is not injected here (the
    /// kernel delivered it), though it still goes on down the origin's tree to peers
    /// the fast path does not reach. Our own floods skip the sleeve copy to a next hop
    /// whose whole subtree (as the routes give it) is fast: the kernel's VXLAN flood
    /// reached each of them directly. (Floods we relay for others are not pruned: we do
    /// not know which peers the origin's fast path reaches.)
    pub fn set_fast_peers(&mut self, mut peers: Vec<PeerName>) {
        peers.sort_unstable();
        peers.dedup();
        self.fast = peers;
        self.prune_own_floods();
    }

    fn prune_own_floods(&mut self) {
        let routes = &self.routes;
        let fast = &self.fast;
        let is_fast = |peer: &PeerName| fast.binary_search(peer).is_ok();
        self.own_flood_hops = routes
            .broadcast_next_hops(self.local)
            .iter()
            .copied()
            .filter(|hop| {
                let all_fast = is_fast(hop)
                    && routes
                        .own_flood_reach(*hop)
                        .is_some_and(|reach| reach.iter().all(is_fast));
                !all_fast
            })
            .collect();
    }

    /// Where our own floods go over the sleeve (see [`Forwarder::set_fast_peers`]).
    pub fn own_flood_hops(&self) -> &[PeerName] {
        &self.own_flood_hops
    }

    pub fn fast_peers(&self) -> &[PeerName] {
        &self.fast
    }

    fn is_fast(&self, peer: PeerName) -> bool {
        !self.fast.is_empty() && self.fast.binary_search(&peer).is_ok()
    }

    /// A frame captured on our TAP.
    pub fn handle_tap_frame(&mut self, frame: &[u8], now: Instant, decision: &mut Decision) {
        decision.clear();
        self.tap.captured_frames += 1;
        self.tap.captured_bytes += frame.len() as u64;
        let Some((dst, src)) = macs(frame) else {
            return self.drop_tap(decision, DropReason::Malformed);
        };
        if dst.is_link_local_control() {
            return self.drop_tap(decision, DropReason::LinkLocalControl);
        }
        if src.is_multicast() {
            return self.drop_tap(decision, DropReason::InvalidSource);
        }
        self.learn(src, Owner::Local, now);
        let owner = if dst.is_multicast() {
            None
        } else {
            self.fdb.lookup(dst, now, self.config.mac_ttl)
        };
        let hops = self.config.hop_limit;
        let unicast = match owner {
            Some(Owner::Local) => return self.drop_tap(decision, DropReason::LocalDestination),
            Some(Owner::Remote(peer)) if self.is_fast(peer) => {
                return self.drop_tap(decision, DropReason::FastPath);
            }
            Some(Owner::Remote(peer)) => self.routes.unicast_next_hop(peer).map(|hop| (peer, hop)),
            None => None,
        };
        if let Some((peer, next_hop)) = unicast {
            let tag = FrameTag {
                src: self.local,
                dst: peer,
                hops,
            };
            decision.outputs.push(Output { next_hop, tag });
            count_forwarded(&mut self.peers, next_hop, frame.len());
            return;
        }
        // Broadcast, multicast, unknown unicast, and a MAC whose peer we cannot reach
        // (probably stale: if it moved, its new host still gets the frame) flood.
        for &next_hop in &self.own_flood_hops {
            let tag = FrameTag {
                src: self.local,
                dst: next_hop,
                hops,
            };
            decision.outputs.push(Output { next_hop, tag });
            count_forwarded(&mut self.peers, next_hop, frame.len());
        }
    }

    /// A frame that arrived in a datagram from peer `from` (the datagram's sender,
    /// the previous hop), carrying `tag`.
    pub fn handle_sleeve_frame(
        &mut self,
        from: PeerName,
        tag: FrameTag,
        frame: &[u8],
        now: Instant,
        decision: &mut Decision,
    ) {
        decision.clear();
        let len = frame.len();
        let counters = self.peers.entry(from).or_default();
        counters.received_frames += 1;
        counters.received_bytes += len as u64;
        if tag.src == self.local {
            return self.drop_from(from, decision, DropReason::LoopedBack);
        }
        if tag.dst != self.local {
            return self.relay_unicast(from, tag, len, decision);
        }
        let Some((dst, src)) = macs(frame) else {
            return self.drop_from(from, decision, DropReason::Malformed);
        };
        if dst.is_link_local_control() {
            return self.drop_from(from, decision, DropReason::LinkLocalControl);
        }
        if src.is_multicast() {
            return self.drop_from(from, decision, DropReason::InvalidSource);
        }
        self.learn(src, Owner::Remote(tag.src), now);
        if self.is_fast(tag.src) {
            // The kernel brought us its copy already.
            decision.dropped = Some(DropReason::FastPath);
            self.peers
                .entry(tag.src)
                .or_default()
                .dropped
                .add(DropReason::FastPath);
        } else {
            decision.inject = true;
            let origin = self.peers.entry(tag.src).or_default();
            origin.injected_frames += 1;
            origin.injected_bytes += len as u64;
        }
        // A frame for a MAC on our bridge ends here; anything else was flooded by its
        // origin and continues down the origin's tree.
        if !dst.is_multicast()
            && self.fdb.lookup(dst, now, self.config.mac_ttl) == Some(Owner::Local)
        {
            return;
        }
        let next_hops = self.routes.broadcast_next_hops(tag.src);
        if next_hops.is_empty() {
            return;
        }
        let Some(hops) = tag.hops.checked_sub(1).filter(|&h| h > 0) else {
            return self.drop_from(from, decision, DropReason::HopLimit);
        };
        for &next_hop in next_hops {
            // A consistent tree never leads back to the previous hop or the origin.
            if next_hop == from || next_hop == tag.src {
                decision.dropped = Some(DropReason::RouteLoop);
                let counters = self.peers.entry(from).or_default();
                counters.dropped.add(DropReason::RouteLoop);
                continue;
            }
            let tag = FrameTag {
                src: tag.src,
                dst: next_hop,
                hops,
            };
            decision.outputs.push(Output { next_hop, tag });
            count_relayed(&mut self.peers, next_hop, len);
        }
    }

    fn relay_unicast(
        &mut self,
        from: PeerName,
        tag: FrameTag,
        len: usize,
        decision: &mut Decision,
    ) {
        let Some(hops) = tag.hops.checked_sub(1).filter(|&h| h > 0) else {
            return self.drop_from(from, decision, DropReason::HopLimit);
        };
        let Some(next_hop) = self.routes.unicast_next_hop(tag.dst) else {
            return self.drop_from(from, decision, DropReason::NoRoute);
        };
        if next_hop == from {
            return self.drop_from(from, decision, DropReason::RouteLoop);
        }
        decision.outputs.push(Output {
            next_hop,
            tag: FrameTag { hops, ..tag },
        });
        count_relayed(&mut self.peers, next_hop, len);
    }

    fn drop_tap(&mut self, decision: &mut Decision, reason: DropReason) {
        decision.dropped = Some(reason);
        self.tap.dropped.add(reason);
    }

    fn drop_from(&mut self, from: PeerName, decision: &mut Decision, reason: DropReason) {
        decision.dropped = Some(reason);
        self.peers.entry(from).or_default().dropped.add(reason);
    }

    fn learn(&mut self, mac: Mac, owner: Owner, now: Instant) {
        let learned = self.fdb.learn(
            mac,
            owner,
            now,
            self.config.mac_ttl,
            self.config.mac_refresh,
        );
        let event = match learned {
            Learned::Refreshed => return,
            Learned::TableFull => return,
            Learned::New => Event::MacDiscovered { mac, owner },
            Learned::Moved(from) => Event::MacMoved {
                mac,
                from,
                to: owner,
            },
        };
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now + self.config.mac_refresh);
        }
        if self.events.len() >= self.config.max_events {
            self.events_lost += 1;
        } else {
            self.events.push_back(event);
        }
    }

    /// Sweeps expired MACs when due. Lookups already ignore expired entries; the
    /// sweep only frees their memory.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| at <= now) {
            self.fdb.expire(now, self.config.mac_ttl);
            self.next_sweep = (!self.fdb.is_empty()).then(|| now + self.config.mac_refresh);
        }
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Forgets a peer that left the mesh: its MACs and counters.
    pub fn forget_peer(&mut self, peer: PeerName) {
        self.fdb.forget(Owner::Remote(peer));
        self.peers.remove(&peer);
    }

    /// Who owns `mac` now, if anyone still does.
    pub fn lookup(&self, mac: Mac, now: Instant) -> Option<Owner> {
        self.fdb.lookup(mac, now, self.config.mac_ttl)
    }

    /// The live MACs, sorted, with their owners and when they were last refreshed.
    pub fn macs(&self, now: Instant) -> Vec<(Mac, Owner, Instant)> {
        self.fdb.live(now, self.config.mac_ttl)
    }

    pub fn tap_counters(&self) -> &TapCounters {
        &self.tap
    }

    pub fn peer_counters(&self) -> &BTreeMap<PeerName, PeerCounters> {
        &self.peers
    }

    pub fn stats(&self) -> Stats {
        Stats {
            macs: self.fdb.len(),
            mac_table_full: self.fdb.refused(),
            events_lost: self.events_lost,
        }
    }
}

fn count_forwarded(peers: &mut BTreeMap<PeerName, PeerCounters>, peer: PeerName, len: usize) {
    let c = peers.entry(peer).or_default();
    c.forwarded_frames += 1;
    c.forwarded_bytes += len as u64;
}

fn count_relayed(peers: &mut BTreeMap<PeerName, PeerCounters>, peer: PeerName, len: usize) {
    let c = peers.entry(peer).or_default();
    c.relayed_frames += 1;
    c.relayed_bytes += len as u64;
}

#[cfg(test)]
mod tests;
