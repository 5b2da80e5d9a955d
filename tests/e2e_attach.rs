//! End-to-end tests of the container plumbing: `weave attach`, `detach`, `expose`, `hide`
//! and `ps` with the real binary, on lab hosts whose containers are network namespaces
//! (named, by PID, and a real Docker container when Docker works here), checked from
//! inside the containers with `ip` and `ping`.
//!
//! Everything here stays on one host: containers reach each other through the `weave`
//! bridge, which needs no data plane.

#[path = "lab/mod.rs"]
mod lab;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use lab::weave::weave;
use lab::{Container, Host, Lab, Node, Output, wait_until};
use serde_json::Value;

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);
/// Containers' MTU until the daemon reports the overlay's own.
const DEFAULT_OVERLAY_MTU: u32 = 1376;

/// IPAM allocates inside the test range only.
fn launch(host: &Host) {
    lab::weave::launch(host, &["--ipalloc-range", "198.18.0.0/15"]);
}

/// A lab for `test` with one host, "a", and two containers on it, "c1" and "c2"; the
/// daemon is not launched yet.
fn one_host_two_containers(test: &str) -> (Lab, Host, Container, Container) {
    let mut lab = Lab::new(test, WEAVE);
    let host = lab.host("a");
    let (c1, c2) = (lab.container(&host, "c1"), lab.container(&host, "c2"));
    (lab, host, c1, c2)
}

/// `weave ARGS...` on `host`, expected to fail with `code` and say `why` on stderr.
#[track_caller]
fn weave_fails(host: &Host, args: &[&str], code: i32, why: &str) {
    let mut argv = vec!["weave"];
    argv.extend_from_slice(args);
    let out = host.run(&argv);
    assert_eq!(out.status, Some(code), "exit code of:\n{out}");
    assert!(out.stderr.contains(why), "expected {why:?} in:\n{out}");
    assert!(!out.stderr.contains("panicked"), "{out}");
}

/// `weave ps` as (id, mac, addresses) per line.
fn ps(host: &Host) -> Vec<(String, String, Vec<String>)> {
    weave(host, &["ps"])
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace().map(str::to_owned);
            let id = words.next().unwrap_or_default();
            let mac = words.next().unwrap_or_default();
            (id, mac, words.collect())
        })
        .collect()
}

fn ps_ids(host: &Host) -> Vec<String> {
    ps(host).into_iter().map(|(id, ..)| id).collect()
}

/// The overlay MTU the daemon reports, if it does yet (the data plane adds it).
fn reported_mtu(host: &Host) -> u32 {
    let report: Value = serde_json::from_str(&weave(host, &["report"])).expect("report JSON");
    report["Router"]
        .as_object()
        .and_then(|router| {
            router
                .iter()
                .find(|(k, _)| k.to_ascii_lowercase().replace('_', "") == "overlaymtu")
                .and_then(|(_, v)| v.as_u64())
        })
        .map_or(DEFAULT_OVERLAY_MTU, |mtu| {
            u32::try_from(mtu).expect("an MTU fits u32")
        })
}

/// What `ip link show ethwe` says inside `node`: (MTU, MAC), or `None` without ethwe.
fn ethwe(node: &Node) -> Option<(u32, String)> {
    let out = node.run(&["ip", "-o", "link", "show", "dev", "ethwe"]);
    if !out.success() {
        return None;
    }
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .map(|w| (*w).to_owned())
    };
    let mtu = after("mtu")?.parse().ok()?;
    Some((mtu, after("link/ether")?))
}

