//! The end-to-end test lab: hosts, links and containers as network namespaces, the real
//! `weave` binary run inside them, and teardown that leaves nothing behind.
//!
//! Include it from a test crate with `#[path = "lab/mod.rs"] mod lab;` and make one
//! `Lab` per test:
//!
//! ```ignore
//! let mut lab = Lab::new("two_hosts", env!("CARGO_BIN_EXE_weave"));
//! let a = lab.host("a");                       // 192.0.2.1 on the underlay bridge
//! let b = lab.host("b");                       // 192.0.2.2
//! let c = lab.container(&a, "web");            // a namespace for the daemon to plumb
//! a.run(&["weave", "status"]).expect_ok();     // WEAVE_STATE_DIR is per host
//! ```
//!
//! Layout: the underlay is a bridge `br0` in a namespace of its own (never the root
//! namespace, where Docker's FORWARD DROP policy and br_netfilter would meddle); each
//! host's `eth0` is a veth to it with an address from 192.0.2.0/24. Point-to-point
//! links are veths between two hosts with a /30 from 198.51.100.0/24, then
//! 203.0.113.0/24. IPv6 is off in every lab namespace to keep captures quiet, and so
//! is IPv4 forwarding until a test turns it on (`Host::set_forwarding`).
//!
//! Names: every namespace is `wl<pid>-<4 hex>-<name>`, so a sweeper can tell which
//! leftovers belong to a run that is gone; interface names live inside lab namespaces
//! only, so they need no prefix. Everything is removed on drop, also when the test
//! panics; a dead run's leftovers are swept by the next `Lab::new`.
//!
//! This is test-only code: it runs `ip`, `iptables` and `ping` freely.
#![allow(dead_code, unused_imports)]

pub(crate) mod docker;
mod exec;
mod wait;
pub(crate) mod weave;

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use exec::{DEFAULT_TIMEOUT, Output, Proc};
pub(crate) use wait::{WaitError, wait_until};

use exec::{Procs, netns_command, run_with_timeout, spawn_logged};

/// Start of every lab namespace name.
pub(crate) const PREFIX_TAG: &str = "wl";
/// Hosts on the underlay bridge get 192.0.2.1, .2, ... in order of creation.
pub(crate) const UNDERLAY_PREFIX_LEN: u8 = 24;
/// Timeout for the lab's own setup commands.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// One test's network of namespaces. Dropping it stops every process it started and
/// deletes every namespace, interface and directory it made.
#[derive(Debug)]
pub(crate) struct Lab {
    prefix: String,
    test_name: String,
    shared: Arc<Shared>,
    /// Every namespace made, in order; deleted in reverse.
    namespaces: Vec<String>,
    underlay: Option<String>,
    hosts: Vec<Host>,
    next_underlay: u32,
    next_link: u32,
    raised_neigh: bool,
}

#[derive(Debug)]
struct Shared {
    weave_bin: PathBuf,
    dir: PathBuf,
    procs: Arc<Procs>,
    logs: AtomicU32,
}

impl Lab {
    /// A new, empty lab for `test_name`, whose hosts run `weave_bin` for "weave" (pass
    /// `env!("CARGO_BIN_EXE_weave")`). Panics if not root or `ip` is missing.
    pub(crate) fn new(test_name: &str, weave_bin: impl AsRef<Path>) -> Self {
        assert!(
            is_root(),
            "the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to make namespaces"
        );
        static SWEEP: Once = Once::new();
        SWEEP.call_once(|| {
            for gone in Self::sweep_stale() {
                eprintln!("lab: removed leftover {gone} of a finished run");
            }
        });
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Unique among live runs (pid), among labs of this run (n), and unlikely to
        // meet a stale lab of an earlier process with the same pid (nanos).
        let tag = (n.wrapping_mul(0x9e37) ^ (nanos >> 10)) & 0xffff;
        let prefix = format!("{PREFIX_TAG}{}-{tag:04x}", std::process::id());
        let dir = lab_root().join(&prefix);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let _ = std::fs::write(dir.join("test-name"), test_name);
        Self {
            prefix,
            test_name: test_name.to_owned(),
            shared: Arc::new(Shared {
                weave_bin: weave_bin.as_ref().to_owned(),
                dir,
                procs: Arc::default(),
                logs: AtomicU32::new(0),
            }),
            namespaces: Vec::new(),
            underlay: None,
            hosts: Vec::new(),
            next_underlay: 0,
            next_link: 0,
            raised_neigh: false,
        }
    }

