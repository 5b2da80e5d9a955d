//! The text views of `weave status`, rendered from a [`Report`] in Weave Net's layout
//! (prog/weaver/http.go templates), so eyes and scripts used to Weave find things where
//! they were:
//!
//! - `status`: right-aligned `Label: value` lines; connection counts in the order
//!   established, pending, retrying, failed, connecting, zero counts omitted; the
//!   protocol as `weave 1..2`, or `weave 2` when the range is one version (as Weave).
//! - `status connections`: direction, address padded to 21, state padded to 11, then
//!   `encrypted`/`unencrypted` (when a password is set) padded to 11, the overlay name
//!   when the data plane reports one, the remote `name(nick)` and `key=value` attributes;
//!   failed targets show `<error>, retry: in <time>`.
//! - `status peers`: `name(nick)` per peer, then `   -> address  name(nick)  state` per
//!   connection, address padded to 21 and name to 37.
//! - `status targets`: one per line.
//!
//! Lines never end in spaces (Weave's templates left some; nobody wants them).

use std::fmt::Write;

use crate::control::PsEntry;
use crate::report::{ConnectionReport, Report, RouterReport};

/// Connection states in the order Weave lists their counts.
const CONNECTION_STATES: [&str; 5] = ["established", "pending", "retrying", "failed", "connecting"];

/// `weave status`.
pub(crate) fn render_status(report: &Report) -> String {
    let router = &report.router;
    let mut out = String::new();
    line(&mut out, "Version", &report.version);
    out.push('\n');
    line(&mut out, "Service", "router");
    let protocol = if router.protocol_min_version == router.protocol_max_version {
        format!("{} {}", router.protocol, router.protocol_max_version)
    } else {
        format!(
            "{} {}..{}",
            router.protocol, router.protocol_min_version, router.protocol_max_version
        )
    };
    line(&mut out, "Protocol", &protocol);
    line(
        &mut out,
        "Name",
        &name_nick(&router.name, &router.nick_name),
    );
    line(&mut out, "Encryption", enabled(router.encryption));
    line(&mut out, "PeerDiscovery", enabled(router.peer_discovery));
    line(&mut out, "Targets", &router.targets.len().to_string());
    line(&mut out, "Connections", &connection_summary(router));
    line(&mut out, "Peers", &peer_summary(router));
    line(&mut out, "TrustedSubnets", "none");
    for collision in &router.name_collisions {
        line(&mut out, "Warning", collision);
    }
    if let Some(ipam) = &report.ipam {
        out.push('\n');
        out.push_str(&crate::api::ipam::status_block(ipam));
    }
    if let Some(dns) = &report.dns {
        out.push('\n');
        out.push_str(&crate::api::dns::status_block(dns));
    }
    out
}

/// `weave status targets`.
pub(crate) fn render_targets(report: &Report) -> String {
    report
        .router
        .targets
        .iter()
        .map(|t| format!("{t}\n"))
        .collect()
}

