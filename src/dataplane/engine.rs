//! The packet paths: three plain OS threads around the router's pure cores.
//!
//! - `weave-tap`: frames from the TAP, in batches → the forwarder's decisions (one
//!   lock per batch) → frames packed per next hop into sleeve datagrams, sealed → one
//!   sendmmsg per batch.
//! - `weave-udp`: recvmmsg batches → open and authenticate each datagram (the replay
//!   window advances only for genuine ones) → the forwarder's decisions (one lock per
//!   batch) → TAP writes and relays (packed and sent like the TAP path's).
//! - `weave-path`: the UDP path of every connection ([`PathState`]: heartbeats, address,
//!   liveness, PMTU probes), commands from the event loop, and events back to it.
//!
//! Shared state: the forwarder behind a mutex taken once per batch; the peer table
//! (address, datagram size, keys) as an `Arc` swapped whole when it changes, which the
//! packet threads pick up with one atomic load per batch; counters as atomics.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use weave_mesh::PeerName;
use weave_router::icmp::{self, Ipv4Fragmentability};
use weave_router::offload::{self, VNET_HDR_LEN, VnetHdr};
use weave_router::sleeve::{self, Body, Control, FRAME_HEADER_LEN, Header, Kind, MAX_DATAGRAM};
use weave_router::{
    Decision, Forwarder, FrameTag, PathConfig, PathEvent, PathReport, PathState, Protection,
    RecvCrypto, RouteSnapshot, SendCrypto, SleeveEncoder, SleeveKeys, Transmit,
};

use crate::sys::{DataSocket, ProbeSocket, RecvQueue, SendQueue, TapFd, poll_readable};

/// Frames read from the TAP per batch, and datagrams per recvmmsg / sendmmsg.
const BATCH: usize = 64;
/// The same for a thread's secondary descriptor (it helps out; small buffers do).
const SECONDARY_BATCH: usize = 8;
/// How long an idle thread sleeps before looking at the stop flag.
const IDLE: Duration = Duration::from_millis(200);
/// How long a TAP write waits for room in the device queue before the frame counts
/// as dropped.
const TAP_PATIENCE: Duration = Duration::from_millis(5);
/// The receive buffer per datagram: the largest UDP payload (reassembled fragments).
const RECV_BUF: usize = 65_536;
/// Expired MACs are swept this often.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Why a frame (or one copy of it) was dropped by the engine, beyond the forwarder's
/// own reasons. Also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum EngineDrop {
    /// Too big for its next hop's path and neither answerable with ICMP nor
    /// fragmentable (not IPv4, IP options, or a relay with Don't Fragment).
    TooBig,
    /// Too big, IPv4 with Don't Fragment: the sender got ICMP fragmentation-needed.
    TooBigAnswered,
    /// The next hop's UDP address is not known yet.
    NoAddress,
    /// The kernel refused to send the datagram it was in.
    SendFailed,
    /// The TAP device did not take it.
    TapWriteFailed,
}

impl EngineDrop {
    pub(crate) const ALL: [Self; 5] = [
        Self::TooBig,
        Self::TooBigAnswered,
        Self::NoAddress,
        Self::SendFailed,
        Self::TapWriteFailed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::TooBig => "too_big",
            Self::TooBigAnswered => "too_big_icmp_sent",
            Self::NoAddress => "no_address",
            Self::SendFailed => "send_failed",
            Self::TapWriteFailed => "tap_write_failed",
        }
    }
}

/// Why a received datagram was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reject {
    /// Its sender is not a peer we have a connection with.
    UnknownSender,
    /// A clear datagram from an address that is not its sender's.
    WrongAddress,
    /// A heartbeat for another (older) connection.
    StaleConnection,
    /// Bigger than the receive buffer.
    Truncated,
    /// The codec's reasons (`weave_router::Error::as_str`).
    Codec(&'static str),
}

/// Counters of the engine, updated with relaxed atomics from the packet threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) datagrams_sent: AtomicU64,
    pub(crate) datagrams_received: AtomicU64,
    pub(crate) datagram_bytes_received: AtomicU64,
    pub(crate) fragmented_frames: AtomicU64,
    drops: [AtomicU64; EngineDrop::ALL.len()],
    rejects: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn drop(&self, reason: EngineDrop) {
        self.drops[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn drops(&self) -> Vec<(EngineDrop, u64)> {
        EngineDrop::ALL
            .iter()
            .map(|&r| (r, self.drops[r as usize].load(Ordering::Relaxed)))
            .collect()
    }

    fn reject(&self, reason: Reject) {
        let label = match reason {
            Reject::UnknownSender => "unknown_sender",
            Reject::WrongAddress => "wrong_address",
            Reject::StaleConnection => "stale_connection",
            Reject::Truncated => "buffer_truncated",
            Reject::Codec(label) => label,
        };
        // Rejections are rare (or an attack, which this must not make worse than a
        // map update): a mutex is fine here.
        *self
            .rejects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(label)
            .or_default() += 1;
    }

    pub(crate) fn rejects(&self) -> BTreeMap<&'static str, u64> {
        self.rejects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Sealing and opening state of one connection; shared by every table built while the
/// connection lives, so counters and replay window carry over.
struct PeerCrypto {
    send: Mutex<SendCrypto>,
    recv: Mutex<RecvCrypto>,
}

/// What the packet threads need about one neighbour.
#[derive(Clone)]
struct PeerEntry {
    conn_uid: u64,
    addr: Option<SocketAddrV4>,
    max_datagram: usize,
    /// Whether fragments pass the path (tested by the path thread).
    fragments: bool,
    crypto: Option<Arc<PeerCrypto>>,
    /// When a genuine datagram last came from it (ms since the engine's epoch).
    last_rx: Arc<AtomicU64>,
}

impl PeerEntry {
    fn protection(&self) -> Protection {
        if self.crypto.is_some() {
            Protection::Sealed
        } else {
            Protection::Clear
        }
    }

    /// The largest record (frame, with its metadata if any) a datagram of the path's
    /// MTU can carry.
    fn max_record(&self) -> usize {
        self.max_datagram
            .saturating_sub(self.protection().overhead() + FRAME_HEADER_LEN)
    }

    /// The largest datagram for super-frames: whole (fragmented by the kernel) if
    /// fragments pass the path, else the path MTU.
    fn max_big_datagram(&self) -> usize {
        if self.fragments {
            MAX_DATAGRAM
        } else {
            self.max_datagram
        }
    }

    fn max_big_record(&self) -> usize {
        self.max_big_datagram()
            .saturating_sub(self.protection().overhead() + FRAME_HEADER_LEN)
    }
}

#[derive(Default)]
struct PeerTable {
    peers: HashMap<PeerName, PeerEntry>,
}

/// The table the packet threads read: swapped whole under a lock they take only when
/// the generation moved.
struct Table {
    current: RwLock<Arc<PeerTable>>,
    generation: AtomicU64,
}

impl Table {
    fn publish(&self, table: PeerTable) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Refreshes a thread's copy if the table changed since it was taken.
    fn refresh(&self, local: &mut (u64, Arc<PeerTable>)) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation != local.0 {
            let table = self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            *local = (generation, table);
        }
    }
}

/// What the engine tells the event loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EngineEvent {
    /// Send this report to the peer over the control connection.
    Tell { peer: PeerName, report: PathReport },
    /// The connection's UDP path works both ways (or no longer does).
    Established {
        peer: PeerName,
        conn_uid: u64,
        established: bool,
    },
}

