//! weaveDNS in the daemon: the [`weave_dns::NameStore`] registered on the mesh's `"dns"`
//! gossip channel, and the name server answering from it.
//!
//! **Answering never waits on the event loop.** The loop owns the store (gossip merges
//! it); after each of its turns, if the store's live records changed, it publishes a
//! clone behind an `Arc` through a `tokio::sync::watch` channel ([`DnsService::flush`]).
//! The serving tasks answer from whatever snapshot is current, through one
//! [`weave_dns::Server`] (the answering rules, the forwarding cache) behind a mutex held
//! only for the microseconds an answer takes. Queries for other names are forwarded by
//! a task of their own to the host's upstream servers (the `nameserver` lines of the
//! daemon's /etc/resolv.conf, re-read when the file changes, our own host listen address
//! left out), each tried in turn with a timeout; SERVFAIL when all fail.
//!
//! **How containers reach it.** Like Docker's embedded DNS: when `weave attach` plumbs a
//! container, a short-lived thread enters the container's network namespace, brings
//! `lo` up if it is down, and creates a UDP socket and a TCP listener bound to
//! [`WEAVE_DNS_ADDR`]`:53` there; the sockets keep belonging to that namespace, and the
//! daemon's runtime serves them from the host. Then the container's resolv.conf gets
//! `nameserver 127.0.0.12` and `search weave.local` (the domain without its final dot),
//! after which the C library's resolver, dig and anything else reading resolv.conf use
//! it with no further step. DNS traffic never leaves the host and needs no route,
//! address or firewall rule: it stays on the container's loopback.
//!
//! Which resolv.conf: for a named namespace (`--netns NAME`), `/etc/netns/NAME/resolv.conf`,
//! the file `ip netns exec NAME` bind-mounts over /etc/resolv.conf (the directory is
//! created); for `--pid PID`, `/proc/PID/root/etc/resolv.conf`, unless that process shares
//! the host's root filesystem (then it is the host's file and is left alone); for a
//! Docker container, its `ResolvConfPath` (what Docker bind-mounts into it). The file is
//! written in place (bind mounts follow the inode); the lines it had before are kept in
//! it as `# weave-original:` comments (its `search` domains and `options` also stay in
//! effect after ours), and restored when the container is detached (or the file
//! removed, if there was none). A namespace given by path has no filesystem we can
//! know: it gets the sockets, and its resolver must be pointed at 127.0.0.12 by hand.
//!
//! Why 127.0.0.12: a loopback address works in any namespace without configuring
//! anything (all of 127.0.0.0/8 is local once `lo` is up), and no other process of the
//! container will be using it. Not 127.0.0.11, which Docker's own embedded DNS takes in
//! containers on user-defined networks, and not 127.0.0.53, systemd-resolved's stub,
//! which a container image running systemd may bind. `--without-dns` on attach skips
//! all of this (and the name registration). `--dns-listen-address ADDR[:PORT]`
//! additionally serves on the host (Weave's way: containers started with `--dns=ADDR`).
//!
//! The container's sockets close when it is detached, when the liveness sweep finds it
//! gone, and with the daemon; records of a container go the same way (owner = its `weave
//! ps` ID). Our own live records are persisted (the daemon's database) before a change
//! is acknowledged, and re-added at start before the mesh connects; the container task
//! then removes those of containers that died while the daemon was down, serves DNS
//! again in the others and re-registers their names (which changes nothing).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use weave_dns::{
    Answer, CHANNEL, ForwardOutcome, ForwardPlan, NameStore, Server, ServerConfig, Transport,
    WireName, parse_resolv_conf,
};
use weave_mesh::{Mesh, PeerName};

use super::containers::docker_inspect_output;
use super::state::State;
use crate::control::DaemonHandle;
use crate::control::dns::{DnsEntry, DnsRequest};
use crate::report::dns::{DnsEntryReport, DnsQueryStats, DnsReport};
use crate::sys::{DataSocket, Netlink, Netns, RecvQueue, SendQueue};

/// Where containers find the name server, in their own namespace (see the module docs).
pub(crate) const WEAVE_DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
/// The DNS port.
pub(crate) const DNS_PORT: u16 = 53;
/// Weave's default domain.
pub(crate) const DEFAULT_DOMAIN: &str = "weave.local.";
/// The resolv.conf the upstream servers come from.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// How often the host's resolv.conf is checked for changes (Weave: at most every 5 s).
const RESOLV_CHECK: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; beyond that, SERVFAIL at once.
const MAX_FORWARDS: usize = 512;
/// TCP clients at once per listener, and how long one may stay idle.
const MAX_TCP_CLIENTS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The first line of a resolv.conf we wrote, and how the original is kept in it.
const RESOLV_MARKER: &str =
    "# Written by weave attach: names are answered by weave's DNS in this namespace (127.0.0.12).";
const ORIGINAL_PREFIX: &str = "# weave-original: ";
const ORIGINAL_ABSENT: &str = "# weave-original-absent";
/// Persisted: our live records as (name, address, owner).
const KEY_RECORDS: &str = "dns.records.v1";

/// The DNS flags of `weave launch` / `weave router`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsSettings {
    /// `--no-dns` clears it.
    pub(crate) enabled: bool,
    /// `--dns-domain`, with its trailing dot.
    pub(crate) domain: String,
    /// `--dns-ttl`, seconds.
    pub(crate) ttl: u32,
    /// `--dns-listen-address`: also serve on the host here.
    pub(crate) listen: Option<SocketAddr>,
    /// `--dns-fallback-timeout`: how long each upstream may take.
    pub(crate) upstream_timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            domain: DEFAULT_DOMAIN.to_owned(),
            ttl: 1,
            listen: None,
            upstream_timeout: Duration::from_secs(5),
        }
    }
}

