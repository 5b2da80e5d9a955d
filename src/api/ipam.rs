//! IPAM over HTTP, in Weave's shape, plus how IPAM shows in `weave status` and the
//! metrics:
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /ip/{id}` | allocate in the default subnet: `a.b.c.d/len` |
//! | `POST /ip/{id}/{ip}/{len}` | allocate in subnet `ip/len`: `a.b.c.d/len` |
//! | `PUT /ip/{id}/{ip}/{len}` | claim address `ip` (prefix `len`) for `id`: empty |
//! | `GET /ip/{id}` | `id`'s addresses in the default subnet, space-separated; 404 if none |
//! | `GET /ip/{id}/{ip}/{len}` | the same in subnet `ip/len` |
//! | `GET /ip` | every allocation here as JSON: `{"id": ["a.b.c.d", ...]}` |
//! | `DELETE /ip/{id}/{ip}` | free that address of `id` |
//! | `DELETE /ip/{id}` | free every address of `id` |
//! | `GET /ring` | once the allocation ring exists (`weave prime`): empty |
//! | `GET /ipinfo/defaultsubnet` | the default subnet, `a.b.c.d/len` |
//! | `GET /ipinfo/tracker` | `none`: no tracker programs routes outside the host (Weave's `awsvpc` is not built) |
//! | `DELETE /peer/{name-or-nickname}` | `rmpeer`: `N IPs taken over from PEER` |
//!
//! Allocations and claims that must wait (for consensus, space from another peer, or an
//! address's owner) hold the request up to 30 s, then answer 503 `waiting for IP
//! space`. Bad input answers 400, nothing found 404, IPAM off 400.

use std::net::Ipv4Addr;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use ipnet::Ipv4Net;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use weave_ipam::{Cidr, IpamStatus, OwnerStatus};

use super::{Refusal, answer, bad_request, done, json_response, one_line, shutting_down, text};
use crate::control::DaemonHandle;
use crate::control::ipam::IpamFailure;
use crate::daemon::ipam::parse_cidr;
use crate::report::Report;
use crate::report::ipam::IpamReport;

/// Adds the IPAM endpoints to the control API.
pub(super) fn routes(router: Router<DaemonHandle>) -> Router<DaemonHandle> {
    router
        .route("/ip", get(owned))
        .route("/ip/{id}", post(allocate).get(lookup).delete(free_ident))
        .route(
            "/ip/{id}/{ip}/{len}",
            post(allocate_in).put(claim).get(lookup_in),
        )
        .route("/ip/{id}/{ip}", axum::routing::delete(free))
        .route("/ring", get(prime))
        .route("/ipinfo/defaultsubnet", get(default_subnet))
        .route("/ipinfo/tracker", get(tracker))
        .route("/peer/{peer}", axum::routing::delete(rmpeer))
}

impl Refusal for IpamFailure {
    fn response(self) -> Response {
        let code = match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        one_line(code, &self)
    }
}

/// `{ip}/{len}` of a path as a subnet (host bits zero).
fn subnet(ip: &str, len: &str) -> Result<Cidr, String> {
    parse_cidr(&format!("{ip}/{len}"))
}

/// `{ip}/{len}` of a path as an address with its prefix.
fn address(ip: &str, len: &str) -> Result<Ipv4Net, String> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| format!("{len:?} is not a prefix length (0 to 32)"))?;
    Ipv4Net::new(addr, len).map_err(|e| e.to_string())
}

fn addresses(nets: &[Ipv4Net]) -> Response {
    let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
    text(StatusCode::OK, list.join(" "))
}

async fn allocate(State(handle): State<DaemonHandle>, Path(id): Path<String>) -> Response {
    answer(handle.ipam_allocate(id, None).await, |net| {
        text(StatusCode::OK, net.to_string())
    })
}