/// Per-connection state for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathStatus {
    pub(crate) conn_uid: u64,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) encrypted: bool,
    pub(crate) established: bool,
    /// Measured largest datagram, once measured.
    pub(crate) pmtu: Option<u16>,
    /// The largest frame that fits a datagram to this peer now.
    pub(crate) max_frame: usize,
    /// Whether super-frames travel whole (fragments pass the path).
    pub(crate) fragments: bool,
    /// Whether frames to this peer go through the kernel's fast path instead.
    pub(crate) fast: bool,
    /// Where the fast path to this peer stands (`weave status connections` shows it when
    /// frames take the sleeve); filled in by the data plane, not the engine.
    pub(crate) fastdp: Option<&'static str>,
}

/// Commands to the path thread.
enum Ctl {
    PeerUp {
        peer: PeerName,
        conn_uid: u64,
        addr: Option<SocketAddrV4>,
        keys: Option<SleeveKeys>,
    },
    PeerDown {
        peer: PeerName,
        conn_uid: u64,
    },
    Report {
        peer: PeerName,
        report: PathReport,
    },
    Heartbeat {
        peer: PeerName,
        from: SocketAddrV4,
    },
    Probe {
        peer: PeerName,
        size: u16,
        from: SocketAddrV4,
    },
    Ack {
        peer: PeerName,
        size: u16,
    },
    TooBig {
        peer: PeerName,
        size: usize,
    },
    Stop,
}

/// Everything the threads share.
struct Shared {
    local: PeerName,
    epoch: Instant,
    forwarder: Mutex<Forwarder>,
    table: Table,
    counters: Counters,
    status: Mutex<BTreeMap<PeerName, PathStatus>>,
    stop: AtomicBool,
    /// Held while reading and sending a batch from the TAP, and from the socket: two
    /// threads may serve each, but never reorder it.
    tap_order: Mutex<()>,
    udp_order: Mutex<()>,
    socket: DataSocket,
    probe: ProbeSocket,
    tap: TapFd,
    ctl: std_mpsc::Sender<Ctl>,
}

impl Shared {
    fn ms_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn ctl(&self, msg: Ctl) {
        // The path thread outlives the packet threads; a send after it ended is moot.
        let _ = self.ctl.send(msg);
    }
}

/// What another task may read or change of a running engine.
#[derive(Clone)]
pub(crate) struct EngineView(Arc<Shared>);

impl EngineView {
    /// The UDP path of each connection, `fast` set for peers the fast path reaches.
    pub(crate) fn paths(&self) -> BTreeMap<PeerName, PathStatus> {
        let mut paths = self
            .0
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let fwd = self.forwarder();
        for (peer, path) in &mut paths {
            path.fast = fwd.fast_peers().binary_search(peer).is_ok();
        }
        paths
    }

    /// Tells the forwarder which peers the kernel's fast path reaches now.
    pub(crate) fn set_fast_peers(&self, peers: Vec<PeerName>) {
        self.forwarder().set_fast_peers(peers);
    }

    fn forwarder(&self) -> std::sync::MutexGuard<'_, Forwarder> {
        self.0
            .forwarder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) local: PeerName,
    /// The largest datagram the local interface sends (its MTU less IPv4 and UDP): the
    /// upper bound of every PMTU search.
    pub(crate) max_datagram: usize,
    /// The largest frame the TAP hands us (overlay MTU plus Ethernet header).
    pub(crate) max_tap_frame: usize,
    pub(crate) path: PathConfig,
}