/// `--dns-domain`: a valid name, given with or without the final dot.
pub(crate) fn parse_domain(text: &str) -> Result<String, String> {
    let text = text.trim();
    let name = WireName::from_dotted(text).map_err(|e| e.to_string())?;
    let dotted = name.to_dotted();
    if dotted == "." {
        return Err("the DNS domain cannot be the root".to_owned());
    }
    Ok(dotted)
}

/// `--dns-fallback-timeout`: how long to wait for each upstream server, as `5` or `5s`
/// (seconds, fractions allowed) or `500ms`; between 10 ms and 60 s.
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a duration (5, 5s, 1.5s or 500ms)");
    let (number, scale) = match text.strip_suffix("ms") {
        Some(ms) => (ms, 1e-3),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !(0.01..=60.0).contains(&secs) {
        return Err(format!("{text:?} is outside 10ms..60s"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--dns-listen-address ADDR[:PORT]` (port 53 if not given).
pub(crate) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    text.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .map_err(|_| format!("{text:?} is not an address or address:port"))
}

/// `name` as a fully qualified name in `domain` (with the trailing dot): `db` and
/// `db.weave.local` both give `db.weave.local.`; a dotted name outside the domain is an
/// error (Weave only serves its domain).
pub(crate) fn qualify(name: &str, domain: &str) -> Result<String, String> {
    let bare = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let domain_bare = domain.trim_end_matches('.');
    let full = if bare.ends_with(&format!(".{domain_bare}")) {
        format!("{bare}.")
    } else if bare.contains('.') {
        return Err(format!(
            "{name} is not in the DNS domain {domain} (give a name like {}.{domain})",
            bare.split('.').next().unwrap_or("web")
        ));
    } else {
        format!("{bare}.{domain}")
    };
    WireName::from_dotted(&full)
        .map(|_| full)
        .map_err(|e| e.to_string())
}

/// What the serving tasks share: the current snapshot and the answerer.
pub(crate) struct Answerer {
    /// The serving thread's runtime (see [`serving_runtime`]).
    runtime: tokio::runtime::Handle,
    store: watch::Receiver<Arc<NameStore>>,
    server: Mutex<Server>,
    forwards: Arc<Semaphore>,
    served: AtomicUsize,
    domain: String,
}

impl Answerer {
    /// Serves a UDP socket and a TCP listener (non-blocking, bound) on the serving
    /// thread; the tasks end when their handles are aborted.
    fn serve_sockets(
        self: &Arc<Self>,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
    ) -> Vec<JoinHandle<()>> {
        let (a, b) = (Arc::clone(self), Arc::clone(self));
        vec![
            // Registered with the IO driver of the runtime they run on.
            self.runtime.spawn(async move {
                if udp.local_addr().is_ok_and(|a| a.is_ipv4()) {
                    serve_udp(udp, a).await;
                } else {
                    match UdpSocket::from_std(udp) {
                        Ok(udp) => serve_udp6(udp, a).await,
                        Err(err) => tracing::warn!(%err, "DNS: cannot serve a UDP socket"),
                    }
                }
            }),
            self.runtime.spawn(async move {
                match TcpListener::from_std(tcp) {
                    Ok(tcp) => serve_tcp(tcp, b).await,
                    Err(err) => tracing::warn!(%err, "DNS: cannot serve a TCP listener"),
                }
            }),
        ]
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        self.server.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, query: &[u8], transport: Transport) -> Answer {
        let store = Arc::clone(&self.store.borrow());
        self.server()
            .answer(&store, query, transport, Instant::now())
    }

    /// Carries out a forwarding plan: each upstream in turn; SERVFAIL if none answers.
    async fn forward(&self, plan: &ForwardPlan) -> Vec<u8> {
        for upstream in plan.upstreams() {
            let asked = match plan.transport() {
                Transport::Udp => self.ask_udp(*upstream, plan).await,
                Transport::Tcp => self.ask_tcp(*upstream, plan).await,
            };
            match asked {
                Ok(reply) => return reply,
                Err(why) => tracing::debug!(%upstream, why, "DNS upstream failed"),
            }
        }
        self.server().forward_failed(plan)
    }

    async fn ask_udp(&self, upstream: SocketAddr, plan: &ForwardPlan) -> Result<Vec<u8>, String> {
        let bind: SocketAddr = if upstream.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        socket.connect(upstream).await.map_err(|e| e.to_string())?;
        socket.send(plan.query()).await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + plan.timeout();
        let mut buf = vec![0u8; 65535];
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(err)) => return Err(err.to_string()),
                Err(_) => return Err("timed out".to_owned()),
            };
            match self.server().forward_reply(plan, &buf[..n], Instant::now()) {
                ForwardOutcome::Reply(reply) => return Ok(reply),
                ForwardOutcome::TryNext => return Err("refused or failed".to_owned()),
                ForwardOutcome::Ignore => {}
            }
        }
    }

    async fn ask_tcp(&self, upstream: SocketAddr, plan: &ForwardPlan) -> Result<Vec<u8>, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(upstream)
                .await
                .map_err(|e| e.to_string())?;
            let len = u16::try_from(plan.query().len()).map_err(|_| "query too long")?;
            let mut out = len.to_be_bytes().to_vec();
            out.extend_from_slice(plan.query());
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            loop {
                let reply = read_framed(&mut stream)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("closed")?;
                match self.server().forward_reply(plan, &reply, Instant::now()) {
                    ForwardOutcome::Reply(reply) => return Ok(reply),
                    ForwardOutcome::TryNext => return Err("refused or failed".to_owned()),
                    ForwardOutcome::Ignore => {}
                }
            }
        };
        tokio::time::timeout(plan.timeout(), exchange)
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }
}

/// Reads one length-prefixed DNS message; `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

/// Datagrams read (and replies sent) per system call when queries queue up.
const UDP_BATCH: usize = 32;
/// The largest datagram read: any (the buffers are allocated once per thread, and
/// pages never written cost no memory).
const UDP_QUERY_MAX: usize = 65535;
/// Room for a reply in the send batch; a longer one (up to the EDNS size we allow)
/// goes out on its own.
const UDP_REPLY_ROOM: usize = 1232;

thread_local! {
    /// The serving thread's batch buffers, shared by all its UDP sockets (a socket's
    /// turn never yields while it holds them): allocated once, not per query nor per
    /// container.
    static UDP_QUEUES: std::cell::RefCell<Option<(RecvQueue, SendQueue)>> =
        const { std::cell::RefCell::new(None) };
}

/// Serves DNS over UDP on `socket` until aborted.
///
/// Per wake-up: one recvmmsg takes every query waiting (up to [`UDP_BATCH`]), all are
/// answered under one lock of the server, and one sendmmsg sends the replies. When the
/// recvmmsg came back short the socket is known drained, so its readiness is cleared
/// without the extra receive that only says EAGAIN (a datagram arriving later is a new
/// edge: the IO driver reports it again). Unloaded, a query costs epoll_wait, recvmmsg
/// and sendmmsg, as dnsmasq's poll, recvmsg and sendmsg; loaded, less.
async fn serve_udp(socket: std::net::UdpSocket, answerer: Arc<Answerer>) {
    // Readable only: a writable interest would wake the thread after sends for nothing.
    let socket = match DataSocket::from(socket).into_async(Interest::READABLE) {
        Ok(socket) => Arc::new(socket),
        Err(err) => {
            tracing::warn!(%err, "DNS: cannot serve a UDP socket");
            return;
        }
    };
    loop {
        let mut guard = match socket.readable().await {
            Ok(guard) => guard,
            Err(err) => {
                tracing::warn!(%err, "DNS: UDP socket failed");
                return;
            }
        };
        let drained = UDP_QUEUES.with_borrow_mut(|queues| {
            let (rq, sq) = queues.get_or_insert_with(|| {
                (
                    RecvQueue::new(UDP_BATCH, UDP_QUERY_MAX),
                    SendQueue::new(UDP_BATCH, UDP_REPLY_ROOM),
                )
            });
            serve_udp_batch(&socket, &answerer, rq, sq)
        });
        if drained {
            guard.clear_ready();
        }
    }
}

/// One turn of [`serve_udp`]: reads what is waiting, answers, sends. True when the
/// socket had no more than that (drained).
fn serve_udp_batch(
    socket: &Arc<AsyncFd<DataSocket>>,
    answerer: &Arc<Answerer>,
    rq: &mut RecvQueue,
    sq: &mut SendQueue,
) -> bool {
    let n = match socket.get_ref().recv(rq, false) {
        Ok(n) => n,
        Err(err) => {
            // ICMP errors of earlier sends surface here; nothing to do but go on.
            tracing::trace!(%err, "DNS: receive failed");
            return false;
        }
    };
    if n == 0 {
        return true;
    }
    let store = Arc::clone(&answerer.store.borrow());
    let now = Instant::now();
    let mut server = answerer.server();
    for i in 0..n {
        let (query, client, truncated) = rq.datagram(i);
        if truncated {
            tracing::trace!(%client, "DNS: dropping an oversized query");
            continue;
        }
        match server.answer(&store, query, Transport::Udp, now) {
            Answer::Reply(reply) => match sq.next_buf() {
                Some(buf) if reply.len() <= buf.len() => {
                    buf[..reply.len()].copy_from_slice(&reply);
                    sq.commit(reply.len(), client);
                }
                _ => send_udp_reply(socket.get_ref(), &reply, client),
            },
            Answer::Forward(plan) => {
                let Ok(permit) = Arc::clone(&answerer.forwards).try_acquire_owned() else {
                    let reply = server.forward_failed(&plan);
                    send_udp_reply(socket.get_ref(), &reply, client);
                    continue;
                };
                let (socket, answerer) = (Arc::clone(socket), Arc::clone(answerer));
                tokio::spawn(async move {
                    let reply = answerer.forward(&plan).await;
                    send_udp_reply(socket.get_ref(), &reply, client);
                    drop(permit);
                });
            }
            Answer::Drop => {}
        }
    }
    drop(server);
    if !sq.is_empty() {
        socket.get_ref().send(sq, |_, _, to, err| {
            tracing::trace!(%to, %err, "DNS: cannot send a reply");
        });
    }
    n < UDP_BATCH
}

/// Sends one reply now; one the kernel will not take at once (a full socket buffer) is
/// dropped, and the client asks again.
fn send_udp_reply(socket: &DataSocket, reply: &[u8], to: SocketAddrV4) {
    if let Err(err) = socket.send_to(reply, to) {
        tracing::trace!(%to, %err, "DNS: cannot send a reply");
    }
}

/// Serves DNS over UDP on an IPv6 `socket` (`--dns-listen-address` only) until aborted,
/// a datagram at a time.
async fn serve_udp6(socket: UdpSocket, answerer: Arc<Answerer>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(err) => {
                // ICMP errors of earlier sends surface here; nothing to do but go on.
                tracing::trace!(%err, "DNS: receive failed");
                continue;
            }
        };
        match answerer.answer(&buf[..n], Transport::Udp) {
            Answer::Reply(reply) => {
                if socket.try_send_to(&reply, client).is_err() {
                    let _ = socket.send_to(&reply, client).await;
                }
            }
            Answer::Forward(plan) => {
                let Ok(permit) = Arc::clone(&answerer.forwards).try_acquire_owned() else {
                    let reply = answerer.server().forward_failed(&plan);
                    let _ = socket.send_to(&reply, client).await;
                    continue;
                };
                let (socket, answerer) = (Arc::clone(&socket), Arc::clone(&answerer));
                tokio::spawn(async move {
                    let reply = answerer.forward(&plan).await;
                    let _ = socket.send_to(&reply, client).await;
                    drop(permit);
                });
            }
            Answer::Drop => {}
        }
    }
}

/// Serves DNS over TCP on `listener` until aborted.
async fn serve_tcp(listener: TcpListener, answerer: Arc<Answerer>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&clients).acquire_owned().await else {
            return;
        };
        let answerer = Arc::clone(&answerer);
        tokio::spawn(async move {
            let _ = serve_tcp_client(stream, &answerer).await;
            drop(permit);
        });
    }
}

