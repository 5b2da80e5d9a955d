//! Links, addresses and routes over rtnetlink, in one network namespace per connection.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

use super::error::{SysError, is_errno};
use super::netns::Netns;

/// Longest interface name the kernel accepts (IFNAMSIZ less the NUL).
pub(crate) const MAX_IFNAME: usize = 15;

/// The flood-list entry for `remote` on VXLAN device `index`: the all-zero MAC, handled
/// by the device itself (`self`), not the bridge above it.
fn flood_entry(index: u32, remote: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            remote,
        )));
    msg
}

/// Checks an interface name the way the kernel's `dev_valid_name` does.
pub(crate) fn check_ifname(name: &str) -> Result<(), SysError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(SysError::InvalidName(name.to_owned()))
    }
}

/// What we read back about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) mtu: u32,
    pub(crate) mac: Option<[u8; 6]>,
    /// Administratively up (IFF_UP).
    pub(crate) up: bool,
    /// The bridge (or other controller) it is a port of.
    pub(crate) master: Option<u32>,
    /// The link kind ("bridge", "veth", "tun"), absent for loopback and the like.
    pub(crate) kind: Option<String>,
    /// The interface alias (`ip link set NAME alias TEXT`), if set.
    pub(crate) alias: Option<String>,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut info = Self {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            alias: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(mac) => info.mac = <[u8; 6]>::try_from(&mac[..]).ok(),
                LinkAttribute::Controller(idx) if *idx != 0 => info.master = Some(*idx),
                LinkAttribute::IfAlias(alias) if !alias.is_empty() => {
                    info.alias = Some(alias.clone());
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let NlLinkInfo::Kind(kind) = i {
                            info.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        info
    }
}

/// An IPv4 route as read back from the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route4 {
    pub(crate) dest: Ipv4Net,
    pub(crate) oif: Option<u32>,
    pub(crate) gateway: Option<Ipv4Addr>,
}

/// The far end of a new veth pair: its name, and the namespace it is created in.
#[derive(Clone, Debug)]
pub(crate) struct VethPeer<'a> {
    pub(crate) name: &'a str,
    /// Created directly in this namespace (no window where it sits in ours).
    pub(crate) netns: Option<&'a Netns>,
    pub(crate) mac: Option<[u8; 6]>,
}

