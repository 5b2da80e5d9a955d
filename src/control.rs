//! Requests from the HTTP API to the daemon's event loop, and their answers.
//!
//! The loop owns all state; the API holds a [`DaemonHandle`] and sends it requests over a
//! channel, each with a oneshot for the answer. That keeps the cores single-threaded.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::report::Report;

pub(crate) mod dns;
pub(crate) mod ipam;

/// What the API can ask of the daemon.
#[derive(Debug)]
pub(crate) enum Request {
    /// The whole state, for `weave status`, `weave report` and the metrics.
    Report(oneshot::Sender<Report>),
    /// Add peers (`host[:port]`), replacing all targets first if `replace`.
    Connect {
        peers: Vec<String>,
        replace: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Forget peers; their connections stay up but are not retried.
    Forget {
        peers: Vec<String>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop the daemon (`weave stop`); `reset` also forgets persisted state.
    Stop {
        reset: bool,
        reply: oneshot::Sender<()>,
    },
    /// Container plumbing (`weave attach`, `detach`, `expose`, `hide`, `ps`).
    Containers(ContainerRequest),
    /// Address allocation (`/ip/...`, `/ring`, `/peer/NAME`, and the container task).
    Ipam(ipam::IpamRequest),
    /// Name records (`/name/...`, `weave dns-*`, and the container task).
    Dns(dns::DnsRequest),
}

/// What the API asks of the container registry; each answers on its oneshot.
#[derive(Debug)]
pub(crate) enum ContainerRequest {
    /// Plumbs a container (or adds addresses to one already attached).
    Attach {
        spec: AttachSpec,
        reply: oneshot::Sender<Result<PsEntry, PlumbError>>,
    },
    /// Takes addresses off a container; all of them and its interface if none given.
    Detach {
        spec: DetachSpec,
        reply: oneshot::Sender<Result<(), PlumbError>>,
    },
    /// Puts addresses on the bridge; answers every address now exposed.
    Expose {
        addrs: Vec<Ipv4Net>,
        reply: oneshot::Sender<Result<Vec<Ipv4Net>, PlumbError>>,
    },
    /// Takes addresses off the bridge; all exposed ones if none given.
    Hide {
        addrs: Vec<Ipv4Net>,
        reply: oneshot::Sender<Result<(), PlumbError>>,
    },
    /// `weave:expose` and the attached containers; only those matching `filter` if any.
    Ps {
        filter: Vec<String>,
        reply: oneshot::Sender<Result<Vec<PsEntry>, PlumbError>>,
    },
}

/// How a request names a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// A namespace made by `ip netns add NAME`, or (with a '/') the path of a namespace
    /// file such as /proc/PID/ns/net or a bind mount of one.
    Netns(String),
    /// The namespace process PID lives in.
    Pid(u32),
    /// A Docker container, by ID (or unique prefix) or name; the daemon asks Docker.
    Container(String),
}

impl Target {
    /// `--netns NAME|PATH`, checked for what can never name a namespace.
    pub(crate) fn netns(value: &str) -> Result<Self, String> {
        let ok = !value.is_empty()
            && !value.contains('\0')
            && value.len() <= 4096
            && (value.contains('/') || (value != "." && value != ".."));
        if ok {
            Ok(Self::Netns(value.to_owned()))
        } else {
            Err(format!("{value:?} is not a namespace name or path"))
        }
    }

    /// `--pid PID`: a positive process ID.
    pub(crate) fn pid(value: &str) -> Result<Self, String> {
        match value.trim().parse::<u32>() {
            Ok(pid) if pid > 0 && i32::try_from(pid).is_ok() => Ok(Self::Pid(pid)),
            _ => Err(format!("{value:?} is not a process ID")),
        }
    }

