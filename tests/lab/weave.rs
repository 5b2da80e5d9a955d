//! Driving the `weave` CLI on a lab host: the few steps every end-to-end test repeats.

use std::time::Duration;

use serde_json::Value;

use std::net::Ipv4Addr;

use super::{Container, Host, Lab, wait_until};

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

/// `weave launch --nickname <the host's name> ARGS...` on `host`, expected to succeed.
#[track_caller]
pub(crate) fn launch(host: &Host, args: &[&str]) {
    let mut argv = vec!["launch", "--nickname", host.name()];
    argv.extend_from_slice(args);
    weave(host, &argv);
}

/// `weave report` on `host`, parsed.
#[track_caller]
pub(crate) fn report(host: &Host) -> Value {
    let out = weave(host, &["report"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// `weave report` on `host`, parsed, or what went wrong (for polling).
pub(crate) fn try_report(host: &Host) -> Result<Value, String> {
    let out = host.run(&["weave", "report"]);
    if !out.success() {
        return Err(format!("weave report failed: {}{}", out.stdout, out.stderr));
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("bad JSON ({e}): {}", out.stdout))
}

/// The states of `host`'s connections in its report.
pub(crate) fn connection_states(host: &Host) -> Result<Vec<String>, String> {
    states(&try_report(host)?).ok_or_else(|| "no Router.Connections".to_owned())
}

/// The states of the connections in `report`, if it lists them.
fn states(report: &Value) -> Option<Vec<String>> {
    let connections = report["Router"]["Connections"].as_array()?;
    Some(
        connections
            .iter()
            .map(|c| c["State"].as_str().unwrap_or_default().to_owned())
            .collect(),
    )
}

/// `GET path` on the daemon's status port inside `host`, through bash's /dev/tcp (the
/// lab's hosts need no HTTP client); the whole answer, headers first.
#[track_caller]
pub(crate) fn status_port_get(host: &Host, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/6782; printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; cat <&3"
    );
    host.run(&["bash", "-c", &script]).expect_ok().stdout
}

/// Waits until `host` has exactly `n` established connections.
#[track_caller]
pub(crate) fn wait_established(host: &Host, n: usize) {
    wait_until(
        &format!("{} has {n} established connections", host.name()),
        WAIT,
        POLL,
        || {
            let states = states(&report(host)).ok_or("no connections")?;
            if states.iter().filter(|s| *s == "established").count() == n {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    )
    .unwrap();
}

/// Plumbs `c` into `host`'s bridge with `addr`/16 and the overlay MTU from the report.
pub(crate) fn plumb(host: &Host, c: &Container, addr: Ipv4Addr) {
    let mtu = report(host)["Router"]["OverlayMtu"]
        .as_u64()
        .expect("OverlayMtu in the report")
        .to_string();
    let host_end = format!("vw{}", c.name());
    host.run(&[
        "ip",
        "link",
        "add",
        &host_end,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "ethwe",
        "mtu",
        &mtu,
        "netns",
        c.netns(),
    ])
    .expect_ok();
    host.run(&["ip", "link", "set", &host_end, "master", "weave", "up"])
        .expect_ok();
    c.run(&["ip", "addr", "add", &format!("{addr}/16"), "dev", "ethwe"])
        .expect_ok();
    c.run(&["ip", "link", "set", "ethwe", "up"]).expect_ok();
}

pub(crate) fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// Two hosts on the underlay (198.18.0.1 and .2 for the containers), a container on each; launched with `args`.
pub(crate) fn two_hosts(lab: &mut Lab, args: &[&str]) -> (Host, Host, Container, Container) {
    let (a, b) = (lab.host("a"), lab.host("b"));
    launch(&a, args);
    let mut b_args = args.to_vec();
    let seed = a.ip().to_string();
    b_args.push(&seed);
    launch(&b, &b_args);
    wait_established(&a, 1);
    wait_established(&b, 1);
    let (ca, cb) = (lab.container(&a, "ca"), lab.container(&b, "cb"));
    plumb(&a, &ca, ip(1));
    plumb(&b, &cb, ip(2));
    (a, b, ca, cb)
}

/// On two hosts from [`two_hosts`]: a second container on b, then cb takes ca's MAC and
/// speaks; waits until both hosts log that the MAC is claimed by two (the latest claim
/// wins).
pub(crate) fn claim_a_mac_twice(lab: &mut Lab, a: &Host, b: &Host, ca: &Container, cb: &Container) {
    let cb2 = lab.container(b, "cb2");
    plumb(b, &cb2, ip(3));
    ca.wait_ping(ip(3), WAIT).unwrap();
    let mac = ca.mac("ethwe");
    cb.run(&["ip", "link", "set", "ethwe", "address", &mac])
        .expect_ok();
    cb.run(&["ip", "neigh", "flush", "dev", "ethwe"])
        .expect_ok();
    let _ = cb.ping(ip(1));
    let log =
        |h: &Host| std::fs::read_to_string(h.state_dir().join("weave.log")).unwrap_or_default();
    for h in [a, b] {
        wait_until(
            &format!("{} to log the conflict", h.name()),
            WAIT,
            POLL,
            || {
                let text = log(h);
                if text
                    .lines()
                    .any(|l| l.contains(&mac) && l.contains("claimed by"))
                {
                    Ok(())
                } else {
                    Err("not logged".to_owned())
                }
            },
        )
        .unwrap();
    }
}