async fn serve_tcp_client(mut stream: TcpStream, answerer: &Answerer) -> std::io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let Some(query) = query? else {
            return Ok(());
        };
        let reply = match answerer.answer(&query, Transport::Tcp) {
            Answer::Reply(reply) => reply,
            Answer::Forward(plan) => answerer.forward(&plan).await,
            Answer::Drop => return Ok(()),
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        stream.write_all(&out).await?;
    }
}

/// Watches the host's resolv.conf and hands the answerer its upstream servers.
async fn watch_upstreams(path: PathBuf, ourselves: Vec<SocketAddr>, answerer: Arc<Answerer>) {
    let mut seen: Option<(u64, u64, i64, i64, u64)> = None;
    let mut tick = tokio::time::interval(RESOLV_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
        if stamp == seen && seen.is_some() {
            continue;
        }
        seen = stamp;
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let upstreams = parse_resolv_conf(&text, &ourselves);
        let mut server = answerer.server();
        if server.upstreams() != upstreams.as_slice() {
            tracing::info!(
                "DNS: upstream servers from {}: {}",
                path.display(),
                show_upstreams(&upstreams)
            );
            server.set_upstreams(upstreams);
        }
    }
}

fn show_upstreams(upstreams: &[SocketAddr]) -> String {
    if upstreams.is_empty() {
        return "none".to_owned();
    }
    let list: Vec<String> = upstreams.iter().map(ToString::to_string).collect();
    list.join(", ")
}

