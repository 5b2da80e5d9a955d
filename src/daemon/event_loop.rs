//! The event loop: sockets, timers and API requests in; the mesh core's output out.
//!
//! One task owns the [`Mesh`] and everything it decides; connections are a reader task
//! and a writer task each, talking to the loop over channels. Nothing but this loop
//! touches the mesh, so the core stays single-threaded and deterministic.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use weave_mesh::maker::normalize_target;
use weave_mesh::session::derive_psk;
use weave_mesh::{Action, ConnId, Event, Mesh, MeshConfig, PeerName, RouteKind};
use weave_router::PathReport;

use super::DaemonConfig;
use super::containers::{self, Containers};
use super::dns::DnsService;
use super::ipam::IpamService;
use super::state::State;
use crate::control::{DaemonHandle, Request};
use crate::dataplane::{self, Dataplane, DataplaneConfig, EngineEvent};
use crate::report::{
    ConnectionReport, PeerConnectionReport, PeerReport, Report, RouterReport, RouterStats,
};

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection whose unwritten output grows past this is too slow to keep.
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Persisted keys.
const KEY_PEER_NAME: &str = "peer-name";
const KEY_TARGETS: &str = "targets";

/// Input from the IO tasks to the loop.
enum Input {
    Bytes(ConnId, Vec<u8>),
    Closed(ConnId, String),
    Dialed {
        target: String,
        result: std::result::Result<TcpStream, String>,
    },
}

