//! End-to-end tests of weaveDNS with the real binary and real clients: three lab hosts
//! meshed, containers attached with `--name`, and from inside a container the C
//! library's resolver (`getent hosts`, `ping`) and `dig` (UDP and TCP) find the others
//! by name, reverse lookups work, other names are forwarded to an upstream (dnsmasq in
//! a namespace of its own, named in the hosts' resolv.conf), and a name goes away
//! everywhere soon after its container is detached or its namespace deleted.

#[path = "lab/mod.rs"]
mod lab;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lab::weave::{report, wait_established, weave};
use lab::{Container, Host, Lab, Proc, wait_until};

const WEAVE: &str = env!("CARGO_BIN_EXE_weave");
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(250);
/// What the upstream resolver serves (a name and address outside the overlay).
const OUTSIDE_NAME: &str = "outside.example.test";
const OUTSIDE_ADDR: &str = "203.0.113.7";

fn launch(host: &Host, args: &[&str]) {
    let mut argv = vec!["--ipalloc-range", "198.19.0.0/16"];
    argv.extend_from_slice(args);
    lab::weave::launch(host, &argv);
}

/// `weave attach CIDR --name NAME ARGS...` on `host`: ARGS name the container.
fn attach_named(host: &Host, cidr: &str, name: &str, args: &[&str]) {
    let mut argv = vec!["attach", cidr, "--name", name];
    argv.extend_from_slice(args);
    weave(host, &argv);
}

/// Where `ip netns exec` finds files of `netns` to mount over /etc (resolv.conf).
fn etc_of(netns: &str) -> PathBuf {
    Path::new("/etc/netns").join(netns)
}

/// `dig +short` in `c` (TCP with `tcp`), lines sorted.
fn dig(c: &Container, args: &[&str], tcp: bool) -> Result<Vec<String>, String> {
    let mut argv = vec!["dig", "+short", "+time=2", "+tries=1"];
    if tcp {
        argv.push("+tcp");
    }
    argv.extend_from_slice(args);
    let out = c.run(&argv);
    if !out.success() {
        return Err(format!("dig failed: {out}"));
    }
    let mut lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    lines.sort();
    Ok(lines)
}

/// Waits until `dig +short NAME` in `c` gives exactly `want` (sorted).
#[track_caller]
fn wait_dig(c: &Container, name: &str, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    wait_until(
        &format!("{name} resolves to {want:?} in {}", c.label()),
        WAIT,
        POLL,
        || {
            let got = dig(c, &[name], false)?;
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}"))
            }
        },
    )
    .unwrap();
}

