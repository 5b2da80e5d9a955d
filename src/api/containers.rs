//! Container plumbing over HTTP, in the shape of Weave's commands:
//!
//! | method and path | fields | answer |
//! |---|---|---|
//! | `POST /attach` | `addr=CIDR` (repeated), one of `netns=NAME\|PATH`, `pid=PID`, `container=ID\|NAME`; `name=NAME`, `without-dns=true`, `no-multicast-route=true` | the container's addresses, space-separated (JSON: its `ps` entry) |
//! | `POST /detach` | `addr=CIDR` (repeated; none = all and the interface), the target | empty |
//! | `POST /expose` | `addr=CIDR` (repeated) | every exposed address |
//! | `POST /hide` | `addr=CIDR` (repeated; none = all) | empty |
//! | `GET /ps` | `target=...` (repeated; none = all), `format=json` | `weave ps` lines, or JSON |
//!
//! Fields come as a form (body or query string) or as a JSON object (`Content-Type:
//! application/json`; arrays for repeated fields, `_` or `-` in names). An answer is
//! JSON when the request body was, or when `format=json` or `Accept: application/json`
//! asks for it. Bad input gets 400 with a one-line reason; a host that refuses, 500.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::{Refusal, answer, bad_request, done, form, json_response, one_line, parse_bool, text};
use crate::control::{
    AttachSpec, DaemonHandle, DetachSpec, PlumbError, Target, check_container_name, parse_cidr,
    show_ips,
};

/// Adds the container endpoints to the control API.
pub(super) fn routes(router: Router<DaemonHandle>) -> Router<DaemonHandle> {
    router
        .route("/attach", post(attach))
        .route("/detach", post(detach))
        .route("/expose", post(expose))
        .route("/hide", post(hide))
        .route("/ps", get(ps))
}

/// A request's fields, and whether the caller speaks JSON.
struct Fields {
    pairs: Vec<(String, String)>,
    json: bool,
}

/// Reads the query string and the body (a form, or JSON by its content type).
fn fields(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Fields, String> {
    let mut pairs = form::decode(query.unwrap_or(""))?;
    let content_type = header_text(headers, header::CONTENT_TYPE);
    let json_body = content_type.starts_with("application/json");
    if json_body {
        pairs.extend(json_pairs(body)?);
    } else {
        let body = std::str::from_utf8(body).map_err(|_| "request body is not UTF-8".to_owned())?;
        pairs.extend(form::decode(body)?);
    }
    for (key, _) in &mut pairs {
        *key = key.replace('_', "-");
    }
    let mut json = json_body || header_text(headers, header::ACCEPT).contains("application/json");
    let mut rest = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        if key == "format" {
            json = match value.as_str() {
                "json" => true,
                "text" => false,
                _ => return Err(format!("format={value:?}: expected json or text")),
            };
        } else {
            rest.push((key, value));
        }
    }
    Ok(Fields { pairs: rest, json })
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// A flat JSON object as key/value pairs; arrays repeat their key.
fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    use serde_json::Value;
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("the JSON body must be an object".to_owned());
    };
    let scalar = |key: &str, v: &Value| -> Result<Option<String>, String> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            Value::Number(n) => Ok(Some(n.to_string())),
            _ => Err(format!("{key:?}: expected a string, number or boolean")),
        }
    };
    let mut pairs = Vec::new();
    for (key, value) in &object {
        let values = match value {
            Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for v in values {
            if let Some(s) = scalar(key, v)? {
                pairs.push((key.clone(), s));
            }
        }
    }
    Ok(pairs)
}

/// What the container endpoints share: addresses and at most one target.
#[derive(Default)]
struct Common {
    addrs: Vec<Ipv4Net>,
    target: Option<Target>,
}

impl Common {
    /// Takes `addr` and the target fields; returns false for any other key.
    fn take(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let target = match key {
            "addr" => {
                self.addrs.push(parse_cidr(value)?);
                return Ok(true);
            }
            "netns" => Target::netns(value)?,
            "pid" => Target::pid(value)?,
            "container" => Target::container(value)?,
            _ => return Ok(false),
        };
        if let Some(first) = &self.target {
            return Err(format!("two targets given: {first} and {target}"));
        }
        self.target = Some(target);
        Ok(true)
    }

    fn target(&mut self) -> Result<Target, String> {
        self.target
            .take()
            .ok_or_else(|| "no target: give netns=NAME, pid=PID or container=ID".to_owned())
    }
}

fn unknown(key: &str) -> String {
    format!("unknown form field {key:?}")
}