    /// A Docker container ID or name, as Docker spells them (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
    /// optionally with the leading '/' Docker shows).
    pub(crate) fn container(value: &str) -> Result<Self, String> {
        let name = value.strip_prefix('/').unwrap_or(value);
        let ok = name.len() <= 255
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self::Container(name.to_owned()))
        } else {
            Err(format!("{value:?} is not a Docker container ID or name"))
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Netns(ns) if ns.contains('/') => write!(f, "namespace {ns}"),
            Self::Netns(ns) => write!(f, "netns {ns}"),
            Self::Pid(pid) => write!(f, "pid {pid}"),
            Self::Container(c) => write!(f, "container {c}"),
        }
    }
}

/// `weave attach`: which container, which addresses, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachSpec {
    pub(crate) target: Target,
    /// Empty: the daemon picks (IPAM, a later issue).
    pub(crate) addrs: Vec<Ipv4Net>,
    /// The container's name for DNS (kept with it; DNS comes later).
    pub(crate) name: Option<String>,
    /// Register the name in DNS (`--without-dns` clears it).
    pub(crate) dns: bool,
    /// Add the 224.0.0.0/4 route out of ethwe (`--no-multicast-route` clears it).
    pub(crate) multicast_route: bool,
}

/// `weave detach`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DetachSpec {
    pub(crate) target: Target,
    /// Empty: all of them, and the interface.
    pub(crate) addrs: Vec<Ipv4Net>,
}

/// One line of `weave ps`: an attached container, or `weave:expose` for the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct PsEntry {
    /// The Docker short ID, the netns name or path, `pid:N`, or `weave:expose`.
    pub(crate) id: String,
    /// The MAC of the container's ethwe (the bridge's for `weave:expose`).
    pub(crate) mac: String,
    pub(crate) addrs: Vec<Ipv4Net>,
    /// The name given with `--name`.
    pub(crate) name: Option<String>,
    /// How the container was named when attached (`netns web`, `pid 1234`...).
    pub(crate) target: String,
    /// The host end of its veth (the bridge for `weave:expose`).
    pub(crate) interface: String,
}

/// Why a plumbing request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlumbError {
    /// The request cannot be done as asked (bad target, address in use, namespace gone):
    /// the caller's to fix (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The host refused (netlink, Docker): ours or the system's (HTTP 500).
    #[error("{0}")]
    Failed(String),
}

/// Reads an address for a container or the host: `198.18.0.5/15` or Weave's
/// `ip:198.18.0.5/15`, checked by [`check_host_address`].
pub(crate) fn parse_cidr(text: &str) -> Result<Ipv4Net, String> {
    let text = text.trim();
    if text.starts_with("net:") {
        return Err(format!(
            "{text}: allocating from a subnet needs IPAM, which comes later; give an address such as 198.18.0.5/15"
        ));
    }
    let cidr = text.strip_prefix("ip:").unwrap_or(text);
    let Ok(net) = cidr.parse::<Ipv4Net>() else {
        return Err(match cidr.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => format!("{text}: no prefix length (write it as e.g. {ip}/15)"),
            Ok(IpAddr::V6(_)) => format!("{text}: IPv6 is not supported"),
            Err(_) if cidr.contains(':') => format!("{text}: IPv6 is not supported"),
            Err(_) => format!("{text} is not an address in CIDR form (like 198.18.0.5/15)"),
        });
    };
    check_host_address(net)?;
    Ok(net)
}

/// Refuses what can never be an interface's address on the overlay: special ranges
/// (this-network, loopback, link-local, multicast, reserved), a /0, and the network
/// or broadcast address of its own subnet.
pub(crate) fn check_host_address(net: Ipv4Net) -> Result<(), String> {
    let ip = net.addr();
    let special = |what: &str| Err(format!("{net}: {ip} is {what}, not a host address"));
    let [a, b, ..] = ip.octets();
    if a == 0 {
        return special("in 0.0.0.0/8 (this network)");
    }
    if ip.is_loopback() {
        return special("a loopback address");
    }
    if a == 169 && b == 254 {
        return special("link-local");
    }
    if ip.is_multicast() {
        return special("multicast");
    }
    if a >= 240 {
        return special("reserved (240.0.0.0/4) or broadcast");
    }
    if net.prefix_len() == 0 {
        return Err(format!(
            "{net}: a /0 prefix would route everything to the overlay"
        ));
    }
    if net.prefix_len() <= 30 {
        if ip == net.network() {
            return Err(format!(
                "{net}: {ip} is the network address of {}; give a host address",
                net.trunc()
            ));
        }
        if ip == net.broadcast() {
            return Err(format!(
                "{net}: {ip} is the broadcast address of {}; give a host address",
                net.trunc()
            ));
        }
    }
    Ok(())
}