    /// This lab's unique name prefix (`wl<pid>-<hex>`).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Directory for this lab's state and logs (removed on drop).
    pub(crate) fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The binary that runs for "weave".
    pub(crate) fn weave_bin(&self) -> &Path {
        &self.shared.weave_bin
    }

    /// Every namespace this lab made so far.
    pub(crate) fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The hosts made so far, in order.
    pub(crate) fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    fn add_netns(&mut self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "lab names are [A-Za-z0-9_-]+, got {name:?}"
        );
        let ns = format!("{}-{name}", self.prefix);
        assert!(
            !self.namespaces.contains(&ns),
            "{name} already exists in this lab"
        );
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        // A new namespace copies IPv4 forwarding from the root one (on where Docker
        // runs): start every machine as a plain host, not a router.
        let forwarding = ["sysctl", "-qw", "net.ipv4.ip_forward=0"].map(String::from);
        assert!(
            quiet(netns_command(&ns, &forwarding, &self.shared.weave_bin)),
            "cannot turn off forwarding in {ns}"
        );
        // Quiet captures and no IPv6 surprises; failure (no IPv6 at all) is fine.
        let no_ipv6 = [
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]
        .map(String::from);
        let _ = quiet(netns_command(&ns, &no_ipv6, &self.shared.weave_bin));
        ns
    }

    fn underlay_ns(&mut self) -> String {
        if let Some(ns) = &self.underlay {
            return ns.clone();
        }
        let ns = self.add_netns("ul");
        ip(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &ns, "link", "set", "br0", "up"]);
        // The underlay is a plain switch: keep its frames out of iptables.
        let _ = quiet(netns_command(
            &ns,
            &[
                "sysctl".into(),
                "-qw".into(),
                "net.bridge.bridge-nf-call-iptables=0".into(),
            ],
            &self.shared.weave_bin,
        ));
        self.underlay = Some(ns.clone());
        ns
    }

    fn node(&self, label: String, netns: String, env: Vec<(String, String)>) -> Node {
        Node {
            label,
            netns,
            env,
            shared: Arc::clone(&self.shared),
        }
    }

    fn new_host(&mut self, name: &str) -> Host {
        let ns = self.add_netns(name);
        let state_dir = self.shared.dir.join(name).join("state");
        std::fs::create_dir_all(&state_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", state_dir.display()));
        let env = vec![(
            "WEAVE_STATE_DIR".to_owned(),
            state_dir.to_string_lossy().into_owned(),
        )];
        Host {
            node: self.node(name.to_owned(), ns, env),
            name: name.to_owned(),
            state_dir,
            underlay: None,
            next_if: Arc::new(AtomicU32::new(0)),
        }
    }

    /// A host on the underlay bridge: `eth0` with the next address of 192.0.2.0/24.
    pub(crate) fn host(&mut self, name: &str) -> Host {
        let ul = self.underlay_ns();
        let mut host = self.new_host(name);
        let index = self.next_underlay;
        assert!(index < 254, "the underlay holds at most 254 hosts");
        self.next_underlay += 1;
        let addr = Ipv4Addr::new(192, 0, 2, u8::try_from(index + 1).expect("checked above"));
        let port = format!("u{index}");
        ip(&[
            "link",
            "add",
            &port,
            "netns",
            &ul,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.netns,
        ]);
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"]);
        let cidr = format!("{addr}/{UNDERLAY_PREFIX_LEN}");
        ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"]);
        host.next_if.store(1, Ordering::Relaxed);
        host.underlay = Some((
            addr,
            Link {
                name: format!("{name}-underlay"),
                a: LinkEnd {
                    netns: host.netns.clone(),
                    ifname: "eth0".into(),
                    ip: Some(addr),
                    filtered: true,
                },
                b: LinkEnd {
                    netns: ul,
                    ifname: port,
                    ip: None,
                    filtered: false,
                },
                cut: Arc::new(AtomicBool::new(false)),
            },
        ));
        self.hosts.push(host.clone());
        host
    }

    /// A host with no link at all (connect it with [`Lab::link`]).
    pub(crate) fn isolated_host(&mut self, name: &str) -> Host {
        let host = self.new_host(name);
        self.hosts.push(host.clone());
        host
    }

    /// Hosts with no link at all, made in order.
    pub(crate) fn isolated_hosts<const N: usize>(&mut self, names: [&str; N]) -> [Host; N] {
        names.map(|name| self.isolated_host(name))
    }

    /// Three hosts in a line, `a - b - c`: isolated hosts joined by the links a-b and b-c
    /// (in that order), so a and c share no network.
    pub(crate) fn line(&mut self, names: [&str; 3]) -> ([Host; 3], [Link; 2]) {
        let [a, b, c] = self.isolated_hosts(names);
        let links = [self.link(&a, &b), self.link(&b, &c)];
        ([a, b, c], links)
    }

    /// A point-to-point veth between `a` and `b` with a /30 from 198.51.100.0/24 (then
    /// 203.0.113.0/24): `a` gets the first address, `b` the second. Each end is the
    /// host's next `ethN`.
    pub(crate) fn link(&mut self, a: &Host, b: &Host) -> Link {
        let k = self.next_link;
        assert!(k < 128, "at most 128 point-to-point links");
        self.next_link += 1;
        let (net, slot) = if k < 64 {
            ([198, 51, 100], k)
        } else {
            ([203, 0, 113], k - 64)
        };
        let base = u8::try_from(slot * 4).expect("slot < 64");
        let a_ip = Ipv4Addr::new(net[0], net[1], net[2], base + 1);
        let b_ip = Ipv4Addr::new(net[0], net[1], net[2], base + 2);
        let a_if = format!("eth{}", a.next_if.fetch_add(1, Ordering::Relaxed));
        let b_if = format!("eth{}", b.next_if.fetch_add(1, Ordering::Relaxed));
        ip(&[
            "link", "add", &a_if, "netns", &a.netns, "type", "veth", "peer", "name", &b_if,
            "netns", &b.netns,
        ]);
        for (ns, ifname, addr) in [(&a.netns, &a_if, a_ip), (&b.netns, &b_if, b_ip)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                ifname,
            ]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
        }
        Link {
            name: format!("{}-{}", a.name, b.name),
            a: LinkEnd {
                netns: a.netns.clone(),
                ifname: a_if,
                ip: Some(a_ip),
                filtered: true,
            },
            b: LinkEnd {
                netns: b.netns.clone(),
                ifname: b_if,
                ip: Some(b_ip),
                filtered: true,
            },
            cut: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A container on `host`: a bare namespace (loopback up) for the daemon to plumb.
    pub(crate) fn container(&mut self, host: &Host, name: &str) -> Container {
        let ns = self.add_netns(&format!("{}-{name}", host.name));
        Container {
            node: self.node(format!("{}/{name}", host.name), ns, Vec::new()),
            name: name.to_owned(),
            host: host.name.clone(),
        }
    }

    /// Raises the kernel's neighbour table limits (shared by all namespaces) to at least
    /// these, for big meshes; restored when the last lab that raised them drops.
    pub(crate) fn raise_neigh_thresholds(&mut self, gc1: u32, gc2: u32, gc3: u32) {
        if self.raised_neigh {
            return;
        }
        let mut state = NEIGH.lock().unwrap_or_else(PoisonError::into_inner);
        if state.users == 0 {
            state.saved = NEIGH_KEYS.map(|k| std::fs::read_to_string(k).unwrap_or_default());
        }
        state.users += 1;
        self.raised_neigh = true;
        for (key, want) in NEIGH_KEYS.iter().zip([gc1, gc2, gc3]) {
            let now: u32 = std::fs::read_to_string(key)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if want > now {
                std::fs::write(key, want.to_string())
                    .unwrap_or_else(|e| panic!("cannot raise {key}: {e}"));
            }
        }
    }

    /// Removes what crashed runs left behind: namespaces named `wl<pid>-...` whose
    /// process is gone (killing what still runs inside), and their directories.
    /// Returns what it removed.
    pub(crate) fn sweep_stale() -> Vec<String> {
        let mut removed = Vec::new();
        let list = quiet_output(&["netns", "list"]);
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if stale_owner(name).is_some() {
                delete_netns(name);
                removed.push(format!("namespace {name}"));
            }
        }
        if let Ok(entries) = std::fs::read_dir(lab_root()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if stale_owner(&name).is_some() && std::fs::remove_dir_all(entry.path()).is_ok() {
                    removed.push(format!("directory {}", entry.path().display()));
                }
            }
        }
        removed
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "lab {} ({}): test failed; logs of its processes:\n{}",
                self.prefix,
                self.test_name,
                self.shared.procs.log_tails(60)
            );
            if std::env::var_os("WEAVE_LAB_KEEP").is_some() {
                eprintln!(
                    "WEAVE_LAB_KEEP set: leaving {:?} and {} (the next run sweeps them)",
                    self.namespaces,
                    self.shared.dir.display()
                );
                return;
            }
        }
        self.shared.procs.stop_all(Duration::from_secs(3));
        for ns in self.namespaces.iter().rev() {
            delete_netns(ns);
        }
        let _ = std::fs::remove_dir_all(&self.shared.dir);
        if self.raised_neigh {
            let mut state = NEIGH.lock().unwrap_or_else(PoisonError::into_inner);
            state.users -= 1;
            if state.users == 0 {
                for (key, value) in NEIGH_KEYS.iter().zip(&state.saved) {
                    if !value.is_empty() {
                        let _ = std::fs::write(key, value.trim());
                    }
                }
            }
        }
    }
}

