//! The command line, in Weave Net's shape: `weave launch [PEER...]` starts the daemon in
//! the background, `weave router` runs it in the foreground, and every other command is a
//! client of the daemon's HTTP API (127.0.0.1:6784, `--http-addr` / `WEAVE_HTTP_ADDR`).
//!
//! Exit codes: 0 on success, 2 on a usage error (clap's message), 1 on anything else,
//! including "weave is not running".

mod attach;
mod connect;
mod dns;
mod expose;
mod forget;
mod ipam;
mod launch;
mod ps;
mod report;
mod reset;
mod router;
mod state;
mod status;
mod stop;
mod template;
mod version;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weave_mesh::PeerName;

use crate::api::client::{Client, ClientError};

/// Weave's control port: TCP for the mesh, UDP for the sleeve data plane.
pub(crate) const DEFAULT_PORT: u16 = 6783;
pub(crate) const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
pub(crate) const DEFAULT_STATUS_ADDR: &str = "127.0.0.1:6782";
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/weave";
pub(crate) const DEFAULT_CONN_LIMIT: usize = 200;

/// How long `launch`, `stop` and `reset` wait for the daemon to come up or go away.
const DAEMON_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "weave",
    version,
    about = "Container overlay network: one L2 switch across hosts, no central store",
    disable_help_subcommand = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Start the daemon in the background; return once its API answers.
    Launch(DaemonArgs),
    /// Run the daemon in the foreground (what `launch` starts).
    Router(DaemonArgs),
    /// Add peers to connect to (persisted); `--replace` drops all other targets first.
    Connect(ConnectArgs),
    /// Stop retrying peers; connections that are up stay up.
    Forget(ForgetArgs),
    /// Show the daemon's state as text.
    Status(StatusArgs),
    /// Print the daemon's state as JSON, or fields of it with `-f`.
    Report(ReportArgs),
    /// Stop the daemon, keeping its persisted state.
    Stop(ApiArgs),
    /// Stop the daemon and remove its persisted state (peer name, targets, ...) and what
    /// it made on the host (bridge, container interfaces, firewall rules).
    Reset(ResetArgs),
    /// Print the version of this program and of the running daemon.
    Version(ApiArgs),
    /// Plug a container into the overlay: `ethwe` in its namespace with these addresses.
    Attach(attach::AttachArgs),
    /// Take addresses off a container; all of them and its interface if none given.
    Detach(attach::DetachArgs),
    /// Give the host itself addresses on the overlay (on the bridge).
    Expose(expose::ExposeArgs),
    /// Take the host's addresses off the overlay; all of them if none given.
    Hide(expose::ExposeArgs),
    /// List attached containers: ID, MAC and addresses.
    Ps(ps::PsArgs),
    /// Wait until the IP allocation ring exists (forces consensus among the peers).
    Prime(ApiArgs),
    /// Take over the IP ranges of dead peers (by name or nickname); run it on one host.
    Rmpeer(ipam::RmpeerArgs),
    /// Register a name in DNS: `[ADDR...] CONTAINER [-h FQDN]` or `ADDR... -h FQDN`.
    #[command(name = "dns-add", disable_help_flag = true)]
    DnsAdd(dns::DnsArgs),
    /// Remove names from DNS: `[ADDR...] CONTAINER [-h FQDN]` or `[ADDR...] -h FQDN`.
    #[command(name = "dns-remove", disable_help_flag = true)]
    DnsRemove(dns::DnsArgs),
    /// Print the addresses DNS has for a name, one per line.
    #[command(name = "dns-lookup")]
    DnsLookup(dns::LookupArgs),
}

