//! weave-ipam: IP address management for the overlay, as a pure state machine.
//!
//! Layer: an application on the mesh's gossip channel `"ipam"`. No IO, no clock, no
//! randomness of its own: time and random numbers come from the [`GossipContext`] the
//! daemon (or a simulation) passes in; messages go out through it; durable changes go out
//! as [`PersistOp`]s; results of slow operations as [`IpamEvent`]s.
//!
//! Design (after Weave's IPAM, fixing what hurt its users):
//! - [`ring`]: the range is a ring of tokens, each range owned by one peer; only the owner
//!   changes its entries; merges are per-token maxima, so deltas (not Weave's whole ring)
//!   travel, and a conflict is contained and reported instead of tearing down the
//!   connection (Weave: #2809, #3659).
//! - [`paxos`]: `consensus` mode agrees on the initial owners with single-decree Paxos
//!   over gossip, so a minority partition cannot create a second ring; `seed` creates the
//!   ring at once (rings seeded differently refuse to merge); `observer` waits.
//! - [`alloc`]: the allocator: lowest free address, claims, space requests to donors
//!   weighted by advertised free space, `rmpeer`, `leave`, and a restart without saved data
//!   that re-learns before it allocates (Weave's duplicate addresses, #678).
//! - [`persist`]: what the daemon must make durable before acting on a result.
//!
//! Calling contract for the daemon, after every call (including gossip callbacks):
//! 1. drain [`Ipam::poll_persist`] and write it durably;
//! 2. then act on the call's result, drain [`Ipam::poll_event`], send the gossip queued
//!    in the context;
//! 3. call [`Gossiper::handle_timeout`] when [`Gossiper::poll_timeout`] passes.
//!
//! A peer started with [`Ipam::new`] (no saved state) may be an old peer that lost its
//! data: it allocates nothing new (and donates nothing) until the daemon has re-claimed
//! the addresses of the containers still running ([`Ipam::claim`]) and called
//! [`Ipam::finish_reclaim`], and every live peer answered a sync request with what it
//! knows of the ranges it owns or thinks we own, including every other owner in its view
//! of the ring and peers that became live during the round (or `sync_timeout` passed: a
//! restarted daemon connects to its peers one by one, so the first answer is not
//! enough). [`Ipam::first_start`] skips this for a peer name made up at this start.
//! Entries of ours arriving from others are accepted (Weave's "repair" rule), so it
//! adopts its old ranges; whenever that makes it own more, it asks everyone again about
//! those ranges (a new round, with its own timeout), so it also learns what its old
//! incarnation gave away from them.
//!
//! What is not safe, and how it is contained:
//! - Losing data is safe only if the peers that saw the old incarnation's last ring
//!   changes are reachable when it comes back (within `sync_timeout`).
//! - `rmpeer` of a peer that is alive but cut off, or of one peer on two hosts, makes two
//!   owners. Their entries tie on version; the larger owner name wins everywhere, the
//!   merge reports [`IpamEvent::Conflict`], and the loser asks the winner for each of its
//!   allocations in the lost range ([`IpamEvent::AddressDisputed`] if the winner had
//!   allocated it too). Nothing panics and no gossip connection is dropped.
//! - Paxos acceptor state is persisted; a peer losing it in the middle of consensus is
//!   Paxos' amnesia case (it adopts what gossip still carries of its old state).

use std::net::Ipv4Addr;

use weave_mesh::PeerName;

pub mod alloc;
pub mod cidr;
pub mod paxos;
pub mod persist;
pub mod ring;
mod space;
pub mod status;
mod wire;

#[cfg(test)]
mod sim;

pub use alloc::{
    AllocResult, CHANNEL, InitMode, Ipam, IpamConfig, IpamEvent, IpamTimers, RequestId,
};
pub use cidr::Cidr;
pub use paxos::{AcceptorState, ProposalId};
pub use persist::{PersistOp, SavedAllocation, SavedRing, SavedState};
pub use ring::RingEntry;
pub use status::{IpamMetrics, IpamStatus, OwnerStatus};
pub use weave_mesh::{GossipContext, Gossiper};

/// Everything that can go wrong in IPAM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid CIDR {0}")]
    InvalidCidr(String),
    #[error("invalid IPAM configuration: {0}")]
    InvalidConfig(String),
    #[error("subnet {subnet} is outside the allocation range {range}")]
    SubnetOutsideRange { subnet: Cidr, range: Cidr },
    #[error("subnet {0} is too small to allocate from (at least 4 addresses)")]
    SubnetTooSmall(Cidr),
    #[error("address {addr} is not in subnet {subnet}")]
    NotInSubnet { addr: Ipv4Addr, subnet: Cidr },
    #[error("address {addr} is the network or broadcast address of {subnet}")]
    ReservedAddress { addr: Ipv4Addr, subnet: Cidr },
    #[error("address {addr} is already owned by {ident}")]
    AddressInUse { addr: Ipv4Addr, ident: String },
    #[error("address {addr} is owned by other peer {owner}")]
    OwnedByOther { addr: Ipv4Addr, owner: PeerName },
    #[error("no free addresses in subnet {0}")]
    NoFreeSpace(Cidr),
    #[error("the IP allocation ring does not exist yet")]
    NoRing,
    #[error("peer {0} is still in the topology; rmpeer only removes dead peers")]
    PeerIsLive(PeerName),
    #[error("cannot rmpeer ourselves")]
    IsSelf,
    #[error("this peer has left the ring")]
    Left,
    #[error("incompatible IP allocation ranges: ours {ours}, theirs {theirs}")]
    RangeMismatch { ours: Cidr, theirs: Cidr },
    #[error("IP allocation was seeded by different peers (ours: {ours:?}, theirs: {theirs:?})")]
    SeedsMismatch {
        ours: Vec<PeerName>,
        theirs: Vec<PeerName>,
    },
    #[error("saved state belongs to peer {saved}, not to {local}")]
    StateOfOtherPeer { saved: PeerName, local: PeerName },
    #[error("malformed IPAM message: {0}")]
    Malformed(String),
}