/// A place to run commands: a host's or a container's namespace, with its environment.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    label: String,
    netns: String,
    env: Vec<(String, String)>,
    shared: Arc<Shared>,
}

impl Node {
    /// The namespace name (for `ip netns exec`, or `weave attach --netns`).
    pub(crate) fn netns(&self) -> &str {
        &self.netns
    }

    /// Its label in messages ("a", or "a/web" for a container).
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// A command to run here; a leading "weave" runs the lab's weave binary.
    pub(crate) fn cmd(&self, args: &[&str]) -> Cmd {
        Cmd {
            node: self.clone(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Runs `args` here, waiting up to [`DEFAULT_TIMEOUT`].
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).run()
    }

    /// Runs a shell script here (`sh -c`).
    pub(crate) fn sh(&self, script: &str) -> Output {
        self.cmd(&["sh", "-c", script]).run()
    }

    /// Starts `args` in the background, owned by the lab.
    pub(crate) fn spawn(&self, args: &[&str]) -> Proc {
        self.cmd(args).spawn()
    }

    /// One ping, one second to answer.
    pub(crate) fn ping(&self, addr: Ipv4Addr) -> bool {
        self.cmd(&["ping", "-n", "-q", "-c", "1", "-W", "1", &addr.to_string()])
            .timeout(Duration::from_secs(5))
            .run()
            .success()
    }

    /// One ping with `payload` bytes of data, optionally with Don't Fragment set (so it
    /// fails rather than fragments when a link's MTU is too small).
    pub(crate) fn ping_sized(&self, addr: Ipv4Addr, payload: usize, dont_fragment: bool) -> bool {
        self.ping_pmtu(addr, payload, if dont_fragment { "do" } else { "dont" })
    }

    /// One ping with `payload` bytes of data and path MTU discovery `pmtu` (ping's `-M`:
    /// "do", "want" or "dont").
    pub(crate) fn ping_pmtu(&self, addr: Ipv4Addr, payload: usize, pmtu: &str) -> bool {
        let size = payload.to_string();
        self.cmd(&[
            "ping",
            "-n",
            "-q",
            "-c",
            "1",
            "-W",
            "1",
            "-s",
            &size,
            "-M",
            pmtu,
            &addr.to_string(),
        ])
        .timeout(Duration::from_secs(5))
        .run()
        .success()
    }

    /// Pings until an answer comes or `timeout` passes.
    pub(crate) fn wait_ping(&self, addr: Ipv4Addr, timeout: Duration) -> Result<(), WaitError> {
        wait_until(
            &format!("{} to ping {addr}", self.label),
            timeout,
            Duration::from_millis(100),
            || {
                if self.ping(addr) {
                    Ok(())
                } else {
                    Err("no reply")
                }
            },
        )
    }

    /// The MAC address of `ifname` here, as sysfs gives it ("02:ab:...").
    pub(crate) fn mac(&self, ifname: &str) -> String {
        let path = format!("/sys/class/net/{ifname}/address");
        self.run(&["cat", &path])
            .expect_ok()
            .stdout
            .trim()
            .to_owned()
    }

    /// The IPv4 addresses on `ifname` here, as "a.b.c.d/len".
    pub(crate) fn addresses(&self, ifname: &str) -> Vec<String> {
        let out = self.run(&["ip", "-4", "-o", "addr", "show", "dev", ifname]);
        out.stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                words.find(|&w| w == "inet")?;
                words.next().map(str::to_owned)
            })
            .collect()
    }
}

