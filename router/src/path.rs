//! The UDP path of one mesh connection, sans IO: heartbeats until both ends hear each
//! other, the peer's address (learned from its heartbeats, so NAT works), liveness, and
//! path MTU discovery by acknowledged probes.
//!
//! One [`PathState`] per connection, identified by the connection's `conn_uid` (the same
//! at both ends; heartbeats carry it). The daemon feeds in what the UDP socket saw
//! (authenticated heartbeats, probes, acks, any datagram at all for liveness), what the
//! peer told it over the control connection ([`PathReport`]), send failures (EMSGSIZE)
//! and the time; it sends what [`PathState::poll_transmit`] asks for and acts on
//! [`PathState::poll_event`].
//!
//! A connection is **established** once this end hears the peer on UDP, the peer says
//! over TCP that it hears us, and the path MTU has been measured once. Silence for
//! [`PathConfig::timeout`] makes it not established again; heartbeats keep going (fast)
//! and it comes back by itself when they get through.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Error;
use crate::sleeve::{IPV4_UDP_OVERHEAD, MAX_DATAGRAM};

/// Timings and bounds; the defaults follow Weave's sleeve where it had one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathConfig {
    /// Heartbeat interval until established (Weave: 500 ms).
    pub hello_interval: Duration,
    /// Heartbeat interval once established.
    pub keepalive_interval: Duration,
    /// No datagram from the peer for this long: we no longer hear it.
    pub timeout: Duration,
    /// A probe not acknowledged within this is tried again, then counted as lost.
    pub probe_timeout: Duration,
    /// Attempts per probe size before the size counts as too big.
    pub probe_tries: u8,
    /// Datagram size assumed to pass any IPv4 path (576 − IPv4 − UDP).
    pub pmtu_floor: u16,
    /// The search stops when the bounds are this close.
    pub pmtu_granularity: u16,
    /// The path MTU is measured again this often (paths change).
    pub pmtu_recheck: Duration,
    /// Size of the probe, sent without Don't Fragment once the path MTU is known, that
    /// tells whether IP fragments get through (then offloaded super-frames may travel
    /// whole, fragmented by the kernel).
    pub frag_probe_size: u16,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            hello_interval: Duration::from_millis(500),
            keepalive_interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(300),
            probe_tries: 2,
            pmtu_floor: 576 - IPV4_UDP_OVERHEAD as u16,
            pmtu_granularity: 8,
            pmtu_recheck: Duration::from_secs(600),
            frag_probe_size: 65_000,
        }
    }
}

/// A datagram the path wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A heartbeat carrying the connection id.
    Heartbeat { to: SocketAddr, connection: u64 },
    /// A PMTU probe of exactly `size` bytes (UDP payload), Don't Fragment.
    Probe { to: SocketAddr, size: u16 },
    /// A PMTU probe of exactly `size` bytes sent *without* Don't Fragment: if it is
    /// acknowledged, fragments pass the path.
    FragProbe { to: SocketAddr, size: u16 },
    /// The answer to a probe that arrived.
    Ack { to: SocketAddr, size: u16 },
}

/// Something the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathEvent {
    /// Tell the peer over the control connection whether we hear it ([`PathReport`]).
    Tell { heard: bool },
    /// The connection became established, or stopped being.
    Established(bool),
    /// The peer's UDP address is now this (first heard, or it moved).
    Address(SocketAddr),
    /// The largest datagram (UDP payload) that passes the path, as measured.
    Mtu(u16),
    /// Whether datagrams bigger than the path MTU arrive (fragmented and reassembled).
    Fragmentation(bool),
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    size: u16,
    tries: u8,
    deadline: Instant,
}

/// The path MTU search: the largest size known to pass (`lo`) and the smallest known
/// not to, less one (`hi`); binary search in between.
#[derive(Debug, Clone)]
struct Pmtu {
    ceiling: u16,
    lo: u16,
    hi: u16,
    verified: Option<u16>,
    probe: Option<Probe>,
    /// Whether this search has probed yet (its first probe is the ceiling itself).
    probed: bool,
    searching: bool,
    next_search: Option<Instant>,
}

