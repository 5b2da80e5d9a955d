//! A stand-in for the daemon's event loop in tests: answers [`Request`]s from a canned
//! [`Report`], applies connect/forget to its targets like the real loop, records every
//! call, and stops (dropping its receiver) on a stop request.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use ipnet::Ipv4Net;

use crate::control::{
    AttachSpec, ContainerRequest, DaemonHandle, DetachSpec, PlumbError, PsEntry, Request, Target,
};
use crate::report::Report;

/// A peer the fake daemon refuses, to test how the API passes a daemon's error on.
pub(crate) const REFUSED_PEER: &str = "203.0.113.99";
/// A namespace the fake daemon says does not exist (400), and one whose plumbing fails
/// on the host (500).
pub(crate) const MISSING_NETNS: &str = "missing";
pub(crate) const BROKEN_NETNS: &str = "broken";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    Connect { peers: Vec<String>, replace: bool },
    Forget { peers: Vec<String> },
    Stop { reset: bool },
    Attach(AttachSpec),
    Detach(DetachSpec),
    Expose(Vec<Ipv4Net>),
    Hide(Vec<Ipv4Net>),
    Ps(Vec<String>),
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
            let mut attached: Vec<PsEntry> = Vec::new();
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
                    Request::Containers(request) => {
                        fake_containers(request, &mut attached, record);
                    }
                    // IPAM is tested against the real core (api/ipam/tests.rs); here
                    // an unanswered request reads as a daemon going away.
                    Request::Ipam(request) => drop(request),
                    Request::Dns(request) => drop(request),
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

/// A registry that plumbs nothing: attach records an entry, ps lists them.
fn fake_containers(request: ContainerRequest, attached: &mut Vec<PsEntry>, record: impl Fn(Call)) {
    let refusal = |target: &Target| match target {
        Target::Netns(ns) if ns == MISSING_NETNS => {
            Some(PlumbError::Invalid(format!("{target} does not exist")))
        }
        Target::Netns(ns) if ns == BROKEN_NETNS => Some(PlumbError::Failed(
            "netlink: creating veth: Operation not permitted (os error 1)\nsecond line".to_owned(),
        )),
        _ => None,
    };
    match request {
        ContainerRequest::Attach { spec, reply } => {
            record(Call::Attach(spec.clone()));
            if let Some(err) = refusal(&spec.target) {
                let _ = reply.send(Err(err));
                return;
            }
            let entry = PsEntry {
                id: spec.target.to_string(),
                mac: "02:00:00:00:00:aa".to_owned(),
                addrs: spec.addrs,
                name: spec.name,
                target: spec.target.to_string(),
                interface: "vethwe000000001".to_owned(),
            };
            attached.push(entry.clone());
            let _ = reply.send(Ok(entry));
        }
        ContainerRequest::Detach { spec, reply } => {
            record(Call::Detach(spec.clone()));
            let _ = reply.send(refusal(&spec.target).map_or(Ok(()), Err));
        }
        ContainerRequest::Expose { addrs, reply } => {
            record(Call::Expose(addrs.clone()));
            let _ = reply.send(Ok(addrs));
        }
        ContainerRequest::Hide { addrs, reply } => {
            record(Call::Hide(addrs));
            let _ = reply.send(Ok(()));
        }
        ContainerRequest::Ps { filter, reply } => {
            record(Call::Ps(filter.clone()));
            let entries = attached
                .iter()
                .filter(|e| filter.is_empty() || filter.contains(&e.id))
                .cloned()
                .collect();
            let _ = reply.send(Ok(entries));
        }
    }
}