fn attach_spec(fields: Vec<(String, String)>) -> Result<AttachSpec, String> {
    let mut common = Common::default();
    let (mut name, mut dns, mut multicast_route) = (None, true, true);
    for (key, value) in fields {
        if common.take(&key, &value)? {
            continue;
        }
        match key.as_str() {
            "name" => name = Some(check_container_name(&value)?),
            "without-dns" => dns = !parse_bool(&key, &value)?,
            "no-multicast-route" => multicast_route = !parse_bool(&key, &value)?,
            _ => return Err(unknown(&key)),
        }
    }
    Ok(AttachSpec {
        target: common.target()?,
        addrs: common.addrs,
        name,
        dns,
        multicast_route,
    })
}

fn detach_spec(fields: Vec<(String, String)>) -> Result<DetachSpec, String> {
    let mut common = Common::default();
    for (key, value) in fields {
        if !common.take(&key, &value)? {
            return Err(unknown(&key));
        }
    }
    Ok(DetachSpec {
        target: common.target()?,
        addrs: common.addrs,
    })
}

fn addrs_only(fields: Vec<(String, String)>) -> Result<Vec<Ipv4Net>, String> {
    let mut addrs = Vec::new();
    for (key, value) in fields {
        match key.as_str() {
            "addr" => addrs.push(parse_cidr(&value)?),
            _ => return Err(unknown(&key)),
        }
    }
    Ok(addrs)
}

/// `value` as JSON if the client asked for it (`json`), else as `plain` renders it.
fn json_or_text<T: Serialize>(json: bool, value: &T, plain: impl FnOnce(&T) -> String) -> Response {
    if json {
        json_response(value, "the answer")
    } else {
        text(StatusCode::OK, plain(value))
    }
}

impl Refusal for PlumbError {
    fn response(self) -> Response {
        let code = match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        one_line(code, &self)
    }
}

async fn attach(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (spec, json) = match fields(query.as_deref(), &headers, &body)
        .and_then(|f| Ok((attach_spec(f.pairs)?, f.json)))
    {
        Ok(parsed) => parsed,
        Err(why) => return bad_request(why),
    };
    answer(handle.attach(spec).await, |entry| {
        json_or_text(json, &entry, |entry| show_ips(&entry.addrs))
    })
}

async fn detach(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let spec = match fields(query.as_deref(), &headers, &body).and_then(|f| detach_spec(f.pairs)) {
        Ok(spec) => spec,
        Err(why) => return bad_request(why),
    };
    answer(handle.detach(spec).await, done)
}

async fn expose(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (addrs, json) = match fields(query.as_deref(), &headers, &body)
        .and_then(|f| Ok((addrs_only(f.pairs)?, f.json)))
    {
        Ok(parsed) => parsed,
        Err(why) => return bad_request(why),
    };
    answer(handle.expose(addrs).await, |exposed| {
        json_or_text(json, &exposed, |addrs| show_ips(addrs))
    })
}

async fn hide(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let addrs = match fields(query.as_deref(), &headers, &body).and_then(|f| addrs_only(f.pairs)) {
        Ok(addrs) => addrs,
        Err(why) => return bad_request(why),
    };
    answer(handle.hide(addrs).await, done)
}