/// One connection's UDP path.
#[derive(Debug, Clone)]
pub struct PathState {
    config: PathConfig,
    conn_uid: u64,
    addr: Option<SocketAddr>,
    last_heard: Option<Instant>,
    /// What we last told the peer about hearing it.
    told: Option<bool>,
    peer_hears_us: bool,
    established: bool,
    next_heartbeat: Instant,
    pmtu: Pmtu,
    /// Whether fragments pass, once tested; the test in flight.
    fragments: Option<bool>,
    frag_probe: Option<Probe>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PathEvent>,
}

impl PathState {
    /// The path of connection `conn_uid`. `addr` is the peer's UDP address when we know
    /// it (we dialled it); `None` for an accepted connection until its first heartbeat.
    /// `max_datagram` bounds the PMTU search (the local interface's MTU less IPv4 and
    /// UDP headers).
    pub fn new(
        config: PathConfig,
        conn_uid: u64,
        addr: Option<SocketAddr>,
        max_datagram: usize,
        now: Instant,
    ) -> Self {
        let ceiling = u16::try_from(max_datagram.min(MAX_DATAGRAM))
            .expect("MAX_DATAGRAM fits in u16")
            .max(config.pmtu_floor);
        let pmtu = Pmtu {
            ceiling,
            lo: config.pmtu_floor,
            hi: ceiling,
            verified: None,
            probe: None,
            probed: false,
            searching: false,
            next_search: None,
        };
        let mut path = Self {
            conn_uid,
            addr,
            last_heard: None,
            told: None,
            peer_hears_us: false,
            established: false,
            next_heartbeat: now,
            pmtu,
            fragments: None,
            frag_probe: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            config,
        };
        path.handle_timeout(now);
        path
    }

    pub fn conn_uid(&self) -> u64 {
        self.conn_uid
    }

