//! `weave router`: the daemon in the foreground. `weave launch` runs this in the
//! background; running it directly suits systemd units and debugging.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use super::{DaemonArgs, launch::DETACH_ENV, state};
use crate::daemon::dns::DnsSettings;
use crate::daemon::ipam::IpamSettings;
use crate::daemon::{self, DaemonConfig};

pub(super) fn run(args: DaemonArgs) -> anyhow::Result<()> {
    if std::env::var_os(DETACH_ENV).is_some() {
        // Started by `weave launch`: leave its terminal's session so closing the terminal
        // or pressing Ctrl-C there does not reach us.
        if let Err(err) = nix::unistd::setsid() {
            eprintln!("weave router: setsid: {err} (continuing in the launcher's session)");
        }
    }
    init_logging(&args.log_level);
    let config = daemon_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weave")
        .build()?;
    runtime.block_on(daemon::run(config))
}

/// The daemon's settings from the command line; creates the state directory.
pub(super) fn daemon_config(args: DaemonArgs) -> anyhow::Result<DaemonConfig> {
    let state_dir = state::ensure_dir(&args.state_dir)?;
    let password = args.password().map(str::to_owned);
    let ipam = IpamSettings {
        range: args.ipalloc_range.0,
        default_subnet: args.ipalloc_default_subnet,
        init: args.ipalloc_init,
    };
    ipam.check().map_err(anyhow::Error::msg)?;
    Ok(DaemonConfig {
        peers: args.peers,
        password,
        name: args.name,
        nickname: args.nickname,
        host: args.host,
        port: args.port,
        discovery: !args.no_discovery,
        conn_limit: args.conn_limit,
        mtu: args.mtu,
        fastdp: !args.no_fastdp,
        state_dir,
        http_addr: args.http_addr,
        status_addr: args.status_addr,
        ipam,
        dns: DnsSettings {
            enabled: !args.no_dns,
            domain: args.dns_domain,
            ttl: args.dns_ttl,
            listen: args.dns_listen_address,
            upstream_timeout: args.dns_fallback_timeout,
        },
    })
}

/// Logs to stderr (the log file under `weave launch`); `--log-level` takes a level or
/// any tracing filter directive (`info,weave_mesh=debug`).
fn init_logging(level: &str) {
    let filter =
        EnvFilter::try_new(super::log_filter(level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
