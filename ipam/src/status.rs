//! What `weave status ipam` shows and what the metrics endpoint exports.

use std::fmt;

use weave_mesh::PeerName;

use crate::cidr::Cidr;

/// One owner's share of the range.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerStatus {
    pub peer: PeerName,
    /// From the topology, when the peer is reachable.
    pub nickname: Option<String>,
    pub addresses: u64,
    /// Share of the whole range, 0.0 to 100.0.
    pub percent: f64,
    /// Addresses allocated here, for the local peer only.
    pub active: Option<u64>,
    pub reachable: bool,
    pub local: bool,
}

/// The `Service: ipam` block and the owner list of `weave status ipam`.
#[derive(Debug, Clone, PartialEq)]
pub struct IpamStatus {
    /// `ready`, `awaiting consensus (quorum: q, known: k)`, `idle`, ... (Weave's wording).
    pub status: String,
    pub range: Cidr,
    pub default_subnet: Cidr,
    /// The local peer first, then the other owners by name.
    pub owners: Vec<OwnerStatus>,
    /// Ring conflicts seen and contained since start.
    pub conflicts: u64,
}

impl IpamStatus {
    /// The `status ipam` listing: `name(nick)  N IPs (xx.x% of total) (k active)`, with
    /// ` - unreachable!` for owners not in the topology.
    pub fn owner_lines(&self) -> String {
        let mut out = String::new();
        for owner in &self.owners {
            let label = match &owner.nickname {
                Some(nick) => format!("{}({nick})", owner.peer),
                None => owner.peer.to_string(),
            };
            out.push_str(&format!(
                "{label:<40} {:>8} IPs ({:.1}% of total)",
                owner.addresses, owner.percent
            ));
            if let Some(active) = owner.active {
                out.push_str(&format!(" ({active} active)"));
            }
            if !owner.reachable {
                out.push_str(" - unreachable!");
            }
            out.push('\n');
        }
        out
    }
}

impl fmt::Display for IpamStatus {
    /// The `Service: ipam` block of `weave status` (labels right-aligned to 15, as the
    /// router block and Weave's template).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>15}: ipam", "Service")?;
        writeln!(f, "{:>15}: {}", "Status", self.status)?;
        writeln!(f, "{:>15}: {}", "Range", self.range)?;
        writeln!(f, "{:>15}: {}", "DefaultSubnet", self.default_subnet)
    }
}

/// Numbers for Prometheus (Weave's names in brackets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpamMetrics {
    /// Addresses allocated on this peer (`weave_ips{state="local-used"}`).
    pub local_used: u64,
    /// Size of the range (`weave_max_ips`).
    pub total: u64,
    /// Allocations waiting for space or a ring (`weave_ipam_pending_allocates`).
    pub pending_allocations: u64,
    /// Claims waiting for an owner (`weave_ipam_pending_claims`).
    pub pending_claims: u64,
    /// Owners of ranges that are not in the topology (`weave_ipam_unreachable_count`).
    pub unreachable_owners: u64,
    /// Addresses those owners hold (for `weave_ipam_unreachable_percentage`).
    pub unreachable_addresses: u64,
    /// Ring conflicts contained since start.
    pub conflicts: u64,
}
