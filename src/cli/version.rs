//! `weave version`: this program's version and, when one answers, the daemon's.

use std::time::Duration;

use super::ApiArgs;
use crate::api::client::ClientError;

pub(super) async fn run(args: ApiArgs) -> anyhow::Result<()> {
    println!("weave {}", env!("CARGO_PKG_VERSION"));
    let client = args.client().with_timeout(Duration::from_secs(5));
    let router = match client.get("/report").await {
        Ok(answer) if answer.is_success() => {
            match serde_json::from_str::<crate::report::Report>(&answer.body) {
                Ok(report) => report.version,
                Err(_) => "(unreadable report)".to_owned(),
            }
        }
        Ok(answer) => format!("(answered {})", answer.status),
        Err(ClientError::NotRunning) => "(not running)".to_owned(),
        Err(err) => format!("({err})"),
    };
    println!("weave router {router}");
    Ok(())
}
