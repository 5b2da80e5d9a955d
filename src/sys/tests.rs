//! Tests against the real kernel, as root, inside anonymous network namespaces that
//! vanish with their handles (so nothing leaks even when a test fails). Tests that need
//! root say so and pass vacuously without it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipping: needs root (CAP_NET_ADMIN) to create namespaces and devices");
    }
    root
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("test CIDR literal")
}

/// A namespace with loopback up, and a netlink connection into it.
async fn ns_with_netlink() -> (Netns, Netlink) {
    let ns = Netns::new_anonymous().expect("new namespace");
    let nl = Netlink::connect_in(&ns)
        .await
        .expect("netlink in namespace");
    nl.set_up("lo").await.expect("lo up");
    (ns, nl)
}

/// A UDP socket bound inside `ns`, driven by the test's runtime.
async fn udp_in(ns: &Netns, addr: SocketAddrV4) -> UdpSocket {
    let std_sock = ns
        .run(move || {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .await
        .expect("thread in namespace")
        .expect("bind UDP in namespace");
    UdpSocket::from_std(std_sock).expect("register UDP socket")
}

/// Runs `iptables` inside `ns` (test setup only).
async fn iptables_in(ns: &Netns, args: &'static [&'static str]) -> String {
    let out = ns
        .run(move || Command::new("iptables").args(args).output())
        .await
        .expect("thread in namespace")
        .expect("run iptables");
    assert!(out.status.success(), "iptables {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host namespace with bridge `weave`, and `n` containers attached with 198.18.0.(i+1)/16.
async fn host_with_containers(n: u8) -> (Netns, Netlink, Vec<Netns>) {
    let (host_ns, host) = ns_with_netlink().await;
    host.ensure_bridge("weave", Some(1500))
        .await
        .expect("bridge");
    let mut containers = Vec::new();
    for i in 1..=n {
        let (c_ns, _) = ns_with_netlink().await;
        let host_name = format!("vethwepl{i}");
        let addrs = [Ipv4Net::new(Ipv4Addr::new(198, 18, 0, i), 16).expect("prefix")];
        let spec = VethSpec {
            host_name: &host_name,
            inner_name: CONTAINER_IFNAME,
            mtu: 1400,
            mac: Some([0x02, 0, 0, 0, 0, i]),
            addresses: &addrs,
            routes: &[net("224.0.0.0/4")],
        };
        attach_veth(&host, "weave", &c_ns, &spec)
            .await
            .expect("attach veth");
        containers.push(c_ns);
    }
    (host_ns, host, containers)
}

/// Sends one datagram from `a` to `b` and says whether it arrived within `wait`.
async fn udp_passes(a: &Netns, a_ip: [u8; 4], b: &Netns, b_ip: [u8; 4], wait: Duration) -> bool {
    let b_addr = SocketAddrV4::new(Ipv4Addr::from(b_ip), 4000);
    let rx = udp_in(b, b_addr).await;
    let tx = udp_in(a, SocketAddrV4::new(Ipv4Addr::from(a_ip), 0)).await;
    tx.send_to(b"across", b_addr).await.expect("send");
    let mut buf = [0u8; 64];
    match timeout(wait, rx.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => &buf[..n] == b"across",
        _ => false,
    }
}

#[test]
fn names_are_checked_like_the_kernel_does() {
    assert!(check_ifname("weave").is_ok());
    assert!(check_ifname("vethwepl1234567").is_ok());
    for bad in ["", "vethwepl12345678", "a/b", "a:b", "a b", ".", ".."] {
        assert!(
            matches!(check_ifname(bad), Err(SysError::InvalidName(_))),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn namespaces_are_opened_identified_and_checked() {
    if !is_root() {
        return;
    }
    let a = Netns::new_anonymous().expect("new namespace");
    let b = Netns::new_anonymous().expect("new namespace");
    let here = Netns::current().expect("current namespace");
    assert_ne!(a.id(), b.id());
    assert_ne!(a.id(), here.id());

    // A thread that entered `a` sees `a` as its own namespace.
    let seen = a
        .run(|| Netns::current().map(|n| n.id()))
        .await
        .expect("thread in a")
        .expect("current in a");
    assert_eq!(seen, a.id());
    assert_eq!(
        a.run_blocking(|| Netns::current().map(|n| n.id()))
            .expect("thread in a")
            .expect("current in a"),
        a.id()
    );
    // run_async gets a netlink connection inside: a fresh namespace has only loopback.
    let names = a
        .run_async(|nl| async move { nl.links().await })
        .await
        .expect("async thread in a")
        .expect("links in a");
    assert_eq!(
        names.into_iter().map(|l| l.name).collect::<Vec<_>>(),
        ["lo"]
    );

    // By PID and by path: our own process is in the namespace the process started in.
    let by_pid = Netns::open_pid(std::process::id()).expect("own pid");
    let by_path = Netns::open_path("/proc/self/ns/net").expect("own path");
    assert_eq!(by_pid.id(), by_path.id());
    assert!(by_pid.still_at(&NsTarget::Pid(std::process::id())));
    assert!(!a.still_at(&NsTarget::Pid(std::process::id())));
    assert!(process_alive(std::process::id()));

    // A reaped child is gone, and so is its namespace target.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("reap");
    assert!(!process_alive(pid));
    assert!(!NsTarget::Pid(pid).is_alive());
    assert!(matches!(Netns::open_pid(pid), Err(SysError::NetnsGone(_))));
    assert!(matches!(
        Netns::open_named("weave-test-no-such-ns"),
        Err(SysError::NetnsGone(_))
    ));
    let err = Netns::open_path("/proc/self/stat").expect_err("not a namespace");
    assert!(err.to_string().contains("not a network namespace"), "{err}");
}

#[tokio::test]
async fn named_namespaces_open_by_name_until_deleted() {
    if !is_root() {
        return;
    }
    struct Named(String);
    impl Drop for Named {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let named = Named(format!("wsys{}", std::process::id()));
    let status = Command::new("ip")
        .args(["netns", "add", &named.0])
        .status()
        .expect("run ip netns add");
    assert!(status.success());
    let target = NsTarget::Named(named.0.clone());
    let ns = target.open().expect("open named");
    assert!(target.is_alive());
    assert!(ns.still_at(&target));
    drop(named);
    assert!(!target.is_alive());
    assert!(!ns.still_at(&target));
    // Our handle keeps the namespace itself usable after its name is gone.
    let nl = Netlink::connect_in(&ns).await.expect("netlink");
    assert!(nl.link("lo").await.expect("lookup").is_some());
}

#[tokio::test]
async fn bridge_creation_is_idempotent_and_checks_kind() {
    if !is_root() {
        return;
    }
    let (_ns, nl) = ns_with_netlink().await;
    let first = nl.ensure_bridge("weave", Some(1400)).await.expect("create");
    assert_eq!(first.kind.as_deref(), Some("bridge"));
    assert_eq!(first.mtu, 1400);
    assert!(first.up);
    let again = nl.ensure_bridge("weave", Some(1400)).await.expect("again");
    assert_eq!(again.index, first.index);
    let bigger = nl.ensure_bridge("weave", Some(9000)).await.expect("mtu");
    assert_eq!((bigger.index, bigger.mtu), (first.index, 9000));
    nl.set_down("weave").await.expect("down");
    assert!(nl.ensure_bridge("weave", None).await.expect("up again").up);

    let peer = VethPeer {
        name: "notbr1",
        netns: None,
        mac: None,
    };
    nl.create_veth("notbr0", &peer, 1500).await.expect("veth");
    let err = nl
        .ensure_bridge("notbr0", None)
        .await
        .expect_err("veth is no bridge");
    assert!(
        matches!(&err, SysError::WrongKind { found, .. } if found == "veth"),
        "{err}"
    );
    let taken = nl
        .create_veth("notbr0", &peer, 1500)
        .await
        .expect_err("exists");
    assert_eq!(taken.errno(), Some(libc::EEXIST), "{taken}");

    assert!(nl.delete_link("weave").await.expect("delete"));
    assert!(!nl.delete_link("weave").await.expect("delete again"));
    assert!(nl.delete_link("notbr0").await.expect("delete veth"));
    assert!(
        nl.link("notbr1").await.expect("lookup").is_none(),
        "peer went too"
    );
    assert!(matches!(
        nl.set_up("weave").await,
        Err(SysError::NoSuchLink(n)) if n == "weave"
    ));
    assert!(matches!(
        nl.ensure_bridge("much-too-long-name", None).await,
        Err(SysError::InvalidName(_))
    ));
}

#[tokio::test]
async fn veth_lands_configured_in_the_container() {
    if !is_root() {
        return;
    }
    let (_host_ns, host, containers) = host_with_containers(1).await;
    let bridge = host.require("weave").await.expect("bridge");
    let host_end = host.require("vethwepl1").await.expect("host end");
    assert_eq!(host_end.master, Some(bridge.index));
    assert!(host_end.up);
    assert_eq!(host_end.mtu, 1400);
    assert!(host.link(CONTAINER_IFNAME).await.expect("lookup").is_none());

    let inner = Netlink::connect_in(&containers[0]).await.expect("netlink");
    let ethwe = inner.require(CONTAINER_IFNAME).await.expect("ethwe inside");
    assert!(ethwe.up);
    assert_eq!(ethwe.mtu, 1400);
    assert_eq!(ethwe.mac, Some([0x02, 0, 0, 0, 0, 1]));
    assert_eq!(
        inner.addresses(CONTAINER_IFNAME).await.expect("addrs"),
        [net("198.18.0.1/16")]
    );
    let routes = inner.routes().await.expect("routes");
    for dest in ["224.0.0.0/4", "198.18.0.0/16"] {
        assert!(
            routes
                .iter()
                .any(|r| r.dest == net(dest) && r.oif == Some(ethwe.index)),
            "no route {dest} dev ethwe in {routes:?}"
        );
    }
    assert!(
        !inner
            .add_route(net("224.0.0.0/4"), CONTAINER_IFNAME, None)
            .await
            .expect("route again")
    );
    assert!(
        inner
            .add_route(
                net("198.19.0.0/16"),
                CONTAINER_IFNAME,
                Some(Ipv4Addr::new(198, 18, 0, 9))
            )
            .await
            .expect("gateway route")
    );
    assert!(
        inner
            .routes()
            .await
            .expect("routes")
            .iter()
            .any(|r| r.dest == net("198.19.0.0/16")
                && r.gateway == Some(Ipv4Addr::new(198, 18, 0, 9)))
    );

    // Attaching the same container end twice fails cleanly and leaves no host end behind.
    let again = VethSpec {
        host_name: "vethwepl9",
        inner_name: CONTAINER_IFNAME,
        mtu: 1400,
        mac: None,
        addresses: &[],
        routes: &[],
    };
    let err = attach_veth(&host, "weave", &containers[0], &again)
        .await
        .expect_err("ethwe taken");
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert!(host.link("vethwepl9").await.expect("lookup").is_none());

    assert!(detach_veth(&host, "vethwepl1").await.expect("detach"));
    assert!(
        inner
            .link(CONTAINER_IFNAME)
            .await
            .expect("lookup")
            .is_none()
    );
}

#[tokio::test]
async fn links_move_rename_and_change() {
    if !is_root() {
        return;
    }
    let (_a_ns, a) = ns_with_netlink().await;
    let (b_ns, b) = ns_with_netlink().await;
    let peer = VethPeer {
        name: "mv1",
        netns: None,
        mac: None,
    };
    a.create_veth("mv0", &peer, 1500).await.expect("veth");
    a.move_to_netns("mv1", &b_ns, Some("moved"))
        .await
        .expect("move");
    assert!(a.link("mv1").await.expect("lookup").is_none());
    let moved = b.require("moved").await.expect("renamed inside");
    assert_eq!(moved.kind.as_deref(), Some("veth"));

    b.set_mtu("moved", 1280).await.expect("mtu");
    b.set_mac("moved", [0x02, 0xaa, 0, 0, 0, 1])
        .await
        .expect("mac");
    let changed = b.require("moved").await.expect("lookup");
    assert_eq!(
        (changed.mtu, changed.mac),
        (1280, Some([0x02, 0xaa, 0, 0, 0, 1]))
    );

    a.ensure_bridge("br0", None).await.expect("bridge");
    a.set_master("mv0", "br0").await.expect("master");
    let br = a.require("br0").await.expect("bridge");
    assert_eq!(a.require("mv0").await.expect("mv0").master, Some(br.index));
    a.set_up("mv0").await.expect("up");
    a.set_nomaster("mv0").await.expect("nomaster");
    assert_eq!(a.require("mv0").await.expect("mv0").master, None);
}

#[tokio::test]
async fn expose_puts_an_address_on_the_bridge() {
    if !is_root() {
        return;
    }
    let (_ns, nl) = ns_with_netlink().await;
    nl.ensure_bridge("weave", None).await.expect("bridge");
    let addr = net("198.18.0.100/16");
    assert!(expose(&nl, "weave", addr).await.expect("expose"));
    assert!(!expose(&nl, "weave", addr).await.expect("expose again"));
    assert_eq!(nl.addresses("weave").await.expect("addrs"), [addr]);
    assert!(hide(&nl, "weave", addr).await.expect("hide"));
    assert!(!hide(&nl, "weave", addr).await.expect("hide again"));
    assert!(nl.addresses("weave").await.expect("addrs").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_talk_through_the_bridge_and_the_firewall_rules() {
    if !is_root() {
        return;
    }
    let (host_ns, _host, c) = host_with_containers(2).await;
    let (ip1, ip2) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    assert!(
        udp_passes(&c[0], ip1, &c[1], ip2, WAIT).await,
        "bridge forwards"
    );

    // Docker's setup: FORWARD policy DROP, and br_netfilter makes bridged IPv4 go
    // through it. Our rules must let the bridge's traffic through again.
    let call_iptables = host_ns
        .run(|| std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"))
        .await
        .expect("thread in host");
    if call_iptables.is_err() {
        eprintln!("br_netfilter not loaded: checking the rules without it");
    }
    iptables_in(&host_ns, &["-P", "FORWARD", "DROP"]).await;
    let rules = ForwardRules::new("weave").in_netns(host_ns.clone());
    assert!(!rules.is_installed().await.expect("check"));
    if call_iptables.is_ok() {
        let short = Duration::from_millis(500);
        assert!(
            !udp_passes(&c[0], ip1, &c[1], ip2, short).await,
            "DROP policy applies"
        );
    }
    rules.install().await.expect("install");
    rules.install().await.expect("install is idempotent");
    assert!(rules.is_installed().await.expect("check"));
    let listing = iptables_in(&host_ns, &["-S"]).await;
    assert_eq!(
        listing.matches("-A FORWARD -j WEAVE-FORWARD").count(),
        1,
        "{listing}"
    );
    assert_eq!(listing.matches("-A WEAVE-FORWARD ").count(), 3, "{listing}");
    assert!(
        udp_passes(&c[1], ip2, &c[0], ip1, WAIT).await,
        "rules let it through"
    );

    rules.remove().await.expect("remove");
    rules.remove().await.expect("remove is idempotent");
    assert!(!rules.is_installed().await.expect("check"));
    let listing = iptables_in(&host_ns, &["-S"]).await;
    assert!(!listing.contains("WEAVE-FORWARD"), "{listing}");
}

// --- hand-made frames for the TAP test ---

const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];
const TAP_IP: [u8; 4] = [198, 18, 0, 9];

fn ethertype(frame: &[u8]) -> u16 {
    frame
        .get(12..14)
        .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]))
}

fn arp_reply(to_mac: [u8; 6], to_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&TAP_IP);
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&to_ip);
    f
}

fn udp_frame(to_mac: [u8; 6], to: SocketAddrV4, from_port: u16, payload: &[u8]) -> Vec<u8> {
    let ip_len = u16::try_from(20 + 8 + payload.len()).expect("small payload");
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&TAP_IP);
    ip.extend_from_slice(&to.ip().octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !u16::try_from((folded & 0xffff) + (folded >> 16)).expect("folded");
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&from_port.to_be_bytes());
    f.extend_from_slice(&to.port().to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    f.extend_from_slice(payload);
    f
}

/// Reads frames from the TAP until `pick` accepts one (skipping IPv6 chatter and the like).
async fn tap_frame(tap: &Tap, pick: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let mut seen = Vec::new();
    let found = timeout(WAIT, async {
        loop {
            let n = tap.recv(&mut buf).await.expect("tap read");
            if pick(&buf[..n]) {
                return buf[..n].to_vec();
            }
            seen.push(ethertype(&buf[..n]));
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no matching frame; ethertypes seen: {seen:x?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_reads_and_writes_whole_frames_on_the_bridge() {
    if !is_root() {
        return;
    }
    let (host_ns, host, c) = host_with_containers(1).await;
    let tap = attach_tap(
        &host,
        Some(&host_ns),
        "weave",
        "vethwe-tap",
        1500,
        TapOptions::default(),
    )
    .await
    .expect("tap on bridge");
    assert_eq!(tap.name(), "vethwe-tap");
    let bridge = host.require("weave").await.expect("bridge");
    let tap_link = host.require("vethwe-tap").await.expect("tap link");
    assert_eq!(tap_link.kind.as_deref(), Some("tun"));
    assert_eq!(tap_link.master, Some(bridge.index));
    assert!(tap_link.up);

    // The container sends to an address only the TAP side "owns": its ARP request
    // comes out of the TAP; our reply goes in, then the datagram itself comes out.
    let c_mac = [0x02, 0, 0, 0, 0, 1];
    let c_ip = [198, 18, 0, 1];
    let sock = udp_in(&c[0], SocketAddrV4::new(Ipv4Addr::from(c_ip), 4001)).await;
    let dest = SocketAddrV4::new(Ipv4Addr::from(TAP_IP), 5000);
    sock.send_to(b"to the tap", dest).await.expect("send");
    let arp = tap_frame(&tap, |f| {
        ethertype(f) == 0x0806 && f.get(38..42) == Some(&TAP_IP[..])
    })
    .await;
    assert_eq!(&arp[6..12], &c_mac, "ARP from the container's MAC");
    assert_eq!(&arp[28..32], &c_ip);
    tap.send(&arp_reply(c_mac, c_ip))
        .await
        .expect("write ARP reply");
    let udp = tap_frame(&tap, |f| ethertype(f) == 0x0800 && f.get(23) == Some(&17)).await;
    assert_eq!(&udp[0..6], &TAP_MAC);
    assert_eq!(&udp[30..34], &TAP_IP);
    assert_eq!(&udp[42..], b"to the tap");

    // And a frame written to the TAP reaches the container's socket.
    let back = udp_frame(
        c_mac,
        SocketAddrV4::new(Ipv4Addr::from(c_ip), 4001),
        5000,
        b"from the tap",
    );
    tap.send(&back).await.expect("write UDP frame");
    let mut buf = [0u8; 64];
    let (n, from) = timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("datagram in time")
        .expect("recv");
    assert_eq!(&buf[..n], b"from the tap");
    assert_eq!(from, std::net::SocketAddr::V4(dest));

    // Off the bridge: the frame no longer reaches the container.
    host.set_nomaster("vethwe-tap").await.expect("nomaster");
    assert_eq!(host.require("vethwe-tap").await.expect("tap").master, None);
    drop(tap);
    assert!(
        host.link("vethwe-tap").await.expect("lookup").is_none(),
        "TAP goes with its fd"
    );
}

#[tokio::test]
async fn tap_options_reach_the_kernel() {
    if !is_root() {
        return;
    }
    let (ns, nl) = ns_with_netlink().await;
    let opts = TapOptions {
        vnet_hdr: true,
        multi_queue: true,
    };
    let q0 = Tap::create_in(&ns, "mq%d", opts).await.expect("queue 0");
    assert_eq!(q0.name(), "mq0", "kernel filled in the pattern");
    // Multi-queue lets a second fd attach to the same device.
    let q1 = Tap::create_in(&ns, "mq0", opts).await.expect("queue 1");
    assert_eq!(q1.name(), "mq0");
    assert!(nl.link("mq0").await.expect("lookup").is_some());
    let mut buf = [0u8; 64];
    let empty = q0.try_recv(&mut buf).expect_err("nothing queued");
    assert_eq!(empty.kind(), std::io::ErrorKind::WouldBlock);
    // Without multi-queue a second open of a busy device is refused.
    let _single = Tap::create_in(&ns, "sq0", TapOptions::default())
        .await
        .expect("single");
    let busy = Tap::create_in(&ns, "sq0", TapOptions::default())
        .await
        .expect_err("busy");
    assert_eq!(busy.errno(), Some(libc::EBUSY), "{busy}");
}
