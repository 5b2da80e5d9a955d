//! End-to-end tests of the mesh: the real `weave` binary in network namespaces, hosts
//! joined by an underlay bridge or point-to-point links, checked through `weave report`
//! and `weave status` as a user would.

#[path = "lab/mod.rs"]
mod lab;

use std::time::Duration;

use lab::weave::{connection_states, launch, report, status_port_get, try_report};
use lab::{Host, Lab, wait_until};

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Nicknames of the peers `host` knows, sorted.
fn peers(host: &Host) -> Result<Vec<String>, String> {
    let report = try_report(host)?;
    let mut names: Vec<String> = report["Router"]["Peers"]
        .as_array()
        .ok_or("no Router.Peers")?
        .iter()
        .map(|p| p["NickName"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Waits until `host` knows exactly `expected` (nicknames) and has `established`
/// established connections.
fn wait_for_mesh(host: &Host, expected: &[&str], established: usize) {
    let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    wait_until(
        &format!("{} sees {expected:?}", host.name()),
        WAIT,
        POLL,
        || {
            let peers = peers(host)?;
            let states = connection_states(host)?;
            let up = states.iter().filter(|s| *s == "established").count();
            if peers == expected && up == established {
                Ok(())
            } else {
                Err(format!("peers {peers:?}, connections {states:?}"))
            }
        },
    )
    .unwrap();
}

/// Hosts a, b and c on the underlay, launched in order; b and c name only a.
fn three_through_one_seed(lab: &mut Lab) -> [Host; 3] {
    let [a, b, c] = [lab.host("a"), lab.host("b"), lab.host("c")];
    launch(&a, &[]);
    let seed = a.ip().to_string();
    launch(&b, &[&seed]);
    launch(&c, &[&seed]);
    [a, b, c]
}

#[test]
fn three_hosts_join_through_one_seed_and_discover_each_other() {
    let mut lab = Lab::new("mesh_seed", WEAVE);
    let [a, b, c] = three_through_one_seed(&mut lab);
    // b and c named only a: they find each other through gossip and connect.
    for host in [&a, &b, &c] {
        wait_for_mesh(host, &["a", "b", "c"], 2);
    }
    let status = c.run(&["weave", "status"]).expect_ok().stdout;
    if std::env::var_os("SHOW_STATUS").is_some() {
        for view in [
            vec!["weave", "status"],
            vec!["weave", "status", "connections"],
            vec!["weave", "status", "peers"],
        ] {
            eprintln!("$ {}\n{}", view.join(" "), c.run(&view).stdout);
        }
    }
    assert!(status.contains("Encryption: disabled"), "{status}");
    assert!(status.contains("Peers: 3"), "{status}");
    let connections = c
        .run(&["weave", "status", "connections"])
        .expect_ok()
        .stdout;
    assert_eq!(
        connections.matches("established").count(),
        2,
        "{connections}"
    );
    let peers_view = b.run(&["weave", "status", "peers"]).expect_ok().stdout;
    for name in ["(a)", "(b)", "(c)"] {
        assert!(peers_view.contains(name), "{peers_view}");
    }
}

#[test]
fn line_topology_learns_the_far_end_through_the_middle() {
    let mut lab = Lab::new("mesh_line", WEAVE);
    let ([a, b, c], [ab, bc]) = lab.line(["a", "b", "c"]);
    launch(&b, &[]);
    launch(&a, &[&ab.ip_of(&b).to_string()]);
    launch(&c, &[&bc.ip_of(&b).to_string()]);
    // a and c cannot reach each other, yet know each other through b.
    wait_for_mesh(&a, &["a", "b", "c"], 1);
    wait_for_mesh(&c, &["a", "b", "c"], 1);
    wait_for_mesh(&b, &["a", "b", "c"], 2);
    assert!(!a.ping(bc.ip_of(&c)), "the underlay has no a-c route");
}

#[test]
fn stopped_host_is_dropped_and_rejoins_when_restarted() {
    let mut lab = Lab::new("mesh_restart", WEAVE);
    let [a, b, c] = three_through_one_seed(&mut lab);
    wait_for_mesh(&a, &["a", "b", "c"], 2);
    let name_before = report(&c)["Router"]["Name"].clone();

    c.run(&["weave", "stop"]).expect_ok();
    wait_for_mesh(&a, &["a", "b"], 1);
    wait_for_mesh(&b, &["a", "b"], 1);
    let stopped = c.run(&["weave", "status"]);
    assert!(!stopped.success(), "status of a stopped daemon fails");
    assert!(stopped.stderr.contains("not running"), "{}", stopped.stderr);

    // Relaunched without arguments, it rejoins through the peers it persisted, under
    // the same name.
    launch(&c, &[]);
    for host in [&a, &b, &c] {
        wait_for_mesh(host, &["a", "b", "c"], 2);
    }
    assert_eq!(report(&c)["Router"]["Name"], name_before);
}

#[test]
fn wrong_password_cannot_join_and_status_says_why() {
    let mut lab = Lab::new("mesh_password", WEAVE);
    let (a, b, c) = (lab.host("a"), lab.host("b"), lab.host("c"));
    launch(&a, &["--password", "s3cret"]);
    let seed = a.ip().to_string();
    launch(&b, &["--password", "s3cret", &seed]);
    launch(&c, &["--password", "wrong", &seed]);
    wait_for_mesh(&a, &["a", "b"], 1);
    wait_until("c reports the refusal", WAIT, POLL, || {
        let text = c.run(&["weave", "status", "connections"]).stdout;
        if text.contains("failed") && text.contains("password") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .unwrap();
    assert_eq!(peers(&c).unwrap(), vec!["c".to_owned()]);
    assert_eq!(peers(&a).unwrap(), vec!["a".to_owned(), "b".to_owned()]);
    let status = b.run(&["weave", "status"]).expect_ok().stdout;
    assert!(status.contains("Encryption: enabled"), "{status}");
}

#[test]
fn bad_input_gets_a_clear_message_and_a_nonzero_exit() {
    let mut lab = Lab::new("mesh_badinput", WEAVE);
    let a = lab.host("a");
    let not_running = a.run(&["weave", "status"]);
    assert!(!not_running.success());
    assert!(
        not_running.stderr.contains("not running"),
        "{}",
        not_running.stderr
    );

    let bad_peer = a.run(&["weave", "launch", "host:99999"]);
    assert!(!bad_peer.success());
    assert!(
        bad_peer.stderr.contains("invalid peer"),
        "{}",
        bad_peer.stderr
    );

    let unknown = a.run(&["weave", "frobnicate"]);
    assert!(!unknown.success());

    launch(&a, &[]);
    let again = a.run(&["weave", "launch"]);
    assert!(!again.success());
    assert!(again.stderr.contains("already running"), "{}", again.stderr);

    let bad_connect = a.run(&["weave", "connect", "no spaces allowed"]);
    assert!(!bad_connect.success());
    assert!(!bad_connect.stderr.is_empty());

    // A second daemon with its own state directory cannot take the port.
    let other_state = lab.dir().join("other-state");
    let port_taken = a
        .cmd(&[
            "weave",
            "launch",
            "--http-addr",
            "127.0.0.1:16784",
            "--status-addr",
            "127.0.0.1:16782",
        ])
        .env("WEAVE_STATE_DIR", other_state.to_str().unwrap())
        .run();
    assert!(!port_taken.success());
    assert!(port_taken.stderr.contains("6783"), "{}", port_taken.stderr);
    for output in [
        not_running,
        bad_peer,
        unknown,
        again,
        bad_connect,
        port_taken,
    ] {
        assert!(!output.stderr.contains("panicked"), "{}", output.stderr);
    }
}

#[test]
fn connect_forget_metrics_and_reset() {
    let mut lab = Lab::new("mesh_commands", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    launch(&a, &[]);
    launch(&b, &[]);
    assert_eq!(peers(&b).unwrap(), vec!["b".to_owned()]);
    b.run(&["weave", "connect", &a.ip().to_string()])
        .expect_ok();
    wait_for_mesh(&b, &["a", "b"], 1);
    let targets = b.run(&["weave", "status", "targets"]).expect_ok().stdout;
    assert!(targets.contains(&format!("{}:6783", a.ip())), "{targets}");

    let metrics = status_port_get(&b, "/metrics");
    let established = metrics
        .lines()
        .find(|l| l.starts_with("weave_connections{") && l.contains("state=\"established\""))
        .unwrap_or_else(|| panic!("no established gauge in {metrics}"));
    assert!(established.ends_with(" 1"), "{established}");
    assert!(metrics.contains("weave_peers 2"), "{metrics}");

    // Forget drops the target; the connection stays up (as in Weave).
    b.run(&["weave", "forget", &a.ip().to_string()]).expect_ok();
    let targets = b.run(&["weave", "status", "targets"]).expect_ok().stdout;
    assert!(targets.trim().is_empty(), "{targets:?}");
    assert_eq!(
        connection_states(&b).unwrap(),
        vec!["established".to_owned()]
    );

    // Reset forgets everything persisted: a new name next time.
    let name = report(&b)["Router"]["Name"].clone();
    b.run(&["weave", "reset"]).expect_ok();
    wait_for_mesh(&a, &["a"], 0);
    launch(&b, &[]);
    assert_ne!(report(&b)["Router"]["Name"], name);
    assert_eq!(
        peers(&b).unwrap(),
        vec!["b".to_owned()],
        "no peers remembered"
    );
}

#[test]
fn two_hosts_with_one_name_are_reported() {
    let mut lab = Lab::new("mesh_collision", WEAVE);
    let (a, b, c) = (lab.host("a"), lab.host("b"), lab.host("c"));
    launch(&a, &[]);
    let seed = a.ip().to_string();
    // Cloned machines: same peer name.
    launch(&b, &["--name", "02:00:00:00:00:99", &seed]);
    wait_for_mesh(&a, &["a", "b"], 1);
    launch(&c, &["--name", "02:00:00:00:00:99", &seed]);
    for host in [&a, &b] {
        wait_until(
            &format!("{} reports the collision", host.name()),
            Duration::from_secs(60),
            POLL,
            || {
                let status = host.run(&["weave", "status"]).stdout;
                if status.contains("collision") {
                    Ok(())
                } else {
                    Err(status)
                }
            },
        )
        .unwrap();
    }
}