    /// The peer's UDP address, once known.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether a datagram from the peer arrived within the timeout.
    pub fn hears_peer(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.timeout)
    }

    /// Whether the peer last said it hears us.
    pub fn peer_hears_us(&self) -> bool {
        self.peer_hears_us
    }

    /// The measured path MTU (largest UDP payload), once measured.
    pub fn pmtu(&self) -> Option<u16> {
        self.pmtu.verified
    }

    /// The largest datagram to send: the measured size, or the ceiling before that.
    pub fn max_datagram(&self) -> u16 {
        self.pmtu.verified.unwrap_or(self.pmtu.ceiling)
    }

    /// Whether datagrams bigger than the path MTU arrive (the kernel fragments them and
    /// the peer's reassembles): tested once the path MTU is known.
    pub fn allows_fragments(&self) -> bool {
        self.fragments == Some(true)
    }

    /// An authenticated heartbeat for this connection arrived from `from`.
    pub fn handle_heartbeat(&mut self, from: SocketAddr, now: Instant) {
        if self.addr != Some(from) {
            self.addr = Some(from);
            self.events.push_back(PathEvent::Address(from));
            // A new address is a new path: heartbeat it now, measure it again.
            self.next_heartbeat = now;
            if self.pmtu.verified.is_some() {
                self.pmtu.next_search = Some(now);
            }
        }
        self.handle_datagram(now);
        self.update(now);
    }

    /// Any authenticated datagram from the peer arrived (at `at`): the peer is heard.
    pub fn handle_datagram(&mut self, at: Instant) {
        if self.last_heard.is_none_or(|last| at > last) {
            self.last_heard = Some(at);
            self.update(at);
        }
    }

    /// The peer told us over the control connection whether it hears us.
    pub fn handle_report(&mut self, heard: bool, now: Instant) {
        self.peer_hears_us = heard;
        self.update(now);
    }

    /// A probe of `size` bytes arrived from `from`: acknowledge it there.
    pub fn handle_probe(&mut self, size: u16, from: SocketAddr) {
        self.transmits.push_back(Transmit::Ack { to: from, size });
    }

    /// The peer acknowledged a probe of `size` bytes: that size passes.
    pub fn handle_ack(&mut self, size: u16, now: Instant) {
        if self.frag_probe.is_some() && size == self.config.frag_probe_size {
            self.frag_probe = None;
            self.set_fragments(true);
            return;
        }
        let p = &mut self.pmtu;
        if !p.searching || size <= p.lo {
            return;
        }
        p.lo = size.min(p.ceiling);
        p.hi = p.hi.max(p.lo);
        if p.probe.is_some_and(|probe| probe.size <= size) {
            p.probe = None;
        }
        self.next_probe(now);
        self.update(now);
    }

    /// Sending a datagram of `size` bytes failed with EMSGSIZE: the kernel knows the
    /// path (or the interface) is smaller.
    pub fn handle_too_big(&mut self, size: u16, now: Instant) {
        let floor = self.config.pmtu_floor;
        let p = &mut self.pmtu;
        let below = size.saturating_sub(1).max(floor);
        if p.lo >= size {
            // What we knew to pass no longer does.
            p.lo = floor.min(below);
        }
        if below < p.hi {
            p.hi = below;
        }
        if p.verified.is_some_and(|v| v >= size) {
            // What we use no longer fits: measure again now.
            p.verified = Some(below.max(self.config.pmtu_floor).min(p.hi));
            self.events.push_back(PathEvent::Mtu(self.max_datagram()));
            self.pmtu.next_search = Some(now);
        }
        if self.pmtu.probe.is_some_and(|probe| probe.size >= size) {
            self.pmtu.probe = None;
            self.next_probe(now);
        }
        self.update(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(probe) = self.frag_probe
            && now >= probe.deadline
        {
            if probe.tries < self.config.probe_tries {
                self.send_frag_probe(probe.tries + 1, now);
            } else {
                self.frag_probe = None;
                self.set_fragments(false);
            }
        }
        if let Some(probe) = self.pmtu.probe
            && now >= probe.deadline
        {
            if probe.tries < self.config.probe_tries {
                self.send_probe(probe.size, probe.tries + 1, now);
            } else {
                // Lost every time: too big.
                self.pmtu.probe = None;
                self.pmtu.hi = probe.size.saturating_sub(1).max(self.pmtu.lo);
                self.next_probe(now);
            }
        }
        if self.pmtu.next_search.is_some_and(|at| now >= at) && self.hears_peer(now) {
            self.start_search(now);
        }
        if let Some(addr) = self.addr
            && now >= self.next_heartbeat
        {
            self.transmits.push_back(Transmit::Heartbeat {
                to: addr,
                connection: self.conn_uid,
            });
            let interval = if self.established {
                self.config.keepalive_interval
            } else {
                self.config.hello_interval
            };
            self.next_heartbeat = now + interval;
        }
        self.update(now);
    }

    /// When [`Self::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.addr.map(|_| self.next_heartbeat));
        consider(self.pmtu.probe.map(|p| p.deadline));
        consider(self.frag_probe.map(|p| p.deadline));
        // Only while we hear the peer: a search cannot start otherwise, and the moment
        // we stop hearing it is what the last deadline is for.
        if self.told == Some(true) {
            consider(self.pmtu.next_search);
            consider(self.last_heard.map(|at| at + self.config.timeout));
        }
        next
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn start_search(&mut self, now: Instant) {
        let p = &mut self.pmtu;
        p.next_search = None;
        p.searching = true;
        p.probed = false;
        p.lo = self.config.pmtu_floor.min(p.ceiling);
        p.hi = p.ceiling;
        self.next_probe(now);
    }

    fn next_probe(&mut self, now: Instant) {
        let p = &mut self.pmtu;
        if !p.searching || p.probe.is_some() {
            return;
        }
        if p.hi <= p.lo.saturating_add(self.config.pmtu_granularity) && p.probed || p.hi <= p.lo {
            // Done: the largest size known to pass.
            p.searching = false;
            let found = p.lo;
            let changed = p.verified != Some(found);
            p.verified = Some(found);
            p.next_search = Some(now + self.config.pmtu_recheck);
            if changed {
                self.events.push_back(PathEvent::Mtu(found));
            }
            if found >= self.config.frag_probe_size {
                // The path carries anything whole.
                self.set_fragments(true);
            } else {
                self.send_frag_probe(1, now);
            }
            return;
        }
        // Optimistic first: most paths carry the whole interface MTU.
        let size = if p.probed {
            p.lo + (p.hi - p.lo).div_ceil(2)
        } else {
            p.hi
        };
        p.probed = true;
        self.send_probe(size, 1, now);
    }

    fn send_frag_probe(&mut self, tries: u8, now: Instant) {
        let Some(to) = self.addr else {
            return;
        };
        let size = self.config.frag_probe_size;
        self.frag_probe = Some(Probe {
            size,
            tries,
            deadline: now + self.config.probe_timeout * 3,
        });
        self.transmits.push_back(Transmit::FragProbe { to, size });
    }

    fn set_fragments(&mut self, ok: bool) {
        if self.fragments != Some(ok) {
            self.fragments = Some(ok);
            self.events.push_back(PathEvent::Fragmentation(ok));
        }
    }

    fn send_probe(&mut self, size: u16, tries: u8, now: Instant) {
        let Some(to) = self.addr else {
            return;
        };
        self.pmtu.probe = Some(Probe {
            size,
            tries,
            deadline: now + self.config.probe_timeout,
        });
        self.transmits.push_back(Transmit::Probe { to, size });
    }

    /// Recomputes what we hear and what is established, and reports changes.
    fn update(&mut self, now: Instant) {
        let hearing = self.hears_peer(now);
        if self.told != Some(hearing) {
            // Before anything was heard there is nothing to tell.
            if hearing || self.told.is_some() {
                self.told = Some(hearing);
                self.events.push_back(PathEvent::Tell { heard: hearing });
            }
        }
        if hearing
            && self.pmtu.verified.is_none()
            && !self.pmtu.searching
            && self.pmtu.next_search.is_none()
        {
            self.start_search(now);
        }
        let established = hearing && self.peer_hears_us && self.pmtu.verified.is_some();
        if established != self.established {
            self.established = established;
            self.events.push_back(PathEvent::Established(established));
            if !established {
                // Back to fast heartbeats until it heals.
                self.next_heartbeat = self.next_heartbeat.min(now + self.config.hello_interval);
            }
        }
    }
}

/// What one end tells the other over the control connection about the UDP path: "I hear
/// you on connection `conn_uid`" (or no longer). Sent with the mesh's direct messages
/// under [`PathReport::TAG`].
///
/// Wire: `[version 1][conn_uid 8][flags 1]`, flags bit 0 = heard. Longer payloads are
/// accepted (later versions may append fields); shorter ones and other versions are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathReport {
    pub conn_uid: u64,
    pub heard: bool,
}

impl PathReport {
    /// The mesh direct-message tag of path reports.
    pub const TAG: u16 = 0x5501;
    const VERSION: u8 = 1;
    const LEN: usize = 10;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.push(Self::VERSION);
        out.extend_from_slice(&self.conn_uid.to_be_bytes());
        out.push(u8::from(self.heard));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() < Self::LEN {
            return Err(Error::Truncated);
        }
        if bytes[0] != Self::VERSION {
            return Err(Error::UnsupportedVersion(bytes[0]));
        }
        let mut uid = [0u8; 8];
        uid.copy_from_slice(&bytes[1..9]);
        Ok(Self {
            conn_uid: u64::from_be_bytes(uid),
            heard: bytes[9] & 1 != 0,
        })
    }
}

#[cfg(test)]
mod tests;