/// The running engine; dropping it stops the threads.
pub(crate) struct Engine {
    shared: Arc<Shared>,
    ctl: std_mpsc::Sender<Ctl>,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts the threads on `socket` and `tap`; events go to `events`.
    pub(crate) fn start(
        config: EngineConfig,
        forwarder: Forwarder,
        socket: DataSocket,
        probe: ProbeSocket,
        tap: TapFd,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> io::Result<Self> {
        let (ctl_tx, ctl_rx) = std_mpsc::channel();
        let shared = Arc::new(Shared {
            local: config.local,
            epoch: Instant::now(),
            forwarder: Mutex::new(forwarder),
            table: Table {
                current: RwLock::new(Arc::new(PeerTable::default())),
                generation: AtomicU64::new(1),
            },
            counters: Counters::default(),
            status: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            tap_order: Mutex::new(()),
            udp_order: Mutex::new(()),
            socket,
            probe,
            tap,
            ctl: ctl_tx.clone(),
        });
        let mut threads = Vec::new();
        let max_tap_frame = config.max_tap_frame;
        for (name, primary) in [("weave-tap", Primary::Tap), ("weave-udp", Primary::Udp)] {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || packet_thread(&s, primary, max_tap_frame))?,
            );
        }
        let s = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("weave-path".into())
                .spawn(move || path_thread(&s, &config, &ctl_rx, &events))?,
        );
        Ok(Self {
            shared,
            ctl: ctl_tx,
            threads,
        })
    }

    /// A connection to `peer` is up. `addr`: the peer's UDP address if we dialled it.
    pub(crate) fn peer_up(
        &self,
        peer: PeerName,
        conn_uid: u64,
        addr: Option<SocketAddrV4>,
        keys: Option<SleeveKeys>,
    ) {
        let _ = self.ctl.send(Ctl::PeerUp {
            peer,
            conn_uid,
            addr,
            keys,
        });
    }

    pub(crate) fn peer_down(&self, peer: PeerName, conn_uid: u64) {
        let _ = self.ctl.send(Ctl::PeerDown { peer, conn_uid });
    }

    /// The peer's report about hearing us.
    pub(crate) fn report(&self, peer: PeerName, report: PathReport) {
        let _ = self.ctl.send(Ctl::Report { peer, report });
    }

    /// Swaps in new routes.
    pub(crate) fn set_routes(&self, routes: RouteSnapshot) {
        let mut fwd = self.forwarder();
        if let Err(err) = fwd.set_routes(routes) {
            tracing::error!(%err, "route snapshot refused");
        }
    }

    /// Forgets a peer that left the mesh (its MACs and counters).
    pub(crate) fn forget_peer(&self, peer: PeerName) {
        self.forwarder().forget_peer(peer);
    }

    /// The forwarder, locked (for routes and counters).
    pub(crate) fn forwarder(&self) -> std::sync::MutexGuard<'_, Forwarder> {
        self.shared
            .forwarder
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// The UDP path of each connection.
    pub(crate) fn paths(&self) -> BTreeMap<PeerName, PathStatus> {
        self.view().paths()
    }

    /// A handle on the engine's shared state for another task (the fast path's).
    pub(crate) fn view(&self) -> EngineView {
        EngineView(self.shared.clone())
    }

    /// Stops the threads and waits for them.
    pub(crate) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = self.ctl.send(Ctl::Stop);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

// ----- sending: frames packed per next hop -----

/// Where an outgoing record's bytes are.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Frame `i` of the batch being handled.
    Batch(u32),
    /// `len` bytes at `at` in the arena (fragments, pieces of super-frames).
    Arena(u32, u32),
}

/// One copy to send: to `hop`, with `tag`. An `offload` record is `[metadata][frame]`
/// (a kind-4 datagram carries it); a plain one is the frame alone (kind 0).
#[derive(Debug, Clone, Copy)]
struct OutFrame {
    hop: PeerName,
    src: Src,
    tag: FrameTag,
    offload: bool,
}

/// One thread's sending side: the copies to send for the batch in hand, and the
/// datagrams being built.
struct Out {
    frames: Vec<OutFrame>,
    arena: Vec<u8>,
    scratch: Vec<u8>,
    icmp: Vec<u8>,
    queue: SendQueue,
}

