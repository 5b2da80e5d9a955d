//! The kernel fast path's control: which peers our frames may reach through the
//! kernel's VXLAN device instead of the sleeve, decided by probes that travel the same
//! way the frames would.
//!
//! Between two directly connected peers whose connection is unencrypted, the kernel
//! can carry frames itself: a VXLAN device on UDP 6784 is a port of the bridge, and
//! frames never cross into user space (the sleeve costs five trips through the network
//! stack and four thread wake-ups per round trip). The kernel only tells us nothing
//! about whether that path works, so each peer sends the other a [`Probe`] every
//! [`FastPathConfig::probe_interval`], VXLAN-encapsulated to the peer's port 6784 on a
//! second VNI; the peer's kernel decapsulates it into a device it reads. A probe says
//! whether its sender has heard the receiver lately, so a peer is *fast* once each side
//! hears the other, and stops being fast as soon as either stops hearing: both ends flip
//! within one probe interval of each other, and a firewall dropping UDP 6784 sends the
//! traffic back to the sleeve. [`FastPaths`] keeps that state; the daemon does the IO.
//!
//! Only peers the mesh offers as candidates (an established, unencrypted sleeve path
//! with a known address) are probed; everything else keeps using the sleeve, as do
//! frames relayed through a third peer.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weave_mesh::PeerName;

use crate::forward::Mac;

/// The UDP port of the VXLAN devices (Weave's: the sleeve port + 1).
pub const VXLAN_PORT: u16 = 6784;
/// The VXLAN network identifier of the frames between containers.
pub const DATA_VNI: u32 = 0x7e_57_01;
/// The VXLAN network identifier of the probes (a device of its own, off the bridge).
pub const PROBE_VNI: u32 = 0x7e_57_02;
/// VXLAN's overhead on the underlay: outer IPv4 (20), UDP (8), VXLAN (8), inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: usize = 50;
/// The EtherType of a probe frame (IEEE's "local experimental" 1).
pub const PROBE_ETHERTYPE: u16 = 0x88b5;

const PROBE_MAGIC: [u8; 4] = *b"wvFP";
const PROBE_VERSION: u8 = 1;
const ETHERNET_HEADER_LEN: usize = 14;
const VXLAN_HEADER_LEN: usize = 8;
/// magic, version, sender, receiver, flags.
const PROBE_BODY_LEN: usize = 4 + 1 + 6 + 6 + 1;
const FLAG_HEARD: u8 = 1;

/// Why a frame read from the probe device is not a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ProbeError {
    #[error("frame too short for a probe")]
    Truncated,
    #[error("not a probe (EtherType or magic)")]
    NotAProbe,
    #[error("unsupported probe version {0}")]
    UnsupportedVersion(u8),
}

/// One probe: `from` tells `to` whether it has heard `to`'s probes lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    pub from: PeerName,
    pub to: PeerName,
    pub heard: bool,
}

impl Probe {
    /// The probe as a UDP payload for the peer's VXLAN port: the VXLAN header with
    /// [`PROBE_VNI`], then an Ethernet frame carrying the probe. Returns the length.
    pub fn encode_vxlan(&self, out: &mut [u8; Self::VXLAN_LEN]) -> usize {
        out.fill(0);
        // VXLAN: flags with the I bit, reserved, 24-bit VNI, reserved (RFC 7348).
        out[0] = 0x08;
        out[4..7].copy_from_slice(&PROBE_VNI.to_be_bytes()[1..]);
        let frame = &mut out[VXLAN_HEADER_LEN..];
        frame[..6].fill(0xff);
        // A locally administered unicast source, so no bridge mistakes it for a group.
        let mut src = self.from.to_bytes();
        src[0] = (src[0] | 0x02) & !0x01;
        frame[6..12].copy_from_slice(&src);
        frame[12..14].copy_from_slice(&PROBE_ETHERTYPE.to_be_bytes());
        let body = &mut frame[ETHERNET_HEADER_LEN..];
        body[..4].copy_from_slice(&PROBE_MAGIC);
        body[4] = PROBE_VERSION;
        body[5..11].copy_from_slice(&self.from.to_bytes());
        body[11..17].copy_from_slice(&self.to.to_bytes());
        body[17] = if self.heard { FLAG_HEARD } else { 0 };
        Self::VXLAN_LEN
    }

    /// The encoded length: VXLAN header and a minimum-size Ethernet frame (60 bytes).
    pub const VXLAN_LEN: usize = VXLAN_HEADER_LEN + 60;

