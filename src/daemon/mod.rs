//! The daemon: one tokio event loop that feeds sockets and timers into the mesh core and
//! carries out what it asks for (write, dial, close), answers the HTTP API's requests,
//! and persists what must survive a restart.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use weave_mesh::PeerName;

/// Everything `weave router` / `weave launch` configure.
#[derive(Debug, Clone)]
pub(crate) struct DaemonConfig {
    /// Peers to connect to (`host[:port]`, not yet normalised).
    pub(crate) peers: Vec<String>,
    pub(crate) password: Option<String>,
    /// Overrides the persisted or generated peer name.
    pub(crate) name: Option<PeerName>,
    /// Defaults to the hostname.
    pub(crate) nickname: Option<String>,
    /// Address to bind the control (and data) port to; all addresses if `None`.
    pub(crate) host: Option<IpAddr>,
    pub(crate) port: u16,
    pub(crate) discovery: bool,
    /// 0 = unlimited.
    pub(crate) conn_limit: usize,
    /// `--mtu`: the overlay MTU instead of one derived from the underlay.
    pub(crate) mtu: Option<u16>,
    /// Use the kernel's VXLAN fast path where it works (not with a password).
    pub(crate) fastdp: bool,
    pub(crate) state_dir: PathBuf,
    /// The HTTP API (127.0.0.1:6784).
    pub(crate) http_addr: SocketAddr,
    /// Read-only status and Prometheus metrics (127.0.0.1:6782).
    pub(crate) status_addr: SocketAddr,
    /// `--ipalloc-range`, `--ipalloc-default-subnet`, `--ipalloc-init`.
    pub(crate) ipam: ipam::IpamSettings,
    /// `--no-dns`, `--dns-domain`, `--dns-ttl`, `--dns-listen-address`.
    pub(crate) dns: dns::DnsSettings,
}

mod containers;
pub(crate) mod dns;
mod event_loop;
pub(crate) mod ipam;
pub(crate) mod state;

pub(crate) use containers::is_our_ifname as is_container_ifname;
pub(crate) use event_loop::run;
