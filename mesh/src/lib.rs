//! weave-mesh: the peer-to-peer layer of the overlay, as a pure state machine.
//!
//! This crate knows peers, the connections between them, the replicated topology and the
//! routes it implies, and carries gossip for applications (IPAM, DNS) on named channels.
//! It does no IO and reads no clock or RNG of its own: the caller feeds it bytes read from
//! sockets, the current time and a seed, and drains what it wants written, dialled or
//! closed (`poll_*`). That split (after quinn-proto and firezone's connlib) lets one test
//! run a thousand peers on a virtual clock and replay any failure from its seed.
//!
//! Layers, bottom up:
//! - [`peer`]: peer names and identities.
//! - [`wire`]: framing and the message codec (serde + postcard), size-capped and total.
//! - [`session`]: the hello, version negotiation and the Noise handshake, then AEAD framing.
//! - [`topology`]: the topology CRDT (per peer, its connections), merged by deltas.
//! - [`routes`]: unicast next hops and per-source broadcast trees, computed identically
//!   on every peer.
//! - [`gossip`]: the channel interface applications implement.
//! - [`maker`]: targets, discovery, reconnection with backoff.
//! - [`node`]: the [`Mesh`] that ties them together.

pub mod gossip;
pub mod maker;
pub mod node;
pub mod peer;
pub mod routes;
pub mod session;
pub mod topology;
pub mod wire;

pub use gossip::{GossipContext, GossipError, GossipSend, Gossiper, PeerSummary};
pub use node::{Action, ConnId, ConnState, ConnectionStatus, Event, Mesh, MeshConfig, MeshStats};
pub use peer::{PeerName, PeerNameParseError, PeerUid};
pub use routes::RouteKind;
pub use session::{SessionConfig, SleeveKeys};
