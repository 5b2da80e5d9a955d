//! The API over real TCP on 127.0.0.1, with the CLI's client, against a fake daemon loop.

use std::time::Duration;

use super::client::{Client, ClientError, Response};
use super::fake::{Call, FakeDaemon, REFUSED_PEER};
use crate::report::{ConnectionReport, PeerReport, Report, RouterReport};
use crate::status;

fn sample() -> Report {
    Report {
        ipam: None,
        dns: None,
        version: "0.1.0".to_owned(),
        router: RouterReport {
            protocol: "weave".to_owned(),
            protocol_min_version: 1,
            protocol_max_version: 1,
            name: "02:00:00:00:00:01".to_owned(),
            nick_name: "host1".to_owned(),
            peer_discovery: true,
            port: 6783,
            conn_limit: 200,
            targets: vec!["192.0.2.2:6783".to_owned()],
            connections: vec![ConnectionReport {
                address: "192.0.2.2:6783".to_owned(),
                outbound: true,
                state: "established".to_owned(),
                peer_name: Some("02:00:00:00:00:02".to_owned()),
                peer_nick_name: Some("host2".to_owned()),
                ..ConnectionReport::default()
            }],
            peers: vec![PeerReport {
                name: "02:00:00:00:00:01".to_owned(),
                nick_name: "host1".to_owned(),
                ..PeerReport::default()
            }],
            ..RouterReport::default()
        },
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Response {
    Client::new(addr).get(path).await.expect("request")
}

async fn post(addr: std::net::SocketAddr, path: &str, form: &[(&str, &str)]) -> Response {
    Client::new(addr)
        .post_form(path, form)
        .await
        .expect("request")
}

#[tokio::test]
async fn views_on_both_ports() {
    let report = sample();
    let daemon = FakeDaemon::start(report.clone()).await;
    for addr in [daemon.http, daemon.status] {
        for (path, want) in [
            ("/status", status::render_status(&report)),
            ("/status/targets", status::render_targets(&report)),
            ("/status/connections", status::render_connections(&report)),
            ("/status/peers", status::render_peers(&report)),
        ] {
            let answer = get(addr, path).await;
            assert_eq!(answer.status, 200, "{path}");
            assert_eq!(
                answer.content_type.as_deref(),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(answer.body, want, "{path}");
        }
        let answer = get(addr, "/report").await;
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        assert!(
            answer.body.contains("\n  \"Router\": {"),
            "pretty JSON: {}",
            answer.body
        );
        let decoded: Report = serde_json::from_str(&answer.body).expect("report JSON");
        assert_eq!(decoded, report);

        let answer = get(addr, "/metrics").await;
        assert_eq!(
            answer.content_type.as_deref(),
            Some(super::metrics::CONTENT_TYPE)
        );
        assert!(answer.body.contains("\nweave_peers 1\n"), "{}", answer.body);
    }
}

#[tokio::test]
async fn connect_and_forget_reach_the_daemon() {
    let daemon = FakeDaemon::start(sample()).await;
    let ok = post(
        daemon.http,
        "/connect",
        &[("peer", "192.0.2.3"), ("peer", "host4:6790")],
    )
    .await;
    assert_eq!((ok.status, ok.body.as_str()), (200, ""));
    assert_eq!(
        get(daemon.http, "/status/targets").await.body,
        "192.0.2.2:6783\n192.0.2.3\nhost4:6790\n"
    );
    let ok = post(daemon.http, "/forget", &[("peer", "192.0.2.3")]).await;
    assert_eq!(ok.status, 200);
    // Form fields in the query string work too (curl -X POST '...?peer=...').
    let ok = Client::new(daemon.http)
        .request("POST", "/connect?replace=true&peer=198.51.100.1", None)
        .await
        .expect("request");
    assert_eq!(ok.status, 200);
    assert_eq!(
        get(daemon.http, "/status/targets").await.body,
        "198.51.100.1\n"
    );
    // `replace` with no peers clears the targets.
    assert_eq!(
        post(daemon.http, "/connect", &[("replace", "true")])
            .await
            .status,
        200
    );
    assert_eq!(get(daemon.http, "/status/targets").await.body, "");
    assert_eq!(
        daemon.calls(),
        [
            Call::Connect {
                peers: vec!["192.0.2.3".into(), "host4:6790".into()],
                replace: false
            },
            Call::Forget {
                peers: vec!["192.0.2.3".into()]
            },
            Call::Connect {
                peers: vec!["198.51.100.1".into()],
                replace: true
            },
            Call::Connect {
                peers: vec![],
                replace: true
            },
        ]
    );
}

#[tokio::test]
async fn bad_requests_get_400_with_a_reason() {
    let daemon = FakeDaemon::start(sample()).await;
    for (path, form, reason) in [
        (
            "/connect",
            &[("peer", "host:0")][..],
            "invalid peer address \"host:0\"",
        ),
        (
            "/connect",
            &[("peer", "")],
            "invalid peer address \"\": empty",
        ),
        ("/connect", &[], "no peer given"),
        (
            "/connect",
            &[("replace", "maybe")],
            "replace=\"maybe\": expected true or false",
        ),
        (
            "/connect",
            &[("peers", "192.0.2.3")],
            "unknown form field \"peers\"",
        ),
        ("/forget", &[], "no peer given"),
        (
            "/forget",
            &[("replace", "true")],
            "unknown form field \"replace\"",
        ),
        (
            "/stop",
            &[("reset", "perhaps")],
            "reset=\"perhaps\": expected true or false",
        ),
        ("/stop", &[("now", "1")], "unknown form field \"now\""),
    ] {
        let answer = post(daemon.http, path, form).await;
        assert_eq!(answer.status, 400, "{path} {form:?}");
        assert!(
            answer.body.starts_with(reason),
            "{path} {form:?}: {}",
            answer.body
        );
        assert_eq!(
            answer.body.lines().count(),
            1,
            "one line: {:?}",
            answer.body
        );
    }
    let answer = Client::new(daemon.http)
        .request("POST", "/connect", Some("peer=%zz".to_owned()))
        .await
        .expect("request");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (400, "bad percent escape in \"%zz\"\n")
    );
    // The daemon's own refusal comes back as a 400 too.
    let answer = post(daemon.http, "/connect", &[("peer", REFUSED_PEER)]).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body, format!("cannot connect to {REFUSED_PEER}\n"));
    // Nothing that failed validation reached the daemon, and nothing stopped it.
    assert_eq!(
        daemon.calls(),
        [Call::Connect {
            peers: vec![REFUSED_PEER.into()],
            replace: false
        }]
    );
}

#[tokio::test]
async fn unknown_paths_and_methods() {
    let daemon = FakeDaemon::start(sample()).await;
    let answer = get(daemon.http, "/nope").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (404, "no such endpoint: /nope\n")
    );
    let answer = get(daemon.http, "/status/dns-entries").await;
    assert_eq!(answer.status, 404);
    assert!(
        answer
            .body
            .starts_with("unknown status view \"dns-entries\""),
        "{}",
        answer.body
    );
    assert_eq!(post(daemon.http, "/status", &[]).await.status, 405);
    assert_eq!(get(daemon.http, "/connect").await.status, 405);
    // The status port has no commands.
    for path in ["/connect", "/forget", "/stop"] {
        let answer = post(daemon.status, path, &[("peer", "192.0.2.9")]).await;
        assert_eq!(answer.status, 404, "{path}");
    }
    let answer = Client::new(daemon.status)
        .request("DELETE", "/peer", None)
        .await
        .expect("request");
    assert_eq!(answer.status, 404);
    assert!(daemon.calls().is_empty());
}

