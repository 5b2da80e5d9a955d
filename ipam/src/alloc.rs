//! The allocator: the ring plus our own allocations, space requests, claims, consensus,
//! restart handling, and the [`Gossiper`] implementation on channel `"ipam"`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use weave_mesh::gossip::fnv1a;
use weave_mesh::{GossipContext, GossipError, Gossiper, PeerName, PeerSummary};

use crate::IpamError;
use crate::cidr::{Cidr, largest_aligned_block};
use crate::paxos::Paxos;
use crate::persist::{PersistOp, SavedState};
use crate::ring::{EntryConflict, Ring, RingEntry};
use crate::space::FreeSet;
use crate::status::{IpamMetrics, IpamStatus, OwnerStatus};
use crate::wire::{self, DenyReason, Digest, Hint, Message, RingPart, Update};

/// The gossip channel name.
pub const CHANNEL: &str = "ipam";

/// How many times a claim asks the owner before giving up (Weave: 5).
const MAX_CLAIM_ATTEMPTS: u32 = 5;
/// Buckets of the free-hint digest.
const HINT_BUCKETS: usize = 16;
/// How many ring holders, on average, answer one ring-less peer's Paxos broadcast.
const RING_REPLIERS: u64 = 3;

/// How the ring comes to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitMode {
    /// Agree with a quorum of `peers / 2 + 1` (`consensus=N`, or launch targets + 1)
    /// on who splits the range, once the first allocation or `prime` needs a ring.
    Consensus { peers: usize },
    /// Create the ring at once, split among these peers (`seed=...`).
    Seed(Vec<PeerName>),
    /// Never vote; wait for a ring from others.
    Observer,
}

impl InitMode {
    /// Distinct peers needed to agree (consensus mode).
    pub fn quorum(&self) -> usize {
        match self {
            Self::Consensus { peers } => peers / 2 + 1,
            Self::Seed(_) | Self::Observer => 0,
        }
    }
}

/// Retry and coalescing intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpamTimers {
    /// How long to wait for a donor or owner before asking another (Weave ticks at 5 s).
    pub request_timeout: Duration,
    /// Quiet time after which a peer without a ring proposes again (plus up to 100%
    /// random jitter, so duelling proposers spread out).
    pub paxos_retry: Duration,
    /// Free-space hints are republished at most this often.
    pub hint_interval: Duration,
    /// Longest a restarted peer without its data waits for peers to tell it about its
    /// old ranges before allocating anyway.
    pub sync_timeout: Duration,
}

impl Default for IpamTimers {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            paxos_retry: Duration::from_secs(3),
            hint_interval: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The whole allocation range (`--ipalloc-range`).
    pub range: Cidr,
    /// Where `allocate(.., None)` allocates (`--ipalloc-default-subnet`).
    pub default_subnet: Cidr,
    pub init: InitMode,
    pub timers: IpamTimers,
}

impl IpamConfig {
    /// Default subnet = range, default timers.
    pub fn new(range: Cidr, init: InitMode) -> Self {
        Self {
            range,
            default_subnet: range,
            init,
            timers: IpamTimers::default(),
        }
    }
}

/// Names an asynchronous allocation or claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What `allocate` and `claim` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocResult {
    /// The address is ours now (persist first, see [`crate::persist`]).
    Ready(Ipv4Addr),
    /// Waiting for a ring, space from a donor, or the owner of a claimed address; an
    /// [`IpamEvent::Allocated`] or [`IpamEvent::Failed`] with this id follows.
    Pending(RequestId),
}

