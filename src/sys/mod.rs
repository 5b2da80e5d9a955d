//! Host plumbing: the IO edge between the daemon and the Linux network stack.
//!
//! Bridges, veth pairs, addresses and routes over rtnetlink (never by running `ip`);
//! network namespaces, entered per thread; the TAP device the router reads frames from;
//! and the iptables rules that let the bridge's traffic through a DROP forwarding policy.
//! This is the one module allowed `unsafe` (setns, unshare, the TUNSETIFF ioctl, raw
//! read/write on the TAP fd, the data plane's UDP socket with recvmmsg/sendmmsg); each
//! block says why it is sound.
#![allow(unsafe_code)]

mod container;
mod error;
mod firewall;
mod link;
mod netns;
mod packet;
mod tap;
mod udp;

#[cfg(test)]
mod tests;

pub(crate) use container::{
    CONTAINER_IFNAME, VethSpec, attach_tap, attach_veth, detach_veth, expose, hide,
};
pub(crate) use error::SysError;
pub(crate) use firewall::{FORWARD_CHAIN, ForwardRules};
pub(crate) use link::{
    FdbChange, LinkInfo, MAX_IFNAME, Netlink, Route4, VethPeer, check_ifname, watch_fdb,
};
pub(crate) use netns::{NETNS_RUN_DIR, Netns, NsId, NsTarget, process_alive};
pub(crate) use packet::PacketSocket;
pub(crate) use tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, Tap, TapFd, TapOptions};
pub(crate) use udp::{DataSocket, ProbeSocket, RecvQueue, SendQueue, SocketInfo, poll_readable};
