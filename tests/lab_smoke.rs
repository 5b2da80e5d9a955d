//! Smoke tests of the end-to-end lab itself: the underlay, point-to-point links, link
//! faults, commands and background processes, and teardown (also after a panic).

#[path = "lab/mod.rs"]
mod lab;

// Until src/main.rs declares `mod sys;`, the host plumbing's tests run from here.
#[allow(dead_code, unused_imports)]
#[path = "../src/sys/mod.rs"]
mod sys;

use std::net::Ipv4Addr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::{Lab, wait_until};

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: u32) -> bool {
    // A reaped or killed process has no /proc entry, a zombie has state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn three_hosts_on_the_underlay_ping_each_other() {
    let mut lab = Lab::new("three_hosts", WEAVE);
    let hosts = [lab.host("a"), lab.host("b"), lab.host("c")];
    assert_eq!(
        hosts.iter().map(|h| h.ip()).collect::<Vec<_>>(),
        [
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            Ipv4Addr::new(192, 0, 2, 3)
        ]
    );
    for from in &hosts {
        for to in &hosts {
            assert!(
                from.ping(to.ip()),
                "{} cannot ping {}",
                from.name(),
                to.name()
            );
        }
    }
    assert_eq!(hosts[0].addresses("eth0"), ["192.0.2.1/24"]);
    // Each host has its own state dir in its environment, and its own namespace.
    let out = hosts[1].sh("echo $WEAVE_STATE_DIR").expect_ok();
    assert_eq!(Path::new(out.stdout.trim()), hosts[1].state_dir());
    assert!(hosts[1].state_dir().is_dir());
    let links = hosts[2].run(&["ip", "-o", "link", "show"]).expect_ok();
    assert_eq!(
        links.stdout.lines().count(),
        2,
        "only lo and eth0:\n{}",
        links.stdout
    );
    // Containers are bare namespaces of their own.
    let web = lab.container(&hosts[0], "web");
    assert_eq!(web.host_name(), "a");
    assert!(web.netns().starts_with(lab.prefix()));
    assert!(
        !web.ping(hosts[0].ip()),
        "a container is not plumbed until weave does it"
    );
    assert!(web.ping(Ipv4Addr::LOCALHOST), "loopback is up");
}

#[test]
fn commands_time_out_and_background_processes_belong_to_the_lab() {
    // Any binary can stand in for weave: here echo shows the substitution.
    let mut lab = Lab::new("commands", "/bin/echo");
    let a = lab.host("a");
    let out = a.run(&["weave", "launch", "198.51.100.1"]).expect_ok();
    assert_eq!(out.stdout, "launch 198.51.100.1\n");
    let out = a
        .cmd(&["sh", "-c", "echo $X >&2; exit 3"])
        .env("X", "seen")
        .run();
    assert_eq!((out.status, out.stderr.as_str()), (Some(3), "seen\n"));
    assert!(!out.success());

    let start = Instant::now();
    let slow = a
        .cmd(&["sleep", "30"])
        .timeout(Duration::from_millis(300))
        .run();
    assert!(slow.timed_out && !slow.success(), "{slow}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the time limit held"
    );

    let quitter = a.spawn(&["sh", "-c", "echo started; exec sleep 30"]);
    let sleeper = a.spawn(&["sleep", "30"]);
    assert!(quitter.is_running());
    wait_until(
        "the log line",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let log = quitter.log();
            if log.contains("started") {
                Ok(())
            } else {
                Err(format!("log: {log:?}"))
            }
        },
    )
    .expect("log written");
    let status = quitter.stop(Duration::from_secs(5)).expect("exit status");
    assert!(!status.success(), "stopped by SIGTERM: {status:?}");
    assert!(!quitter.is_running());

    let pid = sleeper.pid();
    assert!(pid_alive(pid));
    drop(lab);
    assert!(!pid_alive(pid), "the lab killed its background process");
}

