//! The kernel fast path: frames between containers on directly connected peers cross
//! the kernel's VXLAN device and never come up to user space.
//!
//! Plumbing: `vxlan-6784` (UDP port = sleeve port + 1, learning which remote each MAC
//! lives behind) is a port of the bridge next to the router's TAP. Both ports are
//! *isolated*, so the bridge never passes a frame from one to the other: what arrives
//! by VXLAN is for local containers only, and what the sleeve injects never leaves by
//! VXLAN. `vxlan-6784-p`, off the bridge, takes the probes (a second VNI on the same
//! port), which a packet socket reads.
//!
//! The task here probes every peer whose sleeve path is established and unencrypted
//! (the pure logic is `weave_router::fastpath`). When a peer's fast path comes up its
//! address joins the VXLAN device's flood list and the forwarder stops sending it
//! sleeve copies; when it goes down (a probe lost three times, the connection gone)
//! the reverse, and the kernel forgets the MACs it learned behind it. Each change
//! flushes the MACs the bridge learned on both ports, so no frame keeps following the
//! path it took before.
//!
//! The task also publishes where each peer's fast path stands (`weave status
//! connections` shows why a connection is on the sleeve), and watches the kernel's MAC
//! learning over netlink: frames between fast peers never reach the forwarder, so this
//! is where a MAC claimed by two hosts is noticed and logged.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;
use weave_mesh::PeerName;
use weave_router::Mac;
use weave_router::fastpath::{
    DATA_VNI, FastPathConfig, FastPathEvent, FastPaths, MacClaim, MacClaims, MacHolder,
    PROBE_ETHERTYPE, PROBE_VNI, Probe,
};

use super::engine::EngineView;
use super::{BRIDGE, TAP};
use crate::sys::{FdbChange, Netlink, PacketSocket};

