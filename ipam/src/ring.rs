//! The address ring: a CRDT that says who owns which addresses.
//!
//! The range is cut at *tokens*; the entry at a token says who owns the addresses from it
//! up to the next token (or the end of the range) and carries a version. Unlike Weave's
//! ring this one never wraps: the range start is always a token (Weave's wrap-around
//! ranges were a source of bugs, weave#3693).
//!
//! State and merge: tokens form a grow-only set and each token holds a last-writer-wins
//! register ordered by `(version, owner)`. The join is therefore a union with a per-token
//! maximum, which is associative, commutative and idempotent by construction. Equal
//! versions with different owners can only come from unsafe operations (two `rmpeer`s of
//! one peer, lost data, cloned peer names); the larger owner name wins everywhere and the
//! merge reports the conflict so the allocator can contain it.
//!
//! Safety rules that make deltas as safe as Weave's whole-ring gossip:
//! - only the owner of an entry changes it, bumping its version (and only over ranges it
//!   owns, so a new token is new everywhere);
//! - every message that carries an entry also carries the entry's successor token, so a
//!   receiver never sees a range as larger than it is, even when deltas arrive out of
//!   order (a receiver missing an intermediate token would otherwise believe it owns
//!   addresses already given to someone else).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weave_mesh::PeerName;
use weave_mesh::gossip::fnv1a;

use crate::cidr::Cidr;

/// Who owns the addresses from a token up to the next one, and how many changes the
/// entry has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RingEntry {
    pub owner: PeerName,
    pub version: u64,
}

impl RingEntry {
    /// A token whose owner the message does not say: the bottom of the per-token register
    /// (every real entry has version 1 or more), owned by nobody. A receiver that did not
    /// know the token learns only that a range ends there.
    pub const BOUNDARY: Self = Self {
        owner: PeerName::from_u64(0),
        version: 0,
    };

    /// Whether this is a boundary marker (owner not known here yet).
    pub fn is_boundary(&self) -> bool {
        *self == Self::BOUNDARY
    }

    /// The total order of the per-token register: version first, owner name breaks ties.
    fn key(&self) -> (u64, PeerName) {
        (self.version, self.owner)
    }
}

/// Two different entries with the same version for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryConflict {
    pub(crate) token: u32,
    pub(crate) winner: RingEntry,
    pub(crate) loser: RingEntry,
}

/// Number of digest buckets the range is cut into for anti-entropy.
pub(crate) const DIGEST_BUCKETS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ring {
    range: Cidr,
    seeds: Vec<PeerName>,
    id: u64,
    entries: BTreeMap<u32, RingEntry>,
}

impl Ring {
    /// The ring every peer derives from the same range and seed list: the range split
    /// by recursive halving among the sorted, de-duplicated seeds, all at version 1.
    pub(crate) fn new(range: Cidr, seeds: &[PeerName]) -> Self {
        let mut seeds = seeds.to_vec();
        seeds.sort_unstable();
        seeds.dedup();
        let mut entries = BTreeMap::new();
        split(u64::from(range.start()), range.size(), &seeds, &mut entries);
        if entries.is_empty() {
            // No seeds: keep the "range start is a token" invariant with an owner nobody
            // has (name 0 is not a valid random name); such a ring is refused upstream.
            entries.insert(
                range.start(),
                RingEntry {
                    owner: PeerName::from_u64(0),
                    version: 0,
                },
            );
        }
        let id = Self::id_of(range, &seeds);
        Self {
            range,
            seeds,
            id,
            entries,
        }
    }

    /// A ring's identity: a hash of its range and sorted seed list. Deltas carry only this,
    /// the full seed list travels with complete states.
    pub(crate) fn id_of(range: Cidr, seeds: &[PeerName]) -> u64 {
        let mut bytes = Vec::with_capacity(5 + 8 * seeds.len());
        bytes.extend_from_slice(&range.start().to_be_bytes());
        bytes.push(range.prefix_len());
        for seed in seeds {
            bytes.extend_from_slice(&seed.as_u64().to_be_bytes());
        }
        fnv1a(&bytes)
    }

    pub(crate) fn range(&self) -> Cidr {
        self.range
    }

