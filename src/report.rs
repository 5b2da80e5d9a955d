//! The daemon's state as data: what `weave report` prints as JSON and what the text
//! views of `weave status` and the Prometheus metrics are rendered from.
//!
//! Field names follow Weave Net's report where one exists, so users' scripts that
//! read `weave report` keep finding what they look for.

use serde::{Deserialize, Serialize};

pub(crate) mod dns;
pub(crate) mod ipam;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Report {
    /// Our software version.
    pub(crate) version: String,
    pub(crate) router: RouterReport,
    /// Address allocation; absent when IPAM is off (`--ipalloc-range ''`).
    #[serde(rename = "IPAM", default, skip_serializing_if = "Option::is_none")]
    pub(crate) ipam: Option<ipam::IpamReport>,
    /// The name server; absent when it is off (`--no-dns`).
    #[serde(rename = "DNS", default, skip_serializing_if = "Option::is_none")]
    pub(crate) dns: Option<dns::DnsReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RouterReport {
    /// Always "weave".
    pub(crate) protocol: String,
    pub(crate) protocol_min_version: u8,
    pub(crate) protocol_max_version: u8,
    pub(crate) encryption: bool,
    pub(crate) peer_discovery: bool,
    /// Our peer name, `aa:bb:cc:dd:ee:ff`.
    pub(crate) name: String,
    pub(crate) nick_name: String,
    pub(crate) uid: u64,
    /// TCP (and later UDP) port.
    pub(crate) port: u16,
    pub(crate) conn_limit: usize,
    /// The peers the user asked for (`weave launch PEER`, `weave connect`).
    pub(crate) targets: Vec<String>,
    pub(crate) connections: Vec<ConnectionReport>,
    pub(crate) peers: Vec<PeerReport>,
    /// Name collisions seen (another live peer with our name), as sentences.
    pub(crate) name_collisions: Vec<String>,
    pub(crate) stats: RouterStats,
    /// The MTU containers' interfaces get (`ethwe`): fits the underlay after the
    /// sleeve's overheads, or `--mtu`.
    #[serde(default)]
    pub(crate) overlay_mtu: u16,
    /// Frames, datagrams and drops of the data plane.
    #[serde(default)]
    pub(crate) data_plane: DataPlaneReport,
}

/// The data plane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DataPlaneReport {
    pub(crate) overlay_mtu: u16,
    /// The MTU of the interface the sleeve's datagrams leave by.
    pub(crate) underlay_mtu: u32,
    pub(crate) encrypted: bool,
    /// Frames read from the router's TAP port.
    pub(crate) captured_frames: u64,
    pub(crate) captured_bytes: u64,
    /// MACs in the forwarding table.
    pub(crate) macs: usize,
    pub(crate) datagrams_sent: u64,
    pub(crate) datagrams_received: u64,
    pub(crate) datagram_bytes_received: u64,
    /// IPv4 frames too big for their path, sent in fragments.
    pub(crate) fragmented_frames: u64,
    /// Frames (or copies) dropped, by reason.
    pub(crate) dropped_frames: std::collections::BTreeMap<String, u64>,
    /// Datagrams received and not used (failed authentication, replayed, unknown
    /// sender...), by reason.
    pub(crate) rejected_datagrams: std::collections::BTreeMap<String, u64>,
    pub(crate) peers: Vec<PeerTraffic>,
}

/// Frames and bytes per peer: as next hop (forwarded from our TAP, relayed), as sender
/// of the datagrams they came in (received), as origin of frames we injected.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PeerTraffic {
    pub(crate) name: String,
    pub(crate) nick_name: String,
    pub(crate) forwarded_frames: u64,
    pub(crate) forwarded_bytes: u64,
    pub(crate) relayed_frames: u64,
    pub(crate) relayed_bytes: u64,
    pub(crate) received_frames: u64,
    pub(crate) received_bytes: u64,
    pub(crate) injected_frames: u64,
    pub(crate) injected_bytes: u64,
    /// Frames from this peer we dropped (wholly or a copy), in all and by reason
    /// (reasons with none left out).
    pub(crate) dropped_frames: u64,
    pub(crate) dropped_reasons: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ConnectionReport {
    /// `host:port` as dialled, or the remote address of an inbound connection.
    pub(crate) address: String,
    pub(crate) outbound: bool,
    /// "connecting", "pending", "established", "failed".
    pub(crate) state: String,
    /// Why it failed, for failed targets.
    pub(crate) info: String,
    /// Seconds until the next attempt, for failed targets that will be retried.
    pub(crate) retry_in_secs: Option<u64>,
    pub(crate) encrypted: bool,
    /// The remote peer's name and nickname, once the handshake told us.
    pub(crate) peer_name: Option<String>,
    pub(crate) peer_nick_name: Option<String>,
    /// Extra attributes shown as `key=value` (e.g. `mtu=1410` once the data plane runs).
    pub(crate) attrs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PeerReport {
    pub(crate) name: String,
    pub(crate) nick_name: String,
    pub(crate) uid: u64,
    pub(crate) version: u64,
    pub(crate) connections: Vec<PeerConnectionReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PeerConnectionReport {
    pub(crate) name: String,
    pub(crate) nick_name: String,
    pub(crate) address: String,
    pub(crate) outbound: bool,
    pub(crate) established: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RouterStats {
    pub(crate) control_bytes_sent: u64,
    pub(crate) control_bytes_received: u64,
    pub(crate) gossip_rejected: u64,
    pub(crate) connection_terminations: u64,
}