/// Things the daemon should know about, drained with [`Ipam::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpamEvent {
    Allocated {
        request: RequestId,
        ident: String,
        addr: Ipv4Addr,
    },
    Failed {
        request: RequestId,
        ident: String,
        error: IpamError,
    },
    /// A ring exists now (consensus reached, or adopted from a peer).
    RingReady,
    /// A conflicting ring update was seen and contained (merged deterministically, or
    /// refused), with what happened.
    Conflict(String),
    /// We lost ownership of an address still allocated here and its new owner refused to
    /// give it back: it may be allocated twice. Shown until freed.
    AddressDisputed {
        addr: Ipv4Addr,
        ident: String,
        owner: PeerName,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllocState {
    Settled,
    /// Recorded (so nothing else takes it) while the owner is asked for it.
    Claiming(RequestId),
    /// Lost to another owner who would not hand it back.
    Disputed(PeerName),
}

#[derive(Debug, Clone)]
struct AllocRecord {
    ident: String,
    subnet: Option<Cidr>,
    state: AllocState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Allocate {
        subnet: Cidr,
    },
    /// `reclaim`: an address of ours whose range went to another peer (a conflict).
    Claim {
        addr: u32,
        reclaim: bool,
    },
}

#[derive(Debug, Clone)]
struct Pending {
    ident: String,
    kind: Kind,
    /// Who we asked, and until when we wait for the answer.
    asked: Option<(PeerName, Instant)>,
    /// Donors that said no (or did not answer) in this round.
    tried: BTreeSet<PeerName>,
    attempts: u32,
    retry_at: Option<Instant>,
}

/// A peer that started without saved state may be an old peer that lost its data, and
/// its old incarnation may have given away parts of ranges that others still show as its
/// own (stale entries can reach it at any time, from any peer). So, for its whole life:
/// before it allocates from or donates a range it came to own by gossip, it asks every
/// live peer what they know of that range (a round), also those that become live during
/// the round, and waits for all answers, including one from every other owner in its
/// view of the ring, or `sync_timeout`. Ranges granted to it in answer to its own request are fresh from their
/// owner and need no round. At the start it also waits for [`Ipam::finish_reclaim`].
#[derive(Debug, Clone, Default)]
struct Verify {
    reclaim_done: bool,
    /// Ranges every live peer has been asked about (or granted to us by their owner).
    verified: Vec<(u64, u64)>,
    round: u64,
    /// The round in progress, if any: what it asks about and who has not answered.
    in_round: bool,
    /// Everyone the round in progress asked (peers that become live during it are
    /// asked too).
    asked: BTreeSet<PeerName>,
    asking: Vec<(u64, u64)>,
    waiting: BTreeSet<PeerName>,
    resend_at: Option<Instant>,
    deadline: Option<Instant>,
}

impl Verify {
    fn busy(&self) -> bool {
        !self.reclaim_done || self.in_round
    }
}

/// The IPAM core of one peer. See the crate docs for the calling contract.
pub struct Ipam {
    local: PeerName,
    config: IpamConfig,
    ring: Option<Ring>,
    paxos: Paxos,
    ring_wanted: bool,
    paxos_deadline: Option<Instant>,
    ring_request_at: Option<Instant>,
    hints: BTreeMap<PeerName, Hint>,
    own_seq: u64,
    hint_due: Option<Instant>,
    owned: Vec<(u64, u64)>,
    space: FreeSet,
    allocs: BTreeMap<u32, AllocRecord>,
    by_ident: BTreeMap<String, BTreeSet<u32>>,
    pending: BTreeMap<RequestId, Pending>,
    next_request: u64,
    /// `Some` for a peer started without saved state (see [`Verify`]).
    fresh: Option<Verify>,
    events: VecDeque<IpamEvent>,
    persist: VecDeque<PersistOp>,
    conflicts: u64,
    left: bool,
}

impl Ipam {
    /// A peer starting without saved state. In seed mode the ring exists at once. New
    /// allocations wait until [`Self::finish_reclaim`] (see the crate docs).
    pub fn new(config: IpamConfig, local: PeerName) -> Result<Self, IpamError> {
        let mut ipam = Self::empty(config, local)?;
        ipam.fresh = Some(Verify::default());
        if let InitMode::Seed(seeds) = &ipam.config.init {
            if seeds.is_empty() {
                return Err(IpamError::InvalidConfig("empty seed list".to_owned()));
            }
            let ring = Ring::new(ipam.config.range, seeds);
            ipam.install_ring(ring);
        }
        Ok(ipam)
    }

    /// A peer whose name was made up at this start (no `--name`, nothing persisted): no
    /// earlier incarnation can have owned anything, so nothing is re-learned and it
    /// allocates as soon as a ring exists. In seed mode the ring exists at once.
    pub fn first_start(config: IpamConfig, local: PeerName) -> Result<Self, IpamError> {
        let mut ipam = Self::new(config, local)?;
        ipam.fresh = None;
        Ok(ipam)
    }

    /// A peer coming back with its saved state: it keeps its ranges and allocations and
    /// allocates at once.
    pub fn restore(
        config: IpamConfig,
        local: PeerName,
        saved: SavedState,
    ) -> Result<Self, IpamError> {
        if saved.local != local {
            return Err(IpamError::StateOfOtherPeer {
                saved: saved.local,
                local,
            });
        }
        let mut ipam = Self::empty(config, local)?;
        for (addr, alloc) in saved.allocations {
            ipam.record(
                u32::from(addr),
                alloc.ident,
                alloc.subnet,
                AllocState::Settled,
            );
        }
        if let Some(state) = saved.paxos {
            ipam.paxos.merge(&[(local, state)]);
        }
        if let Some(saved_ring) = saved.ring {
            if saved_ring.range != ipam.config.range {
                return Err(IpamError::RangeMismatch {
                    ours: ipam.config.range,
                    theirs: saved_ring.range,
                });
            }
            let mut ring = Ring::new(saved_ring.range, &saved_ring.seeds);
            let entries: Vec<(u32, RingEntry)> = saved_ring
                .entries
                .into_iter()
                .map(|(t, e)| (u32::from(t), e))
                .filter(|(t, _)| saved_ring.range.contains_u32(*t))
                .collect();
            ring.merge_entries(&entries, &mut Vec::new());
            ipam.ring = Some(ring);
            ipam.recompute_ownership();
            // Allocations in ranges we no longer own (a conflict before the restart) are
            // asked back from their owner on the first call with a context.
            let stray: Vec<u32> = ipam
                .allocs
                .iter()
                .filter(|(a, r)| {
                    r.state == AllocState::Settled
                        && ipam.config.range.contains_u32(**a)
                        && !ipam.owns(**a)
                })
                .map(|(a, _)| *a)
                .collect();
            for addr in stray {
                ipam.start_reclaim(addr);
            }
        } else if let InitMode::Seed(seeds) = &ipam.config.init {
            let ring = Ring::new(ipam.config.range, seeds);
            ipam.install_ring(ring);
        }
        Ok(ipam)
    }

    fn empty(config: IpamConfig, local: PeerName) -> Result<Self, IpamError> {
        if config.range.size() < 4 {
            return Err(IpamError::SubnetTooSmall(config.range));
        }
        check_subnet(&config, config.default_subnet)?;
        if let InitMode::Consensus { peers: 0 } = config.init {
            return Err(IpamError::InvalidConfig("consensus=0".to_owned()));
        }
        Ok(Self {
            local,
            config,
            ring: None,
            paxos: Paxos::default(),
            ring_wanted: false,
            paxos_deadline: None,
            ring_request_at: None,
            hints: BTreeMap::new(),
            own_seq: 0,
            hint_due: None,
            owned: Vec::new(),
            space: FreeSet::default(),
            allocs: BTreeMap::new(),
            by_ident: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_request: 1,
            fresh: None,
            events: VecDeque::new(),
            persist: VecDeque::new(),
            conflicts: 0,
            left: false,
        })
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    /// Whether a ring exists here.
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// The seeds of our ring (the agreed peers in consensus mode).
    pub fn seeds(&self) -> Option<&[PeerName]> {
        self.ring.as_ref().map(Ring::seeds)
    }

    /// Every range of the ring as `(first address, size, owner, version)`. Owner
    /// `00:00:00:00:00:00` with version 0 marks a range whose owner we have not learned
    /// yet (only its start, see [`RingEntry::BOUNDARY`]).
    pub fn ring_ranges(&self) -> Vec<(Ipv4Addr, u64, PeerName, u64)> {
        self.ring.as_ref().map_or_else(Vec::new, |ring| {
            ring.ranges()
                .map(|(s, e, entry)| (to_addr(s), e - s, entry.owner, entry.version))
                .collect()
        })
    }

    /// The ranges we own, as `(first address, size)`.
    pub fn owned_ranges(&self) -> Vec<(Ipv4Addr, u64)> {
        self.owned
            .iter()
            .map(|&(s, e)| (to_addr(s), e - s))
            .collect()
    }

    /// Free addresses in our ranges.
    pub fn free_addresses(&self) -> u64 {
        self.space.total()
    }

    #[cfg(test)]
    pub(crate) fn timers_debug(&self) -> String {
        format!(
            "hint {:?} ring_req {:?} paxos {:?} wanted {} fresh {:?} pending {:?}",
            self.hint_due,
            self.ring_request_at,
            self.paxos_deadline,
            self.ring_wanted,
            self.fresh,
            self.pending
        )
    }

    #[cfg(test)]
    pub(crate) fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    /// Whether we are still re-learning our state after a start without saved data.
    pub fn is_reclaiming(&self) -> bool {
        // Without a ring a fresh peer has not even started re-learning.
        self.fresh
            .as_ref()
            .is_some_and(|v| v.busy() || self.ring.is_none())
    }

    /// Addresses recorded here as `(address, identity)`, including claims in progress.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> + '_ {
        self.allocs
            .iter()
            .map(|(&a, r)| (Ipv4Addr::from(a), r.ident.as_str()))
    }

    /// Settled addresses of one identity (claims in progress excluded).
    pub fn lookup(&self, ident: &str) -> Vec<Ipv4Addr> {
        self.by_ident.get(ident).map_or_else(Vec::new, |addrs| {
            addrs
                .iter()
                .filter(|a| {
                    self.allocs
                        .get(a)
                        .is_some_and(|r| !matches!(r.state, AllocState::Claiming(_)))
                })
                .map(|&a| Ipv4Addr::from(a))
                .collect()
        })
    }

    /// The address allocated to `ident` in `subnet`, if any.
    pub fn lookup_in(&self, ident: &str, subnet: Cidr) -> Option<Ipv4Addr> {
        self.lookup(ident).into_iter().find(|a| subnet.contains(*a))
    }

    /// The next event for the daemon. Drain [`Self::poll_persist`] first.
    pub fn poll_event(&mut self) -> Option<IpamEvent> {
        self.events.pop_front()
    }

    /// The next change to make durable (see [`crate::persist`] for the ordering rule).
    pub fn poll_persist(&mut self) -> Option<PersistOp> {
        self.persist.pop_front()
    }

    /// Allocates the lowest free address of `subnet` (default subnet if `None`) for
    /// `ident`: never the subnet's network or broadcast address; idempotent per identity
    /// and subnet.
    pub fn allocate(
        &mut self,
        ctx: &mut GossipContext<'_>,
        ident: &str,
        subnet: Option<Cidr>,
    ) -> Result<AllocResult, IpamError> {
        if self.left {
            return Err(IpamError::Left);
        }
        let subnet = subnet.unwrap_or(self.config.default_subnet);
        check_subnet(&self.config, subnet)?;
        if let Some(addrs) = self.by_ident.get(ident) {
            for addr in addrs.iter().filter(|&&a| subnet.contains_u32(a)) {
                match self.allocs.get(addr).map(|r| &r.state) {
                    Some(AllocState::Claiming(id)) => return Ok(AllocResult::Pending(*id)),
                    Some(_) => return Ok(AllocResult::Ready(Ipv4Addr::from(*addr))),
                    None => {}
                }
            }
        }
        let already = self.pending.iter().find(|(_, p)| {
            p.ident == ident && matches!(p.kind, Kind::Allocate { subnet: s } if s == subnet)
        });
        if let Some((&id, _)) = already {
            return Ok(AllocResult::Pending(id));
        }
        if self.ring.is_some()
            && !self.is_reclaiming()
            && let Some(addr) = self.take_free(subnet)
        {
            self.record(addr, ident.to_owned(), Some(subnet), AllocState::Settled);
            self.persist_alloc(addr);
            self.drive(ctx);
            return Ok(AllocResult::Ready(Ipv4Addr::from(addr)));
        }
        let id = self.add_pending(ident.to_owned(), Kind::Allocate { subnet });
        if self.ring.is_none() {
            self.want_ring(ctx);
        }
        self.drive(ctx);
        Ok(AllocResult::Pending(id))
    }

    /// Claims a specific address for `ident` (a restarted container, a manual address).
    /// Granted at once if it is outside the range, or free in a range we own; if another
    /// peer owns it, that owner is asked to hand it over (the result is pending).
    pub fn claim(
        &mut self,
        ctx: &mut GossipContext<'_>,
        ident: &str,
        addr: Ipv4Addr,
        subnet: Option<Cidr>,
    ) -> Result<AllocResult, IpamError> {
        if self.left {
            return Err(IpamError::Left);
        }
        let a = u32::from(addr);
        if let Some(subnet) = subnet {
            if !subnet.contains(addr) {
                return Err(IpamError::NotInSubnet { addr, subnet });
            }
            if subnet.prefix_len() <= 30 && (addr == subnet.network() || addr == subnet.broadcast())
            {
                return Err(IpamError::ReservedAddress { addr, subnet });
            }
        }
        if let Some(record) = self.allocs.get(&a) {
            if record.ident != ident {
                return Err(IpamError::AddressInUse {
                    addr,
                    ident: record.ident.clone(),
                });
            }
            return Ok(match record.state {
                AllocState::Claiming(id) => AllocResult::Pending(id),
                _ => AllocResult::Ready(addr),
            });
        }
        let outside = !self.config.range.contains_u32(a);
        if outside || self.owns(a) {
            // A claim inside our own range is honoured even while reclaiming: that is
            // how the daemon re-registers containers that survived a data loss.
            self.space.remove(u64::from(a), u64::from(a) + 1);
            self.record(a, ident.to_owned(), subnet, AllocState::Settled);
            self.persist_alloc(a);
            self.drive(ctx);
            return Ok(AllocResult::Ready(addr));
        }
        let id = self.add_pending(
            ident.to_owned(),
            Kind::Claim {
                addr: a,
                reclaim: false,
            },
        );
        self.record(a, ident.to_owned(), subnet, AllocState::Claiming(id));
        if self.ring.is_none() {
            self.want_ring(ctx);
        }
        self.drive(ctx);
        Ok(AllocResult::Pending(id))
    }

    /// Frees one address; returns the identity it belonged to.
    pub fn free_addr(&mut self, ctx: &mut GossipContext<'_>, addr: Ipv4Addr) -> Option<String> {
        let ident = self.release(u32::from(addr));
        self.drive(ctx);
        ident
    }

    /// Frees every address of `ident` and cancels its pending requests.
    pub fn free_ident(&mut self, ctx: &mut GossipContext<'_>, ident: &str) -> Vec<Ipv4Addr> {
        let addrs: Vec<u32> = self
            .by_ident
            .get(ident)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        for &a in &addrs {
            self.release(a);
        }
        self.pending.retain(|_, p| p.ident != ident);
        self.drive(ctx);
        addrs.into_iter().map(Ipv4Addr::from).collect()
    }

    /// Gives up a pending request (no event follows).
    pub fn cancel(&mut self, request: RequestId) -> bool {
        let Some(p) = self.pending.remove(&request) else {
            return false;
        };
        if let Kind::Claim { addr, .. } = p.kind
            && matches!(self.allocs.get(&addr).map(|r| &r.state), Some(AllocState::Claiming(id)) if *id == request)
        {
            self.unrecord(addr);
        }
        true
    }

    /// Asks for the ring to exist (`weave prime`): starts consensus if needed. Returns
    /// whether it exists now.
    pub fn prime(&mut self, ctx: &mut GossipContext<'_>) -> bool {
        if self.ring.is_none() {
            self.want_ring(ctx);
        }
        self.drive(ctx);
        self.ring.is_some()
    }

    /// The daemon has re-claimed the addresses of every container still running here
    /// (after a start without saved state). See the crate docs.
    pub fn finish_reclaim(&mut self, ctx: &mut GossipContext<'_>) {
        if let Some(verify) = &mut self.fresh {
            verify.reclaim_done = true;
        }
        self.drive(ctx);
    }

    /// Takes over every range of `peer`, which must be dead: refused if it is in the
    /// topology. Run it for one dead peer on one host only (two takeovers of one peer
    /// conflict; the conflict is contained, see [`IpamEvent::Conflict`]). Returns the
    /// number of addresses taken over.
    pub fn rmpeer(
        &mut self,
        ctx: &mut GossipContext<'_>,
        peer: PeerName,
    ) -> Result<u64, IpamError> {
        if self.left {
            return Err(IpamError::Left);
        }
        if peer == self.local {
            return Err(IpamError::IsSelf);
        }
        if ctx.is_live(peer) {
            return Err(IpamError::PeerIsLive(peer));
        }
        let ring = self.ring.as_mut().ok_or(IpamError::NoRing)?;
        let taken = ring.totals().get(&peer).copied().unwrap_or(0);
        let taken_ranges = ring.ranges_of(peer);
        let changed = ring.transfer_all(peer, self.local);
        self.hints.remove(&peer);
        // A dead peer's ranges were never our old incarnation's: nothing to re-learn.
        if let Some(v) = &mut self.fresh {
            v.verified = union(&v.verified, &taken_ranges);
        }
        if !changed.is_empty() {
            self.local_ring_change(ctx, &changed);
        }
        self.drive(ctx);
        Ok(taken)
    }

    /// Hands all our ranges to a live peer before this peer goes away for good (`weave
    /// reset`). Our allocations are dropped. The daemon must send the gossip this queues
    /// before it stops. Returns the heir, or `None` if there was nobody to hand to.
    pub fn leave(&mut self, ctx: &mut GossipContext<'_>) -> Result<Option<PeerName>, IpamError> {
        if self.left {
            return Err(IpamError::Left);
        }
        let addrs: Vec<u32> = self.allocs.keys().copied().collect();
        for a in addrs {
            self.release(a);
        }
        self.pending.clear();
        self.left = true;
        let Some(ring) = self.ring.as_mut() else {
            return Ok(None);
        };
        let totals = ring.totals();
        let live = ctx.peers().keys().copied().filter(|&p| p != self.local);
        let heir = live
            .clone()
            .find(|p| totals.contains_key(p))
            .or_else(|| live.clone().next());
        let Some(heir) = heir else {
            return Ok(None);
        };
        let changed = ring.transfer_all(self.local, heir);
        if !changed.is_empty() {
            self.local_ring_change(ctx, &changed);
        }
        Ok(Some(heir))
    }

    /// `weave status ipam`. `peers` is the topology (for reachability and nicknames).
    pub fn status(&self, peers: &BTreeMap<PeerName, PeerSummary>) -> IpamStatus {
        let mut owners = Vec::new();
        if let Some(ring) = &self.ring {
            let size = ring.range().size() as f64;
            let mut totals = ring.totals();
            let own = totals.remove(&self.local).unwrap_or(0);
            let mut push = |peer: PeerName, addresses: u64, local: bool| {
                owners.push(OwnerStatus {
                    peer,
                    nickname: peers.get(&peer).map(|p| p.nickname.clone()),
                    addresses,
                    percent: addresses as f64 * 100.0 / size,
                    active: local.then_some(self.allocs.len() as u64),
                    reachable: local || peers.contains_key(&peer),
                    local,
                });
            };
            push(self.local, own, true);
            for (peer, addresses) in totals {
                push(peer, addresses, false);
            }
        }
        IpamStatus {
            status: self.status_line(peers),
            range: self.config.range,
            default_subnet: self.config.default_subnet,
            owners,
            conflicts: self.conflicts,
        }
    }

    fn status_line(&self, peers: &BTreeMap<PeerName, PeerSummary>) -> String {
        let Some(ring) = &self.ring else {
            return match self.config.init {
                InitMode::Consensus { .. } if self.ring_wanted => format!(
                    "awaiting consensus (quorum: {}, known: {})",
                    self.config.init.quorum(),
                    self.paxos.known().max(1)
                ),
                InitMode::Observer if self.ring_wanted => "awaiting ring (observer)".to_owned(),
                _ => "idle".to_owned(),
            };
        };
        if self.is_reclaiming() {
            return "re-learning allocations after a restart without saved state".to_owned();
        }
        let waiting: Vec<&Pending> = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, Kind::Allocate { .. }))
            .collect();
        if waiting.is_empty() {
            return "ready".to_owned();
        }
        let stuck = waiting.iter().all(|p| {
            let Kind::Allocate { subnet } = p.kind else {
                return false;
            };
            let (lo, hi) = self.usable(subnet);
            let owners = ring.owners_in(lo, hi);
            !owners.is_empty()
                && owners
                    .keys()
                    .all(|o| *o != self.local && !peers.contains_key(o))
        });
        if stuck {
            "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead".to_owned()
        } else {
            "waiting for IP(s) to become available".to_owned()
        }
    }

    /// Numbers for the metrics endpoint.
    pub fn metrics(&self, peers: &BTreeMap<PeerName, PeerSummary>) -> IpamMetrics {
        let mut m = IpamMetrics {
            local_used: self.allocs.len() as u64,
            total: self.config.range.size(),
            conflicts: self.conflicts,
            ..IpamMetrics::default()
        };
        for p in self.pending.values() {
            match p.kind {
                Kind::Allocate { .. } => m.pending_allocations += 1,
                Kind::Claim { .. } => m.pending_claims += 1,
            }
        }
        if let Some(ring) = &self.ring {
            for (owner, n) in ring.totals() {
                if owner != self.local && !peers.contains_key(&owner) {
                    m.unreachable_owners += 1;
                    m.unreachable_addresses += n;
                }
            }
        }
        m
    }

    // ---- internals: allocation records and free space ----

    fn owns(&self, addr: u32) -> bool {
        let a = u64::from(addr);
        let i = self.owned.partition_point(|&(_, e)| e <= a);
        self.owned.get(i).is_some_and(|&(s, _)| s <= a)
    }

    fn usable(&self, subnet: Cidr) -> (u64, u64) {
        let (lo, hi) = subnet.usable();
        (
            u64::from(lo).max(u64::from(self.config.range.start())),
            hi.min(self.config.range.end()),
        )
    }

    fn take_free(&mut self, subnet: Cidr) -> Option<u32> {
        let (lo, hi) = self.usable(subnet);
        let addr = self.space.first_in(lo, hi)?;
        self.space.remove(addr, addr + 1);
        Some(u32::try_from(addr).expect("free space lies inside the IPv4 range"))
    }

    fn record(&mut self, addr: u32, ident: String, subnet: Option<Cidr>, state: AllocState) {
        self.by_ident.entry(ident.clone()).or_default().insert(addr);
        self.allocs.insert(
            addr,
            AllocRecord {
                ident,
                subnet,
                state,
            },
        );
    }

    fn unrecord(&mut self, addr: u32) -> Option<AllocRecord> {
        let record = self.allocs.remove(&addr)?;
        if let Some(set) = self.by_ident.get_mut(&record.ident) {
            set.remove(&addr);
            if set.is_empty() {
                self.by_ident.remove(&record.ident);
            }
        }
        if self.owns(addr) {
            self.space.insert(u64::from(addr), u64::from(addr) + 1);
        }
        Some(record)
    }

    fn release(&mut self, addr: u32) -> Option<String> {
        let record = self.unrecord(addr)?;
        match record.state {
            AllocState::Claiming(id) => {
                self.pending.remove(&id);
            }
            AllocState::Settled | AllocState::Disputed(_) => {
                self.persist.push_back(PersistOp::Freed {
                    addr: Ipv4Addr::from(addr),
                });
            }
        }
        Some(record.ident)
    }

    fn persist_alloc(&mut self, addr: u32) {
        if let Some(r) = self.allocs.get(&addr) {
            self.persist.push_back(PersistOp::Allocated {
                addr: Ipv4Addr::from(addr),
                ident: r.ident.clone(),
                subnet: r.subnet,
            });
        }
    }

    fn add_pending(&mut self, ident: String, kind: Kind) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.pending.insert(
            id,
            Pending {
                ident,
                kind,
                asked: None,
                tried: BTreeSet::new(),
                attempts: 0,
                retry_at: None,
            },
        );
        id
    }

    /// An address of ours now lies in someone else's range: ask for it back.
    fn start_reclaim(&mut self, addr: u32) {
        let Some(record) = self.allocs.get(&addr) else {
            return;
        };
        let ident = record.ident.clone();
        let id = self.add_pending(
            ident,
            Kind::Claim {
                addr,
                reclaim: true,
            },
        );
        if let Some(r) = self.allocs.get_mut(&addr) {
            r.state = AllocState::Claiming(id);
        }
    }

    // ---- internals: ring and ownership ----

    fn install_ring(&mut self, ring: Ring) {
        self.persist.push_back(PersistOp::Ring {
            range: ring.range(),
            seeds: ring.seeds().to_vec(),
        });
        self.persist.push_back(PersistOp::Entries(
            ring.all_entries()
                .into_iter()
                .map(|(t, e)| (Ipv4Addr::from(t), e))
                .collect(),
        ));
        self.ring = Some(ring);
        self.paxos_deadline = None;
        self.ring_request_at = None;
        self.events.push_back(IpamEvent::RingReady);
        self.recompute_ownership();
    }

    /// Entries changed in our ring (by merge or by us): persist them, update ownership.
    fn ring_changed(&mut self, changed: &[u32]) {
        let Some(ring) = &self.ring else {
            return;
        };
        let entries = changed
            .iter()
            .filter_map(|t| ring.entries().get(t).map(|e| (Ipv4Addr::from(*t), *e)))
            .collect();
        self.persist.push_back(PersistOp::Entries(entries));
        self.recompute_ownership();
    }

    fn recompute_ownership(&mut self) {
        let Some(ring) = &self.ring else {
            return;
        };
        let new_owned = ring.ranges_of(self.local);
        if new_owned == self.owned {
            return;
        }
        let gained = difference(&new_owned, &self.owned);
        let lost = difference(&self.owned, &new_owned);
        self.owned = new_owned;
        for (s, e) in gained {
            let mut cursor = s;
            for (&a, _) in self.allocs.range(range32(s, e)) {
                self.space.insert(cursor, u64::from(a));
                cursor = u64::from(a) + 1;
            }
            self.space.insert(cursor, e);
        }
        for (s, e) in lost {
            self.space.remove(s, e);
            let hit: Vec<u32> = self
                .allocs
                .range(range32(s, e))
                .filter(|(_, r)| r.state == AllocState::Settled)
                .map(|(&a, _)| a)
                .collect();
            if !hit.is_empty() {
                self.conflicts += 1;
                self.events.push_back(IpamEvent::Conflict(format!(
                    "lost range {}..{} holding {} of our allocations; asking the new owner \
                     for them back",
                    to_addr(s),
                    to_addr(e - 1),
                    hit.len()
                )));
            }
            for a in hit {
                self.start_reclaim(a);
            }
        }
    }

    /// We changed our ring (donation, takeover, leave): persist, then broadcast the
    /// changed entries with their successors and our fresh free hint.
    fn local_ring_change(&mut self, ctx: &mut GossipContext<'_>, changed: &[u32]) {
        self.ring_changed(changed);
        self.broadcast_change(ctx, changed);
    }

    fn broadcast_change(&mut self, ctx: &mut GossipContext<'_>, changed: &[u32]) {
        let Some(ring) = &self.ring else {
            return;
        };
        let entries = ring.with_successors(changed);
        let id = ring.id();
        let hint = self.refresh_hint();
        let update = Update {
            range: self.config.range,
            ring: Some(RingPart {
                id,
                seeds: None,
                entries,
            }),
            hints: vec![(self.local, hint)],
            paxos: Vec::new(),
        };
        ctx.broadcast(wire::encode(&Message::Update(update)));
    }

    fn refresh_hint(&mut self) -> Hint {
        self.own_seq += 1;
        let hint = Hint {
            seq: self.own_seq,
            free: self.space.total(),
        };
        self.hints.insert(self.local, hint);
        self.hint_due = None;
        hint
    }

    fn report_conflicts(&mut self, conflicts: Vec<EntryConflict>) {
        for c in conflicts {
            self.conflicts += 1;
            self.events.push_back(IpamEvent::Conflict(format!(
                "two owners for the range at {} with version {}: {} wins over {}",
                Ipv4Addr::from(c.token),
                c.winner.version,
                c.winner.owner,
                c.loser.owner
            )));
        }
    }

    /// Merges a state fragment. Returns the part that was new here, for relaying.
    fn merge_update(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        update: Update,
    ) -> Result<Update, IpamError> {
        if update.range != self.config.range {
            return Err(IpamError::RangeMismatch {
                ours: self.config.range,
                theirs: update.range,
            });
        }
        let mut new = Update::empty(self.config.range);
        if let Some(part) = update.ring {
            if let Some(seeds) = &part.seeds
                && Ring::id_of(update.range, &sorted(seeds)) != part.id
            {
                return Err(IpamError::Malformed(
                    "ring id does not match its seeds".into(),
                ));
            }
            match &mut self.ring {
                Some(ring) => {
                    if part.id != ring.id() {
                        return Err(IpamError::SeedsMismatch {
                            ours: ring.seeds().to_vec(),
                            theirs: part.seeds.unwrap_or_default(),
                        });
                    }
                    let mut conflicts = Vec::new();
                    let changed = ring.merge_entries(&part.entries, &mut conflicts);
                    if !changed.is_empty() {
                        new.ring = Some(RingPart {
                            id: ring.id(),
                            seeds: None,
                            entries: ring.with_successors(&changed),
                        });
                    }
                    self.report_conflicts(conflicts);
                    if !changed.is_empty() {
                        self.ring_changed(&changed);
                    }
                }
                None => match part.seeds {
                    Some(seeds) => {
                        let mut ring = Ring::new(update.range, &seeds);
                        let mut conflicts = Vec::new();
                        ring.merge_entries(&part.entries, &mut conflicts);
                        self.report_conflicts(conflicts);
                        new.ring = Some(RingPart {
                            id: ring.id(),
                            seeds: Some(ring.seeds().to_vec()),
                            entries: ring.all_entries(),
                        });
                        self.install_ring(ring);
                    }
                    None => self.request_ring_from(ctx, from),
                },
            }
        }
        for (peer, hint) in update.hints {
            if peer == self.local {
                // An older incarnation of us advertised more recently than we did: move
                // our counter past it so our next hint wins (Weave's repair rule).
                // Our own current hint echoed back is not news.
                let ours = self.hints.get(&self.local).copied();
                let old_incarnation =
                    hint.seq > self.own_seq || (hint.seq == self.own_seq && Some(hint) != ours);
                if old_incarnation && self.ring.is_some() {
                    self.own_seq = hint.seq;
                    self.hint_due = Some(ctx.now());
                }
                continue;
            }
            let slot = self.hints.entry(peer).or_insert(Hint { seq: 0, free: 0 });
            if hint > *slot {
                *slot = hint;
                new.hints.push((peer, hint));
            }
        }
        if self.ring.is_none() && !update.paxos.is_empty() {
            let changed = self.paxos.merge(&update.paxos);
            if !changed.is_empty() {
                self.reset_paxos_timer(ctx);
            }
            for name in changed {
                if let Some(state) = self.paxos.states().get(&name) {
                    new.paxos.push((name, state.clone()));
                }
            }
        }
        Ok(new)
    }

    fn request_ring_from(&mut self, ctx: &mut GossipContext<'_>, from: PeerName) {
        let now = ctx.now();
        if from == self.local || self.ring_request_at.is_some_and(|t| t > now) {
            return;
        }
        ctx.unicast(from, wire::encode(&Message::RingRequest));
        self.ring_request_at = Some(now + self.config.timers.request_timeout);
    }

    fn ring_update(&self, with_seeds: bool) -> Update {
        let mut update = Update::empty(self.config.range);
        if let Some(ring) = &self.ring {
            update.ring = Some(RingPart {
                id: ring.id(),
                seeds: with_seeds.then(|| ring.seeds().to_vec()),
                entries: ring.all_entries(),
            });
        }
        update.hints = self.hints.iter().map(|(&p, &h)| (p, h)).collect();
        update
    }

    // ---- internals: the driver run after every input ----

    fn want_ring(&mut self, ctx: &mut GossipContext<'_>) {
        if self.ring.is_some() || self.ring_wanted {
            return;
        }
        self.ring_wanted = true;
        // Maybe a ring exists already: ask one live peer while (in consensus mode) we
        // also start proposing.
        self.ask_for_ring(ctx);
        if let InitMode::Consensus { .. } = self.config.init
            && self.paxos.highest_promise().is_none()
        {
            self.paxos.propose(self.local);
            self.publish_paxos(ctx);
            self.reset_paxos_timer(ctx);
        }
    }

    /// Persists our acceptor state and broadcasts it: a new proposal (or promise) must
    /// reach the others now, not with the next anti-entropy exchange.
    fn publish_paxos(&mut self, ctx: &mut GossipContext<'_>) {
        if let Some(own) = self.paxos.own(self.local).cloned() {
            self.persist.push_back(PersistOp::Paxos(own.clone()));
            let mut update = Update::empty(self.config.range);
            update.paxos.push((self.local, own));
            ctx.broadcast(wire::encode(&Message::Update(update)));
        }
    }

    fn ask_for_ring(&mut self, ctx: &mut GossipContext<'_>) {
        let others: Vec<PeerName> = ctx
            .peers()
            .keys()
            .copied()
            .filter(|&p| p != self.local)
            .collect();
        let now = ctx.now();
        self.ring_request_at = Some(now + self.config.timers.request_timeout);
        if others.is_empty() {
            return;
        }
        let pick = others[(ctx.random_u64() % others.len() as u64) as usize];
        ctx.unicast(pick, wire::encode(&Message::RingRequest));
    }

    fn reset_paxos_timer(&mut self, ctx: &mut GossipContext<'_>) {
        let base = self.config.timers.paxos_retry;
        let jitter = base.mul_f64((ctx.random_u64() >> 11) as f64 / (1u64 << 53) as f64);
        self.paxos_deadline = Some(ctx.now() + base + jitter);
    }

    /// Brings everything up to date after an input: consensus, the restart sync,
    /// pending requests, the free hint.
    fn drive(&mut self, ctx: &mut GossipContext<'_>) {
        if self.left {
            return;
        }
        if self.ring.is_none() {
            self.drive_consensus(ctx);
        }
        if self.ring.is_some() && self.fresh.is_some() {
            self.drive_verify(ctx);
        }
        if !self.pending.is_empty() {
            let ids: Vec<RequestId> = self.pending.keys().copied().collect();
            for id in ids {
                self.advance(ctx, id);
            }
        }
        if self.ring.is_some()
            && self.hint_due.is_none()
            && self.hints.get(&self.local).map(|h| h.free) != Some(self.space.total())
        {
            self.hint_due = Some(ctx.now() + self.config.timers.hint_interval);
        }
    }

    fn drive_consensus(&mut self, ctx: &mut GossipContext<'_>) {
        let InitMode::Consensus { .. } = self.config.init else {
            return;
        };
        let quorum = self.config.init.quorum();
        if self.paxos.step(self.local, quorum, true) {
            self.publish_paxos(ctx);
            self.reset_paxos_timer(ctx);
        }
        if let Some(value) = self.paxos.chosen(quorum) {
            let ring = Ring::new(self.config.range, &value);
            self.install_ring(ring);
        }
    }

    fn drive_verify(&mut self, ctx: &mut GossipContext<'_>) {
        // The common case (every allocation): nothing in progress, nothing new to ask.
        if let Some(v) = &self.fresh
            && !v.in_round
            && difference(&self.owned, &v.verified).is_empty()
        {
            return;
        }
        let now = ctx.now();
        let timeout = self.config.timers.sync_timeout;
        let local = self.local;
        let owned = self.owned.clone();
        // The other owners in our view of the ring: those most likely to know what our
        // old incarnation gave away (a restarted daemon connects to them one by one).
        let owners: BTreeSet<PeerName> = self
            .ring
            .as_ref()
            .map(|r| r.totals().into_keys().filter(|&p| p != local).collect())
            .unwrap_or_default();
        let Some(v) = &mut self.fresh else {
            return;
        };
        let peers: BTreeSet<PeerName> = ctx
            .peers()
            .keys()
            .copied()
            .filter(|&p| p != local)
            .collect();
        if v.in_round {
            // Peers that became live during the round are asked too.
            let newly: Vec<PeerName> = peers.difference(&v.asked).copied().collect();
            if !newly.is_empty() {
                let msg = wire::encode(&Message::SyncRequest {
                    round: v.round,
                    ranges: to_ranges32(&v.asking),
                });
                for peer in newly {
                    v.asked.insert(peer);
                    v.waiting.insert(peer);
                    ctx.unicast(peer, msg.clone());
                }
            }
            v.waiting.retain(|p| ctx.is_live(*p));
            // Done when every live peer answered and every other owner was among them
            // (or `sync_timeout` passed: owners may be dead).
            let owners_heard = owners.iter().all(|o| v.asked.contains(o));
            let timed_out = v.deadline.is_some_and(|d| now >= d);
            if (v.waiting.is_empty() && owners_heard) || timed_out {
                v.in_round = false;
                v.verified = union(&v.verified, &v.asking);
                v.resend_at = None;
                v.deadline = None;
            }
        }
        if v.in_round {
            return;
        }
        let unverified = difference(&owned, &v.verified);
        if unverified.is_empty() {
            return;
        }
        if peers.is_empty() && owners.is_empty() {
            // The whole ring is ours and nobody is around: nobody can know better.
            v.verified = union(&v.verified, &unverified);
            return;
        }
        v.round += 1;
        v.in_round = true;
        v.waiting = peers.clone();
        v.asked = peers;
        v.deadline = Some(now + timeout);
        v.resend_at = Some(now + self.config.timers.request_timeout);
        let msg = wire::encode(&Message::SyncRequest {
            round: v.round,
            ranges: to_ranges32(&unverified),
        });
        v.asking = unverified;
        for &peer in &v.waiting {
            ctx.unicast(peer, msg.clone());
        }
    }

    fn advance(&mut self, ctx: &mut GossipContext<'_>, id: RequestId) {
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        match p.kind {
            Kind::Allocate { subnet } => self.advance_allocate(ctx, id, subnet),
            Kind::Claim { addr, reclaim } => self.advance_claim(ctx, id, addr, reclaim),
        }
    }

    fn advance_allocate(&mut self, ctx: &mut GossipContext<'_>, id: RequestId, subnet: Cidr) {
        let now = ctx.now();
        if self.ring.is_none() || self.is_reclaiming() {
            return;
        }
        if let Some(addr) = self.take_free(subnet) {
            let p = self
                .pending
                .remove(&id)
                .expect("advanced request is pending");
            self.record(addr, p.ident.clone(), Some(subnet), AllocState::Settled);
            self.persist_alloc(addr);
            self.events.push_back(IpamEvent::Allocated {
                request: id,
                ident: p.ident,
                addr: Ipv4Addr::from(addr),
            });
            return;
        }
        let (lo, hi) = self.usable(subnet);
        let owners = self
            .ring
            .as_ref()
            .map(|r| r.owners_in(lo, hi))
            .unwrap_or_default();
        let p = self
            .pending
            .get_mut(&id)
            .expect("advanced request is pending");
        if let Some((donor, deadline)) = p.asked {
            if now < deadline && ctx.is_live(donor) {
                return;
            }
            // No answer is not a "no": the request or its answer may have been lost, so
            // the donor stays a candidate (only explicit denials exhaust the list).
            p.asked = None;
        }
        if let Some(at) = p.retry_at {
            if now < at {
                return;
            }
            p.retry_at = None;
            p.tried.clear();
        }
        // One space request per subnet at a time: the others wait for its answer, which
        // usually brings room for all of them.
        let in_flight = self.pending.iter().any(|(&other, q)| {
            other != id
                && q.asked.is_some()
                && matches!(q.kind, Kind::Allocate { subnet: s } if s.overlaps(subnet))
        });
        if in_flight {
            return;
        }
        let p = self
            .pending
            .get_mut(&id)
            .expect("advanced request is pending");
        let candidates: Vec<(PeerName, u64)> = owners
            .keys()
            .filter(|&&o| o != self.local && !p.tried.contains(&o) && ctx.is_live(o))
            .map(|&o| (o, self.hints.get(&o).map_or(1, |h| h.free)))
            .collect();
        if candidates.is_empty() {
            let unreachable = owners
                .keys()
                .any(|&o| o != self.local && !p.tried.contains(&o) && !ctx.is_live(o));
            if !unreachable {
                let p = self
                    .pending
                    .remove(&id)
                    .expect("advanced request is pending");
                self.events.push_back(IpamEvent::Failed {
                    request: id,
                    ident: p.ident,
                    error: IpamError::NoFreeSpace(subnet),
                });
            }
            return;
        }
        // Weighted by advertised free space; uniform if nobody advertises any.
        let total: u64 = candidates.iter().map(|c| c.1).sum();
        let donor = if total == 0 {
            candidates[(ctx.random_u64() % candidates.len() as u64) as usize].0
        } else {
            let mut r = ctx.random_u64() % total;
            let mut pick = candidates[0].0;
            for &(o, w) in &candidates {
                if r < w {
                    pick = o;
                    break;
                }
                r -= w;
            }
            pick
        };
        let ring_id = self.ring.as_ref().map_or(0, Ring::id);
        p.asked = Some((donor, now + self.config.timers.request_timeout));
        ctx.unicast(
            donor,
            wire::encode(&Message::SpaceRequest {
                request: id.0,
                ring: ring_id,
                subnet,
            }),
        );
    }

    fn advance_claim(
        &mut self,
        ctx: &mut GossipContext<'_>,
        id: RequestId,
        addr: u32,
        reclaim: bool,
    ) {
        let now = ctx.now();
        let owner = match &self.ring {
            _ if !self.config.range.contains_u32(addr) => Some(self.local),
            Some(ring) => ring.owner_of(addr),
            None => return,
        };
        let Some(owner) = owner else {
            return;
        };
        if owner == self.local {
            let p = self
                .pending
                .remove(&id)
                .expect("advanced request is pending");
            self.space.remove(u64::from(addr), u64::from(addr) + 1);
            if let Some(r) = self.allocs.get_mut(&addr) {
                r.state = AllocState::Settled;
            }
            self.persist_alloc(addr);
            if !reclaim {
                self.events.push_back(IpamEvent::Allocated {
                    request: id,
                    ident: p.ident,
                    addr: Ipv4Addr::from(addr),
                });
            }
            return;
        }
        let p = self
            .pending
            .get_mut(&id)
            .expect("advanced request is pending");
        if let Some((_, deadline)) = p.asked {
            if now < deadline {
                return;
            }
            p.asked = None;
        }
        if let Some(at) = p.retry_at {
            if now < at {
                return;
            }
            p.retry_at = None;
        }
        if p.attempts >= MAX_CLAIM_ATTEMPTS {
            let p = self
                .pending
                .remove(&id)
                .expect("advanced request is pending");
            if reclaim {
                if let Some(r) = self.allocs.get_mut(&addr) {
                    r.state = AllocState::Disputed(owner);
                }
                self.events.push_back(IpamEvent::AddressDisputed {
                    addr: Ipv4Addr::from(addr),
                    ident: p.ident,
                    owner,
                });
            } else {
                self.allocs.remove(&addr);
                if let Some(set) = self.by_ident.get_mut(&p.ident) {
                    set.remove(&addr);
                    if set.is_empty() {
                        self.by_ident.remove(&p.ident);
                    }
                }
                self.events.push_back(IpamEvent::Failed {
                    request: id,
                    ident: p.ident,
                    error: IpamError::OwnedByOther {
                        addr: Ipv4Addr::from(addr),
                        owner,
                    },
                });
            }
            return;
        }
        if !ctx.is_live(owner) {
            return;
        }
        p.attempts += 1;
        p.asked = Some((owner, now + self.config.timers.request_timeout));
        let ring_id = self.ring.as_ref().map_or(0, Ring::id);
        ctx.unicast(
            owner,
            wire::encode(&Message::ClaimRequest {
                request: id.0,
                ring: ring_id,
                addr,
            }),
        );
    }

    // ---- internals: requests from other peers ----

    fn deny(
        ctx: &mut GossipContext<'_>,
        to: PeerName,
        request: u64,
        reason: DenyReason,
        update: Option<Update>,
    ) {
        ctx.unicast(
            to,
            wire::encode(&Message::Denied {
                request,
                reason,
                update,
            }),
        );
    }

    fn ready_to_give(&self, ring_id: u64) -> bool {
        !self.left && !self.is_reclaiming() && self.ring.as_ref().is_some_and(|r| r.id() == ring_id)
    }

    fn on_space_request(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        request: u64,
        ring_id: u64,
        subnet: Cidr,
    ) {
        if !self.ready_to_give(ring_id) || check_subnet(&self.config, subnet).is_err() {
            return Self::deny(ctx, from, request, DenyReason::NotReady, None);
        }
        let (lo, hi) = self.usable(subnet);
        let cap = self.space.total() / 2;
        let best = self
            .space
            .intervals_in(lo, hi)
            .filter_map(|(s, e)| largest_aligned_block(s, e, cap))
            .max_by_key(|&(start, size)| (size, start));
        let Some((start, size)) = best else {
            let mut update = Update::empty(self.config.range);
            update.hints.push((self.local, self.refresh_hint()));
            return Self::deny(ctx, from, request, DenyReason::NoSpace, Some(update));
        };
        self.give(ctx, from, request, start, start + size);
    }

    fn on_claim_request(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        request: u64,
        ring_id: u64,
        addr: u32,
    ) {
        if !self.ready_to_give(ring_id) {
            return Self::deny(ctx, from, request, DenyReason::NotReady, None);
        }
        if !self.owns(addr) {
            let update = self.ring.as_ref().and_then(|ring| {
                let (token, _) = ring.entry_at(addr)?;
                let mut u = Update::empty(self.config.range);
                u.ring = Some(RingPart {
                    id: ring.id(),
                    seeds: None,
                    entries: ring.with_successors(&[token]),
                });
                Some(u)
            });
            return Self::deny(ctx, from, request, DenyReason::NotOwner, update);
        }
        if self.allocs.contains_key(&addr) {
            return Self::deny(ctx, from, request, DenyReason::InUse, None);
        }
        self.give(ctx, from, request, u64::from(addr), u64::from(addr) + 1);
    }

    /// Gives `[start, end)` (free, ours) to `to`: change the ring, persist, broadcast,
    /// and answer the request with the same change.
    fn give(
        &mut self,
        ctx: &mut GossipContext<'_>,
        to: PeerName,
        request: u64,
        start: u64,
        end: u64,
    ) {
        let local = self.local;
        let start32 = u32::try_from(start).expect("free space lies inside the IPv4 range");
        let Some(changed) = self
            .ring
            .as_mut()
            .and_then(|ring| ring.assign(start32, end, to, local))
        else {
            return Self::deny(ctx, to, request, DenyReason::NotReady, None);
        };
        self.ring_changed(&changed);
        // The answer goes out before the broadcast, so over one connection the requester
        // sees it first and knows the space is fresh from its owner.
        if let Some(ring) = &self.ring {
            let update = Update {
                range: self.config.range,
                ring: Some(RingPart {
                    id: ring.id(),
                    seeds: None,
                    entries: ring.with_successors(&changed),
                }),
                hints: vec![],
                paxos: vec![],
            };
            ctx.unicast(to, wire::encode(&Message::Grant { request, update }));
        }
        self.broadcast_change(ctx, &changed);
    }

    fn on_denied(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        request: u64,
        reason: DenyReason,
    ) {
        let now = ctx.now();
        let retry = self.config.timers.request_timeout;
        let Some(p) = self.pending.get_mut(&RequestId(request)) else {
            return;
        };
        if p.asked.is_some_and(|(who, _)| who == from) {
            p.asked = None;
        }
        match (reason, p.kind.clone()) {
            (DenyReason::InUse, Kind::Claim { .. }) => p.attempts = MAX_CLAIM_ATTEMPTS,
            (DenyReason::NotReady, _) => p.retry_at = Some(now + retry),
            (_, Kind::Allocate { subnet }) => {
                // The same answer holds for everyone waiting on that subnet.
                for q in self.pending.values_mut() {
                    if q.kind == (Kind::Allocate { subnet }) {
                        q.tried.insert(from);
                    }
                }
            }
            (_, Kind::Claim { .. }) => {}
        }
    }

    fn handle_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        message: Message,
    ) -> Result<(), IpamError> {
        match message {
            Message::Update(update) => {
                self.merge_update(ctx, from, update)?;
            }
            Message::SpaceRequest {
                request,
                ring,
                subnet,
            } => self.on_space_request(ctx, from, request, ring, subnet),
            Message::ClaimRequest {
                request,
                ring,
                addr,
            } => self.on_claim_request(ctx, from, request, ring, addr),
            Message::Grant { request, update } => {
                let ours = self.pending.get_mut(&RequestId(request)).is_some_and(|p| {
                    p.asked = None;
                    true
                });
                let tokens: Vec<u32> = update
                    .ring
                    .as_ref()
                    .map(|r| r.entries.iter().map(|(t, _)| *t).collect())
                    .unwrap_or_default();
                self.merge_update(ctx, from, update)?;
                // Space its owner just gave us for our own request is not stale.
                if ours && let (Some(v), Some(ring)) = (&mut self.fresh, &self.ring) {
                    let granted: Vec<(u64, u64)> = tokens
                        .iter()
                        .filter_map(|t| ring.entries().get(t).map(|e| (*t, *e)))
                        .filter(|(_, e)| e.owner == self.local)
                        .map(|(t, _)| {
                            let end = ring
                                .entries()
                                .range(t.saturating_add(1)..)
                                .next()
                                .filter(|(n, _)| **n > t)
                                .map_or(ring.range().end(), |(n, _)| u64::from(*n));
                            (u64::from(t), end)
                        })
                        .collect();
                    v.verified = union(&v.verified, &granted);
                }
            }
            Message::Denied {
                request,
                reason,
                update,
            } => {
                if let Some(update) = update {
                    self.merge_update(ctx, from, update)?;
                }
                self.on_denied(ctx, from, request, reason);
            }
            Message::RingRequest => {
                if self.ring.is_some() {
                    let update = self.ring_update(true);
                    ctx.unicast(from, wire::encode(&Message::Update(update)));
                }
            }
            Message::SyncRequest { round, ranges } => {
                let mut update = Update::empty(self.config.range);
                if let Some(ring) = &self.ring {
                    // What we know inside the ranges it believes it owns, and every entry
                    // we think it owns: its old incarnation may have owned (and given
                    // away parts of) ranges its fresh ring does not show as its own.
                    let mut tokens: Vec<u32> = ranges
                        .iter()
                        .flat_map(|&(s, e)| {
                            let first = ring.entry_at(s).map_or(s, |(t, _)| t);
                            ring.entries()
                                .range(range32(u64::from(first), e))
                                .map(|(&t, _)| t)
                        })
                        .collect();
                    tokens.extend(
                        ring.entries()
                            .iter()
                            .filter(|(_, e)| e.owner == from)
                            .map(|(&t, _)| t),
                    );
                    tokens.sort_unstable();
                    tokens.dedup();
                    update.ring = Some(RingPart {
                        id: ring.id(),
                        seeds: Some(ring.seeds().to_vec()),
                        entries: ring.with_successors(&tokens),
                    });
                }
                ctx.unicast(from, wire::encode(&Message::SyncReply { round, update }));
            }
            Message::SyncReply { round, update } => {
                if let Some(v) = &mut self.fresh
                    && v.in_round
                    && v.round == round
                {
                    v.waiting.remove(&from);
                }
                self.merge_update(ctx, from, update)?;
            }
        }
        Ok(())
    }

    fn digest_value(&self) -> Digest {
        let mut hints = vec![0u64; HINT_BUCKETS];
        for (peer, hint) in &self.hints {
            let mut buf = [0u8; 24];
            buf[..8].copy_from_slice(&peer.as_u64().to_be_bytes());
            buf[8..16].copy_from_slice(&hint.seq.to_be_bytes());
            buf[16..].copy_from_slice(&hint.free.to_be_bytes());
            let slot = &mut hints[hint_bucket(*peer)];
            *slot = fnv1a(&buf) ^ slot.rotate_left(5);
        }
        let paxos = if self.ring.is_none() {
            let bytes = postcard::to_allocvec(&self.paxos.states().iter().collect::<Vec<_>>())
                .expect("paxos states always serialize");
            fnv1a(&bytes)
        } else {
            0
        };
        Digest {
            ring: self.ring.as_ref().map(Ring::id),
            buckets: self
                .ring
                .as_ref()
                .map(Ring::bucket_hashes)
                .unwrap_or_default(),
            hints,
            paxos,
        }
    }

    fn gossip_result(
        &mut self,
        ctx: &mut GossipContext<'_>,
        result: Result<Update, IpamError>,
    ) -> Result<Option<Vec<u8>>, GossipError> {
        self.drive(ctx);
        match result {
            Ok(new) if new.is_empty() => Ok(None),
            Ok(new) => Ok(Some(wire::encode(&Message::Update(new)))),
            Err(e) => Err(self.contain(e)),
        }
    }

    /// A refused message becomes an event and an error for the mesh to count; it never
    /// closes the connection (see weave-mesh's gossip docs).
    fn contain(&mut self, e: IpamError) -> GossipError {
        match e {
            IpamError::Malformed(m) => GossipError::Malformed(m),
            other => {
                self.conflicts += 1;
                self.events
                    .push_back(IpamEvent::Conflict(other.to_string()));
                GossipError::Conflict(other.to_string())
            }
        }
    }

    fn decode_update(bytes: &[u8]) -> Result<Update, GossipError> {
        match wire::decode(bytes).map_err(GossipError::Malformed)? {
            Message::Update(update) => Ok(update),
            _ => Err(GossipError::Malformed(
                "gossip that is not an update".to_owned(),
            )),
        }
    }
}