    pub(crate) fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn entries(&self) -> &BTreeMap<u32, RingEntry> {
        &self.entries
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The token whose range holds `addr`, and its entry.
    pub(crate) fn entry_at(&self, addr: u32) -> Option<(u32, RingEntry)> {
        if !self.range.contains_u32(addr) {
            return None;
        }
        self.entries
            .range(..=addr)
            .next_back()
            .map(|(&t, &e)| (t, e))
    }

    pub(crate) fn owner_of(&self, addr: u32) -> Option<PeerName> {
        self.entry_at(addr).map(|(_, e)| e.owner)
    }

    /// Every `(start, end, owner, version)` in token order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64, RingEntry)> + '_ {
        self.ranges_from(0)
    }

    /// The ranges from the one starting at token `first` on, in token order.
    fn ranges_from(&self, first: u32) -> impl Iterator<Item = (u64, u64, RingEntry)> + '_ {
        let mut iter = self.entries.range(first..).peekable();
        std::iter::from_fn(move || {
            let (&token, &entry) = iter.next()?;
            let end = iter
                .peek()
                .map_or(self.range.end(), |(next, _)| u64::from(**next));
            Some((u64::from(token), end, entry))
        })
    }

    /// The ranges `owner` holds, adjacent ones coalesced.
    pub(crate) fn ranges_of(&self, owner: PeerName) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (start, end, entry) in self.ranges() {
            if entry.owner != owner {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => out.push((start, end)),
            }
        }
        out
    }

    /// Addresses held by each owner (ranges behind a boundary marker, whose owner we do
    /// not know yet, are left out).
    pub(crate) fn totals(&self) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        for (start, end, entry) in self.ranges().filter(|r| !r.2.is_boundary()) {
            *out.entry(entry.owner).or_insert(0) += end - start;
        }
        out
    }

    /// Owners of any address in `[lo, hi)` (known owners only).
    pub(crate) fn owners_in(&self, lo: u64, hi: u64) -> BTreeMap<PeerName, u64> {
        let mut out = BTreeMap::new();
        let first = u32::try_from(lo)
            .ok()
            .and_then(|lo| self.entry_at(lo))
            .map_or(0, |(t, _)| t);
        for (start, end, entry) in self.ranges_from(first).take_while(|r| r.0 < hi) {
            let overlap = end.min(hi).saturating_sub(start.max(lo));
            if overlap > 0 && !entry.is_boundary() {
                *out.entry(entry.owner).or_insert(0) += overlap;
            }
        }
        out
    }

    /// Whether every address of `[lo, hi)` lies in a range of `owner` (a range behind a
    /// boundary marker belongs to nobody we know).
    pub(crate) fn owned_wholly_by(&self, lo: u64, hi: u64, owner: PeerName) -> bool {
        let Some((first, _)) = u32::try_from(lo).ok().and_then(|lo| self.entry_at(lo)) else {
            return false;
        };
        self.ranges_from(first)
            .take_while(|r| r.0 < hi)
            .all(|(_, end, entry)| end <= lo || entry.owner == owner)
    }

    /// Joins `incoming` entries into ours. Returns the tokens whose entry changed and
    /// appends equal-version conflicts to `conflicts`. Tokens outside the range must have
    /// been rejected by the caller.
    pub(crate) fn merge_entries(
        &mut self,
        incoming: &[(u32, RingEntry)],
        conflicts: &mut Vec<EntryConflict>,
    ) -> Vec<u32> {
        let mut changed = Vec::new();
        for &(token, theirs) in incoming {
            debug_assert!(self.range.contains_u32(token));
            match self.entries.get_mut(&token) {
                None => {
                    self.entries.insert(token, theirs);
                    changed.push(token);
                }
                Some(ours) => {
                    if *ours == theirs {
                        continue;
                    }
                    if ours.version == theirs.version {
                        let (winner, loser) = if theirs.key() > ours.key() {
                            (theirs, *ours)
                        } else {
                            (*ours, theirs)
                        };
                        conflicts.push(EntryConflict {
                            token,
                            winner,
                            loser,
                        });
                    }
                    if theirs.key() > ours.key() {
                        *ours = theirs;
                        changed.push(token);
                    }
                }
            }
        }
        changed.sort_unstable();
        changed.dedup();
        changed
    }

    /// Gives `[start, end)` to `to`. The caller must own all of it (checked here: a
    /// violation returns `None` and changes nothing). Returns the changed tokens.
    pub(crate) fn assign(
        &mut self,
        start: u32,
        end: u64,
        to: PeerName,
        owner: PeerName,
    ) -> Option<Vec<u32>> {
        if u64::from(start) >= end
            || !self.range.contains_u32(start)
            || end > self.range.end()
            || !self.owned_wholly_by(u64::from(start), end, owner)
        {
            return None;
        }
        let mut changed = Vec::new();
        // Close the block first: the address after it stays with its owner.
        if let Ok(end32) = u32::try_from(end)
            && end < self.range.end()
            && !self.entries.contains_key(&end32)
        {
            let (_, at_end) = self.entry_at(end32)?;
            self.entries.insert(
                end32,
                RingEntry {
                    owner: at_end.owner,
                    version: 1,
                },
            );
            changed.push(end32);
        }
        self.entries
            .entry(start)
            .or_insert(RingEntry { owner, version: 0 });
        for (&token, entry) in self.entries.range_mut(start..) {
            if u64::from(token) >= end {
                break;
            }
            entry.owner = to;
            entry.version += 1;
            changed.push(token);
        }
        changed.sort_unstable();
        Some(changed)
    }

    /// Hands every entry of `from` to `to`, bumping versions. Returns the changed tokens.
    pub(crate) fn transfer_all(&mut self, from: PeerName, to: PeerName) -> Vec<u32> {
        let mut changed = Vec::new();
        for (&token, entry) in &mut self.entries {
            if entry.owner == from {
                entry.owner = to;
                entry.version += 1;
                changed.push(token);
            }
        }
        changed
    }

    /// The entries at `tokens` plus, for each, its successor token as a boundary
    /// marker: what a message must carry so that no receiver over-estimates a range (see
    /// the module docs). The successor travels as [`RingEntry::BOUNDARY`], not as its real
    /// entry: a real entry would itself need its successor, and so on to the end of the
    /// ring (a receiver that learned "X owns t" from a successor without t's own end
    /// would believe X owns everything up to the next token it happens to know).
    pub(crate) fn with_successors(&self, tokens: &[u32]) -> Vec<(u32, RingEntry)> {
        let mut out: BTreeMap<u32, RingEntry> = BTreeMap::new();
        for &token in tokens {
            if let Some(&entry) = self.entries.get(&token) {
                out.insert(token, entry);
            }
        }
        for &token in tokens {
            if let Some(next) = token.checked_add(1)
                && let Some((&t, _)) = self.entries.range(next..).next()
            {
                out.entry(t).or_insert(RingEntry::BOUNDARY);
            }
        }
        out.into_iter().collect()
    }

    pub(crate) fn all_entries(&self) -> Vec<(u32, RingEntry)> {
        self.entries.iter().map(|(&t, &e)| (t, e)).collect()
    }

    pub(crate) fn buckets(&self) -> u64 {
        DIGEST_BUCKETS.min(self.range.size())
    }

    fn bucket_of(&self, token: u32) -> usize {
        let offset = u64::from(token - self.range.start());
        let bucket =
            u128::from(offset) * u128::from(self.buckets()) / u128::from(self.range.size());
        usize::try_from(bucket).expect("bucket index is below DIGEST_BUCKETS")
    }

    /// One hash per bucket of the range, over the entries whose token falls in it.
    pub(crate) fn bucket_hashes(&self) -> Vec<u64> {
        let mut hashes = vec![0u64; usize::try_from(self.buckets()).unwrap_or(0)];
        let mut buf = [0u8; 20];
        for (&token, entry) in &self.entries {
            buf[..4].copy_from_slice(&token.to_be_bytes());
            buf[4..12].copy_from_slice(&entry.owner.as_u64().to_be_bytes());
            buf[12..].copy_from_slice(&entry.version.to_be_bytes());
            let slot = &mut hashes[self.bucket_of(token)];
            // Order-dependent combination is fine: both sides iterate tokens in order.
            *slot = fnv1a(&buf) ^ slot.rotate_left(5);
        }
        hashes
    }

    /// Entries in the buckets whose hash differs from `theirs` (all buckets if the
    /// digests do not line up), with successors.
    pub(crate) fn entries_differing(&self, theirs: &[u64]) -> Vec<(u32, RingEntry)> {
        let ours = self.bucket_hashes();
        if theirs.len() != ours.len() {
            return self.all_entries();
        }
        let tokens: Vec<u32> = self
            .entries
            .keys()
            .copied()
            .filter(|&t| {
                let b = self.bucket_of(t);
                ours[b] != theirs[b]
            })
            .collect();
        // A bucket where only they have tokens is left to their own anti-entropy pass.
        self.with_successors(&tokens)
    }

    #[cfg(test)]
    /// Checks the structural invariants: a token at the range start, every token inside
    /// the range. (Disjointness and cover hold by construction of a token ring.)
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.entries.contains_key(&self.range.start()) {
            return Err(format!("no token at range start {}", self.range));
        }
        if let Some(t) = self.entries.keys().find(|&&t| !self.range.contains_u32(t)) {
            return Err(format!("token {t} outside {}", self.range));
        }
        let covered: u64 = self.ranges().map(|(s, e, _)| e - s).sum();
        if covered != self.range.size() {
            return Err(format!("ranges cover {covered} of {}", self.range.size()));
        }
        Ok(())
    }
}