/// Flags of `weave launch` and `weave router`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct DaemonArgs {
    /// Peers to connect to, `host[:port]` (port defaults to --port).
    #[arg(value_name = "PEER", value_parser = parse_peer)]
    pub(crate) peers: Vec<String>,
    /// Encrypt and authenticate all traffic with this password (all peers need the same).
    #[arg(long, env = "WEAVE_PASSWORD", hide_env_values = true)]
    pub(crate) password: Option<String>,
    /// Peer name, `aa:bb:cc:dd:ee:ff` (default: persisted, else random).
    #[arg(long, value_parser = parse_peer_name)]
    pub(crate) name: Option<PeerName>,
    /// Nickname shown next to the peer name (default: the hostname).
    #[arg(long, value_parser = parse_nickname)]
    pub(crate) nickname: Option<String>,
    /// Address to bind the control and data port to (default: all).
    #[arg(long, value_name = "ADDR")]
    pub(crate) host: Option<IpAddr>,
    /// Control (TCP) and data (UDP) port.
    #[arg(long, env = "WEAVE_PORT", default_value_t = DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: u16,
    /// Connect only to the peers given, not to peers learned from others.
    #[arg(long)]
    pub(crate) no_discovery: bool,
    /// Maximum number of connections (0 = unlimited).
    #[arg(long, default_value_t = DEFAULT_CONN_LIMIT)]
    pub(crate) conn_limit: usize,
    /// Carry frames only over the sleeve, never through the kernel's VXLAN fast path
    /// (which is used between directly connected peers when there is no password).
    #[arg(long, env = "WEAVE_NO_FASTDP")]
    pub(crate) no_fastdp: bool,
    /// MTU of the overlay (containers' interfaces); default: what fits the underlay.
    #[arg(long, env = "WEAVE_MTU", value_parser = clap::value_parser!(u16).range(576..))]
    pub(crate) mtu: Option<u16>,
    /// Where persisted state and the log live.
    #[arg(long, env = "WEAVE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    /// HTTP API address (keep it on loopback: it can reconfigure the daemon).
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub(crate) http_addr: SocketAddr,
    /// Read-only status and Prometheus metrics address.
    #[arg(long, env = "WEAVE_STATUS_ADDR", default_value = DEFAULT_STATUS_ADDR)]
    pub(crate) status_addr: SocketAddr,
    /// error, warning, info, debug, or a tracing filter (`info,weave_mesh=debug`).
    #[arg(long, env = "WEAVE_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub(crate) log_level: String,
    /// The range IPAM allocates from; '' turns IPAM off.
    #[arg(long, value_name = "CIDR", default_value = crate::daemon::ipam::DEFAULT_RANGE)]
    pub(crate) ipalloc_range: crate::daemon::ipam::RangeArg,
    /// Where addresses go when no subnet is asked for (default: the whole range).
    #[arg(long, value_name = "CIDR", value_parser = crate::daemon::ipam::parse_cidr)]
    pub(crate) ipalloc_default_subnet: Option<weave_ipam::Cidr>,
    /// How the ring comes to exist: consensus[=N] (N defaults to launch peers + 1),
    /// seed=NAME,... or observer.
    #[arg(long, value_name = "MODE", default_value = "consensus")]
    pub(crate) ipalloc_init: crate::daemon::ipam::InitArg,
    /// Turn the DNS server off (names are neither served nor registered).
    #[arg(long, visible_alias = "without-dns")]
    pub(crate) no_dns: bool,
    /// The domain containers' names live in.
    #[arg(long, value_name = "DOMAIN", default_value = crate::daemon::dns::DEFAULT_DOMAIN,
          value_parser = crate::daemon::dns::parse_domain)]
    pub(crate) dns_domain: String,
    /// TTL of the DNS answers for container names, seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 1)]
    pub(crate) dns_ttl: u32,
    /// How long to wait for each upstream DNS server with names outside the domain
    /// (5, 5s, 1.5s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "5s",
          value_parser = crate::daemon::dns::parse_timeout)]
    pub(crate) dns_fallback_timeout: Duration,
    /// Also serve DNS on the host at ADDR[:PORT] (containers are served inside their own
    /// namespace at 127.0.0.12:53 regardless).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::daemon::dns::parse_listen)]
    pub(crate) dns_listen_address: Option<SocketAddr>,
}

impl DaemonArgs {
    /// The password, if one is set and not empty (Weave treats "" as no password).
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref().filter(|p| !p.is_empty())
    }
}

/// Where a client command finds the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ApiArgs {
    /// The daemon's HTTP API address.
    #[arg(long, env = "WEAVE_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
    pub(crate) http_addr: SocketAddr,
}