/// An rtnetlink connection bound to one network namespace. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Connects in the calling thread's namespace. Needs a tokio runtime: the
    /// connection runs as a task on it and ends when the last clone is dropped.
    pub(crate) fn connect() -> Result<Self, SysError> {
        let (conn, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(|source| SysError::Io {
                context: "opening a netlink socket".into(),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// Connects inside `ns`: the socket is made on a thread in `ns` (which binds it
    /// there for good), then driven by the caller's runtime.
    pub(crate) async fn connect_in(ns: &Netns) -> Result<Self, SysError> {
        let rt = tokio::runtime::Handle::current();
        let (conn, handle, _unsolicited) = ns
            .run(move || {
                // Register the socket with the caller's reactor from the namespace thread.
                let _guard = rt.enter();
                rtnetlink::new_connection()
            })
            .await?
            .map_err(|source| SysError::Io {
                context: format!("opening a netlink socket in {}", ns.label()),
                source,
            })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// The interface called `name`, if any.
    pub(crate) async fn link(&self, name: &str) -> Result<Option<LinkInfo>, SysError> {
        check_ifname(name)?;
        let req = self.handle.link().get().match_name(name).execute();
        Self::first_link(req, &format!("looking up {name}")).await
    }

    /// The interface with index `index`, if any.
    pub(crate) async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, SysError> {
        let req = self.handle.link().get().match_index(index).execute();
        Self::first_link(req, &format!("looking up interface #{index}")).await
    }

    async fn first_link(
        mut req: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + Unpin,
        op: &str,
    ) -> Result<Option<LinkInfo>, SysError> {
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(e) => Err(SysError::netlink(op, e)),
        }
    }

    /// Every interface in the namespace.
    pub(crate) async fn links(&self) -> Result<Vec<LinkInfo>, SysError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| SysError::netlink("listing interfaces", e))?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// The interface called `name`, or an error saying it is missing.
    pub(crate) async fn require(&self, name: &str) -> Result<LinkInfo, SysError> {
        self.link(name)
            .await?
            .ok_or_else(|| SysError::NoSuchLink(name.to_owned()))
    }

    /// Creates bridge `name` if absent, sets its MTU (when given) and brings it up.
    /// Idempotent; fails if `name` exists as something other than a bridge.
    pub(crate) async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
    ) -> Result<LinkInfo, SysError> {
        check_ifname(name)?;
        if self.link(name).await?.is_none() {
            let mut msg = LinkBridge::new(name);
            if let Some(mtu) = mtu {
                msg = msg.mtu(mtu);
            }
            match self.handle.link().add(msg.build()).execute().await {
                // Lost a race with another creator: fall through to the checks below.
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) if is_errno(&e, libc::EOPNOTSUPP) => {
                    return Err(SysError::Unsupported {
                        kind: "bridge",
                        source: super::error::netlink_io_error(e),
                    });
                }
                Err(e) => return Err(SysError::netlink(format!("creating bridge {name}"), e)),
                Ok(()) => {}
            }
        }
        let link = self.require(name).await?;
        if link.kind.as_deref() != Some("bridge") {
            return Err(SysError::WrongKind {
                name: name.to_owned(),
                expected: "bridge",
                found: link.kind.unwrap_or_else(|| "device of unknown kind".into()),
            });
        }
        if let Some(mtu) = mtu
            && link.mtu != mtu
        {
            self.set_mtu(name, mtu).await?;
        }
        if !link.up {
            self.set_up(name).await?;
        }
        self.require(name).await
    }

    /// Deletes interface `name` (for a veth, both ends go). Returns whether it existed.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<bool, SysError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(false),
            Err(e) => Err(SysError::netlink(format!("deleting {name}"), e)),
        }
    }

    async fn set(
        &self,
        name: &str,
        op: &str,
        f: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<(), SysError> {
        let link = self.require(name).await?;
        let msg = f(LinkUnspec::new_with_index(link.index)).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| SysError::netlink(format!("{op} {name}"), e))
    }

    /// Brings `name` up.
    pub(crate) async fn set_up(&self, name: &str) -> Result<(), SysError> {
        self.set(name, "bringing up", LinkMessageBuilder::up).await
    }

    /// Takes `name` down.
    pub(crate) async fn set_down(&self, name: &str) -> Result<(), SysError> {
        self.set(name, "taking down", LinkMessageBuilder::down)
            .await
    }

    /// Sets the MTU of `name`.
    pub(crate) async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), SysError> {
        self.set(name, &format!("setting MTU {mtu} on"), |b| b.mtu(mtu))
            .await
    }

    /// Sets the MAC address of `name`.
    pub(crate) async fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<(), SysError> {
        self.set(name, "setting the MAC of", |b| b.address(mac.to_vec()))
            .await
    }

    /// Sets the interface alias of `name`.
    pub(crate) async fn set_alias(&self, name: &str, alias: &str) -> Result<(), SysError> {
        let alias = alias.to_owned();
        self.set(name, "setting the alias of", |b| b.alias(alias))
            .await
    }

    /// Makes `name` a port of bridge `bridge`.
    pub(crate) async fn set_master(&self, name: &str, bridge: &str) -> Result<(), SysError> {
        let br = self.require(bridge).await?;
        self.set(name, &format!("attaching to {bridge}"), |b| {
            b.controller(br.index)
        })
        .await
    }

    /// Takes `name` off its bridge.
    pub(crate) async fn set_nomaster(&self, name: &str) -> Result<(), SysError> {
        self.set(name, "detaching", LinkMessageBuilder::nocontroller)
            .await
    }

    /// Creates a veth pair `name` (here) and `peer.name` (in `peer.netns`, or here),
    /// both with `mtu`. Fails if either name is taken.
    pub(crate) async fn create_veth(
        &self,
        name: &str,
        peer: &VethPeer<'_>,
        mtu: u32,
    ) -> Result<(), SysError> {
        check_ifname(name)?;
        check_ifname(peer.name)?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.name)
            .mtu(mtu);
        if let Some(ns) = peer.netns {
            // The kernel dups the fd while handling the request; `ns` outlives the call.
            peer_msg = peer_msg.setns_by_fd(ns.as_fd().as_raw_fd());
        }
        if let Some(mac) = peer.mac {
            peer_msg = peer_msg.address(mac.to_vec());
        }
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            if is_errno(&e, libc::EOPNOTSUPP) {
                SysError::Unsupported {
                    kind: "veth",
                    source: super::error::netlink_io_error(e),
                }
            } else {
                SysError::netlink(format!("creating veth {name}/{}", peer.name), e)
            }
        })
    }

    /// Moves `name` into `ns`, renamed to `new_name` there if given (in the same
    /// request, so it never clashes with a name left behind here).
    pub(crate) async fn move_to_netns(
        &self,
        name: &str,
        ns: &Netns,
        new_name: Option<&str>,
    ) -> Result<(), SysError> {
        if let Some(new) = new_name {
            check_ifname(new)?;
        }
        let fd = ns.as_fd().as_raw_fd();
        self.set(name, &format!("moving to {}", ns.label()), |b| {
            let b = b.setns_by_fd(fd);
            match new_name {
                Some(new) => b.name(new),
                None => b,
            }
        })
        .await
    }

    /// Adds `addr` (address and prefix) to `name`. Returns false if it was already there.
    pub(crate) async fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<bool, SysError> {
        let link = self.require(name).await?;
        match self
            .handle
            .address()
            .add(link.index, IpAddr::V4(addr.addr()), addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(SysError::netlink(format!("adding {addr} to {name}"), e)),
        }
    }

    /// Removes `addr` from `name`. Returns false if it was not there.
    pub(crate) async fn del_address(&self, name: &str, addr: Ipv4Net) -> Result<bool, SysError> {
        let link = self.require(name).await?;
        let found = self
            .address_messages(link.index)
            .await?
            .into_iter()
            .find(|msg| Self::address_of(msg) == Some(addr));
        let Some(msg) = found else {
            return Ok(false);
        };
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EADDRNOTAVAIL) => Ok(false),
            Err(e) => Err(SysError::netlink(format!("removing {addr} from {name}"), e)),
        }
    }

    /// The IPv4 addresses on `name`.
    pub(crate) async fn addresses(&self, name: &str) -> Result<Vec<Ipv4Net>, SysError> {
        let link = self.require(name).await?;
        Ok(self
            .address_messages(link.index)
            .await?
            .iter()
            .filter_map(Self::address_of)
            .collect())
    }

    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>, SysError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| SysError::netlink(format!("listing addresses of #{index}"), e))
    }

    fn address_of(msg: &AddressMessage) -> Option<Ipv4Net> {
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on p2p links).
        msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => {
                Ipv4Net::new(*ip, msg.header.prefix_len).ok()
            }
            _ => None,
        })
    }

    /// Adds a route to `dest` out of `dev` (via `gateway` if given) to the main table.
    /// Returns false if an identical route was already there.
    pub(crate) async fn add_route(
        &self,
        dest: Ipv4Net,
        dev: &str,
        gateway: Option<Ipv4Addr>,
    ) -> Result<bool, SysError> {
        let link = self.require(dev).await?;
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest.network(), dest.prefix_len())
            .output_interface(link.index);
        builder = match gateway {
            Some(gw) => builder.gateway(gw),
            None => builder.scope(RouteScope::Link),
        };
        match self.handle.route().add(builder.build()).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, libc::EEXIST) => Ok(false),
            Err(e) => Err(SysError::netlink(
                format!("adding route {dest} dev {dev}"),
                e,
            )),
        }
    }

    /// Creates VXLAN device `name` on UDP `port` with network identifier `vni` (any
    /// remote may send to it; it sends to the entries of its forwarding table),
    /// replacing one left by an earlier run so its table starts empty. With
    /// `learning`, it learns which remote each source MAC lives behind.
    pub(crate) async fn create_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        learning: bool,
        mtu: u32,
    ) -> Result<LinkInfo, SysError> {
        check_ifname(name)?;
        self.delete_link(name).await?;
        let msg = LinkVxlan::new(name, vni)
            .port(port)
            .learning(learning)
            .mtu(mtu)
            .build();
        match self.handle.link().add(msg).execute().await {
            Err(e) if is_errno(&e, libc::EOPNOTSUPP) => {
                return Err(SysError::Unsupported {
                    kind: "vxlan",
                    source: super::error::netlink_io_error(e),
                });
            }
            Err(e) => {
                return Err(SysError::netlink(
                    format!("creating VXLAN device {name}"),
                    e,
                ));
            }
            Ok(()) => {}
        }
        self.set_up(name).await?;
        self.require(name).await
    }

    async fn set_bridge_port(
        &self,
        name: &str,
        op: &str,
        f: impl FnOnce(LinkMessageBuilder<LinkBridgePort>) -> LinkMessageBuilder<LinkBridgePort>,
    ) -> Result<(), SysError> {
        let link = self.require(name).await?;
        let msg = f(LinkBridgePort::new(link.index)).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| SysError::netlink(format!("{op} {name}"), e))
    }

    /// Isolates bridge port `name`: the bridge forwards nothing between two isolated
    /// ports (frames still reach every other port).
    pub(crate) async fn set_port_isolated(&self, name: &str, on: bool) -> Result<(), SysError> {
        self.set_bridge_port(name, "isolating bridge port", |b| {
            b.append_info_data(InfoBridgePort::Isolated(on))
        })
        .await
    }

    /// Forgets the MACs the bridge learned behind port `name`.
    pub(crate) async fn flush_port_fdb(&self, name: &str) -> Result<(), SysError> {
        self.set_bridge_port(name, "flushing the MACs learned on", |b| b.fdb_flush())
            .await
    }

    /// Adds `remote` to the flood list of VXLAN device `name` (what
    /// `bridge fdb append 00:00:00:00:00:00 dev NAME dst REMOTE` does).
    pub(crate) async fn vxlan_add_remote(
        &self,
        name: &str,
        remote: Ipv4Addr,
    ) -> Result<(), SysError> {
        let link = self.require(name).await?;
        let msg = flood_entry(link.index, remote);
        self.neighbour_request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
        .or_else(|e| {
            if is_errno(&e, libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| SysError::netlink(format!("adding {remote} to {name}'s flood list"), e))
    }

    /// Takes `remote` off the flood list of VXLAN device `name` and forgets the MACs
    /// it learned behind `remote`.
    pub(crate) async fn vxlan_remove_remote(
        &self,
        name: &str,
        remote: Ipv4Addr,
    ) -> Result<(), SysError> {
        let link = self.require(name).await?;
        let mut doomed = vec![flood_entry(link.index, remote)];
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = dump
            .try_next()
            .await
            .map_err(|e| SysError::netlink(format!("listing {name}'s forwarding table"), e))?
        {
            let learned_behind_remote = msg.header.ifindex == link.index
                && msg.header.state != NeighbourState::Permanent
                && msg.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) if *ip == remote)
                });
            if learned_behind_remote {
                let mut entry = msg.clone();
                entry.header.flags = NeighbourFlags::Own;
                doomed.push(entry);
            }
        }
        for msg in doomed {
            match self
                .neighbour_request(
                    RouteNetlinkMessage::DelNeighbour(msg),
                    NLM_F_REQUEST | NLM_F_ACK,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(e) => {
                    return Err(SysError::netlink(
                        format!("removing {remote} from {name}'s forwarding table"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// rtnetlink's neighbour requests cannot append (several flood entries share the
    /// all-zero MAC), so these go as raw requests.
    async fn neighbour_request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), rtnetlink::Error> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(message) = futures::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }

    /// The IPv4 routes of the main table.
    pub(crate) async fn routes(&self) -> Result<Vec<Route4>, SysError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| SysError::netlink("listing routes", e))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                let table = m.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                });
                table.unwrap_or(u32::from(m.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
            })
            .filter_map(|m| {
                let mut dest = Ipv4Addr::UNSPECIFIED;
                let mut route = Route4 {
                    dest: Ipv4Net::default(),
                    oif: None,
                    gateway: None,
                };
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => dest = *ip,
                        RouteAttribute::Oif(i) => route.oif = Some(*i),
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                            route.gateway = Some(*gw)
                        }
                        _ => {}
                    }
                }
                route.dest = Ipv4Net::new(dest, m.header.destination_prefix_length).ok()?;
                Some(route)
            })
            .collect())
    }
}

