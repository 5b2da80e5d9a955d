//! What must survive a restart, as data: the allocator emits [`PersistOp`]s, the daemon
//! writes them durably, and [`SavedState`] (the fold of those ops) restores the allocator.
//!
//! Contract: after every call into the allocator, the daemon drains
//! [`crate::Ipam::poll_persist`] and makes the ops durable *before* it acts on any output
//! of that call: the returned address, events from `poll_event`, and the gossip the call
//! queued. A donor that crashed after sending a ring change but before saving it would
//! otherwise come back owning a range it gave away.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use weave_mesh::PeerName;

use crate::IpamError;
use crate::cidr::Cidr;
use crate::paxos::AcceptorState;
use crate::ring::RingEntry;

/// One durable change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistOp {
    /// A ring now exists (created or adopted): its range and seeds. Entries follow.
    Ring { range: Cidr, seeds: Vec<PeerName> },
    /// Ring entries as they now are (upsert by token).
    Entries(Vec<(Ipv4Addr, RingEntry)>),
    /// An address is ours for `ident` (allocated or claimed).
    Allocated {
        addr: Ipv4Addr,
        ident: String,
        subnet: Option<Cidr>,
    },
    /// An address was released.
    Freed { addr: Ipv4Addr },
    /// Our Paxos acceptor state.
    Paxos(AcceptorState),
}

/// A saved ring: its identity and every entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRing {
    pub range: Cidr,
    pub seeds: Vec<PeerName>,
    pub entries: BTreeMap<Ipv4Addr, RingEntry>,
}

/// One saved allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAllocation {
    pub ident: String,
    pub subnet: Option<Cidr>,
}

/// Everything the allocator needs to come back as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The peer this state belongs to; restoring it under another name is refused.
    pub local: PeerName,
    pub ring: Option<SavedRing>,
    pub allocations: BTreeMap<Ipv4Addr, SavedAllocation>,
    pub paxos: Option<AcceptorState>,
}

impl SavedState {
    pub fn new(local: PeerName) -> Self {
        Self {
            local,
            ring: None,
            allocations: BTreeMap::new(),
            paxos: None,
        }
    }

    /// Folds one op into the state.
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::Ring { range, seeds } => {
                self.ring = Some(SavedRing {
                    range: *range,
                    seeds: seeds.clone(),
                    entries: BTreeMap::new(),
                });
            }
            PersistOp::Entries(entries) => {
                if let Some(ring) = &mut self.ring {
                    for (token, entry) in entries {
                        ring.entries.insert(*token, *entry);
                    }
                }
            }
            PersistOp::Allocated {
                addr,
                ident,
                subnet,
            } => {
                self.allocations.insert(
                    *addr,
                    SavedAllocation {
                        ident: ident.clone(),
                        subnet: *subnet,
                    },
                );
            }
            PersistOp::Freed { addr } => {
                self.allocations.remove(addr);
            }
            PersistOp::Paxos(state) => self.paxos = Some(state.clone()),
        }
    }

    /// The state as bytes (postcard), for a daemon that stores it as one blob.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("saved IPAM state always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, IpamError> {
        postcard::from_bytes(bytes).map_err(|e| IpamError::Malformed(e.to_string()))
    }
}
