//! Driving the `weave` CLI on a lab host: the few steps every end-to-end test repeats.

use std::time::Duration;

use serde_json::Value;

use super::{Host, wait_until};

/// How long the shared waits below give the mesh (liveness is 35 s; joins take < 2 s).
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// `weave ARGS...` on `host`, expected to succeed; returns its stdout.
#[track_caller]
pub(crate) fn weave(host: &Host, args: &[&str]) -> String {
    let mut argv = vec!["weave"];
    argv.extend_from_slice(args);
    host.run(&argv).expect_ok().stdout
}

/// `weave report` on `host`, parsed.
#[track_caller]
pub(crate) fn report(host: &Host) -> Value {
    let out = weave(host, &["report"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Waits until `host` has exactly `n` established connections.
#[track_caller]
pub(crate) fn wait_established(host: &Host, n: usize) {
    wait_until(
        &format!("{} has {n} established connections", host.name()),
        WAIT,
        POLL,
        || {
            let r = report(host);
            let states: Vec<String> = r["Router"]["Connections"]
                .as_array()
                .ok_or("no connections")?
                .iter()
                .map(|c| c["State"].as_str().unwrap_or_default().to_owned())
                .collect();
            if states.iter().filter(|s| *s == "established").count() == n {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    )
    .unwrap();
}
