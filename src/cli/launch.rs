//! `weave launch`: start `weave router` in the background and return once its API
//! answers, as Weave's launch returned once the container was up.
//!
//! The child is our own binary re-executed as `weave router` with the same settings. It
//! starts its own session (no SIGHUP or Ctrl-C from this terminal), reads /dev/null and
//! appends its output to `<state-dir>/weave.log`. The password travels in the
//! environment, never in argv, where any local user could read it in /proc.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::{DAEMON_WAIT, DaemonArgs, state};
use crate::api::client::{Client, ClientError};
use crate::daemon::state::LOG_FILE;

/// Set in the child's environment: `weave router` then calls setsid().
pub(super) const DETACH_ENV: &str = "WEAVE_DETACHED";
const PASSWORD_ENV: &str = "WEAVE_PASSWORD";
/// Lines of the log shown when the daemon dies during start.
const TAIL_LINES: usize = 20;

pub(super) async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let client = Client::new(args.http_addr).with_timeout(Duration::from_secs(5));
    match client.get("/status").await {
        Err(ClientError::NotRunning) => {}
        Ok(_) => bail!("weave is already running"),
        Err(ClientError::Timeout { addr, .. }) => {
            bail!("{addr} is in use by something that does not answer; is weave already running?")
        }
        Err(err) => return Err(err.into()),
    }
    let dir = state::ensure_dir(&args.state_dir)?;
    if state::lock_held(&dir)
        .with_context(|| format!("cannot check the lock in {}", dir.display()))?
    {
        bail!(
            "weave is already running (state directory {} is in use, API not at {})",
            dir.display(),
            args.http_addr
        );
    }

    let log_path = dir.join(LOG_FILE);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let log_start = log.metadata().map_or(0, |m| m.len());
    let exe = std::env::current_exe().context("cannot find the weave binary to start")?;
    let mut command = Command::new(exe);
    command
        .args(router_args(&args, &dir))
        .env(DETACH_ENV, "1")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .context("cannot duplicate the log file handle")?,
        )
        .stderr(log)
        .current_dir("/");
    match args.password() {
        Some(password) => command.env(PASSWORD_ENV, password),
        None => command.env_remove(PASSWORD_ENV),
    };
    let mut child = command.spawn().context("cannot start weave router")?;
    wait_until_up(&client, &mut child, &log_path, log_start).await
}

/// The argv for `weave router` equivalent to `args` (without the password).
pub(super) fn router_args(args: &DaemonArgs, state_dir: &Path) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["router".into()];
    let mut flag = |name: &str, value: OsString| {
        argv.push(format!("--{name}").into());
        argv.push(value);
    };
    flag("port", args.port.to_string().into());
    flag("conn-limit", args.conn_limit.to_string().into());
    flag("state-dir", state_dir.into());
    flag("http-addr", args.http_addr.to_string().into());
    flag("status-addr", args.status_addr.to_string().into());
    flag("log-level", args.log_level.clone().into());
    if let Some(name) = args.name {
        flag("name", name.to_string().into());
    }
    if let Some(nickname) = &args.nickname {
        flag("nickname", nickname.into());
    }
    if let Some(host) = args.host {
        flag("host", host.to_string().into());
    }
    if let Some(mtu) = args.mtu {
        flag("mtu", mtu.to_string().into());
    }
    // An empty range (IPAM off) travels as an empty argument.
    flag("ipalloc-range", args.ipalloc_range.to_string().into());
    if let Some(subnet) = args.ipalloc_default_subnet {
        flag("ipalloc-default-subnet", subnet.to_string().into());
    }
    flag("ipalloc-init", args.ipalloc_init.to_string().into());
    flag("dns-domain", args.dns_domain.clone().into());
    flag("dns-ttl", args.dns_ttl.to_string().into());
    flag(
        "dns-fallback-timeout",
        format!("{}ms", args.dns_fallback_timeout.as_millis()).into(),
    );
    if let Some(listen) = args.dns_listen_address {
        flag("dns-listen-address", listen.to_string().into());
    }
    if args.no_dns {
        argv.push("--no-dns".into());
    }
    if args.no_discovery {
        argv.push("--no-discovery".into());
    }
    if args.no_fastdp {
        argv.push("--no-fastdp".into());
    }
    // Peers were checked by clap; `--` keeps them from ever being read as flags.
    argv.push("--".into());
    argv.extend(args.peers.iter().map(OsString::from));
    argv
}

async fn wait_until_up(
    client: &Client,
    child: &mut Child,
    log: &Path,
    log_start: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DAEMON_WAIT;
    let probe = client.clone().with_timeout(Duration::from_secs(2));
    loop {
        if let Some(status) = child.try_wait().context("cannot check on weave router")? {
            bail!(
                "weave router exited ({status}) before it was ready; the end of {}:\n{}",
                log.display(),
                state::log_tail(log, log_start, TAIL_LINES)
            );
        }
        // 503 means up but not ready yet; anything else that is not 2xx, keep waiting too.
        if probe
            .get("/status")
            .await
            .is_ok_and(|answer| answer.is_success())
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "weave router (pid {}) did not answer on {} within {} s; it may still be starting, see {}",
                child.id(),
                client.addr(),
                DAEMON_WAIT.as_secs(),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