async fn ps(
    State(handle): State<DaemonHandle>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let parsed = fields(query.as_deref(), &headers, b"").and_then(|f| {
        let mut filter = Vec::new();
        for (key, value) in f.pairs {
            match key.as_str() {
                "target" => filter.push(value),
                _ => return Err(unknown(&key)),
            }
        }
        Ok((filter, f.json))
    });
    let (filter, json) = match parsed {
        Ok(parsed) => parsed,
        Err(why) => return bad_request(why),
    };
    answer(handle.ps(filter).await, |entries| {
        json_or_text(json, &entries, |entries| crate::status::render_ps(entries))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::show_addrs;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn attach_fields() {
        let spec = attach_spec(pairs(&[
            ("addr", "198.18.0.5/15"),
            ("addr", "ip:198.19.0.5/16"),
            ("netns", "web"),
            ("name", "web.weave.local"),
            ("without-dns", "true"),
            ("no-multicast-route", "1"),
        ]))
        .expect("valid");
        assert_eq!(
            spec,
            AttachSpec {
                target: Target::Netns("web".into()),
                addrs: vec![
                    "198.18.0.5/15".parse().expect("literal"),
                    "198.19.0.5/16".parse().expect("literal")
                ],
                name: Some("web.weave.local".into()),
                dns: false,
                multicast_route: false,
            }
        );
        let bare = attach_spec(pairs(&[("pid", "42")])).expect("valid");
        assert_eq!(bare.target, Target::Pid(42));
        assert!(bare.dns && bare.multicast_route && bare.addrs.is_empty());
        for (bad, why) in [
            (&[("addr", "198.18.0.5/15")][..], "no target"),
            (
                &[("netns", "a"), ("pid", "3")],
                "two targets given: netns a and pid 3",
            ),
            (&[("pid", "0")], "\"0\" is not a process ID"),
            (&[("pid", "-4")], "\"-4\" is not a process ID"),
            (&[("container", "a b")], "\"a b\" is not a Docker container"),
            (
                &[("netns", "x"), ("addr", "198.18.0.0/15")],
                "198.18.0.0/15: 198.18.0.0 is the network address",
            ),
            (
                &[("netns", "x"), ("addr", "nonsense")],
                "nonsense is not an address",
            ),
            (
                &[("netns", "x"), ("name", "no spaces")],
                "\"no spaces\" is not a usable DNS name",
            ),
            (
                &[("netns", "x"), ("colour", "red")],
                "unknown form field \"colour\"",
            ),
            (
                &[("netns", "x"), ("without-dns", "maybe")],
                "without-dns=\"maybe\"",
            ),
        ] {
            let err = attach_spec(pairs(bad)).expect_err("invalid");
            assert!(err.starts_with(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn json_bodies_become_fields() {
        let got = json_pairs(
            br#"{"addr": ["198.18.0.5/15", "198.18.0.6/15"], "pid": 42, "without_dns": true, "name": null}"#,
        )
        .expect("valid");
        assert_eq!(
            got,
            pairs(&[
                ("addr", "198.18.0.5/15"),
                ("addr", "198.18.0.6/15"),
                ("pid", "42"),
                ("without_dns", "true"),
            ])
        );
        assert!(json_pairs(b"[1]").is_err());
        assert!(json_pairs(b"{\"addr\": {\"x\": 1}}").is_err());
        assert!(json_pairs(b"{").is_err());
    }

    #[test]
    fn detach_and_address_fields() {
        let spec =
            detach_spec(pairs(&[("container", "/db"), ("addr", "198.18.0.5/15")])).expect("valid");
        assert_eq!(spec.target, Target::Container("db".into()));
        assert_eq!(show_addrs(&spec.addrs), "198.18.0.5/15");
        assert!(detach_spec(pairs(&[("name", "x"), ("pid", "3")])).is_err());
        assert_eq!(
            addrs_only(pairs(&[("addr", "198.18.0.9/15")]))
                .expect("valid")
                .len(),
            1
        );
        assert!(addrs_only(pairs(&[("netns", "x")])).is_err());
    }
}

/// The endpoints over real TCP against the fake daemon loop.
#[cfg(test)]
mod http_tests {
    use super::super::client::Client;
    use super::super::fake::{BROKEN_NETNS, Call, FakeDaemon, MISSING_NETNS};
    use crate::control::{AttachSpec, DetachSpec, Target};
    use crate::report::Report;

    fn net(s: &str) -> ipnet::Ipv4Net {
        s.parse().expect("literal")
    }

    /// A raw request, for bodies and headers the CLI's client does not send.
    async fn raw(addr: std::net::SocketAddr, request: String) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("read");
        let answer = super::super::client::parse_response(&answer).expect("HTTP answer");
        (
            answer.status,
            answer.content_type.unwrap_or_default(),
            answer.body,
        )
    }

    fn json_post(path: &str, body: &str) -> String {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn attach_detach_expose_hide_ps() {
        let daemon = FakeDaemon::start(Report::default()).await;
        let client = Client::new(daemon.http);
        let answer = client
            .post_form(
                "/attach",
                &[
                    ("addr", "198.18.0.1/15"),
                    ("addr", "198.19.0.1/16"),
                    ("netns", "web"),
                    ("name", "web"),
                ],
            )
            .await
            .expect("request");
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "198.18.0.1 198.19.0.1\n")
        );
        let text = client.get("/ps").await.expect("request");
        assert_eq!(
            text.body,
            "netns web 02:00:00:00:00:aa 198.18.0.1/15 198.19.0.1/16\n"
        );
        let json = client.get("/ps?format=json").await.expect("request");
        assert_eq!(json.content_type.as_deref(), Some("application/json"));
        let entries: Vec<crate::control::PsEntry> = serde_json::from_str(&json.body).expect("JSON");
        assert_eq!(entries[0].name.as_deref(), Some("web"));
        let filtered = client
            .get_with("/ps", &[("target", "other")])
            .await
            .expect("request");
        assert_eq!((filtered.status, filtered.body.as_str()), (200, ""));

        // A JSON body gets a JSON answer.
        let (code, kind, body) = raw(
            daemon.http,
            json_post(
                "/attach",
                r#"{"addr": "198.18.0.2/15", "pid": 42, "without_dns": true}"#,
            ),
        )
        .await;
        assert_eq!((code, kind.as_str()), (200, "application/json"), "{body}");
        assert!(
            body.contains("\"Addrs\": [\n    \"198.18.0.2/15\""),
            "{body}"
        );

        let ok = client
            .post_form("/detach", &[("container", "db")])
            .await
            .expect("request");
        assert_eq!((ok.status, ok.body.as_str()), (200, ""));
        let exposed = client
            .post_form("/expose", &[("addr", "198.18.0.100/15")])
            .await
            .expect("request");
        assert_eq!(exposed.body, "198.18.0.100\n");
        assert_eq!(
            client
                .post_form("/hide", &[])
                .await
                .expect("request")
                .status,
            200
        );
        assert_eq!(
            daemon.calls(),
            [
                Call::Attach(AttachSpec {
                    target: Target::Netns("web".into()),
                    addrs: vec![net("198.18.0.1/15"), net("198.19.0.1/16")],
                    name: Some("web".into()),
                    dns: true,
                    multicast_route: true,
                }),
                Call::Ps(vec![]),
                Call::Ps(vec![]),
                Call::Ps(vec!["other".into()]),
                Call::Attach(AttachSpec {
                    target: Target::Pid(42),
                    addrs: vec![net("198.18.0.2/15")],
                    name: None,
                    dns: false,
                    multicast_route: true,
                }),
                Call::Detach(DetachSpec {
                    target: Target::Container("db".into()),
                    addrs: vec![],
                }),
                Call::Expose(vec![net("198.18.0.100/15")]),
                Call::Hide(vec![]),
            ]
        );
    }

    #[tokio::test]
    async fn refusals_are_one_line_with_the_right_status() {
        let daemon = FakeDaemon::start(Report::default()).await;
        let client = Client::new(daemon.http);
        for (path, form, status, reason) in [
            (
                "/attach",
                &[("addr", "198.18.0.1/15"), ("netns", MISSING_NETNS)][..],
                400,
                "netns missing does not exist\n",
            ),
            (
                "/attach",
                &[("addr", "198.18.0.1/15"), ("netns", BROKEN_NETNS)],
                500,
                "netlink: creating veth: Operation not permitted (os error 1) second line\n",
            ),
            (
                "/detach",
                &[("netns", MISSING_NETNS)],
                400,
                "netns missing does not exist\n",
            ),
            (
                "/attach",
                &[("addr", "198.18.0.256/15"), ("netns", "x")],
                400,
                "198.18.0.256/15 is not an address in CIDR form (like 198.18.0.5/15)\n",
            ),
            (
                "/attach",
                &[("addr", "0.1.2.3/8"), ("netns", "x")],
                400,
                "0.1.2.3/8: 0.1.2.3 is in 0.0.0.0/8 (this network), not a host address\n",
            ),
            (
                "/expose",
                &[("addr", "198.18.0.1/15"), ("netns", "x")],
                400,
                "unknown form field \"netns\"\n",
            ),
            (
                "/detach",
                &[],
                400,
                "no target: give netns=NAME, pid=PID or container=ID\n",
            ),
        ] {
            let answer = client.post_form(path, form).await.expect("request");
            assert_eq!(
                (answer.status, answer.body.as_str()),
                (status, reason),
                "{path} {form:?}"
            );
        }
        let (code, _, body) = raw(daemon.http, json_post("/attach", "{\"pid\": [1, {}]}")).await;
        assert_eq!(code, 400);
        assert_eq!(body, "\"pid\": expected a string, number or boolean\n");
        let bad_query = client.get("/ps?format=xml").await.expect("request");
        assert_eq!(
            (bad_query.status, bad_query.body.as_str()),
            (400, "format=\"xml\": expected json or text\n")
        );
        // Commands are not on the status port.
        let answer = Client::new(daemon.status)
            .get("/ps")
            .await
            .expect("request");
        assert_eq!(answer.status, 404);
    }

    #[tokio::test]
    async fn a_daemon_going_away_gives_503() {
        let daemon = FakeDaemon::start_with(Report::default(), true).await;
        let answer = Client::new(daemon.http)
            .post_form("/attach", &[("addr", "198.18.0.1/15"), ("pid", "4")])
            .await
            .expect("request");
        assert_eq!(answer.status, 503);
    }
}