fn multicast_route(node: &Node) -> String {
    node.run(&["ip", "route", "show", "224.0.0.0/4"])
        .expect_ok()
        .stdout
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

/// Waits until `weave ps` on `host` no longer lists `id`.
fn wait_forgotten(host: &Host, id: &str) {
    wait_until(&format!("{id} forgotten"), WAIT, POLL, || {
        let ids = ps_ids(host);
        if ids.iter().any(|i| i == id) {
            Err(format!("ps still lists it: {ids:?}"))
        } else {
            Ok(())
        }
    })
    .unwrap();
}

#[test]
fn attached_containers_get_ethwe_and_reach_each_other_through_the_bridge() {
    let (_lab, host, c1, c2) = one_host_two_containers("attach_basic");
    launch(&host);

    let printed = weave(&host, &["attach", "198.18.0.1/15", "--netns", c1.netns()]);
    assert_eq!(printed.trim(), "198.18.0.1");
    // A path names a namespace too.
    let path = format!("/run/netns/{}", c2.netns());
    weave(
        &host,
        &["attach", "198.18.0.2/15", "--name", "db", "--netns", &path],
    );

    let mtu = reported_mtu(&host);
    let (c1_mtu, c1_mac) = ethwe(&c1).expect("c1 has ethwe");
    assert_eq!(c1_mtu, mtu);
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
    assert_eq!(c2.addresses("ethwe"), ["198.18.0.2/15"]);
    assert!(
        multicast_route(&c1).contains("dev ethwe"),
        "{}",
        multicast_route(&c1)
    );
    // Locally administered unicast.
    let first = u8::from_str_radix(&c1_mac[..2], 16).expect("hex MAC");
    assert_eq!(first & 0x03, 0x02, "{c1_mac}");

    c1.wait_ping(ip("198.18.0.2"), WAIT).unwrap();
    c2.wait_ping(ip("198.18.0.1"), WAIT).unwrap();

    let listed = ps(&host);
    assert_eq!(listed[0].0, "weave:expose", "{listed:?}");
    let line = |id: &str| {
        listed
            .iter()
            .find(|(i, ..)| i == id)
            .unwrap_or_else(|| panic!("{id} not in {listed:?}"))
            .clone()
    };
    assert_eq!(
        line(c1.netns()),
        (
            c1.netns().to_owned(),
            c1_mac.clone(),
            vec!["198.18.0.1/15".to_owned()]
        )
    );
    assert_eq!(line(&path).2, ["198.18.0.2/15"]);
    // ps takes targets: by netns name, or by --name.
    let only: Vec<String> = weave(&host, &["ps", "db"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(only.len(), 1, "{only:?}");
    assert!(only[0].starts_with(&path), "{only:?}");

    // Re-attaching adds an address; the MAC stays.
    weave(&host, &["attach", "198.19.0.1/16", "--netns", c1.netns()]);
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15", "198.19.0.1/16"]);
    assert_eq!(ethwe(&c1).expect("ethwe").1, c1_mac);
    // Detaching one address keeps the interface; detaching the rest removes it.
    weave(&host, &["detach", "198.19.0.1/16", "--netns", c1.netns()]);
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
    weave(&host, &["detach", "--netns", c1.netns()]);
    assert_eq!(ethwe(&c1), None);
    assert!(!ps_ids(&host).contains(&c1.netns().to_owned()));
    assert!(!c2.ping(ip("198.18.0.1")));
    // Its address is free again.
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c1.netns()]);
    assert_eq!(
        ethwe(&c1).expect("ethwe again").1,
        c1_mac,
        "same container, same MAC"
    );
    c2.wait_ping(ip("198.18.0.1"), WAIT).unwrap();
}

#[test]
fn expose_puts_the_host_on_the_overlay_and_hide_takes_it_off() {
    let mut lab = Lab::new("attach_expose", WEAVE);
    let host = lab.host("a");
    let c = lab.container(&host, "c");
    launch(&host);
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c.netns()]);
    assert!(!host.ping(ip("198.18.0.1")), "not exposed yet");

    assert_eq!(
        weave(&host, &["expose", "198.18.0.100/15"]).trim(),
        "198.18.0.100"
    );
    assert_eq!(host.addresses("weave"), ["198.18.0.100/15"]);
    host.wait_ping(ip("198.18.0.1"), WAIT).unwrap();
    c.wait_ping(ip("198.18.0.100"), WAIT).unwrap();

    let bridge_mac = host.mac("weave");
    let listed = ps(&host);
    assert_eq!(
        listed[0],
        (
            "weave:expose".to_owned(),
            bridge_mac,
            vec!["198.18.0.100/15".to_owned()]
        ),
        "{listed:?}"
    );
    // The host's address is taken: no container may have it, and vice versa.
    let other = lab.container(&host, "other");
    weave_fails(
        &host,
        &["attach", "198.18.0.100/15", "--netns", other.netns()],
        1,
        "198.18.0.100 is already in use by the host (weave:expose)",
    );
    weave_fails(
        &host,
        &["expose", "198.18.0.1/15"],
        1,
        &format!("198.18.0.1 is already in use by {}", c.netns()),
    );

    weave(&host, &["hide", "198.18.0.100/15"]);
    assert!(host.addresses("weave").is_empty());
    assert!(!host.ping(ip("198.18.0.1")));
    weave_fails(&host, &["hide", "198.18.0.100/15"], 1, "is not exposed");
    // Hide with no address hides them all.
    weave(&host, &["expose", "198.18.0.100/15", "198.18.0.101/15"]);
    weave(&host, &["hide"]);
    assert!(host.addresses("weave").is_empty());
}