/// A change to a bridge's or a VXLAN device's forwarding table, as the kernel
/// announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FdbChange {
    /// Learned or refreshed (true), or forgotten.
    pub(crate) added: bool,
    /// The bridge port, or the VXLAN device for its own entries.
    pub(crate) ifindex: u32,
    pub(crate) mac: [u8; 6],
    /// The remote endpoint, in a VXLAN device's own entries.
    pub(crate) remote: Option<Ipv4Addr>,
    /// The bridge, in a bridge port's entries.
    pub(crate) master: Option<u32>,
}

/// How many announcements may wait unread; beyond that they are dropped (the watcher
/// is for the log, and a flood of changes must not grow memory).
const FDB_BACKLOG: usize = 1024;

/// Subscribes to forwarding-table changes in the calling thread's namespace (netlink
/// neighbour notifications of the bridge family). Needs a tokio runtime.
pub(crate) fn watch_fdb() -> Result<tokio::sync::mpsc::Receiver<FdbChange>, SysError> {
    use rtnetlink::sys::AsyncSocket;
    let io = |context: &str, source| SysError::Io {
        context: context.into(),
        source,
    };
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().map_err(|e| io("opening a netlink socket", e))?;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            rtnetlink::constants::RTMGRP_NEIGH,
        ))
        .map_err(|e| io("subscribing to forwarding-table changes", e))?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel(FDB_BACKLOG);
    tokio::spawn(async move {
        // The connection lives as long as a handle does.
        let _handle = handle;
        while let Some((msg, _)) = futures::StreamExt::next(&mut messages).await {
            let (added, neigh) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => (true, n),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => (false, n),
                _ => continue,
            };
            let Some(change) = FdbChange::from_message(added, &neigh) else {
                continue;
            };
            match tx.try_send(change) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Ok(rx)
}

impl FdbChange {
    fn from_message(added: bool, msg: &NeighbourMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Bridge {
            return None;
        }
        let mut change = Self {
            added,
            ifindex: msg.header.ifindex,
            mac: [0; 6],
            remote: None,
            master: None,
        };
        let mut has_mac = false;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::LinkLayerAddress(mac) => {
                    if let Ok(mac) = <[u8; 6]>::try_from(&mac[..]) {
                        change.mac = mac;
                        has_mac = true;
                    }
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    change.remote = Some(*ip);
                }
                NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                    change.remote = <[u8; 4]>::try_from(&bytes[..]).ok().map(Ipv4Addr::from);
                }
                NeighbourAttribute::Controller(master) => change.master = Some(*master),
                _ => {}
            }
        }
        has_mac.then_some(change)
    }
}
