//! The sleeve datagram (UDP 6783): several Ethernet frames, each tagged with its source
//! and destination peer, or one control message (heartbeat, PMTU probe or ack), sealed
//! with ChaCha20-Poly1305 when the connection has keys. The byte layout, nonce rules
//! and overheads are specified in `docs/protocol-sleeve.md`.
//!
//! Hot-path shape: [`SleeveEncoder`] writes frames straight into a caller-provided
//! buffer and seals them in place; [`open`] authenticates and decrypts in place and
//! yields frames as slices of that same buffer. Nothing allocates; the only copy is a
//! frame into the datagram buffer on the way out.
//!
//! Decoding is total: every malformed, truncated, forged or replayed datagram comes
//! back as an [`Error`] naming the reason, and nothing from it is delivered.

mod crypto;

pub use crypto::{
    COUNTER_LIMIT, REPLAY_WINDOW, RecvCrypto, ReplayWindow, SendCrypto, TAG_LEN, split,
};
pub use weave_mesh::SleeveKeys;

use weave_mesh::PeerName;

use crate::Error;

/// The sleeve's UDP port, as Weave's.
pub const PORT: u16 = 6783;
/// The wire version in the high nibble of the first byte.
pub const VERSION: u8 = 1;
/// Header of a clear datagram: first byte and sender name.
pub const CLEAR_HEADER_LEN: usize = 7;
/// Header of a sealed datagram: first byte, sender name and 64-bit counter.
pub const SEALED_HEADER_LEN: usize = 15;
/// Per-frame tag: source peer, destination peer, hops left, length.
pub const FRAME_HEADER_LEN: usize = 15;
/// The largest frame a tag can describe.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;
/// The largest UDP payload over IPv4 (65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65_507;
/// IPv4 and UDP headers in front of every datagram.
pub const IPV4_UDP_OVERHEAD: usize = 28;
/// An Ethernet header (no VLAN tag), which the container MTU does not include.
pub const ETHERNET_HEADER_LEN: usize = 14;

const SEALED_BIT: u8 = 0x08;
const KIND_MASK: u8 = 0x07;
const PEER_LEN: usize = 6;
const HEARTBEAT_BODY_LEN: usize = 8;
const PMTU_BODY_LEN: usize = 2;

/// Whether a connection's datagrams are sealed. Fixed per connection: once it has
/// keys, clear datagrams from the peer are refused, so nobody can downgrade it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protection {
    Clear,
    Sealed,
}

impl Protection {
    pub const fn header_len(self) -> usize {
        match self {
            Self::Clear => CLEAR_HEADER_LEN,
            Self::Sealed => SEALED_HEADER_LEN,
        }
    }

    pub const fn tag_len(self) -> usize {
        match self {
            Self::Clear => 0,
            Self::Sealed => TAG_LEN,
        }
    }

    /// Bytes per datagram beyond its frames: header and, when sealed, the tag.
    pub const fn overhead(self) -> usize {
        self.header_len() + self.tag_len()
    }

    /// The MTU to give containers so that a datagram carrying one full frame fits a
    /// path of `path_mtu` bytes (IPv4) unfragmented.
    pub const fn container_mtu(self, path_mtu: usize) -> usize {
        path_mtu.saturating_sub(
            IPV4_UDP_OVERHEAD + self.overhead() + FRAME_HEADER_LEN + ETHERNET_HEADER_LEN,
        )
    }
}

/// What a datagram carries (low three bits of the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Frames = 0,
    Heartbeat = 1,
    PmtuProbe = 2,
    PmtuAck = 3,
    /// Frames each preceded by offload metadata ([`crate::offload::VnetHdr`], big-endian).
    OffloadFrames = 4,
}

impl Kind {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Frames),
            1 => Some(Self::Heartbeat),
            2 => Some(Self::PmtuProbe),
            3 => Some(Self::PmtuAck),
            4 => Some(Self::OffloadFrames),
            _ => None,
        }
    }
}