/// Recursive halving: the first half of the peers gets the first half of the block.
/// CIDR-aligned, shares within a factor of two of each other.
fn split(start: u64, size: u64, peers: &[PeerName], out: &mut BTreeMap<u32, RingEntry>) {
    let Some(&first) = peers.first() else {
        return;
    };
    if peers.len() == 1 || size == 1 {
        let token = u32::try_from(start).expect("split stays inside an IPv4 range");
        out.insert(
            token,
            RingEntry {
                owner: first,
                version: 1,
            },
        );
        return;
    }
    let half = size / 2;
    let left = peers.len().div_ceil(2);
    split(start, half, &peers[..left], out);
    split(start + half, half, &peers[left..], out);
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    pub(crate) fn name(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn range() -> Cidr {
        "198.18.0.0/24".parse().unwrap()
    }

    #[test]
    fn initial_split_is_aligned_and_even() {
        let ring = Ring::new(range(), &[name(3), name(1), name(2), name(1)]);
        ring.check().unwrap();
        let got: Vec<(u64, u64, u64)> = ring
            .ranges()
            .map(|(s, e, en)| (s - u64::from(range().start()), e - s, en.owner.as_u64()))
            .collect();
        assert_eq!(got, vec![(0, 64, 1), (64, 64, 2), (128, 128, 3)]);
        assert_eq!(ring.seeds(), &[name(1), name(2), name(3)]);
    }

    #[test]
    fn more_peers_than_addresses() {
        let tiny: Cidr = "198.18.0.0/31".parse().unwrap();
        let ring = Ring::new(tiny, &[name(1), name(2), name(3), name(4)]);
        ring.check().unwrap();
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn assign_splits_and_reports_successor() {
        let mut ring = Ring::new(range(), &[name(1)]);
        let base = range().start();
        let changed = ring
            .assign(base + 128, u64::from(base) + 192, name(2), name(1))
            .unwrap();
        assert_eq!(changed, vec![base + 128, base + 192]);
        assert_eq!(ring.owner_of(base + 127), Some(name(1)));
        assert_eq!(ring.owner_of(base + 128), Some(name(2)));
        assert_eq!(ring.owner_of(base + 192), Some(name(1)));
        ring.check().unwrap();
        // Not ours any more: refused.
        assert!(
            ring.assign(base + 128, u64::from(base) + 130, name(3), name(1))
                .is_none()
        );
        let delta = ring.with_successors(&[base]);
        assert_eq!(
            delta,
            vec![
                (base, ring.entries()[&base]),
                (base + 128, RingEntry::BOUNDARY)
            ]
        );
    }

    #[test]
    fn equal_versions_conflict_deterministically() {
        let mut a = Ring::new(range(), &[name(1)]);
        let mut b = a.clone();
        let base = range().start();
        a.transfer_all(name(1), name(5));
        b.transfer_all(name(1), name(7));
        let mut conflicts = Vec::new();
        let mut ab = a.clone();
        ab.merge_entries(&b.all_entries(), &mut conflicts);
        let mut ba = b.clone();
        ba.merge_entries(&a.all_entries(), &mut conflicts);
        assert_eq!(ab, ba);
        assert_eq!(ab.owner_of(base), Some(name(7)));
        assert_eq!(conflicts.len(), 2);
    }

    /// A random ring history: peers repeatedly give parts of their ranges to others,
    /// each on its own replica that sometimes hears what the others did.
    pub(crate) fn arb_replicas() -> impl Strategy<Value = Vec<Ring>> {
        prop::collection::vec(
            (0usize..3, 0u64..256, 0u64..64, 1u64..5, any::<bool>()),
            0..24,
        )
        .prop_map(|ops| {
            let seeds = [name(1), name(2), name(3)];
            let base = Ring::new(range(), &seeds);
            let mut replicas = vec![base.clone(), base.clone(), base];
            for (who, offset, len, to, sync) in ops {
                let me = seeds[who];
                let start = range().start() + offset as u32;
                let end = (u64::from(start) + len.max(1)).min(range().end());
                let ring = &mut replicas[who];
                if ring.owned_wholly_by(u64::from(start), end, me) {
                    ring.assign(start, end, name(to), me);
                }
                if sync {
                    let from = replicas[who].all_entries();
                    let other = (who + 1) % 3;
                    replicas[other].merge_entries(&from, &mut Vec::new());
                }
            }
            replicas
        })
    }

    fn joined(a: &Ring, b: &Ring) -> Ring {
        let mut out = a.clone();
        out.merge_entries(&b.all_entries(), &mut Vec::new());
        out
    }

    /// Peers give parts of what they own (in their own view) to others and gossip only
    /// the changed entries with successors; messages are delivered late, twice, in any
    /// order, and relayed. At no point may two peers both believe they own an address.
    fn deltas_never_make_two_owners(ops: &[(u8, u16, u8, u8, u16)]) -> Result<(), TestCaseError> {
        let n = 4;
        let seeds: Vec<PeerName> = (1..=n).map(name).collect();
        let base = Ring::new(range(), &seeds);
        let mut views: Vec<Ring> = vec![base; n as usize];
        let mut pool: Vec<Vec<(u32, RingEntry)>> = Vec::new();
        for &(who, offset, len, to, pick) in ops {
            let who = usize::from(who) % n as usize;
            if pick % 3 == 0 || pool.is_empty() {
                // A donation by `who` from a range it owns in its view.
                let me = seeds[who];
                // Blocks on a 16-address grid, so they often end where another began.
                let start = range().start() + u32::from(offset % 16) * 16;
                let end = (u64::from(start) + (u64::from(len % 4) + 1) * 16).min(range().end());
                let to = seeds[usize::from(to) % n as usize];
                let view = &mut views[who];
                if to != me
                    && view.owned_wholly_by(u64::from(start), end, me)
                    && let Some(changed) = view.assign(start, end, to, me)
                {
                    pool.push(view.with_successors(&changed));
                }
            } else {
                // Deliver (and keep, so it can arrive again) a random message; relay
                // what was new, as merge_received does.
                let msg = pool[usize::from(pick) % pool.len()].clone();
                let changed = views[who].merge_entries(&msg, &mut Vec::new());
                if !changed.is_empty() {
                    pool.push(views[who].with_successors(&changed));
                }
            }
            let mut owned: Vec<(u64, u64, usize)> = Vec::new();
            for (i, view) in views.iter().enumerate() {
                for (s, e) in view.ranges_of(seeds[i]) {
                    owned.push((s, e, i));
                }
            }
            owned.sort_unstable();
            for w in owned.windows(2) {
                prop_assert!(
                    w[0].1 <= w[1].0,
                    "{:?} owned by {} and {}",
                    std::net::Ipv4Addr::from(w[1].0 as u32),
                    w[0].2,
                    w[1].2
                );
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]
        #[test]
        fn delta_gossip_never_makes_two_owners(
            ops in prop::collection::vec(any::<(u8, u16, u8, u8, u16)>(), 0..80)
        ) {
            deltas_never_make_two_owners(&ops)?;
        }
    }

    proptest! {
        #[test]
        fn merge_is_a_join(replicas in arb_replicas()) {
            let [a, b, c] = [&replicas[0], &replicas[1], &replicas[2]];
            prop_assert_eq!(joined(a, a), a.clone());
            prop_assert_eq!(joined(a, b), joined(b, a));
            prop_assert_eq!(joined(&joined(a, b), c), joined(a, &joined(b, c)));
            for r in [a, b, c] {
                r.check().map_err(TestCaseError::fail)?;
            }
            joined(&joined(a, b), c).check().map_err(TestCaseError::fail)?;
        }

        #[test]
        fn digest_difference_repairs(replicas in arb_replicas()) {
            let (a, b) = (&replicas[0], &replicas[1]);
            let mut b2 = b.clone();
            b2.merge_entries(&a.entries_differing(&b.bucket_hashes()), &mut Vec::new());
            let mut a2 = a.clone();
            a2.merge_entries(&b2.entries_differing(&a.bucket_hashes()), &mut Vec::new());
            b2.merge_entries(&a2.entries_differing(&b2.bucket_hashes()), &mut Vec::new());
            prop_assert_eq!(&a2, &joined(a, b));
            prop_assert_eq!(&b2, &joined(a, b));
        }
    }
}
