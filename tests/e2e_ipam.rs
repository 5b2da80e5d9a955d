//! End-to-end tests of IP address management with the real binary on lab hosts: three
//! daemons agree on a ring by consensus, containers attached without an address get
//! distinct ones on every host and ping each other across the overlay; a partition (the
//! underlay cut) leaves each side allocating from what it owns with no duplicate after
//! healing; a restarted daemon keeps its containers' addresses; a dead host shows as
//! `unreachable!` and its range is taken over with `weave rmpeer` (refused while it is
//! reachable); `weave reset` hands a peer's ranges to a live one.
//!
//! Every daemon gets `--ipalloc-range` inside 198.18.0.0/15 (never Weave's default).

#[path = "lab/mod.rs"]
mod lab;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use lab::{Container, Host, Lab, wait_until};
use serde_json::Value;

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Control connections over a cut link time out after the mesh's liveness timeout (35 s).
const PARTITION_WAIT: Duration = Duration::from_secs(90);
const RANGE: &str = "198.18.0.0/24";

/// `weave launch` on `host`: the test range, consensus among 3, then `peers`.
fn launch(host: &Host, peers: &[&Host]) {
    let addrs: Vec<String> = peers.iter().map(|p| p.ip().to_string()).collect();
    let mut argv = vec![
        "weave",
        "launch",
        "--nickname",
        host.name(),
        "--ipalloc-range",
        RANGE,
        "--ipalloc-init",
        "consensus=3",
    ];
    argv.extend(addrs.iter().map(String::as_str));
    host.run(&argv).expect_ok();
}

/// `weave ARGS...` on `host`, expected to succeed; returns its stdout.
#[track_caller]
fn weave(host: &Host, args: &[&str]) -> String {
    let mut argv = vec!["weave"];
    argv.extend_from_slice(args);
    host.run(&argv).expect_ok().stdout
}

