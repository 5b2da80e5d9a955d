//! The topology CRDT: for every peer, the connections it reports, merged from deltas.
//!
//! Each peer owns one record and is the only one that writes it. A record holds one entry
//! per remote peer the owner has (or had) a connection to. Every change to an entry
//! stamps it with the owner's next version number, so the record is a map of
//! last-writer-wins registers keyed by remote name, with versions that only the owner
//! assigns. Removals are tombstones (an entry without connection info).
//!
//! That shape lets a change travel as a delta of one entry (tens of bytes) instead of the
//! whole record or, as in Weave, the whole topology; and it gives anti-entropy a cheap
//! digest: per record, the version up to which we hold every change (the *watermark*).
//! A neighbour behind that watermark is sent only the entries above its own. This is
//! Scuttlebutt reconciliation (van Renesse et al. 2008) over delta-state CRDTs.
//!
//! Incarnations: a peer that restarts gets a new UID and a higher generation (taken from
//! the wall clock at start). A record of a newer incarnation replaces an older one wholly.
//! If we see an incarnation of ourselves newer than ours (our clock went back), we move
//! our generation past it; if that incarnation keeps changing afterwards, another live
//! peer uses our name, and we report a name collision rather than fight over it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::peer::{PeerName, PeerUid};

/// What a peer reports about one of its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Where the remote peer can be dialled: for an outbound connection the address we
    /// dialled, for an inbound one the remote IP and the listen port it announced.
    pub addr: Option<SocketAddr>,
    /// We dialled it.
    pub outbound: bool,
    /// The data path works (set by the router once UDP heartbeats flow both ways).
    pub established: bool,
}

/// One entry of a record: the owner's view of its connection to one remote peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Owner-assigned, strictly increasing over the owner's changes.
    pub version: u64,
    /// `None` once the connection is gone (a tombstone).
    pub info: Option<ConnectionInfo>,
}

/// Which incarnation of a peer a record describes. Later incarnations win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    pub generation: u64,
    pub uid: PeerUid,
}

/// A peer's record as we hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: PeerName,
    pub nickname: String,
    pub incarnation: Incarnation,
    /// Highest entry version we know of.
    pub version: u64,
    /// We hold every change with a version up to here.
    pub watermark: u64,
    /// Changes above `floor` come with their tombstones; below it we may have learned
    /// the record from a snapshot that omitted them, so we can only forward snapshots
    /// to a peer whose watermark is below it.
    pub floor: u64,
    pub entries: BTreeMap<PeerName, Entry>,
    /// Version ranges `(from, to]` received above the watermark, not yet joined up.
    received: Vec<(u64, u64)>,
}

impl Record {
    /// The live connections the owner reports.
    pub fn connections(&self) -> impl Iterator<Item = (PeerName, &ConnectionInfo)> {
        self.entries
            .iter()
            .filter_map(|(remote, entry)| entry.info.as_ref().map(|info| (*remote, info)))
    }

    pub fn connection(&self, remote: PeerName) -> Option<&ConnectionInfo> {
        self.entries
            .get(&remote)
            .and_then(|entry| entry.info.as_ref())
    }

    /// A delta carrying every change in `(from, watermark]`, or a snapshot if `from` is
    /// below what we can answer with tombstones.
    fn delta_since(&self, from: u64) -> RecordDelta {
        if from < self.floor || from == 0 {
            return self.snapshot();
        }
        RecordDelta {
            name: self.name,
            nickname: self.nickname.clone(),
            incarnation: self.incarnation,
            from,
            to: self.watermark,
            entries: self
                .entries
                .iter()
                .filter(|(_, entry)| entry.version > from)
                .map(|(remote, entry)| (*remote, entry.clone()))
                .collect(),
        }
    }

    /// The live entries only, marked `from = 0`: whatever a receiver holds at or below
    /// `to` and is not listed here has been removed.
    fn snapshot(&self) -> RecordDelta {
        RecordDelta {
            name: self.name,
            nickname: self.nickname.clone(),
            incarnation: self.incarnation,
            from: 0,
            to: self.watermark,
            entries: self
                .entries
                .iter()
                .filter(|(_, entry)| entry.info.is_some() || entry.version > self.watermark)
                .map(|(remote, entry)| (*remote, entry.clone()))
                .collect(),
        }
    }
}

