//! Prometheus metrics, rendered per scrape from a [`Report`] snapshot: names and labels as
//! in Weave Net (`weave_connections{state}`, `weave_connection_terminations_total`), plus
//! the peer count, control-plane byte counters, data-plane frame counters and
//! `weave_sleeve_connections{reason}` (why connections are not on the fast path).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::report::Report;

/// The Content-Type of [`render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every connection state gets a sample, zero when empty, so a dashboard's series do not
/// vanish when a state empties (Weave does the same).
const CONNECTION_STATES: [&str; 5] = ["established", "pending", "retrying", "failed", "connecting"];

type ConnectionLabels = [(&'static str, String); 3];

/// The OpenMetrics text of `report`.
pub(crate) fn render(report: &Report) -> String {
    let router = &report.router;
    // Help texts carry no final period: the encoder adds one.
    let mut registry = Registry::default();

    let connections = Family::<ConnectionLabels, Gauge>::default();
    for state in CONNECTION_STATES {
        if !router.connections.iter().any(|c| c.state == state) {
            connections.get_or_create(&labels(state, "", "")).set(0);
        }
    }
    for conn in &router.connections {
        // The overlay ("sleeve", later "fastdp") once the data plane reports one.
        let kind = conn
            .attrs
            .iter()
            .find(|(k, _)| k == "name")
            .map_or("", |(_, v)| v.as_str());
        let encryption = if conn.encrypted { "yes" } else { "no" };
        connections
            .get_or_create(&labels(&conn.state, kind, encryption))
            .inc();
    }
    registry.register(
        "weave_connections",
        "Number of peer-to-peer connections",
        connections,
    );

    // Why established connections are not on the fast path (`fastdp=...` in `weave status
    // connections`): what to alert on when a firewall silently blocks UDP 6784.
    let sleeve = Family::<[(&'static str, String); 1], Gauge>::default();
    for conn in router
        .connections
        .iter()
        .filter(|c| c.state == "established")
    {
        let attr = |key: &str| {
            conn.attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if attr("name") == Some("sleeve") {
            let reason = attr("fastdp").unwrap_or_default().to_owned();
            sleeve.get_or_create(&[("reason", reason)]).inc();
        }
    }
    registry.register(
        "weave_sleeve_connections",
        "Established connections on the sleeve, by why they are not on the fast path",
        sleeve,
    );

    let peers = Gauge::<i64>::default();
    peers.set(i64::try_from(router.peers.len()).unwrap_or(i64::MAX));
    registry.register(
        "weave_peers",
        "Number of peers in the topology, us included",
        peers,
    );

    let targets = Gauge::<i64>::default();
    targets.set(i64::try_from(router.targets.len()).unwrap_or(i64::MAX));
    registry.register(
        "weave_targets",
        "Number of peers we were asked to connect to",
        targets,
    );

    let stats = &router.stats;
    for (name, help, value) in [
        (
            "weave_connection_terminations",
            "Number of peer-to-peer connections terminated",
            stats.connection_terminations,
        ),
        (
            "weave_control_bytes_sent",
            "Bytes sent on control connections",
            stats.control_bytes_sent,
        ),
        (
            "weave_control_bytes_received",
            "Bytes received on control connections",
            stats.control_bytes_received,
        ),
        (
            "weave_gossip_rejected",
            "Gossip messages rejected as malformed or conflicting",
            stats.gossip_rejected,
        ),
    ] {
        // A fresh counter set to the daemon's running total; the encoder adds `_total`.
        let counter = Counter::<u64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }

    register_data_plane(&mut registry, report);
    super::ipam::register_metrics(&mut registry, report);
    super::dns::register_metrics(&mut registry, report);

    let mut out = String::new();
    encode(&mut out, &registry).expect("encoding into a String cannot fail");
    out
}

type PeerLabels = [(&'static str, String); 2];
type ReasonLabels = [(&'static str, String); 1];

/// Frames and bytes per peer and direction, drops and rejections by reason.
fn register_data_plane(registry: &mut Registry, report: &Report) {
    let dp = &report.router.data_plane;
    let frames = Family::<PeerLabels, Counter<u64>>::default();
    let bytes = Family::<PeerLabels, Counter<u64>>::default();
    for p in &dp.peers {
        for (direction, f, b) in [
            ("forwarded", p.forwarded_frames, p.forwarded_bytes),
            ("relayed", p.relayed_frames, p.relayed_bytes),
            ("received", p.received_frames, p.received_bytes),
            ("injected", p.injected_frames, p.injected_bytes),
        ] {
            let labels = [
                ("peer", p.name.clone()),
                ("direction", direction.to_owned()),
            ];
            frames.get_or_create(&labels).inc_by(f);
            bytes.get_or_create(&labels).inc_by(b);
        }
    }
    registry.register(
        "weave_frames",
        "Frames per peer: forwarded from our TAP and relayed to it as next hop, received in its datagrams, injected into our TAP from it as origin",
        frames,
    );
    registry.register("weave_frame_bytes", "Bytes of those frames", bytes);
    let peer_dropped = Family::<PeerLabels, Counter<u64>>::default();
    for p in &dp.peers {
        for (reason, n) in &p.dropped_reasons {
            peer_dropped
                .get_or_create(&[("peer", p.name.clone()), ("reason", reason.clone())])
                .inc_by(*n);
        }
    }
    registry.register(
        "weave_peer_dropped_frames",
        "Frames from a peer (or copies of them) the data plane dropped, by reason",
        peer_dropped,
    );
    by_reason(
        registry,
        "weave_dropped_frames",
        "Frames (or copies of them) the data plane dropped, by reason",
        &dp.dropped_frames,
    );
    by_reason(
        registry,
        "weave_rejected_datagrams",
        "Datagrams received and not used (failed authentication, replayed, unknown sender...), by reason",
        &dp.rejected_datagrams,
    );
    let captured = Counter::<u64>::default();
    captured.inc_by(dp.captured_frames);
    registry.register(
        "weave_captured_frames",
        "Frames read from the router's port on the bridge",
        captured,
    );
    let mtu = Gauge::<i64>::default();
    mtu.set(i64::from(report.router.overlay_mtu));
    registry.register(
        "weave_overlay_mtu",
        "MTU of containers' overlay interfaces",
        mtu,
    );
}

/// Registers counter family `name` with a `reason` label, one counter per entry of
/// `counts`.
fn by_reason(
    registry: &mut Registry,
    name: &str,
    help: &str,
    counts: &std::collections::BTreeMap<String, u64>,
) {
    let family = Family::<ReasonLabels, Counter<u64>>::default();
    for (reason, n) in counts {
        family
            .get_or_create(&[("reason", reason.clone())])
            .inc_by(*n);
    }
    registry.register(name, help, family);
}

fn labels(state: &str, kind: &str, encryption: &str) -> ConnectionLabels {
    [
        ("state", state.to_owned()),
        ("type", kind.to_owned()),
        ("encryption", encryption.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ConnectionReport, PeerReport, RouterReport, RouterStats};

    fn conn(state: &str, encrypted: bool, overlay: Option<&str>) -> ConnectionReport {
        ConnectionReport {
            address: "192.0.2.2:6783".to_owned(),
            outbound: true,
            state: state.to_owned(),
            encrypted,
            attrs: overlay
                .map(|o| ("name".to_owned(), o.to_owned()))
                .into_iter()
                .collect(),
            ..ConnectionReport::default()
        }
    }

    /// The sample lines (not comments), sorted: the family's order is a hash map's.
    fn samples(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn renders_connections_peers_and_counters() {
        let report = Report {
            ipam: None,
            dns: None,
            version: "0.1.0".to_owned(),
            router: RouterReport {
                targets: vec!["192.0.2.2".to_owned()],
                connections: vec![
                    conn("established", true, Some("sleeve")),
                    ConnectionReport {
                        attrs: vec![
                            ("name".to_owned(), "sleeve".to_owned()),
                            ("fastdp".to_owned(), "encrypted".to_owned()),
                        ],
                        ..conn("established", true, None)
                    },
                    conn("established", false, Some("fastdp")),
                    conn("failed", false, None),
                ],
                peers: vec![
                    PeerReport::default(),
                    PeerReport::default(),
                    PeerReport::default(),
                ],
                stats: RouterStats {
                    control_bytes_sent: 1234,
                    control_bytes_received: 5678,
                    gossip_rejected: 2,
                    connection_terminations: 7,
                },
                ..RouterReport::default()
            },
        };
        let text = render(&report);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE weave_connections gauge\n"), "{text}");
        assert!(
            text.contains("# TYPE weave_connection_terminations counter\n"),
            "{text}"
        );
        // One period at the end of help texts, not two.
        assert!(
            text.contains("# HELP weave_peers Number of peers in the topology, us included.\n"),
            "{text}"
        );
        assert_eq!(
            samples(&text),
            [
                "weave_captured_frames_total 0",
                "weave_connection_terminations_total 7",
                r#"weave_connections{state="connecting",type="",encryption=""} 0"#,
                r#"weave_connections{state="established",type="fastdp",encryption="no"} 1"#,
                r#"weave_connections{state="established",type="sleeve",encryption="yes"} 2"#,
                r#"weave_connections{state="failed",type="",encryption="no"} 1"#,
                r#"weave_connections{state="pending",type="",encryption=""} 0"#,
                r#"weave_connections{state="retrying",type="",encryption=""} 0"#,
                "weave_control_bytes_received_total 5678",
                "weave_control_bytes_sent_total 1234",
                "weave_gossip_rejected_total 2",
                "weave_overlay_mtu 0",
                "weave_peers 3",
                r#"weave_sleeve_connections{reason=""} 1"#,
                r#"weave_sleeve_connections{reason="encrypted"} 1"#,
                "weave_targets 1",
            ]
        );
    }

    #[test]
    fn renders_data_plane_counters() {
        use crate::report::{DataPlaneReport, PeerTraffic};
        let mut report = Report::default();
        report.router.overlay_mtu = 1412;
        report.router.data_plane = DataPlaneReport {
            captured_frames: 9,
            dropped_frames: [("no_route".to_owned(), 3), ("too_big".to_owned(), 0)].into(),
            rejected_datagrams: [("authentication".to_owned(), 5)].into(),
            peers: vec![PeerTraffic {
                name: "02:00:00:00:00:02".to_owned(),
                forwarded_frames: 4,
                forwarded_bytes: 400,
                injected_frames: 2,
                injected_bytes: 100,
                dropped_frames: 1,
                dropped_reasons: [("hop_limit".to_owned(), 1)].into(),
                ..PeerTraffic::default()
            }],
            ..DataPlaneReport::default()
        };
        let text = render(&report);
        let samples = samples(&text);
        for line in [
            r#"weave_frames_total{peer="02:00:00:00:00:02",direction="forwarded"} 4"#,
            r#"weave_frames_total{peer="02:00:00:00:00:02",direction="injected"} 2"#,
            r#"weave_frame_bytes_total{peer="02:00:00:00:00:02",direction="forwarded"} 400"#,
            r#"weave_peer_dropped_frames_total{peer="02:00:00:00:00:02",reason="hop_limit"} 1"#,
            r#"weave_dropped_frames_total{reason="no_route"} 3"#,
            r#"weave_dropped_frames_total{reason="too_big"} 0"#,
            r#"weave_rejected_datagrams_total{reason="authentication"} 5"#,
            "weave_captured_frames_total 9",
            "weave_overlay_mtu 1412",
        ] {
            assert!(samples.contains(&line), "{line} missing from {text}");
        }
    }

    #[test]
    fn an_empty_report_still_has_every_series() {
        let text = render(&Report::default());
        let names: Vec<&str> = samples(&text)
            .into_iter()
            .map(|l| l.split(['{', ' ']).next().expect("split yields one part"))
            .collect();
        assert_eq!(
            names.iter().filter(|n| **n == "weave_connections").count(),
            5
        );
        for name in [
            "weave_peers",
            "weave_targets",
            "weave_connection_terminations_total",
        ] {
            assert!(names.contains(&name), "{name} missing from {text}");
        }
    }
}
