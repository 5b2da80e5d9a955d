//! End-to-end tests of the data plane: the real `weave` binary in network namespaces,
//! containers plumbed by the test itself (a veth pair: `ethwe` with an overlay address
//! inside the container's namespace, the other end on the host's `weave` bridge), and
//! real traffic: ping, iperf3, tcpdump on the underlay.

#[path = "lab/mod.rs"]
mod lab;

use std::net::Ipv4Addr;
use std::time::Duration;

use lab::weave::{
    claim_a_mac_twice, connection_states, ip, launch, plumb, report, status_port_get, two_hosts,
    wait_established,
};
use lab::{Container, Host, Lab, wait_until};
use serde_json::Value;

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
const PASSWORD: &str = "s3cret-for-tests";

/// "WEAVEWEAVEWEAVEW" as ping's hex pattern: recognisable in a capture.
const PATTERN_HEX: &str = "57454156455745415645574541564557";
const PATTERN: &str = "WEAVEWEAVE";

/// Pings with the pattern while capturing the underlay on `host`; returns what
/// tcpdump printed (payloads as ASCII).
fn capture_pings(host: &Host, from: &Container, to: Ipv4Addr) -> String {
    let cap = host.spawn(&[
        "timeout", "10", "tcpdump", "-i", "eth0", "-nn", "-l", "-A", "-c", "12", "udp", "port",
        "6783",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    from.run(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "5",
        "-i",
        "0.2",
        "-s",
        "200",
        "-p",
        PATTERN_HEX,
        &to.to_string(),
    ])
    .expect_ok();
    cap.wait_exit("tcpdump to finish", Duration::from_secs(15), POLL)
        .unwrap();
    cap.log()
}

/// iperf3 for a bounded time from `client` to `server_ip`; returns Mbit/s received.
fn iperf(client: &Container, server: &Container, server_ip: Ipv4Addr) -> f64 {
    let srv = server.spawn(&["iperf3", "-s", "-1"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = client
        .cmd(&["iperf3", "-c", &server_ip.to_string(), "-t", "3", "-f", "m"])
        .timeout(Duration::from_secs(20))
        .run()
        .expect_ok();
    srv.stop(Duration::from_secs(2));
    out.stdout
        .lines()
        .find(|l| l.contains("receiver"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "Mbits/sec")?;
            words.get(at - 1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no iperf3 result in {}", out.stdout))
}

/// The sleeve without a password (the kernel fast path, used by default between
/// direct peers without one, is off here; tests/e2e_fastdp.rs covers it).
#[test]
fn containers_on_two_hosts_ping_without_password() {
    let mut lab = Lab::new("router_plain", WEAVE);
    let (a, b, ca, cb) = two_hosts(&mut lab, &["--no-fastdp"]);
    // No MAC is known yet: the first ping needs ARP, a broadcast across hosts.
    assert!(
        ca.run(&["ip", "neigh", "show", "dev", "ethwe"])
            .stdout
            .trim()
            .is_empty()
    );
    ca.wait_ping(ip(2), WAIT).unwrap();
    assert!(cb.ping(ip(1)));
    let neigh = ca
        .run(&["ip", "neigh", "show", ip(2).to_string().as_str()])
        .stdout;
    assert!(
        neigh.contains("lladdr"),
        "ARP resolved across hosts: {neigh}"
    );
    // IP broadcast: an echo to the subnet's broadcast address is answered across hosts.
    cb.run(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
        .expect_ok();
    let out = ca
        .cmd(&["ping", "-n", "-b", "-c", "2", "-W", "2", "198.18.255.255"])
        .timeout(Duration::from_secs(10))
        .run();
    assert!(out.stdout.contains("from 198.18.0.2"), "{out}");
    let conns = a
        .run(&["weave", "status", "connections"])
        .expect_ok()
        .stdout;
    assert!(conns.contains("established"), "{conns}");
    assert!(conns.contains("sleeve"), "{conns}");
    assert!(conns.contains("mtu=1436"), "{conns}");
    assert!(!conns.contains("encrypted"), "{conns}");
    let r = report(&a);
    assert_eq!(r["Router"]["OverlayMtu"], 1436);
    assert!(r["Router"]["DataPlane"]["DatagramsSent"].as_u64() > Some(0));
    // Without a password the payload crosses the underlay in clear.
    let capture = capture_pings(&a, &ca, ip(2));
    assert!(capture.contains(PATTERN), "{capture}");
    let mbits = iperf(&ca, &cb, ip(2));
    assert!(mbits > 0.0);
    // Per-peer counters, in the report and as Prometheus metrics.
    let a_name = r["Router"]["Name"].as_str().expect("name").to_owned();
    let b_peers = report(&b)["Router"]["DataPlane"]["Peers"].clone();
    let from_a = b_peers
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["Name"] == a_name.as_str()))
        .unwrap_or_else(|| panic!("{a_name} in {b_peers}"));
    assert!(from_a["InjectedFrames"].as_u64() > Some(0), "{from_a}");
    assert!(from_a["ForwardedFrames"].as_u64() > Some(0), "{from_a}");
    assert!(from_a["DroppedReasons"].is_object(), "{from_a}");
    let metrics = status_port_get(&b, "/metrics");
    let sample = |direction: &str| -> u64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("weave_frames_total{")
                    && l.contains(&format!("peer=\"{a_name}\""))
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {direction} sample for {a_name} in {metrics}"))
    };
    assert!(sample("injected") > 0);
    assert!(sample("forwarded") > 0);
}

#[test]
fn containers_on_two_hosts_with_a_password_are_encrypted() {
    let mut lab = Lab::new("router_sealed", WEAVE);
    let (a, _b, ca, cb) = two_hosts(&mut lab, &["--password", PASSWORD]);
    ca.wait_ping(ip(2), WAIT).unwrap();
    let conns = a
        .run(&["weave", "status", "connections"])
        .expect_ok()
        .stdout;
    assert!(conns.contains("encrypted"), "{conns}");
    assert!(conns.contains("mtu=1412"), "{conns}");
    assert_eq!(report(&a)["Router"]["OverlayMtu"], 1412);
    let capture = capture_pings(&a, &ca, ip(2));
    assert!(
        capture.contains("6783"),
        "the capture saw the sleeve: {capture}"
    );
    assert!(
        !capture.contains(PATTERN),
        "payload in clear on the underlay: {capture}"
    );
    let mbits = iperf(&ca, &cb, ip(2));
    assert!(mbits > 0.0);
}

#[test]
fn line_topology_relays_through_the_middle_and_heals_after_a_cut() {
    let mut lab = Lab::new("router_line", WEAVE);
    let ([a, b, c], [ab, bc]) = lab.line(["a", "b", "c"]);
    launch(&b, &[]);
    launch(&a, &[&ab.ip_of(&b).to_string()]);
    launch(&c, &[&bc.ip_of(&b).to_string()]);
    wait_established(&b, 2);
    wait_established(&a, 1);
    wait_established(&c, 1);
    let (ca, cc) = (lab.container(&a, "ca"), lab.container(&c, "cc"));
    plumb(&a, &ca, ip(1));
    plumb(&c, &cc, ip(3));
    ca.wait_ping(ip(3), WAIT).unwrap();
    assert!(cc.ping(ip(1)));
    let relayed: u64 = report(&b)["Router"]["DataPlane"]["Peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| p["RelayedFrames"].as_u64().unwrap_or(0))
        .sum();
    assert!(relayed > 0, "B relayed the frames");

    bc.cut();
    wait_until("A and C to lose each other", WAIT * 2, POLL, || {
        if ca.ping(ip(3)) {
            Err("still answers")
        } else {
            Ok(())
        }
    })
    .unwrap();
    bc.restore();
    ca.wait_ping(ip(3), WAIT * 3).unwrap();
    assert!(cc.ping(ip(1)));
}

#[test]
fn wrong_password_can_neither_join_nor_inject() {
    let mut lab = Lab::new("router_intruder", WEAVE);
    let (a, b, ca, cb) = two_hosts(&mut lab, &["--password", PASSWORD]);
    ca.wait_ping(ip(2), WAIT).unwrap();
    let intruder = lab.host("x");
    launch(
        &intruder,
        &["--password", "not-the-password", &a.ip().to_string()],
    );
    std::thread::sleep(Duration::from_secs(3));
    let peers = report(&a)["Router"]["Peers"]
        .as_array()
        .expect("peers")
        .len();
    assert_eq!(peers, 2, "the intruder did not join");

    // Forge datagrams claiming to come from B: sealed with garbage, and clear.
    let b_name = report(&b)["Router"]["Name"]
        .as_str()
        .expect("name")
        .replace(':', "");
    let a_name = report(&a)["Router"]["Name"]
        .as_str()
        .expect("name")
        .replace(':', "");
    let bytes = |hex: &str| -> String {
        (0..6)
            .map(|i| format!("\\x{}", &hex[2 * i..2 * i + 2]))
            .collect()
    };
    let (name_bytes, dst_bytes) = (bytes(&b_name), bytes(&a_name));
    let before = report(&a)["Router"]["DataPlane"]["RejectedDatagrams"].clone();
    let watch = ca.spawn(&[
        "timeout",
        "6",
        "tcpdump",
        "-i",
        "ethwe",
        "-nn",
        "-l",
        "-A",
        "ether",
        "broadcast",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let frame =
        "\\xff\\xff\\xff\\xff\\xff\\xff\\x02\\x00\\x00\\x00\\x00\\x99\\x08\\x00INJECTEDINJECTED";
    // Bash line-buffers printf, so a newline byte (in a peer name, say) would cut a
    // datagram in two; dd collects the whole of it into one write.
    let one_datagram = "dd bs=65536 iflag=fullblock status=none";
    let script = format!(
        "for i in 1 2 3 4 5; do \
           printf '%b' '\\x18{name_bytes}\\x00\\x00\\x00\\x00\\x00\\x00\\x10\\x00{name_bytes}{dst_bytes}\\x40\\x00\\x1e{frame}0123456789abcdef' | {one_datagram} > /dev/udp/{ip}/6783; \
           printf '%b' '\\x10{name_bytes}{name_bytes}{dst_bytes}\\x40\\x00\\x1e{frame}' | {one_datagram} > /dev/udp/{ip}/6783; \
         done",
        ip = a.ip()
    );
    intruder.run(&["bash", "-c", &script]).expect_ok();
    std::thread::sleep(Duration::from_secs(1));
    let after = report(&a)["Router"]["DataPlane"]["RejectedDatagrams"].clone();
    let count = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    assert!(
        count(&after, "authentication") >= count(&before, "authentication") + 5,
        "{before} -> {after}"
    );
    assert!(
        count(&after, "clear_when_keyed") >= count(&before, "clear_when_keyed") + 5,
        "{before} -> {after}"
    );
    watch
        .wait_exit("tcpdump to finish", Duration::from_secs(10), POLL)
        .unwrap();
    assert!(!watch.log().contains("INJECTED"), "{}", watch.log());
    // The real peers still talk.
    assert!(ca.ping(ip(2)));
    assert!(cb.ping(ip(1)));
}

#[test]
fn big_packets_on_a_1500_underlay_are_never_silently_lost() {
    let mut lab = Lab::new("router_mtu", WEAVE);
    // Containers get 8000 bytes, the underlay carries 1500: every big packet is either
    // fragmented by the router or answered with ICMP fragmentation-needed. (The sleeve
    // does that; over the fast path the kernel fragments the VXLAN datagrams.)
    let (a, b, ca, cb) = two_hosts(&mut lab, &["--mtu", "8000", "--no-fastdp"]);
    assert_eq!(report(&a)["Router"]["OverlayMtu"], 8000);
    ca.wait_ping(ip(2), WAIT).unwrap();
    // Don't Fragment: the first try is answered with frag-needed, the retry fits.
    wait_until("a DF ping of 7000 bytes", WAIT, POLL, || {
        if ca.ping_pmtu(ip(2), 7000, "want") {
            Ok(())
        } else {
            Err("no reply")
        }
    })
    .unwrap();
    let r = report(&a);
    assert!(
        r["Router"]["DataPlane"]["DroppedFrames"]["too_big_icmp_sent"].as_u64() > Some(0),
        "{r}"
    );
    // May fragment: the router fragments (-M dont).
    let out = cb
        .run(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "2",
            "-W",
            "2",
            "-s",
            "5000",
            "-M",
            "dont",
            &ip(1).to_string(),
        ])
        .expect_ok();
    assert!(out.stdout.contains(" 0% packet loss"), "{}", out.stdout);
    let r = report(&b);
    assert!(
        r["Router"]["DataPlane"]["FragmentedFrames"].as_u64() > Some(0),
        "{r}"
    );
    // Near the path MTU with Don't Fragment.
    assert!(ca.ping_sized(ip(2), 1408, true));
}

#[test]
fn default_mtu_carries_full_size_packets_and_refuses_bigger_ones_locally() {
    let mut lab = Lab::new("router_mtu_default", WEAVE);
    let (_a, _b, ca, _cb) = two_hosts(&mut lab, &[]);
    ca.wait_ping(ip(2), WAIT).unwrap();
    assert!(ca.ping_sized(ip(2), 1436 - 28, true));
    assert!(
        !ca.ping_sized(ip(2), 1436 - 27, true),
        "bigger than ethwe: refused locally"
    );
    // Without DF the container's own stack fragments.
    assert!(ca.ping_sized(ip(2), 8000, false));
}

/// `weave attach CIDR --netns C` on `host`.
fn attach(host: &Host, c: &Container, cidr: &str) {
    host.run(&["weave", "attach", cidr, "--netns", c.netns()])
        .expect_ok();
}

/// The MTU of `ethwe` inside `c`.
fn ethwe_mtu(c: &Container) -> u64 {
    let out = c
        .run(&["cat", "/sys/class/net/ethwe/mtu"])
        .expect_ok()
        .stdout;
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("MTU {out:?}: {e}"))
}

#[test]
fn attached_containers_get_the_overlay_mtu_from_the_underlay_or_the_flag() {
    let mut lab = Lab::new("router_attach_mtu", WEAVE);
    let (a, b, x, y) = (lab.host("a"), lab.host("b"), lab.host("x"), lab.host("y"));
    // a and b: a 9000-byte underlay (found through the default route, as on most hosts).
    for h in [&a, &b] {
        h.uplink().expect("on the underlay").set_mtu(9000);
        h.run(&["ip", "route", "add", "default", "dev", "eth0"])
            .expect_ok();
    }
    launch(&a, &[]);
    launch(&b, &[&a.ip().to_string()]);
    // x: --mtu; y: WEAVE_MTU.
    launch(&x, &["--mtu", "1300"]);
    y.cmd(&["weave", "launch", "--nickname", "y"])
        .env("WEAVE_MTU", "1280")
        .run()
        .expect_ok();
    let (ca, cb, cx, cy) = (
        lab.container(&a, "ca"),
        lab.container(&b, "cb"),
        lab.container(&x, "cx"),
        lab.container(&y, "cy"),
    );
    attach(&a, &ca, "198.18.0.1/16");
    attach(&b, &cb, "198.18.0.2/16");
    attach(&x, &cx, "198.18.0.3/16");
    attach(&y, &cy, "198.18.0.4/16");
    // 9000 less IP, UDP and the sleeve's headers.
    assert_eq!(report(&a)["Router"]["OverlayMtu"], 8936);
    assert_eq!(ethwe_mtu(&ca), 8936);
    assert_eq!(ethwe_mtu(&cb), 8936);
    assert_eq!(ethwe_mtu(&cx), 1300);
    assert_eq!(ethwe_mtu(&cy), 1280);
    // The path MTU discovered on the connection fits a full-size frame, and one crosses
    // with Don't Fragment.
    wait_established(&a, 1);
    wait_until("the path MTU to reach 8936", WAIT, POLL, || {
        let conns = a
            .run(&["weave", "status", "connections"])
            .expect_ok()
            .stdout;
        if conns.contains("mtu=8936") {
            Ok(())
        } else {
            Err(conns)
        }
    })
    .unwrap();
    ca.wait_ping(ip(2), WAIT).unwrap();
    assert!(ca.ping_sized(ip(2), 8936 - 28, true));
    assert!(cb.ping_sized(ip(1), 8936 - 28, true));
}

/// Sets the FORWARD policy of `host` to DROP, as Docker does; bridged frames pass
/// through it too (br_netfilter's bridge-nf-call-iptables, on in new namespaces).
fn default_drop_forward(host: &Host) {
    host.run(&["iptables", "-w", "-P", "FORWARD", "DROP"])
        .expect_ok();
    let _ = host.run(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
}

/// The interfaces in `host`'s namespace, by name.
fn links(host: &Host) -> Vec<String> {
    host.run(&["ip", "-o", "link", "show"])
        .expect_ok()
        .stdout
        .lines()
        .filter_map(|l| {
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_owned())
        })
        .collect()
}

#[test]
fn forwarding_passes_a_drop_policy_stop_keeps_containers_reset_removes_everything() {
    let mut lab = Lab::new("router_firewall", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    default_drop_forward(&a);
    default_drop_forward(&b);
    let (before, before_b) = (links(&a), links(&b));
    launch(&a, &[]);
    launch(&b, &[&a.ip().to_string()]);
    let (a1, a2, b1) = (
        lab.container(&a, "a1"),
        lab.container(&a, "a2"),
        lab.container(&b, "b1"),
    );
    attach(&a, &a1, "198.18.0.1/16");
    attach(&a, &a2, "198.18.0.2/16");
    attach(&b, &b1, "198.18.0.3/16");
    // Between two ports of one bridge, and across hosts through the router's port.
    a1.wait_ping(ip(2), WAIT).unwrap();
    a1.wait_ping(ip(3), WAIT).unwrap();
    assert!(b1.ping(ip(2)));
    // The control: without our rules the policy drops them.
    a.run(&["iptables", "-w", "-F", "WEAVE-FORWARD"])
        .expect_ok();
    assert!(!a1.ping(ip(2)), "the DROP policy bites without the rules");
    assert!(!a1.ping(ip(3)), "the DROP policy bites without the rules");

    // `weave stop` leaves the containers plumbed; launch puts the rules back.
    a.run(&["weave", "stop"]).expect_ok();
    assert_eq!(a1.addresses("ethwe"), ["198.18.0.1/16"]);
    assert_eq!(a2.addresses("ethwe"), ["198.18.0.2/16"]);
    launch(&a, &[&b.ip().to_string()]);
    a1.wait_ping(ip(2), WAIT).unwrap();
    a1.wait_ping(ip(3), WAIT).unwrap();

    // `weave reset` takes away everything launch and attach made.
    a.run(&["weave", "reset"]).expect_ok();
    assert_eq!(links(&a), before, "interfaces left behind");
    assert!(a1.addresses("ethwe").is_empty());
    assert!(!a.run(&["iptables", "-w", "-S", "WEAVE-FORWARD"]).success());
    let forward = a
        .run(&["iptables", "-w", "-S", "FORWARD"])
        .expect_ok()
        .stdout;
    assert_eq!(
        forward.trim(),
        "-P FORWARD DROP",
        "the policy is the host's own"
    );

    // Also after `weave stop`, when no daemon is left to clean up.
    attach(&b, &lab.container(&b, "b2"), "198.18.0.4/16");
    b.run(&["weave", "stop"]).expect_ok();
    assert!(links(&b).len() > before_b.len());
    b.run(&["weave", "reset"]).expect_ok();
    assert_eq!(links(&b), before_b, "interfaces left behind");
    assert!(b1.addresses("ethwe").is_empty());
    assert!(!b.run(&["iptables", "-w", "-S", "WEAVE-FORWARD"]).success());
}

/// The sleeve's forwarder learns MACs from the frames it carries and reports a MAC
/// claimed by two hosts (tests/e2e_fastdp.rs has the fast path's counterpart).
#[test]
fn a_mac_claimed_by_two_hosts_is_resolved_and_logged() {
    let mut lab = Lab::new("router_mac_conflict", WEAVE);
    let (a, b, ca, cb) = two_hosts(&mut lab, &["--no-fastdp"]);
    claim_a_mac_twice(&mut lab, &a, &b, &ca, &cb);
}

#[test]
fn a_connection_is_established_only_once_udp_works_both_ways() {
    let mut lab = Lab::new("router_udp_blocked", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    // b hears no sleeve datagrams; TCP (the mesh) still works.
    let rule = ["INPUT", "-p", "udp", "--dport", "6783", "-j", "DROP"];
    let mut block = vec!["iptables", "-w", "-I"];
    block.extend(rule);
    b.run(&block).expect_ok();
    launch(&a, &[]);
    launch(&b, &[&a.ip().to_string()]);
    wait_until("the mesh connection to come up", WAIT, POLL, || {
        let states = connection_states(&a).unwrap();
        if states.is_empty() {
            Err("no connection yet")
        } else {
            Ok(())
        }
    })
    .unwrap();
    // Several heartbeat rounds pass; neither side may call it established.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        for h in [&a, &b] {
            let states = connection_states(h).unwrap();
            assert!(
                !states.iter().any(|s| s == "established"),
                "{}: {states:?}",
                h.name()
            );
        }
    }
    let mut unblock = vec!["iptables", "-w", "-D"];
    unblock.extend(rule);
    b.run(&unblock).expect_ok();
    wait_established(&a, 1);
    wait_established(&b, 1);
    let (ca, cb) = (lab.container(&a, "ca"), lab.container(&b, "cb"));
    attach(&a, &ca, "198.18.0.1/16");
    attach(&b, &cb, "198.18.0.2/16");
    ca.wait_ping(ip(2), WAIT).unwrap();
}

#[test]
fn a_host_behind_nat_joins_and_carries_traffic() {
    let mut lab = Lab::new("router_nat", WEAVE);
    let [a, r, b] = lab.isolated_hosts(["a", "r", "b"]);
    let ra = lab.link(&r, &a);
    let rb = lab.link(&r, &b);
    // r masquerades b's traffic towards a; a has no route to b's link, so it only
    // ever sees r's address, with whatever port r's NAT picks.
    r.set_forwarding(true);
    let r_to_a = ra.ends().0.ifname.clone();
    r.run(&[
        "iptables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        &r_to_a,
        "-j",
        "MASQUERADE",
    ])
    .expect_ok();
    let a_ip = ra.ip_of(&a);
    b.add_route(&format!("{a_ip}/32"), rb.ip_of(&r));
    launch(&a, &[]);
    launch(&b, &[&a_ip.to_string()]);
    wait_established(&a, 1);
    wait_established(&b, 1);
    let conns = a
        .run(&["weave", "status", "connections"])
        .expect_ok()
        .stdout;
    assert!(
        conns.contains(&format!("<- {}:", ra.ip_of(&r))),
        "a sees b at r's address: {conns}"
    );
    let (ca, cb) = (lab.container(&a, "ca"), lab.container(&b, "cb"));
    attach(&a, &ca, "198.18.0.1/16");
    attach(&b, &cb, "198.18.0.2/16");
    ca.wait_ping(ip(2), WAIT).unwrap();
    assert!(cb.ping(ip(1)));
    let mbits = iperf(&ca, &cb, ip(2));
    assert!(mbits > 0.0);
}
