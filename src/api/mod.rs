//! The daemon's HTTP API (axum), in Weave Net's shape, and the CLI's client for it.
//!
//! Two listeners: the control API (`--http-addr`, 127.0.0.1:6784) serves everything; the
//! status port (`--status-addr`, 127.0.0.1:6782) only the read-only views, so it can be
//! opened to a Prometheus server without letting it reconfigure the daemon.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /status` | `weave status` text |
//! | `GET /status/targets`, `/status/connections`, `/status/peers`, `/status/ipam`, `/status/dns` | that view's text |
//! | `GET /report` | the [`Report`] as pretty JSON |
//! | `GET /metrics` | Prometheus / OpenMetrics text |
//! | `POST /connect` | form `peer=h[:p]` (repeated), `replace=true`: add targets |
//! | `POST /forget` | form `peer=h[:p]` (repeated): drop targets |
//! | `POST /stop` | stop the daemon (`weave stop`); `?reset=true` also drops persisted state |
//! | `DELETE /peer` | Weave's "leave" as used by `weave reset`: same as `POST /stop?reset=true` |
//! | `POST /attach`, `/detach`, `/expose`, `/hide`, `GET /ps` | container plumbing (see [`containers`]) |
//! | `/ip/...`, `GET /ring`, `/ipinfo/defaultsubnet`, `/ipinfo/tracker`, `DELETE /peer/{name}` | address allocation (see [`ipam`]) |
//! | `/name/...`, `/domain`, `/dns-add`, `/dns-remove`, `/lookup/{name}` | DNS (see [`dns`]) |
//!
//! Only the control API has the commands (everything from `/connect` on). Form fields may
//! come in the body (`application/x-www-form-urlencoded`) or the query string. A bad
//! request gets 400 with a one-line reason, an unknown path 404, a daemon that is
//! shutting down 503. Successful POSTs answer 200 with an empty body (`/stop`:
//! "stopping").

pub(crate) mod client;
mod containers;
pub(crate) mod dns;
#[cfg(test)]
pub(crate) mod fake;
mod form;
pub(crate) mod ipam;
pub(crate) mod metrics;

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;

use crate::control::{DaemonHandle, Gone};
use crate::report::Report;
use crate::status;

/// How long in-flight requests may take to finish once the daemon has stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves the control API on `http` and the read-only views on `status` until the daemon
/// stops (drops its request receiver), then lets in-flight requests finish.
pub(crate) async fn serve(
    http: TcpListener,
    status: TcpListener,
    handle: DaemonHandle,
) -> anyhow::Result<()> {
    let stopped = |handle: DaemonHandle| async move { handle.closed().await };
    let control = axum::serve(http, control_router(handle.clone()))
        .with_graceful_shutdown(stopped(handle.clone()));
    let read_only = axum::serve(status, status_router(handle.clone()))
        .with_graceful_shutdown(stopped(handle.clone()));
    let both = async {
        let (a, b) = tokio::join!(control.into_future(), read_only.into_future());
        a.and(b)
    };
    tokio::select! {
        result = both => Ok(result?),
        // A client that keeps its connection open must not keep the daemon alive.
        () = async { handle.closed().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    }
}

/// Everything: read-only views plus the commands that change the daemon.
pub(crate) fn control_router(handle: DaemonHandle) -> Router {
    dns::routes(ipam::routes(containers::routes(read_only_routes())))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/stop", post(stop))
        .route("/peer", delete(leave))
        .fallback(not_found)
        .with_state(handle)
}

/// The status port: what is safe to show to anyone who can reach it.
pub(crate) fn status_router(handle: DaemonHandle) -> Router {
    read_only_routes().fallback(not_found).with_state(handle)
}

fn read_only_routes() -> Router<DaemonHandle> {
    Router::new()
        .route("/status", get(status_all))
        .route("/status/{view}", get(status_view))
        .route("/report", get(report))
        .route("/metrics", get(metrics))
}

/// A plain-text answer; reasons and views end with a newline, as curl users expect.
fn text(code: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn bad_request(reason: impl Into<String>) -> Response {
    text(StatusCode::BAD_REQUEST, reason)
}

fn shutting_down(_: Gone) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, "weave is shutting down")
}

/// `value` as pretty JSON; 500 saying what could not be encoded if it cannot be.
fn json_response(value: &impl serde::Serialize, what: &str) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding {what}: {e}"),
        ),
    }
}

/// 200 with an empty body: what a command that did its work answers.
fn done<T>(_: T) -> Response {
    text(StatusCode::OK, "")
}

/// `err` as a one-line reason (whatever the kernel or Docker said) with status `code`.
fn one_line(code: StatusCode, err: &impl std::fmt::Display) -> Response {
    text(code, err.to_string().replace(['\n', '\r'], " "))
}

/// Why the daemon refused a request, and what the client is told for it.
trait Refusal {
    fn response(self) -> Response;
}

/// A plain reason: the request was bad.
impl Refusal for String {
    fn response(self) -> Response {
        bad_request(self)
    }
}

