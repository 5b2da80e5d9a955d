//! The connection maker: which addresses to dial, when, and when to try again.
//!
//! Targets are the peers the user named (`weave launch HOST`, `weave connect`) and,
//! unless discovery is off, the addresses at which other peers reach peers we have no
//! connection to. A failed or dropped target is retried with exponential backoff and
//! jitter (Weave's schedule: 2 s, x1.5, capped at 6 min), at once if the connection had
//! lived for a while. Dialling ourselves, or a peer with our name, is not retried.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::peer::PeerName;

/// How a target came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by the user; kept until forgotten.
    Direct,
    /// Learned from the topology; dropped when no peer reports it any more.
    Discovered,
}

/// Where a target stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    /// Due to be dialled at `at`.
    Waiting { at: Instant },
    /// A dial is under way.
    Connecting,
    /// A connection (in handshake or ready) came from dialling it.
    Connected,
    /// Will not be retried (it is ourselves, or a peer with our name).
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub origin: Origin,
    pub state: TargetState,
    /// Consecutive failures, for the backoff.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The peer this address turned out to be, once a handshake told us.
    pub peer: Option<PeerName>,
}

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
    /// A connection that lived this long resets the backoff.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(2),
            factor: 1.5,
            max: Duration::from_secs(6 * 60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempts + 1`, with jitter in `[d/2, 3d/2)` from `random`.
    pub fn delay(&self, attempts: u32, random: u64) -> Duration {
        let base = self.initial.as_secs_f64()
            * self.factor.powi(attempts.saturating_sub(1).min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = 0.5 + (random % 1_000_000) as f64 / 1_000_000.0;
        Duration::from_secs_f64(base * jitter)
    }
}

/// All targets, keyed by `host:port`.
#[derive(Debug, Default)]
pub struct Targets {
    targets: BTreeMap<String, Target>,
    /// Waiting targets by due time: direct ones, then discovered ones (so finding the
    /// next due target does not scan hundreds of discovered addresses).
    waiting: [BTreeSet<(Instant, String)>; 2],
    pub backoff: Backoff,
}

fn slot(origin: Origin) -> usize {
    match origin {
        Origin::Direct => 0,
        Origin::Discovered => 1,
    }
}

impl Targets {
    pub fn get(&self, key: &str) -> Option<&Target> {
        self.targets.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Target)> {
        self.targets.iter()
    }

    /// The user's targets, for persistence and `weave status targets`.
    pub fn direct(&self) -> impl Iterator<Item = &String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.origin == Origin::Direct)
            .map(|(k, _)| k)
    }

    /// Changes a target through `change`, keeping the waiting index in step.
    fn update(&mut self, key: &str, change: impl FnOnce(&mut Target)) {
        let Some(target) = self.targets.get_mut(key) else {
            return;
        };
        if let TargetState::Waiting { at } = target.state {
            self.waiting[slot(target.origin)].remove(&(at, key.to_owned()));
        }
        change(target);
        if let TargetState::Waiting { at } = target.state {
            self.waiting[slot(target.origin)].insert((at, key.to_owned()));
        }
    }

    fn insert(&mut self, key: String, target: Target) {
        if let TargetState::Waiting { at } = target.state {
            self.waiting[slot(target.origin)].insert((at, key.clone()));
        }
        self.targets.insert(key, target);
    }

    fn remove(&mut self, key: &str) {
        if let Some(Target {
            state: TargetState::Waiting { at },
            origin,
            ..
        }) = self.targets.remove(key)
        {
            self.waiting[slot(origin)].remove(&(at, key.to_owned()));
        }
    }

    /// Adds (or promotes to direct) a user target, due now.
    pub fn add_direct(&mut self, key: String, now: Instant) {
        if self.targets.contains_key(&key) {
            self.update(&key, |target| {
                target.origin = Origin::Direct;
                if let TargetState::Waiting { at } = &mut target.state {
                    *at = now;
                }
            });
            return;
        }
        let target = Target {
            origin: Origin::Direct,
            state: TargetState::Waiting { at: now },
            attempts: 0,
            last_error: None,
            peer: None,
        };
        self.insert(key, target);
    }

    /// Forgets a user target. A connection it made stays up; it is just not retried.
    pub fn forget(&mut self, key: &str) -> bool {
        match self.targets.get(key) {
            Some(t) if t.origin == Origin::Direct => {
                self.remove(key);
                true
            }
            _ => false,
        }
    }

    /// Replaces the discovered targets with `addresses`; keeps those being dialled or
    /// connected so their outcome is still recorded.
    pub fn set_discovered(&mut self, addresses: &BTreeSet<String>, now: Instant) {
        let stale: Vec<String> = self
            .targets
            .iter()
            .filter(|(key, target)| {
                target.origin == Origin::Discovered
                    && !addresses.contains(*key)
                    && matches!(target.state, TargetState::Waiting { .. })
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.remove(&key);
        }
        for key in addresses {
            if !self.targets.contains_key(key) {
                let target = Target {
                    origin: Origin::Discovered,
                    state: TargetState::Waiting { at: now },
                    attempts: 0,
                    last_error: None,
                    peer: None,
                };
                self.insert(key.clone(), target);
            }
        }
    }

    /// Targets due for a dial now; `allow_discovered` is false at the connection limit.
    /// Marks them connecting.
    pub fn due(&mut self, now: Instant, allow_discovered: bool) -> Vec<String> {
        let slots: &[usize] = if allow_discovered { &[0, 1] } else { &[0] };
        let mut due = Vec::new();
        for &slot in slots {
            due.extend(
                self.waiting[slot]
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .map(|(_, key)| key.clone()),
            );
        }
        for key in &due {
            self.update(key, |target| target.state = TargetState::Connecting);
        }
        due
    }

    /// When the next target is due; discovered ones count only if `allow_discovered`.
    pub fn next_due(&self, allow_discovered: bool) -> Option<Instant> {
        let direct = self.waiting[0].first().map(|(at, _)| *at);
        let discovered = allow_discovered
            .then(|| self.waiting[1].first().map(|(at, _)| *at))
            .flatten();
        direct.into_iter().chain(discovered).min()
    }

    /// The target led to `peer`, which we are now connected to (through this dial or
    /// another connection that won a duplicate tie-break).
    pub fn connected(&mut self, key: &str, peer: PeerName) {
        self.update(key, |target| {
            target.state = TargetState::Connected;
            target.last_error = None;
            target.attempts = 0;
            target.peer = Some(peer);
        });
    }

    /// Our connection to `peer` ended: every target satisfied by it waits for a retry.
    pub fn peer_down(
        &mut self,
        peer: PeerName,
        error: &str,
        lived: Duration,
        now: Instant,
        random: u64,
    ) {
        let keys: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| t.peer == Some(peer) && t.state == TargetState::Connected)
            .map(|(k, _)| k.clone())
            .collect();
        for (i, key) in keys.iter().enumerate() {
            self.failed(
                key,
                error.to_owned(),
                Some(lived),
                now,
                random.rotate_left(i as u32 * 7),
            );
        }
    }

    /// A dial or a connection from this target failed or ended. `lived` is how long the
    /// connection was up, if it got that far.
    pub fn failed(
        &mut self,
        key: &str,
        error: String,
        lived: Option<Duration>,
        now: Instant,
        random: u64,
    ) {
        let backoff = self.backoff;
        self.update(key, |target| {
            if target.state == TargetState::Stopped {
                return;
            }
            if lived.is_some_and(|lived| lived >= backoff.healthy_after) {
                target.attempts = 0;
            }
            target.attempts += 1;
            let delay = if target.attempts == 1 && lived.is_some() {
                // It was working: try again soon, with jitter so peers do not stampede.
                Duration::from_millis(random % 1000)
            } else {
                backoff.delay(target.attempts, random)
            };
            target.state = TargetState::Waiting { at: now + delay };
            target.last_error = Some(error);
        });
    }

    /// Never dial this target again (ourselves, or a name collision).
    pub fn stop(&mut self, key: &str, reason: String) {
        self.update(key, |target| {
            target.state = TargetState::Stopped;
            target.last_error = Some(reason);
        });
    }
}

/// Normalises a user's peer address to `host:port`, adding the default port. Accepts
/// `host`, `host:port`, `a.b.c.d`, `[v6]:port` and bare IPv6.
pub fn normalize_target(input: &str, default_port: u16) -> Result<String, String> {
    let input = input.trim();
    let bad = |why: &str| Err(format!("invalid peer address {input:?}: {why}"));
    if input.is_empty() {
        return bad("empty");
    }
    if let Ok(addr) = input.parse::<std::net::SocketAddr>() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = input.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, default_port).to_string());
    }
    let (host, port) = match input.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return bad("port must be a number from 1 to 65535"),
            Ok(port) => (host, port),
        },
        None => (input, default_port),
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        });
    if !valid_host {
        return bad("expected host[:port]");
    }
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_targets() {
        assert_eq!(
            normalize_target("192.0.2.1", 6783).unwrap(),
            "192.0.2.1:6783"
        );
        assert_eq!(
            normalize_target("192.0.2.1:7000", 6783).unwrap(),
            "192.0.2.1:7000"
        );
        assert_eq!(
            normalize_target("host-1.example", 6783).unwrap(),
            "host-1.example:6783"
        );
        assert_eq!(
            normalize_target("[2001:db8::1]:6783", 1).unwrap(),
            "[2001:db8::1]:6783"
        );
        assert_eq!(
            normalize_target("2001:db8::1", 6783).unwrap(),
            "[2001:db8::1]:6783"
        );
        for bad in [
            "",
            "host:",
            "host:0",
            "host:99999",
            "ho st",
            "-host",
            "a..b",
            "host:port",
        ] {
            assert!(normalize_target(bad, 6783).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let backoff = Backoff::default();
        let mid = 500_000; // jitter factor 1.0
        assert_eq!(backoff.delay(1, mid), Duration::from_secs(2));
        assert_eq!(backoff.delay(2, mid), Duration::from_secs(3));
        assert_eq!(backoff.delay(40, mid), Duration::from_secs(360));
        assert!(backoff.delay(1, 0) >= Duration::from_secs(1));
        assert!(backoff.delay(1, 999_999) < Duration::from_secs(3));
    }

    #[test]
    fn failed_targets_wait_and_stopped_ones_never_return() {
        let now = Instant::now();
        let mut targets = Targets::default();
        targets.add_direct("192.0.2.1:6783".into(), now);
        targets.add_direct("192.0.2.2:6783".into(), now);
        assert_eq!(targets.due(now, true).len(), 2);
        targets.failed("192.0.2.1:6783", "refused".into(), None, now, 500_000);
        targets.stop("192.0.2.2:6783", "cannot connect to ourself".into());
        assert!(targets.due(now + Duration::from_secs(1), true).is_empty());
        assert_eq!(
            targets.due(now + Duration::from_secs(2), true),
            vec!["192.0.2.1:6783".to_string()]
        );
        targets.failed("192.0.2.2:6783", "x".into(), None, now, 0);
        assert!(
            targets
                .due(now + Duration::from_secs(3600), true)
                .is_empty()
        );
    }

    #[test]
    fn discovered_targets_come_and_go() {
        let now = Instant::now();
        let mut targets = Targets::default();
        targets.set_discovered(&["192.0.2.5:6783".to_string()].into(), now);
        assert!(
            targets.due(now, false).is_empty(),
            "at the connection limit"
        );
        targets.set_discovered(&BTreeSet::new(), now);
        assert!(targets.get("192.0.2.5:6783").is_none());
    }
}
