//! The name records CRDT, gossiped on channel [`CHANNEL`].
//!
//! A record is (origin peer, name, address, owner) plus a version and a tombstone flag.
//! Only the origin ever creates or changes its records, stamping each change with the
//! next value of its own counter, so per origin versions increase.
//!
//! Merge, per record identity: the higher `(version, tombstone)` wins (a tombstone beats a
//! live record of the same version). That is a join on a total order, so merges are
//! associative, commutative and idempotent (property-tested in `tests`). Two tombstones
//! of equal rank keep the earlier expiry, also a join.
//!
//! Outside the lattice, three local rules, each deliberate:
//! - **Origin authority.** Records that claim to be ours but that we do not hold as
//!   they are (left by an earlier incarnation of this peer, or re-gossiped after we
//!   deleted them) are overridden: re-asserted with a newer version if we still have them
//!   live, tombstoned otherwise, and broadcast. Our counter jumps past every version seen
//!   for us, so versions keep increasing across restarts without persisting it.
//! - **Departed peers.** When an origin leaves the topology its records are removed
//!   outright, no tombstones (as Weave did), and records of origins not in the topology
//!   are ignored on merge. They come back when the peer returns: its own side still has
//!   them and the mesh's anti-entropy (on the new connection, then periodically) sends
//!   them across, since our digest lacks that origin. We chose this over keeping them
//!   hidden because hidden copies would have to be expired and could resurrect records
//!   their origin deleted while away.
//! - **Tombstone expiry.** A tombstone lives [`TOMBSTONE_LIFETIME`] and is then purged.
//!   Gossip carries its remaining life, not its age or a timestamp (peers share no
//!   clock), so a tombstone's death time does not move however often it is re-gossiped.
//!   A live record resurfacing after its tombstone expired everywhere reaches its origin
//!   through anti-entropy and is tombstoned again by the authority rule.
//!
//! Gossip sends only changed records: local changes are batched and broadcast from
//! [`Gossiper::handle_timeout`]; merges return (and relay) only what was new. The digest
//! is per origin `(max version, count, fingerprint)`: a peer that holds exactly a prefix
//! of an origin's history gets only the newer records, any other difference gets that
//! origin's records (never the whole table).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weave_mesh::{GossipContext, GossipError, Gossiper, PeerName};

use crate::DnsError;
use crate::name::WireName;
use crate::wire::{self, DecodedEntry, MAX_OWNER_LEN, OriginSummary, WireEntry};

/// The gossip channel name.
pub const CHANNEL: &str = "dns";
/// How long a deleted record's tombstone is kept (Weave: 30 min).
pub const TOMBSTONE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// How often expired tombstones are looked for.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// A record's identity. Ordered origin first so one origin's records are contiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryKey {
    pub origin: PeerName,
    pub name: WireName,
    pub addr: Ipv4Addr,
    pub owner: Box<str>,
}

/// The versioned part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryState {
    pub version: u64,
    /// `Some(expiry)` for a tombstone: when we may forget it.
    pub tombstone: Option<Instant>,
}

impl EntryState {
    fn rank(self) -> (u64, bool) {
        (self.version, self.tombstone.is_some())
    }

    fn is_live(self) -> bool {
        self.tombstone.is_none()
    }
}

/// A live record, for `weave status dns` and the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Fully qualified, lowercase, with a trailing dot.
    pub name: String,
    pub addr: Ipv4Addr,
    /// The container (or other owner) id given when the record was added.
    pub owner: String,
    /// The peer that added it.
    pub origin: PeerName,
}

impl Entry {
    /// The name without `domain` (`web` for `web.weave.local.`), as `weave status dns`
    /// shows it; the full name if it is not below `domain`.
    pub fn hostname(&self, domain: &WireName) -> String {
        WireName::from_dotted(&self.name)
            .ok()
            .and_then(|name| name.strip_domain(domain))
            .unwrap_or_else(|| self.name.clone())
    }
}