#[test]
fn pid_targets_work_and_gone_containers_are_forgotten() {
    let (mut lab, host, c1, c2) = one_host_two_containers("attach_pid");
    launch(&host);

    let sleeper = c1.spawn(&["sleep", "30"]);
    let pid = sleeper.pid().to_string();
    weave(&host, &["attach", "198.18.0.1/15", "--pid", &pid]);
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
    let id = format!("pid:{pid}");
    assert!(ps_ids(&host).contains(&id), "{:?}", ps(&host));
    weave(&host, &["attach", "198.18.0.2/15", "--netns", c2.netns()]);
    c2.wait_ping(ip("198.18.0.1"), WAIT).unwrap();

    // The process ends: the container it stood for is gone, and so is its interface.
    sleeper.kill();
    wait_forgotten(&host, &id);
    wait_until("c1's ethwe removed", WAIT, POLL, || match ethwe(&c1) {
        None => Ok(()),
        Some(found) => Err(format!("still there: {found:?}")),
    })
    .unwrap();
    // The address is free for another container.
    let c3 = lab.container(&host, "c3");
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c3.netns()]);

    // The namespace is deleted: forgotten within a few seconds.
    c2.delete_netns();
    wait_forgotten(&host, c2.netns());
    let log = std::fs::read_to_string(host.state_dir().join("weave.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("forgetting container {}", c2.netns())),
        "{log}"
    );
}

#[test]
fn attachments_survive_a_restart_and_reset_removes_them() {
    let (_lab, host, c1, c2) = one_host_two_containers("attach_restart");
    launch(&host);
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c1.netns()]);
    weave(&host, &["attach", "198.18.0.2/15", "--netns", c2.netns()]);
    weave(&host, &["expose", "198.18.0.100/15"]);
    let mac = ethwe(&c1).expect("ethwe").1;

    weave(&host, &["stop"]);
    // `weave stop` leaves the containers plumbed.
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
    c1.wait_ping(ip("198.18.0.2"), WAIT).unwrap();
    // c2 goes away while the daemon is down.
    c2.delete_netns();

    launch(&host);
    let ids = ps_ids(&host);
    assert!(ids.contains(&c1.netns().to_owned()), "{ids:?}");
    assert!(!ids.contains(&c2.netns().to_owned()), "{ids:?}");
    assert_eq!(ps(&host)[0].2, ["198.18.0.100/15"]);
    // Attaching again is harmless and keeps the MAC.
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c1.netns()]);
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
    assert_eq!(ethwe(&c1).expect("ethwe").1, mac);

    weave(&host, &["reset"]);
    assert_eq!(ethwe(&c1), None, "reset removes container interfaces");
    assert!(host.addresses("weave").is_empty());
}