/// A command being prepared: environment and time limit, then `run` or `spawn`.
#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    node: Node,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Duration,
}

impl Cmd {
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn command(&self) -> (Command, String) {
        let mut cmd = netns_command(&self.node.netns, &self.args, &self.node.shared.weave_bin);
        for (k, v) in self.node.env.iter().chain(&self.env) {
            cmd.env(k, v);
        }
        let label = format!("[{}] {}", self.node.label, self.args.join(" "));
        (cmd, label)
    }

    /// Runs to completion (killed at the time limit).
    pub(crate) fn run(self) -> Output {
        let (cmd, label) = self.command();
        run_with_timeout(cmd, label, self.timeout)
    }

    /// Starts in the background with stdout and stderr to a log file in the lab dir.
    pub(crate) fn spawn(self) -> Proc {
        let (cmd, label) = self.command();
        let n = self.node.shared.logs.fetch_add(1, Ordering::Relaxed);
        let program = Path::new(&self.args[0])
            .file_name()
            .map_or_else(|| "proc".into(), |p| p.to_string_lossy().into_owned());
        let file = format!("{}-{n}-{program}.log", self.node.label.replace('/', "_"));
        let log = self.node.shared.dir.join(file);
        spawn_logged(cmd, label, log, &self.node.shared.procs)
    }
}

