//! The IPAM channel's messages: serde + postcard behind a format byte, decoded totally.
//!
//! Every message body is one [`Message`]. Gossip (broadcast, neighbour and anti-entropy)
//! carries only `Message::Update`; unicasts carry any variant. Decoding checks the format
//! byte, a size cap, that nothing trails the body, and (in [`Update::validate`]) that every
//! token lies in the range and lists are bounded. postcard never pre-allocates more than
//! the input can fill, so a lying length prefix cannot exhaust memory.

use serde::{Deserialize, Serialize};
use weave_mesh::PeerName;

use crate::cidr::Cidr;
use crate::paxos::AcceptorState;
use crate::ring::RingEntry;

const FORMAT: u8 = 1;
/// Larger than any honest message: a /8 split into single addresses is 16M tokens, but
/// rings hold thousands of tokens in practice.
const MAX_MESSAGE: usize = 64 << 20;
const MAX_LIST: usize = 1 << 20;

/// An advertised free-address count. Ordered by `seq` (the owner's counter), ties by
/// `free`, so it merges as a last-writer-wins register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Hint {
    pub(crate) seq: u64,
    pub(crate) free: u64,
}

/// Ring part of an update. `seeds` travels only with complete states and ring replies;
/// deltas identify the ring by `id` (hash of range and seeds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RingPart {
    pub(crate) id: u64,
    pub(crate) seeds: Option<Vec<PeerName>>,
    pub(crate) entries: Vec<(u32, RingEntry)>,
}

/// A state fragment: any subset of the ring, free hints and Paxos states.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Update {
    pub(crate) range: Cidr,
    pub(crate) ring: Option<RingPart>,
    pub(crate) hints: Vec<(PeerName, Hint)>,
    pub(crate) paxos: Vec<(PeerName, AcceptorState)>,
}

impl Update {
    pub(crate) fn empty(range: Cidr) -> Self {
        Self {
            range,
            ring: None,
            hints: Vec::new(),
            paxos: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ring
            .as_ref()
            .is_none_or(|r| r.seeds.is_none() && r.entries.is_empty())
            && self.hints.is_empty()
            && self.paxos.is_empty()
    }

    /// Checks what the type cannot: tokens inside the update's range, bounded lists.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(ring) = &self.ring {
            if ring.entries.len() > MAX_LIST {
                return Err(format!("{} ring entries", ring.entries.len()));
            }
            if let Some(seeds) = &ring.seeds
                && (seeds.is_empty() || seeds.len() > MAX_LIST)
            {
                return Err(format!("{} seeds", seeds.len()));
            }
            if let Some((t, _)) = ring
                .entries
                .iter()
                .find(|(t, _)| !self.range.contains_u32(*t))
            {
                return Err(format!(
                    "token {} outside range {}",
                    std::net::Ipv4Addr::from(*t),
                    self.range
                ));
            }
        }
        if self.hints.len() > MAX_LIST || self.paxos.len() > MAX_LIST {
            return Err("oversized hint or paxos list".to_owned());
        }
        for (_, state) in &self.paxos {
            if let Some((_, value)) = &state.accepted
                && (value.is_empty() || value.len() > MAX_LIST)
            {
                return Err(format!("paxos value of {} peers", value.len()));
            }
        }
        Ok(())
    }
}

/// Why a donor or owner said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum DenyReason {
    /// No free space to give in that subnet.
    NoSpace,
    /// The address is allocated on the owner.
    InUse,
    /// We do not own that address (the reply carries our view of it).
    NotOwner,
    /// We have no ring, a different ring, or are still re-learning our allocations.
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Message {
    Update(Update),
    /// "Give me some space in this subnet."
    SpaceRequest {
        request: u64,
        ring: u64,
        subnet: Cidr,
    },
    /// "Give me this one address."
    ClaimRequest {
        request: u64,
        ring: u64,
        addr: u32,
    },
    /// The ring change that answers a request (also broadcast).
    Grant {
        request: u64,
        update: Update,
    },
    Denied {
        request: u64,
        reason: DenyReason,
        update: Option<Update>,
    },
    /// "Send me your complete ring" (a peer without one).
    RingRequest,
    /// A restarted peer without its data asks what others know of these ranges (and of
    /// whatever they think it owns); `round` pairs answers with questions.
    SyncRequest {
        round: u64,
        ranges: Vec<(u32, u64)>,
    },
    SyncReply {
        round: u64,
        update: Update,
    },
}

pub(crate) fn encode(message: &Message) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Writing to a Vec cannot fail and every type here serializes.
    let body = postcard::to_allocvec(message).expect("IPAM messages always serialize");
    out.extend_from_slice(&body);
    out
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Message, String> {
    let (&format, body) = bytes.split_first().ok_or("empty message")?;
    if format != FORMAT {
        return Err(format!("unknown IPAM message format {format}"));
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("IPAM message of {} bytes", bytes.len()));
    }
    let (message, rest): (Message, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes", rest.len()));
    }
    match &message {
        Message::Update(u)
        | Message::Grant { update: u, .. }
        | Message::SyncReply { update: u, .. } => {
            u.validate()?;
        }
        Message::Denied {
            update: Some(u), ..
        } => u.validate()?,
        Message::SyncRequest { ranges, .. } if ranges.len() > MAX_LIST => {
            return Err("oversized sync request".to_owned());
        }
        _ => {}
    }
    Ok(message)
}

/// Anti-entropy summary: ring identity, per-bucket hashes of the ring, per-bucket hashes
/// of the free hints, one hash of the Paxos states.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Digest {
    pub(crate) ring: Option<u64>,
    pub(crate) buckets: Vec<u64>,
    pub(crate) hints: Vec<u64>,
    pub(crate) paxos: u64,
}

pub(crate) fn encode_digest(digest: &Digest) -> Vec<u8> {
    let mut out = vec![FORMAT];
    out.extend_from_slice(&postcard::to_allocvec(digest).expect("digests always serialize"));
    out
}

pub(crate) fn decode_digest(bytes: &[u8]) -> Option<Digest> {
    let (&format, body) = bytes.split_first()?;
    if format != FORMAT || bytes.len() > MAX_MESSAGE {
        return None;
    }
    let (digest, rest): (Digest, &[u8]) = postcard::take_from_bytes(body).ok()?;
    (rest.is_empty() && digest.buckets.len() <= 1024 && digest.hints.len() <= 1024)
        .then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let range: Cidr = "198.18.0.0/16".parse().unwrap();
        let msg = Message::Update(Update {
            range,
            ring: Some(RingPart {
                id: 7,
                seeds: Some(vec![PeerName::from_u64(1)]),
                entries: vec![(
                    range.start() + 5,
                    RingEntry {
                        owner: PeerName::from_u64(1),
                        version: 3,
                    },
                )],
            }),
            hints: vec![(PeerName::from_u64(1), Hint { seq: 1, free: 9 })],
            paxos: vec![],
        });
        let bytes = encode(&msg);
        assert_eq!(decode(&bytes).unwrap(), msg);
        assert!(decode(&[]).is_err());
        assert!(decode(&[2]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A token outside the range is refused.
        let Message::Update(mut bad) = msg else {
            unreachable!()
        };
        bad.ring.as_mut().unwrap().entries[0].0 = 1;
        assert!(decode(&encode(&Message::Update(bad))).is_err());
        // Host bits in a CIDR are refused by the decoder.
        let cidr_bytes = postcard::to_allocvec(&(u32::from(range.network()) + 1, 16u8)).unwrap();
        assert!(postcard::from_bytes::<Cidr>(&cidr_bytes).is_err());
    }
}