impl Out {
    fn new(datagram_size: usize) -> Self {
        Self {
            frames: Vec::with_capacity(BATCH * 2),
            arena: Vec::new(),
            scratch: Vec::new(),
            icmp: Vec::new(),
            queue: SendQueue::new(BATCH, datagram_size),
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.arena.clear();
    }

    /// Adds a copy of `record` for its hop. What does not fit the path is cut: a
    /// super-frame into smaller ones at segment boundaries; a plain IPv4 frame into
    /// fragments if it may be; one with Don't Fragment from our own TAP (`from_tap`)
    /// is answered with ICMP fragmentation-needed; anything else is dropped and counted.
    fn add(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        copy: OutFrame,
        record: &[u8],
        from_tap: bool,
    ) {
        let Some(entry) = table.peers.get(&copy.hop) else {
            shared.counters.drop(EngineDrop::NoAddress);
            return;
        };
        if copy.offload {
            let limit = entry.max_big_record();
            if record.len() <= limit {
                self.frames.push(copy);
                return;
            }
            self.split(shared, entry, copy, record, limit);
            return;
        }
        let max_frame = entry.max_record();
        if record.len() <= max_frame {
            self.frames.push(copy);
            return;
        }
        let frame = record;
        match icmp::ipv4_fragmentability(frame) {
            Ipv4Fragmentability::MayFragment => {
                let (arena, frames) = (&mut self.arena, &mut self.frames);
                let ok = icmp::fragment_ipv4(frame, max_frame, &mut self.scratch, |piece| {
                    push_arena(arena, frames, copy, piece);
                });
                if ok {
                    shared
                        .counters
                        .fragmented_frames
                        .fetch_add(1, Ordering::Relaxed);
                } else {
                    shared.counters.drop(EngineDrop::TooBig);
                }
            }
            Ipv4Fragmentability::DontFragment if from_tap => {
                let mtu = u16::try_from(max_frame.saturating_sub(icmp::ETHERNET_HEADER_LEN))
                    .unwrap_or(u16::MAX);
                if icmp::frag_needed(frame, mtu, &mut self.icmp)
                    && shared
                        .tap
                        .write_parts(&[0; VNET_HDR_LEN], &self.icmp, TAP_PATIENCE)
                        .is_ok()
                {
                    shared.counters.drop(EngineDrop::TooBigAnswered);
                } else {
                    shared.counters.drop(EngineDrop::TooBig);
                }
            }
            _ => shared.counters.drop(EngineDrop::TooBig),
        }
    }

    /// Cuts an offload record (a super-frame) that does not fit `limit` into pieces of
    /// whole segments: super-frames where two segments or more fit, else single
    /// segments sent as plain frames with their checksum completed.
    fn split(
        &mut self,
        shared: &Shared,
        entry: &PeerEntry,
        copy: OutFrame,
        record: &[u8],
        limit: usize,
    ) {
        let meta = VnetHdr::from_wire(record[..VNET_HDR_LEN].try_into().expect("checked"));
        let frame = &record[VNET_HDR_LEN..];
        if !meta.is_gso() {
            // Metadata without segmentation never needs more than a plain record.
            shared.counters.drop(EngineDrop::TooBig);
            return;
        }
        let with_meta = limit.saturating_sub(VNET_HDR_LEN);
        let mss = usize::from(meta.gso_size).max(1);
        let multi = with_meta.saturating_sub(usize::from(meta.hdr_len)) / mss >= 2;
        let max_frame = if multi { with_meta } else { entry.max_record() };
        let (arena, frames) = (&mut self.arena, &mut self.frames);
        let result = offload::split_gso(&meta, frame, max_frame, &mut self.scratch, |h, piece| {
            if h.is_gso() {
                let mut wire = [0u8; VNET_HDR_LEN];
                h.write_wire(&mut wire);
                let at = push_arena(arena, frames, copy, &wire);
                arena.extend_from_slice(piece);
                extend_last(frames, at, arena.len() - at);
            } else {
                // One segment: a plain frame, its checksum completed.
                let plain = OutFrame {
                    offload: false,
                    ..copy
                };
                let at = push_arena(arena, frames, plain, piece);
                let mut h = *h;
                offload::complete_checksum(&mut h, &mut arena[at..]);
            }
        });
        if result.is_err() {
            shared.counters.drop(EngineDrop::TooBig);
        }
    }

    /// Packs the copies added since the last flush into datagrams, per next hop and
    /// kind in the order they were added, seals and sends them.
    fn flush<'a>(
        &mut self,
        shared: &Shared,
        table: &PeerTable,
        batch: impl Fn(u32, bool) -> &'a [u8],
    ) {
        // Group by next hop and kind; the sort is stable, so frames keep their order.
        self.frames.sort_by_key(|f| (f.hop, f.offload));
        let mut i = 0;
        while i < self.frames.len() {
            let key = (self.frames[i].hop, self.frames[i].offload);
            let end = i + self.frames[i..]
                .iter()
                .take_while(|f| (f.hop, f.offload) == key)
                .count();
            let entry = table.peers.get(&key.0);
            match entry.and_then(|e| e.addr.map(|a| (e, a))) {
                Some((entry, addr)) => self.pack(shared, entry, addr, i..end, &batch),
                None => {
                    for _ in i..end {
                        shared.counters.drop(EngineDrop::NoAddress);
                    }
                }
            }
            i = end;
        }
        self.send(shared);
        self.clear();
    }

    fn pack<'a>(
        &mut self,
        shared: &Shared,
        entry: &PeerEntry,
        addr: SocketAddrV4,
        range: std::ops::Range<usize>,
        batch: &impl Fn(u32, bool) -> &'a [u8],
    ) {
        let offload = self.frames[range.start].offload;
        let max_datagram = if offload {
            entry.max_big_datagram()
        } else {
            entry.max_datagram
        };
        let mut i = range.start;
        while i < range.end {
            if self.queue.is_full() {
                self.send(shared);
            }
            let buf = self.queue.next_buf().expect("the queue was just emptied");
            let Ok(enc) = SleeveEncoder::new(buf, shared.local, max_datagram, entry.protection())
            else {
                shared.counters.drop(EngineDrop::TooBig);
                i += 1;
                continue;
            };
            let mut enc = if offload { enc.offload() } else { enc };
            while i < range.end {
                let f = self.frames[i];
                let bytes = match f.src {
                    Src::Batch(n) => batch(n, f.offload),
                    Src::Arena(at, len) => &self.arena[at as usize..(at + len) as usize],
                };
                if enc.push(f.tag, bytes).is_ok() {
                    i += 1;
                } else if enc.is_empty() {
                    // Cannot happen: `add` checked the size. Count it all the same.
                    shared.counters.drop(EngineDrop::TooBig);
                    i += 1;
                } else {
                    break;
                }
            }
            if enc.is_empty() {
                continue;
            }
            let sealed = match &entry.crypto {
                Some(c) => {
                    let mut send = c.send.lock().unwrap_or_else(PoisonError::into_inner);
                    enc.finish(Some(&mut send)).map(<[u8]>::len)
                }
                None => enc.finish(None).map(<[u8]>::len),
            };
            match sealed {
                Ok(len) => self.queue.commit(len, addr),
                Err(err) => {
                    tracing::warn!(%err, "cannot seal a datagram");
                    shared.counters.drop(EngineDrop::SendFailed);
                }
            }
        }
    }

    fn send(&mut self, shared: &Shared) {
        if self.queue.is_empty() {
            return;
        }
        let n = self.queue.len() as u64;
        let mut failed = 0u64;
        let mut too_big: Option<(SocketAddrV4, usize)> = None;
        shared.socket.send(&mut self.queue, |_, len, to, err| {
            failed += 1;
            if err.raw_os_error() == Some(libc::EMSGSIZE) {
                too_big = Some((to, len));
            } else {
                tracing::debug!(%to, %err, "datagram not sent");
            }
        });
        let c = &shared.counters;
        c.datagrams_sent.fetch_add(n - failed, Ordering::Relaxed);
        for _ in 0..failed {
            c.drop(EngineDrop::SendFailed);
        }
        if let Some((to, size)) = too_big {
            // Tell the path thread: the kernel knows the path is smaller now.
            let table = shared
                .table
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some((peer, _)) = table.peers.iter().find(|(_, e)| e.addr == Some(to)) {
                shared.ctl(Ctl::TooBig { peer: *peer, size });
            }
        }
    }
}

