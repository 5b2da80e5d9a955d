//! `weave reset`: stop the daemon, telling it to drop its persisted state (peer name,
//! targets; later IPAM and DNS records), then remove the files it owns in the state
//! directory (`--state-dir` / `WEAVE_STATE_DIR`): database, lock and log. If the daemon
//! is not running (`weave stop` left the host plumbed), remove what it made on the host
//! (container veths, TAP, bridge, firewall rules) and those files. The directory itself
//! stays (it may be a mount point).

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{DAEMON_WAIT, ResetArgs, state, stop};
use crate::api::client::ClientError;
use crate::daemon::state::owned_files;

pub(super) async fn run(args: ResetArgs) -> anyhow::Result<()> {
    run_with(args, crate::dataplane::remove_leftovers).await
}

/// [`run`] with `sweep` for the host's leftovers (tests pass one that touches nothing).
pub(super) async fn run_with<F, Fut>(args: ResetArgs, sweep: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = std::path::absolute(&args.state_dir).with_context(|| {
        format!(
            "cannot resolve state directory {}",
            args.state_dir.display()
        )
    })?;
    let running = match stop::stop_daemon(&args.api.client(), true).await {
        Ok(()) => true,
        Err(err) if matches!(err.downcast_ref(), Some(ClientError::NotRunning)) => false,
        Err(err) => return Err(err),
    };
    // The daemon releases its lock last; never delete files under a live one (one that
    // listens elsewhere than --http-addr, say).
    let deadline = tokio::time::Instant::now() + DAEMON_WAIT;
    while lock_held(&dir)? {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "a weave daemon still holds {} but does not answer at {}; stop it first",
                dir.display(),
                args.api.http_addr
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !running {
        // A stopped daemon left the host plumbed (`weave stop` keeps containers'
        // interfaces); a running one removed it all on the way out.
        sweep().await?;
    }
    remove_owned_files(&dir)
}

fn lock_held(dir: &Path) -> anyhow::Result<bool> {
    state::lock_held(dir).with_context(|| format!("cannot check the lock in {}", dir.display()))
}

pub(super) fn remove_owned_files(dir: &Path) -> anyhow::Result<()> {
    for file in owned_files(dir) {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", file.display())),
        }
    }
    Ok(())
}