#[test]
fn bad_input_gets_clear_errors() {
    let (lab, host, c1, c2) = one_host_two_containers("attach_errors");
    // Before launch: not running.
    weave_fails(
        &host,
        &["attach", "198.18.0.1/15", "--netns", c1.netns()],
        1,
        "weave is not running",
    );
    // IPAM off: attach and expose without an address are refused with the reason.
    lab::weave::launch(&host, &["--ipalloc-range", ""]);
    let ns = c1.netns();
    // Usage errors (exit 2), found by the CLI.
    for (args, why) in [
        (&["attach", "198.18.0.1/15"][..], "no container given"),
        (&["attach", "198.18.0.1", "--netns", ns], "no prefix length"),
        (
            &["attach", "198.18.0.0/15", "--netns", ns],
            "is the network address",
        ),
        (&["attach", "224.0.0.5/4", "--netns", ns], "is multicast"),
        (
            &["attach", "net:198.18.0.0/16", "--netns", ns],
            "needs IPAM",
        ),
        (
            &["attach", "198.18.0.1/15", "--netns", ns, "--pid", "1"],
            "cannot be used with",
        ),
        (
            &["attach", "198.18.0.1/15", "--netns", ns, "extra"],
            "unexpected argument \"extra\"",
        ),
        (
            &["attach", "--pid", "0", "198.18.0.1/15"],
            "not a process ID",
        ),
        (&["expose", "198.18.0.1"], "no prefix length"),
        (&["detach"], "no container given"),
    ] {
        weave_fails(&host, args, 2, why);
    }
    // Refusals from the daemon (exit 1).
    let missing = format!("{}-missing", lab.prefix());
    for (args, why) in [
        (
            vec!["attach", "198.18.0.1/15", "--netns", &missing],
            "does not exist",
        ),
        (
            vec!["attach", "198.18.0.1/15", "--netns", "/etc/hostname"],
            "is not a network namespace",
        ),
        (
            vec!["attach", "198.18.0.1/15", "--pid", "4000000"],
            "no process 4000000",
        ),
        (vec!["attach", "--netns", ns], "IPAM is disabled"),
        (
            vec!["attach", "198.18.0.1/15", "--netns", host.netns()],
            "the host's own network namespace",
        ),
        (vec!["detach", "--netns", ns], "is not attached"),
        (vec!["expose"], "IPAM is disabled"),
    ] {
        weave_fails(&host, &args, 1, why);
    }
    // Address conflicts.
    weave(&host, &["attach", "198.18.0.1/15", "--netns", c1.netns()]);
    weave_fails(
        &host,
        &["attach", "198.18.0.1/15", "--netns", c2.netns()],
        1,
        &format!("198.18.0.1 is already in use by {}", c1.netns()),
    );
    weave_fails(
        &host,
        &["detach", "198.18.0.9/15", "--netns", c1.netns()],
        1,
        "198.18.0.9 is not attached to",
    );
    // A container name: Docker resolves it, or its absence is explained.
    let out = host.run(&["weave", "attach", "198.18.0.5/15", "no-such-container-here"]);
    assert_eq!(out.status, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("no such Docker container: no-such-container-here")
            || out.stderr.contains("docker is not installed")
            || out.stderr.contains("docker inspect"),
        "{out}"
    );
    // The API answers bad requests with 400 and one line, never a crash.
    if Command::new("curl").arg("--version").output().is_ok() {
        for (body, why) in [
            ("addr=198.18.0.1/33&netns=x", "not an address in CIDR form"),
            ("addr=198.18.0.1/15", "no target"),
            ("addr=198.18.0.1/15&netns=x&pid=3", "two targets given"),
            ("addr=%zz&netns=x", "bad percent escape"),
        ] {
            let out = curl(&host, &["-d", body, "http://127.0.0.1:6784/attach"]);
            let (text, code) = out.stdout.rsplit_once('\n').expect("code line");
            assert_eq!(code, "400", "{body}: {out}");
            assert!(text.contains(why), "{body}: {out}");
            assert_eq!(text.trim_end().lines().count(), 1, "{body}: {out}");
        }
        let json = curl(
            &host,
            &[
                "-H",
                "Content-Type: application/json",
                "-d",
                &format!(
                    r#"{{"addr": ["198.18.0.3/15"], "netns": "{}"}}"#,
                    c2.netns()
                ),
                "http://127.0.0.1:6784/attach",
            ],
        );
        let (text, code) = json.stdout.rsplit_once('\n').expect("code line");
        assert_eq!(code, "200", "{json}");
        let entry: Value = serde_json::from_str(text).expect("JSON answer");
        assert_eq!(entry["Addrs"][0], "198.18.0.3/15", "{json}");
        let listed = curl(&host, &["http://127.0.0.1:6784/ps?format=json"]);
        let (text, _) = listed.stdout.rsplit_once('\n').expect("code line");
        let entries: Value = serde_json::from_str(text).expect("JSON ps");
        assert_eq!(entries.as_array().map(Vec::len), Some(3), "{listed}");
    }
    // After all that, the daemon is still fine.
    assert_eq!(c1.addresses("ethwe"), ["198.18.0.1/15"]);
}