/// Appends `bytes` to the arena as a new copy like `copy`; returns where it starts.
fn push_arena(
    arena: &mut Vec<u8>,
    frames: &mut Vec<OutFrame>,
    copy: OutFrame,
    bytes: &[u8],
) -> usize {
    let at = arena.len();
    arena.extend_from_slice(bytes);
    frames.push(OutFrame {
        src: Src::Arena(at as u32, bytes.len() as u32),
        ..copy
    });
    at
}

/// Makes the last copy cover `len` arena bytes from `at` (after appending to it).
fn extend_last(frames: &mut [OutFrame], at: usize, len: usize) {
    if let Some(last) = frames.last_mut() {
        last.src = Src::Arena(at as u32, len as u32);
    }
}

// ----- the TAP thread -----

/// Reads a batch of frames from the TAP, each `[virtio-net header][frame]`. A frame
/// with a checksum left to offload but no segmentation gets its checksum completed
/// here (it then travels as a plain frame, without metadata: the container MTU leaves
/// no room for it); a super-frame gets its header rewritten in wire order.
/// The TAP-to-sleeve path's buffers; each packet thread has one.
struct TapSide {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    gso: Vec<bool>,
    table: (u64, Arc<PeerTable>),
    out: Out,
    decision: Decision,
    decided: Vec<(u32, PeerName, FrameTag)>,
}

impl TapSide {
    fn new(batch: usize, max_frame: usize) -> Self {
        Self {
            bufs: (0..batch)
                .map(|_| vec![0u8; VNET_HDR_LEN + max_frame].into_boxed_slice())
                .collect(),
            lens: vec![0; batch],
            gso: vec![false; batch],
            table: (0, Arc::new(PeerTable::default())),
            out: Out::new(MAX_DATAGRAM),
            decision: Decision::new(),
            decided: Vec::with_capacity(batch * 2),
        }
    }

    /// Reads what the TAP has (up to a batch), forwards and sends it; returns how
    /// many frames. Call with the TAP's order lock held.
    fn run(&mut self, shared: &Shared) -> usize {
        let mut n = 0;
        while n < self.bufs.len() {
            match shared.tap.read(&mut self.bufs[n]) {
                Ok(len) if len > VNET_HDR_LEN => {
                    let buf = &mut self.bufs[n];
                    let mut meta =
                        VnetHdr::from_native(buf[..VNET_HDR_LEN].try_into().expect("checked"));
                    self.gso[n] = meta.is_gso();
                    if self.gso[n] {
                        let mut wire = [0u8; VNET_HDR_LEN];
                        meta.write_wire(&mut wire);
                        buf[..VNET_HDR_LEN].copy_from_slice(&wire);
                    } else if meta.needs_csum() {
                        offload::complete_checksum(&mut meta, &mut buf[VNET_HDR_LEN..len]);
                    }
                    self.lens[n] = len;
                    n += 1;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    tracing::error!(%err, "reading the TAP device failed");
                    std::thread::sleep(IDLE);
                    break;
                }
            }
        }
        if n == 0 {
            return 0;
        }
        shared.table.refresh(&mut self.table);
        let now = Instant::now();
        self.decided.clear();
        {
            let mut fwd = shared
                .forwarder
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for i in 0..n {
                fwd.handle_tap_frame(
                    &self.bufs[i][VNET_HDR_LEN..self.lens[i]],
                    now,
                    &mut self.decision,
                );
                for o in &self.decision.outputs {
                    self.decided.push((i as u32, o.next_hop, o.tag));
                }
            }
        }
        let (bufs, lens) = (&self.bufs, &self.lens);
        let record = |i: u32, offload: bool| {
            let start = if offload { 0 } else { VNET_HDR_LEN };
            &bufs[i as usize][start..lens[i as usize]]
        };
        for &(i, hop, tag) in &self.decided {
            let offload = self.gso[i as usize];
            let copy = OutFrame {
                hop,
                src: Src::Batch(i),
                tag,
                offload,
            };
            self.out
                .add(shared, &self.table.1, copy, record(i, offload), true);
        }
        self.out.flush(shared, &self.table.1, record);
        n
    }
}

/// Which descriptor a packet thread sleeps on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primary {
    Tap,
    Udp,
}

