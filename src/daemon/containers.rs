//! The container registry and its plumbing: `weave attach`, `detach`, `expose`, `hide`
//! and `ps`, carried out by the daemon so they see the host's namespaces, whatever
//! namespace the CLI runs in, and survive restarts.
//!
//! One task (the [`Containers`] actor) owns the registry and does the netlink work, so
//! the event loop only forwards requests and never waits on the kernel. The registry
//! itself ([`Registry`]) is pure bookkeeping: which container holds which addresses,
//! conflicts, `ps` lines; the actor around it opens namespaces, asks Docker and
//! plumbs veths.
//!
//! A container is remembered by its *identity* (netns name or path, PID, Docker ID) and
//! by the identity (dev, inode) of the namespace it had when attached, so a name or PID
//! that now holds another namespace is a new container, not the old one. We never keep
//! a namespace open: holding it would keep a deleted container's namespace (and veth)
//! alive. Every few seconds the actor checks each container's namespace is still where
//! it was and its veth still exists, and forgets those that are gone (their veths went
//! with their namespaces). The registry is persisted in the daemon's state on every
//! change and re-checked at start.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use weave_mesh::PeerName;

use super::dns::{ContainerDns, DnsHandle, ResolvTarget};
use super::state::State;
use crate::control::ipam::IpamFailure;
use crate::control::{
    AttachSpec, ContainerRequest, DaemonHandle, DetachSpec, PlumbError, PsEntry, Target,
};
use crate::sys::{
    CONTAINER_IFNAME, Netlink, Netns, NsId, NsTarget, SysError, VethSpec, attach_veth, detach_veth,
};

/// The bridge containers are plugged into.
pub(crate) const BRIDGE: &str = "weave";
/// Interface MTU for containers until the data plane reports the overlay's own
/// (Weave's fast-path default: 1460 on GCE less 84 bytes of encapsulation).
pub(crate) const DEFAULT_OVERLAY_MTU: u32 = 1376;
/// The identity `weave ps` shows for the host's own addresses on the bridge.
pub(crate) const EXPOSE_ID: &str = "weave:expose";
/// How often attached containers are checked for life.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long `docker inspect` may take.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Host ends of container veths: this prefix and 9 hex digits (15 bytes, the maximum).
const HOST_IFNAME_PREFIX: &str = "vethwe";
const HOST_IFNAME_HEX: usize = 9;
/// Persisted registry (the key names the format: postcard is not self-describing).
const KEY_REGISTRY: &str = "containers.v1";
/// Multicast goes out of ethwe, so it reaches the other containers (Weave did the same).
const MULTICAST: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4) {
    Ok(net) => net,
    Err(_) => panic!("224.0.0.0/4 is a valid prefix"),
};

/// What a container is called, independent of the namespace it has now.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Identity {
    /// `ip netns add NAME`.
    Netns(String),
    /// A namespace file path.
    Path(String),
    Pid(u32),
    /// The full Docker container ID.
    Docker(String),
}

impl Identity {
    /// The first column of `weave ps`.
    fn ps_id(&self) -> String {
        match self {
            Self::Netns(name) => name.clone(),
            Self::Path(path) => path.clone(),
            Self::Pid(pid) => format!("pid:{pid}"),
            // Docker's short form, as Weave printed it.
            Self::Docker(id) => id.chars().take(12).collect(),
        }
    }

    /// The identity IPAM keeps the container's addresses under: Docker's full ID (as
    /// Weave did), else what `weave ps` shows (netns name or path, `pid:N`).
    fn ipam_ident(&self) -> String {
        match self {
            Self::Docker(id) => id.clone(),
            other => other.ps_id(),
        }
    }

    /// Bytes that tell identities apart (kind, then value), for hashing.
    fn key(&self) -> Vec<u8> {
        let (tag, value) = match self {
            Self::Netns(name) => (b'n', name.as_bytes().to_vec()),
            Self::Path(path) => (b'p', path.as_bytes().to_vec()),
            Self::Pid(pid) => (b'i', pid.to_be_bytes().to_vec()),
            Self::Docker(id) => (b'd', id.as_bytes().to_vec()),
        };
        let mut key = vec![tag];
        key.extend(value);
        key
    }
}

/// Where a container's namespace is found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Location {
    Named(String),
    Path(String),
    Pid(u32),
}

impl Location {
    fn ns_target(&self) -> NsTarget {
        match self {
            Self::Named(name) => NsTarget::Named(name.clone()),
            Self::Path(path) => NsTarget::Path(path.into()),
            Self::Pid(pid) => NsTarget::Pid(*pid),
        }
    }
}

/// One attached container, as persisted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    identity: Identity,
    location: Location,
    /// The namespace's (dev, inode) when attached.
    ns: (u64, u64),
    /// How the user named it, for messages and `ps` JSON.
    target: String,
    host_ifname: String,
    mac: [u8; 6],
    addrs: Vec<Ipv4Net>,
    /// `--name`, for DNS.
    name: Option<String>,
    /// Docker's name for it (without the leading '/').
    docker_name: Option<String>,
    dns: bool,
    multicast_route: bool,
}

impl Record {
    /// The resolv.conf DNS points at itself (see `super::dns`).
    fn resolv_target(&self) -> ResolvTarget {
        match (&self.identity, &self.location) {
            (Identity::Docker(id), _) => ResolvTarget::Docker(id.clone()),
            (_, Location::Named(name)) => ResolvTarget::Named(name.clone()),
            (_, Location::Path(path)) => ResolvTarget::Path(path.clone()),
            (_, Location::Pid(pid)) => ResolvTarget::Pid(*pid),
        }
    }

    fn ips(&self) -> Vec<Ipv4Addr> {
        self.addrs.iter().map(Ipv4Net::addr).collect()
    }

    fn entry(&self) -> PsEntry {
        PsEntry {
            id: self.identity.ps_id(),
            mac: format_mac(self.mac),
            addrs: self.addrs.clone(),
            name: self.name.clone(),
            target: self.target.clone(),
            interface: self.host_ifname.clone(),
        }
    }

    /// Whether a `weave ps` argument names this container: its ps ID, Docker ID prefix
    /// or name, netns name or path, PID, or `--name`.
    fn matches(&self, filter: &str) -> bool {
        if filter.is_empty() {
            return false;
        }
        if self.identity.ps_id() == filter || self.name.as_deref() == Some(filter) {
            return true;
        }
        match &self.identity {
            Identity::Docker(id) => {
                id.starts_with(filter)
                    || self.docker_name.as_deref() == Some(filter.trim_start_matches('/'))
            }
            Identity::Pid(pid) => filter.parse() == Ok(*pid),
            Identity::Netns(_) | Identity::Path(_) => false,
        }
    }
}

/// Who holds an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner<'a> {
    Container(&'a Identity),
    Expose,
}

/// Attached containers and exposed addresses: pure bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Registry {
    containers: BTreeMap<Identity, Record>,
    /// Addresses on the bridge (`weave expose`), in the order exposed.
    exposed: Vec<Ipv4Net>,
}

impl Registry {
    /// The container known as `identity`, or else the one living in namespace `ns`
    /// (attached under another name: `--netns web` and `--pid` of a process in it).
    fn find(&self, identity: &Identity, ns: Option<NsId>) -> Option<&Record> {
        self.containers.get(identity).or_else(|| {
            let ns = ns?;
            self.containers.values().find(|r| r.ns == (ns.dev, ns.ino))
        })
    }

    /// Who holds `ip`, and with which prefix.
    fn holder(&self, ip: Ipv4Addr) -> Option<(Owner<'_>, Ipv4Net)> {
        if let Some(net) = self.exposed.iter().find(|n| n.addr() == ip) {
            return Some((Owner::Expose, *net));
        }
        self.containers.values().find_map(|r| {
            r.addrs
                .iter()
                .find(|n| n.addr() == ip)
                .map(|n| (Owner::Container(&r.identity), *n))
        })
    }

