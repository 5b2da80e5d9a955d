//! Requests from the HTTP API to the daemon's event loop, and their answers.
//!
//! The loop owns all state; the API holds a [`DaemonHandle`] and sends it requests over a
//! channel, each with a oneshot for the answer. That keeps the cores single-threaded.

use tokio::sync::{mpsc, oneshot};

use crate::report::Report;

/// What the API can ask of the daemon.
#[derive(Debug)]
pub(crate) enum Request {
    /// The whole state, for `weave status`, `weave report` and the metrics.
    Report(oneshot::Sender<Report>),
    /// Add peers (`host[:port]`), replacing all targets first if `replace`.
    Connect {
        peers: Vec<String>,
        replace: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Forget peers; their connections stay up but are not retried.
    Forget {
        peers: Vec<String>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Stop the daemon (`weave stop`); `reset` also forgets persisted state.
    Stop {
        reset: bool,
        reply: oneshot::Sender<()>,
    },
}

/// The API's handle on the daemon.
#[derive(Debug, Clone)]
pub(crate) struct DaemonHandle {
    tx: mpsc::Sender<Request>,
}

/// The daemon is gone (stopping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the daemon is shutting down")]
pub(crate) struct Gone;

impl DaemonHandle {
    pub(crate) fn new(tx: mpsc::Sender<Request>) -> Self {
        Self { tx }
    }

    pub(crate) async fn report(&self) -> Result<Report, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Report(reply))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn connect(
        &self,
        peers: Vec<String>,
        replace: bool,
    ) -> Result<Result<(), String>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Connect {
                peers,
                replace,
                reply,
            })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn forget(&self, peers: Vec<String>) -> Result<Result<(), String>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Forget { peers, reply })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Resolves once the daemon no longer takes requests (its loop dropped the
    /// receiver): the API's cue to shut down.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }

    pub(crate) async fn stop(&self, reset: bool) -> Result<(), Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Stop { reset, reply })
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}