#[test]
fn line_topology_needs_routing() {
    let mut lab = Lab::new("line", WEAVE);
    let ([a, b, c], [ab, bc]) = lab.line(["a", "b", "c"]);
    assert_eq!(ab.ip_of(&a), Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(ab.ip_of(&b), Ipv4Addr::new(198, 51, 100, 2));
    assert_eq!(bc.ip_of(&b), Ipv4Addr::new(198, 51, 100, 5));
    assert_eq!(bc.ip_of(&c), Ipv4Addr::new(198, 51, 100, 6));
    assert_eq!(b.addresses("eth0"), ["198.51.100.2/30"]);
    assert_eq!(b.addresses("eth1"), ["198.51.100.5/30"]);

    assert!(a.ping(ab.ip_of(&b)));
    assert!(c.ping(bc.ip_of(&b)));
    assert!(!a.ping(bc.ip_of(&c)), "a has no route to c");

    // With routes and forwarding on b, a reaches c through b.
    a.add_route("198.51.100.4/30", ab.ip_of(&b));
    c.add_route("198.51.100.0/30", bc.ip_of(&b));
    assert!(!a.ping(bc.ip_of(&c)), "b does not forward yet");
    b.set_forwarding(true);
    a.wait_ping(bc.ip_of(&c), Duration::from_secs(5))
        .expect("routed through b");
    b.set_forwarding(false);
    assert!(!a.ping(bc.ip_of(&c)));
}

#[test]
fn links_are_cut_restored_and_shrunk() {
    let mut lab = Lab::new("faults", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    let uplink = a.uplink().expect("a is on the underlay");
    assert!(a.ping(b.ip()));
    uplink.cut();
    uplink.cut();
    assert!(uplink.is_cut());
    assert!(!a.ping(b.ip()) && !b.ping(a.ip()), "cut both ways");
    uplink.restore();
    uplink.restore();
    a.wait_ping(b.ip(), Duration::from_secs(5))
        .expect("restored");

    a.block(b.ip());
    assert!(!a.ping(b.ip()));
    a.unblock(b.ip());
    assert!(a.ping(b.ip()));

    let [c, d] = lab.isolated_hosts(["c", "d"]);
    let cd = lab.link(&c, &d);
    let d_ip = cd.ip_of(&d);
    assert!(c.ping(d_ip));
    cd.set_down();
    assert!(!c.ping(d_ip));
    cd.set_up();
    c.wait_ping(d_ip, Duration::from_secs(5))
        .expect("link back up");

    cd.set_mtu(1280);
    assert!(c.ping_sized(d_ip, 1200, true));
    assert!(
        !c.ping_sized(d_ip, 1400, true),
        "DF ping larger than the MTU fails"
    );
    assert!(c.ping_sized(d_ip, 1400, false), "fragmented it passes");
}

#[test]
fn drop_removes_everything_even_after_a_panic() {
    let mut lab = Lab::new("cleanup", WEAVE);
    let a = lab.host("a");
    let b = lab.isolated_host("b");
    lab.link(&a, &b);
    lab.container(&a, "web");
    let pid = a.spawn(&["sleep", "30"]).pid();
    let names = lab.namespaces().to_vec();
    let dir = lab.dir().to_owned();
    assert_eq!(names.len(), 4, "underlay, a, b, a-web: {names:?}");
    let listed = netns_list();
    assert!(
        names.iter().all(|n| listed.contains(n.as_str())),
        "{listed}"
    );
    drop(lab);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n.as_str())),
        "{listed}"
    );
    assert!(!dir.exists());
    assert!(!pid_alive(pid));

    // The same when the test body panics half way.
    let seen: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut lab = Lab::new("cleanup_panic", WEAVE);
        let a = lab.host("a");
        lab.container(&a, "db");
        seen.lock()
            .expect("not poisoned")
            .extend(lab.namespaces().iter().cloned());
        panic!("test body fails");
    }));
    assert!(result.is_err());
    let names = seen.into_inner().expect("not poisoned");
    assert_eq!(names.len(), 3);
    let listed = netns_list();
    assert!(
        names.iter().all(|n| !listed.contains(n.as_str())),
        "{listed}"
    );
}

#[test]
fn leftovers_of_dead_runs_are_swept() {
    // A pid that is certainly gone: a child we reaped.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("reap");
    let stale = format!("wl{dead}-beef-x");
    let ok = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(ok.success());
    let stale_dir = std::env::temp_dir()
        .join("weave-lab")
        .join(format!("wl{dead}-beef"));
    std::fs::create_dir_all(&stale_dir).expect("stale dir");

    // A live lab of this process is left alone. (`Lab::new` sweeps once per process, so
    // the leftovers may be gone before the explicit sweep: check the outcome.)
    let mut lab = Lab::new("sweep", WEAVE);
    let live = lab.isolated_host("a");
    Lab::sweep_stale();
    assert!(!stale_dir.exists());
    let listed = netns_list();
    assert!(!listed.contains(&stale), "{listed}");
    assert!(listed.contains(live.netns()), "{listed}");
}

#[test]
fn wait_until_reports_what_it_last_saw() {
    let mut n = 0;
    let err = wait_until(
        "n to reach 1000",
        Duration::from_millis(100),
        Duration::from_millis(10),
        || {
            n += 1;
            if n >= 1000 {
                Ok(n)
            } else {
                Err(format!("n = {n}"))
            }
        },
    )
    .expect_err("cannot get there in time");
    let msg = err.to_string();
    assert!(
        msg.contains("n to reach 1000") && msg.contains(&format!("n = {n}")),
        "{msg}"
    );
    assert_eq!(err.attempts, n);
    let got = wait_until(
        "at once",
        Duration::from_secs(1),
        Duration::from_millis(10),
        || Ok::<_, String>(7),
    );
    assert_eq!(got.expect("immediate"), 7);
}

#[test]
fn neighbour_limits_are_raised_and_restored() {
    const KEY: &str = "/proc/sys/net/ipv4/neigh/default/gc_thresh3";
    let read = || -> u32 {
        std::fs::read_to_string(KEY)
            .expect("read")
            .trim()
            .parse()
            .expect("number")
    };
    let before = read();
    let mut lab = Lab::new("neigh", WEAVE);
    lab.raise_neigh_thresholds(1024, 4096, before + 8192);
    assert_eq!(read(), before + 8192);
    drop(lab);
    assert_eq!(read(), before);
}