impl Gossiper for Ipam {
    fn merge_received(
        &mut self,
        ctx: &mut GossipContext<'_>,
        origin: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        let update = Self::decode_update(update)?;
        // A peer without a ring is running consensus; a few ring holders (about
        // RING_REPLIERS of them, chosen at random) send it the ring instead of everyone.
        let ringless_paxos = update.ring.is_none() && !update.paxos.is_empty();
        if ringless_paxos && self.ring.is_some() && origin != self.local {
            let n = ctx.peers().len().max(1) as u64;
            if ctx.random_u64() % n < RING_REPLIERS {
                let reply = self.ring_update(true);
                ctx.unicast(origin, wire::encode(&Message::Update(reply)));
            }
        }
        let result = self.merge_update(ctx, origin, update);
        self.gossip_result(ctx, result)
    }

    fn merge_delta(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        let update = Self::decode_update(update)?;
        let result = self.merge_update(ctx, from, update);
        self.gossip_result(ctx, result)
    }

    fn on_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        from: PeerName,
        message: &[u8],
    ) -> Result<(), GossipError> {
        let message = wire::decode(message).map_err(GossipError::Malformed)?;
        let result = self.handle_unicast(ctx, from, message);
        self.drive(ctx);
        result.map_err(|e| self.contain(e))
    }

    fn complete(&self) -> Vec<u8> {
        let mut update = self.ring_update(true);
        if self.ring.is_none() {
            update.paxos = self
                .paxos
                .states()
                .iter()
                .map(|(&p, s)| (p, s.clone()))
                .collect();
        }
        wire::encode(&Message::Update(update))
    }

    fn digest(&self) -> Vec<u8> {
        wire::encode_digest(&self.digest_value())
    }

    fn missing(&self, their_digest: &[u8]) -> Option<Vec<u8>> {
        let Some(theirs) = wire::decode_digest(their_digest) else {
            return Some(self.complete());
        };
        let ours = self.digest_value();
        let mut update = Update::empty(self.config.range);
        if let Some(ring) = &self.ring {
            match theirs.ring {
                None => update = self.ring_update(true),
                // A different ring: send its identity only, so they can report it.
                Some(id) if id != ring.id() => {
                    update.ring = Some(RingPart {
                        id: ring.id(),
                        seeds: Some(ring.seeds().to_vec()),
                        entries: Vec::new(),
                    });
                }
                Some(_) => {
                    let entries = ring.entries_differing(&theirs.buckets);
                    if !entries.is_empty() {
                        update.ring = Some(RingPart {
                            id: ring.id(),
                            seeds: None,
                            entries,
                        });
                    }
                }
            }
        } else if theirs.ring.is_none() && theirs.paxos != ours.paxos {
            update.paxos = self
                .paxos
                .states()
                .iter()
                .map(|(&p, s)| (p, s.clone()))
                .collect();
        }
        if update.hints.is_empty() && theirs.hints != ours.hints {
            update.hints = self
                .hints
                .iter()
                .filter(|(p, _)| {
                    theirs.hints.get(hint_bucket(**p)) != ours.hints.get(hint_bucket(**p))
                })
                .map(|(&p, &h)| (p, h))
                .collect();
        }
        (!update.is_empty()).then(|| wire::encode(&Message::Update(update)))
    }

    fn on_peers_changed(&mut self, ctx: &mut GossipContext<'_>) {
        if self.ring.is_none() && self.ring_wanted {
            self.ask_for_ring(ctx);
        }
        self.drive(ctx);
    }

    fn handle_timeout(&mut self, ctx: &mut GossipContext<'_>) {
        let now = ctx.now();
        if self.left {
            return;
        }
        if self.hint_due.is_some_and(|t| t <= now) && self.ring.is_some() {
            let hint = self.refresh_hint();
            let mut update = Update::empty(self.config.range);
            update.hints.push((self.local, hint));
            ctx.broadcast(wire::encode(&Message::Update(update)));
        }
        if self.ring.is_none() && self.ring_wanted {
            if self.ring_request_at.is_some_and(|t| t <= now) {
                self.ask_for_ring(ctx);
            }
            if let InitMode::Consensus { .. } = self.config.init
                && self.paxos_deadline.is_none_or(|t| t <= now)
            {
                // Nothing moved for a while: the highest proposer may be gone or cut off.
                self.paxos.propose(self.local);
                self.publish_paxos(ctx);
                self.reset_paxos_timer(ctx);
            }
        }
        if let Some(v) = &mut self.fresh
            && v.in_round
            && v.resend_at.is_some_and(|t| t <= now)
        {
            v.resend_at = Some(now + self.config.timers.request_timeout);
            let msg = wire::encode(&Message::SyncRequest {
                round: v.round,
                ranges: to_ranges32(&v.asking),
            });
            for &peer in &v.waiting {
                ctx.unicast(peer, msg.clone());
            }
        }
        self.drive(ctx);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.hint_due);
        if self.ring.is_none() && self.ring_wanted {
            consider(self.ring_request_at);
            if let InitMode::Consensus { .. } = self.config.init {
                consider(self.paxos_deadline);
            }
        }
        if let Some(v) = &self.fresh
            && v.in_round
        {
            consider(v.resend_at);
            consider(v.deadline);
        }
        // While re-learning, requests do not move (the round's own timers wake us).
        if !self.is_reclaiming() {
            for p in self.pending.values() {
                consider(p.asked.map(|(_, t)| t));
                consider(p.retry_at);
            }
        }
        next
    }
}