/// A control datagram for the UDP path itself. Sealed like frames when the connection
/// has keys, so a heartbeat proves the path and the peer at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// Establishes and keeps the UDP path (and the NAT mapping) alive; carries the
    /// connection id agreed on the control connection.
    Heartbeat { connection: u64 },
    /// A datagram exactly `size` bytes long (UDP payload, header and tag included),
    /// zero-padded: if it arrives, a datagram of that size passes the path.
    PmtuProbe { size: u16 },
    /// The answer to a probe that arrived: its size.
    PmtuAck { size: u16 },
}

impl Control {
    pub const fn kind(self) -> Kind {
        match self {
            Self::Heartbeat { .. } => Kind::Heartbeat,
            Self::PmtuProbe { .. } => Kind::PmtuProbe,
            Self::PmtuAck { .. } => Kind::PmtuAck,
        }
    }

    /// The smallest probe that can be built under `protection`.
    pub const fn min_probe_size(protection: Protection) -> usize {
        protection.overhead() + PMTU_BODY_LEN
    }
}

/// The clear header of a datagram, readable before any key is chosen: the caller
/// picks the connection (and its [`RecvCrypto`]) by `sender`, then calls [`open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    pub kind: Kind,
    pub protection: Protection,
    pub sender: PeerName,
    /// The nonce counter, for sealed datagrams.
    pub counter: Option<u64>,
}

impl Header {
    /// Parses the header and checks the datagram is long enough for it (and the tag).
    pub fn parse(datagram: &[u8]) -> Result<Self, Error> {
        let &first = datagram.first().ok_or(Error::Truncated)?;
        let version = first >> 4;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind =
            Kind::from_bits(first & KIND_MASK).ok_or(Error::UnknownKind(first & KIND_MASK))?;
        let protection = if first & SEALED_BIT != 0 {
            Protection::Sealed
        } else {
            Protection::Clear
        };
        if datagram.len() < protection.overhead() {
            return Err(Error::Truncated);
        }
        let sender = PeerName::from_bytes(array(datagram, 1));
        let counter = match protection {
            Protection::Clear => None,
            Protection::Sealed => Some(u64::from_be_bytes(array(datagram, CLEAR_HEADER_LEN))),
        };
        Ok(Self {
            kind,
            protection,
            sender,
            counter,
        })
    }

    fn first_byte(kind: Kind, protection: Protection) -> u8 {
        let sealed = match protection {
            Protection::Clear => 0,
            Protection::Sealed => SEALED_BIT,
        };
        (VERSION << 4) | sealed | kind as u8
    }
}

/// Copies `N` bytes at `at`; callers have checked the length.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The tag in front of each frame: who captured it, who it is for now, and how many
/// more hops it may take.
///
/// `dst` is the peer that should handle the frame next as its destination: the owner
/// of the destination MAC for a unicast, or, for a flood, each next hop of the tree
/// in turn (which re-tags its copies). `hops` bounds the damage of a routing loop
/// while peers disagree on the topology; every relay decrements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameTag {
    pub src: PeerName,
    pub dst: PeerName,
    pub hops: u8,
}

/// Returned by [`SleeveEncoder::push`] when the frame does not fit in what is left
/// of the datagram. If the encoder is empty, the frame can never fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Full;

/// Packs tagged frames into a caller-provided buffer, then seals the datagram in place.
///
/// After [`Self::finish`], the next [`Self::push`] starts a new datagram in the same
/// buffer (the finished bytes must have been sent by then).
#[derive(Debug)]
pub struct SleeveEncoder<'b> {
    buf: &'b mut [u8],
    /// Usable bytes: the buffer, capped by the datagram size asked for.
    cap: usize,
    sender: PeerName,
    protection: Protection,
    /// [`Kind::Frames`] or [`Kind::OffloadFrames`].
    kind: Kind,
    /// End of the frames written so far (the header is reserved in front).
    len: usize,
    frames: usize,
    /// The finished datagram's length, once sealed.
    finished: Option<usize>,
}

