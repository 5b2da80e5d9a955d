//! IPAM in the daemon: the [`weave_ipam::Ipam`] core registered on the mesh's `"ipam"`
//! gossip channel, its state in the redb database, and the requests of the HTTP API and
//! the container task.
//!
//! The core's contract, kept here: after every call into it (ours through
//! [`Mesh::with_channel`], and the mesh's gossip callbacks), [`IpamService::flush`] writes
//! what it asks to persist in one transaction *before* anything else happens: before a
//! result or event is answered, and before the event loop hands the mesh's queued gossip
//! to the sockets (`flush` is the first thing the loop's `drain` does).
//!
//! A daemon whose database holds no trusted IPAM state (first start, or state lost)
//! starts the core with [`Ipam::new`]: it allocates nothing until the container task has
//! re-claimed the addresses its containers still hold ([`IpamRequest::Reclaim`]) and the
//! core has re-learned its ranges from the other peers. Only then is the state marked
//! trusted (`local` in the meta table), so a crash while re-learning restarts the
//! re-learning instead of trusting half of it.
//!
//! Pending allocations and claims wait here with their answer channel; the caller gives
//! up after [`WAIT_TIMEOUT`](crate::control::ipam::WAIT_TIMEOUT) and drops it, which
//! cancels the request at the next flush.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use redb::{ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use weave_ipam::{
    AcceptorState, AllocResult, CHANNEL, Cidr, GossipContext, InitMode, Ipam, IpamConfig,
    IpamError, IpamEvent, PersistOp, RequestId, RingEntry, SavedAllocation, SavedRing, SavedState,
};
use weave_mesh::{Mesh, PeerName};

use super::state::State;
use crate::control::ipam::{IpamFailure, IpamRequest};
use crate::report::ipam::{IpamEntry, IpamOwner, IpamReport};

/// Weave's default allocation range.
pub(crate) const DEFAULT_RANGE: &str = "10.32.0.0/12";
pub(crate) const DISABLED: &str =
    "IPAM is disabled (the daemon was launched with --ipalloc-range '')";

/// Small records: the trust marker, the ring's identity, Paxos, nicknames.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam.meta.v1");
/// Ring entries by token.
const RING: TableDefinition<u32, &[u8]> = TableDefinition::new("ipam.ring.v1");
/// Allocations by address.
const ALLOCS: TableDefinition<u32, &[u8]> = TableDefinition::new("ipam.allocations.v1");
/// Our peer name, written once the saved state can be trusted (see the module docs).
const KEY_LOCAL: &str = "local";
const KEY_RING: &str = "ring";
const KEY_PAXOS: &str = "paxos";

/// `--ipalloc-init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InitArg {
    /// `consensus` or `consensus=N`; without N, the number of launch peers + 1.
    Consensus(Option<usize>),
    /// `seed=NAME,NAME,...`: peer names.
    Seed(Vec<PeerName>),
    Observer,
}

impl FromStr for InitArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const HOW: &str = "expected consensus, consensus=N, seed=NAME,NAME,... or observer";
        let s = s.trim();
        match s.split_once('=') {
            None if s == "consensus" => Ok(Self::Consensus(None)),
            None if s == "observer" => Ok(Self::Observer),
            Some(("consensus", n)) => match n.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Consensus(Some(n))),
                _ => Err(format!(
                    "consensus={n}: the number of peers must be a positive number"
                )),
            },
            Some(("seed", names)) => {
                let mut seeds = Vec::new();
                for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let peer = name
                        .parse::<PeerName>()
                        .map_err(|e| format!("seed {name:?}: {e}"))?;
                    if !seeds.contains(&peer) {
                        seeds.push(peer);
                    }
                }
                if seeds.is_empty() {
                    return Err("seed= needs at least one peer name".to_owned());
                }
                Ok(Self::Seed(seeds))
            }
            _ => Err(format!("{s:?}: {HOW}")),
        }
    }
}