/// Checks a container's `--name` the way DNS will need it: dot-separated labels of
/// letters, digits and '-' (not at either end), each 1-63 bytes, 253 in all; a final
/// '.' is allowed.
pub(crate) fn check_container_name(name: &str) -> Result<String, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !bare.is_empty() && bare.len() <= 253 && bare.split('.').all(label_ok) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a usable DNS name (letters, digits, '-' and '.', like web or web.weave.local)"
        ))
    }
}

/// The address and prefix as `a.b.c.d/len`.
pub(crate) fn show_addrs(addrs: &[Ipv4Net]) -> String {
    let ips: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    ips.join(" ")
}

/// Just the addresses, space-separated (what `weave attach` and `expose` print).
pub(crate) fn show_ips(addrs: &[Ipv4Net]) -> String {
    let ips: Vec<Ipv4Addr> = addrs.iter().map(Ipv4Net::addr).collect();
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    ips.join(" ")
}

/// The API's handle on the daemon.
#[derive(Debug, Clone)]
pub(crate) struct DaemonHandle {
    tx: mpsc::Sender<Request>,
}

/// The daemon is gone (stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the daemon is shutting down")]
pub(crate) struct Gone;

impl DaemonHandle {
    pub(crate) fn new(tx: mpsc::Sender<Request>) -> Self {
        Self { tx }
    }