    /// Refuses addresses someone else holds, one already held by `me` with another
    /// prefix, and one address given twice with different prefixes.
    fn check_free(&self, addrs: &[Ipv4Net], me: Owner<'_>) -> Result<(), PlumbError> {
        for (i, net) in addrs.iter().enumerate() {
            if let Some(other) = addrs[..i]
                .iter()
                .find(|o| o.addr() == net.addr() && *o != net)
            {
                return Err(PlumbError::Invalid(format!(
                    "{} given twice, as {other} and {net}",
                    net.addr()
                )));
            }
            match self.holder(net.addr()) {
                None => {}
                Some((owner, held)) if owner == me && held == *net => {}
                Some((owner, held)) if owner == me => {
                    return Err(PlumbError::Invalid(format!(
                        "{} is already there as {held}",
                        net.addr()
                    )));
                }
                Some((owner, _)) => {
                    let who = match owner {
                        Owner::Expose => format!("the host ({EXPOSE_ID})"),
                        Owner::Container(id) => id.ps_id(),
                    };
                    return Err(PlumbError::Invalid(format!(
                        "{} is already in use by {who}",
                        net.addr()
                    )));
                }
            }
        }
        Ok(())
    }

    /// `weave ps`: `weave:expose` (when the bridge exists) then the containers in ps-ID
    /// order; with a filter, only what it names.
    fn ps(&self, bridge: Option<(&str, Option<[u8; 6]>)>, filter: &[String]) -> Vec<PsEntry> {
        let mut entries = Vec::new();
        let all = filter.is_empty();
        if let Some((name, mac)) = bridge
            && (all || filter.iter().any(|f| f == EXPOSE_ID))
        {
            entries.push(PsEntry {
                id: EXPOSE_ID.to_owned(),
                mac: mac.map(format_mac).unwrap_or_default(),
                addrs: self.exposed.clone(),
                name: None,
                target: "host".to_owned(),
                interface: name.to_owned(),
            });
        }
        let mut containers: Vec<&Record> = self
            .containers
            .values()
            .filter(|r| all || filter.iter().any(|f| r.matches(f)))
            .collect();
        containers.sort_by_key(|r| r.identity.ps_id());
        entries.extend(containers.into_iter().map(Record::entry));
        entries
    }
}