impl ApiArgs {
    pub(crate) fn client(&self) -> Client {
        Client::new(self.http_addr)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ConnectArgs {
    /// Drop all existing targets first.
    #[arg(long)]
    pub(crate) replace: bool,
    /// Peers to connect to, `host[:port]`.
    #[arg(value_name = "PEER", value_parser = parse_peer, required_unless_present = "replace")]
    pub(crate) peers: Vec<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ForgetArgs {
    /// Peers to stop connecting to, as given to `launch` or `connect`.
    #[arg(value_name = "PEER", value_parser = parse_peer, required = true)]
    pub(crate) peers: Vec<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// The views of `weave status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatusView {
    /// The peers this daemon was asked to connect to.
    Targets,
    /// One line per connection and per target being tried.
    Connections,
    /// Every known peer and its connections.
    Peers,
    /// Who owns how much of the IP allocation range.
    Ipam,
    /// The name records: name, address, container, origin peer.
    Dns,
}

impl StatusView {
    /// The API path serving this view.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Targets => "/status/targets",
            Self::Connections => "/status/connections",
            Self::Peers => "/status/peers",
            Self::Ipam => "/status/ipam",
            Self::Dns => "/status/dns",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct StatusArgs {
    #[arg(value_enum)]
    pub(crate) view: Option<StatusView>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ReportArgs {
    /// Print only this: text with `{{.Router.Name}}`, `{{json .Router.Peers}}` or
    /// `{{len .Router.Connections}}` placeholders (a small subset of Go templates).
    #[arg(short = 'f', long = "format", value_name = "TEMPLATE")]
    pub(crate) format: Option<String>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub(crate) struct ResetArgs {
    /// The state directory to clear when the daemon is not running (a running daemon
    /// says where its own is).
    #[arg(long, env = "WEAVE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub(crate) state_dir: PathBuf,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
}

/// Checks a peer's syntax now, so a typo is a usage error rather than a target that
/// fails forever. The daemon normalises it again with its own port.
fn parse_peer(peer: &str) -> Result<String, String> {
    weave_mesh::maker::normalize_target(peer, DEFAULT_PORT)?;
    Ok(peer.trim().to_owned())
}

fn parse_peer_name(name: &str) -> Result<PeerName, String> {
    name.parse::<PeerName>().map_err(|e| e.to_string())
}

fn parse_nickname(nick: &str) -> Result<String, String> {
    if nick.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if nick.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".to_owned());
    }
    Ok(nick.to_owned())
}

/// Weave's level names as tracing filter directives.
fn log_filter(level: &str) -> &str {
    match level {
        "warning" => "warn",
        other => other,
    }
}

fn parse_log_level(level: &str) -> Result<String, String> {
    // A bare word must be a level: EnvFilter would take a typo for a target name.
    let bare = !level.contains(['=', ',', ':', '[']);
    if bare && !["off", "error", "warn", "warning", "info", "debug", "trace"].contains(&level) {
        return Err("expected error, warning, info, debug or trace".to_owned());
    }
    tracing_subscriber::EnvFilter::try_new(log_filter(level))
        .map(|_| level.to_owned())
        .map_err(|e| e.to_string())
}

/// Runs a parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        // The daemon gets the multi-threaded runtime; clients need only one thread.
        Command::Router(args) => router::run(args),
        Command::Launch(args) => client_runtime()?.block_on(launch::run(args)),
        Command::Connect(args) => client_runtime()?.block_on(connect::run(args)),
        Command::Forget(args) => client_runtime()?.block_on(forget::run(args)),
        Command::Status(args) => client_runtime()?.block_on(status::run(args)),
        Command::Report(args) => client_runtime()?.block_on(report::run(args)),
        Command::Stop(args) => client_runtime()?.block_on(stop::run(args)),
        Command::Reset(args) => client_runtime()?.block_on(reset::run(args)),
        Command::Version(args) => client_runtime()?.block_on(version::run(args)),
        Command::Attach(args) => attach::run_attach(args),
        Command::Detach(args) => attach::run_detach(args),
        Command::Expose(args) => expose::run_expose(args),
        Command::Hide(args) => expose::run_hide(args),
        Command::Ps(args) => ps::run(args),
        Command::Prime(args) => client_runtime()?.block_on(ipam::run_prime(args)),
        Command::Rmpeer(args) => client_runtime()?.block_on(ipam::run_rmpeer(args)),
        Command::DnsAdd(args) => client_runtime()?.block_on(dns::run_add(args)),
        Command::DnsRemove(args) => client_runtime()?.block_on(dns::run_remove(args)),
        Command::DnsLookup(args) => client_runtime()?.block_on(dns::run_lookup(args)),
    }
}

/// Ends the process the way clap does for a usage error found after parsing: the
/// message, the subcommand's usage line, exit code 2.
fn usage_exit(subcommand: &str, message: &str) -> ! {
    let mut cli = <Cli as clap::CommandFactory>::command();
    cli.build();
    match cli.find_subcommand_mut(subcommand) {
        Some(sub) => sub
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit(),
        None => cli
            .error(clap::error::ErrorKind::ValueValidation, message)
            .exit(),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The line printed for a failed command: just the message for the expected failures
/// ("weave is not running"), the whole cause chain otherwise.
pub(crate) fn error_message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<ClientError>() {
        Some(client) => client.to_string(),
        None => format!("{err:#}"),
    }
}

/// Turns a non-2xx answer into an error carrying the daemon's one-line reason.
pub(crate) fn check_answer(answer: crate::api::client::Response) -> anyhow::Result<String> {
    if answer.is_success() {
        return Ok(answer.body);
    }
    let reason = answer.body.trim();
    if reason.is_empty() {
        anyhow::bail!("the daemon answered {}", answer.status);
    }
    anyhow::bail!("{reason}")
}

#[cfg(test)]
mod tests;
