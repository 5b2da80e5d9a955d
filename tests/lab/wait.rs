//! Polling for a condition with a deadline, reporting what was last seen when it fails.

use std::fmt;
use std::thread;
use std::time::{Duration, Instant};

/// A condition that did not come true in time.
#[derive(Clone, Debug)]
pub(crate) struct WaitError {
    pub(crate) what: String,
    pub(crate) waited: Duration,
    pub(crate) attempts: u32,
    /// What the last attempt reported.
    pub(crate) last_seen: String,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:.1?} ({} attempts) waiting for {}; last seen:\n{}",
            self.waited, self.attempts, self.what, self.last_seen
        )
    }
}

impl std::error::Error for WaitError {}

/// Calls `check` every `poll` until it returns `Ok` or `timeout` passes. `check`
/// returns `Err(what it saw)` while the condition does not hold; the last one is
/// reported. `check` runs at least once, and once more at the deadline.
pub(crate) fn wait_until<T, E: fmt::Display>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, WaitError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last_seen = match check() {
            Ok(value) => return Ok(value),
            Err(seen) => seen.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitError {
                what: what.to_owned(),
                waited: now - start,
                attempts,
                last_seen,
            });
        }
        thread::sleep(poll.min(deadline - now));
    }
}