impl fmt::Display for InitArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Consensus(None) => f.write_str("consensus"),
            Self::Consensus(Some(n)) => write!(f, "consensus={n}"),
            Self::Seed(seeds) => {
                let names: Vec<String> = seeds.iter().map(ToString::to_string).collect();
                write!(f, "seed={}", names.join(","))
            }
            Self::Observer => f.write_str("observer"),
        }
    }
}

/// `--ipalloc-range`: a CIDR, or the empty string to turn IPAM off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RangeArg(pub(crate) Option<Cidr>);

impl FromStr for RangeArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(None));
        }
        parse_cidr(s).map(|c| Self(Some(c)))
    }
}

impl fmt::Display for RangeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(cidr) => write!(f, "{cidr}"),
            None => Ok(()),
        }
    }
}

/// A network in CIDR form with its host bits zero, at least 4 addresses.
pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let cidr: Cidr = s.trim().parse().map_err(|e: IpamError| match e {
        IpamError::InvalidCidr(why) if why.contains("host bits") => {
            format!("{why}: give the network address")
        }
        _ => format!("{s:?} is not a network in CIDR form (like 198.18.0.0/16)"),
    })?;
    if cidr.size() < 4 {
        return Err(format!(
            "{cidr} is too small to allocate from (at least a /30)"
        ));
    }
    Ok(cidr)
}

/// The IPAM flags of `weave launch` / `weave router`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpamSettings {
    /// `None`: IPAM off.
    pub(crate) range: Option<Cidr>,
    pub(crate) default_subnet: Option<Cidr>,
    pub(crate) init: InitArg,
}

impl Default for IpamSettings {
    fn default() -> Self {
        Self {
            range: DEFAULT_RANGE.parse().ok(),
            default_subnet: None,
            init: InitArg::Consensus(None),
        }
    }
}

impl IpamSettings {
    /// Checks the flags together: the default subnet needs a range and must lie in it.
    pub(crate) fn check(&self) -> Result<(), String> {
        match (self.range, self.default_subnet) {
            (None, Some(_)) => {
                Err("--ipalloc-default-subnet needs an --ipalloc-range (IPAM is off)".to_owned())
            }
            (Some(range), Some(subnet)) if !range.contains_cidr(subnet) => Err(format!(
                "--ipalloc-default-subnet {subnet} is not inside --ipalloc-range {range}"
            )),
            _ => Ok(()),
        }
    }

    /// The core's configuration; `None` when IPAM is off. `launch_peers` is how many
    /// peers the daemon was told to connect to (consensus' default quorum base).
    pub(crate) fn config(&self, launch_peers: usize) -> Option<IpamConfig> {
        let range = self.range?;
        let init = match &self.init {
            InitArg::Consensus(n) => InitMode::Consensus {
                peers: n.unwrap_or(launch_peers + 1),
            },
            InitArg::Seed(seeds) => InitMode::Seed(seeds.clone()),
            InitArg::Observer => InitMode::Observer,
        };
        let mut config = IpamConfig::new(range, init);
        if let Some(subnet) = self.default_subnet {
            config.default_subnet = subnet;
        }
        Some(config)
    }
}

/// An HTTP request (or the container task) waiting for a pending allocation or claim.
struct Waiter {
    ident: String,
    prefix: u8,
    reply: oneshot::Sender<Result<Ipv4Net, IpamFailure>>,
}

/// What the event loop holds for IPAM.
pub(crate) struct IpamService {
    /// `None` when IPAM is off.
    config: Option<IpamConfig>,
    init: String,
    state: Arc<State>,
    waiters: BTreeMap<RequestId, Vec<Waiter>>,
    ring_waiters: Vec<oneshot::Sender<Result<(), IpamFailure>>>,
    /// Nicknames of every peer seen live, so owners that died still show one.
    nicknames: BTreeMap<PeerName, String>,
    topology_epoch: Option<u64>,
    /// Whether the database's state is marked trusted.
    trusted: bool,
    last_conflict: Option<String>,
    disputed: BTreeMap<Ipv4Addr, (String, PeerName)>,
    persist_error: Option<String>,
}