/// The container task's handle: serving DNS inside containers, and name checks.
#[derive(Clone)]
pub(crate) struct DnsHandle {
    answerer: Arc<Answerer>,
}

/// Whose resolv.conf to point at us (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolvTarget {
    /// `ip netns add NAME`.
    Named(String),
    /// A namespace file: no filesystem we know of.
    Path(String),
    Pid(u32),
    /// A Docker container, by full ID.
    Docker(String),
}

impl DnsHandle {
    /// `name` qualified in our domain, or why it cannot be served.
    pub(crate) fn qualify(&self, name: &str) -> Result<String, String> {
        qualify(name, &self.answerer.domain)
    }

    /// Opens the name server's sockets inside `ns`, serves them, and points the
    /// container's resolv.conf at them.
    pub(crate) async fn serve(&self, ns: &Netns, resolv: &ResolvTarget) -> Result<Served, String> {
        let inner = Netlink::connect_in(ns).await.map_err(|e| e.to_string())?;
        if inner
            .link("lo")
            .await
            .map_err(|e| e.to_string())?
            .is_some_and(|lo| !lo.up)
        {
            inner.set_up("lo").await.map_err(|e| e.to_string())?;
        }
        drop(inner);
        let addr = SocketAddr::from((WEAVE_DNS_ADDR, DNS_PORT));
        let (udp, tcp) = ns
            .run(move || -> std::io::Result<_> {
                let udp = std::net::UdpSocket::bind(addr)?;
                udp.set_nonblocking(true)?;
                let tcp = std::net::TcpListener::bind(addr)?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot listen on {addr} in the container: {e}"))?;
        let tasks = self.answerer.serve_sockets(udp, tcp);
        self.answerer.served.fetch_add(1, Ordering::Relaxed);
        let mut served = Served {
            tasks,
            resolv: None,
            answerer: Arc::clone(&self.answerer),
        };
        match resolv_path(resolv).await {
            Ok(Some(path)) => {
                let search = self.answerer.domain.trim_end_matches('.').to_owned();
                let write = {
                    let path = path.clone();
                    tokio::task::spawn_blocking(move || point_resolv_conf(&path, &search))
                };
                match write.await {
                    Ok(Ok(())) => served.resolv = Some(path),
                    Ok(Err(err)) => {
                        tracing::warn!("DNS: cannot write {}: {err}", path.display());
                    }
                    Err(_) => {}
                }
            }
            Ok(None) => {}
            Err(why) => tracing::warn!("DNS: not configuring the container's resolver: {why}"),
        }
        Ok(served)
    }
}

/// A container served: its sockets' tasks (stopped when dropped) and the resolv.conf we
/// pointed at us.
pub(crate) struct Served {
    tasks: Vec<JoinHandle<()>>,
    resolv: Option<PathBuf>,
    answerer: Arc<Answerer>,
}

impl Served {
    /// Stops serving; with `restore`, puts the container's resolv.conf back as it was
    /// (detach, container gone). Without, leaves it pointing at us (`weave stop`: the
    /// next daemon serves it again).
    pub(crate) fn close(mut self, restore: bool) {
        if restore
            && let Some(path) = self.resolv.take()
            && let Err(err) = restore_resolv_conf(&path)
        {
            tracing::debug!("DNS: cannot restore {}: {err}", path.display());
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.answerer.served.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a container's resolv.conf is one we wrote: it was served by us before (a
/// container found again after our state was lost).
pub(crate) async fn resolv_is_ours(target: &ResolvTarget) -> bool {
    let path = match target {
        // Without creating /etc/netns/NAME, as resolv_path would.
        ResolvTarget::Named(name) => Some(Path::new("/etc/netns").join(name).join("resolv.conf")),
        other => resolv_path(other).await.ok().flatten(),
    };
    path.and_then(|path| std::fs::read_to_string(path).ok())
        .is_some_and(|text| kept_original(&text).is_some())
}

/// The resolv.conf file of a container, if we can know it.
async fn resolv_path(target: &ResolvTarget) -> Result<Option<PathBuf>, String> {
    Ok(match target {
        ResolvTarget::Named(name) => Some(netns_resolv_conf(name)?),
        ResolvTarget::Path(path) => {
            // A bind mount made by `ip netns add` is a named namespace.
            let named = ["/run/netns/", "/var/run/netns/"]
                .iter()
                .find_map(|dir| path.strip_prefix(dir))
                .filter(|n| !n.contains('/') && !n.is_empty());
            match named {
                Some(name) => Some(netns_resolv_conf(name)?),
                None => None,
            }
        }
        ResolvTarget::Pid(pid) => {
            let root = PathBuf::from(format!("/proc/{pid}/root"));
            let same = |other: &Path| {
                let (Ok(a), Ok(b)) = (std::fs::metadata(&root), std::fs::metadata(other)) else {
                    return true;
                };
                (a.dev(), a.ino()) == (b.dev(), b.ino())
            };
            if same(Path::new("/")) || same(Path::new("/proc/1/root")) {
                return Err(format!(
                    "process {pid} shares the host's filesystem (point its resolver at {WEAVE_DNS_ADDR} by hand)"
                ));
            }
            Some(root.join("etc/resolv.conf"))
        }
        ResolvTarget::Docker(id) => Some(docker_resolv_conf(id).await?),
    })
}

fn netns_resolv_conf(name: &str) -> Result<PathBuf, String> {
    let dir = Path::new("/etc/netns").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir.join("resolv.conf"))
}

async fn docker_resolv_conf(id: &str) -> Result<PathBuf, String> {
    let out = docker_inspect_output(id, "{{.ResolvConfPath}}")
        .await
        .map_err(|_| "docker inspect timed out".to_owned())?
        .map_err(|e| format!("cannot run docker inspect: {e}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !path.starts_with('/') {
        return Err(format!("docker gave no resolv.conf path for {id}"));
    }
    Ok(PathBuf::from(path))
}

/// The original content kept in a resolv.conf we wrote: `Some(None)` if there was no
/// file; `None` if `text` is not ours.
fn kept_original(text: &str) -> Option<Option<String>> {
    let mut lines = text.lines();
    if lines.next() != Some(RESOLV_MARKER) {
        return None;
    }
    let mut original = String::new();
    for line in lines {
        if line == ORIGINAL_ABSENT {
            return Some(None);
        }
        if let Some(kept) = line.strip_prefix(ORIGINAL_PREFIX) {
            original.push_str(kept);
            original.push('\n');
        }
    }
    Some(Some(original))
}

/// The resolv.conf we write: us first, the original's search domains and options
/// after ours, the original kept as comments.
pub(crate) fn resolv_conf_text(original: Option<&str>, search: &str) -> String {
    let mut out = format!("{RESOLV_MARKER}\nnameserver {WEAVE_DNS_ADDR}\n");
    let mut domains = vec![search.to_owned()];
    let mut options = Vec::new();
    for line in original.unwrap_or("").lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search" | "domain") => {
                for d in words {
                    if !domains.iter().any(|x| x == d) {
                        domains.push(d.to_owned());
                    }
                }
            }
            Some("options") => options.push(line.trim().to_owned()),
            _ => {}
        }
    }
    out.push_str(&format!("search {}\n", domains.join(" ")));
    for line in options {
        out.push_str(&line);
        out.push('\n');
    }
    match original {
        None => {
            out.push_str(ORIGINAL_ABSENT);
            out.push('\n');
        }
        Some(text) => {
            for line in text.lines() {
                out.push_str(ORIGINAL_PREFIX);
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Points `path` at us, in place (bind mounts of it follow the inode).
fn point_resolv_conf(path: &Path, search: &str) -> std::io::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let original = match current.as_deref().map(kept_original) {
        // Ours already (re-attach, or a restart): keep the original it holds.
        Some(Some(original)) => original,
        Some(None) => current,
        None => None,
    };
    std::fs::write(path, resolv_conf_text(original.as_deref(), search))
}

/// Puts back what a resolv.conf we wrote held before; leaves one changed since alone.
fn restore_resolv_conf(path: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path)?;
    match kept_original(&text) {
        None => Ok(()),
        Some(None) => {
            std::fs::remove_file(path)?;
            // The directory of a named namespace, if nothing else is in it.
            if let Some(dir) = path.parent()
                && dir.parent() == Some(Path::new("/etc/netns"))
            {
                let _ = std::fs::remove_dir(dir);
            }
            Ok(())
        }
        Some(Some(original)) => std::fs::write(path, original),
    }
}

/// DNS for the container task: which containers are served, and their records (kept
/// through the event loop). Owners are `weave ps` IDs. Every method logs rather than
/// fails: a container whose DNS could not be set up is still attached.
pub(crate) struct ContainerDns {
    handle: Option<DnsHandle>,
    daemon: DaemonHandle,
    served: BTreeMap<String, Served>,
}

impl ContainerDns {
    pub(crate) fn new(handle: Option<DnsHandle>, daemon: DaemonHandle) -> Self {
        Self {
            handle,
            daemon,
            served: BTreeMap::new(),
        }
    }

    /// `name` qualified in our domain (checked before a container is plumbed); `None`
    /// when DNS is off or there is no name.
    pub(crate) fn check_name(&self, name: Option<&str>) -> Result<Option<String>, String> {
        match (&self.handle, name) {
            (Some(handle), Some(name)) => handle.qualify(name).map(Some),
            _ => Ok(None),
        }
    }

    /// A container attached (or re-attached, or found again at start): serves DNS in
    /// `ns` unless already, and registers `name` at `addrs`. `old_name`: the name it had
    /// before, whose records go.
    pub(crate) async fn up(
        &mut self,
        owner: &str,
        ns: Option<&Netns>,
        resolv: &ResolvTarget,
        name: Option<&str>,
        old_name: Option<&str>,
        addrs: &[Ipv4Addr],
    ) {
        let Some(handle) = &self.handle else {
            return;
        };
        if let Some(ns) = ns
            && !self.served.contains_key(owner)
        {
            match handle.serve(ns, resolv).await {
                Ok(served) => {
                    self.served.insert(owner.to_owned(), served);
                }
                Err(why) => tracing::warn!("DNS: cannot serve {owner}: {why}"),
            }
        }
        if let Some(old) = old_name
            && Some(old) != name
        {
            self.remove(Some(owner), None, Some(old)).await;
        }
        if let Some(name) = name {
            match self
                .daemon
                .dns_add(name.to_owned(), addrs.to_vec(), owner.to_owned())
                .await
            {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(why)) => tracing::warn!("DNS: cannot register {name} for {owner}: {why}"),
            }
        }
    }

    /// Addresses taken off a container: their records go.
    pub(crate) async fn drop_addrs(&mut self, owner: &str, addrs: &[Ipv4Addr]) {
        for addr in addrs {
            self.remove(Some(owner), Some(*addr), None).await;
        }
    }

    /// A container detached or gone: its records go, its sockets close, its
    /// resolv.conf is put back.
    pub(crate) async fn down(&mut self, owner: &str) {
        if let Some(served) = self.served.remove(owner) {
            served.close(true);
        }
        if self.handle.is_some() {
            self.remove(Some(owner), None, None).await;
        }
    }

    /// `weave reset`: every container's resolv.conf put back.
    pub(crate) fn reset(&mut self) {
        for (_, served) in std::mem::take(&mut self.served) {
            served.close(true);
        }
    }

    async fn remove(&self, owner: Option<&str>, addr: Option<Ipv4Addr>, name: Option<&str>) {
        let answer = self
            .daemon
            .dns_remove(owner.map(str::to_owned), addr, name.map(str::to_owned))
            .await;
        if let Ok(Err(why)) = answer {
            tracing::warn!("DNS: cannot remove records of {owner:?}: {why}");
        }
    }
}

/// The event loop's side: the store on the mesh, the snapshot it publishes, the
/// listeners on the host.
pub(crate) struct DnsService {
    settings: DnsSettings,
    state: Arc<State>,
    running: Option<Running>,
}

struct Running {
    /// Ends the serving thread when dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
    publish: watch::Sender<Arc<NameStore>>,
    published: u64,
    answerer: Arc<Answerer>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl DnsService {
    /// Registers the store on the mesh and starts serving (unless `--no-dns`).
    pub(crate) async fn start(
        settings: &DnsSettings,
        local: PeerName,
        state: Arc<State>,
        mesh: &mut Mesh,
    ) -> Result<Self> {
        if !settings.enabled {
            tracing::info!("DNS is off (--no-dns)");
            return Ok(Self {
                settings: settings.clone(),
                state,
                running: None,
            });
        }
        let domain = WireName::from_dotted(&settings.domain)
            .map_err(|e| anyhow::anyhow!("--dns-domain: {e}"))?;
        let mut store = NameStore::new(local, Instant::now());
        let saved = state
            .get::<Vec<(String, Ipv4Addr, String)>>(KEY_RECORDS)
            .context("cannot read the saved DNS records")?
            .unwrap_or_default();
        for (name, addr, owner) in &saved {
            if let Err(err) = store.add(name, *addr, owner, Instant::now()) {
                tracing::warn!(%err, "DNS: dropping a saved record");
            }
        }
        if !saved.is_empty() {
            tracing::info!("DNS: {} saved records of ours back", saved.len());
        }
        let (publish, snapshot) = watch::channel(Arc::new(store.clone()));
        mesh.register_channel(CHANNEL, Box::new(store));
        let config = ServerConfig {
            domain,
            ttl: settings.ttl,
            upstream_timeout: settings.upstream_timeout,
            ..ServerConfig::default()
        };
        let (runtime, stop) = serving_runtime()?;
        let answerer = Arc::new(Answerer {
            runtime,
            store: snapshot,
            server: Mutex::new(Server::new(config, random_seed())),
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            served: AtomicUsize::new(0),
            domain: settings.domain.clone(),
        });
        let mut tasks = Vec::new();
        let mut ourselves = Vec::new();
        if let Some(listen) = settings.listen {
            let udp = std::net::UdpSocket::bind(listen)
                .with_context(|| format!("cannot listen on UDP {listen} for DNS"))?;
            let tcp = std::net::TcpListener::bind(listen)
                .with_context(|| format!("cannot listen on TCP {listen} for DNS"))?;
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            tasks.extend(answerer.serve_sockets(udp, tcp));
            ourselves.push(listen);
            tracing::info!(%listen, "DNS: listening on the host");
        }
        tasks.push(tokio::spawn(watch_upstreams(
            PathBuf::from(HOST_RESOLV_CONF),
            ourselves,
            Arc::clone(&answerer),
        )));
        tracing::info!(domain = %settings.domain, ttl = settings.ttl, "DNS: serving containers at {WEAVE_DNS_ADDR}:{DNS_PORT} in their namespaces");
        Ok(Self {
            settings: settings.clone(),
            state,
            running: Some(Running {
                _stop: stop,
                publish,
                published: 0,
                answerer,
                tasks,
            }),
        })
    }

    /// What the container task serves containers with; `None` when DNS is off.
    pub(crate) fn handle(&self) -> Option<DnsHandle> {
        self.running.as_ref().map(|r| DnsHandle {
            answerer: Arc::clone(&r.answerer),
        })
    }

    /// Publishes a new snapshot if the live records changed. Call after every turn of
    /// the loop.
    pub(crate) fn flush(&mut self, mesh: &Mesh) {
        let Some(running) = &mut self.running else {
            return;
        };
        let Some(store) = mesh.channel::<NameStore>(CHANNEL) else {
            return;
        };
        if store.generation() != running.published {
            running.published = store.generation();
            running.publish.send_replace(Arc::new(store.clone()));
        }
    }

    /// Carries out a request of the API or the container task.
    pub(crate) fn handle_request(&mut self, mesh: &mut Mesh, request: DnsRequest) {
        const OFF: &str = "DNS is off (the daemon was launched with --no-dns)";
        let now = Instant::now();
        let domain = self.settings.domain.clone();
        let enabled = self.running.is_some();
        let call = |mesh: &mut Mesh, f: &mut dyn FnMut(&mut NameStore) -> Result<usize, String>| {
            mesh.with_channel::<NameStore, _>(CHANNEL, now, |store, _| f(store))
                .unwrap_or_else(|| Err(OFF.to_owned()))
        };
        match request {
            DnsRequest::Add {
                name,
                addrs,
                owner,
                reply,
            } => {
                let result = qualify(&name, &domain).and_then(|full| {
                    call(mesh, &mut |store| {
                        let mut added = 0;
                        for addr in &addrs {
                            if store
                                .add(&full, *addr, &owner, now)
                                .map_err(|e| e.to_string())?
                            {
                                added += 1;
                            }
                        }
                        Ok(added)
                    })
                });
                let result = result.and_then(|n| self.persist(mesh, n));
                if let Ok(n) = &result
                    && *n > 0
                {
                    tracing::info!("DNS: added {name} for {owner}");
                }
                let _ = reply.send(result);
            }
            DnsRequest::Remove {
                owner,
                addr,
                name,
                reply,
            } => {
                let full = name.as_deref().map(|n| qualify(n, &domain)).transpose();
                let result = full.and_then(|full| {
                    call(mesh, &mut |store| {
                        store
                            .remove(owner.as_deref(), addr, full.as_deref(), now)
                            .map_err(|e| e.to_string())
                    })
                });
                let result = result.and_then(|n| self.persist(mesh, n));
                let _ = reply.send(result);
            }
            DnsRequest::Lookup { name, reply } => {
                let result = if enabled {
                    qualify(&name, &domain).map(|full| {
                        mesh.channel::<NameStore>(CHANNEL)
                            .map(|store| store.lookup_name(&full))
                            .unwrap_or_default()
                    })
                } else {
                    Err(OFF.to_owned())
                };
                let _ = reply.send(result);
            }
            DnsRequest::Entries { reply } => {
                let result = match mesh.channel::<NameStore>(CHANNEL) {
                    Some(store) if enabled => Ok(store
                        .entries()
                        .into_iter()
                        .map(|e| DnsEntry {
                            name: e.name,
                            addr: e.addr,
                            owner: e.owner,
                            origin: e.origin.to_string(),
                        })
                        .collect()),
                    _ => Err(OFF.to_owned()),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Saves our live records if `changed` says they changed (before the change is
    /// acknowledged); passes `changed` on.
    fn persist(&self, mesh: &Mesh, changed: usize) -> Result<usize, String> {
        if changed == 0 {
            return Ok(0);
        }
        let Some(store) = mesh.channel::<NameStore>(CHANNEL) else {
            return Ok(changed);
        };
        let local = store.local();
        let ours: Vec<(String, Ipv4Addr, String)> = store
            .entries()
            .into_iter()
            .filter(|e| e.origin == local)
            .map(|e| (e.name, e.addr, e.owner))
            .collect();
        self.state.put(KEY_RECORDS, &ours).map_err(|err| {
            tracing::error!(%err, "DNS: cannot save our records");
            format!("cannot save the DNS records: {err}")
        })?;
        Ok(changed)
    }

    /// The `DNS` section of the report; `None` when DNS is off.
    pub(crate) fn report(&self, mesh: &Mesh) -> Option<DnsReport> {
        let running = self.running.as_ref()?;
        let store = mesh.channel::<NameStore>(CHANNEL)?;
        let server = running.answerer.server();
        let stats = server.stats();
        Some(DnsReport {
            domain: self.settings.domain.clone(),
            upstream: server.upstreams().iter().map(ToString::to_string).collect(),
            address: format!("{WEAVE_DNS_ADDR}:{DNS_PORT}"),
            host_address: self.settings.listen.map(|a| a.to_string()),
            ttl: self.settings.ttl,
            local_entries: store.local_entry_count(),
            served_containers: running.answerer.served.load(Ordering::Relaxed),
            queries: DnsQueryStats {
                local: stats.local,
                cache_hits: stats.cache_hits,
                forwarded: stats.forwarded,
                errors: stats.errors,
                dropped: stats.dropped,
                servfail: stats.servfail,
            },
            entries: store
                .entries()
                .into_iter()
                .map(|e| DnsEntryReport {
                    hostname: e.name,
                    origin: e.origin.to_string(),
                    container_id: e.owner,
                    address: e.addr.to_string(),
                })
                .collect(),
        })
    }
}

/// The thread DNS is served on: a current-thread runtime of its own, so a query is
/// read, answered and sent by the thread its socket woke, without handing it between
/// the daemon's workers, and the answering never competes with the mesh and data-plane
/// tasks for a worker (benches/dns_bench.sh: 1.1-1.4x dnsmasq's queries/s with it, on a
/// loaded 2-core machine). It ends when the returned sender is dropped.
fn serving_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the DNS runtime")?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("weave-dns".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .context("cannot start the DNS thread")?;
    Ok((handle, stop))
}

/// A seed for shuffles and upstream query IDs (IDs must not be guessable off-host).
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut file) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if file.read_exact(&mut bytes).is_ok() {
            return u64::from_le_bytes(bytes);
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_in_the_domain() {
        let d = DEFAULT_DOMAIN;
        assert_eq!(qualify("db", d), Ok("db.weave.local.".to_owned()));
        assert_eq!(qualify("DB.", d), Ok("db.weave.local.".to_owned()));
        assert_eq!(
            qualify("db.weave.local", d),
            Ok("db.weave.local.".to_owned())
        );
        assert_eq!(
            qualify("a.db.weave.local.", d),
            Ok("a.db.weave.local.".to_owned())
        );
        assert!(qualify("db.example.com", d).is_err());
        assert!(qualify("", d).is_err());
        assert!(qualify("a b", d).is_err());
    }

    #[test]
    fn flags_are_read() {
        assert_eq!(parse_domain("weave.local"), Ok("weave.local.".to_owned()));
        assert_eq!(
            parse_domain("Example.Local."),
            Ok("example.local.".to_owned())
        );
        assert!(parse_domain(".").is_err());
        assert!(parse_domain("a..b").is_err());
        assert_eq!(
            parse_listen("198.51.100.1"),
            Ok("198.51.100.1:53".parse().expect("literal"))
        );
        assert_eq!(
            parse_listen("198.51.100.1:5353"),
            Ok("198.51.100.1:5353".parse().expect("literal"))
        );
        assert!(parse_listen("nope").is_err());
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "", "s", "ms", "-1", "0", "5ms", "61", "NaN", "inf", "5m", "1e9",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolv_conf_keeps_and_restores_the_original() {
        let dir = std::env::temp_dir().join(format!("weave-dns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("resolv.conf");
        let original = "search example.invalid\nnameserver 192.0.2.53\noptions ndots:2\n";
        std::fs::write(&path, original).expect("write");
        point_resolv_conf(&path, "weave.local").expect("point");
        let ours = std::fs::read_to_string(&path).expect("read");
        assert!(ours.starts_with(RESOLV_MARKER), "{ours}");
        assert!(ours.contains("\nnameserver 127.0.0.12\n"), "{ours}");
        assert!(
            ours.contains("\nsearch weave.local example.invalid\n"),
            "{ours}"
        );
        assert!(ours.contains("\noptions ndots:2\n"), "{ours}");
        // The only active nameserver is ours.
        let active: Vec<&str> = ours
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .collect();
        assert_eq!(active, ["nameserver 127.0.0.12"]);
        // Pointing again (re-attach, restart) does not nest.
        point_resolv_conf(&path, "weave.local").expect("again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), ours);
        restore_resolv_conf(&path).expect("restore");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), original);
        // A file that was not there goes away again.
        std::fs::remove_file(&path).expect("rm");
        point_resolv_conf(&path, "weave.local").expect("point");
        assert!(path.exists());
        restore_resolv_conf(&path).expect("restore");
        assert!(!path.exists());
        // One changed since by someone else is left alone.
        std::fs::write(&path, "nameserver 192.0.2.1\n").expect("write");
        restore_resolv_conf(&path).expect("restore");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "nameserver 192.0.2.1\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