/// A change to one record: the entries with versions in `(from, to]` (all of them; plus
/// possibly later ones). `from == 0` makes it a snapshot of the live entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDelta {
    pub name: PeerName,
    pub nickname: String,
    pub incarnation: Incarnation,
    pub from: u64,
    pub to: u64,
    pub entries: Vec<(PeerName, Entry)>,
}

/// What travels on the topology channel: changed records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyDelta {
    pub records: Vec<RecordDelta>,
}

impl TopologyDelta {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Per record, what we hold: the anti-entropy digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyDigest {
    pub records: Vec<(PeerName, Incarnation, u64)>,
}

/// Something the merge noticed that the layers above care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyNotice {
    /// Another live peer uses our name (cloned machine?).
    NameCollision { uid: PeerUid, nickname: String },
}

/// The topology as one peer knows it.
#[derive(Debug, Clone)]
pub struct Topology {
    local: PeerName,
    records: BTreeMap<PeerName, Record>,
    /// Our own entries changed since the last [`Self::take_local_delta`]: the version
    /// the pending delta starts after.
    pending_local_since: Option<u64>,
    /// Foreign incarnations of our name we have moved our generation past once.
    superseded_selves: BTreeSet<PeerUid>,
    collisions_reported: BTreeSet<PeerUid>,
    notices: VecDeque<TopologyNotice>,
    /// Bumped on every change that can alter routes or the peer set.
    epoch: u64,
}

impl Topology {
    pub fn new(local: PeerName, nickname: String, incarnation: Incarnation) -> Self {
        let mut records = BTreeMap::new();
        records.insert(
            local,
            Record {
                name: local,
                nickname,
                incarnation,
                version: 0,
                watermark: 0,
                floor: 0,
                entries: BTreeMap::new(),
                received: Vec::new(),
            },
        );
        Self {
            local,
            records,
            pending_local_since: None,
            superseded_selves: BTreeSet::new(),
            collisions_reported: BTreeSet::new(),
            notices: VecDeque::new(),
            epoch: 0,
        }
    }

    pub fn local(&self) -> PeerName {
        self.local
    }

    pub fn local_record(&self) -> &Record {
        self.records
            .get(&self.local)
            .expect("the local record is never removed")
    }

    pub fn record(&self, name: PeerName) -> Option<&Record> {
        self.records.get(&name)
    }

    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Changes whenever routes or the peer set may have changed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn poll_notice(&mut self) -> Option<TopologyNotice> {
        self.notices.pop_front()
    }

    /// Records (adds, replaces or removes with `None`) our own connection to `remote`.
    pub fn set_local_connection(&mut self, remote: PeerName, info: Option<ConnectionInfo>) {
        let record = self.records.get_mut(&self.local).expect("local record");
        let current = record
            .entries
            .get(&remote)
            .and_then(|entry| entry.info.as_ref());
        if current == info.as_ref() || (current.is_none() && info.is_none()) {
            return;
        }
        self.pending_local_since.get_or_insert(record.version);
        record.version += 1;
        record.watermark = record.version;
        let version = record.version;
        record.entries.insert(remote, Entry { version, info });
        self.epoch += 1;
    }

    /// The delta describing our own changes since the last call, if any.
    pub fn take_local_delta(&mut self) -> Option<TopologyDelta> {
        let since = self.pending_local_since.take()?;
        let record = self.local_record();
        Some(TopologyDelta {
            records: vec![record.delta_since(since)],
        })
    }

    /// Our whole knowledge, as snapshots.
    pub fn complete(&self) -> TopologyDelta {
        TopologyDelta {
            records: self.records.values().map(Record::snapshot).collect(),
        }
    }

