//! A small cache of upstream replies, keyed by question and the query flags that change
//! an answer (EDNS present, DO, CD, RD).
//!
//! Entries live for the smallest TTL of their records, capped; negative answers for
//! min(SOA TTL, SOA minimum), capped lower (RFC 2308). Served copies get the asker's ID
//! and question spelling and TTLs reduced by the time spent in the cache. When full, the
//! entry closest to expiry goes: deterministic, and it is the least valuable one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::message::{HEADER_LEN, RCODE_NOERROR, RCODE_NXDOMAIN, ReplyFacts};
use crate::name::MAX_NAME_LEN;

/// Replies larger than this are not cached (they are rare and would crowd out others).
const MAX_CACHED_REPLY: usize = 8192;

/// Cache key bytes: qtype, qclass, flags byte, then the lowercase name.
pub(crate) struct KeyBuf {
    bytes: [u8; MAX_NAME_LEN + 5],
    len: usize,
}

impl KeyBuf {
    pub(crate) fn new(lower_name: &[u8], qtype: u16, qclass: u16, flags: u8) -> Self {
        let mut bytes = [0u8; MAX_NAME_LEN + 5];
        bytes[0..2].copy_from_slice(&qtype.to_be_bytes());
        bytes[2..4].copy_from_slice(&qclass.to_be_bytes());
        bytes[4] = flags;
        bytes[5..5 + lower_name.len()].copy_from_slice(lower_name);
        Self {
            bytes,
            len: 5 + lower_name.len(),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

struct CacheEntry {
    reply: Box<[u8]>,
    stored: Instant,
    expires: Instant,
    ttl_offsets: Box<[u16]>,
    seq: u64,
}

pub(crate) struct Cache {
    capacity: usize,
    max_ttl: Duration,
    max_negative_ttl: Duration,
    entries: BTreeMap<Box<[u8]>, CacheEntry>,
    by_expiry: BTreeMap<(Instant, u64), Box<[u8]>>,
    seq: u64,
}

impl Cache {
    pub(crate) fn new(capacity: usize, max_ttl: Duration, max_negative_ttl: Duration) -> Self {
        Self {
            capacity,
            max_ttl,
            max_negative_ttl,
            entries: BTreeMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// A copy of the cached reply for `key`, with TTLs aged, or `None`. The caller patches
    /// the ID and question.
    pub(crate) fn get(&mut self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        let entry = self.entries.get(key)?;
        if entry.expires <= now {
            self.remove(key);
            return None;
        }
        let mut reply = entry.reply.to_vec();
        let elapsed = u32::try_from(now.saturating_duration_since(entry.stored).as_secs())
            .unwrap_or(u32::MAX);
        if elapsed > 0 {
            for &at in entry.ttl_offsets.iter() {
                let at = usize::from(at);
                let field = &mut reply[at..at + 4];
                let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                field.copy_from_slice(&ttl.saturating_sub(elapsed).to_be_bytes());
            }
        }
        Some(reply)
    }

    /// Stores `reply` if it is cacheable; `facts` come from walking it.
    pub(crate) fn insert(&mut self, key: &[u8], reply: &[u8], facts: ReplyFacts, now: Instant) {
        if self.capacity == 0
            || facts.truncated
            || reply.len() > MAX_CACHED_REPLY
            || reply.len() < HEADER_LEN
        {
            return;
        }
        let ttl = match facts.rcode {
            RCODE_NOERROR if facts.answers > 0 => facts.min_ttl.map(|t| secs(t).min(self.max_ttl)),
            RCODE_NOERROR | RCODE_NXDOMAIN => facts
                .soa_negative_ttl
                .map(|t| secs(t).min(self.max_negative_ttl)),
            _ => None,
        };
        let Some(ttl) = ttl.filter(|t| !t.is_zero()) else {
            return;
        };
        self.remove(key);
        self.evict(now);
        self.seq += 1;
        let expires = now + ttl;
        let key: Box<[u8]> = key.into();
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.entries.insert(
            key,
            CacheEntry {
                reply: reply.into(),
                stored: now,
                expires,
                ttl_offsets: facts.ttl_offsets.into_boxed_slice(),
                seq: self.seq,
            },
        );
    }

    /// Makes room for one entry: expired ones first, else the one closest to expiry.
    fn evict(&mut self, now: Instant) {
        while let Some((&(expires, _), _)) = self.by_expiry.first_key_value() {
            if expires > now && self.entries.len() < self.capacity {
                break;
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.entries.remove(&key);
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&(entry.expires, entry.seq));
        }
    }
}

fn secs(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(rcode: u8, answers: u16, min_ttl: Option<u32>, neg: Option<u32>) -> ReplyFacts {
        ReplyFacts {
            rcode,
            truncated: false,
            ttl_offsets: Vec::new(),
            min_ttl,
            soa_negative_ttl: neg,
            answers,
        }
    }

    #[test]
    fn expires_and_evicts() {
        let now = Instant::now();
        let mut cache = Cache::new(2, Duration::from_secs(3600), Duration::from_secs(30));
        let reply = [0u8; 20];
        cache.insert(b"a", &reply, facts(0, 1, Some(10), None), now);
        cache.insert(b"b", &reply, facts(0, 1, Some(20), None), now);
        assert!(cache.get(b"a", now + Duration::from_secs(9)).is_some());
        assert!(cache.get(b"a", now + Duration::from_secs(10)).is_none());
        cache.insert(b"a", &reply, facts(0, 1, Some(10), None), now);
        // Full: the entry closest to expiry ("a") makes room.
        cache.insert(b"c", &reply, facts(0, 1, Some(30), None), now);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b"a", now).is_none());
        assert!(cache.get(b"b", now).is_some());
        // Negative answers are capped; without a SOA, or with TTL 0, not cached.
        cache.insert(b"n", &reply, facts(3, 0, None, Some(900)), now);
        assert!(cache.get(b"n", now + Duration::from_secs(29)).is_some());
        assert!(cache.get(b"n", now + Duration::from_secs(30)).is_none());
        cache.insert(b"m", &reply, facts(3, 0, None, None), now);
        assert!(cache.get(b"m", now).is_none());
        cache.insert(b"z", &reply, facts(0, 1, Some(0), None), now);
        assert!(cache.get(b"z", now).is_none());
        cache.insert(b"s", &reply, facts(2, 0, None, Some(60)), now);
        assert!(cache.get(b"s", now).is_none());
    }
}
