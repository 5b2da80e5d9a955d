//! weave-dns: the pure core of weaveDNS, the embedded name server of the overlay.
//!
//! Layer: application on top of weave-mesh gossip; no IO, no clock, no OS randomness.
//! The daemon owns the sockets (UDP/TCP listeners, upstream queries, resolv.conf) and
//! feeds bytes, the time and a seed in; everything here is a function of those.
//!
//! - [`records`]: the name records CRDT ([`NameStore`]), a [`weave_mesh::Gossiper`] on
//!   channel `dns`: container names and addresses of every peer, merged by deltas.
//! - [`server`]: answering DNS queries ([`Server::answer`]): our domain from the records,
//!   reverse lookups of our addresses, everything else planned for forwarding to the
//!   host's upstream servers, with a small response cache.
//! - [`resolv`]: reading upstream servers from the host's resolv.conf.
//! - [`name`]: domain names in lowercase wire form, the store's and the answerer's key.
//!
//! Query parsing and response writing on the answering path are hand-written and total
//! (`message`): a local answer costs one parse of the question, one lookup and one
//! allocation for the reply. hickory-proto provides the typed-message entry point
//! ([`Server::answer_message`]) and is the oracle the tests and fuzz targets check our
//! bytes against.

mod cache;
mod message;
pub mod name;
pub mod records;
pub mod resolv;
pub mod server;
mod wire;

pub use name::WireName;
pub use records::{CHANNEL, Entry, NameStore, TOMBSTONE_LIFETIME};
pub use resolv::parse_resolv_conf;
pub use server::{
    Answer, ForwardOutcome, ForwardPlan, MessageAnswer, Server, ServerConfig, ServerStats,
    Transport,
};

/// Errors of the local API (the network side never errors out: bad queries get DNS error
/// responses, bad gossip a [`weave_mesh::GossipError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS name {0:?}: labels of 1-63 letters, digits, '-' or '_', 255 bytes in all")]
    InvalidName(String),
    #[error("owner id too long: {0} bytes")]
    InvalidOwner(usize),
}