/// A packet thread: sleeps on its primary descriptor and serves it. The socket's
/// thread, after writing frames into the TAP, also serves the TAP if no one else is
/// (its order lock is free, so frames of one direction never overtake each other):
/// the kernel often answers a frame within the write (an echo reply, a TCP ACK, the
/// next TCP segments an ACK lets go), and the answer then leaves without waking the TAP
/// thread: one wake-up less per request and reply. (Spinning for replies from afar was
/// tried too: on a 2-core machine it cost throughput and gained no latency.)
fn packet_thread(shared: &Shared, primary: Primary, max_frame: usize) {
    let (tap_batch, udp_batch) = match primary {
        Primary::Tap => (BATCH, 0),
        Primary::Udp => (SECONDARY_BATCH, BATCH),
    };
    let mut tap = TapSide::new(tap_batch, max_frame);
    let mut udp = (udp_batch > 0).then(|| UdpSide::new(udp_batch));
    while !shared.stop.load(Ordering::Relaxed) {
        let ready = match primary {
            Primary::Tap => poll_readable(&shared.tap, IDLE),
            Primary::Udp => poll_readable(&shared.socket, IDLE),
        };
        if !matches!(ready, Ok(true)) {
            continue;
        }
        loop {
            let done = match (primary, &mut udp) {
                (Primary::Tap, _) | (Primary::Udp, None) => {
                    let _order = lock(&shared.tap_order);
                    tap.run(shared)
                }
                (Primary::Udp, Some(udp)) => {
                    let injected = {
                        let _order = lock(&shared.udp_order);
                        udp.run(shared)
                    };
                    if injected > 0
                        && let Ok(_order) = shared.tap_order.try_lock()
                    {
                        tap.run(shared);
                    }
                    injected
                }
            };
            if done == 0 || shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ----- the UDP thread -----

/// A frame of a received datagram: where its record is, who sent the datagram, its
/// tag, and whether the record starts with offload metadata.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    datagram: u32,
    at: u32,
    len: u32,
    from: PeerName,
    tag: FrameTag,
    offload: bool,
}

impl InFrame {
    /// The Ethernet frame inside the record.
    fn frame<'a>(&self, rq: &'a RecvQueue) -> &'a [u8] {
        let skip = if self.offload { VNET_HDR_LEN } else { 0 };
        &self.record(rq)[skip..]
    }

    fn record<'a>(&self, rq: &'a RecvQueue) -> &'a [u8] {
        &rq.bytes(self.datagram as usize)[self.at as usize..(self.at + self.len) as usize]
    }
}

/// The sleeve-to-TAP path's buffers; each packet thread has one.
struct UdpSide {
    rq: RecvQueue,
    table: (u64, Arc<PeerTable>),
    out: Out,
    decision: Decision,
    frames: Vec<InFrame>,
    relays: Vec<(u32, PeerName, FrameTag)>,
    inject: Vec<u32>,
}

impl UdpSide {
    fn new(batch: usize) -> Self {
        Self {
            rq: RecvQueue::new(batch, RECV_BUF),
            table: (0, Arc::new(PeerTable::default())),
            out: Out::new(MAX_DATAGRAM),
            decision: Decision::new(),
            frames: Vec::with_capacity(batch * 4),
            relays: Vec::with_capacity(batch * 4),
            inject: Vec::with_capacity(batch * 4),
        }
    }

    /// Receives what the socket has (up to a batch, without waiting), opens, forwards,
    /// injects and relays it; returns how many datagrams. Call with the socket's order
    /// lock held.
    fn run(&mut self, shared: &Shared) -> usize {
        let n = match shared.socket.recv(&mut self.rq, false) {
            Ok(n) => n,
            Err(err) => {
                tracing::error!(%err, "receiving on the data socket failed");
                std::thread::sleep(IDLE);
                return 0;
            }
        };
        if n == 0 {
            return 0;
        }
        let rq = &mut self.rq;
        shared.table.refresh(&mut self.table);
        let now = Instant::now();
        let now_ms = shared.ms_since_epoch(now);
        self.frames.clear();
        let c = &shared.counters;
        c.datagrams_received.fetch_add(n as u64, Ordering::Relaxed);
        for d in 0..n {
            let (dg, from, truncated) = rq.datagram(d);
            c.datagram_bytes_received
                .fetch_add(dg.len() as u64, Ordering::Relaxed);
            if truncated {
                c.reject(Reject::Truncated);
                continue;
            }
            open_one(
                shared,
                &self.table.1,
                d as u32,
                dg,
                from,
                now_ms,
                &mut self.frames,
            );
        }
        if self.frames.is_empty() {
            return n;
        }
        let rq = &self.rq;
        self.relays.clear();
        self.inject.clear();
        {
            let mut fwd = shared
                .forwarder
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (k, f) in self.frames.iter().enumerate() {
                fwd.handle_sleeve_frame(f.from, f.tag, f.frame(rq), now, &mut self.decision);
                if self.decision.inject {
                    self.inject.push(k as u32);
                }
                for o in &self.decision.outputs {
                    self.relays.push((k as u32, o.next_hop, o.tag));
                }
            }
        }
        for &k in &self.inject {
            let f = &self.frames[k as usize];
            let mut native = [0u8; VNET_HDR_LEN];
            if f.offload {
                let record = f.record(rq);
                VnetHdr::from_wire(record[..VNET_HDR_LEN].try_into().expect("checked"))
                    .write_native(&mut native);
            }
            if shared
                .tap
                .write_parts(&native, f.frame(rq), TAP_PATIENCE)
                .is_err()
            {
                c.drop(EngineDrop::TapWriteFailed);
            }
        }
        if !self.relays.is_empty() {
            let frames = &self.frames;
            let record = |k: u32, _offload: bool| frames[k as usize].record(rq);
            for &(k, hop, tag) in &self.relays {
                let copy = OutFrame {
                    hop,
                    src: Src::Batch(k),
                    tag,
                    offload: frames[k as usize].offload,
                };
                self.out
                    .add(shared, &self.table.1, copy, record(k, copy.offload), false);
            }
            self.out.flush(shared, &self.table.1, record);
        }
        n
    }
}

