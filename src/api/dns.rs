//! DNS over HTTP, in Weave's shape where it had one, plus how DNS shows in `weave
//! status` and the metrics:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /domain` | the DNS domain (`weave.local.`) |
//! | `GET /dns-address` | where containers find the server (`127.0.0.12`, in their namespace) |
//! | `PUT /name/{cid}/{ip}` | form `fqdn=NAME`: register NAME at `ip` for container `cid` (an attached container as `weave ps` names it, or `weave:extern`) |
//! | `DELETE /name`, `/name/{cid}`, `/name/{cid}/{ip}` | optional `fqdn=NAME`: remove our records matching all given (`*` matches any container) |
//! | `GET /name` | every live record as JSON: `[{"Hostname", "Address", "ContainerID", "Origin"}]` |
//! | `POST /dns-add` | `weave dns-add`: `addr=IP` (repeated), `fqdn=NAME`, and at most one of `netns=`, `pid=`, `container=`; defaults from the container (its addresses, its `--name`) |
//! | `POST /dns-remove` | `weave dns-remove`: the same fields; without a container, our records of any owner |
//! | `GET /lookup/{name}` | `weave dns-lookup`: the name's addresses, one per line; 404 if none |
//!
//! Names may be given without the domain (`db` is `db.weave.local.`). Bad input answers
//! 400, DNS off (`--no-dns`) 400 too.

use std::net::Ipv4Addr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::{answer, bad_request, done, form_fields, settled, shutting_down, text};
use crate::control::dns::EXTERN_OWNER;
use crate::control::{DaemonHandle, Gone, PsEntry, Target};
use crate::daemon::dns::WEAVE_DNS_ADDR;
use crate::report::Report;
use crate::report::dns::DnsReport;

/// Adds the DNS endpoints to the control API.
pub(super) fn routes(router: Router<DaemonHandle>) -> Router<DaemonHandle> {
    router
        .route("/domain", get(domain))
        .route("/dns-address", get(dns_address))
        .route("/name", get(entries).delete(remove_all))
        .route("/name/{cid}", axum::routing::delete(remove_owner))
        .route("/name/{cid}/{ip}", put(add).delete(remove_addr))
        .route("/dns-add", post(dns_add))
        .route("/dns-remove", post(dns_remove))
        .route("/lookup/{name}", get(lookup))
}

async fn domain(State(handle): State<DaemonHandle>) -> Response {
    match handle.report().await {
        Ok(report) => match report.dns {
            Some(dns) => text(StatusCode::OK, dns.domain),
            None => bad_request("DNS is off (the daemon was launched with --no-dns)"),
        },
        Err(gone) => shutting_down(gone),
    }
}

async fn dns_address() -> Response {
    text(StatusCode::OK, WEAVE_DNS_ADDR.to_string())
}

/// The `fqdn` field, the only one the `/name` endpoints take.
fn fqdn_field(query: Option<&str>, body: &[u8]) -> Result<Option<String>, String> {
    let mut fqdn = None;
    for (key, value) in form_fields(query, body)? {
        match key.as_str() {
            "fqdn" if !value.is_empty() => fqdn = Some(value),
            "fqdn" => {}
            _ => return Err(format!("unknown form field {key:?}")),
        }
    }
    Ok(fqdn)
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, String> {
    let bare = ip.split('/').next().unwrap_or(ip);
    bare.trim()
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))
}

/// The attached container `reference` names (as `weave ps` does), or why not.
async fn attached(handle: &DaemonHandle, reference: &str) -> Result<Result<PsEntry, String>, Gone> {
    let entries = match handle.ps(vec![reference.to_owned()]).await? {
        Ok(entries) => entries,
        Err(err) => return Ok(Err(err.to_string())),
    };
    let mut found = entries.into_iter().filter(|e| e.id != "weave:expose");
    Ok(match (found.next(), found.next()) {
        (Some(entry), None) => Ok(entry),
        (Some(_), Some(_)) => Err(format!("{reference} names more than one container")),
        (None, _) => Err(format!("{reference} is not an attached container")),
    })
}

