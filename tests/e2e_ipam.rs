//! End-to-end tests of IP address management with the real binary on lab hosts: three
//! daemons agree on a ring by consensus, containers attached without an address get
//! distinct ones on every host and ping each other across the overlay; a partition (the
//! underlay cut) leaves each side allocating from what it owns with no duplicate after
//! healing; a restarted daemon keeps its containers' addresses; a dead host shows as
//! `unreachable!` and its range is taken over with `weave rmpeer` (refused while it is
//! reachable); `weave reset` hands a peer's ranges to a live one; a peer that lost its
//! disk re-learns before it allocates; `rmpeer` of a peer that was only cut off is a
//! conflict that is reported and contained.
//!
//! Every daemon gets `--ipalloc-range` inside 198.18.0.0/15 (never Weave's default).

#[path = "lab/mod.rs"]
mod lab;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use lab::weave::{report, wait_established, weave};
use lab::{Container, Host, Lab, wait_until};

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
/// Control connections over a cut link time out after the mesh's liveness timeout (35 s).
const PARTITION_WAIT: Duration = Duration::from_secs(90);
const RANGE: &str = "198.18.0.0/24";

/// Fixed peer names, so tests can seed the ring with all three hosts.
fn peer_name(host: &Host) -> String {
    let last = host.name().bytes().next().expect("host name");
    format!("02:00:00:00:01:{last:02x}")
}

/// `--ipalloc-init seed=` with the names of hosts a, b and c: each owns a third.
fn seed_all() -> String {
    let names: Vec<String> = [b'a', b'b', b'c']
        .iter()
        .map(|l| format!("02:00:00:00:01:{l:02x}"))
        .collect();
    format!("seed={}", names.join(","))
}

/// `weave launch` on `host`: the test range, the ring seeded with a, b and c, `peers`.
fn launch(host: &Host, peers: &[&Host]) {
    launch_with(host, peers, RANGE, &seed_all());
}

/// `weave launch` on `host` under its fixed name with `range`, `--ipalloc-init init`,
/// then `peers`.
fn launch_with(host: &Host, peers: &[&Host], range: &str, init: &str) {
    let addrs: Vec<String> = peers.iter().map(|p| p.ip().to_string()).collect();
    let name = peer_name(host);
    let mut argv = vec![
        "--name",
        &name,
        "--ipalloc-range",
        range,
        "--ipalloc-init",
        init,
    ];
    argv.extend(addrs.iter().map(String::as_str));
    lab::weave::launch(host, &argv);
}

/// `POST /ip/{ident}` on `host`'s API: an address without a container.
#[track_caller]
fn api_allocate(host: &Host, ident: &str) -> Ipv4Addr {
    let url = format!("http://127.0.0.1:6784/ip/{ident}");
    let out = host
        .run(&[
            "curl",
            "-sS",
            "--fail-with-body",
            "-m",
            "40",
            "-X",
            "POST",
            &url,
        ])
        .expect_ok()
        .stdout;
    out.trim()
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("POST /ip/{ident} on {}: {out:?}", host.name()))
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