/// A simulated machine: a namespace with its own WEAVE_STATE_DIR.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    node: Node,
    name: String,
    state_dir: PathBuf,
    underlay: Option<(Ipv4Addr, Link)>,
    next_if: Arc<AtomicU32>,
}

impl Deref for Host {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Host {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The underlay address (192.0.2.x). Panics for a host not on the underlay.
    #[track_caller]
    pub(crate) fn ip(&self) -> Ipv4Addr {
        match &self.underlay {
            Some((addr, _)) => *addr,
            None => panic!("{} is not on the underlay; use Link::ip_of", self.name),
        }
    }

    /// The host's veth to the underlay bridge, to cut or restore.
    pub(crate) fn uplink(&self) -> Option<&Link> {
        self.underlay.as_ref().map(|(_, link)| link)
    }

    /// This host's WEAVE_STATE_DIR.
    pub(crate) fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Empties the state directory, as a lost disk would (stop the daemon first).
    pub(crate) fn wipe_state_dir(&self) {
        for entry in std::fs::read_dir(&self.state_dir).expect("state dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove");
            } else {
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }

    /// Turns IPv4 forwarding (routing between its links) on or off.
    pub(crate) fn set_forwarding(&self, on: bool) {
        let value = format!("net.ipv4.ip_forward={}", u8::from(on));
        self.run(&["sysctl", "-qw", &value]).expect_ok();
    }