/// `weave status connections`.
pub(crate) fn render_connections(report: &Report) -> String {
    let router = &report.router;
    let mut out = String::new();
    for conn in &router.connections {
        let text = format!(
            "{} {:<21} {:<11} {} {}",
            direction(conn.outbound),
            conn.address,
            conn.state,
            connection_info(router, conn),
            attributes(conn),
        );
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// `weave status peers`.
pub(crate) fn render_peers(report: &Report) -> String {
    let mut out = String::new();
    for peer in &report.router.peers {
        out.push_str(&name_nick(&peer.name, &peer.nick_name));
        out.push('\n');
        for conn in &peer.connections {
            let state = if conn.established {
                "established"
            } else {
                "pending"
            };
            let text = format!(
                "   {} {:<21} {:<37} {state}",
                direction(conn.outbound),
                conn.address,
                name_nick(&conn.name, &conn.nick_name),
            );
            out.push_str(text.trim_end());
            out.push('\n');
        }
    }
    out
}

/// `weave ps`: `<id> <mac> <ip/len>...` per line, `weave:expose` (the bridge's MAC and
/// the host's addresses) first, as Weave printed it.
pub(crate) fn render_ps(entries: &[PsEntry]) -> String {
    let mut out = String::new();
    for entry in entries {
        let mut text = format!("{} {}", entry.id, entry.mac);
        for addr in &entry.addrs {
            write!(text, " {addr}").expect("writing to a String cannot fail");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A right-aligned `Label: value` line; the colon lands in column 16 as in Weave.
fn line(out: &mut String, label: &str, value: &str) {
    writeln!(out, "{label:>15}: {value}").expect("writing to a String cannot fail");
}

fn enabled(on: bool) -> &'static str {
    if on { "enabled" } else { "disabled" }
}

fn direction(outbound: bool) -> &'static str {
    if outbound { "->" } else { "<-" }
}

fn name_nick(name: &str, nick: &str) -> String {
    format!("{name}({nick})")
}

/// `n (a established, b failed)`; just `n` when there are none.
fn connection_summary(router: &RouterReport) -> String {
    let counts = CONNECTION_STATES.iter().filter_map(|state| {
        let n = router
            .connections
            .iter()
            .filter(|c| c.state == *state)
            .count();
        (n > 0).then(|| format!("{n} {state}"))
    });
    with_counts(router.connections.len(), counts.collect(), "(", ")")
}

/// `n (with x established, y pending connections)` over every peer's connections.
fn peer_summary(router: &RouterReport) -> String {
    let all = || router.peers.iter().flat_map(|p| &p.connections);
    let established = all().filter(|c| c.established).count();
    let pending = all().count() - established;
    let counts = [(established, "established"), (pending, "pending")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, state)| format!("{n} {state}"))
        .collect();
    with_counts(router.peers.len(), counts, "(with ", " connections)")
}

fn with_counts(total: usize, counts: Vec<String>, open: &str, close: &str) -> String {
    if counts.is_empty() {
        total.to_string()
    } else {
        format!("{total} {open}{}{close}", counts.join(", "))
    }
}

/// What follows the state in `status connections`.
fn connection_info(router: &RouterReport, conn: &ConnectionReport) -> String {
    match conn.state.as_str() {
        "established" | "pending" => {
            let mut info = String::new();
            if conn.encrypted {
                info.push_str("encrypted   ");
            } else if router.encryption {
                // A password is set but this connection is not encrypted (trusted subnet).
                info.push_str("unencrypted ");
            }
            if let Some((_, overlay)) = conn.attrs.iter().find(|(k, _)| k == "name") {
                write!(info, "{overlay:<6} ").expect("writing to a String cannot fail");
            }
            if let Some(name) = &conn.peer_name {
                info.push_str(&name_nick(
                    name,
                    conn.peer_nick_name.as_deref().unwrap_or(""),
                ));
            }
            info
        }
        "failed" => {
            let retry = match conn.retry_in_secs {
                Some(secs) => format!("retry: in {}", duration(secs)),
                None => "retry: never".to_owned(),
            };
            if conn.info.is_empty() {
                retry
            } else {
                format!("{}, {retry}", conn.info)
            }
        }
        _ => conn.info.clone(),
    }
}

/// `key=value` attributes, except the overlay name (shown before the peer).
fn attributes(conn: &ConnectionReport) -> String {
    let attrs: Vec<String> = conn
        .attrs
        .iter()
        .filter(|(k, _)| k != "name")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    attrs.join(" ")
}

/// `45s`, `3m20s`, `1h0m5s`.
fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{PeerConnectionReport, PeerReport};

    const HOST1: &str = "02:00:00:00:00:01";
    const HOST2: &str = "02:00:00:00:00:02";
    const HOST3: &str = "02:00:00:00:00:03";

    fn conn(address: &str, outbound: bool, state: &str) -> ConnectionReport {
        ConnectionReport {
            address: address.to_owned(),
            outbound,
            state: state.to_owned(),
            ..ConnectionReport::default()
        }
    }

    fn up(address: &str, outbound: bool, peer: &str, nick: &str) -> ConnectionReport {
        ConnectionReport {
            encrypted: true,
            peer_name: Some(peer.to_owned()),
            peer_nick_name: Some(nick.to_owned()),
            ..conn(address, outbound, "established")
        }
    }

    fn peer_conn(
        address: &str,
        outbound: bool,
        name: &str,
        nick: &str,
        established: bool,
    ) -> PeerConnectionReport {
        PeerConnectionReport {
            name: name.to_owned(),
            nick_name: nick.to_owned(),
            address: address.to_owned(),
            outbound,
            established,
        }
    }

    /// Three hosts: host1 (us) dials host2, host3 dialled us, a fourth target fails.
    fn report() -> Report {
        let mut sleeve = up("192.0.2.2:6783", true, HOST2, "host2");
        sleeve.attrs = vec![
            ("name".to_owned(), "sleeve".to_owned()),
            ("mtu".to_owned(), "1410".to_owned()),
        ];
        Report {
            ipam: None,
            dns: None,
            version: "0.1.0".to_owned(),
            router: RouterReport {
                protocol: "weave".to_owned(),
                protocol_min_version: 1,
                protocol_max_version: 2,
                encryption: true,
                peer_discovery: true,
                name: HOST1.to_owned(),
                nick_name: "host1".to_owned(),
                uid: 1,
                port: 6783,
                conn_limit: 200,
                targets: vec!["192.0.2.2".to_owned(), "192.0.2.4:6783".to_owned()],
                connections: vec![
                    sleeve,
                    up("192.0.2.3:40123", false, HOST3, "host3"),
                    ConnectionReport {
                        info: "dial tcp 192.0.2.4:6783: connection refused".to_owned(),
                        retry_in_secs: Some(200),
                        ..conn("192.0.2.4:6783", true, "failed")
                    },
                    conn("198.51.100.7:6783", true, "connecting"),
                ],
                peers: vec![
                    PeerReport {
                        name: HOST1.to_owned(),
                        nick_name: "host1".to_owned(),
                        connections: vec![
                            peer_conn("192.0.2.2:6783", true, HOST2, "host2", true),
                            peer_conn("192.0.2.3:40123", false, HOST3, "host3", true),
                        ],
                        ..PeerReport::default()
                    },
                    PeerReport {
                        name: HOST2.to_owned(),
                        nick_name: "host2".to_owned(),
                        connections: vec![
                            peer_conn("192.0.2.1:51000", false, HOST1, "host1", true),
                            peer_conn("192.0.2.3:6783", true, HOST3, "host3", false),
                        ],
                        ..PeerReport::default()
                    },
                    PeerReport {
                        name: HOST3.to_owned(),
                        nick_name: "host3".to_owned(),
                        ..PeerReport::default()
                    },
                ],
                ..RouterReport::default()
            },
        }
    }

    #[test]
    fn status_block() {
        let want = "        Version: 0.1.0

        Service: router
       Protocol: weave 1..2
           Name: 02:00:00:00:00:01(host1)
     Encryption: enabled
  PeerDiscovery: enabled
        Targets: 2
    Connections: 4 (2 established, 1 failed, 1 connecting)
          Peers: 3 (with 3 established, 1 pending connections)
 TrustedSubnets: none
";
        assert_eq!(render_status(&report()), want);
    }

    #[test]
    fn status_of_a_lone_peer_omits_counts() {
        let mut r = report();
        r.router.protocol_min_version = 2;
        r.router.encryption = false;
        r.router.peer_discovery = false;
        r.router.targets.clear();
        r.router.connections.clear();
        r.router.peers.truncate(1);
        r.router.peers[0].connections.clear();
        r.router.name_collisions =
            vec!["peer 02:00:00:00:00:01 at 192.0.2.9 has our name".to_owned()];
        let want = "        Version: 0.1.0

        Service: router
       Protocol: weave 2
           Name: 02:00:00:00:00:01(host1)
     Encryption: disabled
  PeerDiscovery: disabled
        Targets: 0
    Connections: 0
          Peers: 1
 TrustedSubnets: none
        Warning: peer 02:00:00:00:00:01 at 192.0.2.9 has our name
";
        assert_eq!(render_status(&r), want);
    }

    #[test]
    fn connections_view() {
        let want = "\
-> 192.0.2.2:6783        established encrypted   sleeve 02:00:00:00:00:02(host2) mtu=1410
<- 192.0.2.3:40123       established encrypted   02:00:00:00:00:03(host3)
-> 192.0.2.4:6783        failed      dial tcp 192.0.2.4:6783: connection refused, retry: in 3m20s
-> 198.51.100.7:6783     connecting
";
        assert_eq!(render_connections(&report()), want);
    }

    #[test]
    fn connections_view_without_password_and_odd_states() {
        let mut r = report();
        r.router.encryption = false;
        r.router.connections = vec![
            ConnectionReport {
                encrypted: false,
                ..up("192.0.2.2:6783", true, HOST2, "host2")
            },
            conn("192.0.2.5:6783", false, "pending"),
            ConnectionReport {
                retry_in_secs: None,
                ..conn("192.0.2.6:6783", true, "failed")
            },
            ConnectionReport {
                info: "timed out".to_owned(),
                ..conn("192.0.2.7:6783", true, "retrying")
            },
            ConnectionReport {
                retry_in_secs: Some(3605),
                ..conn("192.0.2.8:6783", true, "failed")
            },
        ];
        let want = "\
-> 192.0.2.2:6783        established 02:00:00:00:00:02(host2)
<- 192.0.2.5:6783        pending
-> 192.0.2.6:6783        failed      retry: never
-> 192.0.2.7:6783        retrying    timed out
-> 192.0.2.8:6783        failed      retry: in 1h0m5s
";
        assert_eq!(render_connections(&r), want);
        // With a password, a plain connection says so.
        r.router.encryption = true;
        assert!(render_connections(&r).starts_with(
            "-> 192.0.2.2:6783        established unencrypted 02:00:00:00:00:02(host2)\n"
        ));
    }

    #[test]
    fn peers_view() {
        let want = "\
02:00:00:00:00:01(host1)
   -> 192.0.2.2:6783        02:00:00:00:00:02(host2)              established
   <- 192.0.2.3:40123       02:00:00:00:00:03(host3)              established
02:00:00:00:00:02(host2)
   <- 192.0.2.1:51000       02:00:00:00:00:01(host1)              established
   -> 192.0.2.3:6783        02:00:00:00:00:03(host3)              pending
02:00:00:00:00:03(host3)
";
        assert_eq!(render_peers(&report()), want);
    }

    #[test]
    fn targets_view() {
        assert_eq!(render_targets(&report()), "192.0.2.2\n192.0.2.4:6783\n");
        assert_eq!(render_targets(&Report::default()), "");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m0s");
        assert_eq!(duration(360), "6m0s");
        assert_eq!(duration(7322), "2h2m2s");
    }

    #[test]
    fn ps_view() {
        let entry = |id: &str, mac: &str, addrs: &[&str]| PsEntry {
            id: id.to_owned(),
            mac: mac.to_owned(),
            addrs: addrs.iter().map(|a| a.parse().expect("literal")).collect(),
            name: None,
            target: String::new(),
            interface: String::new(),
        };
        let text = render_ps(&[
            entry("weave:expose", "7a:c4:8b:a1:e6:ad", &[]),
            entry("b07565b06c53", "ae:e3:07:9c:8c:d4", &["198.18.0.3/15"]),
            entry(
                "web",
                "ce:15:34:a9:b5:6d",
                &["198.18.0.1/15", "198.19.0.1/16"],
            ),
        ]);
        assert_eq!(
            text,
            "weave:expose 7a:c4:8b:a1:e6:ad\n\
             b07565b06c53 ae:e3:07:9c:8c:d4 198.18.0.3/15\n\
             web ce:15:34:a9:b5:6d 198.18.0.1/15 198.19.0.1/16\n"
        );
        assert_eq!(render_ps(&[]), "");
    }
}