    /// Decodes the Ethernet frame the kernel delivered on the probe device.
    pub fn decode_frame(frame: &[u8]) -> Result<Self, ProbeError> {
        if frame.len() < ETHERNET_HEADER_LEN + PROBE_BODY_LEN {
            return Err(ProbeError::Truncated);
        }
        let body = &frame[ETHERNET_HEADER_LEN..];
        if frame[12..14] != PROBE_ETHERTYPE.to_be_bytes() || body[..4] != PROBE_MAGIC {
            return Err(ProbeError::NotAProbe);
        }
        if body[4] != PROBE_VERSION {
            return Err(ProbeError::UnsupportedVersion(body[4]));
        }
        let name = |at: usize| {
            let mut bytes = [0u8; 6];
            bytes.copy_from_slice(&body[at..at + 6]);
            PeerName::from_bytes(bytes)
        };
        Ok(Self {
            from: name(5),
            to: name(11),
            heard: body[17] & FLAG_HEARD != 0,
        })
    }
}

/// Tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastPathConfig {
    /// How often each candidate gets a probe.
    pub probe_interval: Duration,
    /// A peer not heard from for this long is not fast (three probes lost).
    pub silence: Duration,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            silence: Duration::from_millis(3500),
        }
    }
}

/// A peer's fast path went up or down. The daemon programs the VXLAN device's
/// forwarding table (flood entry to `addr`) and tells the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FastPathEvent {
    Up { peer: PeerName, addr: Ipv4Addr },
    Down { peer: PeerName, addr: Ipv4Addr },
}

/// What we know of one candidate's fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub addr: Ipv4Addr,
    /// When its last probe to us arrived.
    pub heard_at: Option<Instant>,
    /// Whether that probe said it hears us.
    pub hears_us: bool,
    /// Whether frames to it go the fast path now.
    pub fast: bool,
    /// When it became a candidate.
    pub since: Instant,
}

/// Where a candidate's fast path stands, for `weave status connections`: when a
/// connection stays on the sleeve the user sees which way the probes fail (Weave Net's
/// silent fallback to the sleeve was a long-standing complaint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// Frames go through the kernel.
    Fast,
    /// Just offered; no verdict yet.
    Probing,
    /// Its probes do not reach us (UDP to our VXLAN port blocked or lost on the way in).
    NoProbesFromPeer,
    /// We hear it, but it says it does not hear us (blocked on the way out, or at its end).
    NoProbesToPeer,
}

impl Standing {
    /// As `weave status connections` shows it (`fastdp=...`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fast => "up",
            Self::Probing => "probing",
            Self::NoProbesFromPeer => "no-probes-from-peer",
            Self::NoProbesToPeer => "no-probes-to-peer",
        }
    }
}

/// The fast-path state of every candidate peer.
#[derive(Debug)]
pub struct FastPaths {
    local: PeerName,
    config: FastPathConfig,
    candidates: BTreeMap<PeerName, Candidate>,
    next_probe: Option<Instant>,
    events: Vec<FastPathEvent>,
    rejected: u64,
}

impl FastPaths {
    pub fn new(local: PeerName, config: FastPathConfig) -> Self {
        Self {
            local,
            config,
            candidates: BTreeMap::new(),
            next_probe: None,
            events: Vec::new(),
            rejected: 0,
        }
    }

    /// The peers that may use the fast path and where their VXLAN port is. A peer no
    /// longer offered (connection gone, path lost) or whose address changed is taken
    /// down at once.
    pub fn set_candidates(
        &mut self,
        offered: impl IntoIterator<Item = (PeerName, Ipv4Addr)>,
        now: Instant,
    ) {
        let offered: BTreeMap<PeerName, Ipv4Addr> = offered
            .into_iter()
            .filter(|(peer, _)| *peer != self.local)
            .collect();
        let gone: Vec<PeerName> = self
            .candidates
            .iter()
            .filter(|(peer, c)| offered.get(peer) != Some(&c.addr))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in gone {
            if let Some(c) = self.candidates.remove(&peer)
                && c.fast
            {
                self.events.push(FastPathEvent::Down { peer, addr: c.addr });
            }
        }
        let mut added = false;
        for (peer, addr) in offered {
            self.candidates.entry(peer).or_insert_with(|| {
                added = true;
                Candidate {
                    addr,
                    heard_at: None,
                    hears_us: false,
                    fast: false,
                    since: now,
                }
            });
        }
        if added {
            // A newcomer gets its first probe now, not at the next interval.
            self.next_probe = Some(now);
        } else if self.candidates.is_empty() {
            self.next_probe = None;
        }
    }

    /// A probe arrived. Probes from peers that are not candidates, or addressed to
    /// someone else, are counted and ignored.
    pub fn handle_probe(&mut self, probe: Probe, now: Instant) {
        if probe.to != self.local {
            self.rejected += 1;
            return;
        }
        let Some(c) = self.candidates.get_mut(&probe.from) else {
            self.rejected += 1;
            return;
        };
        let first = c.heard_at.is_none_or(|at| now >= at + self.config.silence);
        c.heard_at = Some(now);
        c.hears_us = probe.heard;
        Self::update(&mut self.events, probe.from, c, now, &self.config);
        if first {
            // Tell it at once that we hear it, so both ends come up within a round trip.
            self.next_probe = Some(now);
        }
    }