/// What the loop holds for one TCP connection.
struct ConnIo {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    reader: JoinHandle<()>,
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Runs the daemon in the foreground until it is stopped (`weave stop`, SIGTERM).
pub(crate) async fn run(config: DaemonConfig) -> Result<()> {
    let state = std::sync::Arc::new(State::open(&config.state_dir)?);
    // A name made up now has no past: IPAM need not re-learn anything for it.
    let (name, new_name) = match config.name {
        Some(name) => (name, false),
        None => match state.get::<u64>(KEY_PEER_NAME)? {
            Some(raw) => (PeerName::from_u64(raw), false),
            None => match dataplane::remembered_peer_name().await {
                Some(name) => {
                    tracing::info!(
                        "no saved state, but the bridge says we were {name}: keeping that name"
                    );
                    (name, false)
                }
                None => (PeerName::random(random_u64()), true),
            },
        },
    };
    state.put(KEY_PEER_NAME, &name.as_u64())?;
    let nickname = config.nickname.clone().unwrap_or_else(hostname);

    let bind_ip = config.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let listener = TcpListener::bind(SocketAddr::new(bind_ip, config.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on TCP port {} (is another weave running?)",
                config.port
            )
        })?;
    let http = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the HTTP API", config.http_addr))?;
    let status = TcpListener::bind(config.status_addr)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for status and metrics",
                config.status_addr
            )
        })?;

    let mut mesh_config = MeshConfig::new(name, nickname, random_u64());
    mesh_config.uid = random_u64();
    mesh_config.generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    mesh_config.listen_port = config.port;
    mesh_config.discovery = config.discovery;
    mesh_config.conn_limit = config.conn_limit;
    mesh_config.software = env!("CARGO_PKG_VERSION").to_owned();
    // The data plane says when a connection's UDP path works both ways.
    mesh_config.auto_establish = false;
    if let Some(password) = &config.password {
        mesh_config.session.psk = Some(derive_psk(password.as_bytes()));
    }
    let now = Instant::now();
    let mut mesh = Mesh::new(mesh_config, now);

    // Peers named at launch replace the persisted ones; without any, rejoin those.
    let mut targets = Vec::new();
    for peer in &config.peers {
        targets.push(normalize_target(peer, config.port).map_err(anyhow::Error::msg)?);
    }
    if targets.is_empty() {
        targets = state.get::<Vec<String>>(KEY_TARGETS)?.unwrap_or_default();
    }
    mesh.connect(&targets, true, now);
    state.put(KEY_TARGETS, &targets)?;
    // Consensus' quorum counts the peers we were launched with, and ourselves.
    let ipam = IpamService::start(
        &config.ipam,
        targets.len(),
        name,
        new_name,
        state.clone(),
        &mut mesh,
    )?;
    let dns = DnsService::start(&config.dns, name, state.clone(), &mut mesh).await?;

    let (engine_tx, engine_events) = mpsc::unbounded_channel();
    let dataplane = Dataplane::start(
        &DataplaneConfig {
            local: name,
            host: config.host,
            port: config.port,
            mtu: config.mtu,
            fastdp: config.fastdp,
            encrypted: config.password.is_some(),
        },
        engine_tx,
    )
    .await?;

    let (request_tx, requests) = mpsc::channel(64);
    // The container task asks IPAM for addresses through the same door as the API.
    let ipam_handle = DaemonHandle::new(request_tx.clone());
    let api = tokio::spawn(crate::api::serve(
        http,
        status,
        DaemonHandle::new(request_tx),
    ));
    tracing::info!(%name, port = config.port, encryption = config.password.is_some(), "weave router started");

    let containers = Containers::start(
        state.clone(),
        containers::BRIDGE,
        name,
        ipam_handle,
        dns.handle(),
    );
    let mut daemon = Daemon {
        mesh,
        ipam,
        dns,
        state,
        containers,
        port: config.port,
        conns: BTreeMap::new(),
        next_conn: 1,
        inputs: mpsc::unbounded_channel(),
        stopping: None,
        dataplane: Some(dataplane),
        engine_events,
        conn_paths: BTreeMap::new(),
        routes_dirty: true,
    };
    // `run` consumes the request channel: once it returns, the API sees the daemon is
    // gone and winds down by itself after answering what is in flight.
    let stop = daemon.run(listener, requests).await;
    // The container task may be waiting on an allocation: let it go before waiting on it.
    daemon.ipam.close();
    // `weave reset` also removes the containers' interfaces; `weave stop` leaves them.
    let reset = matches!(&stop, Ok(Some((true, _))));
    daemon.containers.shutdown(reset).await;
    if let Some(dataplane) = daemon.dataplane.take() {
        // `weave stop` leaves the bridge in place; `weave reset` removes it, the TAP
        // and the firewall rules.
        dataplane.shutdown(reset).await;
    }
    let dir = daemon.state.dir().to_owned();
    drop(daemon);
    if let Some((reset, reply)) = stop? {
        if reset {
            // `weave reset`: forget everything persisted (name, peers, later IPAM, DNS).
            for file in super::state::owned_files(&dir) {
                if file.extension().is_some_and(|e| e == "db" || e == "lock") {
                    let _ = std::fs::remove_file(&file);
                }
            }
            tracing::info!(dir = %dir.display(), "reset: persisted state removed");
        }
        let _ = reply.send(());
    }
    if tokio::time::timeout(Duration::from_secs(3), api)
        .await
        .is_err()
    {
        tracing::warn!("the HTTP API did not wind down in time");
    }
    tracing::info!("weave router stopped");
    Ok(())
}

struct Daemon {
    mesh: Mesh,
    /// Address allocation, a gossip channel of the mesh (see `super::ipam`).
    ipam: IpamService,
    /// Name records, a gossip channel of the mesh, and the name server (`super::dns`).
    dns: DnsService,
    state: std::sync::Arc<State>,
    /// Attached containers and exposed addresses (a task of their own).
    containers: Containers,
    port: u16,
    conns: BTreeMap<ConnId, ConnIo>,
    next_conn: ConnId,
    inputs: (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>),
    stopping: Option<StopRequest>,
    /// `None` only while stopping.
    dataplane: Option<Dataplane>,
    engine_events: mpsc::UnboundedReceiver<EngineEvent>,
    /// Each connection that reached the data plane: its peer and `conn_uid`.
    conn_paths: BTreeMap<ConnId, (PeerName, u64)>,
    /// The mesh's routes may have changed since the forwarder last got them.
    routes_dirty: bool,
}