/// A new container `name` on `host`, attached without an address; and that address.
#[track_caller]
fn new_attached(lab: &mut Lab, host: &Host, name: &str) -> (Container, Ipv4Addr) {
    let c = lab.container(host, name);
    let addr = attach(host, &c);
    (c, addr)
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

/// Each host's view of the ring: (nickname, IPs) per owner, sorted; with `skip_empty`,
/// without the owners of nothing.
fn ring_views(hosts: &[&Host], skip_empty: bool) -> Vec<Vec<(String, u64)>> {
    hosts
        .iter()
        .map(|h| {
            let mut v: Vec<(String, u64)> = ipam_owners(h)
                .into_iter()
                .filter(|o| !skip_empty || o.1 > 0)
                .map(|o| (o.0, o.1))
                .collect();
            v.sort();
            v
        })
        .collect()
}

fn all_same<T: PartialEq>(views: &[T]) -> bool {
    views.windows(2).all(|w| w[0] == w[1])
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

/// A /28 inside a range `owner` (by nickname) owns, in `host`'s view, as `a.b.c.d/28`.
fn subnet_owned_by(host: &Host, owner: &str) -> String {
    let r = report(host);
    let entries = r["IPAM"]["Entries"].as_array().expect("entries").clone();
    for e in entries.iter().filter(|e| e["Nickname"] == owner) {
        let start = u32::from(
            e["Token"]
                .as_str()
                .and_then(|t| t.parse::<Ipv4Addr>().ok())
                .expect("token"),
        );
        let end = start + u32::try_from(e["Size"].as_u64().expect("size")).expect("fits");
        let first = start.div_ceil(16) * 16;
        if first + 16 <= end {
            return format!("{}/28", Ipv4Addr::from(first));
        }
    }
    panic!("{owner} owns no /28 in {entries:?}")
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
    launch_with(&a, &[], RANGE, "consensus=3");
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
    launch_with(&b, &[&a], RANGE, "consensus=3");
    launch_with(&c, &[&a, &b], RANGE, "consensus=3");
    let hosts = [a, b, c];
    for h in &hosts {
        wait_established(h, 2);
    }
    weave(&hosts[0], &["prime"]);

    let mut all = Vec::new();
    let mut containers = Vec::new();
    for h in &hosts {
        for k in 0..2 {
            let (ctr, addr) = new_attached(&mut lab, h, &format!("{}{k}", h.name()));
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
        // Consensus needs 2 of 3: the ring is split among those that agreed.
        assert!((2..=3).contains(&owners.len()), "{owners:?}");
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
    let mut round = 0;
    let mut allocate_everywhere = |all: &mut Vec<(usize, Container, Ipv4Addr)>| {
        for (i, h) in hosts.iter().enumerate() {
            let (ctr, addr) = new_attached(&mut lab, h, &format!("{}{round}", h.name()));
            all.push((i, ctr, addr));
        }
        round += 1;
    };
    allocate_everywhere(&mut all);

    // Cut c off the underlay: {a, b} and {c}. Each side keeps allocating from its own
    // ranges, before and after the mesh notices (the control connections time out).
    let uplink = hosts[2].uplink().expect("on the underlay").clone();
    uplink.cut();
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
        let views = ring_views(&hosts.each_ref(), false);
        if all_same(&views) {
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
    let (cb, cb_addr) = new_attached(&mut lab, b, "cb");
    let (_cc, cc_addr) = new_attached(&mut lab, c, "cc");

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
    let (_cb2, cb2_addr) = new_attached(&mut lab, b, "cb2");
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
    // An allocation in a subnet only c owns waits, and the status says why.
    let subnet = subnet_owned_by(a, "c");
    let url = format!("http://127.0.0.1:6784/ip/waiting/{subnet}");
    let waiting = a.spawn(&[
        "curl",
        "-sS",
        "--fail-with-body",
        "-m",
        "60",
        "-X",
        "POST",
        &url,
    ]);
    wait_until("allocation pending", WAIT, POLL, || {
        let pending = metric(a, "weave_ipam_pending_allocates");
        if pending == 1.0 {
            Ok(())
        } else {
            Err(format!("{pending}"))
        }
    })
    .unwrap();
    assert_eq!(
        ipam_status_field(a, "Status"),
        "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
    );
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
    // The waiting allocation gets its address now that a owns the subnet.
    waiting
        .wait_exit("the waiting allocation answered", WAIT, POLL)
        .unwrap();
    let got = waiting.log();
    let prefix = subnet
        .split('/')
        .next()
        .expect("subnet")
        .rsplit_once('.')
        .expect("dots")
        .0;
    assert!(got.trim().starts_with(prefix), "{got:?} not in {subnet}");
    assert_eq!(ipam_status_field(a, "Status"), "ready");
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

#[test]
fn a_peer_that_lost_its_data_relearns_and_allocates_no_duplicate() {
    let mut lab = Lab::new("ipam_lost", WEAVE);
    // A tiny range (30 usable addresses, about 10 per peer), so peers donate.
    let range = "198.18.1.0/27";
    let [a, b, c] = [lab.host("a"), lab.host("b"), lab.host("c")];
    launch_with(&a, &[], range, &seed_all());
    launch_with(&b, &[&a], range, &seed_all());
    launch_with(&c, &[&a, &b], range, &seed_all());
    for h in [&a, &b, &c] {
        wait_established(h, 2);
    }
    weave(&a, &["prime"]);
    // a needs more than its share: space comes from b or c.
    let mut held: Vec<(String, Ipv4Addr)> = Vec::new();
    for k in 0..14 {
        let ident = format!("a-{k}");
        held.push((ident.clone(), api_allocate(&a, &ident)));
    }
    let mut old_b = Vec::new();
    for k in 0..3 {
        old_b.push(api_allocate(&b, &format!("b-{k}")));
    }
    for k in 0..3 {
        let ident = format!("c-{k}");
        held.push((ident.clone(), api_allocate(&c, &ident)));
    }

    // b loses its disk (state directory and all) and comes back under the same name.
    weave(&b, &["stop"]);
    b.wipe_state_dir();
    launch_with(&b, &[&a, &c], range, &seed_all());
    wait_established(&b, 2);
    // It re-learns what it owns (and what it gave away) before it allocates: whatever
    // it hands out now is held by nobody else.
    for k in 0..5 {
        let ident = format!("b-new-{k}");
        held.push((ident.clone(), api_allocate(&b, &ident)));
    }
    let addrs: Vec<Ipv4Addr> = held.iter().map(|(_, a)| *a).collect();
    let distinct: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    assert_eq!(distinct.len(), addrs.len(), "duplicates: {held:?}");
    // The rings agree, cover the range, and nobody saw a conflict.
    wait_until("rings agree", WAIT, POLL, || {
        let views = ring_views(&[&a, &b, &c], false);
        if all_same(&views) && views[0].iter().map(|v| v.1).sum::<u64>() == 32 {
            Ok(())
        } else {
            Err(format!("{views:?}"))
        }
    })
    .unwrap();
    for h in [&a, &b, &c] {
        assert_eq!(metric(h, "weave_ipam_conflicts_total"), 0.0, "{}", h.name());
        assert_eq!(ipam_status_field(h, "Status"), "ready");
    }
}

/// The state directory is lost while containers stay attached (not `weave reset`): the
/// daemon finds them again by their ports on the bridge and IPAM keeps their addresses,
/// instead of handing them to the next container.
#[test]
fn containers_still_attached_keep_their_addresses_when_the_state_is_lost() {
    let mut lab = Lab::new("ipam_refind", WEAVE);
    let a = lab.host("a");
    let alone = format!("seed={}", peer_name(&a));
    launch_with(&a, &[], RANGE, &alone);
    let (c1, addr1) = new_attached(&mut lab, &a, "c1");
    let (_c2, addr2) = new_attached(&mut lab, &a, "c2");
    // One attached by the PID of a process in its namespace.
    let by_pid = lab.container(&a, "p1");
    let sleeper = by_pid.spawn(&["sleep", "60"]);
    let pid = sleeper.pid().to_string();
    let printed = weave(&a, &["attach", "--pid", &pid]);
    let addr_pid: Ipv4Addr = printed
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("attach printed {printed:?}: {e}"));
    // One attached by a path nothing else lists (a link to its namespace file; a bind
    // mount made here would not reach the daemon's mount namespace).
    let by_path = lab.container(&a, "m1");
    let link = lab.dir().join("ns file m1");
    std::os::unix::fs::symlink(format!("/run/netns/{}", by_path.netns()), &link).expect("symlink");
    let link = link.to_str().expect("UTF-8 path").to_owned();
    let printed = weave(&a, &["attach", "--netns", &link]);
    let addr_path: Ipv4Addr = printed
        .trim()
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("attach printed {printed:?}: {e}"));

    weave(&a, &["stop"]);
    a.wipe_state_dir();
    launch_with(&a, &[], RANGE, &alone);
    let ps = weave(&a, &["ps"]);
    for addr in [addr1, addr2, addr_pid, addr_path] {
        assert!(ps.contains(&format!("{addr}/")), "{addr} not in ps: {ps}");
    }
    assert!(ps.contains(&format!("pid:{pid}")), "{ps}");
    assert!(ps.contains(&link), "{ps}");
    let (_c3, addr3) = new_attached(&mut lab, &a, "c3");
    assert!(
        ![addr1, addr2, addr_pid, addr_path].contains(&addr3),
        "{addr3} given out twice"
    );

    // They are really known again: detach frees c1's address for the next container.
    weave(&a, &["detach", "--netns", c1.netns()]);
    let (_c4, addr4) = new_attached(&mut lab, &a, "c4");
    assert_eq!(addr4, addr1);
}

#[test]
fn rmpeer_of_a_peer_that_was_only_cut_off_is_a_contained_conflict() {
    let mut lab = Lab::new("ipam_conflict", WEAVE);
    let hosts = three_hosts(&mut lab);
    let [a, b, c] = &hosts;
    weave(a, &["prime"]);
    let (_cc, cc_addr) = new_attached(&mut lab, c, "cc");
    let (_ca, ca_addr) = new_attached(&mut lab, a, "ca");

    let b_share = ipam_owners(b)[0].1;
    // c is cut off, not dead; the operator removes it anyway (the misuse rmpeer warns
    // about), and both sides allocate.
    let uplink = c.uplink().expect("on the underlay").clone();
    uplink.cut();
    wait_until("a loses c", PARTITION_WAIT, POLL, || {
        let out = a.run(&["weave", "rmpeer", "c"]);
        if out.success() {
            Ok(())
        } else {
            Err(out.stderr)
        }
    })
    .unwrap();
    let mut held = vec![("cc", cc_addr), ("ca", ca_addr)];
    for k in 0..3 {
        let ident = format!("a-{k}");
        held.push(("a", api_allocate(a, &ident)));
        let ident = format!("c-{k}");
        held.push(("c", api_allocate(c, &ident)));
    }
    uplink.restore();
    for h in &hosts {
        wait_established(h, 2);
    }
    // The conflict is reported (status, metric) and contained: the connections stay up
    // and the rings agree again.
    wait_until("conflict reported", WAIT, POLL, || {
        let conflicts: f64 = hosts
            .iter()
            .map(|h| metric(h, "weave_ipam_conflicts_total"))
            .sum();
        if conflicts > 0.0 {
            Ok(())
        } else {
            Err("no conflict yet")
        }
    })
    .unwrap();
    let warned = hosts.iter().any(|h| {
        ipam_status_field(h, "Status");
        weave(h, &["status"]).contains("conflicting ring updates contained")
    });
    assert!(warned, "no status warning on any host");
    let logged = hosts.iter().any(|h| {
        std::fs::read_to_string(h.state_dir().join("weave.log"))
            .is_ok_and(|log| log.contains("conflicting ring update contained"))
    });
    assert!(logged, "no conflict in any daemon's log");
    wait_until("rings agree", WAIT, POLL, || {
        let views = ring_views(&hosts.each_ref(), true);
        if all_same(&views) {
            Ok(())
        } else {
            let entries: Vec<String> = hosts
                .iter()
                .map(|h| report(h)["IPAM"]["Entries"].to_string())
                .collect();
            Err(format!("{views:?} {entries:?}"))
        }
    })
    .unwrap();
    for h in &hosts {
        wait_established(h, 2);
    }
    // Any address now held on both sides is reported as disputed, never silent.
    let addrs: Vec<Ipv4Addr> = held.iter().map(|(_, a)| *a).collect();
    let distinct: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    let twice = addrs.len() - distinct.len();
    let disputed: usize = hosts
        .iter()
        .map(|h| report(h)["IPAM"]["Disputed"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        disputed >= twice,
        "{twice} held twice, {disputed} reported: {held:?}"
    );
    if twice > 0 {
        assert!(
            hosts
                .iter()
                .any(|h| weave(h, &["status"]).contains("may be in use twice")),
            "no status warning of addresses in use twice"
        );
    }
    // b, a bystander, kept its share through all this.
    let owners = ipam_owners(b);
    assert_eq!(owners[0].1, b_share, "{owners:?} {}", report(b)["IPAM"]);
}

/// A lone daemon launched without peers (consensus among 1, the default) makes its
/// ring on the first `weave attach` and answers it at once.
#[test]
fn a_lone_daemon_allocates_on_the_first_attach() {
    let mut lab = Lab::new("ipam_lone", WEAVE);
    let a = lab.host("a");
    lab::weave::launch(&a, &["--ipalloc-range", RANGE]);
    assert_eq!(ipam_status_field(&a, "Status"), "idle");
    let c = lab.container(&a, "c1");
    assert_eq!(attach(&a, &c), Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(ipam_status_field(&a, "Status"), "ready");
    let owners = ipam_owners(&a);
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(
        owners[0].3.contains("256 IPs (100.0% of total) (1 active)"),
        "{owners:?}"
    );

    // Another lone daemon (not a peer of a) with a default subnet inside the range:
    // attach allocates there, the status block and the API say so.
    let b = lab.host("b");
    lab::weave::launch(
        &b,
        &[
            "--ipalloc-range",
            RANGE,
            "--ipalloc-default-subnet",
            "198.18.0.128/25",
        ],
    );
    assert_eq!(ipam_status_field(&b, "DefaultSubnet"), "198.18.0.128/25");
    let c2 = lab.container(&b, "c2");
    assert_eq!(
        weave(&b, &["attach", "--netns", c2.netns()]).trim(),
        "198.18.0.129"
    );
    assert_eq!(c2.addresses("ethwe"), ["198.18.0.129/25"]);
    let subnet = b
        .run(&["curl", "-sS", "http://127.0.0.1:6784/ipinfo/defaultsubnet"])
        .expect_ok()
        .stdout;
    assert_eq!(subnet.trim(), "198.18.0.128/25");
    let tracker = b
        .run(&["curl", "-sS", "http://127.0.0.1:6784/ipinfo/tracker"])
        .expect_ok()
        .stdout;
    assert_eq!(tracker.trim(), "none");
}
