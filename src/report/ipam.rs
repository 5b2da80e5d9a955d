//! The `IPAM` section of `weave report` (Weave's field names where it had them:
//! `Range`, `RangeNumIPs`, `ActiveIPs`, `DefaultSubnet`, `Entries`, `PendingAllocates`),
//! which `weave status ipam`, the `Service: ipam` block and the metrics are rendered from.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamReport {
    /// `ready`, `awaiting consensus (quorum: q, known: k)`, `idle`, ...
    pub(crate) status: String,
    pub(crate) range: String,
    #[serde(rename = "RangeNumIPs")]
    pub(crate) range_num_ips: u64,
    pub(crate) default_subnet: String,
    /// Addresses allocated on this peer.
    #[serde(rename = "ActiveIPs")]
    pub(crate) active_ips: u64,
    /// Addresses this peer owns, and of those free.
    #[serde(rename = "OwnedIPs")]
    pub(crate) owned_ips: u64,
    #[serde(rename = "FreeIPs")]
    pub(crate) free_ips: u64,
    /// How the ring is made: `consensus=N`, `seed=...` or `observer`.
    pub(crate) init: String,
    /// The peers the ring was split among at creation (empty before it exists).
    pub(crate) seeds: Vec<String>,
    /// The ring, range by range.
    pub(crate) entries: Vec<IpamEntry>,
    /// Who owns how much: this peer first, then the others by name.
    pub(crate) owners: Vec<IpamOwner>,
    pub(crate) pending_allocates: u64,
    pub(crate) pending_claims: u64,
    /// Owners of ranges that are not in the topology, and the addresses they hold.
    pub(crate) unreachable_owners: u64,
    #[serde(rename = "UnreachableIPs")]
    pub(crate) unreachable_ips: u64,
    /// Ring conflicts seen and contained since start, and the last one.
    pub(crate) conflicts: u64,
    pub(crate) last_conflict: Option<String>,
    /// Addresses allocated here whose range another peer won in a conflict and would
    /// not hand back (`addr ident owner`).
    pub(crate) disputed: Vec<String>,
    /// Still re-learning after a start without saved IPAM data.
    pub(crate) reclaiming: bool,
    /// The last failure to persist IPAM state, if the database refused a write.
    pub(crate) persist_error: Option<String>,
}

/// One range of the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamEntry {
    /// Its first address.
    pub(crate) token: String,
    pub(crate) size: u64,
    pub(crate) peer: String,
    pub(crate) nickname: String,
    /// Whether the owner is in the topology.
    pub(crate) is_known_peer: bool,
    pub(crate) version: u64,
}

/// One owner's share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IpamOwner {
    pub(crate) peer: String,
    /// Empty if never learned.
    pub(crate) nickname: String,
    pub(crate) addresses: u64,
    pub(crate) percent: f64,
    /// Addresses allocated, for this peer only.
    pub(crate) active: Option<u64>,
    pub(crate) reachable: bool,
    pub(crate) local: bool,
}
