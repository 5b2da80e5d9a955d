//! The IPAM endpoints over real TCP with the CLI's client, against the real core on a
//! single-peer mesh, driven by a minimal loop on its own thread (the mesh is not `Send`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weave_mesh::{Mesh, MeshConfig, PeerName};

use crate::api::client::{Client, Response};
use crate::control::{DaemonHandle, Request};
use crate::daemon::ipam::{IpamService, IpamSettings};
use crate::daemon::state::State;
use crate::report::Report;

const ME: PeerName = PeerName::from_u64(0x0200_0000_0001);
const DEAD: PeerName = PeerName::from_u64(0x0200_0000_0002);

struct Daemon {
    http: SocketAddr,
    status: SocketAddr,
    handle: DaemonHandle,
    dir: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(tag: &str, init: &str) -> Daemon {
    let dir = std::env::temp_dir().join(format!("weave-api-ipam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let settings = IpamSettings {
        range: "198.18.0.0/16".parse().ok(),
        default_subnet: None,
        init: init.parse().expect("valid init"),
    };
    let (tx, mut rx) = mpsc::channel::<Request>(8);
    let state_dir = dir.clone();
    std::thread::spawn(move || {
        let state = Arc::new(State::open(&state_dir).expect("state"));
        let mut mesh = Mesh::new(MeshConfig::new(ME, "me".to_owned(), 1), Instant::now());
        let mut service =
            IpamService::start(&settings, 0, ME, true, state, &mut mesh).expect("IPAM starts");
        while let Some(request) = rx.blocking_recv() {
            match request {
                Request::Report(reply) => {
                    let _ = reply.send(Report {
                        ipam: service.report(&mesh),
                        ..Report::default()
                    });
                }
                Request::Ipam(request) => service.handle(&mut mesh, request),
                _ => {}
            }
            service.flush(&mut mesh);
        }
    });
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let status = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let daemon = Daemon {
        http: http.local_addr().expect("addr"),
        status: status.local_addr().expect("addr"),
        handle: DaemonHandle::new(tx),
        dir,
    };
    tokio::spawn(super::super::serve(http, status, daemon.handle.clone()));
    daemon
        .handle
        .ipam_reclaim(Vec::new())
        .await
        .expect("loop runs")
        .expect("reclaim");
    daemon
}

async fn call(addr: SocketAddr, method: &str, path: &str) -> Response {
    Client::new(addr)
        .request(method, path, None)
        .await
        .expect("request")
}

fn ok(r: &Response) -> &str {
    assert_eq!(r.status, 200, "{r:?}");
    r.body.trim_end()
}

#[tokio::test]
async fn weave_shaped_endpoints() {
    let d = start("endpoints", &format!("seed={ME}")).await;
    let a = d.http;
    assert_eq!(ok(&call(a, "POST", "/ip/web").await), "198.18.0.1/16");
    assert_eq!(ok(&call(a, "POST", "/ip/web").await), "198.18.0.1/16");
    assert_eq!(
        ok(&call(a, "POST", "/ip/db/198.18.5.0/24").await),
        "198.18.5.1/24"
    );
    assert_eq!(ok(&call(a, "PUT", "/ip/x/198.18.9.9/16").await), "");
    let taken = call(a, "PUT", "/ip/y/198.18.9.9/16").await;
    assert_eq!(taken.status, 400, "{taken:?}");
    assert!(taken.body.contains("already owned by x"), "{taken:?}");
    assert_eq!(ok(&call(a, "GET", "/ip/web").await), "198.18.0.1/16");
    assert_eq!(
        ok(&call(a, "GET", "/ip/x/198.18.0.0/16").await),
        "198.18.9.9/16"
    );
    assert_eq!(call(a, "GET", "/ip/db").await.status, 200);
    assert_eq!(call(a, "GET", "/ip/db/198.18.6.0/24").await.status, 404);
    let owned: serde_json::Value =
        serde_json::from_str(ok(&call(a, "GET", "/ip").await)).expect("JSON");
    assert_eq!(owned["web"], serde_json::json!(["198.18.0.1"]));
    assert_eq!(owned["weave:expose"], serde_json::Value::Null);
    // Bad input.
    for (method, path) in [
        ("POST", "/ip/db/198.18.5.1/24"),
        ("POST", "/ip/db/198.20.0.0/24"),
        ("PUT", "/ip/db/198.18.9/16"),
        ("PUT", "/ip/db/198.18.9.9/33"),
        ("DELETE", "/ip/db/x"),
    ] {
        let r = call(a, method, path).await;
        assert_eq!(r.status, 400, "{method} {path}: {r:?}");
        assert!(!r.body.trim().is_empty());
    }
    // Frees.
    assert_eq!(call(a, "DELETE", "/ip/db/198.18.0.1").await.status, 400);
    assert_eq!(ok(&call(a, "DELETE", "/ip/web/198.18.0.1").await), "");
    assert_eq!(call(a, "GET", "/ip/web").await.status, 404);
    assert_eq!(call(a, "DELETE", "/ip/web/198.18.0.1").await.status, 404);
    assert_eq!(ok(&call(a, "DELETE", "/ip/db").await), "");
    assert_eq!(call(a, "GET", "/ip/db/198.18.5.0/24").await.status, 404);
    assert_eq!(ok(&call(a, "GET", "/ring").await), "");
    assert_eq!(
        ok(&call(a, "GET", "/ipinfo/defaultsubnet").await),
        "198.18.0.0/16"
    );
    // Identities with odd characters travel percent-encoded.
    assert_eq!(
        ok(&call(a, "POST", "/ip/weave:expose").await),
        "198.18.0.1/16"
    );
    assert_eq!(
        ok(&call(a, "POST", "/ip/%2Frun%2Fnetns%2Fa").await),
        "198.18.0.2/16"
    );
    assert_eq!(
        ok(&call(a, "GET", "/ip/%2Frun%2Fnetns%2Fa").await),
        "198.18.0.2/16"
    );
    // The status port has none of it.
    assert_eq!(call(d.status, "POST", "/ip/web").await.status, 404);
}

#[tokio::test]
async fn status_views_and_metrics() {
    let d = start("status", &format!("seed={ME},{DEAD}")).await;
    ok(&call(d.http, "POST", "/ip/web").await);
    let status = call(d.status, "GET", "/status").await;
    let text = ok(&status);
    assert!(
        text.contains(
            "        Service: ipam\n         Status: ready\n          Range: 198.18.0.0/16\n  DefaultSubnet: 198.18.0.0/16"
        ),
        "{text}"
    );
    let view = call(d.status, "GET", "/status/ipam").await;
    let lines: Vec<&str> = ok(&view).lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{ME}(me)")), "{lines:?}");
    assert!(
        lines[0].ends_with("32768 IPs (50.0% of total) (1 active)"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&DEAD.to_string())
            && lines[1].ends_with("32768 IPs (50.0% of total) - unreachable!"),
        "{lines:?}"
    );
    let metrics = call(d.status, "GET", "/metrics").await;
    let text = ok(&metrics);
    for want in [
        "weave_ips{state=\"local-used\"} 1",
        "weave_max_ips 65536",
        "weave_ipam_pending_allocates 0",
        "weave_ipam_unreachable_count 1",
        "weave_ipam_unreachable_percentage 50.0",
        "weave_ipam_conflicts_total 0",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} in\n{text}");
    }
    let report: serde_json::Value =
        serde_json::from_str(ok(&call(d.http, "GET", "/report").await)).expect("JSON");
    assert_eq!(report["IPAM"]["RangeNumIPs"], 65536);
    assert_eq!(report["IPAM"]["ActiveIPs"], 1);
    assert_eq!(report["IPAM"]["Entries"].as_array().map(Vec::len), Some(2));
    // rmpeer of the dead owner, by name; then nothing is unreachable.
    let said = call(d.http, "DELETE", &format!("/peer/{DEAD}")).await;
    assert_eq!(ok(&said), format!("32768 IPs taken over from {DEAD}"));
    let view = call(d.status, "GET", "/status/ipam").await;
    assert_eq!(ok(&view).lines().count(), 1);
    assert_eq!(call(d.http, "DELETE", "/peer/nobody").await.status, 404);
}

#[tokio::test]
async fn waiting_requests_time_out_with_503_and_say_why() {
    let d = start("waiting", "consensus=3").await;
    let r = call(d.http, "POST", "/ip/web").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body.trim(), "waiting for IP space");
    let r = call(d.http, "GET", "/ring").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(
        r.body.trim(),
        "the IP allocation ring does not exist yet: awaiting consensus (quorum: 2, known: 1)"
    );
    let status = call(d.http, "GET", "/status/ipam").await;
    assert_eq!(ok(&status), "awaiting consensus (quorum: 2, known: 1)");
    // The abandoned allocation was cancelled.
    let report: serde_json::Value =
        serde_json::from_str(ok(&call(d.http, "GET", "/report").await)).expect("JSON");
    assert_eq!(report["IPAM"]["PendingAllocates"], 0);
}
