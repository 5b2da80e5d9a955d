//! DNS requests from the HTTP API and the container task to the event loop, which owns
//! the name records (the mesh's `"dns"` gossip channel), and their answers.

use std::net::Ipv4Addr;

use tokio::sync::oneshot;

use super::{DaemonHandle, Gone, Request};

/// The owner of records added with `weave dns-add ADDR -h FQDN` and no container: no
/// container to watch, so they stay until removed (Weave's identity for them).
pub(crate) const EXTERN_OWNER: &str = "weave:extern";

/// A live record, as `weave status dns`, `GET /name` and the report show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsEntry {
    /// Fully qualified, lowercase, with the trailing dot.
    pub(crate) name: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) owner: String,
    /// The peer that added it.
    pub(crate) origin: String,
}

/// What the API and the container task ask of the name records. Names may be given
/// with or without our domain (`db` means `db.weave.local.`); a name with dots that is
/// outside the domain is refused.
#[derive(Debug)]
pub(crate) enum DnsRequest {
    /// Registers `name` at each of `addrs` for `owner` (`PUT /name/{owner}/{ip}`,
    /// `weave dns-add`, `weave attach --name`). Answers how many records are new.
    Add {
        name: String,
        addrs: Vec<Ipv4Addr>,
        owner: String,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Removes our records matching every given criterion (`None` matches anything).
    /// Answers how many went.
    Remove {
        owner: Option<String>,
        addr: Option<Ipv4Addr>,
        name: Option<String>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// The live addresses of `name` (`weave dns-lookup`), sorted.
    Lookup {
        name: String,
        reply: oneshot::Sender<Result<Vec<Ipv4Addr>, String>>,
    },
    /// Every live record known here (`GET /name`).
    Entries {
        reply: oneshot::Sender<Result<Vec<DnsEntry>, String>>,
    },
}

impl DaemonHandle {
    async fn dns<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> DnsRequest,
    ) -> Result<Result<T, String>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Dns(make(reply)))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn dns_add(
        &self,
        name: String,
        addrs: Vec<Ipv4Addr>,
        owner: String,
    ) -> Result<Result<usize, String>, Gone> {
        self.dns(|reply| DnsRequest::Add {
            name,
            addrs,
            owner,
            reply,
        })
        .await
    }

    pub(crate) async fn dns_remove(
        &self,
        owner: Option<String>,
        addr: Option<Ipv4Addr>,
        name: Option<String>,
    ) -> Result<Result<usize, String>, Gone> {
        self.dns(|reply| DnsRequest::Remove {
            owner,
            addr,
            name,
            reply,
        })
        .await
    }

    pub(crate) async fn dns_lookup(
        &self,
        name: String,
    ) -> Result<Result<Vec<Ipv4Addr>, String>, Gone> {
        self.dns(|reply| DnsRequest::Lookup { name, reply }).await
    }

    pub(crate) async fn dns_entries(&self) -> Result<Result<Vec<DnsEntry>, String>, Gone> {
        self.dns(|reply| DnsRequest::Entries { reply }).await
    }
}