/// curl in `host`, printing the body then the status code on a line of its own.
fn curl(host: &Host, args: &[&str]) -> Output {
    let mut argv = vec!["curl", "-sS", "-m", "10", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    host.run(&argv).expect_ok()
}

/// A real Docker container, attached by ID and by name, when Docker works here. The
/// engine may have no registry access and no images: the image is made locally from
/// the host's own `sleep` and C library (`docker import`), and removed afterwards.
#[test]
fn docker_containers_can_be_attached() {
    let Some(docker) = lab::docker::DockerContainer::start() else {
        return;
    };
    let mut lab = Lab::new("attach_docker", WEAVE);
    let host = lab.host("a");
    let peer = lab.container(&host, "peer");
    launch(&host);
    weave(&host, &["attach", "198.18.0.1/15", "--netns", peer.netns()]);
    weave(&host, &["attach", "198.18.0.7/15", &docker.id[..12]]);
    // Inside the Docker container (nsenter into its namespace): ethwe with the address.
    let out = Command::new("nsenter")
        .args([
            &format!("--net=/proc/{}/ns/net", docker.pid),
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "dev",
            "ethwe",
        ])
        .output()
        .expect("run nsenter");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("198.18.0.7/15"), "{text} {out:?}");
    peer.wait_ping(ip("198.18.0.7"), WAIT).unwrap();
    let short = docker.id[..12].to_owned();
    assert!(ps_ids(&host).contains(&short), "{:?}", ps(&host));
    // By name, re-attaching adds an address to the same container.
    weave(&host, &["attach", "198.18.0.8/15", &docker.name]);
    let listed = ps(&host);
    let line = listed.iter().find(|(id, ..)| *id == short).expect("listed");
    assert_eq!(line.2, ["198.18.0.7/15", "198.18.0.8/15"]);
    assert_eq!(
        weave(&host, &["ps", &docker.name]).lines().count(),
        1,
        "ps by Docker name"
    );
    // The state directory is lost while both stay attached: a new daemon finds them
    // again by their ports on the bridge.
    weave(&host, &["stop"]);
    host.wipe_state_dir();
    launch(&host);
    let listed = ps(&host);
    let line = listed.iter().find(|(id, ..)| *id == short);
    assert_eq!(
        line.map(|l| l.2.clone()),
        Some(vec!["198.18.0.7/15".to_owned(), "198.18.0.8/15".to_owned()]),
        "{listed:?}"
    );
    assert!(
        listed.iter().any(|l| l.2 == ["198.18.0.1/15"]),
        "the namespace container: {listed:?}"
    );
    // The container stops: forgotten.
    docker.remove();
    wait_forgotten(&host, &short);
    weave_fails(
        &host,
        &["attach", "198.18.0.7/15", &docker.name],
        1,
        "no such Docker container",
    );
}