#[tokio::test]
async fn a_daemon_going_away_gives_503() {
    let daemon = FakeDaemon::start_with(sample(), true).await;
    for path in ["/status", "/status/peers", "/report", "/metrics"] {
        let answer = get(daemon.status, path).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (503, "weave is shutting down\n"),
            "{path}"
        );
    }
    assert_eq!(
        post(daemon.http, "/connect", &[("peer", "192.0.2.3")])
            .await
            .status,
        503
    );
    assert_eq!(post(daemon.http, "/stop", &[]).await.status, 503);
}

#[tokio::test]
async fn stop_ends_the_server_and_reset_is_passed_on() {
    for (method, path, reset) in [
        ("POST", "/stop", false),
        ("POST", "/stop?reset=true", true),
        ("DELETE", "/peer", true),
    ] {
        let daemon = FakeDaemon::start(sample()).await;
        let answer = Client::new(daemon.http)
            .request(method, path, None)
            .await
            .expect("request");
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "stopping\n"),
            "{method} {path}"
        );
        assert_eq!(daemon.calls(), [Call::Stop { reset }]);
        // The loop dropped its receiver: both listeners close.
        let served = tokio::time::timeout(Duration::from_secs(10), daemon.server)
            .await
            .expect("serve returns once the daemon stops");
        served.expect("server task").expect("serve result");
        let err = Client::new(daemon.status)
            .get("/status")
            .await
            .expect_err("closed");
        assert!(matches!(err, ClientError::NotRunning), "{err}");
    }
}

#[tokio::test]
async fn a_client_holding_a_connection_does_not_keep_the_server_up() {
    let daemon = FakeDaemon::start(sample()).await;
    // An idle client that never sends a request.
    let _idle = tokio::net::TcpStream::connect(daemon.status)
        .await
        .expect("connect");
    Client::new(daemon.http)
        .request("POST", "/stop", None)
        .await
        .expect("stop");
    let served = tokio::time::timeout(Duration::from_secs(10), daemon.server)
        .await
        .expect("serve returns despite the idle client");
    served.expect("server task").expect("serve result");
}