    /// Adds a route to `dest` ("a.b.c.d/len") via `gateway`.
    pub(crate) fn add_route(&self, dest: &str, gateway: Ipv4Addr) {
        self.run(&["ip", "route", "add", dest, "via", &gateway.to_string()])
            .expect_ok();
    }

    /// Silently drops all IPv4 between this host and `peer` (a partition of two hosts
    /// that share a link or the underlay). Undo with [`Host::unblock`].
    pub(crate) fn block(&self, peer: Ipv4Addr) {
        for rule in peer_rules(peer) {
            let mut args = vec!["iptables", "-w", "-I"];
            args.extend(rule.iter().map(String::as_str));
            self.run(&args).expect_ok();
        }
    }

    /// Removes what [`Host::block`] added (no-op if not blocked).
    pub(crate) fn unblock(&self, peer: Ipv4Addr) {
        for rule in peer_rules(peer) {
            let mut args = vec!["iptables", "-w", "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = self.run(&args);
        }
    }
}

fn peer_rules(peer: Ipv4Addr) -> [Vec<String>; 2] {
    let p = peer.to_string();
    [
        vec![
            "INPUT".into(),
            "-s".into(),
            p.clone(),
            "-j".into(),
            "DROP".into(),
        ],
        vec!["OUTPUT".into(), "-d".into(), p, "-j".into(), "DROP".into()],
    ]
}

/// A container's namespace on a host.
#[derive(Clone, Debug)]
pub(crate) struct Container {
    node: Node,
    name: String,
    host: String,
}

impl Deref for Container {
    type Target = Node;

    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Container {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The name of the host it belongs to.
    pub(crate) fn host_name(&self) -> &str {
        &self.host
    }

    /// Deletes its namespace now (`ip netns del`, nothing killed), as when a container
    /// goes away under the daemon; the lab's teardown then finds it gone.
    #[track_caller]
    pub(crate) fn delete_netns(&self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip netns del: {out:?}");
    }
}

/// One end of a link.
#[derive(Clone, Debug)]
pub(crate) struct LinkEnd {
    pub(crate) netns: String,
    pub(crate) ifname: String,
    pub(crate) ip: Option<Ipv4Addr>,
    /// A host end (cut by iptables); the underlay's bridge port is not.
    filtered: bool,
}

/// A veth between two namespaces: a host's uplink or a point-to-point link.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    name: String,
    a: LinkEnd,
    b: LinkEnd,
    cut: Arc<AtomicBool>,
}

impl Link {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn ends(&self) -> (&LinkEnd, &LinkEnd) {
        (&self.a, &self.b)
    }

    /// `host`'s address on this link.
    #[track_caller]
    pub(crate) fn ip_of(&self, host: &Host) -> Ipv4Addr {
        [&self.a, &self.b]
            .into_iter()
            .find(|end| end.netns == host.netns)
            .and_then(|end| end.ip)
            .unwrap_or_else(|| panic!("{} has no address on link {}", host.name, self.name))
    }

    /// Silently drops every IPv4 packet crossing the link (carrier stays up, as in a
    /// real network partition). Idempotent.
    pub(crate) fn cut(&self) {
        if self.cut.swap(true, Ordering::SeqCst) {
            return;
        }
        for end in self.filtered_ends() {
            for rule in cut_rules(&end.ifname) {
                let mut args = vec!["-w", "-I"];
                args.extend(rule.iter().map(String::as_str));
                iptables(&end.netns, &args);
            }
        }
    }