/// A stop the API asked for: whether to reset, and whom to tell when done.
type StopRequest = (bool, tokio::sync::oneshot::Sender<()>);

impl Daemon {
    /// Runs until stopped; returns the stop request, if the API made one.
    async fn run(
        &mut self,
        listener: TcpListener,
        mut requests: mpsc::Receiver<Request>,
    ) -> Result<Option<StopRequest>> {
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let deadline = self.mesh.poll_timeout().map(tokio::time::Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => self.adopt(stream, addr, None),
                    Err(err) => tracing::warn!(%err, "accept failed"),
                },
                Some(input) = self.inputs.1.recv() => self.handle_input(input),
                Some(event) = self.engine_events.recv() => self.handle_engine_event(event),
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => break,
                },
                () = sleep => self.mesh.handle_timeout(Instant::now()),
                _ = sigterm.recv() => {
                    tracing::info!("terminated");
                    self.mesh.shutdown(Instant::now());
                    self.drain();
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    self.mesh.shutdown(Instant::now());
                    self.drain();
                    break;
                }
            }
            self.drain();
            if self.stopping.is_some() {
                break;
            }
        }
        // Give writers a moment to flush the close messages.
        self.conns.clear();
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(self.stopping.take())
    }

    /// Starts the IO tasks for a new TCP connection and tells the mesh.
    fn adopt(&mut self, stream: TcpStream, remote: SocketAddr, target: Option<String>) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let inputs = self.inputs.0.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => {
                        let _ =
                            inputs.send(Input::Closed(conn, "connection closed by peer".into()));
                        break;
                    }
                    Ok(n) => {
                        if inputs.send(Input::Bytes(conn, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                    Err(err) => {
                        let _ = inputs.send(Input::Closed(conn, err.to_string()));
                        break;
                    }
                }
            }
        });
        let (writer, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer_queued = queued.clone();
        let inputs = self.inputs.0.clone();
        tokio::spawn(async move {
            while let Some(bytes) = outgoing.recv().await {
                writer_queued.fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                if let Err(err) = write.write_all(&bytes).await {
                    let _ = inputs.send(Input::Closed(conn, format!("write failed: {err}")));
                    return;
                }
            }
            let _ = write.shutdown().await;
        });
        self.conns.insert(
            conn,
            ConnIo {
                writer,
                reader,
                queued,
            },
        );
        self.mesh
            .handle_connected(conn, remote, target, Instant::now());
    }

    fn handle_input(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Bytes(conn, bytes) => self.mesh.handle_bytes(conn, &bytes, now),
            Input::Closed(conn, reason) => {
                if let Some(io) = self.conns.remove(&conn) {
                    io.reader.abort();
                    self.mesh.handle_closed(conn, &reason, now);
                }
            }
            Input::Dialed { target, result } => match result {
                Ok(stream) => match stream.peer_addr() {
                    Ok(addr) => self.adopt(stream, addr, Some(target)),
                    Err(err) => self.mesh.handle_dial_failed(&target, &err.to_string(), now),
                },
                Err(err) => self.mesh.handle_dial_failed(&target, &err, now),
            },
        }
    }

    /// Carries out what the mesh asked for.
    fn drain(&mut self) {
        // IPAM persists what it changed before any of its gossip leaves.
        self.ipam.flush(&mut self.mesh);
        while let Some((conn, bytes)) = self.mesh.poll_transmit() {
            let Some(io) = self.conns.get(&conn) else {
                continue;
            };
            let len = bytes.len();
            let queued = io
                .queued
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed)
                + len;
            if queued > MAX_QUEUED_BYTES {
                tracing::warn!(conn, queued, "peer is not reading; closing the connection");
                if let Some(io) = self.conns.remove(&conn) {
                    io.reader.abort();
                }
                self.mesh
                    .handle_closed(conn, "peer too slow to read", Instant::now());
                continue;
            }
            let _ = io.writer.send(bytes);
        }
        while let Some(action) = self.mesh.poll_action() {
            match action {
                Action::Dial { target } => self.dial(target),
                Action::Close { conn } => {
                    // Dropping the writer's sender flushes what is queued, then shuts
                    // the socket; the reader is no longer needed.
                    if let Some(io) = self.conns.remove(&conn) {
                        io.reader.abort();
                    }
                }
            }
        }
        while let Some(event) = self.mesh.poll_event() {
            log_event(&event);
            self.feed_dataplane(event);
        }
        if self.routes_dirty {
            self.routes_dirty = false;
            self.push_routes();
        }
        self.dns.flush(&self.mesh);
    }

    /// Tells the data plane what the mesh did that concerns it.
    fn feed_dataplane(&mut self, event: Event) {
        let Some(dp) = &self.dataplane else { return };
        let engine = dp.engine();
        match event {
            Event::ConnectionUp {
                conn,
                peer,
                remote_addr,
                outbound,
                conn_uid,
                sleeve_keys,
                ..
            } => {
                // We dialled the peer's control port, which is its UDP port too; an
                // accepting end learns the address from the first heartbeat (NAT).
                let addr = match (outbound, remote_addr) {
                    (true, SocketAddr::V4(a)) => Some(a),
                    _ => None,
                };
                if let Some((old_peer, old_uid)) = self.conn_paths.insert(conn, (peer, conn_uid)) {
                    engine.peer_down(old_peer, old_uid);
                }
                engine.peer_up(peer, conn_uid, addr, sleeve_keys);
                self.routes_dirty = true;
            }
            Event::ConnectionDown { conn, .. } => {
                if let Some((peer, conn_uid)) = self.conn_paths.remove(&conn) {
                    engine.peer_down(peer, conn_uid);
                }
                self.routes_dirty = true;
            }
            Event::Direct { from, tag, payload } if tag == PathReport::TAG => {
                match PathReport::decode(&payload) {
                    Ok(report) => engine.report(from, report),
                    Err(err) => tracing::debug!(%from, %err, "bad path report"),
                }
            }
            Event::PeerRemoved(peer) => {
                engine.forget_peer(peer);
                self.routes_dirty = true;
            }
            Event::TopologyChanged | Event::PeerAdded(_) => self.routes_dirty = true,
            _ => {}
        }
    }

    /// Hands the forwarder the mesh's current data routes.
    fn push_routes(&mut self) {
        let Some(dp) = &self.dataplane else { return };
        let local = self.mesh.name();
        let unicast = self.mesh.unicast_routes(RouteKind::Data);
        let origins: Vec<PeerName> = self.mesh.live_peers().keys().copied().collect();
        let mesh = &mut self.mesh;
        let snapshot = dataplane::snapshot(local, &unicast, origins, |origin| {
            mesh.broadcast_hops(RouteKind::Data, origin)
        });
        dp.engine().set_routes(snapshot);
    }

    /// What the data plane reports: a path report to send, a path up or down.
    fn handle_engine_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Tell { peer, report } => {
                self.mesh
                    .send_direct(peer, PathReport::TAG, report.encode());
            }
            EngineEvent::Established {
                peer,
                conn_uid,
                established,
            } => {
                // Only for the connection the mesh has now (not one it replaced).
                if self
                    .conn_paths
                    .values()
                    .any(|&(p, uid)| p == peer && uid == conn_uid)
                {
                    self.mesh.set_established(peer, established, Instant::now());
                }
            }
        }
    }

    fn dial(&self, target: String) {
        let inputs = self.inputs.0.clone();
        tokio::spawn(async move {
            let result =
                match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(target.as_str())).await
                {
                    Ok(Ok(stream)) => Ok(stream),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err("connect timed out".to_owned()),
                };
            let _ = inputs.send(Input::Dialed { target, result });
        });
    }

    fn handle_request(&mut self, request: Request) {
        let now = Instant::now();
        match request {
            Request::Report(reply) => {
                let _ = reply.send(self.report());
            }
            Request::Connect {
                peers,
                replace,
                reply,
            } => {
                let result = self.normalize(&peers).map(|targets| {
                    self.mesh.connect(&targets, replace, now);
                    self.mesh.handle_timeout(now);
                    self.persist_targets();
                });
                let _ = reply.send(result);
            }
            Request::Forget { peers, reply } => {
                let result = self.normalize(&peers).map(|targets| {
                    self.mesh.forget(&targets);
                    self.persist_targets();
                });
                let _ = reply.send(result);
            }
            Request::Stop { reset, reply } => {
                if reset {
                    // `weave reset`: our ranges go to a live peer, ahead of the closes.
                    self.ipam.leave(&mut self.mesh);
                }
                self.mesh.shutdown(now);
                self.stopping = Some((reset, reply));
            }
            Request::Containers(request) => {
                let mtu = self
                    .dataplane
                    .as_ref()
                    .map_or(containers::DEFAULT_OVERLAY_MTU, |dp| {
                        u32::from(dp.overlay_mtu())
                    });
                self.containers.submit(request, mtu);
            }
            Request::Ipam(request) => self.ipam.handle(&mut self.mesh, request),
            Request::Dns(request) => self.dns.handle_request(&mut self.mesh, request),
        }
    }

    fn normalize(&self, peers: &[String]) -> std::result::Result<Vec<String>, String> {
        peers
            .iter()
            .map(|p| normalize_target(p, self.port))
            .collect()
    }

    fn persist_targets(&self) {
        let targets: Vec<String> = self.mesh.targets().direct().cloned().collect();
        if let Err(err) = self.state.put(KEY_TARGETS, &targets) {
            tracing::error!(%err, "cannot persist targets");
        }
    }

    fn report(&self) -> Report {
        let config = self.mesh.config();
        let now = Instant::now();
        let paths = self
            .dataplane
            .as_ref()
            .map(Dataplane::paths)
            .unwrap_or_default();
        let connections = self
            .mesh
            .connection_status()
            .into_iter()
            .map(|c| ConnectionReport {
                attrs: c
                    .conn
                    .and_then(|conn| self.conn_paths.get(&conn))
                    .and_then(|(peer, uid)| paths.get(peer).filter(|p| p.conn_uid == *uid))
                    .map(path_attrs)
                    .unwrap_or_default(),
                address: c.address,
                outbound: c.outbound,
                state: c.state.as_str().to_owned(),
                info: c.error.unwrap_or_default(),
                retry_in_secs: c
                    .retry_at
                    .map(|at| at.saturating_duration_since(now).as_secs()),
                encrypted: c.encrypted,
                peer_name: c.peer.as_ref().map(|(name, _)| name.to_string()),
                peer_nick_name: c.peer.map(|(_, nick)| nick),
            })
            .collect();
        let topology = self.mesh.topology();
        let peers = self
            .mesh
            .live_peers()
            .keys()
            .filter_map(|name| topology.record(*name))
            .map(|record| PeerReport {
                name: record.name.to_string(),
                nick_name: record.nickname.clone(),
                uid: record.incarnation.uid,
                version: record.version,
                connections: record
                    .connections()
                    .map(|(remote, info)| PeerConnectionReport {
                        name: remote.to_string(),
                        nick_name: topology
                            .record(remote)
                            .map(|r| r.nickname.clone())
                            .unwrap_or_default(),
                        address: info.addr.map(|a| a.to_string()).unwrap_or_default(),
                        outbound: info.outbound,
                        established: info.established,
                    })
                    .collect(),
            })
            .collect();
        let stats = self.mesh.stats();
        Report {
            ipam: self.ipam.report(&self.mesh),
            dns: self.dns.report(&self.mesh),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            router: RouterReport {
                protocol: "weave".to_owned(),
                protocol_min_version: config.session.min_version,
                protocol_max_version: config.session.max_version,
                encryption: config.session.psk.is_some(),
                peer_discovery: config.discovery,
                name: config.name.to_string(),
                nick_name: config.nickname.clone(),
                uid: config.uid,
                port: config.listen_port,
                conn_limit: config.conn_limit,
                targets: self.mesh.targets().direct().cloned().collect(),
                connections,
                peers,
                name_collisions: self.mesh.collisions().to_vec(),
                stats: RouterStats {
                    control_bytes_sent: stats.bytes_sent,
                    control_bytes_received: stats.bytes_received,
                    gossip_rejected: stats.gossip_rejected,
                    connection_terminations: stats.connections_terminated,
                },
                overlay_mtu: self.dataplane.as_ref().map_or(0, Dataplane::overlay_mtu),
                data_plane: self
                    .dataplane
                    .as_ref()
                    .map(|dp| {
                        let nicknames = self
                            .mesh
                            .live_peers()
                            .iter()
                            .map(|(name, p)| (*name, p.nickname.clone()))
                            .collect();
                        dp.report(&nicknames)
                    })
                    .unwrap_or_default(),
            },
        }
    }
}