/// Stable 64-bit hash (FNV-1a with length-prefixed parts, then splitmix64's finaliser
/// to spread FNV's weak high bits): MACs and interface names must not change between
/// releases, which `std`'s hasher does not promise.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        let len = (part.len() as u64).to_be_bytes();
        for &b in len.iter().chain(part.iter()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The container's MAC: locally administered, unicast, derived from this host's peer
/// name and the container's identity, so re-attaching after a restart keeps it (ARP
/// caches elsewhere stay right) and two hosts' containers called alike differ.
fn derive_mac(peer: PeerName, identity: &Identity) -> [u8; 6] {
    let h = stable_hash(&[b"weave-mac", &peer.as_u64().to_be_bytes(), &identity.key()]);
    let b = h.to_be_bytes();
    // Bit 0 of the first byte off (unicast), bit 1 on (locally administered).
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The host end's name: `vethwe` and 9 hex digits of the identity's hash.
fn host_ifname(identity: &Identity) -> String {
    let h = stable_hash(&[b"weave-veth", &identity.key()]);
    let hex = format!("{h:016x}");
    format!("{HOST_IFNAME_PREFIX}{}", &hex[..HOST_IFNAME_HEX])
}

/// Whether `name` looks like a host end we made (for `weave reset`'s sweep).
pub(crate) fn is_our_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IFNAME_PREFIX).is_some_and(|rest| {
        rest.len() == HOST_IFNAME_HEX && rest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn format_mac(mac: [u8; 6]) -> String {
    let mut out = String::with_capacity(17);
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        write!(out, "{b:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// What `docker inspect` told us about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DockerContainer {
    id: String,
    pid: u32,
    running: bool,
    name: String,
}

/// The `--format` we pass to `docker inspect`, and its reader.
const DOCKER_FORMAT: &str = "{{.Id}} {{.State.Pid}} {{.State.Running}} {{.Name}}";

fn parse_inspect(out: &str) -> Result<DockerContainer, String> {
    let line = out.lines().next().unwrap_or("").trim();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [id, pid, running, name] = fields[..] else {
        return Err(format!("unexpected docker inspect output {line:?}"));
    };
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("docker inspect gave a strange container ID {id:?}"));
    }
    let pid = pid
        .parse()
        .map_err(|_| format!("docker inspect gave a strange PID {pid:?}"))?;
    let running = match running {
        "true" => true,
        "false" => false,
        other => return Err(format!("docker inspect gave a strange state {other:?}")),
    };
    Ok(DockerContainer {
        id: id.to_owned(),
        pid,
        running,
        name: name.trim_start_matches('/').to_owned(),
    })
}

/// Runs `docker inspect --type container --format FORMAT CONTAINER`, for at most
/// [`DOCKER_TIMEOUT`] (`Err`: it did not answer in time).
pub(crate) async fn docker_inspect_output(
    container: &str,
    format: &str,
) -> Result<std::io::Result<std::process::Output>, tokio::time::error::Elapsed> {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args([
        "inspect",
        "--type",
        "container",
        "--format",
        format,
        container,
    ])
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    tokio::time::timeout(DOCKER_TIMEOUT, cmd.output()).await
}

async fn docker_inspect(container: &str) -> Result<DockerContainer, PlumbError> {
    let out = match docker_inspect_output(container, DOCKER_FORMAT).await {
        Err(_) => {
            return Err(PlumbError::Failed(format!(
                "docker inspect {container} did not answer within {} s",
                DOCKER_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(PlumbError::Invalid(format!(
                "cannot look up container {container}: docker is not installed (name the namespace with --netns or --pid)"
            )));
        }
        Ok(Err(err)) => {
            return Err(PlumbError::Failed(format!(
                "cannot run docker inspect: {err}"
            )));
        }
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        let why = why.trim().trim_start_matches("Error: ").trim();
        if why.to_ascii_lowercase().contains("no such") {
            return Err(PlumbError::Invalid(format!(
                "no such Docker container: {container}"
            )));
        }
        return Err(PlumbError::Failed(format!(
            "docker inspect {container} failed: {why}"
        )));
    }
    parse_inspect(&String::from_utf8_lossy(&out.stdout)).map_err(PlumbError::Failed)
}

/// A target resolved to an identity and, if it is running, its namespace's location.
struct Resolved {
    identity: Identity,
    location: Option<Location>,
    docker_name: Option<String>,
}

async fn resolve(target: &Target) -> Result<Resolved, PlumbError> {
    Ok(match target {
        Target::Netns(path) if path.contains('/') => Resolved {
            identity: Identity::Path(path.clone()),
            location: Some(Location::Path(path.clone())),
            docker_name: None,
        },
        Target::Netns(name) => Resolved {
            identity: Identity::Netns(name.clone()),
            location: Some(Location::Named(name.clone())),
            docker_name: None,
        },
        Target::Pid(pid) => Resolved {
            identity: Identity::Pid(*pid),
            location: Some(Location::Pid(*pid)),
            docker_name: None,
        },
        Target::Container(name) => {
            let found = docker_inspect(name).await?;
            Resolved {
                identity: Identity::Docker(found.id),
                location: (found.running && found.pid > 0).then_some(Location::Pid(found.pid)),
                docker_name: Some(found.name),
            }
        }
    })
}

/// Where `ip netns add` puts its namespaces.
const NAMED_NETNS_DIR: &str = "/run/netns";

/// The names in directory `dir` (none if it cannot be read).
fn dir_names(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The full IDs of the running Docker containers (none if Docker is not there or does
/// not answer in time).
async fn docker_running() -> Vec<String> {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(["ps", "--quiet", "--no-trunc"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(DOCKER_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// What the host end of a container's veth notes about it in its interface alias, so
/// a host whose state directory was lost can find the container and its name again
/// (see `rediscover`): `weave name=NAME path=PATH`, either part optional, the path
/// last (it may hold spaces).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PortNote {
    /// The DNS name it was attached with.
    name: Option<String>,
    /// The namespace file it was attached by, when that is a path (nothing else would
    /// find it again).
    path: Option<String>,
}

/// The kernel's limit on an interface alias (IFALIASZ, with its terminating NUL).
const MAX_ALIAS_LEN: usize = 255;

impl PortNote {
    fn of(record: &Record) -> Self {
        Self {
            name: record.name.clone(),
            path: match &record.identity {
                Identity::Path(path) => Some(path.clone()),
                _ => None,
            },
        }
    }

    /// The alias text; `None` if there is nothing to note. A path too long for an
    /// alias is left out (that container cannot be found again, as before).
    fn alias(&self) -> Option<String> {
        let mut alias = String::from("weave");
        if let Some(name) = &self.name {
            alias.push_str(" name=");
            alias.push_str(name);
        }
        if let Some(path) = &self.path
            && alias.len() + " path=".len() + path.len() <= MAX_ALIAS_LEN
        {
            alias.push_str(" path=");
            alias.push_str(path);
        }
        (alias != "weave").then_some(alias)
    }

    fn parse(alias: &str) -> Self {
        let mut note = Self::default();
        let Some(mut rest) = alias.strip_prefix("weave ") else {
            return note;
        };
        while !rest.is_empty() {
            if let Some(path) = rest.strip_prefix("path=") {
                note.path = (!path.is_empty()).then(|| path.to_owned());
                break;
            }
            let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(name) = field.strip_prefix("name=") {
                note.name = (!name.is_empty()).then(|| name.to_owned());
            }
            rest = tail;
        }
        note
    }
}

/// Notes `record` on its host-side port (logged, never fatal).
async fn note_on_port(host: &Netlink, record: &Record) {
    let Some(alias) = PortNote::of(record).alias() else {
        return;
    };
    if let Err(err) = host.set_alias(&record.host_ifname, &alias).await {
        tracing::warn!(%err, interface = %record.host_ifname, "cannot note the container on its port");
    }
}

/// The record of a container found with its `ethwe` in place and its host end
/// `host_ifname` (with interface alias `port_alias`) on the bridge; `None` if it is
/// not (quite) there.
async fn found_attached(
    resolved: Resolved,
    target: &Target,
    host_ifname: String,
    port_alias: Option<&str>,
) -> Option<Record> {
    let location = resolved.location?;
    let ns = location.ns_target().open().ok()?;
    let inner = Netlink::connect_in(&ns).await.ok()?;
    let link = inner.link(CONTAINER_IFNAME).await.ok()??;
    let addrs = inner.addresses(CONTAINER_IFNAME).await.ok()?;
    let multicast_route = inner.routes().await.is_ok_and(|routes| {
        routes
            .iter()
            .any(|r| r.dest == MULTICAST && r.oif == Some(link.index))
    });
    let mut record = Record {
        identity: resolved.identity,
        location,
        ns: (ns.id().dev, ns.id().ino),
        target: target.to_string(),
        host_ifname,
        mac: link.mac?,
        addrs,
        // The name the port remembers (what else the registry knew is gone with it).
        name: port_alias.map(PortNote::parse).and_then(|note| note.name),
        docker_name: resolved.docker_name,
        dns: false,
        multicast_route,
    };
    // A resolv.conf we wrote means we served it DNS: serve it again, or its lookups
    // go to a resolver that is no longer there.
    record.dns = super::dns::resolv_is_ours(&record.resolv_target()).await;
    Some(record)
}

/// Opens a target's namespace, with the user's words in the message.
fn open_ns(location: &Location, target: &Target) -> Result<Netns, PlumbError> {
    location.ns_target().open().map_err(|err| match err {
        SysError::NetnsGone(_) => PlumbError::Invalid(match target {
            Target::Pid(pid) => format!("no process {pid} (or it has exited)"),
            Target::Container(_) => format!("{target} is not running"),
            Target::Netns(_) => format!("{target} does not exist"),
        }),
        SysError::NetnsOpen { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            PlumbError::Invalid(format!("{target} is not a network namespace"))
        }
        SysError::NetnsOpen { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            PlumbError::Invalid(format!(
                "{target}: permission denied opening its network namespace"
            ))
        }
        other => PlumbError::Failed(other.to_string()),
    })
}

fn sys_failed(err: SysError) -> PlumbError {
    PlumbError::Failed(err.to_string())
}

/// An IPAM refusal as a plumbing error: the caller's to fix, or ours.
fn ipam_failed(what: &str, err: IpamFailure) -> PlumbError {
    match err {
        IpamFailure::Invalid(why) | IpamFailure::NotFound(why) => {
            PlumbError::Invalid(format!("{what}: {why}"))
        }
        IpamFailure::Unavailable(why) | IpamFailure::Failed(why) => {
            PlumbError::Failed(format!("{what}: {why}"))
        }
    }
}

/// A message to the actor.
enum Msg {
    Request(ContainerRequest, u32),
    Shutdown {
        reset: bool,
        done: oneshot::Sender<()>,
    },
}

/// The event loop's handle on the container registry task.
pub(crate) struct Containers {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Containers {
    /// Starts the registry task: loads what was attached before, forgets containers
    /// that are gone, puts exposed addresses back on the bridge, then serves requests
    /// and checks liveness every few seconds.
    pub(crate) fn start(
        state: Arc<State>,
        bridge: &str,
        peer: PeerName,
        ipam: DaemonHandle,
        dns: Option<DnsHandle>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let plumber = Plumber {
            dns: ContainerDns::new(dns, ipam.clone()),
            registry: Registry::default(),
            state,
            bridge: bridge.to_owned(),
            peer,
            host: None,
            own_ns: Netns::current().ok().map(|ns| ns.id()),
            ipam,
        };
        tokio::spawn(plumber.run(rx));
        Self { tx }
    }

    /// Hands a request to the task; containers get `overlay_mtu` on their interface.
    pub(crate) fn submit(&self, request: ContainerRequest, overlay_mtu: u32) {
        // If the task is gone, the request's reply sender drops with it and the API
        // answers "shutting down".
        let _ = self.tx.send(Msg::Request(request, overlay_mtu));
    }

    /// Stops the task once it has finished what it is doing; with `reset` (`weave
    /// reset`) it first removes every container interface and exposed address it made.
    pub(crate) async fn shutdown(&self, reset: bool) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown { reset, done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The registry task: the registry plus everything needed to act on it.
struct Plumber {
    registry: Registry,
    state: Arc<State>,
    bridge: String,
    peer: PeerName,
    /// Netlink in the daemon's namespace, connected on first use.
    host: Option<Netlink>,
    /// The daemon's own namespace, which is never a container.
    own_ns: Option<NsId>,
    /// The event loop, for addresses from IPAM.
    ipam: DaemonHandle,
    /// Containers' name records and the name server in their namespaces.
    dns: ContainerDns,
}

impl Plumber {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.load().await;
        let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Request(request, mtu)) => self.handle(request, mtu).await,
                    Some(Msg::Shutdown { reset, done }) => {
                        if reset {
                            self.reset().await;
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                _ = tick.tick() => self.sweep().await,
            }
        }
    }

    async fn handle(&mut self, request: ContainerRequest, mtu: u32) {
        match request {
            ContainerRequest::Attach { spec, reply } => {
                let _ = reply.send(self.attach(spec, mtu).await);
            }
            ContainerRequest::Detach { spec, reply } => {
                let _ = reply.send(self.detach(spec).await);
            }
            ContainerRequest::Expose { addrs, reply } => {
                let _ = reply.send(self.expose(addrs).await);
            }
            ContainerRequest::Hide { addrs, reply } => {
                let _ = reply.send(self.hide(addrs).await);
            }
            ContainerRequest::Ps { filter, reply } => {
                let _ = reply.send(self.ps(&filter).await);
            }
        }
    }

    fn host(&mut self) -> Result<Netlink, PlumbError> {
        if let Some(host) = &self.host {
            return Ok(host.clone());
        }
        let host = Netlink::connect().map_err(sys_failed)?;
        self.host = Some(host.clone());
        Ok(host)
    }

    /// The bridge, created if the data plane has not made it yet (plumbing a container
    /// needs only the bridge; the router's port joins it whenever it starts).
    async fn bridge(&mut self) -> Result<Netlink, PlumbError> {
        let host = self.host()?;
        if host.link(&self.bridge).await.map_err(sys_failed)?.is_none() {
            host.ensure_bridge(&self.bridge, None)
                .await
                .map_err(sys_failed)?;
            tracing::info!(bridge = %self.bridge, "created the bridge");
        }
        Ok(host)
    }

    fn persist(&self) -> Result<(), PlumbError> {
        self.state.put(KEY_REGISTRY, &self.registry).map_err(|err| {
            tracing::error!(%err, "cannot persist the container registry");
            PlumbError::Failed(format!("cannot persist the container registry: {err}"))
        })
    }

    /// Loads the persisted registry, forgets what is gone, re-exposes host addresses.
    async fn load(&mut self) {
        match self.state.get::<Registry>(KEY_REGISTRY) {
            Ok(Some(registry)) => self.registry = registry,
            Ok(None) => self.rediscover().await,
            Err(err) => tracing::error!(%err, "cannot read the container registry"),
        }
        let known = self.registry.containers.len();
        self.sweep().await;
        // Serve DNS again in the containers still there, and register their names.
        let survivors: Vec<Record> = self.registry.containers.values().cloned().collect();
        for record in survivors.iter().filter(|r| r.dns) {
            let ns = record.location.ns_target().open().ok();
            self.dns
                .up(
                    &record.identity.ps_id(),
                    ns.as_ref(),
                    &record.resolv_target(),
                    record.name.as_deref(),
                    None,
                    &record.ips(),
                )
                .await;
        }
        if known > 0 {
            tracing::info!(
                "{} of {known} attached containers still there",
                self.registry.containers.len()
            );
        }
        if !self.registry.exposed.is_empty() {
            let exposed = self.registry.exposed.clone();
            match self.put_on_bridge(&exposed).await {
                Ok(()) => tracing::info!("exposed {} again", crate::control::show_addrs(&exposed)),
                Err(err) => tracing::error!(%err, "cannot expose the host's addresses again"),
            }
        }
        // IPAM keeps what survivors hold (and, after a start without its data, waits
        // for this before it allocates anything new).
        let mut held: Vec<(String, Vec<Ipv4Net>)> = self
            .registry
            .containers
            .values()
            .map(|r| (r.identity.ipam_ident(), r.addrs.clone()))
            .collect();
        if !self.registry.exposed.is_empty() {
            held.push((EXPOSE_ID.to_owned(), self.registry.exposed.clone()));
        }
        match self.ipam.ipam_reclaim(held).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%err, "IPAM refused the containers' addresses"),
            Err(_) => tracing::debug!("daemon stopping before IPAM got the containers' addresses"),
        }
    }

    /// A start without a saved registry, while containers attached by an earlier run
    /// are still on the bridge (the state directory was lost, not `weave reset`): finds
    /// them again by the host ends we name after them, so that IPAM keeps their
    /// addresses rather than handing them out again. Named namespaces (by name or
    /// path), processes (by PID or /proc/PID/ns/net), Docker containers and namespaces
    /// attached by another path (noted on their port, see [`PortNote`]) can be found;
    /// a port that leads nowhere any more is only reported.
    async fn rediscover(&mut self) {
        let Ok(host) = self.host() else { return };
        let Ok(links) = host.links().await else {
            return;
        };
        let Some(bridge) = links
            .iter()
            .find(|l| l.name == self.bridge)
            .map(|l| l.index)
        else {
            return;
        };
        let mut ports: BTreeMap<String, Option<String>> = links
            .into_iter()
            .filter(|l| l.master == Some(bridge) && is_our_ifname(&l.name))
            .map(|l| (l.name, l.alias))
            .collect();
        if ports.is_empty() {
            return;
        }
        // Every way a container can have been named whose name we can list; only those
        // whose port is there are looked at further.
        let named = dir_names(NAMED_NETNS_DIR);
        let pids = dir_names("/proc")
            .into_iter()
            .filter_map(|n| n.parse::<u32>().ok());
        let mut candidates: Vec<Target> = Vec::new();
        // Namespaces attached by some other path: their ports say which.
        candidates.extend(
            ports
                .values()
                .filter_map(|alias| PortNote::parse(alias.as_deref()?).path)
                .map(Target::Netns),
        );
        for name in named {
            candidates.push(Target::Netns(format!("{NAMED_NETNS_DIR}/{name}")));
            candidates.push(Target::Netns(name));
        }
        for pid in pids {
            candidates.push(Target::Pid(pid));
            candidates.push(Target::Netns(format!("/proc/{pid}/ns/net")));
        }
        candidates.extend(docker_running().await.into_iter().map(Target::Container));
        for target in candidates {
            let Ok(resolved) = resolve(&target).await else {
                continue;
            };
            let host_ifname = host_ifname(&resolved.identity);
            let Some(alias) = ports.get(&host_ifname) else {
                continue;
            };
            let Some(record) =
                found_attached(resolved, &target, host_ifname.clone(), alias.as_deref()).await
            else {
                continue;
            };
            tracing::info!(
                "found {} ({}) attached by an earlier run with {}: keeping its addresses",
                record.identity.ps_id(),
                record.target,
                crate::control::show_addrs(&record.addrs)
            );
            ports.remove(&host_ifname);
            self.registry
                .containers
                .insert(record.identity.clone(), record);
        }
        for port in ports.keys() {
            tracing::warn!(
                interface = %port,
                "a container attached by an earlier run is on the bridge but cannot be found: its addresses are not protected; attach it again"
            );
        }
        if let Err(err) = self.persist() {
            tracing::error!(%err, "cannot persist the containers found again");
        }
    }

    async fn put_on_bridge(&mut self, addrs: &[Ipv4Net]) -> Result<(), PlumbError> {
        let host = self.bridge().await?;
        for addr in addrs {
            crate::sys::expose(&host, &self.bridge, *addr)
                .await
                .map_err(sys_failed)?;
        }
        Ok(())
    }

    /// An address from IPAM for `ident` (the one it has already, if any), in the
    /// default subnet.
    async fn allocate(&self, ident: &str) -> Result<Vec<Ipv4Net>, PlumbError> {
        match self.ipam.ipam_allocate(ident.to_owned(), None).await {
            Ok(Ok(net)) => Ok(vec![net]),
            Ok(Err(err)) => Err(ipam_failed(
                &format!("cannot allocate an address for {ident}"),
                err,
            )),
            Err(gone) => Err(PlumbError::Failed(gone.to_string())),
        }
    }

    /// Claims addresses given by hand, so IPAM never hands them to anyone else (those
    /// outside its range are just recorded).
    async fn claim(&self, ident: &str, addrs: &[Ipv4Net]) -> Result<(), PlumbError> {
        for (i, net) in addrs.iter().enumerate() {
            let failed = match self.ipam.ipam_claim(ident.to_owned(), *net).await {
                Ok(Ok(_)) => continue,
                Ok(Err(IpamFailure::Invalid(why))) if why.starts_with("IPAM is disabled") => {
                    continue;
                }
                Ok(Err(err)) => ipam_failed(&format!("cannot claim {net} for {ident}"), err),
                Err(gone) => PlumbError::Failed(gone.to_string()),
            };
            self.release(ident, &addrs[..i]).await;
            return Err(failed);
        }
        Ok(())
    }

    /// Gives addresses back to IPAM (best effort: logged, not failed).
    async fn release(&self, ident: &str, addrs: &[Ipv4Net]) {
        for net in addrs {
            match self.ipam.ipam_free(ident.to_owned(), net.addr()).await {
                Ok(Ok(())) | Err(_) => {}
                // Not IPAM's (IPAM off, or never recorded): nothing to give back.
                Ok(Err(IpamFailure::NotFound(_) | IpamFailure::Invalid(_))) => {}
                Ok(Err(err)) => tracing::warn!(%err, "cannot release {net} of {ident}"),
            }
        }
    }

    /// Gives every address of `ident` back to IPAM.
    async fn release_all(&self, ident: &str) {
        match self.ipam.ipam_free_ident(ident.to_owned()).await {
            Ok(Ok(freed)) if !freed.is_empty() => {
                tracing::debug!(ident, ?freed, "released addresses to IPAM");
            }
            Ok(Ok(_)) | Err(_) | Ok(Err(IpamFailure::Invalid(_))) => {}
            Ok(Err(err)) => tracing::warn!(%err, "cannot release the addresses of {ident}"),
        }
    }

    async fn attach(&mut self, spec: AttachSpec, mtu: u32) -> Result<PsEntry, PlumbError> {
        let resolved = resolve(&spec.target).await?;
        let Some(location) = &resolved.location else {
            return Err(PlumbError::Invalid(format!(
                "{} is not running",
                spec.target
            )));
        };
        let ns = open_ns(location, &spec.target)?;
        if Some(ns.id()) == self.own_ns {
            return Err(PlumbError::Invalid(format!(
                "{} is the host's own network namespace; use weave expose to put the host on the overlay",
                spec.target
            )));
        }
        let host = self.bridge().await?;
        let mut existing = self
            .registry
            .find(&resolved.identity, Some(ns.id()))
            .cloned();
        if let Some(record) = &existing {
            let same_ns = record.ns == (ns.id().dev, ns.id().ino);
            let veth = host
                .link(&record.host_ifname)
                .await
                .map_err(sys_failed)?
                .is_some();
            if !(same_ns && veth) {
                // Its name or PID now holds another namespace, or its veth is gone. Under
                // the same identity it keeps its addresses in IPAM: it is back.
                let keep = record.identity == resolved.identity;
                self.drop_record(&record.identity, "replaced by a new attachment")
                    .await;
                if !keep {
                    self.release_all(&record.identity.ipam_ident()).await;
                }
                existing = None;
            }
        }
        let owner = existing
            .as_ref()
            .map_or(&resolved.identity, |r| &r.identity)
            .clone();
        let ident = owner.ipam_ident();
        let mut addrs = if spec.addrs.is_empty() {
            self.allocate(&ident).await?
        } else {
            // Our own record names the holder (IPAM only knows its identity).
            self.registry
                .check_free(&spec.addrs, Owner::Container(&owner))?;
            self.claim(&ident, &spec.addrs).await?;
            spec.addrs.clone()
        };
        dedup(&mut addrs);
        // What this attach took from IPAM goes back if the plumbing fails.
        let held = existing
            .as_ref()
            .map(|r| r.addrs.clone())
            .unwrap_or_default();
        let taken: Vec<Ipv4Net> = addrs
            .iter()
            .filter(|a| !held.contains(a))
            .copied()
            .collect();
        let result = self
            .plumb(spec, mtu, resolved, &ns, host, existing, owner, addrs)
            .await;
        if result.is_err() {
            self.release(&ident, &taken).await;
        }
        result
    }

    /// The rest of `attach`, once the addresses are known.
    #[allow(clippy::too_many_arguments)]
    async fn plumb(
        &mut self,
        spec: AttachSpec,
        mtu: u32,
        resolved: Resolved,
        ns: &Netns,
        host: Netlink,
        existing: Option<Record>,
        owner: Identity,
        addrs: Vec<Ipv4Net>,
    ) -> Result<PsEntry, PlumbError> {
        if spec.dns {
            self.dns
                .check_name(spec.name.as_deref())
                .map_err(PlumbError::Invalid)?;
        }
        self.registry.check_free(&addrs, Owner::Container(&owner))?;
        if let Some(record) = existing {
            return self.add_to(record, ns, &addrs, &spec, mtu).await;
        }
        let Some(location) = &resolved.location else {
            return Err(PlumbError::Invalid(format!(
                "{} is not running",
                spec.target
            )));
        };

        let identity = resolved.identity;
        let mac = derive_mac(self.peer, &identity);
        let host_ifname = host_ifname(&identity);
        if let Some(other) = self
            .registry
            .containers
            .values()
            .find(|r| r.host_ifname == host_ifname)
        {
            return Err(PlumbError::Failed(format!(
                "interface name {host_ifname} is taken by {}",
                other.identity.ps_id()
            )));
        }
        // A leftover of a run whose state was lost: ours, by its name.
        if detach_veth(&host, &host_ifname).await.map_err(sys_failed)? {
            tracing::info!(interface = %host_ifname, "removed a leftover veth");
        }
        let inner = Netlink::connect_in(ns).await.map_err(sys_failed)?;
        if inner
            .link(CONTAINER_IFNAME)
            .await
            .map_err(sys_failed)?
            .is_some()
        {
            return Err(PlumbError::Invalid(format!(
                "{} already has an interface {CONTAINER_IFNAME} that weave did not make; remove it first",
                spec.target
            )));
        }
        drop(inner);
        let routes: &[Ipv4Net] = if spec.multicast_route {
            &[MULTICAST]
        } else {
            &[]
        };
        let veth = VethSpec {
            host_name: &host_ifname,
            inner_name: CONTAINER_IFNAME,
            mtu,
            mac: Some(mac),
            addresses: &addrs,
            routes,
        };
        attach_veth(&host, &self.bridge, ns, &veth)
            .await
            .map_err(sys_failed)?;
        let record = Record {
            identity: identity.clone(),
            location: location.clone(),
            ns: (ns.id().dev, ns.id().ino),
            target: spec.target.to_string(),
            host_ifname,
            mac,
            addrs,
            name: spec.name,
            docker_name: resolved.docker_name,
            dns: spec.dns,
            multicast_route: spec.multicast_route,
        };
        note_on_port(&host, &record).await;
        let entry = record.entry();
        tracing::info!(
            "attached {} ({}) {} {} mtu {mtu} via {}",
            entry.id,
            record.target,
            entry.mac,
            crate::control::show_addrs(&record.addrs),
            record.host_ifname
        );
        let dns = record.dns.then(|| record.clone());
        self.registry.containers.insert(identity, record);
        self.persist()?;
        if let Some(record) = dns {
            self.dns
                .up(
                    &record.identity.ps_id(),
                    Some(ns),
                    &record.resolv_target(),
                    record.name.as_deref(),
                    None,
                    &record.ips(),
                )
                .await;
        }
        Ok(entry)
    }

    /// Re-attach: adds the new addresses to the container's ethwe.
    async fn add_to(
        &mut self,
        mut record: Record,
        ns: &Netns,
        addrs: &[Ipv4Net],
        spec: &AttachSpec,
        mtu: u32,
    ) -> Result<PsEntry, PlumbError> {
        let host = self.host()?;
        let inner = Netlink::connect_in(ns).await.map_err(sys_failed)?;
        let new: Vec<Ipv4Net> = addrs
            .iter()
            .filter(|a| !record.addrs.contains(a))
            .copied()
            .collect();
        for addr in &new {
            inner
                .add_address(CONTAINER_IFNAME, *addr)
                .await
                .map_err(sys_failed)?;
            record.addrs.push(*addr);
        }
        if spec.multicast_route && !record.multicast_route {
            inner
                .add_route(MULTICAST, CONTAINER_IFNAME, None)
                .await
                .map_err(sys_failed)?;
            record.multicast_route = true;
        }
        // The overlay MTU may have changed since (path MTU discovery): follow it.
        if let Some(link) = inner.link(CONTAINER_IFNAME).await.map_err(sys_failed)?
            && link.mtu != mtu
        {
            inner
                .set_mtu(CONTAINER_IFNAME, mtu)
                .await
                .map_err(sys_failed)?;
            host.set_mtu(&record.host_ifname, mtu)
                .await
                .map_err(sys_failed)?;
        }
        let old_name = record.name.clone();
        if spec.name.is_some() {
            record.name.clone_from(&spec.name);
        }
        record.dns = spec.dns;
        if record.name != old_name {
            note_on_port(&host, &record).await;
        }
        let dns = record.clone();
        let entry = record.entry();
        tracing::info!(
            "re-attached {} ({}): {}",
            entry.id,
            record.target,
            crate::control::show_addrs(&record.addrs)
        );
        self.registry
            .containers
            .insert(record.identity.clone(), record);
        self.persist()?;
        let owner = dns.identity.ps_id();
        if dns.dns {
            self.dns
                .up(
                    &owner,
                    Some(ns),
                    &dns.resolv_target(),
                    dns.name.as_deref(),
                    old_name.as_deref(),
                    &dns.ips(),
                )
                .await;
        } else {
            self.dns.down(&owner).await;
        }
        Ok(entry)
    }

    async fn detach(&mut self, spec: DetachSpec) -> Result<(), PlumbError> {
        let resolved = resolve(&spec.target).await?;
        let ns = resolved
            .location
            .as_ref()
            .and_then(|l| l.ns_target().open().ok());
        let Some(record) = self
            .registry
            .find(&resolved.identity, ns.as_ref().map(Netns::id))
            .cloned()
        else {
            return Err(PlumbError::Invalid(format!(
                "{} is not attached",
                spec.target
            )));
        };
        let alive = ns
            .as_ref()
            .filter(|ns| record.ns == (ns.id().dev, ns.id().ino));
        let Some(ns) = alive else {
            self.forget(&record.identity, "its namespace is gone").await;
            return self.persist();
        };
        let mut remove = Vec::new();
        for addr in &spec.addrs {
            match record.addrs.iter().find(|a| a.addr() == addr.addr()) {
                Some(held) => remove.push(*held),
                None => {
                    return Err(PlumbError::Invalid(format!(
                        "{} is not attached to {}",
                        addr.addr(),
                        record.identity.ps_id()
                    )));
                }
            }
        }
        let remaining: Vec<Ipv4Net> = record
            .addrs
            .iter()
            .filter(|a| !remove.contains(a))
            .copied()
            .collect();
        if spec.addrs.is_empty() || remaining.is_empty() {
            let host = self.host()?;
            detach_veth(&host, &record.host_ifname)
                .await
                .map_err(sys_failed)?;
            self.registry.containers.remove(&record.identity);
            tracing::info!(
                "detached {} ({}): released {}",
                record.identity.ps_id(),
                record.target,
                crate::control::show_addrs(&record.addrs)
            );
            self.dns.down(&record.identity.ps_id()).await;
            self.release_all(&record.identity.ipam_ident()).await;
        } else {
            let inner = Netlink::connect_in(ns).await.map_err(sys_failed)?;
            for addr in &remove {
                inner
                    .del_address(CONTAINER_IFNAME, *addr)
                    .await
                    .map_err(sys_failed)?;
            }
            tracing::info!(
                "detached {} from {}",
                crate::control::show_addrs(&remove),
                record.identity.ps_id()
            );
            if let Some(r) = self.registry.containers.get_mut(&record.identity) {
                r.addrs = remaining;
            }
            let gone: Vec<Ipv4Addr> = remove.iter().map(Ipv4Net::addr).collect();
            self.dns.drop_addrs(&record.identity.ps_id(), &gone).await;
            self.release(&record.identity.ipam_ident(), &remove).await;
        }
        self.persist()
    }

    /// Drops a container from the registry (not persisted: the caller does), deleting
    /// its veth if it is still there, and gives its addresses back to IPAM.
    async fn forget(&mut self, identity: &Identity, reason: &str) {
        if self.drop_record(identity, reason).await {
            self.release_all(&identity.ipam_ident()).await;
        }
    }

    /// [`Self::forget`] without giving the addresses back; whether it was there.
    async fn drop_record(&mut self, identity: &Identity, reason: &str) -> bool {
        let Some(record) = self.registry.containers.remove(identity) else {
            return false;
        };
        if let Ok(host) = self.host()
            && let Err(err) = detach_veth(&host, &record.host_ifname).await
        {
            tracing::warn!(%err, interface = %record.host_ifname, "cannot remove the veth of a gone container");
        }
        self.dns.down(&identity.ps_id()).await;
        tracing::info!(
            "forgetting container {} ({}): {reason}; released {}",
            identity.ps_id(),
            record.target,
            crate::control::show_addrs(&record.addrs)
        );
        true
    }

    /// Forgets containers whose namespace is gone (or is another one now) or whose veth
    /// has vanished.
    async fn sweep(&mut self) {
        if self.registry.containers.is_empty() {
            return;
        }
        // One dump of the host's links rather than a lookup per container.
        let links: Option<BTreeSet<String>> = match self.host() {
            Ok(host) => host
                .links()
                .await
                .ok()
                .map(|links| links.into_iter().map(|l| l.name).collect()),
            Err(_) => None,
        };
        let mut dead = Vec::new();
        for record in self.registry.containers.values() {
            let reason = match record.location.ns_target().open() {
                Err(_) => "its namespace is gone",
                Ok(ns) if (ns.id().dev, ns.id().ino) != record.ns => {
                    "its name or PID now belongs to another namespace"
                }
                Ok(_) => {
                    if links
                        .as_ref()
                        .is_some_and(|l| !l.contains(&record.host_ifname))
                    {
                        "its interface is gone"
                    } else {
                        continue;
                    }
                }
            };
            dead.push((record.identity.clone(), reason));
        }
        if dead.is_empty() {
            return;
        }
        for (identity, reason) in dead {
            self.forget(&identity, reason).await;
        }
        let _ = self.persist();
    }

    async fn expose(&mut self, mut addrs: Vec<Ipv4Net>) -> Result<Vec<Ipv4Net>, PlumbError> {
        if addrs.is_empty() {
            // Weave's `weave expose` without an address: one from IPAM, for the host.
            addrs = self.allocate(EXPOSE_ID).await?;
        } else {
            self.registry.check_free(&addrs, Owner::Expose)?;
            self.claim(EXPOSE_ID, &addrs).await?;
        }
        dedup(&mut addrs);
        let taken: Vec<Ipv4Net> = addrs
            .iter()
            .filter(|a| !self.registry.exposed.contains(a))
            .copied()
            .collect();
        let shown = match self.registry.check_free(&addrs, Owner::Expose) {
            Ok(()) => self.put_on_bridge(&addrs).await,
            Err(err) => Err(err),
        };
        if let Err(err) = shown {
            self.release(EXPOSE_ID, &taken).await;
            return Err(err);
        }
        for addr in &addrs {
            if !self.registry.exposed.contains(addr) {
                self.registry.exposed.push(*addr);
            }
        }
        tracing::info!("exposed {}", crate::control::show_addrs(&addrs));
        self.persist()?;
        Ok(self.registry.exposed.clone())
    }

    async fn hide(&mut self, addrs: Vec<Ipv4Net>) -> Result<(), PlumbError> {
        let mut hide = Vec::new();
        if addrs.is_empty() {
            hide.clone_from(&self.registry.exposed);
        }
        for addr in &addrs {
            match self
                .registry
                .exposed
                .iter()
                .find(|e| e.addr() == addr.addr())
            {
                Some(held) => hide.push(*held),
                None => {
                    return Err(PlumbError::Invalid(format!(
                        "{} is not exposed",
                        addr.addr()
                    )));
                }
            }
        }
        let host = self.host()?;
        for addr in &hide {
            match crate::sys::hide(&host, &self.bridge, *addr).await {
                // No bridge: nothing to take off.
                Ok(_) | Err(SysError::NoSuchLink(_)) => {}
                Err(err) => return Err(sys_failed(err)),
            }
            self.registry.exposed.retain(|e| e != addr);
        }
        if !hide.is_empty() {
            tracing::info!("hid {}", crate::control::show_addrs(&hide));
        }
        if addrs.is_empty() {
            self.release_all(EXPOSE_ID).await;
        } else {
            self.release(EXPOSE_ID, &hide).await;
        }
        self.persist()
    }

    async fn ps(&mut self, filter: &[String]) -> Result<Vec<PsEntry>, PlumbError> {
        let host = self.host()?;
        let bridge = host.link(&self.bridge).await.map_err(sys_failed)?;
        Ok(self
            .registry
            .ps(bridge.as_ref().map(|b| (b.name.as_str(), b.mac)), filter))
    }

    /// `weave reset`: removes every container veth we made (also ones a lost state
    /// forgot) and the exposed addresses.
    async fn reset(&mut self) {
        let Ok(host) = self.host() else {
            return;
        };
        let mut names: BTreeSet<String> = self
            .registry
            .containers
            .values()
            .map(|r| r.host_ifname.clone())
            .collect();
        if let Ok(links) = host.links().await {
            names.extend(
                links
                    .into_iter()
                    .filter(|l| l.kind.as_deref() == Some("veth") && is_our_ifname(&l.name))
                    .map(|l| l.name),
            );
        }
        for name in &names {
            if let Err(err) = detach_veth(&host, name).await {
                tracing::warn!(%err, interface = %name, "reset: cannot remove veth");
            }
        }
        self.dns.reset();
        for addr in std::mem::take(&mut self.registry.exposed) {
            let _ = crate::sys::hide(&host, &self.bridge, addr).await;
        }
        self.registry.containers.clear();
        let _ = self.persist();
        tracing::info!("reset: removed {} container interfaces", names.len());
    }
}

/// Removes repeats, keeping the first of each.
fn dedup(addrs: &mut Vec<Ipv4Net>) {
    let mut seen = BTreeSet::new();
    addrs.retain(|a| seen.insert(*a));
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any alias text (another tool may set one) parses without panicking, and a
        /// note made from a DNS name and a path reads back as it was (or without the
        /// path, when it does not fit).
        #[test]
        fn port_notes_parse_anything_and_round_trip(
            junk in ".{0,300}",
            name in "[a-z0-9-]{1,30}(\\.[a-z0-9-]{1,20}){0,3}\\.?",
            path in "/[^\\x00]{0,300}",
        ) {
            let _ = PortNote::parse(&junk);
            let note = PortNote { name: Some(name), path: Some(path) };
            let alias = note.alias().expect("a name is something to note");
            proptest::prop_assert!(alias.len() <= MAX_ALIAS_LEN);
            let back = PortNote::parse(&alias);
            proptest::prop_assert_eq!(&back.name, &note.name);
            proptest::prop_assert!(back.path.is_none() || back.path == note.path);
        }
    }

    #[test]
    fn port_notes_round_trip_and_stay_within_an_alias() {
        let mut r = record(Identity::Path("/var/lib/my ns/net".into()), &[], 1);
        r.name = Some("db.weave.local.".into());
        let note = PortNote::of(&r);
        let alias = note.alias().expect("something to note");
        assert_eq!(alias, "weave name=db.weave.local. path=/var/lib/my ns/net");
        assert_eq!(PortNote::parse(&alias), note);
        // Only a name, only a path, nothing.
        r.identity = Identity::Netns("db".into());
        assert_eq!(
            PortNote::parse(&PortNote::of(&r).alias().unwrap()).name,
            r.name
        );
        r.name = None;
        assert_eq!(PortNote::of(&r).alias(), None);
        // A path too long for an alias is left out; the name stays.
        r.identity = Identity::Path(format!("/{}", "x".repeat(300)));
        r.name = Some("db.weave.local.".into());
        let alias = PortNote::of(&r).alias().unwrap();
        assert!(alias.len() <= MAX_ALIAS_LEN);
        assert_eq!(PortNote::parse(&alias).path, None);
        // Someone else's alias, or garbage, notes nothing.
        for other in [
            "",
            "weave",
            "uplink to rack 3",
            "weave name= path=",
            "weave bogus",
        ] {
            assert_eq!(PortNote::parse(other), PortNote::default(), "{other:?}");
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn record(identity: Identity, addrs: &[&str], ns: u64) -> Record {
        Record {
            host_ifname: host_ifname(&identity),
            mac: derive_mac(PeerName::from_u64(1), &identity),
            location: match &identity {
                Identity::Netns(n) => Location::Named(n.clone()),
                Identity::Path(p) => Location::Path(p.clone()),
                Identity::Pid(p) => Location::Pid(*p),
                Identity::Docker(_) => Location::Pid(4242),
            },
            target: "test".to_owned(),
            identity,
            ns: (4, ns),
            addrs: addrs.iter().map(|a| net(a)).collect(),
            name: None,
            docker_name: None,
            dns: true,
            multicast_route: true,
        }
    }

    fn registry(records: Vec<Record>, exposed: &[&str]) -> Registry {
        Registry {
            containers: records
                .into_iter()
                .map(|r| (r.identity.clone(), r))
                .collect(),
            exposed: exposed.iter().map(|a| net(a)).collect(),
        }
    }

    #[test]
    fn macs_are_stable_unicast_locally_administered_and_distinct() {
        let peer = PeerName::from_u64(0x0200_0000_0001);
        let web = Identity::Netns("web".to_owned());
        let mac = derive_mac(peer, &web);
        // Pinned: a change here would give every re-attached container a new MAC.
        assert_eq!(mac, derive_mac(peer, &Identity::Netns("web".to_owned())));
        assert_eq!(format_mac(mac), format_mac(derive_mac(peer, &web)));
        let mut seen = BTreeSet::new();
        let ids = (0..2000u32)
            .map(Identity::Pid)
            .chain((0..2000).map(|i| Identity::Netns(format!("c{i}"))))
            .chain([
                Identity::Path("web".to_owned()),
                Identity::Docker("web".to_owned()),
            ]);
        for id in ids.chain([web.clone()]) {
            let mac = derive_mac(peer, &id);
            assert_eq!(mac[0] & 0x01, 0, "unicast: {mac:?}");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered: {mac:?}");
            assert!(seen.insert(mac), "{id:?} repeats a MAC");
        }
        // The same name on another host is another container.
        assert_ne!(derive_mac(PeerName::from_u64(2), &web), mac);
    }

    #[test]
    fn stable_hash_is_pinned_and_separates_parts() {
        // Values from this implementation; they must never change (MACs, veth names).
        assert_eq!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"ab", b"c"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        assert_eq!(
            host_ifname(&Identity::Netns("web".to_owned())),
            host_ifname(&Identity::Netns("web".to_owned()))
        );
        let pinned = format_mac(derive_mac(
            PeerName::from_u64(0x0200_0000_0001),
            &Identity::Netns("web".to_owned()),
        ));
        assert_eq!(pinned, PINNED_WEB_MAC);
    }

    /// `derive_mac(02:00:00:00:00:01, netns web)` as first computed.
    const PINNED_WEB_MAC: &str = "1a:a8:87:39:38:3f";

    #[test]
    fn host_ifnames_fit_and_are_recognised() {
        for id in [
            Identity::Netns("a-very-long-namespace-name-indeed".to_owned()),
            Identity::Pid(u32::MAX),
            Identity::Docker("0123456789abcdef".repeat(4)),
            Identity::Path("/proc/1/ns/net".to_owned()),
        ] {
            let name = host_ifname(&id);
            assert_eq!(name.len(), 15, "{name}");
            crate::sys::check_ifname(&name).expect("valid interface name");
            assert!(is_our_ifname(&name), "{name}");
        }
        for other in [
            "vethwe-bridge",
            "vethwe-pcap",
            "vethwepl1234",
            "vethwe12345678",
            "eth0",
            "weave",
        ] {
            assert!(!is_our_ifname(other), "{other}");
        }
    }

    #[test]
    fn ps_ids_follow_weave() {
        assert_eq!(Identity::Netns("web".into()).ps_id(), "web");
        assert_eq!(Identity::Pid(77).ps_id(), "pid:77");
        assert_eq!(
            Identity::Docker("669f1fb785c9f5fceb24c1fe5ae92379".into()).ps_id(),
            "669f1fb785c9"
        );
        assert_eq!(Identity::Path("/run/x".into()).ps_id(), "/run/x");
    }

    #[test]
    fn addresses_in_use_are_refused() {
        let web = Identity::Netns("web".to_owned());
        let db = Identity::Netns("db".to_owned());
        let reg = registry(
            vec![record(web.clone(), &["198.18.0.1/15"], 1)],
            &["198.18.0.100/15"],
        );
        // Free, or already mine with the same prefix: fine.
        reg.check_free(&[net("198.18.0.2/15")], Owner::Container(&db))
            .expect("free");
        reg.check_free(&[net("198.18.0.1/15")], Owner::Container(&web))
            .expect("already mine");
        reg.check_free(&[net("198.18.0.100/15")], Owner::Expose)
            .expect("already exposed");
        let err = |addrs: &[&str], me| {
            let addrs: Vec<Ipv4Net> = addrs.iter().map(|a| net(a)).collect();
            match reg.check_free(&addrs, me) {
                Err(PlumbError::Invalid(why)) => why,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        assert_eq!(
            err(&["198.18.0.1/15"], Owner::Container(&db)),
            "198.18.0.1 is already in use by web"
        );
        assert_eq!(
            err(&["198.18.0.1/24"], Owner::Container(&db)),
            "198.18.0.1 is already in use by web"
        );
        assert_eq!(
            err(&["198.18.0.1/16"], Owner::Container(&web)),
            "198.18.0.1 is already there as 198.18.0.1/15"
        );
        assert_eq!(
            err(&["198.18.0.100/15"], Owner::Container(&db)),
            "198.18.0.100 is already in use by the host (weave:expose)"
        );
        assert_eq!(
            err(&["198.18.0.1/15"], Owner::Expose),
            "198.18.0.1 is already in use by web"
        );
        assert_eq!(
            err(&["198.18.0.7/15", "198.18.0.7/16"], Owner::Container(&db)),
            "198.18.0.7 given twice, as 198.18.0.7/15 and 198.18.0.7/16"
        );
    }

    #[test]
    fn containers_are_found_by_identity_or_namespace() {
        let web = Identity::Netns("web".to_owned());
        let reg = registry(vec![record(web.clone(), &["198.18.0.1/15"], 9)], &[]);
        let by_name = reg.find(&web, None).expect("by name");
        assert_eq!(by_name.identity, web);
        let by_ns = reg
            .find(&Identity::Pid(5), Some(NsId { dev: 4, ino: 9 }))
            .expect("the same namespace by its PID");
        assert_eq!(by_ns.identity, web);
        assert!(
            reg.find(&Identity::Pid(5), Some(NsId { dev: 4, ino: 10 }))
                .is_none()
        );
        assert!(reg.find(&Identity::Pid(5), None).is_none());
    }

    #[test]
    fn ps_lists_expose_first_then_containers_in_order_and_filters() {
        let mut docker = record(
            Identity::Docker("669f1fb785c9f5fceb24c1fe5ae92379".to_owned()),
            &["198.18.0.3/15"],
            3,
        );
        docker.docker_name = Some("db".to_owned());
        let mut web = record(
            Identity::Netns("web".to_owned()),
            &["198.18.0.1/15", "198.19.0.1/16"],
            1,
        );
        web.name = Some("frontend".to_owned());
        let reg = registry(
            vec![web, record(Identity::Pid(77), &[], 2), docker],
            &["198.18.0.100/15"],
        );
        let mac = [0x7a, 0xc4, 0x8b, 0xa1, 0xe6, 0xad];
        let all = reg.ps(Some(("weave", Some(mac))), &[]);
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            ["weave:expose", "669f1fb785c9", "pid:77", "web"],
            "{all:?}"
        );
        assert_eq!(all[0].mac, "7a:c4:8b:a1:e6:ad");
        assert_eq!(all[0].addrs, [net("198.18.0.100/15")]);
        assert_eq!(all[3].addrs, [net("198.18.0.1/15"), net("198.19.0.1/16")]);
        // No bridge: no weave:expose line.
        assert_eq!(reg.ps(None, &[]).len(), 3);
        let only = |filter: &[&str]| -> Vec<String> {
            let filter: Vec<String> = filter.iter().map(|s| (*s).to_owned()).collect();
            reg.ps(Some(("weave", Some(mac))), &filter)
                .into_iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(only(&["web"]), ["web"]);
        assert_eq!(only(&["frontend"]), ["web"]);
        assert_eq!(only(&["669f1f"]), ["669f1fb785c9"]);
        assert_eq!(only(&["db"]), ["669f1fb785c9"]);
        assert_eq!(only(&["/db"]), ["669f1fb785c9"]);
        assert_eq!(only(&["77"]), ["pid:77"]);
        assert_eq!(
            only(&["pid:77", "weave:expose"]),
            ["weave:expose", "pid:77"]
        );
        assert!(only(&["nothing"]).is_empty());
        assert!(only(&[""]).is_empty());
    }

    #[test]
    fn the_registry_survives_encoding() {
        let reg = registry(
            vec![
                record(Identity::Netns("web".to_owned()), &["198.18.0.1/15"], 1),
                record(Identity::Pid(9), &[], 2),
            ],
            &["198.18.0.100/15"],
        );
        let bytes = postcard::to_stdvec(&reg).expect("encode");
        let back: Registry = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, reg);
    }

    #[test]
    fn docker_inspect_output_is_read_strictly() {
        let ok = parse_inspect(
            "669f1fb785c9f5fceb24c1fe5ae92379421da7564461988362945ff8e7d9f6f3 28991 true /elastic_hamilton\n",
        )
        .expect("valid");
        assert_eq!(
            ok,
            DockerContainer {
                id: "669f1fb785c9f5fceb24c1fe5ae92379421da7564461988362945ff8e7d9f6f3".into(),
                pid: 28991,
                running: true,
                name: "elastic_hamilton".into(),
            }
        );
        let stopped = parse_inspect("669f1fb785c9f5fc 0 false /x").expect("valid");
        assert!(!stopped.running);
        for bad in [
            "",
            "669f1fb785c9f5fc 12 true",
            "669f1fb785c9f5fc twelve true /x",
            "669f1fb785c9f5fc 12 maybe /x",
            "not-an-id-at-all 12 true /x",
            "669f1fb785c9f5fc 12 true /x extra",
        ] {
            assert!(parse_inspect(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dedup_keeps_the_first_of_each() {
        let mut addrs = vec![
            net("198.18.0.1/15"),
            net("198.18.0.2/15"),
            net("198.18.0.1/15"),
        ];
        dedup(&mut addrs);
        assert_eq!(addrs, [net("198.18.0.1/15"), net("198.18.0.2/15")]);
    }
}