    /// Undoes [`Link::cut`]. Idempotent.
    pub(crate) fn restore(&self) {
        if !self.cut.swap(false, Ordering::SeqCst) {
            return;
        }
        for end in self.filtered_ends() {
            for rule in cut_rules(&end.ifname) {
                let mut args = vec!["-w", "-D"];
                args.extend(rule.iter().map(String::as_str));
                iptables(&end.netns, &args);
            }
        }
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn filtered_ends(&self) -> impl Iterator<Item = &LinkEnd> {
        [&self.a, &self.b].into_iter().filter(|e| e.filtered)
    }

    /// Takes both ends administratively down (peers see the carrier go).
    pub(crate) fn set_down(&self) {
        for end in [&self.a, &self.b] {
            ip(&["-n", &end.netns, "link", "set", &end.ifname, "down"]);
        }
    }

    /// Brings both ends up again.
    pub(crate) fn set_up(&self) {
        for end in [&self.a, &self.b] {
            ip(&["-n", &end.netns, "link", "set", &end.ifname, "up"]);
        }
    }

    /// Sets the MTU of both ends.
    pub(crate) fn set_mtu(&self, mtu: u32) {
        for end in [&self.a, &self.b] {
            ip(&[
                "-n",
                &end.netns,
                "link",
                "set",
                &end.ifname,
                "mtu",
                &mtu.to_string(),
            ]);
        }
    }
}

fn cut_rules(ifname: &str) -> [Vec<String>; 4] {
    let i = ifname.to_owned();
    let rule = |chain: &str, dir: &str| {
        vec![
            chain.to_owned(),
            dir.to_owned(),
            i.clone(),
            "-j".into(),
            "DROP".into(),
        ]
    };
    [
        rule("INPUT", "-i"),
        rule("OUTPUT", "-o"),
        rule("FORWARD", "-i"),
        rule("FORWARD", "-o"),
    ]
}

// --- helpers ---

const NEIGH_KEYS: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

struct NeighState {
    users: usize,
    saved: [String; 3],
}

static NEIGH: Mutex<NeighState> = Mutex::new(NeighState {
    users: 0,
    saved: [String::new(), String::new(), String::new()],
});

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn lab_root() -> PathBuf {
    std::env::temp_dir().join("weave-lab")
}

/// For a name `wl<pid>-...` whose process is gone, that pid.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX_TAG)?;
    let (pid, _) = rest.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let alive = Path::new(&format!("/proc/{pid}")).exists();
    (!alive).then_some(pid)
}

/// Runs `ip ARGS` in the root namespace; panics with its output on failure.
#[track_caller]
fn ip(args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = run_with_timeout(cmd, format!("ip {}", args.join(" ")), SETUP_TIMEOUT);
    assert!(out.success(), "lab setup failed:\n{out}");
}

/// Runs `iptables ARGS` in `netns`; panics with its output on failure.
#[track_caller]
fn iptables(netns: &str, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables"]).args(args);
    let out = run_with_timeout(
        cmd,
        format!("[{netns}] iptables {}", args.join(" ")),
        SETUP_TIMEOUT,
    );
    assert!(out.success(), "lab: iptables failed:\n{out}");
}

/// Runs a command, ignoring failure (cleanup and best-effort settings).
fn quiet(mut cmd: Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// `ip ARGS`' stdout, empty on failure (never panics: used while tearing down).
fn quiet_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Kills whatever still runs inside `ns`, then deletes it (interfaces go with it).
fn delete_netns(ns: &str) {
    for pid in quiet_output(&["netns", "pids", ns]).split_whitespace() {
        let mut kill = Command::new("kill");
        kill.args(["-KILL", pid]);
        quiet(kill);
    }
    let mut del = Command::new("ip");
    del.args(["netns", "del", ns]);
    quiet(del);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
}
