//! The daemon's state as data: what `weave report` prints as JSON and what the text
//! views of `weave status` and the Prometheus metrics are rendered from.
//!
//! Field names follow Weave Net's report where one exists, so users' scripts that
//! read `weave report` keep finding what they look for.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// Our software version.
    pub version: String,
    pub router: RouterReport,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    /// Always "weave".
    pub protocol: String,
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub encryption: bool,
    pub peer_discovery: bool,
    /// Our peer name, `aa:bb:cc:dd:ee:ff`.
    pub name: String,
    pub nick_name: String,
    pub uid: u64,
    /// TCP (and later UDP) port.
    pub port: u16,
    pub conn_limit: usize,
    /// The peers the user asked for (`weave launch PEER`, `weave connect`).
    pub targets: Vec<String>,
    pub connections: Vec<ConnectionReport>,
    pub peers: Vec<PeerReport>,
    /// Name collisions seen (another live peer with our name), as sentences.
    pub name_collisions: Vec<String>,
    pub stats: RouterStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionReport {
    /// `host:port` as dialled, or the remote address of an inbound connection.
    pub address: String,
    pub outbound: bool,
    /// "connecting", "pending", "established", "failed".
    pub state: String,
    /// Why it failed, for failed targets.
    pub info: String,
    /// Seconds until the next attempt, for failed targets that will be retried.
    pub retry_in_secs: Option<u64>,
    pub encrypted: bool,
    /// The remote peer's name and nickname, once the handshake told us.
    pub peer_name: Option<String>,
    pub peer_nick_name: Option<String>,
    /// Extra attributes shown as `key=value` (e.g. `mtu=1410` once the data plane runs).
    pub attrs: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerReport {
    pub name: String,
    pub nick_name: String,
    pub uid: u64,
    pub version: u64,
    pub connections: Vec<PeerConnectionReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerConnectionReport {
    pub name: String,
    pub nick_name: String,
    pub address: String,
    pub outbound: bool,
    pub established: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterStats {
    pub control_bytes_sent: u64,
    pub control_bytes_received: u64,
    pub gossip_rejected: u64,
    pub connection_terminations: u64,
}
