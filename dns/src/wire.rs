//! The gossip codec of channel `dns`: serde + postcard, decoded totally.
//!
//! Every message is an enum so a later format can add a variant; decoding refuses
//! trailing bytes, names that are not valid hostnames and oversized owner ids, and never
//! panics (postcard bounds every length by the input).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use weave_mesh::{GossipError, PeerName};

use crate::name::WireName;

/// Longest owner (container) id accepted; Docker ids are 64 hex digits.
pub(crate) const MAX_OWNER_LEN: usize = 256;

/// One record as gossiped. Names travel as text so the format does not depend on our
/// in-memory wire-name representation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireEntry {
    pub origin: PeerName,
    pub name: String,
    pub addr: [u8; 4],
    pub owner: String,
    pub version: u64,
    /// `None` for a live record; for a tombstone, how many milliseconds it has left before
    /// it expires. Relative, because peers share no clock; it never grows as it travels,
    /// so a tombstone's life is bounded however often it is re-gossiped.
    pub tombstone_ms: Option<u32>,
}

/// A validated [`WireEntry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedEntry {
    pub origin: PeerName,
    pub name: WireName,
    pub addr: Ipv4Addr,
    pub owner: Box<str>,
    pub version: u64,
    pub tombstone_ms: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Update {
    Entries(Vec<WireEntry>),
}

/// Per origin: the highest version we hold, how many records and a fingerprint of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OriginSummary {
    pub origin: PeerName,
    pub max_version: u64,
    pub count: u64,
    pub fingerprint: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Digest {
    Origins(Vec<OriginSummary>),
}

pub(crate) fn encode_entries(entries: Vec<WireEntry>) -> Vec<u8> {
    postcard::to_stdvec(&Update::Entries(entries))
        .expect("postcard encoding into a Vec cannot fail")
}

pub(crate) fn decode_entries(bytes: &[u8]) -> Result<Vec<DecodedEntry>, GossipError> {
    let (update, rest): (Update, _) = postcard::take_from_bytes(bytes)
        .map_err(|e| GossipError::Malformed(format!("dns update: {e}")))?;
    if !rest.is_empty() {
        return Err(GossipError::Malformed(format!(
            "dns update: {} trailing bytes",
            rest.len()
        )));
    }
    let Update::Entries(entries) = update;
    entries
        .into_iter()
        .map(|e| {
            let name = WireName::from_dotted(&e.name)
                .map_err(|err| GossipError::Malformed(err.to_string()))?;
            if e.owner.len() > MAX_OWNER_LEN {
                return Err(GossipError::Malformed(format!(
                    "dns owner id of {} bytes",
                    e.owner.len()
                )));
            }
            Ok(DecodedEntry {
                origin: e.origin,
                name,
                addr: Ipv4Addr::from(e.addr),
                owner: e.owner.into_boxed_str(),
                version: e.version,
                tombstone_ms: e.tombstone_ms,
            })
        })
        .collect()
}

pub(crate) fn encode_digest(origins: Vec<OriginSummary>) -> Vec<u8> {
    postcard::to_stdvec(&Digest::Origins(origins))
        .expect("postcard encoding into a Vec cannot fail")
}

pub(crate) fn decode_digest(bytes: &[u8]) -> Option<Vec<OriginSummary>> {
    let (digest, rest): (Digest, _) = postcard::take_from_bytes(bytes).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let Digest::Origins(origins) = digest;
    Some(origins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> WireEntry {
        WireEntry {
            origin: PeerName::from_u64(7),
            name: name.to_owned(),
            addr: [198, 18, 0, 1],
            owner: "c1".to_owned(),
            version: 3,
            tombstone_ms: Some(1000),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode_entries(vec![entry("Web.weave.local.")]);
        let decoded = decode_entries(&bytes).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].name.to_dotted(), "web.weave.local.");
        assert_eq!(decoded[0].addr, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(decoded[0].tombstone_ms, Some(1000));
    }

    #[test]
    fn refuses_bad_input() {
        assert!(decode_entries(&[]).is_err());
        assert!(decode_entries(&[9, 9, 9]).is_err());
        let mut bytes = encode_entries(vec![entry("web.weave.local.")]);
        bytes.push(0);
        assert!(decode_entries(&bytes).is_err());
        assert!(decode_entries(&encode_entries(vec![entry("bad name")])).is_err());
        let mut long = entry("web.weave.local.");
        long.owner = "x".repeat(MAX_OWNER_LEN + 1);
        assert!(decode_entries(&encode_entries(vec![long])).is_err());
        // A huge claimed element count with no data behind it.
        assert!(decode_entries(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_digest(&[0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_none());
    }
}