/// Opens datagram `d` (in place) and records its frames or passes on its control
/// message; counts what it rejects.
fn open_one(
    shared: &Shared,
    table: &PeerTable,
    d: u32,
    dg: &mut [u8],
    from: SocketAddrV4,
    now_ms: u64,
    frames: &mut Vec<InFrame>,
) {
    let c = &shared.counters;
    let header = match Header::parse(dg) {
        Ok(h) => h,
        Err(err) => return c.reject(Reject::Codec(err.as_str())),
    };
    let peer = header.sender;
    let Some(entry) = table.peers.get(&peer) else {
        return c.reject(Reject::UnknownSender);
    };
    let base = dg.as_ptr() as usize;
    let opened = match &entry.crypto {
        Some(crypto) => {
            let mut recv = crypto.recv.lock().unwrap_or_else(PoisonError::into_inner);
            sleeve::open(dg, Some(&mut recv))
        }
        None => sleeve::open(dg, None),
    };
    let opened = match opened {
        Ok(o) => o,
        Err(err) => return c.reject(Reject::Codec(err.as_str())),
    };
    let clear = entry.crypto.is_none();
    let offload = opened.header.kind == Kind::OffloadFrames;
    match opened.body {
        Body::Frames(list) => {
            // Without keys the address is all that vouches for the sender.
            if clear && entry.addr != Some(from) {
                return c.reject(Reject::WrongAddress);
            }
            entry.last_rx.store(now_ms, Ordering::Relaxed);
            for f in list {
                frames.push(InFrame {
                    datagram: d,
                    at: (f.payload.as_ptr() as usize - base) as u32,
                    len: f.payload.len() as u32,
                    from: peer,
                    tag: f.tag,
                    offload,
                });
            }
        }
        Body::Control(Control::Heartbeat { connection }) => {
            if connection != entry.conn_uid {
                return c.reject(Reject::StaleConnection);
            }
            entry.last_rx.store(now_ms, Ordering::Relaxed);
            shared.ctl(Ctl::Heartbeat { peer, from });
        }
        Body::Control(Control::PmtuProbe { size }) => {
            if clear && entry.addr != Some(from) {
                return c.reject(Reject::WrongAddress);
            }
            entry.last_rx.store(now_ms, Ordering::Relaxed);
            shared.ctl(Ctl::Probe { peer, size, from });
        }
        Body::Control(Control::PmtuAck { size }) => {
            if clear && entry.addr != Some(from) {
                return c.reject(Reject::WrongAddress);
            }
            entry.last_rx.store(now_ms, Ordering::Relaxed);
            shared.ctl(Ctl::Ack { peer, size });
        }
    }
}

// ----- the path thread -----

struct Conn {
    path: PathState,
    crypto: Option<Arc<PeerCrypto>>,
    last_rx: Arc<AtomicU64>,
    /// `last_rx` as last fed to the path.
    seen_rx: u64,
}