impl<'b> SleeveEncoder<'b> {
    /// An encoder of datagrams of at most `max_datagram` bytes (UDP payload) sent by
    /// `sender`. Fails if that leaves no room for the header and tag.
    pub fn new(
        buf: &'b mut [u8],
        sender: PeerName,
        max_datagram: usize,
        protection: Protection,
    ) -> Result<Self, Error> {
        let cap = buf.len().min(max_datagram).min(MAX_DATAGRAM);
        if cap < protection.overhead() + FRAME_HEADER_LEN {
            return Err(Error::BufferTooSmall);
        }
        Ok(Self {
            buf,
            cap,
            sender,
            protection,
            kind: Kind::Frames,
            len: protection.header_len(),
            frames: 0,
            finished: None,
        })
    }

    /// Makes the datagrams [`Kind::OffloadFrames`]: each frame pushed must start with its
    /// offload metadata ([`crate::offload::VNET_HDR_LEN`] bytes, big-endian).
    pub fn offload(mut self) -> Self {
        self.kind = Kind::OffloadFrames;
        self
    }

    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Frames in the datagram being built.
    pub fn frame_count(&self) -> usize {
        if self.finished.is_some() {
            0
        } else {
            self.frames
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frame_count() == 0
    }

    /// The size the datagram would have if finished now.
    pub fn datagram_len(&self) -> usize {
        let len = if self.finished.is_some() {
            self.protection.header_len()
        } else {
            self.len
        };
        len + self.protection.tag_len()
    }

    /// The largest frame an empty datagram can take.
    pub fn max_frame_len(&self) -> usize {
        (self.cap - self.protection.overhead() - FRAME_HEADER_LEN).min(MAX_FRAME_LEN)
    }

    /// Whether a frame of `frame_len` bytes fits in what is left.
    pub fn fits(&self, frame_len: usize) -> bool {
        frame_len <= MAX_FRAME_LEN && self.datagram_len() + FRAME_HEADER_LEN + frame_len <= self.cap
    }

    /// Starts a new, empty datagram.
    pub fn reset(&mut self) {
        self.len = self.protection.header_len();
        self.frames = 0;
        self.finished = None;
    }

    /// Appends one tagged frame (the one copy the frame takes on its way out).
    pub fn push(&mut self, tag: FrameTag, frame: &[u8]) -> Result<(), Full> {
        if self.finished.is_some() {
            self.reset();
        }
        if !self.fits(frame.len()) {
            return Err(Full);
        }
        let at = self.len;
        let head = &mut self.buf[at..at + FRAME_HEADER_LEN];
        head[..PEER_LEN].copy_from_slice(&tag.src.to_bytes());
        head[PEER_LEN..2 * PEER_LEN].copy_from_slice(&tag.dst.to_bytes());
        head[12] = tag.hops;
        // `fits` bounded the length by MAX_FRAME_LEN.
        head[13..15].copy_from_slice(&(frame.len() as u16).to_be_bytes());
        let start = at + FRAME_HEADER_LEN;
        self.buf[start..start + frame.len()].copy_from_slice(frame);
        self.len = start + frame.len();
        self.frames += 1;
        Ok(())
    }

    /// Writes the header and, with `crypto`, seals the datagram in place; returns the
    /// bytes to send. `crypto` must be given exactly when the encoder is
    /// [`Protection::Sealed`]. Calling it again returns the same bytes without sealing
    /// twice.
    pub fn finish(&mut self, crypto: Option<&mut SendCrypto>) -> Result<&[u8], Error> {
        if let Some(n) = self.finished {
            return Ok(&self.buf[..n]);
        }
        let n = seal_into(
            self.buf,
            self.sender,
            self.kind,
            self.protection,
            self.len,
            crypto,
        )?;
        self.finished = Some(n);
        Ok(&self.buf[..n])
    }
}

/// Writes the header of a datagram whose body already sits at
/// `buf[header_len..body_end]`, seals it if asked, and returns its length.
fn seal_into(
    buf: &mut [u8],
    sender: PeerName,
    kind: Kind,
    protection: Protection,
    body_end: usize,
    crypto: Option<&mut SendCrypto>,
) -> Result<usize, Error> {
    let crypto = match (protection, crypto) {
        (Protection::Clear, None) => None,
        (Protection::Sealed, Some(crypto)) => Some(crypto),
        _ => return Err(Error::ProtectionMismatch),
    };
    buf[0] = Header::first_byte(kind, protection);
    buf[1..CLEAR_HEADER_LEN].copy_from_slice(&sender.to_bytes());
    let Some(crypto) = crypto else {
        return Ok(body_end);
    };
    let counter = crypto.reserve()?;
    buf[CLEAR_HEADER_LEN..SEALED_HEADER_LEN].copy_from_slice(&counter.to_be_bytes());
    let (head, rest) = buf.split_at_mut(SEALED_HEADER_LEN);
    let body_len = body_end - SEALED_HEADER_LEN;
    let tag = crypto.seal(counter, head, &mut rest[..body_len]);
    rest[body_len..body_len + TAG_LEN].copy_from_slice(&tag);
    Ok(body_end + TAG_LEN)
}

/// Builds a control datagram in `buf`, sealed if `crypto` is given. A probe is
/// exactly `size` bytes long, which must lie between [`Control::min_probe_size`] and
/// [`MAX_DATAGRAM`].
pub fn encode_control<'b>(
    buf: &'b mut [u8],
    sender: PeerName,
    control: Control,
    crypto: Option<&mut SendCrypto>,
) -> Result<&'b [u8], Error> {
    let protection = if crypto.is_some() {
        Protection::Sealed
    } else {
        Protection::Clear
    };
    let at = protection.header_len();
    let total = match control {
        Control::Heartbeat { .. } => protection.overhead() + HEARTBEAT_BODY_LEN,
        Control::PmtuAck { .. } => protection.overhead() + PMTU_BODY_LEN,
        Control::PmtuProbe { size } => {
            let size = usize::from(size);
            if size < Control::min_probe_size(protection) || size > MAX_DATAGRAM {
                return Err(Error::InvalidProbeSize(size));
            }
            size
        }
    };
    if buf.len() < total {
        return Err(Error::BufferTooSmall);
    }
    let body_end = total - protection.tag_len();
    match control {
        Control::Heartbeat { connection } => {
            buf[at..body_end].copy_from_slice(&connection.to_be_bytes());
        }
        Control::PmtuAck { size } => buf[at..body_end].copy_from_slice(&size.to_be_bytes()),
        Control::PmtuProbe { size } => {
            buf[at..at + PMTU_BODY_LEN].copy_from_slice(&size.to_be_bytes());
            buf[at + PMTU_BODY_LEN..body_end].fill(0);
        }
    }
    let n = seal_into(buf, sender, control.kind(), protection, body_end, crypto)?;
    Ok(&buf[..n])
}