    pub fn digest(&self) -> TopologyDigest {
        TopologyDigest {
            records: self
                .records
                .values()
                .map(|r| (r.name, r.incarnation, r.watermark))
                .collect(),
        }
    }

    /// What a neighbour with `digest` lacks of what we know.
    /// A cheap summary of [`Self::digest`]: equal hashes mean nothing to exchange.
    pub fn digest_hash(&self) -> u64 {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for record in self.records.values() {
            for word in [
                record.name.as_u64(),
                record.incarnation.generation,
                record.incarnation.uid,
                record.watermark,
            ] {
                hash ^= word;
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
            }
        }
        hash
    }

    /// What a neighbour with `digest` lacks of what we know.
    pub fn missing(&self, digest: &TopologyDigest) -> TopologyDelta {
        let theirs: BTreeMap<PeerName, (Incarnation, u64)> = digest
            .records
            .iter()
            .map(|(name, inc, watermark)| (*name, (*inc, *watermark)))
            .collect();
        let mut out = TopologyDelta::default();
        for record in self.records.values() {
            match theirs.get(&record.name) {
                None => out.records.push(record.snapshot()),
                Some((inc, _)) if *inc < record.incarnation => out.records.push(record.snapshot()),
                Some((inc, watermark))
                    if *inc == record.incarnation && *watermark < record.watermark =>
                {
                    out.records.push(record.delta_since(*watermark))
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Of the records a neighbour announced, those we are behind on, each with the
    /// watermark we hold (0 if we hold nothing of that incarnation): a pull request.
    pub fn wants(
        &self,
        announced: &[(PeerName, Incarnation, u64)],
    ) -> Vec<(PeerName, Incarnation, u64)> {
        announced
            .iter()
            .filter(|(name, _, _)| *name != self.local)
            .filter_map(
                |&(name, incarnation, watermark)| match self.records.get(&name) {
                    None => Some((name, incarnation, 0)),
                    Some(record) if record.incarnation < incarnation => {
                        Some((name, incarnation, 0))
                    }
                    Some(record)
                        if record.incarnation == incarnation && record.watermark < watermark =>
                    {
                        Some((name, incarnation, record.watermark))
                    }
                    Some(_) => None,
                },
            )
            .collect()
    }

    /// Answers a pull request: for each record asked for, what lies above the watermark.
    pub fn pull(&self, wanted: &[(PeerName, Incarnation, u64)]) -> TopologyDelta {
        let records = wanted
            .iter()
            .filter_map(|&(name, incarnation, watermark)| {
                let record = self.records.get(&name)?;
                if record.incarnation > incarnation || watermark == 0 {
                    Some(record.snapshot())
                } else if record.incarnation == incarnation && record.watermark > watermark {
                    Some(record.delta_since(watermark))
                } else {
                    None
                }
            })
            .collect();
        TopologyDelta { records }
    }

    /// Records of `delta` that left us with a gap (we hold changes above our watermark
    /// but not all below): a pull request for the rest.
    pub fn gaps(&self, delta: &TopologyDelta) -> Vec<(PeerName, Incarnation, u64)> {
        delta
            .records
            .iter()
            .filter_map(|r| self.records.get(&r.name))
            .filter(|ours| !ours.received.is_empty())
            .map(|ours| (ours.name, ours.incarnation, ours.watermark))
            .collect()
    }

    /// The (name, incarnation, watermark) of each record in `delta`, as we now hold them.
    pub fn announcement(&self, delta: &TopologyDelta) -> Vec<(PeerName, Incarnation, u64)> {
        delta
            .records
            .iter()
            .filter_map(|r| self.records.get(&r.name))
            .map(|r| (r.name, r.incarnation, r.watermark))
            .collect()
    }

    /// Merges a delta; returns the part that was new to us (whole record deltas, so each
    /// keeps its `(from, to]` promise when relayed).
    pub fn merge(&mut self, delta: &TopologyDelta) -> TopologyDelta {
        let mut novel = TopologyDelta::default();
        for record_delta in &delta.records {
            if self.merge_record(record_delta) {
                novel.records.push(record_delta.clone());
            }
        }
        novel
    }

    fn merge_record(&mut self, delta: &RecordDelta) -> bool {
        if delta.from > delta.to || delta.entries.len() > MAX_ENTRIES_PER_RECORD {
            return false;
        }
        if delta.name == self.local {
            self.merge_about_ourselves(delta);
            return false;
        }
        let Some(record) = self.records.get_mut(&delta.name) else {
            self.records.insert(delta.name, Record::from_delta(delta));
            self.epoch += 1;
            return true;
        };
        if delta.incarnation < record.incarnation {
            return false;
        }
        if delta.incarnation > record.incarnation {
            *record = Record::from_delta(delta);
            self.epoch += 1;
            return true;
        }
        let changed = record.apply(delta);
        if changed {
            self.epoch += 1;
        }
        changed
    }

    /// Someone told us about a record with our name. An older incarnation of ourselves
    /// (we restarted) loses by itself. A newer one means our clock went back: we move our
    /// generation past it and re-announce. If the same foreign incarnation gets ahead of
    /// us again, it is alive and bumping too: another peer uses our name, which we report
    /// instead of fighting over it forever.
    fn merge_about_ourselves(&mut self, delta: &RecordDelta) {
        let record = self.records.get_mut(&self.local).expect("local record");
        if delta.incarnation.uid == record.incarnation.uid || delta.incarnation < record.incarnation
        {
            return;
        }
        if self.superseded_selves.insert(delta.incarnation.uid) {
            record.incarnation.generation = delta.incarnation.generation + 1;
            self.pending_local_since = Some(0);
            self.epoch += 1;
        } else if self.collisions_reported.insert(delta.incarnation.uid) {
            self.notices.push_back(TopologyNotice::NameCollision {
                uid: delta.incarnation.uid,
                nickname: delta.nickname.clone(),
            });
        }
    }

    /// Drops records of peers not in `reachable` and not in `keep`; returns their names.
    pub fn remove_unreachable(
        &mut self,
        reachable: &BTreeSet<PeerName>,
        keep: &BTreeSet<PeerName>,
    ) -> Vec<PeerName> {
        let gone: Vec<PeerName> = self
            .records
            .keys()
            .filter(|name| !reachable.contains(name) && !keep.contains(name))
            .copied()
            .collect();
        for name in &gone {
            self.records.remove(name);
        }
        if !gone.is_empty() {
            self.epoch += 1;
        }
        gone
    }

    /// Peers reachable from us over connections both ends report (in any state).
    pub fn reachable(&self) -> BTreeSet<PeerName> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::new();
        seen.insert(self.local);
        queue.push_back(self.local);
        while let Some(name) = queue.pop_front() {
            let Some(record) = self.records.get(&name) else {
                continue;
            };
            for (remote, _) in record.connections() {
                if seen.contains(&remote) {
                    continue;
                }
                let symmetric = self
                    .records
                    .get(&remote)
                    .is_some_and(|r| r.connection(name).is_some());
                if symmetric {
                    seen.insert(remote);
                    queue.push_back(remote);
                }
            }
        }
        seen
    }
}

/// More entries than any peer can have connections (the connection limit is far lower):
/// a delta claiming more is malformed.
const MAX_ENTRIES_PER_RECORD: usize = 1 << 16;

/// Disjoint version ranges we remember per record while waiting for the gap before them
/// to fill; beyond this we drop them (anti-entropy sends them again).
const MAX_RANGES_PER_RECORD: usize = 64;

impl Record {
    fn from_delta(delta: &RecordDelta) -> Self {
        let mut record = Self {
            name: delta.name,
            nickname: delta.nickname.clone(),
            incarnation: delta.incarnation,
            version: 0,
            watermark: 0,
            floor: 0,
            entries: BTreeMap::new(),
            received: Vec::new(),
        };
        record.apply(delta);
        record
    }

    /// Merges a delta of the same incarnation; true if anything changed.
    fn apply(&mut self, delta: &RecordDelta) -> bool {
        let mut changed = false;
        for (remote, entry) in &delta.entries {
            if entry.version <= self.watermark {
                continue; // we already hold every change up to the watermark
            }
            let newer = self
                .entries
                .get(remote)
                .is_none_or(|have| have.version < entry.version);
            if newer {
                self.entries.insert(*remote, entry.clone());
                self.version = self.version.max(entry.version);
                changed = true;
            }
        }
        if delta.to <= self.watermark {
            return changed;
        }
        if delta.from == 0 {
            // A snapshot: what it does not list at or below `to` is gone, and we have no
            // tombstones for those removals.
            let listed: BTreeSet<PeerName> =
                delta.entries.iter().map(|(remote, _)| *remote).collect();
            self.entries
                .retain(|remote, entry| entry.version > delta.to || listed.contains(remote));
            self.floor = self.floor.max(delta.to);
        }
        // Remember which version ranges we hold, and advance the watermark over those
        // that now join up, so the result does not depend on arrival order.
        if self.received.len() < MAX_RANGES_PER_RECORD {
            self.received.push((delta.from, delta.to));
        }
        self.version = self.version.max(delta.to);
        self.received.sort_unstable();
        let mut remaining = Vec::new();
        for (from, to) in std::mem::take(&mut self.received) {
            if from <= self.watermark {
                self.watermark = self.watermark.max(to);
            } else {
                remaining.push((from, to));
            }
        }
        self.received = remaining;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn topo(n: u64) -> Topology {
        Topology::new(
            name(n),
            format!("host{n}"),
            Incarnation {
                generation: 1,
                uid: n * 100,
            },
        )
    }

    fn info(port: u16, established: bool) -> ConnectionInfo {
        ConnectionInfo {
            addr: Some(SocketAddr::from(([192, 0, 2, 1], port))),
            outbound: port.is_multiple_of(2),
            established,
        }
    }

    /// What a replica knows of `owner`'s record: incarnation, watermark, live entries.
    fn view(
        t: &Topology,
        owner: PeerName,
    ) -> Option<(Incarnation, u64, BTreeMap<PeerName, ConnectionInfo>)> {
        let record = t.record(owner)?;
        let live = record
            .connections()
            .map(|(remote, info)| (remote, info.clone()))
            .collect();
        Some((record.incarnation, record.watermark, live))
    }

    #[test]
    fn local_change_travels_as_a_one_entry_delta() {
        let mut a = topo(1);
        let mut b = topo(2);
        a.set_local_connection(name(2), Some(info(6783, false)));
        let first = a.take_local_delta().expect("a change");
        assert!(b.merge(&first).records.len() == 1);
        a.set_local_connection(name(3), Some(info(6784, true)));
        let second = a.take_local_delta().expect("a change");
        assert_eq!(
            second.records[0].entries.len(),
            1,
            "only the changed entry travels"
        );
        assert_eq!((second.records[0].from, second.records[0].to), (1, 2));
        b.merge(&second);
        assert_eq!(view(&b, name(1)), view(&a, name(1)));
        assert!(a.take_local_delta().is_none(), "nothing new");
    }

    #[test]
    fn removal_reaches_replicas_as_tombstone_and_via_snapshot() {
        let mut a = topo(1);
        let mut by_delta = topo(2);
        let mut by_snapshot = topo(3);
        a.set_local_connection(name(2), Some(info(1, true)));
        a.set_local_connection(name(3), Some(info(2, true)));
        by_delta.merge(&a.take_local_delta().unwrap());
        by_snapshot.merge(&a.complete());
        a.set_local_connection(name(2), None);
        by_delta.merge(&a.take_local_delta().unwrap());
        // A snapshot from a third party that already saw the removal.
        let mut relay = topo(4);
        relay.merge(&a.complete());
        by_snapshot.merge(&relay.complete());
        assert_eq!(view(&by_delta, name(1)), view(&a, name(1)));
        assert_eq!(view(&by_snapshot, name(1)), view(&a, name(1)));
        assert!(
            by_snapshot
                .record(name(1))
                .unwrap()
                .connection(name(2))
                .is_none()
        );
    }

    #[test]
    fn missing_sends_only_what_the_neighbour_lacks() {
        let mut a = topo(1);
        let mut b = topo(2);
        for remote in 10..20 {
            a.set_local_connection(name(remote), Some(info(remote as u16, true)));
        }
        b.merge(&a.take_local_delta().unwrap());
        a.set_local_connection(name(10), None);
        a.set_local_connection(name(30), Some(info(30, false)));
        let _lost = a.take_local_delta();
        let missing = a.missing(&b.digest());
        let about_a = missing.records.iter().find(|r| r.name == name(1)).unwrap();
        assert_eq!(
            about_a.entries.len(),
            2,
            "the tombstone and the new entry only"
        );
        b.merge(&missing);
        assert_eq!(view(&b, name(1)), view(&a, name(1)));
        assert!(
            a.missing(&b.digest())
                .records
                .iter()
                .all(|r| r.name != name(1))
        );
    }

    #[test]
    fn newer_incarnation_replaces_the_record() {
        let mut observer = topo(9);
        let mut old = topo(1);
        old.set_local_connection(name(2), Some(info(1, true)));
        observer.merge(&old.complete());
        let mut new = Topology::new(
            name(1),
            "host1".into(),
            Incarnation {
                generation: 2,
                uid: 7,
            },
        );
        new.set_local_connection(name(3), Some(info(2, true)));
        observer.merge(&new.complete());
        observer.merge(&old.complete()); // late gossip about the old one is ignored
        assert_eq!(view(&observer, name(1)), view(&new, name(1)));
    }

    #[test]
    fn we_override_an_older_self_and_report_a_live_twin() {
        let mut me = Topology::new(
            name(1),
            "me".into(),
            Incarnation {
                generation: 5,
                uid: 1,
            },
        );
        let mut twin = Topology::new(
            name(1),
            "twin".into(),
            Incarnation {
                generation: 6,
                uid: 2,
            },
        );
        me.merge(&twin.complete());
        assert!(
            me.local_record().incarnation > twin.local_record().incarnation,
            "we moved past it"
        );
        assert!(me.poll_notice().is_none(), "once may be our own past");
        twin.merge(&me.complete());
        me.merge(&twin.complete());
        assert!(matches!(
            me.poll_notice(),
            Some(TopologyNotice::NameCollision { uid: 2, .. })
        ));
    }

    #[test]
    fn unreachable_peers_are_removed() {
        let mut a = topo(1);
        let mut b = topo(2);
        let mut c = topo(3);
        a.set_local_connection(name(2), Some(info(1, true)));
        b.set_local_connection(name(1), Some(info(2, true)));
        b.set_local_connection(name(3), Some(info(3, true)));
        c.set_local_connection(name(2), Some(info(4, true)));
        a.merge(&b.complete());
        a.merge(&c.complete());
        assert_eq!(a.reachable().len(), 3);
        b.set_local_connection(name(3), None);
        a.merge(&b.take_local_delta().unwrap());
        let reachable = a.reachable();
        assert_eq!(
            a.remove_unreachable(&reachable, &BTreeSet::new()),
            vec![name(3)]
        );
        assert!(a.record(name(3)).is_none());
    }

    #[test]
    fn malformed_deltas_change_nothing() {
        let mut a = topo(1);
        let bad = TopologyDelta {
            records: vec![RecordDelta {
                name: name(2),
                nickname: String::new(),
                incarnation: Incarnation {
                    generation: 1,
                    uid: 1,
                },
                from: 5,
                to: 3,
                entries: vec![],
            }],
        };
        assert!(a.merge(&bad).is_empty());
        assert!(a.record(name(2)).is_none());
    }

    /// One step of an owner's history.
    #[derive(Debug, Clone)]
    enum Op {
        Set {
            owner: usize,
            remote: u64,
            port: u16,
            established: bool,
        },
        Remove {
            owner: usize,
            remote: u64,
        },
        /// Publish the owner's pending delta (and lose it if `lost`).
        Flush {
            owner: usize,
            lost: bool,
        },
        /// A bystander takes a snapshot of what it knows so far.
        Snapshot,
        /// The owner answers a digest of the bystander.
        AntiEntropy {
            owner: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3usize, 10..16u64, 1..4u16, any::<bool>())
                .prop_map(|(owner, remote, port, established)| Op::Set { owner, remote, port, established }),
            2 => (0..3usize, 10..16u64).prop_map(|(owner, remote)| Op::Remove { owner, remote }),
            3 => (0..3usize, prop::bool::weighted(0.2)).prop_map(|(owner, lost)| Op::Flush { owner, lost }),
            1 => Just(Op::Snapshot),
            1 => (0..3usize).prop_map(|owner| Op::AntiEntropy { owner }),
        ]
    }

    /// Runs a history and returns the owners and every delta that was published.
    fn run(ops: &[Op]) -> (Vec<Topology>, Vec<TopologyDelta>) {
        let mut owners: Vec<Topology> = (1..=3).map(topo).collect();
        let mut bystander = topo(50);
        let mut published = Vec::new();
        for op in ops {
            match *op {
                Op::Set {
                    owner,
                    remote,
                    port,
                    established,
                } => {
                    owners[owner].set_local_connection(name(remote), Some(info(port, established)))
                }
                Op::Remove { owner, remote } => {
                    owners[owner].set_local_connection(name(remote), None)
                }
                Op::Flush { owner, lost } => {
                    if let Some(delta) = owners[owner].take_local_delta() {
                        bystander.merge(&delta);
                        if !lost {
                            published.push(delta);
                        }
                    }
                }
                Op::Snapshot => published.push(bystander.complete()),
                Op::AntiEntropy { owner } => {
                    let delta = owners[owner].missing(&bystander.digest());
                    bystander.merge(&delta);
                    published.push(delta);
                }
            }
        }
        // Finally every owner answers an anti-entropy request from an empty replica, so
        // whatever was lost is repaired.
        for owner in &owners {
            published.push(owner.missing(&topo(99).digest()));
        }
        (owners, published)
    }

    fn deliver(order: &[usize], deltas: &[TopologyDelta]) -> Topology {
        let mut replica = topo(60);
        for &i in order {
            replica.merge(&deltas[i % deltas.len()]);
        }
        replica
    }

    proptest! {
        /// Whatever the order, duplication and interleaving with snapshots, replicas
        /// converge to the owners' own records (merge is commutative, associative and
        /// idempotent on what it is fed).
        #[test]
        fn replicas_converge_to_the_owners(
            ops in prop::collection::vec(op(), 0..60),
            seed in any::<u64>(),
            duplicates in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let (owners, deltas) = run(&ops);
            let mut forward: Vec<usize> = (0..deltas.len()).collect();
            forward.extend(duplicates.iter().copied());
            let mut shuffled = forward.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let a = deliver(&forward, &deltas);
            let b = deliver(&shuffled, &deltas);
            for owner in &owners {
                let expected = view(owner, owner.local());
                prop_assert_eq!(&view(&a, owner.local()), &expected);
                prop_assert_eq!(&view(&b, owner.local()), &expected);
            }
        }

        /// Merging complete states: order does not matter and merging twice changes
        /// nothing.
        #[test]
        fn complete_state_merges_commute_and_are_idempotent(ops in prop::collection::vec(op(), 0..40)) {
            let (owners, _) = run(&ops);
            let mut ab = topo(70);
            let mut ba = topo(70);
            for owner in &owners { ab.merge(&owner.complete()); }
            for owner in owners.iter().rev() { ba.merge(&owner.complete()); }
            let once: Vec<_> = owners.iter().map(|o| view(&ab, o.local())).collect();
            for owner in &owners { ab.merge(&owner.complete()); }
            let twice: Vec<_> = owners.iter().map(|o| view(&ab, o.local())).collect();
            let other: Vec<_> = owners.iter().map(|o| view(&ba, o.local())).collect();
            prop_assert_eq!(&once, &twice);
            prop_assert_eq!(&once, &other);
        }
    }
}