async fn allocate_in(
    State(handle): State<DaemonHandle>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Response {
    let subnet = match subnet(&ip, &len) {
        Ok(subnet) => subnet,
        Err(why) => return bad_request(why),
    };
    answer(handle.ipam_allocate(id, Some(subnet)).await, |net| {
        text(StatusCode::OK, net.to_string())
    })
}

async fn claim(
    State(handle): State<DaemonHandle>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Response {
    let addr = match address(&ip, &len) {
        Ok(addr) => addr,
        Err(why) => return bad_request(why),
    };
    answer(handle.ipam_claim(id, addr).await, done)
}

async fn lookup(State(handle): State<DaemonHandle>, Path(id): Path<String>) -> Response {
    answer(handle.ipam_lookup(id, None).await, |nets| addresses(&nets))
}

async fn lookup_in(
    State(handle): State<DaemonHandle>,
    Path((id, ip, len)): Path<(String, String, String)>,
) -> Response {
    let subnet = match subnet(&ip, &len) {
        Ok(subnet) => subnet,
        Err(why) => return bad_request(why),
    };
    answer(handle.ipam_lookup(id, Some(subnet)).await, |nets| {
        addresses(&nets)
    })
}

async fn owned(State(handle): State<DaemonHandle>) -> Response {
    answer(handle.ipam_owned().await, |owned| {
        json_response(&owned, "the answer")
    })
}

async fn free(
    State(handle): State<DaemonHandle>,
    Path((id, ip)): Path<(String, String)>,
) -> Response {
    let Ok(addr) = ip.parse::<Ipv4Addr>() else {
        return bad_request(format!("{ip:?} is not an IPv4 address"));
    };
    answer(handle.ipam_free(id, addr).await, done)
}

async fn free_ident(State(handle): State<DaemonHandle>, Path(id): Path<String>) -> Response {
    answer(handle.ipam_free_ident(id).await, done)
}

async fn prime(State(handle): State<DaemonHandle>) -> Response {
    match handle.ipam_prime().await {
        Ok(Err(IpamFailure::Unavailable(why))) => {
            // Say what it is waiting for (`awaiting consensus (quorum: 2, known: 1)`).
            let status = match handle.report().await {
                Ok(report) => report.ipam.map(|i| i.status).unwrap_or_default(),
                Err(gone) => return shutting_down(gone),
            };
            text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}: {status}"))
        }
        other => answer(other, done),
    }
}

/// Weave's `GET /ipinfo/defaultsubnet` (the CNI plugin asks it).
async fn default_subnet(State(handle): State<DaemonHandle>) -> Response {
    match handle.report().await {
        Ok(report) => match report.ipam {
            Some(ipam) => text(StatusCode::OK, ipam.default_subnet),
            None => bad_request(crate::daemon::ipam::DISABLED),
        },
        Err(gone) => shutting_down(gone),
    }
}

/// Weave's `GET /ipinfo/tracker`: which range tracker mirrors allocations outside the
/// host. Weave's clients only ask whether it is `awsvpc` (routes in the AWS VPC table
/// instead of an overlay); ours is always `none`.
async fn tracker(State(handle): State<DaemonHandle>) -> Response {
    match handle.report().await {
        Ok(report) if report.ipam.is_some() => text(StatusCode::OK, "none"),
        Ok(_) => bad_request(crate::daemon::ipam::DISABLED),
        Err(gone) => shutting_down(gone),
    }
}

async fn rmpeer(State(handle): State<DaemonHandle>, Path(peer): Path<String>) -> Response {
    answer(handle.ipam_rmpeer(peer).await, |said| {
        text(StatusCode::OK, said)
    })
}

/// The report's IPAM section as the crate's status (for its Weave-layout rendering).
fn as_status(ipam: &IpamReport) -> IpamStatus {
    let cidr = |s: &str| {
        s.parse::<Cidr>()
            .unwrap_or_else(|_| "0.0.0.0/0".parse().expect("a valid CIDR literal"))
    };
    IpamStatus {
        status: ipam.status.clone(),
        range: cidr(&ipam.range),
        default_subnet: cidr(&ipam.default_subnet),
        owners: ipam
            .owners
            .iter()
            .filter_map(|o| {
                Some(OwnerStatus {
                    peer: o.peer.parse().ok()?,
                    nickname: Some(o.nickname.clone()).filter(|n| !n.is_empty()),
                    addresses: o.addresses,
                    percent: o.percent,
                    active: o.active,
                    reachable: o.reachable,
                    local: o.local,
                })
            })
            .collect(),
        conflicts: ipam.conflicts,
    }
}

/// The `Service: ipam` block of `weave status` (Weave's layout), with warnings.
pub(crate) fn status_block(ipam: &IpamReport) -> String {
    let mut out = as_status(ipam).to_string();
    let mut warn = |what: String| out.push_str(&format!("{:>15}: {what}\n", "Warning"));
    if ipam.conflicts > 0 {
        warn(format!(
            "{} conflicting ring updates contained (see weave report)",
            ipam.conflicts
        ));
    }
    if !ipam.disputed.is_empty() {
        warn(format!(
            "{} addresses may be in use twice (see weave report)",
            ipam.disputed.len()
        ));
    }
    if let Some(err) = &ipam.persist_error {
        warn(format!("cannot persist allocations: {err}"));
    }
    out
}

/// `weave status ipam`: one line per owner (`name(nick)  N IPs (x% of total) (k
/// active)`, `- unreachable!` for owners gone from the topology); before the ring
/// exists, what it is waiting for.
pub(crate) fn render_ipam(report: &Report) -> String {
    let Some(ipam) = &report.ipam else {
        return "IPAM is disabled (launched with --ipalloc-range '')\n".to_owned();
    };
    if ipam.owners.is_empty() {
        return format!("{}\n", ipam.status);
    }
    as_status(ipam).owner_lines()
}

/// `weave_ips{state="local-used"}`, `weave_max_ips`, `weave_ipam_pending_allocates`,
/// `weave_ipam_pending_claims`, `weave_ipam_unreachable_count`,
/// `weave_ipam_unreachable_percentage`, `weave_ipam_conflicts_total`.
pub(crate) fn register_metrics(registry: &mut Registry, report: &Report) {
    let Some(ipam) = &report.ipam else {
        return;
    };
    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let ips = Family::<[(&'static str, String); 1], Gauge>::default();
    ips.get_or_create(&[("state", "local-used".to_owned())])
        .set(i64::try_from(ipam.active_ips).unwrap_or(i64::MAX));
    registry.register("weave_ips", "Number of IP addresses", ips);
    registry.register(
        "weave_max_ips",
        "Size of the IP allocation range",
        gauge(ipam.range_num_ips),
    );
    registry.register(
        "weave_ipam_pending_allocates",
        "Allocations waiting for a ring or for space",
        gauge(ipam.pending_allocates),
    );
    registry.register(
        "weave_ipam_pending_claims",
        "Claims waiting for the address's owner",
        gauge(ipam.pending_claims),
    );
    registry.register(
        "weave_ipam_unreachable_count",
        "Owners of IP ranges that are not reachable",
        gauge(ipam.unreachable_owners),
    );
    let percentage = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    percentage.set(if ipam.range_num_ips == 0 {
        0.0
    } else {
        ipam.unreachable_ips as f64 * 100.0 / ipam.range_num_ips as f64
    });
    registry.register(
        "weave_ipam_unreachable_percentage",
        "Share of the IP range owned by unreachable peers",
        percentage,
    );
    let conflicts = Counter::<u64>::default();
    conflicts.inc_by(ipam.conflicts);
    registry.register(
        "weave_ipam_conflicts",
        "Conflicting IP ring updates seen and contained",
        conflicts,
    );
}

#[cfg(test)]
mod tests;