/// An authenticated, decoded datagram; frames point into the caller's buffer.
#[derive(Debug)]
pub struct Opened<'b> {
    pub header: Header,
    pub body: Body<'b>,
}

#[derive(Debug)]
pub enum Body<'b> {
    Frames(Frames<'b>),
    Control(Control),
}

/// Authenticates and decrypts `datagram` in place (with `crypto`, which must be given
/// exactly when the connection has keys), checks the whole body, and returns it.
/// A datagram is delivered whole or not at all.
pub fn open<'b>(
    datagram: &'b mut [u8],
    crypto: Option<&mut RecvCrypto>,
) -> Result<Opened<'b>, Error> {
    let header = Header::parse(datagram)?;
    let start = header.protection.header_len();
    // Header::parse gives a counter exactly to sealed datagrams.
    let body_end = match (header.counter, crypto) {
        (None, None) => datagram.len(),
        (None, Some(_)) => return Err(Error::ClearWhenKeyed),
        (Some(_), None) => return Err(Error::SealedWhenUnkeyed),
        (Some(counter), Some(crypto)) => {
            // Header::parse checked the length covers header and tag.
            let body_end = datagram.len() - TAG_LEN;
            let (head, rest) = datagram.split_at_mut(start);
            let (body, tag) = rest.split_at_mut(body_end - start);
            crypto.open(counter, head, body, &array(tag, 0))?;
            body_end
        }
    };
    let datagram: &'b [u8] = datagram;
    let total = datagram.len();
    let body = &datagram[start..body_end];
    let body = match header.kind {
        Kind::Frames => Body::Frames(Frames::parse(body, 0)?),
        Kind::OffloadFrames => Body::Frames(Frames::parse(body, crate::offload::VNET_HDR_LEN)?),
        Kind::Heartbeat => {
            if body.len() != HEARTBEAT_BODY_LEN {
                return Err(Error::Malformed);
            }
            Body::Control(Control::Heartbeat {
                connection: u64::from_be_bytes(array(body, 0)),
            })
        }
        Kind::PmtuAck => {
            if body.len() != PMTU_BODY_LEN {
                return Err(Error::Malformed);
            }
            Body::Control(Control::PmtuAck {
                size: u16::from_be_bytes(array(body, 0)),
            })
        }
        Kind::PmtuProbe => {
            if body.len() < PMTU_BODY_LEN {
                return Err(Error::Malformed);
            }
            let size = u16::from_be_bytes(array(body, 0));
            // A probe that arrived shorter or longer than sent proves nothing.
            if usize::from(size) != total {
                return Err(Error::Malformed);
            }
            Body::Control(Control::PmtuProbe { size })
        }
    };
    Ok(Opened { header, body })
}