/// A connection's data-plane attributes for `weave status connections`: the overlay
/// (`fastdp` or `sleeve`), on the sleeve why not the fast path (`fastdp=...`), and, once
/// measured, the MTU of the path (what an IP packet in a frame through it may be).
fn path_attrs(path: &dataplane::PathStatus) -> Vec<(String, String)> {
    let overlay = if path.fast { "fastdp" } else { "sleeve" };
    let mut attrs = vec![("name".to_owned(), overlay.to_owned())];
    // On the sleeve, why not the fast path (off, encrypted, blocked which way, ...).
    if !path.fast
        && let Some(why) = path.fastdp
    {
        attrs.push(("fastdp".to_owned(), why.to_owned()));
    }
    if path.pmtu.is_some() {
        let mtu = path
            .max_frame
            .saturating_sub(weave_router::sleeve::ETHERNET_HEADER_LEN);
        attrs.push(("mtu".to_owned(), mtu.to_string()));
    }
    attrs
}

fn log_event(event: &Event) {
    match event {
        Event::ConnectionUp {
            peer,
            nickname,
            remote_addr,
            outbound,
            ..
        } => {
            let direction = if *outbound { "->" } else { "<-" };
            tracing::info!("connection up {direction} {remote_addr} {peer}({nickname})");
        }
        Event::ConnectionDown { peer, reason, .. } => match peer {
            Some(peer) => tracing::info!("connection to {peer} down: {reason}"),
            None => tracing::info!("connection attempt failed: {reason}"),
        },
        Event::PeerAdded(peer) => tracing::info!("peer {}({}) joined", peer.name, peer.nickname),
        Event::PeerRemoved(peer) => tracing::info!("peer {peer} left"),
        Event::NameCollision { nickname, addr, .. } => {
            tracing::error!(
                ?addr,
                "peer name collision with {nickname}: give one of them another --name"
            )
        }
        Event::GossipRejected {
            channel,
            from,
            error,
        } => tracing::warn!(channel, %from, error, "gossip rejected"),
        Event::TopologyChanged | Event::Direct { .. } => {}
    }
}

/// The host's name, for the default nickname.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weave".to_owned())
}

/// A random number from the OS (peer names, UIDs, the mesh's seed).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut file) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        if file.read_exact(&mut bytes).is_ok() {
            return u64::from_le_bytes(bytes);
        }
    }
    // No /dev/urandom: fall back to the clock and pid, good enough to tell starts apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
