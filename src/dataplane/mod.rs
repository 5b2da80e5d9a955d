//! The data plane: Ethernet frames between hosts over the sleeve (UDP 6783), encrypted
//! when a password is set, relayed through intermediate peers.
//!
//! At start it plumbs the host (the `weave` bridge, the router's TAP port on it, the
//! firewall rules that let bridged traffic through a DROP forwarding policy), picks the
//! overlay MTU from the underlay, binds the UDP socket and starts the [`engine`]'s
//! threads. The event loop feeds it connections, path reports and routes from the mesh,
//! and gets back [`EngineEvent`]s (tell a peer we hear it; a connection's UDP path is
//! established or lost).

mod engine;
mod fastpath;
mod routes;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use weave_mesh::PeerName;
use weave_router::sleeve::{ETHERNET_HEADER_LEN, IPV4_UDP_OVERHEAD};
use weave_router::{Forwarder, ForwarderConfig, PathConfig, Protection};

pub(crate) use engine::{EngineEvent, PathStatus};
pub(crate) use routes::snapshot;

use crate::report::{DataPlaneReport, PeerTraffic};
use crate::sys::{
    DataSocket, ForwardRules, Netlink, ProbeSocket, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4,
    TUN_F_TSO6, TapOptions, attach_tap,
};
use engine::{Engine, EngineConfig};
use fastpath::FastPath;

/// The bridge containers are plugged into, as Weave named it.
pub(crate) const BRIDGE: &str = "weave";
/// The router's port on the bridge.
pub(crate) const TAP: &str = "vethwe-tap";
/// Socket buffers (Weave's defaults lost 13-20 % of datagrams; wireguard-go uses 7 MB).
const SOCKET_BUFFER: usize = 8 << 20;
/// The underlay MTU when nothing better is known.
const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// How to start the data plane.
#[derive(Debug, Clone)]
pub(crate) struct DataplaneConfig {
    pub(crate) local: PeerName,
    /// The address the control port is bound to (`--host`), if any.
    pub(crate) host: Option<IpAddr>,
    pub(crate) port: u16,
    /// `--mtu`: the overlay MTU, instead of one derived from the underlay.
    pub(crate) mtu: Option<u16>,
    pub(crate) encrypted: bool,
    /// Use the kernel's VXLAN fast path where it works (never with encryption: the
    /// kernel here has no AEAD for ESP, and VXLAN itself is clear text).
    pub(crate) fastdp: bool,
}

/// The running data plane.
pub(crate) struct Dataplane {
    engine: Engine,
    /// The kernel fast path, when enabled and the kernel has VXLAN.
    fast: Option<FastPath>,
    /// Why there is none: `off` (`--no-fastdp`), `encrypted` (a password: VXLAN is
    /// clear text), `unavailable` (the kernel refused the devices).
    fast_off: Option<&'static str>,
    netlink: Netlink,
    overlay_mtu: u16,
    underlay_mtu: u32,
    protection: Protection,
}