fn check_subnet(config: &IpamConfig, subnet: Cidr) -> Result<(), IpamError> {
    if subnet.prefix_len() > 30 {
        return Err(IpamError::SubnetTooSmall(subnet));
    }
    if !subnet.overlaps(config.range) {
        return Err(IpamError::SubnetOutsideRange {
            subnet,
            range: config.range,
        });
    }
    Ok(())
}

fn sorted(seeds: &[PeerName]) -> Vec<PeerName> {
    let mut s = seeds.to_vec();
    s.sort_unstable();
    s.dedup();
    s
}

fn hint_bucket(peer: PeerName) -> usize {
    (fnv1a(&peer.as_u64().to_be_bytes()) % HINT_BUCKETS as u64) as usize
}

fn to_ranges32(ranges: &[(u64, u64)]) -> Vec<(u32, u64)> {
    ranges
        .iter()
        .filter_map(|&(s, e)| Some((u32::try_from(s).ok()?, e)))
        .collect()
}

fn to_addr(a: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(a).unwrap_or(u32::MAX))
}

/// `[s, e)` as bounds on `u32` keys (`e` may be 2^32).
fn range32(s: u64, e: u64) -> (Bound<u32>, Bound<u32>) {
    let Ok(lo) = u32::try_from(s) else {
        return (Bound::Included(0), Bound::Excluded(0));
    };
    if e <= s {
        return (Bound::Included(lo), Bound::Excluded(lo));
    }
    match u32::try_from(e) {
        Ok(hi) => (Bound::Included(lo), Bound::Excluded(hi)),
        Err(_) => (Bound::Included(lo), Bound::Unbounded),
    }
}

/// `a ∪ b` for sorted lists of disjoint half-open intervals, coalesced.
fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a \ b` for sorted lists of disjoint half-open intervals.
fn difference(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(mut s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_difference() {
        assert_eq!(
            difference(&[(0, 10)], &[(2, 4), (6, 7)]),
            vec![(0, 2), (4, 6), (7, 10)]
        );
        assert_eq!(
            difference(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(0, 5), (25, 30)]
        );
        assert_eq!(difference(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(difference(&[], &[(0, 10)]), vec![]);
        assert_eq!(difference(&[(0, 10)], &[(0, 10)]), vec![]);
    }
}