async fn add(
    State(handle): State<DaemonHandle>,
    Path((cid, ip)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let (fqdn, addr) = match (fqdn_field(query.as_deref(), &body), parse_ip(&ip)) {
        (Ok(Some(fqdn)), Ok(addr)) => (fqdn, addr),
        (Ok(None), _) => return bad_request("fqdn is required"),
        (Err(why), _) | (_, Err(why)) => return bad_request(why),
    };
    let owner = if cid == EXTERN_OWNER {
        cid
    } else {
        match settled(attached(&handle, &cid).await) {
            Ok(entry) => entry.id,
            Err(refusal) => return refusal,
        }
    };
    answer(handle.dns_add(fqdn, vec![addr], owner).await, done)
}

async fn remove(
    handle: &DaemonHandle,
    cid: Option<String>,
    ip: Option<String>,
    query: Option<&str>,
    body: &[u8],
) -> Response {
    let fqdn = match fqdn_field(query, body) {
        Ok(fqdn) => fqdn,
        Err(why) => return bad_request(why),
    };
    let addr = match ip
        .as_deref()
        .filter(|ip| *ip != "*")
        .map(parse_ip)
        .transpose()
    {
        Ok(addr) => addr,
        Err(why) => return bad_request(why),
    };
    let owner = match cid.filter(|c| c != "*") {
        None => None,
        Some(cid) if cid == EXTERN_OWNER => Some(cid),
        Some(cid) => match attached(handle, &cid).await {
            Ok(Ok(entry)) => Some(entry.id),
            // A container already gone still owns records by the ID given.
            Ok(Err(_)) => Some(cid),
            Err(gone) => return shutting_down(gone),
        },
    };
    answer(handle.dns_remove(owner, addr, fqdn).await, done)
}

async fn remove_all(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    remove(&handle, None, None, query.as_deref(), &body).await
}

async fn remove_owner(
    State(handle): State<DaemonHandle>,
    Path(cid): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    remove(&handle, Some(cid), None, query.as_deref(), &body).await
}

async fn remove_addr(
    State(handle): State<DaemonHandle>,
    Path((cid, ip)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    remove(&handle, Some(cid), Some(ip), query.as_deref(), &body).await
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct JsonEntry {
    hostname: String,
    address: String,
    #[serde(rename = "ContainerID")]
    container_id: String,
    origin: String,
}

async fn entries(State(handle): State<DaemonHandle>) -> Response {
    answer(handle.dns_entries().await, |entries| {
        let list: Vec<JsonEntry> = entries
            .into_iter()
            .map(|e| JsonEntry {
                hostname: e.name,
                address: e.addr.to_string(),
                container_id: e.owner,
                origin: e.origin,
            })
            .collect();
        match serde_json::to_string_pretty(&list) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json + "\n").into_response(),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
}

/// The fields of `POST /dns-add` and `/dns-remove`.
struct DnsForm {
    addrs: Vec<Ipv4Addr>,
    fqdn: Option<String>,
    target: Option<Target>,
}

fn dns_form(query: Option<&str>, body: &[u8]) -> Result<DnsForm, String> {
    let mut form = DnsForm {
        addrs: Vec::new(),
        fqdn: None,
        target: None,
    };
    for (key, value) in form_fields(query, body)? {
        let target = match key.as_str() {
            "addr" => {
                form.addrs.push(parse_ip(&value)?);
                continue;
            }
            "fqdn" => {
                form.fqdn = Some(value).filter(|v| !v.is_empty());
                continue;
            }
            "netns" => Target::netns(&value)?,
            "pid" => Target::pid(&value)?,
            "container" => Target::container(&value)?,
            _ => return Err(format!("unknown form field {key:?}")),
        };
        if form.target.replace(target).is_some() {
            return Err("more than one container given".to_owned());
        }
    }
    Ok(form)
}

/// How `weave ps` is asked for a target.
fn ps_reference(target: &Target) -> String {
    match target {
        Target::Netns(ns) => ns.clone(),
        Target::Pid(pid) => pid.to_string(),
        Target::Container(c) => c.clone(),
    }
}

async fn dns_add(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match dns_form(query.as_deref(), &body) {
        Ok(form) => form,
        Err(why) => return bad_request(why),
    };
    let (owner, addrs, name) = match &form.target {
        None => {
            let Some(fqdn) = form.fqdn else {
                return bad_request("give a container, or -h FQDN with addresses");
            };
            if form.addrs.is_empty() {
                return bad_request("no address given for a name of no container");
            }
            (EXTERN_OWNER.to_owned(), form.addrs, fqdn)
        }
        Some(target) => {
            let entry = match settled(attached(&handle, &ps_reference(target)).await) {
                Ok(entry) => entry,
                Err(refusal) => return refusal,
            };
            let Some(name) = form.fqdn.or(entry.name) else {
                return bad_request(format!(
                    "{target} has no name: give one with -h FQDN (or attach it with --name)"
                ));
            };
            let addrs = if form.addrs.is_empty() {
                entry.addrs.iter().map(ipnet::Ipv4Net::addr).collect()
            } else {
                form.addrs
            };
            (entry.id, addrs, name)
        }
    };
    answer(handle.dns_add(name, addrs, owner).await, done)
}

async fn dns_remove(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let form = match dns_form(query.as_deref(), &body) {
        Ok(form) => form,
        Err(why) => return bad_request(why),
    };
    let owner = match &form.target {
        None if form.fqdn.is_none() => {
            return bad_request("give a container, or -h FQDN");
        }
        None => None,
        Some(target) => match settled(attached(&handle, &ps_reference(target)).await) {
            Ok(entry) => Some(entry.id),
            Err(refusal) => return refusal,
        },
    };
    let addrs: Vec<Option<Ipv4Addr>> = if form.addrs.is_empty() {
        vec![None]
    } else {
        form.addrs.into_iter().map(Some).collect()
    };
    for addr in addrs {
        match settled(
            handle
                .dns_remove(owner.clone(), addr, form.fqdn.clone())
                .await,
        ) {
            Ok(_) => {}
            Err(refusal) => return refusal,
        }
    }
    text(StatusCode::OK, "")
}

async fn lookup(State(handle): State<DaemonHandle>, Path(name): Path<String>) -> Response {
    answer(handle.dns_lookup(name.clone()).await, |addrs| {
        if addrs.is_empty() {
            return text(StatusCode::NOT_FOUND, format!("{name}: not found"));
        }
        let lines: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        text(StatusCode::OK, lines.join("\n"))
    })
}

/// The `Service: dns` block of `weave status`.
pub(crate) fn status_block(dns: &DnsReport) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| out.push_str(&format!("{label:>15}: {value}\n"));
    line("Service", "dns");
    line("Domain", &dns.domain);
    let upstream = if dns.upstream.is_empty() {
        "none".to_owned()
    } else {
        dns.upstream
            .iter()
            .map(|u| u.strip_suffix(":53").unwrap_or(u))
            .collect::<Vec<_>>()
            .join(", ")
    };
    line("Upstream", &upstream);
    line("TTL", &dns.ttl.to_string());
    line("Entries", &dns.entries.len().to_string());
    out
}

/// `weave status dns`: `name  address  container  origin` per live record (the name
/// without the domain), as Weave printed them.
pub(crate) fn render_dns(report: &Report) -> String {
    let Some(dns) = &report.dns else {
        return "DNS is off (the daemon was launched with --no-dns)\n".to_owned();
    };
    let domain = format!(".{}", dns.domain.trim_start_matches('.'));
    let mut out = String::new();
    for entry in &dns.entries {
        let name = entry
            .hostname
            .strip_suffix(&domain)
            .unwrap_or(&entry.hostname);
        // Owners are `weave ps` IDs: Docker's are already the 12-digit short form.
        out.push_str(&format!(
            "{name:<15} {:<15} {:<12} {}\n",
            entry.address, entry.container_id, entry.origin
        ));
    }
    out
}

/// `weave_dns_entries` (records added here, as Weave counted) and query counters.
pub(crate) fn register_metrics(registry: &mut Registry, report: &Report) {
    let Some(dns) = &report.dns else {
        return;
    };
    let entries = Gauge::<i64>::default();
    entries.set(i64::try_from(dns.local_entries).unwrap_or(i64::MAX));
    registry.register(
        "weave_dns_entries",
        "Number of DNS records added on this peer",
        entries,
    );
    let queries = Family::<[(&'static str, String); 1], Counter>::default();
    let q = &dns.queries;
    for (result, value) in [
        ("local", q.local),
        ("cache", q.cache_hits),
        ("forwarded", q.forwarded),
        ("error", q.errors),
        ("dropped", q.dropped),
        ("servfail", q.servfail),
    ] {
        queries
            .get_or_create(&[("result", result.to_owned())])
            .inc_by(value);
    }
    registry.register("weave_dns_queries", "DNS queries by outcome", queries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::dns::DnsEntryReport;

    fn report() -> Report {
        Report {
            dns: Some(DnsReport {
                domain: "weave.local.".to_owned(),
                upstream: vec!["192.0.2.53:53".to_owned(), "192.0.2.54:5353".to_owned()],
                ttl: 1,
                local_entries: 1,
                entries: vec![
                    DnsEntryReport {
                        hostname: "db.weave.local.".to_owned(),
                        origin: "02:00:00:00:00:03".to_owned(),
                        container_id: "0123456789ab".to_owned(),
                        address: "198.18.0.3".to_owned(),
                    },
                    DnsEntryReport {
                        hostname: "web.weave.local.".to_owned(),
                        origin: "02:00:00:00:00:01".to_owned(),
                        container_id: "web".to_owned(),
                        address: "198.18.0.1".to_owned(),
                    },
                ],
                ..DnsReport::default()
            }),
            ..Report::default()
        }
    }

    #[test]
    fn status_block_in_weave_layout() {
        let dns = report().dns.expect("dns");
        assert_eq!(
            status_block(&dns),
            "        Service: dns\n         Domain: weave.local.\n       Upstream: 192.0.2.53, 192.0.2.54:5353\n            TTL: 1\n        Entries: 2\n"
        );
    }

    #[test]
    fn status_dns_lists_records() {
        assert_eq!(
            render_dns(&report()),
            "db              198.18.0.3      0123456789ab 02:00:00:00:00:03\nweb             198.18.0.1      web          02:00:00:00:00:01\n"
        );
    }

    #[test]
    fn metrics_count_local_records() {
        let mut registry = Registry::default();
        register_metrics(&mut registry, &report());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(out.contains("\nweave_dns_entries 1\n"), "{out}");
        assert!(
            out.contains("weave_dns_queries_total{result=\"local\"} 0"),
            "{out}"
        );
    }
}