/// Calls into the core with a gossip context (what it sends goes out on the next drain).
fn call<R>(mesh: &mut Mesh, f: impl FnOnce(&mut Ipam, &mut GossipContext<'_>) -> R) -> Option<R> {
    mesh.with_channel::<Ipam, _>(CHANNEL, Instant::now(), f)
}

impl IpamService {
    /// Loads the saved state (or starts without), and registers the core on the mesh.
    /// `new_name`: the peer name was made up at this start, so no earlier incarnation
    /// can have owned ranges and there is nothing to re-learn.
    pub(crate) fn start(
        settings: &IpamSettings,
        launch_peers: usize,
        local: PeerName,
        new_name: bool,
        state: Arc<State>,
        mesh: &mut Mesh,
    ) -> Result<Self> {
        let config = settings.config(launch_peers);
        let init = config.as_ref().map_or_else(String::new, |c| match &c.init {
            InitMode::Consensus { peers } => format!("consensus={peers}"),
            other => InitArg::from_mode(other).to_string(),
        });
        let mut service = Self {
            config: config.clone(),
            init,
            state,
            waiters: BTreeMap::new(),
            ring_waiters: Vec::new(),
            nicknames: BTreeMap::new(),
            topology_epoch: None,
            trusted: false,
            last_conflict: None,
            disputed: BTreeMap::new(),
            persist_error: None,
        };
        let Some(config) = config else {
            tracing::info!("IPAM is off (--ipalloc-range '')");
            return Ok(service);
        };
        service.nicknames = service
            .state
            .get::<BTreeMap<PeerName, String>>(KEY_NICKNAMES_META)?
            .unwrap_or_default();
        let saved = load(&service.state).context("cannot read the saved IPAM state")?;
        let ipam = match saved {
            Some(saved) => match Ipam::restore(config.clone(), local, saved) {
                Ok(ipam) => {
                    service.trusted = true;
                    tracing::info!(range = %config.range, "IPAM: restored the saved ring and allocations");
                    ipam
                }
                Err(err) => {
                    tracing::warn!(%err, "IPAM: not using the saved state; starting afresh");
                    clear(&service.state)?;
                    Ipam::new(config.clone(), local)?
                }
            },
            None if new_name => {
                clear(&service.state)?;
                tracing::info!(range = %config.range, init = %service.init, "IPAM: first start under a new peer name");
                Ipam::first_start(config.clone(), local)?
            }
            None => {
                clear(&service.state)?;
                tracing::info!(range = %config.range, init = %service.init, "IPAM: no saved state; re-learning from peers before allocating");
                Ipam::new(config.clone(), local)?
            }
        };
        mesh.register_channel(CHANNEL, Box::new(ipam));
        Ok(service)
    }

    /// Persists what the core asks for, then answers its events. Call after every call
    /// into the mesh, before sending what it queued.
    pub(crate) fn flush(&mut self, mesh: &mut Mesh) {
        if self.config.is_none() {
            return;
        }
        self.cancel_abandoned(mesh);
        let drained = call(mesh, |ipam, _| {
            let mut ops = Vec::new();
            while let Some(op) = ipam.poll_persist() {
                ops.push(op);
            }
            let mut events = Vec::new();
            while let Some(event) = ipam.poll_event() {
                events.push(event);
            }
            (ops, events, !ipam.is_reclaiming())
        });
        let Some((ops, events, settled)) = drained else {
            return;
        };
        let mark_trusted = settled && !self.trusted;
        if !ops.is_empty() || mark_trusted {
            let local = mesh.name();
            match persist(&self.state, &ops, mark_trusted.then_some(local)) {
                Ok(()) => {
                    if mark_trusted {
                        self.trusted = true;
                        tracing::info!("IPAM: re-learning done; allocating");
                    }
                }
                Err(err) => {
                    // The contract says nothing goes out unpersisted; gossip already
                    // queued cannot be taken back, so at least say so loudly.
                    tracing::error!("IPAM: cannot persist allocation state: {err:#}");
                    self.persist_error = Some(format!("{err:#}"));
                }
            }
        }
        for event in events {
            self.on_event(event);
        }
        self.refresh_nicknames(mesh);
    }

    fn on_event(&mut self, event: IpamEvent) {
        match event {
            IpamEvent::Allocated {
                request,
                ident,
                addr,
            } => {
                tracing::debug!(%addr, ident, "IPAM: pending request done");
                for waiter in self.waiters.remove(&request).unwrap_or_default() {
                    let net = Ipv4Net::new(addr, waiter.prefix).unwrap_or_else(|_| addr.into());
                    let _ = waiter.reply.send(Ok(net));
                }
            }
            IpamEvent::Failed {
                request,
                ident,
                error,
            } => {
                tracing::info!(ident, %error, "IPAM: request failed");
                for waiter in self.waiters.remove(&request).unwrap_or_default() {
                    let _ = waiter.reply.send(Err(failure(&error)));
                }
            }
            IpamEvent::RingReady => {
                tracing::info!("IPAM: the allocation ring exists");
                for reply in self.ring_waiters.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            IpamEvent::Conflict(what) => {
                tracing::warn!("IPAM: conflicting ring update contained: {what}");
                self.last_conflict = Some(what);
            }
            IpamEvent::AddressDisputed { addr, ident, owner } => {
                tracing::error!(
                    %addr, ident, %owner,
                    "IPAM: lost the range of an address in use here to a conflict, and its new owner did not hand it back: it may be in use twice"
                );
                self.disputed.insert(addr, (ident, owner));
            }
        }
    }

    /// Cancels requests whose callers stopped waiting, and forgets their prime waiters.
    fn cancel_abandoned(&mut self, mesh: &mut Mesh) {
        self.ring_waiters.retain(|w| !w.is_closed());
        let abandoned: Vec<RequestId> = self
            .waiters
            .iter_mut()
            .filter_map(|(id, ws)| {
                ws.retain(|w| !w.reply.is_closed());
                ws.is_empty().then_some(*id)
            })
            .collect();
        if abandoned.is_empty() {
            return;
        }
        for id in &abandoned {
            self.waiters.remove(id);
        }
        call(mesh, |ipam, _| {
            for id in abandoned {
                ipam.cancel(id);
            }
        });
    }

    /// Remembers the nicknames of live peers when the topology changed.
    fn refresh_nicknames(&mut self, mesh: &Mesh) {
        let epoch = mesh.topology().epoch();
        if self.topology_epoch == Some(epoch) {
            return;
        }
        self.topology_epoch = Some(epoch);
        let mut changed = false;
        for (name, peer) in mesh.live_peers() {
            if self.nicknames.get(name) != Some(&peer.nickname) {
                self.nicknames.insert(*name, peer.nickname.clone());
                changed = true;
            }
        }
        if changed && let Err(err) = self.state.put(KEY_NICKNAMES_META, &self.nicknames) {
            tracing::warn!(%err, "IPAM: cannot persist peer nicknames");
        }
    }

    /// Carries out a request; answers at once, or once the core's event comes.
    pub(crate) fn handle(&mut self, mesh: &mut Mesh, request: IpamRequest) {
        let Some(config) = self.config.clone() else {
            refuse(request);
            return;
        };
        match request {
            IpamRequest::Allocate {
                ident,
                subnet,
                reply,
            } => {
                if let Err(why) = check_ident(&ident) {
                    let _ = reply.send(Err(why));
                    return;
                }
                let prefix = subnet.unwrap_or(config.default_subnet).prefix_len();
                let result = call(mesh, |ipam, ctx| ipam.allocate(ctx, &ident, subnet));
                self.answer_alloc(mesh, ident, prefix, result, reply);
            }
            IpamRequest::Claim { ident, addr, reply } => {
                if let Err(why) = check_ident(&ident) {
                    let _ = reply.send(Err(why));
                    return;
                }
                let subnet = Cidr::containing(addr.addr(), addr.prefix_len()).ok();
                let result = call(mesh, |ipam, ctx| {
                    ipam.claim(ctx, &ident, addr.addr(), subnet)
                });
                self.answer_alloc(mesh, ident, addr.prefix_len(), result, reply);
            }
            IpamRequest::Lookup {
                ident,
                subnet,
                reply,
            } => {
                let subnet = subnet.unwrap_or(config.default_subnet);
                let found = mesh
                    .channel::<Ipam>(CHANNEL)
                    .map(|ipam| ipam.lookup(&ident))
                    .unwrap_or_default();
                let nets: Vec<Ipv4Net> = found
                    .into_iter()
                    .filter(|a| subnet.contains(*a))
                    .map(|a| Ipv4Net::new(a, subnet.prefix_len()).unwrap_or_else(|_| a.into()))
                    .collect();
                let _ = reply.send(if nets.is_empty() {
                    Err(IpamFailure::NotFound(format!(
                        "no address allocated to {ident} in {subnet}"
                    )))
                } else {
                    Ok(nets)
                });
            }
            IpamRequest::Owned { reply } => {
                let mut owned: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
                if let Some(ipam) = mesh.channel::<Ipam>(CHANNEL) {
                    for (addr, ident) in ipam.allocations() {
                        owned.entry(ident.to_owned()).or_default().push(addr);
                    }
                }
                let _ = reply.send(Ok(owned));
            }
            IpamRequest::Free { ident, addr, reply } => {
                let holder = mesh.channel::<Ipam>(CHANNEL).and_then(|ipam| {
                    ipam.allocations()
                        .find(|(a, _)| *a == addr)
                        .map(|(_, i)| i.to_owned())
                });
                let answer = match holder {
                    None => Err(IpamFailure::NotFound(format!("{addr} is not allocated"))),
                    Some(holder) if holder != ident => Err(IpamFailure::Invalid(format!(
                        "{addr} is allocated to {holder}, not to {ident}"
                    ))),
                    Some(_) => {
                        call(mesh, |ipam, ctx| ipam.free_addr(ctx, addr));
                        self.persisted(mesh)
                    }
                };
                let _ = reply.send(answer);
            }
            IpamRequest::FreeIdent { ident, reply } => {
                let freed =
                    call(mesh, |ipam, ctx| ipam.free_ident(ctx, &ident)).unwrap_or_default();
                // Its requests in progress are gone with it: tell whoever waits on them.
                for waiters in self.waiters.values_mut() {
                    for w in waiters.extract_if(.., |w| w.ident == ident) {
                        let _ = w.reply.send(Err(IpamFailure::Invalid(format!(
                            "{ident} was released while waiting for an address"
                        ))));
                    }
                }
                self.waiters.retain(|_, ws| !ws.is_empty());
                let _ = reply.send(self.persisted(mesh).map(|()| freed));
            }
            IpamRequest::Prime { reply } => {
                let exists = call(mesh, |ipam, ctx| ipam.prime(ctx)).unwrap_or(false);
                self.flush(mesh);
                if exists {
                    let _ = reply.send(Ok(()));
                } else {
                    self.ring_waiters.push(reply);
                }
            }
            IpamRequest::Rmpeer { peer, reply } => {
                let answer = self.rmpeer(mesh, &peer);
                let _ = reply.send(answer);
            }
            IpamRequest::Reclaim { held, reply } => {
                let mut claimed = 0usize;
                call(mesh, |ipam, ctx| {
                    for (ident, nets) in &held {
                        for net in nets {
                            let subnet = Cidr::containing(net.addr(), net.prefix_len()).ok();
                            match ipam.claim(ctx, ident, net.addr(), subnet) {
                                Ok(_) => claimed += 1,
                                Err(err) => {
                                    tracing::warn!("IPAM: cannot re-claim {net} for {ident}: {err}")
                                }
                            }
                        }
                    }
                    ipam.finish_reclaim(ctx);
                });
                tracing::debug!(claimed, "IPAM: re-claimed the containers' addresses");
                let _ = reply.send(self.persisted(mesh));
            }
        }
    }

    /// Flushes, then says whether the state is on disk.
    fn persisted(&mut self, mesh: &mut Mesh) -> Result<(), IpamFailure> {
        let before = self.persist_error.clone();
        self.flush(mesh);
        match &self.persist_error {
            Some(err) if before.as_ref() != Some(err) => Err(IpamFailure::Failed(format!(
                "cannot persist the allocation: {err}"
            ))),
            _ => Ok(()),
        }
    }

    fn answer_alloc(
        &mut self,
        mesh: &mut Mesh,
        ident: String,
        prefix: u8,
        result: Option<Result<AllocResult, IpamError>>,
        reply: oneshot::Sender<Result<Ipv4Net, IpamFailure>>,
    ) {
        // Persist before anything is answered.
        let answer = match result {
            Some(Ok(AllocResult::Pending(id))) => {
                // Wait first: the call may have finished it already (a lone consensus
                // peer makes its ring within the call), and the flush answers it then.
                self.waiters.entry(id).or_default().push(Waiter {
                    ident,
                    prefix,
                    reply,
                });
                self.flush(mesh);
                return;
            }
            Some(Ok(AllocResult::Ready(addr))) => self
                .persisted(mesh)
                .map(|()| Ipv4Net::new(addr, prefix).unwrap_or_else(|_| addr.into())),
            Some(Err(err)) => {
                let _ = self.persisted(mesh);
                Err(failure(&err))
            }
            None => Err(IpamFailure::Failed("IPAM is not running".to_owned())),
        };
        let _ = reply.send(answer);
    }

    fn rmpeer(&mut self, mesh: &mut Mesh, peer: &str) -> Result<String, IpamFailure> {
        let name = self.resolve_peer(mesh, peer)?;
        let label = self.label(name);
        match call(mesh, |ipam, ctx| ipam.rmpeer(ctx, name)) {
            None => Err(IpamFailure::Failed("IPAM is not running".to_owned())),
            Some(Err(IpamError::PeerIsLive(_))) => Err(IpamFailure::Invalid(format!(
                "peer {label} is reachable: rmpeer only takes over the ranges of dead peers (stop or reset it first)"
            ))),
            Some(Err(err)) => Err(failure(&err)),
            Some(Ok(taken)) => {
                self.persisted(mesh)?;
                tracing::info!("IPAM: rmpeer: {taken} IPs taken over from {label}");
                Ok(format!("{taken} IPs taken over from {peer}"))
            }
        }
    }

    /// A peer by name (`aa:bb:cc:dd:ee:ff`) or by nickname (live, or remembered).
    fn resolve_peer(&self, mesh: &Mesh, peer: &str) -> Result<PeerName, IpamFailure> {
        if let Ok(name) = peer.parse::<PeerName>() {
            return Ok(name);
        }
        let mut matches: Vec<PeerName> = mesh
            .live_peers()
            .values()
            .filter(|p| p.nickname == peer)
            .map(|p| p.name)
            .collect();
        matches.extend(
            self.nicknames
                .iter()
                .filter(|(_, n)| *n == peer)
                .map(|(p, _)| *p),
        );
        matches.sort_unstable();
        matches.dedup();
        match matches[..] {
            [one] => Ok(one),
            [] => Err(IpamFailure::NotFound(format!(
                "no peer called {peer:?} known here; give its name (like aa:bb:cc:dd:ee:ff)"
            ))),
            _ => Err(IpamFailure::Invalid(format!(
                "several peers are called {peer:?}; give the name of the one to remove"
            ))),
        }
    }

    fn label(&self, peer: PeerName) -> String {
        match self.nicknames.get(&peer) {
            Some(nick) => format!("{peer}({nick})"),
            None => peer.to_string(),
        }
    }

    /// `weave reset`: hands our ranges to a live peer; the loop sends the gossip before
    /// closing the connections.
    pub(crate) fn leave(&mut self, mesh: &mut Mesh) {
        if self.config.is_none() {
            return;
        }
        match call(mesh, |ipam, ctx| ipam.leave(ctx)) {
            Some(Ok(Some(heir))) => {
                tracing::info!("IPAM: handed our ranges to {}", self.label(heir));
            }
            Some(Ok(None)) => tracing::warn!("IPAM: no live peer to hand our ranges to"),
            Some(Err(err)) => tracing::warn!(%err, "IPAM: cannot leave"),
            None => {}
        }
        self.flush(mesh);
        self.close();
    }

    /// Drops every waiting caller (they see the daemon going away).
    pub(crate) fn close(&mut self) {
        self.waiters.clear();
        self.ring_waiters.clear();
    }

    /// The `IPAM` section of the report; `None` when IPAM is off.
    pub(crate) fn report(&self, mesh: &Mesh) -> Option<IpamReport> {
        let config = self.config.as_ref()?;
        let ipam = mesh.channel::<Ipam>(CHANNEL)?;
        let peers = mesh.live_peers();
        let status = ipam.status(peers);
        let metrics = ipam.metrics(peers);
        let nickname = |peer: &PeerName| {
            peers
                .get(peer)
                .map(|p| p.nickname.clone())
                .or_else(|| self.nicknames.get(peer).cloned())
                .unwrap_or_default()
        };
        let owned_ips = ipam.owned_ranges().iter().map(|(_, size)| size).sum();
        Some(IpamReport {
            status: status.status.clone(),
            range: config.range.to_string(),
            range_num_ips: config.range.size(),
            default_subnet: config.default_subnet.to_string(),
            active_ips: metrics.local_used,
            owned_ips,
            free_ips: ipam.free_addresses(),
            init: self.init.clone(),
            seeds: ipam
                .seeds()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
            entries: ipam
                .ring_ranges()
                .into_iter()
                .map(|(token, size, peer, version)| IpamEntry {
                    token: token.to_string(),
                    size,
                    peer: peer.to_string(),
                    nickname: nickname(&peer),
                    is_known_peer: peers.contains_key(&peer),
                    version,
                })
                .collect(),
            owners: status
                .owners
                .iter()
                .map(|o| IpamOwner {
                    peer: o.peer.to_string(),
                    nickname: o.nickname.clone().unwrap_or_else(|| nickname(&o.peer)),
                    addresses: o.addresses,
                    percent: o.percent,
                    active: o.active,
                    reachable: o.reachable,
                    local: o.local,
                })
                .collect(),
            pending_allocates: metrics.pending_allocations,
            pending_claims: metrics.pending_claims,
            unreachable_owners: metrics.unreachable_owners,
            unreachable_ips: metrics.unreachable_addresses,
            conflicts: metrics.conflicts,
            last_conflict: self.last_conflict.clone(),
            disputed: self
                .disputed
                .iter()
                .map(|(addr, (ident, owner))| format!("{addr} {ident} {owner}"))
                .collect(),
            reclaiming: ipam.is_reclaiming(),
            persist_error: self.persist_error.clone(),
        })
    }
}

impl InitArg {
    fn from_mode(mode: &InitMode) -> Self {
        match mode {
            InitMode::Consensus { peers } => Self::Consensus(Some(*peers)),
            InitMode::Seed(seeds) => Self::Seed(seeds.clone()),
            InitMode::Observer => Self::Observer,
        }
    }
}

/// The generic meta table's key for the nickname cache (not IPAM's own tables: losing
/// it costs only labels).
const KEY_NICKNAMES_META: &str = "ipam.nicknames";

/// Identities are opaque strings; refuse what cannot be one.
fn check_ident(ident: &str) -> Result<(), IpamFailure> {
    if ident.is_empty() || ident.len() > 1024 || ident.contains('\0') {
        return Err(IpamFailure::Invalid(
            "the identity must be 1 to 1024 bytes, without NUL".to_owned(),
        ));
    }
    Ok(())
}

fn failure(err: &IpamError) -> IpamFailure {
    match err {
        IpamError::NoRing => IpamFailure::Unavailable(err.to_string()),
        IpamError::Left => IpamFailure::Unavailable(err.to_string()),
        _ => IpamFailure::Invalid(err.to_string()),
    }
}

/// Answers a request when IPAM is off.
fn refuse(request: IpamRequest) {
    let no = || IpamFailure::Invalid(DISABLED.to_owned());
    match request {
        IpamRequest::Allocate { reply, .. } | IpamRequest::Claim { reply, .. } => {
            let _ = reply.send(Err(no()));
        }
        IpamRequest::Lookup { reply, .. } => {
            let _ = reply.send(Err(no()));
        }
        IpamRequest::Owned { reply } => {
            let _ = reply.send(Err(no()));
        }
        IpamRequest::Free { reply, .. } | IpamRequest::Prime { reply } => {
            let _ = reply.send(Err(no()));
        }
        IpamRequest::FreeIdent { reply, .. } => {
            let _ = reply.send(Err(no()));
        }
        IpamRequest::Rmpeer { reply, .. } => {
            let _ = reply.send(Err(no()));
        }
        // Nothing to re-claim into: the container task goes on.
        IpamRequest::Reclaim { reply, .. } => {
            let _ = reply.send(Ok(()));
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(postcard::to_stdvec(value)?)
}

/// Applies the core's ops in one transaction; with `trust`, also marks the state as
/// trustworthy for `Ipam::restore` on the next start.
fn persist(state: &State, ops: &[PersistOp], trust: Option<PeerName>) -> Result<()> {
    state.write(|txn| {
        let mut meta = txn.open_table(META)?;
        let mut ring = txn.open_table(RING)?;
        let mut allocs = txn.open_table(ALLOCS)?;
        for op in ops {
            match op {
                PersistOp::Ring { range, seeds } => {
                    ring.retain(|_, _| false)?;
                    meta.insert(KEY_RING, encode(&(range, seeds))?.as_slice())?;
                }
                PersistOp::Entries(entries) => {
                    for (token, entry) in entries {
                        ring.insert(u32::from(*token), encode(entry)?.as_slice())?;
                    }
                }
                PersistOp::Allocated {
                    addr,
                    ident,
                    subnet,
                } => {
                    let record = SavedAllocation {
                        ident: ident.clone(),
                        subnet: *subnet,
                    };
                    allocs.insert(u32::from(*addr), encode(&record)?.as_slice())?;
                }
                PersistOp::Freed { addr } => {
                    allocs.remove(u32::from(*addr))?;
                }
                PersistOp::Paxos(acceptor) => {
                    meta.insert(KEY_PAXOS, encode(acceptor)?.as_slice())?;
                }
            }
        }
        if let Some(local) = trust {
            meta.insert(KEY_LOCAL, encode(&local)?.as_slice())?;
        }
        Ok(())
    })
}

/// The saved state, if it is marked trustworthy.
fn load(state: &State) -> Result<Option<SavedState>> {
    state.read(|txn| {
        let meta = match txn.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let Some(local) = meta.get(KEY_LOCAL)? else {
            return Ok(None);
        };
        let local: PeerName = postcard::from_bytes(local.value())?;
        let mut saved = SavedState::new(local);
        if let Some(bytes) = meta.get(KEY_PAXOS)? {
            saved.paxos = Some(postcard::from_bytes::<AcceptorState>(bytes.value())?);
        }
        if let Some(bytes) = meta.get(KEY_RING)? {
            let (range, seeds): (Cidr, Vec<PeerName>) = postcard::from_bytes(bytes.value())?;
            let mut entries = BTreeMap::new();
            if let Ok(table) = txn.open_table(RING) {
                for row in table.iter()? {
                    let (token, entry) = row?;
                    let entry: RingEntry = postcard::from_bytes(entry.value())?;
                    entries.insert(Ipv4Addr::from(token.value()), entry);
                }
            }
            saved.ring = Some(SavedRing {
                range,
                seeds,
                entries,
            });
        }
        if let Ok(table) = txn.open_table(ALLOCS) {
            for row in table.iter()? {
                let (addr, record) = row?;
                let record: SavedAllocation = postcard::from_bytes(record.value())?;
                saved
                    .allocations
                    .insert(Ipv4Addr::from(addr.value()), record);
            }
        }
        Ok(Some(saved))
    })
}

/// Forgets every saved IPAM record (a fresh start must not mix in an old state).
fn clear(state: &State) -> Result<()> {
    state.write(|txn| {
        for table in [RING, ALLOCS] {
            txn.delete_table(table)?;
        }
        txn.delete_table(META)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests;
