//! A stand-in for the daemon's event loop in tests: answers [`Request`]s from a canned
//! [`Report`], applies connect/forget to its targets like the real loop, records every
//! call, and stops (dropping its receiver) on a stop request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control::{DaemonHandle, Request};
use crate::report::Report;

/// A peer the fake daemon refuses, to test how the API passes a daemon's error on.
pub(crate) const REFUSED_PEER: &str = "203.0.113.99";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Connect { peers: Vec<String>, replace: bool },
    Forget { peers: Vec<String> },
    Stop { reset: bool },
}

pub(crate) struct FakeDaemon {
    pub(crate) http: SocketAddr,
    pub(crate) status: SocketAddr,
    pub(crate) calls: Arc<Mutex<Vec<Call>>>,
    /// The API server: finishes once the daemon has stopped.
    pub(crate) server: JoinHandle<anyhow::Result<()>>,
}

impl FakeDaemon {
    /// Binds both listeners on 127.0.0.1:0 and serves `report`.
    pub(crate) async fn start(report: Report) -> Self {
        Self::start_with(report, false).await
    }

    /// With `mute`, the loop takes requests but drops them unanswered, as a loop that is
    /// going away does.
    pub(crate) async fn start_with(mut report: Report, mute: bool) -> Self {
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let status = TcpListener::bind("127.0.0.1:0").await.expect("bind status");
        let (http_addr, status_addr) = (
            http.local_addr().expect("http addr"),
            status.local_addr().expect("status addr"),
        );
        let (tx, mut rx) = mpsc::channel(8);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&calls);
        tokio::spawn(async move {
            while let Some(request) = rx.recv().await {
                if mute {
                    drop(request);
                    continue;
                }
                let record = |call| log.lock().expect("calls lock").push(call);
                match request {
                    Request::Report(reply) => {
                        let _ = reply.send(report.clone());
                    }
                    Request::Connect {
                        peers,
                        replace,
                        reply,
                    } => {
                        record(Call::Connect {
                            peers: peers.clone(),
                            replace,
                        });
                        if peers.iter().any(|p| p == REFUSED_PEER) {
                            let _ = reply.send(Err(format!("cannot connect to {REFUSED_PEER}")));
                            continue;
                        }
                        let targets = &mut report.router.targets;
                        if replace {
                            targets.clear();
                        }
                        targets.extend(peers);
                        let _ = reply.send(Ok(()));
                    }
                    Request::Forget { peers, reply } => {
                        record(Call::Forget {
                            peers: peers.clone(),
                        });
                        report.router.targets.retain(|t| !peers.contains(t));
                        let _ = reply.send(Ok(()));
                    }
                    Request::Stop { reset, reply } => {
                        record(Call::Stop { reset });
                        let _ = reply.send(());
                        break;
                    }
                }
            }
        });
        let server = tokio::spawn(super::serve(http, status, DaemonHandle::new(tx)));
        Self {
            http: http_addr,
            status: status_addr,
            calls,
            server,
        }
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}
