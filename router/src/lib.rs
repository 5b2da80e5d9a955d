//! weave-router: the data plane's pure core — the sleeve datagram codec and its AEAD,
//! and the L2 forwarding decisions (MAC learning, unicast, relay, flood).
//!
//! No IO, no clock, no threads: the daemon reads frames from the TAP and datagrams from
//! UDP 6783, passes them in with `now`, and carries out what comes back. Layers:
//! - [`sleeve`]: the wire format of UDP datagrams between peers (several tagged
//!   Ethernet frames per datagram, or a heartbeat / PMTU control message), sealed with
//!   ChaCha20-Poly1305 under per-direction keys, with a replay window. Encoding and
//!   decoding work in caller buffers without allocating. The AEAD is `ring`'s, not
//!   RustCrypto's `chacha20poly1305` (the mesh's control session uses that one): same
//!   RFC 8439 bytes, 3.5-4× faster on sleeve datagrams here (see `sleeve::crypto`).
//! - [`forward`]: the switch. [`Forwarder`] learns MACs from frames, takes routes as a
//!   [`RouteSnapshot`] built from the mesh, and decides for each frame which peers get
//!   a copy with which tag and whether to inject it into the TAP. It counts what it
//!   decided, per peer.
//! - [`fastpath`]: which peers the kernel's VXLAN device may carry frames to instead
//!   of the sleeve, decided by probes through that very path.
//!
//! A typical receive path in the daemon:
//! ```
//! # use std::time::Instant;
//! # use weave_mesh::PeerName;
//! # use weave_router::{sleeve, Decision, Forwarder, ForwarderConfig};
//! # fn handle(fwd: &mut Forwarder, datagram: &mut [u8], now: Instant) -> Result<(), weave_router::Error> {
//! let sender = sleeve::Header::parse(datagram)?.sender;
//! // ...pick the connection of `sender` and its RecvCrypto, if it has keys...
//! let opened = sleeve::open(datagram, None)?;
//! let mut decision = Decision::new();
//! if let sleeve::Body::Frames(frames) = opened.body {
//!     for frame in frames {
//!         fwd.handle_sleeve_frame(sender, frame.tag, frame.payload, now, &mut decision);
//!         // inject if decision.inject; push frame.payload to each decision.outputs
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod fastpath;
pub mod forward;
pub mod icmp;
pub mod offload;
pub mod path;
pub mod sleeve;

pub use forward::{
    Decision, DropCounts, DropReason, Event, Forwarder, ForwarderConfig, Mac, Output, Owner,
    PeerCounters, RouteSnapshot, Stats, TapCounters,
};
pub use path::{PathConfig, PathEvent, PathReport, PathState, Transmit};
pub use sleeve::{FrameTag, Full, Protection, RecvCrypto, SendCrypto, SleeveEncoder, SleeveKeys};

use weave_mesh::PeerName;

/// Everything that can go wrong in this crate. Decoding errors are per-datagram
/// rejections: count them by [`Error::as_str`] and carry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("datagram shorter than its header and tag")]
    Truncated,
    #[error("unsupported sleeve version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown sleeve datagram kind {0}")]
    UnknownKind(u8),
    #[error("clear datagram on a connection that has keys")]
    ClearWhenKeyed,
    #[error("sealed datagram on a connection without keys")]
    SealedWhenUnkeyed,
    #[error("datagram failed authentication")]
    Authentication,
    #[error("replayed datagram")]
    Replayed,
    #[error("datagram counter behind the replay window")]
    TooOld,
    #[error("datagram counter at the limit; the connection must get new keys")]
    CounterExhausted,
    #[error("malformed datagram body")]
    Malformed,
    #[error("buffer too small for the datagram")]
    BufferTooSmall,
    #[error("sealing state given to a clear encoder, or missing for a sealed one")]
    ProtectionMismatch,
    #[error("PMTU probe size {0} out of range")]
    InvalidProbeSize(usize),
    #[error("route snapshot is for {got}, this forwarder is {local}")]
    WrongLocalPeer { local: PeerName, got: PeerName },
}

impl Error {
    /// A short snake_case label, for rejection counters.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::ClearWhenKeyed => "clear_when_keyed",
            Self::SealedWhenUnkeyed => "sealed_when_unkeyed",
            Self::Authentication => "authentication",
            Self::Replayed => "replayed",
            Self::TooOld => "too_old",
            Self::CounterExhausted => "counter_exhausted",
            Self::Malformed => "malformed",
            Self::BufferTooSmall => "buffer_too_small",
            Self::ProtectionMismatch => "protection_mismatch",
            Self::InvalidProbeSize(_) => "invalid_probe_size",
            Self::WrongLocalPeer { .. } => "wrong_local_peer",
        }
    }
}
