//! `weave stop`: POST /stop, then wait until the daemon has gone. Persisted state stays,
//! so the next `weave launch` comes back as the same peer with the same targets.

use std::time::Duration;

use anyhow::bail;

use super::{ApiArgs, DAEMON_WAIT, check_answer};
use crate::api::client::{Client, ClientError};

pub(super) async fn run(args: ApiArgs) -> anyhow::Result<()> {
    stop_daemon(&args.client(), false).await
}

/// Asks the daemon to stop (and with `reset`, to drop its persisted state) and waits
/// until its API is gone. Fails with [`ClientError::NotRunning`] if nothing answers.
pub(super) async fn stop_daemon(client: &Client, reset: bool) -> anyhow::Result<()> {
    let path = if reset { "/stop?reset=true" } else { "/stop" };
    match client.request("POST", path, None).await {
        Ok(answer) => {
            check_answer(answer)?;
        }
        // A daemon on its way out may close the connection before it answers.
        Err(ClientError::Io { .. } | ClientError::Malformed { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    wait_until_gone(client).await
}

async fn wait_until_gone(client: &Client) -> anyhow::Result<()> {
    let probe = client.clone().with_timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + DAEMON_WAIT;
    loop {
        if matches!(probe.get("/status").await, Err(ClientError::NotRunning)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "weave is still running {} s after being asked to stop",
                DAEMON_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
