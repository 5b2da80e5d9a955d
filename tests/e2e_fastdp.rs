//! End-to-end tests of the kernel fast path: between directly connected peers without
//! a password, frames cross the kernel's VXLAN device (UDP 6784) instead of the
//! sleeve; probes through that very path decide, and the sleeve takes over when they
//! stop getting through.

#[path = "lab/mod.rs"]
mod lab;

use std::net::Ipv4Addr;
use std::time::Duration;

use lab::weave::{
    claim_a_mac_twice, ip, launch, plumb, report, status_port_get, two_hosts, wait_established,
    weave,
};
use lab::{Container, Host, Lab, wait_until};

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// Waits until every connection `host` lists is on `overlay` ("fastdp" or "sleeve").
fn wait_overlay(host: &Host, overlay: &str, connections: usize) {
    wait_until(
        &format!("{}'s connections on {overlay}", host.name()),
        WAIT,
        POLL,
        || {
            let conns = weave(host, &["status", "connections"]);
            // The overlay is a word of its own (a sleeve line may also say fastdp=...).
            let on = conns
                .lines()
                .filter(|l| l.split_whitespace().any(|word| word == overlay))
                .count();
            if on == connections {
                Ok(())
            } else {
                Err(conns)
            }
        },
    )
    .unwrap();
}

/// `count` pings 50 ms apart; returns ping's output, asserting none was lost or
/// came twice.
#[track_caller]
fn pings_once_each(from: &Container, to: Ipv4Addr, count: u32, broadcast: bool) -> String {
    let count = count.to_string();
    let mut args = vec!["ping", "-n", "-c", &count, "-i", "0.05", "-W", "2"];
    if broadcast {
        args.push("-b");
    }
    let to = to.to_string();
    args.push(&to);
    let out = from
        .cmd(&args)
        .timeout(Duration::from_secs(20))
        .run()
        .expect_ok();
    assert!(!out.stdout.contains("DUP!"), "a frame came twice: {out}");
    assert!(out.stdout.contains(" 0% packet loss"), "{out}");
    out.stdout
}

