//! The `DNS` section of `weave report` (Weave's field names: `Domain`, `Upstream`,
//! `Address`, `TTL`, `Entries` with `Hostname`, `Origin`, `ContainerID`, `Address`),
//! which `weave status dns`, the `Service: dns` block and the metrics are rendered from.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DnsReport {
    /// `weave.local.`
    pub(crate) domain: String,
    /// The upstream servers read from the host's resolv.conf, `ip:port`.
    pub(crate) upstream: Vec<String>,
    /// Where containers find us (`127.0.0.12:53` in their own namespace), and the
    /// host address given with `--dns-listen-address`, if any.
    pub(crate) address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) host_address: Option<String>,
    #[serde(rename = "TTL")]
    pub(crate) ttl: u32,
    /// Live records added on this peer (`weave_dns_entries`).
    pub(crate) local_entries: usize,
    /// Containers whose namespace we serve DNS in.
    pub(crate) served_containers: usize,
    /// Query counters.
    pub(crate) queries: DnsQueryStats,
    /// Every live record known here, sorted by name.
    pub(crate) entries: Vec<DnsEntryReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DnsQueryStats {
    pub(crate) local: u64,
    pub(crate) cache_hits: u64,
    pub(crate) forwarded: u64,
    pub(crate) errors: u64,
    pub(crate) dropped: u64,
    pub(crate) servfail: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DnsEntryReport {
    /// Fully qualified, with the trailing dot.
    pub(crate) hostname: String,
    /// The peer that added it.
    pub(crate) origin: String,
    #[serde(rename = "ContainerID")]
    pub(crate) container_id: String,
    pub(crate) address: String,
}