    pub(crate) async fn report(&self) -> Result<Report, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Report(reply))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn connect(
        &self,
        peers: Vec<String>,
        replace: bool,
    ) -> Result<Result<(), String>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Connect {
                peers,
                replace,
                reply,
            })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn forget(&self, peers: Vec<String>) -> Result<Result<(), String>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Forget { peers, reply })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Sends a container request made by `make` and waits for its answer.
    async fn containers<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ContainerRequest,
    ) -> Result<T, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Containers(make(reply)))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn attach(
        &self,
        spec: AttachSpec,
    ) -> Result<Result<PsEntry, PlumbError>, Gone> {
        self.containers(|reply| ContainerRequest::Attach { spec, reply })
            .await
    }

    pub(crate) async fn detach(&self, spec: DetachSpec) -> Result<Result<(), PlumbError>, Gone> {
        self.containers(|reply| ContainerRequest::Detach { spec, reply })
            .await
    }

    pub(crate) async fn expose(
        &self,
        addrs: Vec<Ipv4Net>,
    ) -> Result<Result<Vec<Ipv4Net>, PlumbError>, Gone> {
        self.containers(|reply| ContainerRequest::Expose { addrs, reply })
            .await
    }

    pub(crate) async fn hide(&self, addrs: Vec<Ipv4Net>) -> Result<Result<(), PlumbError>, Gone> {
        self.containers(|reply| ContainerRequest::Hide { addrs, reply })
            .await
    }

    pub(crate) async fn ps(
        &self,
        filter: Vec<String>,
    ) -> Result<Result<Vec<PsEntry>, PlumbError>, Gone> {
        self.containers(|reply| ContainerRequest::Ps { filter, reply })
            .await
    }

    /// Resolves once the daemon no longer takes requests (its loop dropped the
    /// receiver): the API's cue to shut down.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    pub(crate) async fn stop(&self, reset: bool) -> Result<(), Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Stop { reset, reply })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_read_and_checked() {
        let ok = |s: &str| parse_cidr(s).expect(s);
        assert_eq!(ok("198.18.0.5/15").to_string(), "198.18.0.5/15");
        assert_eq!(ok(" ip:198.18.0.5/15 ").to_string(), "198.18.0.5/15");
        // /31 and /32 have no network or broadcast address to avoid.
        assert_eq!(ok("198.18.0.0/31").prefix_len(), 31);
        assert_eq!(ok("198.18.0.0/32").prefix_len(), 32);
        assert_eq!(ok("198.18.0.1/30").addr(), Ipv4Addr::new(198, 18, 0, 1));
        let err = |s: &str| parse_cidr(s).expect_err(s);
        for (input, why) in [
            (
                "198.18.0.5",
                "198.18.0.5: no prefix length (write it as e.g. 198.18.0.5/15)",
            ),
            (
                "198.18.0.5/33",
                "198.18.0.5/33 is not an address in CIDR form (like 198.18.0.5/15)",
            ),
            (
                "web",
                "web is not an address in CIDR form (like 198.18.0.5/15)",
            ),
            ("", " is not an address in CIDR form (like 198.18.0.5/15)"),
            ("fd00::1/64", "fd00::1/64: IPv6 is not supported"),
            ("fd00::1", "fd00::1: IPv6 is not supported"),
            (
                "net:198.18.0.0/16",
                "net:198.18.0.0/16: allocating from a subnet needs IPAM",
            ),
            (
                "198.18.0.0/15",
                "198.18.0.0/15: 198.18.0.0 is the network address of 198.18.0.0/15; give a host address",
            ),
            (
                "198.19.255.255/15",
                "198.19.255.255/15: 198.19.255.255 is the broadcast address of 198.18.0.0/15",
            ),
            (
                "198.18.0.1/0",
                "198.18.0.1/0: a /0 prefix would route everything to the overlay",
            ),
            (
                "127.0.0.1/8",
                "127.0.0.1/8: 127.0.0.1 is a loopback address",
            ),
            (
                "169.254.1.1/16",
                "169.254.1.1/16: 169.254.1.1 is link-local",
            ),
            ("224.0.0.1/4", "224.0.0.1/4: 224.0.0.1 is multicast"),
            (
                "255.255.255.255/32",
                "255.255.255.255/32: 255.255.255.255 is reserved",
            ),
            ("0.0.0.1/8", "0.0.0.1/8: 0.0.0.1 is in 0.0.0.0/8"),
        ] {
            let got = err(input);
            assert!(got.starts_with(why), "{input:?}: {got}");
        }
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(Target::netns("web"), Ok(Target::Netns("web".into())));
        assert_eq!(
            Target::netns("/proc/7/ns/net"),
            Ok(Target::Netns("/proc/7/ns/net".into()))
        );
        for bad in ["", ".", "..", "a\0b"] {
            assert!(Target::netns(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Target::pid("42"), Ok(Target::Pid(42)));
        for bad in ["0", "-1", "x", "4294967295", ""] {
            assert!(Target::pid(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Target::container("/db"), Ok(Target::Container("db".into())));
        assert_eq!(
            Target::container("b07565b06c53"),
            Ok(Target::Container("b07565b06c53".into()))
        );
        for bad in ["", "-x", "a b", "a/b", "_x", "x:y"] {
            assert!(Target::container(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Target::Netns("/run/netns/a".into()).to_string(),
            "namespace /run/netns/a"
        );
        assert_eq!(Target::Netns("a".into()).to_string(), "netns a");
    }

    #[test]
    fn container_names_are_dns_names() {
        for ok in ["web", "web-1", "web.weave.local", "web.weave.local.", "a1"] {
            assert_eq!(check_container_name(ok), Ok(ok.to_owned()));
        }
        let long_label = "a".repeat(64);
        for bad in [
            "",
            ".",
            "-web",
            "web-",
            "we b",
            "web..local",
            "w_b",
            long_label.as_str(),
        ] {
            assert!(check_container_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_shown_as_weave_did() {
        let addrs = [
            "198.18.0.1/15".parse().expect("literal"),
            "198.19.0.1/16".parse().expect("literal"),
        ];
        assert_eq!(show_ips(&addrs), "198.18.0.1 198.19.0.1");
        assert_eq!(show_addrs(&addrs), "198.18.0.1/15 198.19.0.1/16");
    }
}