/// The VXLAN port on the bridge, as Weave named its fast-path port.
pub(crate) const VXLAN_DEV: &str = "vxlan-6784";
/// The VXLAN device the probes arrive on.
pub(crate) const PROBE_DEV: &str = "vxlan-6784-p";
/// How often the candidates are re-read from the sleeve's paths.
const RECHECK: Duration = Duration::from_millis(500);
/// MACs the kernel's learning is tracked for (the forwarder's table has the same cap).
const MAX_CLAIMS: usize = 8192;
/// A MAC that keeps changing hands is reported at most this often.
const CLAIM_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Per peer with an established path, where its fast path stands (see
/// [`FastPath::standing`]).
type Standings = Arc<Mutex<BTreeMap<PeerName, &'static str>>>;

/// The running fast path; [`FastPath::shutdown`] removes its devices.
pub(crate) struct FastPath {
    task: tokio::task::JoinHandle<()>,
    netlink: Netlink,
    standings: Standings,
}

impl FastPath {
    /// Creates the devices and starts probing. `port` is the sleeve's; the VXLAN
    /// devices listen on the next one. An error leaves nothing behind: the caller
    /// carries on with the sleeve alone.
    pub(crate) async fn start(
        netlink: &Netlink,
        local: PeerName,
        host: Option<IpAddr>,
        port: u16,
        overlay_mtu: u16,
        engine: EngineView,
    ) -> Result<Self> {
        let started = Self::plumb(netlink, host, port, overlay_mtu).await;
        let (probes, sender, vxlan_port, ports) = match started {
            Ok(parts) => parts,
            Err(err) => {
                remove_devices(netlink).await;
                return Err(err);
            }
        };
        let standings = Standings::default();
        // Frames between fast peers never reach the forwarder: the kernel's MAC
        // learning is watched instead, so that MAC conflicts are still reported.
        let fdb = match crate::sys::watch_fdb() {
            Ok(rx) => Some(rx),
            Err(err) => {
                tracing::warn!(%err, "MAC conflicts on the fast path will not be reported");
                None
            }
        };
        let task = tokio::spawn(run(Prober {
            fdb,
            ports,
            claims: MacClaims::new(MAX_CLAIMS),
            reported: std::collections::HashMap::new(),
            core: FastPaths::new(local, FastPathConfig::default()),
            engine,
            netlink: netlink.clone(),
            probes,
            sender,
            sleeve_port: port,
            vxlan_port,
            unplumbed: Vec::new(),
            not_offered: BTreeMap::new(),
            standings: standings.clone(),
        }));
        Ok(Self {
            task,
            netlink: netlink.clone(),
            standings,
        })
    }

    /// Per peer with an established path: `up`, `probing`, `no-probes-from-peer`,
    /// `no-probes-to-peer` (see [`weave_router::fastpath::Standing`]), `port` (its UDP
    /// port is not ours: another `--port`, or a NAT in between), `no-address` (it
    /// dialled us and we have not heard its UDP address yet) or `kernel-refused` (its
    /// flood entry could not be added).
    pub(crate) fn standing(&self) -> BTreeMap<PeerName, &'static str> {
        self.standings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn plumb(
        netlink: &Netlink,
        host: Option<IpAddr>,
        port: u16,
        overlay_mtu: u16,
    ) -> Result<(AsyncFd<PacketSocket>, UdpSocket, u16, OverlayPorts)> {
        let vxlan_port = port
            .checked_add(1)
            .context("no port above the sleeve's for VXLAN")?;
        let vxlan = netlink
            .create_vxlan(
                VXLAN_DEV,
                DATA_VNI,
                vxlan_port,
                true,
                u32::from(overlay_mtu),
            )
            .await
            .with_context(|| format!("cannot create {VXLAN_DEV}"))?;
        netlink.set_master(VXLAN_DEV, BRIDGE).await?;
        netlink.set_port_isolated(VXLAN_DEV, true).await?;
        netlink.set_port_isolated(TAP, true).await?;
        let probe_dev = netlink
            .create_vxlan(PROBE_DEV, PROBE_VNI, vxlan_port, false, 1500)
            .await
            .with_context(|| format!("cannot create {PROBE_DEV}"))?;
        let probes = PacketSocket::bind(probe_dev.index, PROBE_ETHERTYPE)?
            .into_async()
            .context("cannot register the probe socket")?;
        let bind_ip = match host {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        let sender = UdpSocket::bind(SocketAddrV4::new(bind_ip, 0))
            .await
            .context("cannot open a socket to send probes from")?;
        let ports = OverlayPorts {
            bridge: netlink.require(BRIDGE).await?.index,
            tap: netlink.require(TAP).await?.index,
            vxlan: vxlan.index,
        };
        Ok((probes, sender, vxlan_port, ports))
    }

    /// Stops probing and removes the devices (the bridge forgets their MACs with
    /// them, so traffic falls back to the sleeve of whoever still runs).
    pub(crate) async fn shutdown(self) {
        self.task.abort();
        let _ = self.task.await;
        remove_devices(&self.netlink).await;
    }
}

/// Removes the fast path's devices, if there.
pub(crate) async fn remove_devices(netlink: &Netlink) {
    for dev in [VXLAN_DEV, PROBE_DEV] {
        if let Err(err) = netlink.delete_link(dev).await {
            tracing::warn!(%err, "cannot remove {dev}");
        }
    }
}

/// Interface indexes of the bridge and its two overlay ports.
#[derive(Debug, Clone, Copy)]
struct OverlayPorts {
    bridge: u32,
    tap: u32,
    vxlan: u32,
}

struct Prober {
    /// The kernel's forwarding-table changes, if we could subscribe.
    fdb: Option<tokio::sync::mpsc::Receiver<FdbChange>>,
    ports: OverlayPorts,
    claims: MacClaims,
    /// When each MAC's last conflict was reported.
    reported: std::collections::HashMap<Mac, Instant>,
    core: FastPaths,
    engine: EngineView,
    netlink: Netlink,
    probes: AsyncFd<PacketSocket>,
    sender: UdpSocket,
    sleeve_port: u16,
    vxlan_port: u16,
    /// Fast peers whose flood entry the kernel refused: they stay on the sleeve.
    unplumbed: Vec<PeerName>,
    /// Established paths that are no candidates, and why.
    not_offered: BTreeMap<PeerName, &'static str>,
    standings: Standings,
}

impl Prober {
    /// Tracks what the kernel learned: a container port on our bridge, or a MAC the
    /// VXLAN device learned behind a peer; logs new remote MACs and conflicts, as the
    /// forwarder does for the sleeve.
    fn on_fdb_change(&mut self, change: &FdbChange) {
        let mac = Mac(change.mac);
        if mac.is_multicast() || change.mac == [0; 6] {
            return; // flood entries
        }
        let holder = if change.ifindex == self.ports.vxlan && change.master.is_none() {
            match change.remote {
                Some(ip) => MacHolder::Peer(ip),
                None => return,
            }
        } else if change.master == Some(self.ports.bridge)
            && change.ifindex != self.ports.vxlan
            && change.ifindex != self.ports.tap
        {
            MacHolder::ThisHost
        } else {
            return; // the overlay ports' bridge entries: the VXLAN device's own say more
        };
        if !change.added {
            self.claims.forget(mac, holder);
            return;
        }
        let now = Instant::now();
        match self.claims.observe(mac, holder) {
            MacClaim::New => {
                if let MacHolder::Peer(_) = holder {
                    tracing::info!(
                        "discovered MAC {mac} at {} (fast path)",
                        self.holder(holder)
                    );
                }
            }
            MacClaim::Moved { from } => {
                let quiet = self
                    .reported
                    .get(&mac)
                    .is_some_and(|at| now < *at + CLAIM_REPORT_INTERVAL);
                if !quiet {
                    if self.reported.len() >= MAX_CLAIMS {
                        self.reported.clear();
                    }
                    self.reported.insert(mac, now);
                    tracing::warn!(
                        "MAC {mac} claimed by {} while known at {}: the latest claim wins",
                        self.holder(holder),
                        self.holder(from)
                    );
                }
            }
            MacClaim::Same | MacClaim::Untracked => {}
        }
    }

    /// As the forwarder's log names owners: `this host`, `peer NAME`.
    fn holder(&self, holder: MacHolder) -> String {
        match holder {
            MacHolder::ThisHost => "this host".to_owned(),
            MacHolder::Peer(ip) => self
                .core
                .candidates()
                .iter()
                .find(|(_, c)| c.addr == ip)
                .map_or_else(
                    || format!("the peer at {ip}"),
                    |(peer, _)| format!("peer {peer}"),
                ),
        }
    }

    /// Publishes where every established path's fast path stands.
    fn publish(&self, now: Instant) {
        let mut standings = self.not_offered.clone();
        for &peer in self.core.candidates().keys() {
            let standing = if self.unplumbed.contains(&peer) {
                "kernel-refused"
            } else {
                self.core
                    .standing(peer, now)
                    .map_or("probing", |s| s.as_str())
            };
            standings.insert(peer, standing);
        }
        *self
            .standings
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = standings;
    }
}

async fn run(mut p: Prober) {
    let mut frame = [0u8; 256];
    loop {
        let now = Instant::now();
        // Candidates: established, unencrypted sleeve paths to peers listening where
        // we do (the VXLAN port is one above the sleeve's on both ends).
        let mut offered: Vec<(PeerName, Ipv4Addr)> = Vec::new();
        p.not_offered.clear();
        for (peer, path) in p.engine.paths() {
            if !path.established {
                continue;
            }
            let why = match path.addr {
                _ if path.encrypted => "encrypted",
                Some(SocketAddr::V4(a)) if a.port() == p.sleeve_port => {
                    offered.push((peer, *a.ip()));
                    continue;
                }
                Some(_) => "port",
                None => "no-address",
            };
            p.not_offered.insert(peer, why);
        }
        p.core.set_candidates(offered, now);
        let mut outgoing = Vec::new();
        p.core
            .poll_probes(now, |addr, probe| outgoing.push((addr, probe)));
        for (addr, probe) in outgoing {
            let mut buf = [0u8; Probe::VXLAN_LEN];
            let len = probe.encode_vxlan(&mut buf);
            if let Err(err) = p
                .sender
                .try_send_to(&buf[..len], SocketAddr::from((addr, p.vxlan_port)))
            {
                tracing::debug!(%err, %addr, "fast path probe not sent");
            }
        }
        apply_events(&mut p).await;
        p.publish(now);
        let wake = p
            .core
            .poll_timeout()
            .map_or(now + RECHECK, |at| at.min(now + RECHECK));
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            change = next_fdb_change(&mut p.fdb) => match change {
                Some(change) => p.on_fdb_change(&change),
                None => {
                    tracing::warn!("forwarding-table notifications stopped");
                    p.fdb = None;
                }
            },
            ready = p.probes.readable() => {
                let Ok(mut guard) = ready else {
                    tracing::error!("the fast path's probe socket failed; probing stops");
                    return;
                };
                loop {
                    match guard.get_inner().recv(&mut frame) {
                        Ok(n) => match Probe::decode_frame(&frame[..n]) {
                            Ok(probe) => p.core.handle_probe(probe, Instant::now()),
                            Err(err) => tracing::debug!(%err, "not a fast path probe"),
                        },
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(err) => {
                            tracing::warn!(%err, "reading fast path probes");
                            guard.clear_ready();
                            break;
                        }
                    }
                }
                apply_events(&mut p).await;
                p.publish(Instant::now());
            }
        }
    }
}

/// The next forwarding-table change; never, without a subscription.
async fn next_fdb_change(
    fdb: &mut Option<tokio::sync::mpsc::Receiver<FdbChange>>,
) -> Option<FdbChange> {
    match fdb {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Programs the kernel and the forwarder after peers went fast or stopped.
async fn apply_events(p: &mut Prober) {
    let events: Vec<FastPathEvent> = std::iter::from_fn(|| p.core.poll_event()).collect();
    if events.is_empty() {
        return;
    }
    for event in &events {
        match *event {
            FastPathEvent::Up { peer, addr } => {
                tracing::info!(%peer, %addr, "fast path up");
                if let Err(err) = p.netlink.vxlan_add_remote(VXLAN_DEV, addr).await {
                    // Without its flood entry the kernel cannot reach it: keep the sleeve.
                    tracing::warn!(%err, %peer, "cannot add the fast path to {peer}");
                    p.unplumbed.push(peer);
                }
            }
            FastPathEvent::Down { peer, addr } => {
                tracing::info!(%peer, %addr, "fast path down: frames go over the sleeve");
                p.unplumbed.retain(|&q| q != peer);
                if let Err(err) = p.netlink.vxlan_remove_remote(VXLAN_DEV, addr).await {
                    tracing::warn!(%err, %peer, "cannot remove the fast path to {peer}");
                }
            }
        }
    }
    let mut fast = p.core.fast_peers();
    fast.retain(|peer| !p.unplumbed.contains(peer));
    p.engine.set_fast_peers(fast);
    for port in [VXLAN_DEV, TAP] {
        if let Err(err) = p.netlink.flush_port_fdb(port).await {
            tracing::warn!(%err, "cannot flush the MACs learned on {port}");
        }
    }
}