    /// Probes due now, each to its candidate's address; then call [`Self::poll_timeout`].
    pub fn poll_probes(&mut self, now: Instant, mut send: impl FnMut(Ipv4Addr, Probe)) {
        if self.next_probe.is_none_or(|at| at > now) {
            return;
        }
        for (&peer, c) in &mut self.candidates {
            Self::update(&mut self.events, peer, c, now, &self.config);
            send(
                c.addr,
                Probe {
                    from: self.local,
                    to: peer,
                    heard: Self::hears(c, now, &self.config),
                },
            );
        }
        self.next_probe = (!self.candidates.is_empty()).then(|| now + self.config.probe_interval);
    }

    /// When [`Self::poll_probes`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_probe
    }

    pub fn poll_event(&mut self) -> Option<FastPathEvent> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// The peers frames go to through the kernel now, sorted.
    pub fn fast_peers(&self) -> Vec<PeerName> {
        self.candidates
            .iter()
            .filter(|(_, c)| c.fast)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Where `peer`'s fast path stands; `None` if it is no candidate. A candidate gets
    /// the benefit of the doubt for one silence period before it counts as blocked.
    pub fn standing(&self, peer: PeerName, now: Instant) -> Option<Standing> {
        let c = self.candidates.get(&peer)?;
        Some(if c.fast {
            Standing::Fast
        } else if Self::hears(c, now, &self.config) {
            Standing::NoProbesToPeer
        } else if now < c.since + self.config.silence {
            Standing::Probing
        } else {
            Standing::NoProbesFromPeer
        })
    }

    pub fn candidates(&self) -> &BTreeMap<PeerName, Candidate> {
        &self.candidates
    }

    /// Probes ignored: for another peer or from a peer that is no candidate.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn hears(c: &Candidate, now: Instant, config: &FastPathConfig) -> bool {
        c.heard_at.is_some_and(|at| now < at + config.silence)
    }

    fn update(
        events: &mut Vec<FastPathEvent>,
        peer: PeerName,
        c: &mut Candidate,
        now: Instant,
        config: &FastPathConfig,
    ) {
        let fast = Self::hears(c, now, config) && c.hears_us;
        if fast != c.fast {
            c.fast = fast;
            events.push(if fast {
                FastPathEvent::Up { peer, addr: c.addr }
            } else {
                FastPathEvent::Down { peer, addr: c.addr }
            });
        }
    }
}

/// Who holds a MAC as the kernel's fast path sees it: a container port on our bridge, or
/// the peer (by underlay address) the VXLAN device learned it behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacHolder {
    ThisHost,
    Peer(Ipv4Addr),
}

/// What an observation of a MAC's holder means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacClaim {
    /// Held where it was: nothing to say.
    Same,
    /// Seen for the first time (or again after it was forgotten).
    New,
    /// Claimed by another holder than before: a container moved, or two claim one MAC.
    /// The kernel already follows the latest claim; this is for the log.
    Moved { from: MacHolder },
    /// Not tracked: the table is full.
    Untracked,
}

/// The fast path's counterpart of the forwarder's MAC table, for its log only: frames
/// between fast peers never reach the forwarder, so the kernel's learning (bridge and
/// VXLAN forwarding-table notifications) is watched instead, and a MAC claimed by two
/// holders is reported just as the sleeve reports it.
#[derive(Debug)]
pub struct MacClaims {
    holders: HashMap<Mac, MacHolder>,
    max: usize,
}

impl MacClaims {
    /// A table tracking at most `max` MACs.
    pub fn new(max: usize) -> Self {
        Self {
            holders: HashMap::new(),
            max,
        }
    }

    /// The kernel learned `mac` at `holder`.
    pub fn observe(&mut self, mac: Mac, holder: MacHolder) -> MacClaim {
        let full = self.holders.len() >= self.max;
        match self.holders.get_mut(&mac) {
            Some(current) if *current == holder => MacClaim::Same,
            Some(current) => {
                let from = std::mem::replace(current, holder);
                MacClaim::Moved { from }
            }
            None if full => MacClaim::Untracked,
            None => {
                self.holders.insert(mac, holder);
                MacClaim::New
            }
        }
    }

    /// The kernel forgot `mac` at `holder` (aged out, flushed, port gone); a later
    /// claim elsewhere is then no conflict. A deletion at another holder than the
    /// current one is stale and changes nothing.
    pub fn forget(&mut self, mac: Mac, holder: MacHolder) {
        if self.holders.get(&mac) == Some(&holder) {
            self.holders.remove(&mac);
        }
    }

    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests;