/// All name records known to this peer, indexed by name and by address for answering.
///
/// Implements [`Gossiper`] for channel [`CHANNEL`]. Local changes ([`Self::add`],
/// [`Self::remove`], [`Self::remove_owner`]) are broadcast from the next
/// [`Gossiper::handle_timeout`], which [`Gossiper::poll_timeout`] asks for at once; the
/// caller must re-read `poll_timeout` after calling them.
///
/// Cloning copies the whole table: the daemon answers queries from a clone published
/// whenever [`Self::generation`] moves, so answering never waits on the gossip side.
#[derive(Clone)]
pub struct NameStore {
    local: PeerName,
    /// Bumped whenever the set of live records changes.
    generation: u64,
    entries: BTreeMap<EntryKey, EntryState>,
    /// Live records by name: each address with how many live records give it.
    by_name: BTreeMap<WireName, Vec<(Ipv4Addr, u32)>>,
    /// Live records by address: each name with how many live records give it (sorted, so
    /// a PTR answer names the smallest).
    by_addr: BTreeMap<Ipv4Addr, Vec<(WireName, u32)>>,
    /// Our origin's version counter.
    counter: u64,
    tombstones: usize,
    local_live: usize,
    /// Our records changed since the last broadcast.
    pending: BTreeSet<EntryKey>,
    flush_at: Option<Instant>,
    next_purge: Option<Instant>,
    /// The latest time we were told; tombstone lives on the wire are relative to it.
    now: Instant,
}