/// One of `host`'s per-peer frame counters for `peer` (by name).
fn peer_counter(host: &Host, peer: &str, counter: &str) -> u64 {
    report(host)["Router"]["DataPlane"]["Peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["Name"] == peer))
        .map_or(0, |p| p[counter].as_u64().unwrap_or(0))
}

/// Frames `host`'s sleeve injected that `peer` captured.
fn injected_from(host: &Host, peer: &str) -> u64 {
    peer_counter(host, peer, "InjectedFrames")
}

/// Frames from `host`'s TAP that its sleeve sent to `peer`.
fn sleeve_sent_to(host: &Host, peer: &str) -> u64 {
    peer_counter(host, peer, "ForwardedFrames")
}

fn name(host: &Host) -> String {
    report(host)["Router"]["Name"]
        .as_str()
        .expect("name")
        .to_owned()
}

fn has_link(host: &Host, ifname: &str) -> bool {
    host.run(&["ip", "link", "show", ifname]).success()
}

#[test]
fn direct_peers_without_a_password_take_the_kernel_fast_path() {
    let mut lab = Lab::new("fastdp_plain", WEAVE);
    let (a, b, ca, cb) = two_hosts(&mut lab, &[]);
    wait_overlay(&a, "fastdp", 1);
    wait_overlay(&b, "fastdp", 1);
    assert!(has_link(&a, "vxlan-6784"));
    ca.wait_ping(ip(2), WAIT).unwrap();
    let (a_name, b_name) = (name(&a), name(&b));
    let before = injected_from(&b, &a_name);
    let sent_before = sleeve_sent_to(&a, &b_name);
    pings_once_each(&ca, ip(2), 20, false);
    pings_once_each(&cb, ip(1), 20, false);
    // IP broadcast (and the ARP before it) crosses once, by the kernel.
    cb.run(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
        .expect_ok();
    ca.run(&["ip", "neigh", "flush", "all"]).expect_ok();
    let out = pings_once_each(&ca, Ipv4Addr::new(198, 18, 255, 255), 5, true);
    assert!(out.contains("from 198.18.0.2"), "{out}");
    assert_eq!(
        injected_from(&b, &a_name),
        before,
        "the sleeve delivered frames the kernel carried"
    );
    assert_eq!(
        sleeve_sent_to(&a, &b_name),
        sent_before,
        "the sleeve carried copies of unicasts or floods that only b needed"
    );
    // On the underlay the frames are VXLAN on UDP 6784.
    let cap = a.spawn(&[
        "timeout", "10", "tcpdump", "-i", "eth0", "-nn", "-l", "-T", "vxlan", "-c", "8", "udp",
        "port", "6784",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    pings_once_each(&ca, ip(2), 5, false);
    cap.wait_exit("tcpdump to finish", Duration::from_secs(15), POLL)
        .unwrap();
    assert!(cap.log().contains("ICMP echo request"), "{}", cap.log());
    let out = ca
        .cmd(&["iperf3", "-c", &ip(2).to_string(), "-t", "2"])
        .timeout(Duration::from_secs(20));
    let srv = cb.spawn(&["iperf3", "-s", "-1"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = out.run().expect_ok();
    srv.stop(Duration::from_secs(2));
    assert!(out.stdout.contains("receiver"), "{out}");
    // `weave stop` takes the fast path's devices with it.
    weave(&a, &["stop"]);
    assert!(!has_link(&a, "vxlan-6784"));
    assert!(!has_link(&a, "vxlan-6784-p"));
}

#[test]
fn a_blocked_fast_path_falls_back_to_the_sleeve_and_comes_back() {
    let mut lab = Lab::new("fastdp_fallback", WEAVE);
    let (a, b, ca, _cb) = two_hosts(&mut lab, &[]);
    wait_overlay(&a, "fastdp", 1);
    ca.wait_ping(ip(2), WAIT).unwrap();
    // b stops hearing VXLAN; the mesh and the sleeve still work.
    let rule = ["INPUT", "-p", "udp", "--dport", "6784", "-j", "DROP"];
    let mut add = vec!["iptables", "-w", "-I"];
    add.extend(rule);
    b.run(&add).expect_ok();
    wait_overlay(&a, "sleeve", 1);
    wait_overlay(&b, "sleeve", 1);
    ca.wait_ping(ip(2), WAIT).unwrap();
    pings_once_each(&ca, ip(2), 10, false);
    // Each side says which way the probes fail: b hears none, a hears that b hears none.
    wait_overlay(&b, "fastdp=no-probes-from-peer", 1);
    wait_overlay(&a, "fastdp=no-probes-to-peer", 1);
    // ... and so does /metrics, for alerting.
    let metrics = status_port_get(&b, "/metrics");
    assert!(
        metrics.contains(r#"weave_sleeve_connections{reason="no-probes-from-peer"} 1"#),
        "{metrics}"
    );
    let mut del = vec!["iptables", "-w", "-D"];
    del.extend(rule);
    b.run(&del).expect_ok();
    wait_overlay(&a, "fastdp", 1);
    wait_overlay(&b, "fastdp", 1);
    ca.wait_ping(ip(2), WAIT).unwrap();
    pings_once_each(&ca, ip(2), 10, false);
}

#[test]
fn neighbours_go_fast_and_peers_beyond_them_over_the_relaying_sleeve() {
    let mut lab = Lab::new("fastdp_line", WEAVE);
    let ([a, b, c], [ab, bc]) = lab.line(["a", "b", "c"]);
    launch(&b, &[]);
    launch(&a, &[&ab.ip_of(&b).to_string()]);
    launch(&c, &[&bc.ip_of(&b).to_string()]);
    wait_established(&b, 2);
    wait_established(&a, 1);
    wait_established(&c, 1);
    wait_overlay(&b, "fastdp", 2);
    let (ca, cb, cc) = (
        lab.container(&a, "ca"),
        lab.container(&b, "cb"),
        lab.container(&c, "cc"),
    );
    plumb(&a, &ca, ip(1));
    plumb(&b, &cb, ip(2));
    plumb(&c, &cc, ip(3));
    ca.wait_ping(ip(3), WAIT).unwrap();
    pings_once_each(&ca, ip(2), 10, false);
    pings_once_each(&ca, ip(3), 10, false);
    pings_once_each(&cc, ip(1), 10, false);
    pings_once_each(&cc, ip(2), 10, false);
    // A broadcast from a reaches b by the kernel and c through b's sleeve, once each.
    for c in [&cb, &cc] {
        c.run(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
            .expect_ok();
    }
    let out = pings_once_each(&ca, Ipv4Addr::new(198, 18, 255, 255), 3, true);
    assert!(out.contains("from 198.18.0.2"), "{out}");
    assert!(out.contains("from 198.18.0.3"), "{out}");
    let relayed: u64 = report(&b)["Router"]["DataPlane"]["Peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["RelayedFrames"].as_u64().unwrap_or(0))
        .sum();
    assert!(relayed > 0, "b relayed a's frames to c");
}

/// Frames between fast peers never reach the forwarder; the kernel's learning is
/// watched instead, and a MAC claimed by two hosts is still reported on both.
#[test]
fn a_mac_claimed_by_two_fast_hosts_is_logged() {
    let mut lab = Lab::new("fastdp_mac_conflict", WEAVE);
    let (a, b, ca, cb) = two_hosts(&mut lab, &[]);
    wait_overlay(&a, "fastdp", 1);
    wait_overlay(&b, "fastdp", 1);
    claim_a_mac_twice(&mut lab, &a, &b, &ca, &cb);
}

#[test]
fn no_fast_path_with_a_password_or_when_turned_off() {
    let mut lab = Lab::new("fastdp_off", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    launch(&a, &["--password", "s3cret-for-tests"]);
    launch(&b, &["--no-fastdp"]);
    for host in [&a, &b] {
        assert!(!has_link(host, "vxlan-6784"), "{}", host.name());
    }
    // The status says why a connection takes the sleeve.
    let c = lab.host("c");
    launch(&c, &["--password", "s3cret-for-tests", &a.ip().to_string()]);
    wait_overlay(&a, "fastdp=encrypted", 1);
    let d = lab.host("d");
    launch(&d, &[&b.ip().to_string()]);
    wait_overlay(&b, "fastdp=off", 1);
    // `weave reset` removes the devices a fast path left.
    weave(&b, &["stop"]);
    launch(&b, &[]);
    assert!(has_link(&b, "vxlan-6784"));
    weave(&b, &["reset"]);
    assert!(!has_link(&b, "vxlan-6784"));
    assert!(!has_link(&b, "vxlan-6784-p"));
}
