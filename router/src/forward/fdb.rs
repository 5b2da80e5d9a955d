//! The MAC table: which MAC lives where, for how long.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::time::{Duration, Instant};

use weave_mesh::PeerName;

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// Group bit set: broadcast or multicast.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_broadcast(self) -> bool {
        matches!(self.0, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
    }

    /// 01:80:c2:00:00:00 to 0f, the IEEE 802.1D reserved group (STP, pause, LACP,
    /// 802.1X, LLDP): link-local, never forwarded by a bridge.
    pub const fn is_link_local_control(self) -> bool {
        matches!(self.0, [0x01, 0x80, 0xc2, 0x00, 0x00, last] if last <= 0x0f)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a MAC lives: behind our own TAP, or on a remote peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Local,
    Remote(PeerName),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: Owner,
    seen: Instant,
}

/// What learning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Learned {
    /// New, or back after it had expired.
    New,
    /// Known with this owner (timestamp refreshed if due).
    Refreshed,
    /// Known with another owner, now replaced.
    Moved(Owner),
    /// Not learned: the table is at its cap.
    TableFull,
}

fn alive(seen: Instant, now: Instant, ttl: Duration) -> bool {
    now.saturating_duration_since(seen) < ttl
}

/// Lookups only, never iterated into a decision, so a HashMap.
#[derive(Debug)]
pub(super) struct Fdb {
    map: HashMap<Mac, Entry>,
    max: usize,
    refused: u64,
}

impl Fdb {
    pub(super) fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max,
            refused: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn refused(&self) -> u64 {
        self.refused
    }

    /// Records that `mac` was seen at `owner`; the latest claim wins. The timestamp is
    /// rewritten at most every `refresh`, so a busy MAC costs a read, not a write.
    pub(super) fn learn(
        &mut self,
        mac: Mac,
        owner: Owner,
        now: Instant,
        ttl: Duration,
        refresh: Duration,
    ) -> Learned {
        let full = self.map.len() >= self.max;
        match self.map.entry(mac) {
            MapEntry::Occupied(mut slot) => {
                let entry = slot.get_mut();
                if !alive(entry.seen, now, ttl) {
                    *entry = Entry { owner, seen: now };
                    Learned::New
                } else if entry.owner != owner {
                    let from = entry.owner;
                    *entry = Entry { owner, seen: now };
                    Learned::Moved(from)
                } else {
                    if now.saturating_duration_since(entry.seen) >= refresh {
                        entry.seen = now;
                    }
                    Learned::Refreshed
                }
            }
            MapEntry::Vacant(_) if full => {
                self.refused += 1;
                Learned::TableFull
            }
            MapEntry::Vacant(slot) => {
                slot.insert(Entry { owner, seen: now });
                Learned::New
            }
        }
    }

    pub(super) fn lookup(&self, mac: Mac, now: Instant, ttl: Duration) -> Option<Owner> {
        self.map
            .get(&mac)
            .filter(|e| alive(e.seen, now, ttl))
            .map(|e| e.owner)
    }

    pub(super) fn expire(&mut self, now: Instant, ttl: Duration) {
        self.map.retain(|_, e| alive(e.seen, now, ttl));
    }

    pub(super) fn forget(&mut self, owner: Owner) {
        self.map.retain(|_, e| e.owner != owner);
    }

    pub(super) fn live(&self, now: Instant, ttl: Duration) -> Vec<(Mac, Owner, Instant)> {
        let mut out: Vec<_> = self
            .map
            .iter()
            .filter(|(_, e)| alive(e.seen, now, ttl))
            .map(|(&mac, e)| (mac, e.owner, e.seen))
            .collect();
        out.sort_unstable_by_key(|&(mac, ..)| mac);
        out
    }
}
