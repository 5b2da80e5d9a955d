//! Joining a container's namespace to the bridge through a veth pair, and the bridge's
//! own setup (TAP port, host address for `weave expose`).

use ipnet::Ipv4Net;

use super::error::SysError;
use super::link::{Netlink, VethPeer};
use super::netns::Netns;
use super::tap::{Tap, TapOptions};

/// Name of the container end of the veth, as Weave Net used.
pub(crate) const CONTAINER_IFNAME: &str = "ethwe";

/// How to plumb one container.
#[derive(Clone, Debug)]
pub(crate) struct VethSpec<'a> {
    /// The host end, a port of the bridge (e.g. "vethwepl1234"; at most 15 bytes).
    pub(crate) host_name: &'a str,
    /// The container end's name inside its namespace ([`CONTAINER_IFNAME`]).
    pub(crate) inner_name: &'a str,
    pub(crate) mtu: u32,
    /// The container end's MAC; the kernel picks a random one when `None`.
    pub(crate) mac: Option<[u8; 6]>,
    /// Addresses on the container end, with their prefix (which adds the subnet route).
    pub(crate) addresses: &'a [Ipv4Net],
    /// Extra routes out of the container end, e.g. 224.0.0.0/4 for multicast.
    pub(crate) routes: &'a [Ipv4Net],
}

/// Creates the veth pair with one end already inside `ns`, puts the host end on
/// `bridge` and up, then configures the inside end (up, addresses, routes). On failure
/// the pair is deleted again, so a retry starts clean.
pub(crate) async fn attach_veth(
    host: &Netlink,
    bridge: &str,
    ns: &Netns,
    spec: &VethSpec<'_>,
) -> Result<(), SysError> {
    host.require(bridge).await?;
    let peer = VethPeer {
        name: spec.inner_name,
        netns: Some(ns),
        mac: spec.mac,
    };
    host.create_veth(spec.host_name, &peer, spec.mtu).await?;
    let result = configure(host, bridge, ns, spec).await;
    if result.is_err() {
        // Best effort: deleting the host end removes the pair; the first error matters.
        let _ = host.delete_link(spec.host_name).await;
    }
    result
}

async fn configure(
    host: &Netlink,
    bridge: &str,
    ns: &Netns,
    spec: &VethSpec<'_>,
) -> Result<(), SysError> {
    host.set_master(spec.host_name, bridge).await?;
    host.set_up(spec.host_name).await?;
    let inner = Netlink::connect_in(ns).await?;
    inner.set_up(spec.inner_name).await?;
    for addr in spec.addresses {
        inner.add_address(spec.inner_name, *addr).await?;
    }
    for route in spec.routes {
        inner.add_route(*route, spec.inner_name, None).await?;
    }
    Ok(())
}

/// Removes a container's veth pair by its host end. Returns whether it existed.
pub(crate) async fn detach_veth(host: &Netlink, host_name: &str) -> Result<bool, SysError> {
    host.delete_link(host_name).await
}

/// Creates TAP `name` in the namespace `host` is connected to (`ns`), puts it on
/// `bridge` with `mtu` and brings it up: the router's port.
pub(crate) async fn attach_tap(
    host: &Netlink,
    ns: Option<&Netns>,
    bridge: &str,
    name: &str,
    mtu: u32,
    opts: TapOptions,
) -> Result<Tap, SysError> {
    host.require(bridge).await?;
    let tap = match ns {
        Some(ns) => Tap::create_in(ns, name, opts).await?,
        None => Tap::create(name, opts)?,
    };
    host.set_mtu(tap.name(), mtu).await?;
    host.set_master(tap.name(), bridge).await?;
    host.set_up(tap.name()).await?;
    Ok(tap)
}

/// Puts `addr` on the bridge so the host itself is on the overlay (`weave expose`).
/// Returns false if it was already there.
pub(crate) async fn expose(host: &Netlink, bridge: &str, addr: Ipv4Net) -> Result<bool, SysError> {
    host.add_address(bridge, addr).await
}

/// Takes `addr` off the bridge (`weave hide`). Returns false if it was not there.
pub(crate) async fn hide(host: &Netlink, bridge: &str, addr: Ipv4Net) -> Result<bool, SysError> {
    host.del_address(bridge, addr).await
}