/// The daemon's answer to a request as its value, or the response that says why there
/// is none: the refusal, or 503 while it shuts down.
#[expect(
    clippy::result_large_err,
    reason = "the error is the handler's own answer, returned at once"
)]
fn settled<T, E: Refusal>(result: Result<Result<T, E>, Gone>) -> Result<T, Response> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.response()),
        Err(gone) => Err(shutting_down(gone)),
    }
}

/// Renders the daemon's answer: `ok` on success, the refusal or 503 otherwise.
fn answer<T, E: Refusal>(
    result: Result<Result<T, E>, Gone>,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    settled(result).map_or_else(|refusal| refusal, ok)
}

async fn not_found(uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn with_report(handle: &DaemonHandle, render: impl FnOnce(&Report) -> Response) -> Response {
    match handle.report().await {
        Ok(report) => render(&report),
        Err(gone) => shutting_down(gone),
    }
}

async fn status_all(State(handle): State<DaemonHandle>) -> Response {
    with_report(&handle, |r| text(StatusCode::OK, status::render_status(r))).await
}

async fn status_view(State(handle): State<DaemonHandle>, Path(view): Path<String>) -> Response {
    let render: fn(&Report) -> String = match view.as_str() {
        "targets" => status::render_targets,
        "connections" => status::render_connections,
        "peers" => status::render_peers,
        "ipam" => ipam::render_ipam,
        "dns" => dns::render_dns,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown status view {view:?}: expected targets, connections, peers, ipam or dns"
                ),
            );
        }
    };
    // Empty views stay empty (no lone newline), so `weave status targets | wc -l` is 0.
    with_report(&handle, |r| text(StatusCode::OK, render(r))).await
}

async fn report(State(handle): State<DaemonHandle>) -> Response {
    with_report(&handle, |r| json_response(r, "the report")).await
}

async fn metrics(State(handle): State<DaemonHandle>) -> Response {
    with_report(&handle, |r| {
        (
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::render(r),
        )
            .into_response()
    })
    .await
}

/// The form fields of a POST, from the query string then the body.
fn form_fields(query: Option<&str>, body: &[u8]) -> Result<Vec<(String, String)>, String> {
    let body = std::str::from_utf8(body).map_err(|_| "request body is not UTF-8".to_owned())?;
    let mut fields = form::decode(query.unwrap_or(""))?;
    fields.extend(form::decode(body)?);
    Ok(fields)
}

/// `true`/`false` as Go's strconv.ParseBool reads them.
fn parse_bool(key: &str, value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{key}={value:?}: expected true or false")),
    }
}

/// The `peer` fields, each checked (`host[:port]`), and the flags in `allowed_flags`.
struct PeerForm {
    peers: Vec<String>,
    replace: bool,
}

fn peer_form(query: Option<&str>, body: &[u8], allow_replace: bool) -> Result<PeerForm, String> {
    let mut form = PeerForm {
        peers: Vec::new(),
        replace: false,
    };
    for (key, value) in form_fields(query, body)? {
        match key.as_str() {
            "peer" => {
                // The daemon applies its own port; here only the syntax matters.
                weave_mesh::maker::normalize_target(&value, crate::cli::DEFAULT_PORT)?;
                form.peers.push(value.trim().to_owned());
            }
            "replace" if allow_replace => form.replace = parse_bool(&key, &value)?,
            _ => return Err(format!("unknown form field {key:?}")),
        }
    }
    Ok(form)
}

async fn connect(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match peer_form(query.as_deref(), &body, true) {
        Ok(form) => form,
        Err(why) => return bad_request(why),
    };
    if form.peers.is_empty() && !form.replace {
        return bad_request("no peer given");
    }
    answer(handle.connect(form.peers, form.replace).await, done)
}

async fn forget(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match peer_form(query.as_deref(), &body, false) {
        Ok(form) => form,
        Err(why) => return bad_request(why),
    };
    if form.peers.is_empty() {
        return bad_request("no peer given");
    }
    answer(handle.forget(form.peers).await, done)
}

async fn stop(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let mut reset = false;
    let fields = match form_fields(query.as_deref(), &body) {
        Ok(fields) => fields,
        Err(why) => return bad_request(why),
    };
    for (key, value) in fields {
        match key.as_str() {
            "reset" => match parse_bool(&key, &value) {
                Ok(b) => reset = b,
                Err(why) => return bad_request(why),
            },
            _ => return bad_request(format!("unknown form field {key:?}")),
        }
    }
    do_stop(&handle, reset).await
}

async fn leave(State(handle): State<DaemonHandle>) -> Response {
    do_stop(&handle, true).await
}

async fn do_stop(handle: &DaemonHandle, reset: bool) -> Response {
    match handle.stop(reset).await {
        Ok(()) => text(StatusCode::OK, "stopping"),
        Err(gone) => shutting_down(gone),
    }
}

#[cfg(test)]
mod tests;