/// One frame of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'b> {
    pub tag: FrameTag,
    pub payload: &'b [u8],
}

/// The frames of an opened datagram, checked whole before the first is yielded.
#[derive(Debug, Clone)]
pub struct Frames<'b> {
    rest: &'b [u8],
    remaining: usize,
}

impl<'b> Frames<'b> {
    /// Checks every record; each frame must be at least `min_len` bytes (its metadata).
    fn parse(body: &'b [u8], min_len: usize) -> Result<Self, Error> {
        let mut rest = body;
        let mut count = 0;
        while !rest.is_empty() {
            let (_, len, next) = split_frame(rest).ok_or(Error::Malformed)?;
            if len < min_len {
                return Err(Error::Malformed);
            }
            rest = next;
            count += 1;
        }
        Ok(Self {
            rest: body,
            remaining: count,
        })
    }
}

/// Splits the first frame off `bytes`: (tag bytes, payload length, rest after the
/// frame), or `None` if it overruns.
fn split_frame(bytes: &[u8]) -> Option<(&[u8], usize, &[u8])> {
    let head = bytes.get(..FRAME_HEADER_LEN)?;
    let len = usize::from(u16::from_be_bytes([head[13], head[14]]));
    let end = FRAME_HEADER_LEN.checked_add(len)?;
    let rest = bytes.get(end..)?;
    Some((head, len, rest))
}

impl<'b> Iterator for Frames<'b> {
    type Item = Frame<'b>;

    fn next(&mut self) -> Option<Frame<'b>> {
        let (head, len, rest) = split_frame(self.rest)?;
        let payload = &self.rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
        let tag = FrameTag {
            src: PeerName::from_bytes(array(head, 0)),
            dst: PeerName::from_bytes(array(head, PEER_LEN)),
            hops: head[12],
        };
        self.rest = rest;
        self.remaining -= 1;
        Some(Frame { tag, payload })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Frames<'_> {}

#[cfg(test)]
mod tests;
