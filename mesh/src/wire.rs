//! The messages peers exchange on an established control session, and their codec.
//!
//! Messages are serde types encoded with postcard (a stable, specified format) inside the
//! session's length-prefixed, optionally encrypted frames. This module is the only place
//! that knows the encoding; decoding is total: bad bytes give an error, never a panic.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::peer::PeerName;
use crate::topology::{Incarnation, TopologyDelta, TopologyDigest};

/// What each side announces once the session is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    pub name: PeerName,
    pub nickname: String,
    pub incarnation: Incarnation,
    /// Random per connection; XORed with the other side's, it names the connection the
    /// same way at both ends (the tie-breaker between duplicate connections).
    pub conn_id: u64,
    /// The TCP port the sender accepts connections on, so peers that learn of it through
    /// an inbound connection can dial it.
    pub listen_port: u16,
    /// The sender's software version, for status output.
    pub software: String,
}

/// A gossip message on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipBody {
    /// Started by `origin`, travelling down its broadcast tree.
    Broadcast { origin: PeerName, payload: Vec<u8> },
    /// For `dst` alone, relayed hop by hop.
    Unicast {
        src: PeerName,
        dst: PeerName,
        payload: Vec<u8>,
    },
    /// Neighbour gossip: merged with `merge_delta`, what is new is passed on.
    Delta { payload: Vec<u8> },
    /// Anti-entropy: the sender's digest; the receiver answers with [`GossipBody::Repair`]
    /// and, if `reply`, its own digest.
    Digest { payload: Vec<u8>, reply: bool },
    /// Anti-entropy: what the receiver lacked.
    Repair { payload: Vec<u8> },
}

/// Topology records the sender just learned, announced by digest so that neighbours
/// pull only what they lack (a healed partition spreads without every peer receiving
/// the other side's state many times over).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub records: Vec<(PeerName, Incarnation, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    Features(Features),
    /// Keeps an idle connection alive and proves the peer is.
    Heartbeat,
    /// The sender is closing the connection, and why.
    Close {
        reason: String,
    },
    /// Changes to the topology, travelling down `origin`'s broadcast tree.
    TopologyBroadcast {
        origin: PeerName,
        delta: TopologyDelta,
    },
    TopologyDigest {
        digest: TopologyDigest,
        reply: bool,
    },
    /// Periodic anti-entropy starts with a hash of the digest; only a receiver whose own
    /// hash differs answers, with its full digest.
    TopologyDigestHash {
        hash: u64,
    },
    TopologyRepair {
        delta: TopologyDelta,
    },
    TopologyAnnounce(Announce),
    /// Asks for the records listed, each above the watermark given.
    TopologyPull {
        records: Vec<(PeerName, Incarnation, u64)>,
    },
    Gossip {
        channel: String,
        body: GossipBody,
    },
    /// The sender saw another live peer with the receiver's name.
    NameCollision {
        text: String,
    },
    /// For the layer above (the router's path control), opaque to the mesh.
    Direct {
        tag: u16,
        payload: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct DecodeError(String);

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(bytes).map_err(|err| DecodeError(err.to_string()))
    }
}

/// Encodes any serde value the way the mesh does (for gossip payloads).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding into a Vec cannot fail")
}

/// Decodes a value encoded by [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    postcard::from_bytes(bytes).map_err(|err| DecodeError(err.to_string()))
}

/// Where a remote peer can be dialled, as recorded in the topology.
pub fn dialable(remote: SocketAddr, outbound: bool, listen_port: u16) -> SocketAddr {
    if outbound {
        remote
    } else {
        SocketAddr::new(remote.ip(), listen_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let message = Message::Gossip {
            channel: "dns".into(),
            body: GossipBody::Unicast {
                src: PeerName::from_u64(1),
                dst: PeerName::from_u64(2),
                payload: vec![1, 2, 3],
            },
        };
        assert_eq!(Message::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Message::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Message::decode(&[]).is_err());
    }
}