impl NameStore {
    /// An empty store for peer `local`. After a restart, re-add the persisted records
    /// before joining the mesh: records claiming to be ours that arrive first and that we
    /// do not hold are tombstoned (a re-add then wins with a newer version, after a flap).
    pub fn new(local: PeerName, now: Instant) -> Self {
        Self {
            local,
            generation: 0,
            entries: BTreeMap::new(),
            by_name: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            counter: 0,
            tombstones: 0,
            local_live: 0,
            pending: BTreeSet::new(),
            flush_at: None,
            next_purge: None,
            now,
        }
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    /// A counter that moves whenever a record becomes live or stops being live (what
    /// answers depend on); tombstone bookkeeping does not move it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds a record of ours: `name` (a hostname, any case, trailing dot optional) at
    /// `addr` for `owner`. Returns whether anything changed (re-adding a live record does
    /// not). Checking that the name is in the DNS domain is the caller's business.
    pub fn add(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        owner: &str,
        now: Instant,
    ) -> Result<bool, DnsError> {
        self.advance(now);
        let name = WireName::from_dotted(name)?;
        if owner.len() > MAX_OWNER_LEN {
            return Err(DnsError::InvalidOwner(owner.len()));
        }
        let key = EntryKey {
            origin: self.local,
            name,
            addr,
            owner: owner.into(),
        };
        if self.entries.get(&key).is_some_and(|s| s.is_live()) {
            return Ok(false);
        }
        let state = EntryState {
            version: self.next_version(),
            tombstone: None,
        };
        self.set(key.clone(), state);
        self.queue(key, now);
        Ok(true)
    }

    /// Tombstones our live records matching every given criterion (`None` matches
    /// anything). Returns how many.
    pub fn remove(
        &mut self,
        owner: Option<&str>,
        addr: Option<Ipv4Addr>,
        name: Option<&str>,
        now: Instant,
    ) -> Result<usize, DnsError> {
        let name = name.map(WireName::from_dotted).transpose()?;
        Ok(self.tombstone_own(now, |key| {
            owner.is_none_or(|o| *key.owner == *o)
                && addr.is_none_or(|a| key.addr == a)
                && name.as_ref().is_none_or(|n| key.name == *n)
        }))
    }

    /// Tombstones all our live records of `owner` (its container died). Returns how many.
    pub fn remove_owner(&mut self, owner: &str, now: Instant) -> usize {
        self.tombstone_own(now, |key| *key.owner == *owner)
    }

    /// The live addresses of `name` (any case, trailing dot optional), sorted.
    pub fn lookup_name(&self, name: &str) -> Vec<Ipv4Addr> {
        let Ok(name) = WireName::from_dotted(name) else {
            return Vec::new();
        };
        self.addrs_of(name.as_wire())
            .map(|list| list.iter().map(|(addr, _)| *addr).collect())
            .unwrap_or_default()
    }

    /// A live name of `addr` (the smallest, for a stable answer), with a trailing dot.
    pub fn lookup_addr(&self, addr: Ipv4Addr) -> Option<String> {
        self.name_of(addr).map(WireName::to_dotted)
    }

    /// Live records, sorted by name, address, owner, origin.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .entries
            .iter()
            .filter(|(_, state)| state.is_live())
            .map(|(key, _)| Entry {
                name: key.name.to_dotted(),
                addr: key.addr,
                owner: key.owner.to_string(),
                origin: key.origin,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.name, a.addr, &a.owner, a.origin).cmp(&(&b.name, b.addr, &b.owner, b.origin))
        });
        out
    }

    /// How many live records are ours (metric `weave_dns_entries`).
    pub fn local_entry_count(&self) -> usize {
        self.local_live
    }

    /// How many records are held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live addresses of a lowercase wire name with their record counts, sorted.
    pub(crate) fn addrs_of(&self, wire: &[u8]) -> Option<&[(Ipv4Addr, u32)]> {
        self.by_name.get(wire).map(Vec::as_slice)
    }

    pub(crate) fn name_of(&self, addr: Ipv4Addr) -> Option<&WireName> {
        self.by_addr
            .get(&addr)
            .and_then(|names| names.first())
            .map(|(n, _)| n)
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn next_version(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn queue(&mut self, key: EntryKey, now: Instant) {
        self.pending.insert(key);
        self.flush_at.get_or_insert(now);
    }

    fn tombstone_own(&mut self, now: Instant, matches: impl Fn(&EntryKey) -> bool) -> usize {
        self.advance(now);
        let doomed: Vec<EntryKey> = self
            .entries
            .range(self.origin_range(self.local))
            .filter(|(key, state)| state.is_live() && matches(key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            let state = EntryState {
                version: self.next_version(),
                tombstone: Some(now + TOMBSTONE_LIFETIME),
            };
            self.set(key.clone(), state);
            self.queue(key.clone(), now);
        }
        doomed.len()
    }

    fn origin_range(&self, origin: PeerName) -> std::ops::RangeInclusive<EntryKey> {
        // Names are at least two bytes, so the empty name sorts below all of them, and
        // `\xff` above every valid name (whose first byte is a label length <= 63).
        let low = EntryKey {
            origin,
            name: WireName::below_all(),
            addr: Ipv4Addr::UNSPECIFIED,
            owner: "".into(),
        };
        let high = EntryKey {
            origin,
            name: WireName::above_all(),
            addr: Ipv4Addr::BROADCAST,
            owner: "\u{10ffff}".into(),
        };
        low..=high
    }

    /// Stores `state` for `key`, keeping the indexes and counts in step.
    fn set(&mut self, key: EntryKey, state: EntryState) {
        let old = self.entries.insert(key.clone(), state);
        let was_live = old.is_some_and(|s| s.is_live());
        let was_tomb = old.is_some_and(|s| !s.is_live());
        self.account(&key, was_live, was_tomb, state.is_live(), !state.is_live());
    }

    fn delete(&mut self, key: &EntryKey) {
        if let Some(old) = self.entries.remove(key) {
            self.account(key, old.is_live(), !old.is_live(), false, false);
        }
    }

    fn account(&mut self, key: &EntryKey, was_live: bool, was_tomb: bool, live: bool, tomb: bool) {
        if was_tomb {
            self.tombstones -= 1;
        }
        if tomb {
            self.tombstones += 1;
            self.next_purge.get_or_insert(self.now + PURGE_INTERVAL);
        }
        if was_live == live {
            return;
        }
        self.generation += 1;
        let own = key.origin == self.local;
        if live {
            self.local_live += usize::from(own);
            index_add(self.by_name.entry(key.name.clone()).or_default(), key.addr);
            index_add(self.by_addr.entry(key.addr).or_default(), key.name.clone());
        } else {
            self.local_live -= usize::from(own);
            if let Some(list) = self.by_name.get_mut(&key.name)
                && index_remove(list, &key.addr)
            {
                self.by_name.remove(&key.name);
            }
            if let Some(list) = self.by_addr.get_mut(&key.addr)
                && index_remove(list, &key.name)
            {
                self.by_addr.remove(&key.addr);
            }
        }
    }

    /// Merges one record from another peer's state (not ours). Returns whether it
    /// changed what we hold in a way worth passing on.
    fn merge_foreign(&mut self, key: EntryKey, incoming: EntryState) -> bool {
        match self.entries.get_mut(&key) {
            None => {
                self.set(key, incoming);
                true
            }
            Some(current) if incoming.rank() > current.rank() => {
                self.set(key, incoming);
                true
            }
            Some(current) => {
                if let (Some(theirs), Some(ours)) = (incoming.tombstone, current.tombstone)
                    && incoming.rank() == current.rank()
                    && theirs < ours
                {
                    current.tombstone = Some(theirs);
                }
                false
            }
        }
    }

    /// A record claiming to be ours arrived: apply the origin-authority rule.
    fn merge_own(&mut self, key: EntryKey, incoming: EntryState) {
        self.counter = self.counter.max(incoming.version);
        let current = self.entries.get(&key).copied();
        match current {
            Some(ours) if ours.rank() >= incoming.rank() => {}
            Some(ours) => {
                // An earlier incarnation of us got further: override with what we hold now.
                let state = EntryState {
                    version: self.next_version(),
                    tombstone: ours.tombstone.map(|_| self.now + TOMBSTONE_LIFETIME),
                };
                self.set(key.clone(), state);
                self.queue(key, self.now);
            }
            None if incoming.is_live() => {
                // We do not have it: it was deleted, or belongs to an earlier incarnation.
                let state = EntryState {
                    version: self.next_version(),
                    tombstone: Some(self.now + TOMBSTONE_LIFETIME),
                };
                self.set(key.clone(), state);
                self.queue(key, self.now);
            }
            None => self.set(key, incoming),
        }
    }

    /// Merges decoded gossip; returns the foreign records that changed, encoded, or
    /// `None`. Our own re-assertions are broadcast through `ctx`.
    fn merge(
        &mut self,
        ctx: &mut GossipContext<'_>,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        let decoded = wire::decode_entries(bytes)?;
        self.advance(ctx.now());
        let mut changed = Vec::new();
        for entry in decoded {
            let Some((key, state)) = self.import(entry) else {
                continue;
            };
            if key.origin == self.local {
                self.merge_own(key, state);
            } else if ctx.is_live(key.origin) && self.merge_foreign(key.clone(), state) {
                changed.push(key);
            }
        }
        self.flush(ctx);
        Ok(self.encode_keys(changed.iter()))
    }

    /// Turns a decoded record into ours, or `None` for an already expired tombstone.
    fn import(&self, entry: DecodedEntry) -> Option<(EntryKey, EntryState)> {
        let tombstone = match entry.tombstone_ms {
            None => None,
            Some(0) => return None,
            Some(ms) => {
                Some(self.now + Duration::from_millis(u64::from(ms)).min(TOMBSTONE_LIFETIME))
            }
        };
        let key = EntryKey {
            origin: entry.origin,
            name: entry.name,
            addr: entry.addr,
            owner: entry.owner,
        };
        Some((
            key,
            EntryState {
                version: entry.version,
                tombstone,
            },
        ))
    }

    fn export(&self, key: &EntryKey, state: EntryState) -> Option<WireEntry> {
        let tombstone_ms = match state.tombstone {
            None => None,
            Some(expiry) => {
                let left = expiry.saturating_duration_since(self.now).as_millis();
                if left == 0 {
                    return None;
                }
                Some(u32::try_from(left).unwrap_or(u32::MAX))
            }
        };
        Some(WireEntry {
            origin: key.origin,
            name: key.name.to_dotted(),
            addr: key.addr.octets(),
            owner: key.owner.to_string(),
            version: state.version,
            tombstone_ms,
        })
    }

    fn encode_keys<'a>(&self, keys: impl Iterator<Item = &'a EntryKey>) -> Option<Vec<u8>> {
        let entries: Vec<WireEntry> = keys
            .filter_map(|key| {
                self.entries
                    .get(key)
                    .and_then(|state| self.export(key, *state))
            })
            .collect();
        (!entries.is_empty()).then(|| wire::encode_entries(entries))
    }

    fn encode_all<'a>(
        &self,
        iter: impl Iterator<Item = (&'a EntryKey, &'a EntryState)>,
    ) -> Option<Vec<u8>> {
        let entries: Vec<WireEntry> = iter
            .filter_map(|(key, state)| self.export(key, *state))
            .collect();
        (!entries.is_empty()).then(|| wire::encode_entries(entries))
    }

    /// Broadcasts our pending changes, if any.
    fn flush(&mut self, ctx: &mut GossipContext<'_>) {
        self.flush_at = None;
        let pending = std::mem::take(&mut self.pending);
        if let Some(update) = self.encode_keys(pending.iter()) {
            ctx.broadcast(update);
        }
    }

    fn purge(&mut self) {
        let now = self.now;
        let expired: Vec<EntryKey> = self
            .entries
            .iter()
            .filter(|(_, state)| state.tombstone.is_some_and(|expiry| expiry <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.delete(key);
        }
        self.next_purge = (self.tombstones > 0).then_some(now + PURGE_INTERVAL);
    }

    fn summaries(&self) -> Vec<OriginSummary> {
        let mut out: Vec<OriginSummary> = Vec::new();
        for (key, state) in &self.entries {
            let hash = entry_hash(key, *state);
            match out.last_mut() {
                Some(last) if last.origin == key.origin => {
                    last.max_version = last.max_version.max(state.version);
                    last.count += 1;
                    last.fingerprint ^= hash;
                }
                _ => out.push(OriginSummary {
                    origin: key.origin,
                    max_version: state.version,
                    count: 1,
                    fingerprint: hash,
                }),
            }
        }
        out
    }

    /// Our summary of `origin`'s records with version at most `max`.
    fn summary_upto(&self, origin: PeerName, max: u64) -> (u64, u64) {
        self.entries
            .range(self.origin_range(origin))
            .filter(|(_, state)| state.version <= max)
            .fold((0, 0), |(count, fp), (key, state)| {
                (count + 1, fp ^ entry_hash(key, *state))
            })
    }
}

fn index_add<T: Ord>(list: &mut Vec<(T, u32)>, item: T) {
    match list.binary_search_by(|(x, _)| x.cmp(&item)) {
        Ok(i) => list[i].1 += 1,
        Err(i) => list.insert(i, (item, 1)),
    }
}

/// Drops one reference to `item`; returns whether the list is now empty.
fn index_remove<T: Ord>(list: &mut Vec<(T, u32)>, item: &T) -> bool {
    if let Ok(i) = list.binary_search_by(|(x, _)| x.cmp(item)) {
        list[i].1 -= 1;
        if list[i].1 == 0 {
            list.remove(i);
        }
    }
    list.is_empty()
}

/// A well-mixed 64-bit hash of a record's identity and rank, XORed into fingerprints.
fn entry_hash(key: &EntryKey, state: EntryState) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&key.origin.as_u64().to_le_bytes());
    feed(key.name.as_wire());
    feed(&key.addr.octets());
    feed(&(key.owner.len() as u64).to_le_bytes());
    feed(key.owner.as_bytes());
    feed(&state.version.to_le_bytes());
    feed(&[u8::from(state.tombstone.is_some())]);
    // splitmix64 finaliser: FNV alone XORs poorly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Gossiper for NameStore {
    fn merge_received(
        &mut self,
        ctx: &mut GossipContext<'_>,
        _origin: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        self.merge(ctx, update)
    }

    fn merge_delta(
        &mut self,
        ctx: &mut GossipContext<'_>,
        _from: PeerName,
        update: &[u8],
    ) -> Result<Option<Vec<u8>>, GossipError> {
        self.merge(ctx, update)
    }

    fn on_unicast(
        &mut self,
        ctx: &mut GossipContext<'_>,
        _from: PeerName,
        message: &[u8],
    ) -> Result<(), GossipError> {
        self.merge(ctx, message).map(|_| ())
    }

    fn complete(&self) -> Vec<u8> {
        self.encode_all(self.entries.iter())
            .unwrap_or_else(|| wire::encode_entries(Vec::new()))
    }

    fn digest(&self) -> Vec<u8> {
        wire::encode_digest(self.summaries())
    }

    fn missing(&self, their_digest: &[u8]) -> Option<Vec<u8>> {
        let Some(theirs) = wire::decode_digest(their_digest) else {
            // Unreadable (a newer format?): send everything rather than nothing.
            return self.encode_all(self.entries.iter());
        };
        let theirs: BTreeMap<PeerName, OriginSummary> =
            theirs.into_iter().map(|s| (s.origin, s)).collect();
        let mut send: Vec<(&EntryKey, &EntryState)> = Vec::new();
        for ours in self.summaries() {
            let origin = ours.origin;
            let records = self.entries.range(self.origin_range(origin));
            match theirs.get(&origin) {
                None => send.extend(records),
                Some(t)
                    if (t.max_version, t.count, t.fingerprint)
                        == (ours.max_version, ours.count, ours.fingerprint) => {}
                Some(t) => {
                    if self.summary_upto(origin, t.max_version) == (t.count, t.fingerprint) {
                        // They hold exactly our prefix: send only what is newer.
                        send.extend(records.filter(|(_, s)| s.version > t.max_version));
                    } else {
                        send.extend(records);
                    }
                }
            }
        }
        self.encode_all(send.into_iter())
    }

    fn on_peers_changed(&mut self, ctx: &mut GossipContext<'_>) {
        self.advance(ctx.now());
        let gone: Vec<EntryKey> = self
            .entries
            .keys()
            .filter(|key| key.origin != self.local && !ctx.is_live(key.origin))
            .cloned()
            .collect();
        for key in &gone {
            self.delete(key);
        }
    }

    fn handle_timeout(&mut self, ctx: &mut GossipContext<'_>) {
        self.advance(ctx.now());
        if self.flush_at.is_some_and(|at| at <= self.now) {
            self.flush(ctx);
        }
        if self.next_purge.is_some_and(|at| at <= self.now) {
            self.purge();
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.flush_at, self.next_purge) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests;