fn report(host: &Host) -> Value {
    let out = weave(host, &["report"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Waits until `host` has `n` established connections.
fn wait_established(host: &Host, n: usize) {
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

/// Three hosts on the underlay, each launched with the other two as peers.
fn three_hosts(lab: &mut Lab) -> [Host; 3] {
    let hosts = [lab.host("a"), lab.host("b"), lab.host("c")];
    for (i, h) in hosts.iter().enumerate() {
        let others: Vec<&Host> = hosts.iter().take(i).collect();
        launch(h, &others);
    }
    for h in &hosts {
        wait_established(h, 2);
    }
    hosts
}

/// `weave attach` without an address; returns the address IPAM gave.
#[track_caller]
fn attach(host: &Host, c: &Container) -> Ipv4Addr {
    let printed = weave(host, &["attach", "--netns", c.netns()]);
    let addr: Ipv4Addr = printed
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("attach printed {printed:?}: {e}"));
    let mask = RANGE.split('/').nth(1).expect("prefix");
    assert_eq!(
        c.addresses("ethwe"),
        [format!("{addr}/{mask}")],
        "{} on {}",
        c.name(),
        host.name()
    );
    addr
}

fn in_range(addr: Ipv4Addr) -> bool {
    let a = u32::from(addr);
    (a & 0xffff_ff00) == u32::from(Ipv4Addr::new(198, 18, 0, 0))
        && (a & 0xff) != 0
        && (a & 0xff) != 255
}

/// `weave status ipam` lines as (nickname, IPs, reachable).
fn ipam_owners(host: &Host) -> Vec<(String, u64, bool, String)> {
    weave(host, &["status", "ipam"])
        .lines()
        .filter(|l| l.contains(" IPs ("))
        .map(|l| {
            let label = l.split_whitespace().next().unwrap_or_default();
            let nick = label
                .split_once('(')
                .map(|(_, n)| n.trim_end_matches(')').to_owned())
                .unwrap_or_default();
            let words: Vec<&str> = l.split_whitespace().collect();
            let ips = words
                .iter()
                .position(|w| *w == "IPs")
                .and_then(|i| words[i - 1].parse().ok())
                .unwrap_or_else(|| panic!("no count in {l:?}"));
            (nick, ips, !l.ends_with("- unreachable!"), l.to_owned())
        })
        .collect()
}

/// The value of `Label:` in the `Service: ipam` block of `weave status`.
fn ipam_status_field(host: &Host, label: &str) -> String {
    let status = weave(host, &["status"]);
    let block = status
        .split("\n\n")
        .find(|b| b.contains("Service: ipam"))
        .unwrap_or_else(|| panic!("no ipam block in:\n{status}"));
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no {label} in:\n{block}"))
        .to_owned()
}

fn metric(host: &Host, name: &str) -> f64 {
    let out = host
        .run(&["curl", "-s", "http://127.0.0.1:6782/metrics"])
        .expect_ok()
        .stdout;
    out.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

#[test]
fn containers_on_three_hosts_get_distinct_addresses_and_ping_each_other() {
    let mut lab = Lab::new("ipam_three", WEAVE);
    let a = lab.host("a");
    // Alone, a waits for the quorum and says so; nothing is allocated meanwhile.
    launch(&a, &[]);
    assert_eq!(ipam_status_field(&a, "Status"), "idle");
    let waiting = a
        .cmd(&["weave", "prime"])
        .timeout(Duration::from_secs(3))
        .run();
    assert!(
        !waiting.success(),
        "prime cannot finish without a quorum: {waiting}"
    );
    assert_eq!(
        ipam_status_field(&a, "Status"),
        "awaiting consensus (quorum: 2, known: 1)"
    );
    assert_eq!(ipam_status_field(&a, "Range"), RANGE);
    assert_eq!(ipam_status_field(&a, "DefaultSubnet"), RANGE);

    let (b, c) = (lab.host("b"), lab.host("c"));
    launch(&b, &[&a]);
    launch(&c, &[&a, &b]);
    let hosts = [a, b, c];
    for h in &hosts {
        wait_established(h, 2);
    }
    weave(&hosts[0], &["prime"]);

    let mut all = Vec::new();
    let mut containers = Vec::new();
    for h in &hosts {
        for k in 0..2 {
            let ctr = lab.container(h, &format!("{}{k}", h.name()));
            let addr = attach(h, &ctr);
            assert!(in_range(addr), "{addr} outside {RANGE}");
            all.push(addr);
            containers.push((ctr, addr));
        }
    }
    let distinct: BTreeSet<Ipv4Addr> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "duplicate addresses: {all:?}");
    for (from, _) in &containers {
        for (_, to) in &containers {
            from.wait_ping(*to, WAIT).unwrap();
        }
    }

    for h in &hosts {
        assert_eq!(ipam_status_field(h, "Status"), "ready");
        let owners = ipam_owners(h);
        assert_eq!(owners.len(), 3, "{owners:?}");
        // Self first, with its active count; every owner reachable; all the range.
        assert_eq!(owners[0].0, h.name(), "{owners:?}");
        assert!(owners[0].3.contains("(2 active)"), "{owners:?}");
        assert!(owners.iter().all(|o| o.2), "{owners:?}");
        assert_eq!(owners.iter().map(|o| o.1).sum::<u64>(), 256, "{owners:?}");
        assert_eq!(metric(h, "weave_ips"), 2.0);
        assert_eq!(metric(h, "weave_max_ips"), 256.0);
        assert_eq!(metric(h, "weave_ipam_pending_allocates"), 0.0);
        assert_eq!(metric(h, "weave_ipam_unreachable_count"), 0.0);
    }

    // Detach gives the address back: the next container on that host gets it again
    // (lowest free first).
    let a = &hosts[0];
    let (first, first_addr) = &containers[0];
    weave(a, &["detach", "--netns", first.netns()]);
    assert_eq!(metric(a, "weave_ips"), 1.0);
    let again = lab.container(a, "again");
    assert_eq!(attach(a, &again), *first_addr);

    // `weave expose` without an address takes one from IPAM for weave:expose.
    let exposed = weave(a, &["expose"]);
    let ps = weave(a, &["ps", "weave:expose"]);
    let addr: Ipv4Addr = ps
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.split('/').next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("expose printed {exposed:?}, ps {ps:?}"));
    assert!(in_range(addr) && !all.contains(&addr), "{addr} {all:?}");
    assert!(
        weave(a, &["report"]).contains("weave:expose") || metric(a, "weave_ips") == 3.0,
        "expose address not recorded"
    );
    assert_eq!(metric(a, "weave_ips"), 3.0);
    // The host reaches a container on another host through it.
    a.wait_ping(containers[4].1, WAIT).unwrap();
}

#[test]
fn both_sides_of_a_partition_allocate_and_healing_leaves_no_duplicate() {
    let mut lab = Lab::new("ipam_partition", WEAVE);
    let hosts = three_hosts(&mut lab);
    weave(&hosts[0], &["prime"]);
    let mut all: Vec<(usize, Container, Ipv4Addr)> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ctr = lab.container(h, &format!("{}0", h.name()));
        let addr = attach(h, &ctr);
        all.push((i, ctr, addr));
    }

    // Cut c off the underlay: {a, b} and {c}. Each side keeps allocating from its own
    // ranges, before and after the mesh notices (the control connections time out).
    let uplink = hosts[2].uplink().expect("on the underlay").clone();
    uplink.cut();
    let mut round = 1;
    let mut allocate_everywhere = |all: &mut Vec<(usize, Container, Ipv4Addr)>| {
        for (i, h) in hosts.iter().enumerate() {
            let ctr = lab.container(h, &format!("{}{round}", h.name()));
            let addr = attach(h, &ctr);
            all.push((i, ctr, addr));
        }
        round += 1;
    };
    allocate_everywhere(&mut all);
    // c sees a and b as unreachable owners once its connections time out.
    wait_until("c shows a and b unreachable", PARTITION_WAIT, POLL, || {
        let owners = ipam_owners(&hosts[2]);
        let unreachable = owners
            .iter()
            .filter(|o| !o.2 && o.3.ends_with("- unreachable!"))
            .count();
        if unreachable == 2 {
            Ok(())
        } else {
            Err(format!("{owners:?}"))
        }
    })
    .unwrap();
    assert_eq!(metric(&hosts[2], "weave_ipam_unreachable_count"), 2.0);
    wait_until("a and b lose c", PARTITION_WAIT, POLL, || {
        for h in &hosts[..2] {
            let owners = ipam_owners(h);
            if owners.iter().filter(|o| !o.2).count() != 1 {
                return Err(format!("{}: {owners:?}", h.name()));
            }
        }
        Ok(())
    })
    .unwrap();
    for _ in 0..2 {
        allocate_everywhere(&mut all);
    }

    uplink.restore();
    for h in &hosts {
        wait_established(h, 2);
    }
    let addrs: Vec<Ipv4Addr> = all.iter().map(|(_, _, a)| *a).collect();
    let distinct: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    assert_eq!(distinct.len(), addrs.len(), "duplicates: {addrs:?}");
    // After healing the rings agree and everyone reaches everyone.
    wait_until("rings agree", WAIT, POLL, || {
        let views: Vec<Vec<(String, u64)>> = hosts
            .iter()
            .map(|h| {
                let mut v: Vec<(String, u64)> =
                    ipam_owners(h).into_iter().map(|o| (o.0, o.1)).collect();
                v.sort();
                v
            })
            .collect();
        if views.windows(2).all(|w| w[0] == w[1]) {
            Ok(())
        } else {
            Err(format!("{views:?}"))
        }
    })
    .unwrap();
    for (_, from, _) in all.iter().filter(|(i, ..)| *i == 2) {
        for (_, _, to) in all.iter().filter(|(i, ..)| *i != 2).take(2) {
            from.wait_ping(*to, WAIT).unwrap();
        }
    }
}

#[test]
fn restart_keeps_addresses_and_dead_hosts_range_is_taken_over_with_rmpeer() {
    let mut lab = Lab::new("ipam_restart", WEAVE);
    let hosts = three_hosts(&mut lab);
    let [a, b, c] = &hosts;
    weave(a, &["prime"]);
    let cb = lab.container(b, "cb");
    let cb_addr = attach(b, &cb);
    let cc = lab.container(c, "cc");
    let cc_addr = attach(c, &cc);

    // b restarts: its container keeps its address, IPAM still has it recorded for it,
    // and a new container gets another.
    weave(b, &["stop"]);
    launch(b, &[a, c]);
    wait_established(b, 2);
    assert_eq!(cb.addresses("ethwe"), [format!("{cb_addr}/24")]);
    assert_eq!(
        attach(b, &cb),
        cb_addr,
        "re-attach answers the kept address"
    );
    let cb2 = lab.container(b, "cb2");
    let cb2_addr = attach(b, &cb2);
    assert_ne!(cb2_addr, cb_addr);
    assert_eq!(metric(b, "weave_ips"), 2.0);
    cb.wait_ping(cc_addr, WAIT).unwrap();

    // rmpeer refuses while c is reachable.
    let refused = a.run(&["weave", "rmpeer", "c"]);
    assert!(!refused.success(), "{refused}");
    assert!(refused.stderr.contains("reachable"), "{refused}");

    // c dies (its daemon stops for good): a shows it unreachable, then takes it over.
    let c_share = ipam_owners(a)
        .iter()
        .find(|o| o.0 == "c")
        .map(|o| o.1)
        .expect("c owns a range");
    weave(c, &["stop"]);
    wait_established(a, 1);
    wait_until("c shown unreachable on a", WAIT, POLL, || {
        let owners = ipam_owners(a);
        match owners.iter().find(|o| o.0 == "c") {
            Some(o) if !o.2 && o.3.ends_with("- unreachable!") => Ok(()),
            _ => Err(format!("{owners:?}")),
        }
    })
    .unwrap();
    assert_eq!(metric(a, "weave_ipam_unreachable_count"), 1.0);
    let a_before = ipam_owners(a)[0].1;
    let taken = weave(a, &["rmpeer", "c"]);
    assert!(
        taken.contains(&format!("{c_share} IPs taken over")),
        "{taken}"
    );
    let owners = ipam_owners(a);
    assert!(owners.iter().all(|o| o.0 != "c"), "{owners:?}");
    assert_eq!(owners[0].1, a_before + c_share, "{owners:?}");
    assert_eq!(metric(a, "weave_ipam_unreachable_count"), 0.0);
    // b learns it too.
    wait_until("b forgets c", WAIT, POLL, || {
        let owners = ipam_owners(b);
        if owners.iter().any(|o| o.0 == "c") {
            Err(format!("{owners:?}"))
        } else {
            Ok(())
        }
    })
    .unwrap();

    // `weave reset` on b hands its ranges to a, the only live peer.
    weave(b, &["reset"]);
    wait_until("a owns everything", WAIT, POLL, || {
        let owners = ipam_owners(a);
        if owners.len() == 1 && owners[0].1 == 256 {
            Ok(())
        } else {
            Err(format!("{owners:?}"))
        }
    })
    .unwrap();
}