fn path_thread(
    shared: &Shared,
    config: &EngineConfig,
    ctl: &std_mpsc::Receiver<Ctl>,
    events: &mpsc::UnboundedSender<EngineEvent>,
) {
    let mut conns: BTreeMap<PeerName, Conn> = BTreeMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut scratch = Vec::new();
    let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
    let mut fwd_events = Vec::new();
    loop {
        let now = Instant::now();
        let deadline = conns
            .values()
            .filter_map(|c| c.path.poll_timeout())
            .chain([next_sweep])
            .min()
            .unwrap_or(next_sweep);
        let wait = deadline.saturating_duration_since(now).min(IDLE);
        let mut changed = false;
        match ctl.recv_timeout(wait) {
            Ok(Ctl::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(msg) => {
                changed |= handle_ctl(config, &mut conns, msg);
                // Take whatever else is queued before running the timers.
                while let Ok(msg) = ctl.try_recv() {
                    if matches!(msg, Ctl::Stop) {
                        return;
                    }
                    changed |= handle_ctl(config, &mut conns, msg);
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = now + SWEEP_INTERVAL;
            shared
                .forwarder
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .handle_timeout(now);
        }
        log_forwarder_events(shared, &mut fwd_events);
        for (peer, conn) in &mut conns {
            // Frames count as hearing the peer as much as heartbeats do.
            let last = conn.last_rx.load(Ordering::Relaxed);
            if last > conn.seen_rx {
                conn.seen_rx = last;
                conn.path
                    .handle_datagram(shared.epoch + Duration::from_millis(last));
            }
            conn.path.handle_timeout(now);
            changed |= drain_path(shared, *peer, conn, &mut buf, &mut scratch, events);
        }
        if changed {
            publish(shared, &conns);
        }
    }
}

/// Logs what the forwarder learned: new MACs, and MACs claimed by another owner than
/// before (a container moved, or two claim one MAC: the latest claim wins). Taken out
/// under the lock, logged after it.
fn log_forwarder_events(shared: &Shared, events: &mut Vec<weave_router::Event>) {
    {
        let mut fwd = shared
            .forwarder
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(event) = fwd.poll_event() {
            events.push(event);
        }
    }
    let owner = |o: &weave_router::Owner| match o {
        weave_router::Owner::Local => "this host".to_owned(),
        weave_router::Owner::Remote(peer) => format!("peer {peer}"),
    };
    for event in events.drain(..) {
        match event {
            weave_router::Event::MacDiscovered { mac, owner: o } => {
                tracing::info!("discovered MAC {mac} at {}", owner(&o));
            }
            weave_router::Event::MacMoved { mac, from, to } => {
                tracing::warn!(
                    "MAC {mac} claimed by {} while known at {}: the latest claim wins",
                    owner(&to),
                    owner(&from)
                );
            }
        }
    }
}

/// Handles one command; true if the peer table must be rebuilt.
fn handle_ctl(config: &EngineConfig, conns: &mut BTreeMap<PeerName, Conn>, msg: Ctl) -> bool {
    let now = Instant::now();
    match msg {
        Ctl::PeerUp {
            peer,
            conn_uid,
            addr,
            keys,
        } => {
            let crypto = keys.map(|k| {
                let (send, recv) = sleeve::split(&k);
                Arc::new(PeerCrypto {
                    send: Mutex::new(send),
                    recv: Mutex::new(recv),
                })
            });
            let path = PathState::new(
                config.path.clone(),
                conn_uid,
                addr.map(SocketAddr::V4),
                config.max_datagram,
                now,
            );
            conns.insert(
                peer,
                Conn {
                    path,
                    crypto,
                    last_rx: Arc::new(AtomicU64::new(0)),
                    seen_rx: 0,
                },
            );
            true
        }
        Ctl::PeerDown { peer, conn_uid } => {
            if conns
                .get(&peer)
                .is_some_and(|c| c.path.conn_uid() == conn_uid)
            {
                conns.remove(&peer);
                return true;
            }
            false
        }
        Ctl::Report { peer, report } => {
            if let Some(conn) = conns.get_mut(&peer)
                && conn.path.conn_uid() == report.conn_uid
            {
                conn.path.handle_report(report.heard, now);
            }
            false
        }
        Ctl::Heartbeat { peer, from } => {
            if let Some(conn) = conns.get_mut(&peer) {
                conn.path.handle_heartbeat(SocketAddr::V4(from), now);
            }
            false
        }
        Ctl::Probe { peer, size, from } => {
            if let Some(conn) = conns.get_mut(&peer) {
                conn.path.handle_probe(size, SocketAddr::V4(from));
            }
            false
        }
        Ctl::Ack { peer, size } => {
            if let Some(conn) = conns.get_mut(&peer) {
                conn.path.handle_ack(size, now);
            }
            false
        }
        Ctl::TooBig { peer, size } => {
            if let Some(conn) = conns.get_mut(&peer) {
                conn.path
                    .handle_too_big(u16::try_from(size).unwrap_or(u16::MAX), now);
            }
            false
        }
        Ctl::Stop => false,
    }
}

/// Sends what the path asks for and reports its events; true if the table changed.
fn drain_path(
    shared: &Shared,
    peer: PeerName,
    conn: &mut Conn,
    buf: &mut [u8],
    scratch: &mut Vec<u8>,
    events: &mpsc::UnboundedSender<EngineEvent>,
) -> bool {
    let now = Instant::now();
    while let Some(t) = conn.path.poll_transmit() {
        // PMTU probes need Don't Fragment, which the data socket does not set.
        let (to, control, df) = match t {
            Transmit::Heartbeat { to, connection } => {
                (to, Control::Heartbeat { connection }, false)
            }
            Transmit::Probe { to, size } => (to, Control::PmtuProbe { size }, true),
            Transmit::FragProbe { to, size } => (to, Control::PmtuProbe { size }, false),
            Transmit::Ack { to, size } => (to, Control::PmtuAck { size }, false),
        };
        let SocketAddr::V4(to) = to else { continue };
        let encoded = match &conn.crypto {
            Some(c) => {
                let mut send = c.send.lock().unwrap_or_else(PoisonError::into_inner);
                sleeve::encode_control(buf, shared.local, control, Some(&mut send))
            }
            None => sleeve::encode_control(buf, shared.local, control, None),
        };
        let datagram = match encoded {
            Ok(d) => d,
            Err(err) => {
                tracing::debug!(%peer, %err, "control datagram not built");
                continue;
            }
        };
        let sent = if df {
            shared.probe.send(datagram, to, scratch)
        } else {
            shared.socket.send_to(datagram, to)
        };
        match sent {
            Ok(()) => {
                shared
                    .counters
                    .datagrams_sent
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                if let Control::PmtuProbe { size } = control {
                    conn.path.handle_too_big(size, now);
                }
            }
            Err(err) => tracing::debug!(%peer, %to, %err, "control datagram not sent"),
        }
    }
    let mut changed = false;
    while let Some(event) = conn.path.poll_event() {
        match event {
            PathEvent::Tell { heard } => {
                let report = PathReport {
                    conn_uid: conn.path.conn_uid(),
                    heard,
                };
                let _ = events.send(EngineEvent::Tell { peer, report });
            }
            PathEvent::Established(established) => {
                tracing::info!(%peer, established, "UDP path");
                let _ = events.send(EngineEvent::Established {
                    peer,
                    conn_uid: conn.path.conn_uid(),
                    established,
                });
                changed = true;
            }
            PathEvent::Address(addr) => {
                tracing::info!(%peer, %addr, "UDP address");
                changed = true;
            }
            PathEvent::Mtu(size) => {
                tracing::info!(%peer, datagram = size, "path MTU verified");
                changed = true;
            }
            PathEvent::Fragmentation(ok) => {
                tracing::info!(%peer, fragments_pass = ok, "super-frames travel whole: {ok}");
                changed = true;
            }
        }
    }
    changed
}

/// Rebuilds the peer table and the status from the paths.
fn publish(shared: &Shared, conns: &BTreeMap<PeerName, Conn>) {
    let mut table = PeerTable::default();
    let mut status = BTreeMap::new();
    for (peer, conn) in conns {
        let addr = match conn.path.addr() {
            Some(SocketAddr::V4(a)) => Some(a),
            _ => None,
        };
        let entry = PeerEntry {
            conn_uid: conn.path.conn_uid(),
            addr,
            max_datagram: usize::from(conn.path.max_datagram()),
            fragments: conn.path.allows_fragments(),
            crypto: conn.crypto.clone(),
            last_rx: conn.last_rx.clone(),
        };
        status.insert(
            *peer,
            PathStatus {
                conn_uid: entry.conn_uid,
                addr: conn.path.addr(),
                encrypted: entry.crypto.is_some(),
                established: conn.path.is_established(),
                pmtu: conn.path.pmtu(),
                max_frame: entry.max_record(),
                fragments: entry.fragments,
                fast: false,
                fastdp: None,
            },
        );
        table.peers.insert(*peer, entry);
    }
    shared.table.publish(table);
    *shared.status.lock().unwrap_or_else(PoisonError::into_inner) = status;
}