impl Dataplane {
    /// Plumbs the host and starts the engine; `events` gets what the engine reports.
    pub(crate) async fn start(
        config: &DataplaneConfig,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<Self> {
        let netlink = Netlink::connect().context("cannot talk to the kernel over netlink")?;
        let underlay_mtu = underlay_mtu(&netlink, config.host).await;
        let protection = if config.encrypted {
            Protection::Sealed
        } else {
            Protection::Clear
        };
        let overlay_mtu = overlay_mtu(config.mtu, underlay_mtu, protection);
        netlink
            .ensure_bridge(BRIDGE, Some(u32::from(overlay_mtu)))
            .await
            .with_context(|| format!("cannot set up bridge {BRIDGE}"))?;
        if let Err(err) = netlink.set_alias(BRIDGE, &peer_alias(config.local)).await {
            tracing::warn!(%err, "cannot note our peer name on the bridge");
        }
        ForwardRules::new(BRIDGE)
            .install()
            .await
            .context("cannot let the bridge's traffic through the firewall")?;
        let tap = attach_tap(
            &netlink,
            None,
            BRIDGE,
            TAP,
            u32::from(overlay_mtu),
            TapOptions {
                vnet_hdr: true,
                multi_queue: false,
            },
        )
        .await
        .with_context(|| format!("cannot create the router's port {TAP}"))?
        .into_fd()?;
        // Checksums and TCP segmentation are left to whoever finally needs them: frames
        // cross the data plane as super-frames of up to 64 KiB.
        tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            .context("cannot enable offloads on the TAP device")?;
        let bind_ip = match config.host {
            Some(IpAddr::V4(ip)) => ip,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        let bind = SocketAddrV4::new(bind_ip, config.port);
        let (socket, info) =
            DataSocket::bind(bind, SOCKET_BUFFER, Duration::from_millis(200), false).with_context(
                || {
                    format!(
                        "cannot listen on UDP port {} (is another weave running?)",
                        config.port
                    )
                },
            )?;
        let probe = ProbeSocket::open(bind).context("cannot open a socket for PMTU probes")?;
        let max_datagram = usize::try_from(underlay_mtu)
            .unwrap_or(usize::MAX)
            .saturating_sub(IPV4_UDP_OVERHEAD);
        let engine_config = EngineConfig {
            local: config.local,
            max_datagram,
            // Super-frames of up to 64 KiB, plus headers.
            max_tap_frame: (usize::from(overlay_mtu) + ETHERNET_HEADER_LEN + 4).max(65_536 + 256),
            path: PathConfig::default(),
        };
        let forwarder = Forwarder::new(config.local, ForwarderConfig::default());
        let engine = Engine::start(engine_config, forwarder, socket, probe, tap, events)
            .context("cannot start the data plane threads")?;
        let mut fast_off = if !config.fastdp {
            Some("off")
        } else if config.encrypted {
            Some("encrypted")
        } else {
            None
        };
        let fast = if fast_off.is_none() {
            match FastPath::start(
                &netlink,
                config.local,
                config.host,
                config.port,
                overlay_mtu,
                engine.view(),
            )
            .await
            {
                Ok(fast) => Some(fast),
                Err(err) => {
                    tracing::warn!("no fast path, frames go over the sleeve only: {err:#}");
                    fast_off = Some("unavailable");
                    None
                }
            }
        } else {
            None
        };
        tracing::info!(
            overlay_mtu,
            underlay_mtu,
            fastdp = fast.is_some(),
            recv_buffer = info.recv_buffer,
            send_buffer = info.send_buffer,
            "data plane up on bridge {BRIDGE} (port {TAP}), UDP {bind}"
        );
        Ok(Self {
            engine,
            fast,
            fast_off,
            netlink,
            overlay_mtu,
            underlay_mtu,
            protection,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn overlay_mtu(&self) -> u16 {
        self.overlay_mtu
    }

    /// Stops the threads (the TAP device goes with them); with `reset`, also removes the
    /// bridge and the firewall rules. Containers' interfaces stay unless the bridge goes
    /// (their host ends then lose their bridge, nothing more).
    pub(crate) async fn shutdown(mut self, reset: bool) {
        if let Some(fast) = self.fast.take() {
            fast.shutdown().await;
        }
        self.engine.stop();
        drop(self.engine);
        if reset {
            match self.netlink.delete_link(TAP).await {
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "reset: cannot remove {TAP}"),
            }
            match self.netlink.delete_link(BRIDGE).await {
                Ok(_) => tracing::info!("reset: bridge {BRIDGE} removed"),
                Err(err) => tracing::warn!(%err, "reset: cannot remove bridge {BRIDGE}"),
            }
            if let Err(err) = ForwardRules::new(BRIDGE).remove().await {
                tracing::warn!(%err, "reset: cannot remove the firewall rules");
            }
        }
    }

    /// The data plane's part of `weave report`.
    pub(crate) fn report(&self, nicknames: &BTreeMap<PeerName, String>) -> DataPlaneReport {
        let fwd = self.engine.forwarder();
        let tap = *fwd.tap_counters();
        let stats = fwd.stats();
        let mut dropped: BTreeMap<String, u64> = BTreeMap::new();
        for reason in weave_router::DropReason::ALL {
            let n = tap.dropped.get(reason)
                + fwd
                    .peer_counters()
                    .values()
                    .map(|c| c.dropped.get(reason))
                    .sum::<u64>();
            dropped.insert(reason.as_str().to_owned(), n);
        }
        let peers = fwd
            .peer_counters()
            .iter()
            .map(|(peer, c)| PeerTraffic {
                name: peer.to_string(),
                nick_name: nicknames.get(peer).cloned().unwrap_or_default(),
                forwarded_frames: c.forwarded_frames,
                forwarded_bytes: c.forwarded_bytes,
                relayed_frames: c.relayed_frames,
                relayed_bytes: c.relayed_bytes,
                received_frames: c.received_frames,
                received_bytes: c.received_bytes,
                injected_frames: c.injected_frames,
                injected_bytes: c.injected_bytes,
                dropped_frames: c.dropped.total(),
                dropped_reasons: weave_router::DropReason::ALL
                    .into_iter()
                    .map(|r| (r.as_str().to_owned(), c.dropped.get(r)))
                    .filter(|(_, n)| *n > 0)
                    .collect(),
            })
            .collect();
        drop(fwd);
        let counters = self.engine.counters();
        for (reason, n) in counters.drops() {
            dropped.insert(reason.as_str().to_owned(), n);
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        DataPlaneReport {
            overlay_mtu: self.overlay_mtu,
            underlay_mtu: self.underlay_mtu,
            encrypted: self.protection == Protection::Sealed,
            captured_frames: tap.captured_frames,
            captured_bytes: tap.captured_bytes,
            macs: stats.macs,
            datagrams_sent: load(&counters.datagrams_sent),
            datagrams_received: load(&counters.datagrams_received),
            datagram_bytes_received: load(&counters.datagram_bytes_received),
            fragmented_frames: load(&counters.fragmented_frames),
            dropped_frames: dropped,
            rejected_datagrams: counters
                .rejects()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            peers,
        }
    }

    /// The UDP path of each connection.
    /// Every connection's UDP path, with where its fast path stands.
    pub(crate) fn paths(&self) -> BTreeMap<PeerName, PathStatus> {
        let mut paths = self.engine.paths();
        let standing = self
            .fast
            .as_ref()
            .map(FastPath::standing)
            .unwrap_or_default();
        for (peer, path) in &mut paths {
            path.fastdp = self.fast_off.or_else(|| standing.get(peer).copied());
        }
        paths
    }
}

/// The bridge notes which peer it belongs to in its interface alias, so that a daemon
/// whose state directory was lost while the bridge and its containers stayed (not
/// `weave reset`, which deletes the bridge) comes back as the same peer: its IPAM
/// ranges, its DNS records and its place in the mesh are still its own. (Weave Net
/// derived the peer name from the bridge's MAC address for the same reason.)
const PEER_ALIAS_PREFIX: &str = "weave peer ";

fn peer_alias(name: PeerName) -> String {
    format!("{PEER_ALIAS_PREFIX}{name}")
}

fn peer_from_alias(alias: &str) -> Option<PeerName> {
    alias.strip_prefix(PEER_ALIAS_PREFIX)?.parse().ok()
}

/// The peer name the bridge remembers from an earlier run, if there is a bridge.
pub(crate) async fn remembered_peer_name() -> Option<PeerName> {
    let netlink = Netlink::connect().ok()?;
    let bridge = netlink.link(BRIDGE).await.ok()??;
    peer_from_alias(bridge.alias.as_deref()?)
}

/// The overlay MTU: `--mtu` if given, else what fits one frame per datagram on the
/// underlay after IPv4, UDP and sleeve overheads (and the inner Ethernet header).
pub(crate) fn overlay_mtu(
    requested: Option<u16>,
    underlay_mtu: u32,
    protection: Protection,
) -> u16 {
    if let Some(mtu) = requested {
        return mtu;
    }
    let underlay = usize::try_from(underlay_mtu).unwrap_or(usize::MAX);
    let mtu = protection.container_mtu(underlay).max(MIN_OVERLAY_MTU);
    u16::try_from(mtu).unwrap_or(u16::MAX)
}

/// `weave reset` with no daemon running: removes what a daemon left on the host (it
/// was stopped with `weave stop`, or died): the container veths it made, the TAP, the
/// bridge (and the exposed addresses on it) and the firewall rules. What is absent is
/// skipped; the first failure is returned after trying everything.
pub(crate) async fn remove_leftovers() -> Result<()> {
    let netlink = Netlink::connect().context("cannot talk to the kernel over netlink")?;
    let mut first_err: Option<anyhow::Error> = None;
    let mut note = |err: anyhow::Error| {
        if first_err.is_none() {
            first_err = Some(err);
        }
    };
    let links = netlink.links().await.context("cannot list interfaces")?;
    for link in links.iter().filter(|l| {
        l.kind.as_deref() == Some("veth") && crate::daemon::is_container_ifname(&l.name)
    }) {
        if let Err(err) = netlink.delete_link(&link.name).await {
            note(anyhow::Error::new(err).context(format!("cannot remove {}", link.name)));
        }
    }
    fastpath::remove_devices(&netlink).await;
    for name in [TAP, BRIDGE] {
        if let Err(err) = netlink.delete_link(name).await {
            note(anyhow::Error::new(err).context(format!("cannot remove {name}")));
        }
    }
    if let Err(err) = ForwardRules::new(BRIDGE).remove().await {
        note(anyhow::Error::new(err).context("cannot remove the firewall rules"));
    }
    first_err.map_or(Ok(()), Err)
}

/// IPv4's minimum MTU; never give containers less.
const MIN_OVERLAY_MTU: usize = 576;

/// The MTU of the interface carrying `host` if given, else of the default route's,
/// else 1500.
async fn underlay_mtu(netlink: &Netlink, host: Option<IpAddr>) -> u32 {
    if let Some(IpAddr::V4(ip)) = host
        && let Ok(links) = netlink.links().await
    {
        for link in links {
            if let Ok(addrs) = netlink.addresses(&link.name).await
                && addrs.iter().any(|a| a.addr() == ip)
            {
                return link.mtu;
            }
        }
    }
    if let Ok(routes) = netlink.routes().await
        && let Some(oif) = routes
            .iter()
            .find(|r| r.dest.prefix_len() == 0)
            .and_then(|r| r.oif)
        && let Ok(Some(link)) = netlink.link_by_index(oif).await
        && link.mtu > 0
    {
        return link.mtu;
    }
    DEFAULT_UNDERLAY_MTU
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_alias_round_trips_a_peer_name() {
        let name = PeerName::from_u64(0x02ab_cdef_0123);
        assert_eq!(peer_alias(name), "weave peer 02:ab:cd:ef:01:23");
        assert_eq!(peer_from_alias(&peer_alias(name)), Some(name));
        for other in ["", "weave peer ", "weave peer zz", "someone else's bridge"] {
            assert_eq!(peer_from_alias(other), None, "{other:?}");
        }
    }

    #[test]
    fn overlay_mtu_from_the_underlay_or_the_flag() {
        assert_eq!(overlay_mtu(None, 1500, Protection::Clear), 1436);
        assert_eq!(overlay_mtu(None, 1500, Protection::Sealed), 1412);
        assert_eq!(overlay_mtu(None, 9000, Protection::Clear), 8936);
        assert_eq!(overlay_mtu(Some(8000), 1500, Protection::Sealed), 8000);
        assert_eq!(overlay_mtu(None, 600, Protection::Sealed), 576);
    }
}