/// `getent hosts NAME` in `c`: the addresses.
fn getent(c: &Container, name: &str) -> Vec<String> {
    let out = c.run(&["getent", "hosts", name]);
    out.stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// dnsmasq on `host` answering `OUTSIDE_NAME` from a hosts file, nothing else.
fn upstream(lab: &Lab, host: &Host) -> Proc {
    let hosts = lab.dir().join("upstream-hosts");
    std::fs::write(&hosts, format!("{OUTSIDE_ADDR} {OUTSIDE_NAME}\n")).expect("hosts file");
    host.spawn(&[
        "dnsmasq",
        "--keep-in-foreground",
        "--log-facility=-",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
        "--pid-file=",
        "--bind-interfaces",
        &format!("--listen-address={}", host.ip()),
        &format!("--addn-hosts={}", hosts.display()),
    ])
}

/// Points a lab host's resolver (what its daemon forwards to) at `server`: the file
/// `ip netns exec` mounts over /etc/resolv.conf for it.
fn set_resolv_conf(host: &Host, server: std::net::Ipv4Addr) {
    let dir = etc_of(host.netns());
    std::fs::create_dir_all(&dir).expect("mkdir /etc/netns/HOST");
    std::fs::write(
        dir.join("resolv.conf"),
        format!("nameserver {server}\noptions timeout:2\n"),
    )
    .expect("write resolv.conf");
}

#[test]
fn containers_find_each_other_by_name_across_hosts() {
    let mut lab = Lab::new("dns_names", WEAVE);
    let (a, b, c) = (lab.host("a"), lab.host("b"), lab.host("c"));
    let up = lab.host("up");
    let _dnsmasq = upstream(&lab, &up);
    for host in [&a, &b, &c] {
        set_resolv_conf(host, up.ip());
    }
    launch(&a, &[]);
    let seed = a.ip().to_string();
    launch(&b, &[&seed]);
    launch(&c, &[&seed]);
    wait_established(&a, 2);

    let web = lab.container(&a, "web");
    let db = lab.container(&c, "db");
    let db2 = lab.container(&b, "db2");
    attach_named(&a, "198.18.1.1/16", "web", &["--netns", web.netns()]);
    attach_named(&c, "198.18.3.1/16", "db", &["--netns", db.netns()]);

    // The container's resolver points at the server in its own namespace.
    let resolv = web.run(&["cat", "/etc/resolv.conf"]).expect_ok().stdout;
    assert!(resolv.contains("nameserver 127.0.0.12\n"), "{resolv}");
    assert!(resolv.contains("search weave.local"), "{resolv}");

    // dig over UDP and TCP, the C library, and ping by the short name.
    wait_dig(&web, "db.weave.local", &["198.18.3.1"]);
    assert_eq!(
        dig(&web, &["db.weave.local"], true).unwrap(),
        ["198.18.3.1"]
    );
    assert_eq!(getent(&web, "db"), ["198.18.3.1"]);
    assert_eq!(getent(&web, "db.weave.local"), ["198.18.3.1"]);
    wait_until("ping -c1 db from web", WAIT, POLL, || {
        let out = web.run(&["ping", "-c1", "-W2", "db"]);
        if out.success() {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .unwrap();
    // And the other way round, from host c.
    wait_dig(&db, "web.weave.local", &["198.18.1.1"]);

    // Reverse lookups of overlay addresses.
    assert_eq!(
        dig(&web, &["-x", "198.18.3.1"], false).unwrap(),
        ["db.weave.local."]
    );

    // Names outside the domain go to the host's upstream (dnsmasq on `up`).
    assert_eq!(dig(&web, &[OUTSIDE_NAME], false).unwrap(), [OUTSIDE_ADDR]);
    assert_eq!(getent(&web, OUTSIDE_NAME), [OUTSIDE_ADDR]);
    // ... and names nobody has are NXDOMAIN, not an error.
    let out = web
        .run(&["dig", "+time=2", "+tries=1", "nobody.weave.local"])
        .expect_ok();
    assert!(out.stdout.contains("status: NXDOMAIN"), "{out}");

    // Two containers with the same name: both addresses.
    attach_named(&b, "198.18.2.1/16", "db", &["--netns", db2.netns()]);
    wait_dig(&web, "db.weave.local", &["198.18.2.1", "198.18.3.1"]);
    let mut listed: Vec<String> = weave(&a, &["dns-lookup", "db"])
        .lines()
        .map(str::to_owned)
        .collect();
    listed.sort();
    assert_eq!(listed, ["198.18.2.1", "198.18.3.1"]);

    // `weave status` and `status dns` in Weave's layout, the report.
    let status = weave(&a, &["status"]);
    assert!(status.contains("        Service: dns\n"), "{status}");
    assert!(
        status.contains("         Domain: weave.local.\n"),
        "{status}"
    );
    assert!(
        status.contains(&format!("       Upstream: {}\n", up.ip())),
        "{status}"
    );
    assert!(status.contains("        Entries: 3\n"), "{status}");
    let status_dns = weave(&a, &["status", "dns"]);
    let rows: Vec<Vec<&str>> = status_dns
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{status_dns}");
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["web", "198.18.1.1", web.netns()]),
        "{status_dns}"
    );
    assert!(
        rows.iter()
            .any(|r| r[..3] == ["db", "198.18.3.1", db.netns()]),
        "{status_dns}"
    );
    let dns_report = &report(&a)["DNS"];
    assert_eq!(dns_report["Entries"].as_array().map(Vec::len), Some(3));
    assert_eq!(dns_report["LocalEntries"].as_u64(), Some(1));
    let metrics = a
        .run(&["curl", "-sS", "-m", "10", "http://127.0.0.1:6782/metrics"])
        .expect_ok()
        .stdout;
    assert!(metrics.contains("\nweave_dns_entries 1\n"), "{metrics}");

    // dns-add / dns-remove of a name of no container.
    weave(&a, &["dns-add", "198.18.9.9", "-h", "extra.weave.local"]);
    wait_dig(&db, "extra.weave.local", &["198.18.9.9"]);
    weave(&a, &["dns-remove", "198.18.9.9", "-h", "extra"]);
    wait_dig(&db, "extra.weave.local", &[]);
    // dns-add for a container: another name at its address.
    weave(&c, &["dns-add", "--netns", db.netns(), "-h", "database"]);
    wait_dig(&web, "database.weave.local", &["198.18.3.1"]);

    // Detaching takes its name away everywhere.
    weave(&b, &["detach", "--netns", db2.netns()]);
    wait_dig(&web, "db.weave.local", &["198.18.3.1"]);

    // A container that dies (its namespace deleted) goes too, with all its names.
    db.delete_netns();
    wait_dig(&web, "db.weave.local", &[]);
    wait_dig(&web, "database.weave.local", &[]);
    for host in [&a, &b, &c] {
        wait_until(&format!("db gone from {}", host.name()), WAIT, POLL, || {
            let out = host.run(&["weave", "dns-lookup", "db"]);
            if out.success() {
                Err(format!("still there: {out}"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    }
    // Its resolv.conf (in /etc/netns) was cleaned up with it.
    wait_until("db's resolv.conf removed", WAIT, POLL, || {
        let path = etc_of(db.netns());
        if path.exists() {
            Err(format!("{} still exists", path.display()))
        } else {
            Ok(())
        }
    })
    .unwrap();

    // Detaching web puts its resolver back as it was (no file).
    weave(&a, &["detach", "--netns", web.netns()]);
    assert!(!etc_of(web.netns()).join("resolv.conf").exists());
}

#[test]
fn without_dns_and_bad_input() {
    let mut lab = Lab::new("dns_opts", WEAVE);
    let a = lab.host("a");
    // An upstream that never answers (nothing has that address).
    set_resolv_conf(&a, std::net::Ipv4Addr::new(192, 0, 2, 250));
    launch(
        &a,
        &[
            "--dns-listen-address",
            &format!("{}:5353", a.ip()),
            "--dns-fallback-timeout",
            "500ms",
        ],
    );
    let quiet = lab.container(&a, "quiet");
    let named = lab.container(&a, "named");
    // --without-dns: no resolver change, no record.
    attach_named(
        &a,
        "198.18.1.2/16",
        "quiet",
        &["--without-dns", "--netns", quiet.netns()],
    );
    assert!(!etc_of(quiet.netns()).exists());
    attach_named(&a, "198.18.1.3/16", "named", &["--netns", named.netns()]);
    // The host listener answers too (dig from the host, at the given port).
    wait_until("host listener answers", WAIT, POLL, || {
        let out = a.run(&[
            "dig",
            "+short",
            "+time=2",
            "+tries=1",
            "-p",
            "5353",
            &format!("@{}", a.ip()),
            "named.weave.local",
        ]);
        if out.stdout.trim() == "198.18.1.3" {
            Ok(())
        } else {
            Err(out.to_string())
        }
    })
    .unwrap();
    assert_eq!(
        dig(&named, &["quiet.weave.local"], false).unwrap(),
        Vec::<String>::new()
    );
    // Every upstream failing gives SERVFAIL, after --dns-fallback-timeout (with the
    // default 5 s, dig would give up first).
    let out = named
        .run(&["dig", "+time=3", "+tries=1", OUTSIDE_NAME])
        .expect_ok();
    assert!(out.stdout.contains("status: SERVFAIL"), "{out}");
    // A name outside the domain is refused with a reason; so is a bad address.
    let out = a.run(&["weave", "dns-add", "198.18.9.9", "-h", "x.example.com"]);
    assert_eq!(out.status, Some(1), "{out}");
    assert!(out.stderr.contains("not in the DNS domain"), "{out}");
    let out = a.run(&[
        "weave",
        "attach",
        "198.18.1.4/16",
        "--name",
        "web.example.com",
        "--netns",
        quiet.netns(),
    ]);
    assert_eq!(out.status, Some(1), "{out}");
    assert!(out.stderr.contains("not in the DNS domain"), "{out}");
    let out = a.run(&["weave", "dns-add", "--netns", "nosuch", "-h", "x"]);
    assert_eq!(out.status, Some(1), "{out}");
    assert!(out.stderr.contains("not an attached container"), "{out}");
    // Hostile bytes at the server: it keeps answering.
    a.run(&[
        "bash",
        "-c",
        &format!(
            "head -c 3000 /dev/urandom > /dev/udp/{}/5353; printf '\\0\\0\\0' > /dev/udp/{}/5353",
            a.ip(),
            a.ip()
        ),
    ]);
    assert_eq!(
        dig(&named, &["named.weave.local"], false).unwrap(),
        ["198.18.1.3"]
    );
    assert!(
        !lab.hosts()[0].run(&["weave", "status"]).stdout.is_empty(),
        "daemon alive"
    );
}

#[test]
fn names_come_back_after_a_restart_and_reset_restores_resolv_conf() {
    let mut lab = Lab::new("dns_restart", WEAVE);
    let a = lab.host("a");
    launch(&a, &[]);
    let (one, two) = (lab.container(&a, "one"), lab.container(&a, "two"));
    // `two` had a resolv.conf of its own: it is kept and put back.
    let own = etc_of(two.netns());
    std::fs::create_dir_all(&own).expect("mkdir");
    let original = "search example.invalid\nnameserver 192.0.2.53\n";
    std::fs::write(own.join("resolv.conf"), original).expect("write");
    attach_named(&a, "198.18.1.1/16", "one", &["--netns", one.netns()]);
    attach_named(&a, "198.18.1.2/16", "two", &["--netns", two.netns()]);
    wait_dig(&one, "two.weave.local", &["198.18.1.2"]);
    weave(&a, &["dns-add", "198.18.9.9", "-h", "extra"]);
    let resolv = two.run(&["cat", "/etc/resolv.conf"]).expect_ok().stdout;
    assert!(
        resolv.contains("search weave.local example.invalid\n"),
        "{resolv}"
    );

    // Stopped, nobody answers; launched again, the names and the servers come back.
    weave(&a, &["stop"]);
    assert!(dig(&one, &["two.weave.local"], false).is_err());
    launch(&a, &[]);
    wait_dig(&one, "two.weave.local", &["198.18.1.2"]);
    // A name of no container was saved and is back too.
    wait_dig(&one, "extra.weave.local", &["198.18.9.9"]);
    // A single label is completed with the domain by the server itself.
    wait_dig(&two, "one", &["198.18.1.1"]);
    assert_eq!(getent(&two, "one"), ["198.18.1.1"]);

    // Reset puts every resolv.conf back.
    weave(&a, &["reset"]);
    assert_eq!(
        std::fs::read_to_string(own.join("resolv.conf")).expect("read"),
        original
    );
    assert!(!etc_of(one.netns()).join("resolv.conf").exists());
}

/// A host whose state directory is lost while its containers stay attached (not
/// `weave reset`): at the next launch it finds them again, serves their DNS again (their
/// resolv.conf still points at the server in their namespace) and takes their names
/// back from the peers that still hold them, instead of deleting them mesh-wide.
#[test]
fn names_of_containers_found_again_survive_a_lost_state_directory() {
    let mut lab = Lab::new("dns_lost", WEAVE);
    let (a, b) = (lab.host("a"), lab.host("b"));
    launch(&b, &[]);
    let seed = b.ip().to_string();
    launch(&a, &[&seed]);
    wait_established(&b, 1);
    let (db, web) = (lab.container(&a, "db"), lab.container(&b, "web"));
    attach_named(&a, "198.18.1.1/16", "db", &["--netns", db.netns()]);
    attach_named(&b, "198.18.2.1/16", "web", &["--netns", web.netns()]);
    wait_dig(&web, "db.weave.local", &["198.18.1.1"]);
    wait_dig(&db, "web.weave.local", &["198.18.2.1"]);
    // A name a's earlier run deleted stays deleted.
    let db_ns = ["--netns", db.netns()];
    weave(
        &a,
        &[&["dns-add", "198.18.1.1", "-h", "old-db"][..], &db_ns].concat(),
    );
    wait_dig(&web, "old-db.weave.local", &["198.18.1.1"]);
    weave(
        &a,
        &[&["dns-remove", "198.18.1.1", "-h", "old-db"][..], &db_ns].concat(),
    );
    wait_dig(&web, "old-db.weave.local", &[]);

    let name = peer_name(&a);
    weave(&a, &["stop"]);
    a.wipe_state_dir();
    launch(&a, &[&seed]);
    wait_established(&a, 1);
    assert_eq!(peer_name(&a), name, "the bridge remembers whose it is");
    // db's own lookups work again, and its name is back (or never went) everywhere.
    wait_dig(&db, "web.weave.local", &["198.18.2.1"]);
    wait_dig(&db, "db.weave.local", &["198.18.1.1"]);
    wait_dig(&web, "db.weave.local", &["198.18.1.1"]);
    // Still so once gossip has settled (a tombstone would have spread by now).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        dig(&web, &["db.weave.local"], false).unwrap(),
        ["198.18.1.1"]
    );
    assert_eq!(getent(&db, "web"), ["198.18.2.1"]);
    assert!(
        dig(&web, &["old-db.weave.local"], false)
            .unwrap()
            .is_empty()
    );
    let ps = weave(&a, &["ps"]);
    assert!(ps.contains("198.18.1.1/16"), "{ps}");

    // `weave reset` forgets everything, the name noted on the bridge too.
    weave(&a, &["reset"]);
    a.wipe_state_dir();
    launch(&a, &[&seed]);
    assert_ne!(peer_name(&a), name);
}

fn peer_name(host: &Host) -> String {
    report(host)["Router"]["Name"]
        .as_str()
        .expect("name in the report")
        .to_owned()
}

/// A real Docker container, when Docker works here: attached by ID with `--name`, its
/// resolv.conf (Docker's `ResolvConfPath`, bind-mounted into it) points at the server in
/// its namespace, which answers; once it is removed, its name goes.
#[test]
fn docker_containers_get_dns_too() {
    let Some(docker) = lab::docker::DockerContainer::start() else {
        return;
    };
    let mut lab = Lab::new("dns_docker", WEAVE);
    let a = lab.host("a");
    launch(&a, &[]);
    let peer = lab.container(&a, "peer");
    attach_named(&a, "198.18.1.1/16", "peer", &["--netns", peer.netns()]);
    attach_named(&a, "198.18.1.7/16", "dockerweb", &[&docker.id[..12]]);
    // What the container sees as /etc/resolv.conf.
    let inside = std::fs::read_to_string(format!("/proc/{}/root/etc/resolv.conf", docker.pid))
        .expect("the container's resolv.conf");
    assert!(inside.contains("\nnameserver 127.0.0.12\n"), "{inside}");
    assert!(inside.contains("\nsearch weave.local"), "{inside}");
    // Its own namespace has the server; it answers names of both kinds of containers.
    let net = format!("--net=/proc/{}/ns/net", docker.pid);
    wait_until("dig inside the Docker container", WAIT, POLL, || {
        let out = std::process::Command::new("nsenter")
            .args([
                net.as_str(),
                "dig",
                "+short",
                "+time=2",
                "+tries=1",
                "@127.0.0.12",
                "peer.weave.local",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim() == "198.18.1.1" {
            Ok(())
        } else {
            Err(format!("{text} {out:?}"))
        }
    })
    .unwrap();
    wait_dig(&peer, "dockerweb.weave.local", &["198.18.1.7"]);
    let listed = weave(&a, &["status", "dns"]);
    assert!(listed.contains(&docker.id[..12]), "{listed}");
    // The container stops: its name goes within a few seconds.
    docker.remove();
    wait_dig(&peer, "dockerweb.weave.local", &[]);
}
