//! IPAM requests from the HTTP API and the container task to the event loop, which owns
//! the allocator (on the mesh's `"ipam"` gossip channel), and their answers.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::oneshot;
use weave_ipam::Cidr;

use super::{DaemonHandle, Gone, Request};

/// How long an allocation or claim may wait for a ring, space from a donor, or an
/// address's owner before the caller is told to come back later (short in unit tests).
pub(crate) const WAIT_TIMEOUT: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 30 });
/// How long `GET /ring` (`weave prime`) waits for the ring to exist.
pub(crate) const PRIME_TIMEOUT: Duration = WAIT_TIMEOUT;

/// Why an IPAM request failed; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IpamFailure {
    /// The caller's to fix (bad subnet, address in use, rmpeer of a live peer): 400.
    #[error("{0}")]
    Invalid(String),
    /// Nothing allocated to that identity or at that address: 404.
    #[error("{0}")]
    NotFound(String),
    /// Not possible yet (no ring, waiting for space): 503.
    #[error("{0}")]
    Unavailable(String),
    /// The daemon could not do it (the database refused a write): 500.
    #[error("{0}")]
    Failed(String),
}

/// What the API and the container task ask of IPAM.
#[derive(Debug)]
pub(crate) enum IpamRequest {
    /// The lowest free address in `subnet` (the default subnet if `None`) for `ident`;
    /// the same address again if `ident` already has one there. Answers once the
    /// address is persisted, which may mean waiting for a ring or for space.
    Allocate {
        ident: String,
        subnet: Option<Cidr>,
        reply: oneshot::Sender<Result<Ipv4Net, IpamFailure>>,
    },
    /// A specific address for `ident` (answered with it), asking its owner if need be.
    Claim {
        ident: String,
        addr: Ipv4Net,
        reply: oneshot::Sender<Result<Ipv4Net, IpamFailure>>,
    },
    /// The addresses of `ident` in `subnet` (the default subnet if `None`).
    Lookup {
        ident: String,
        subnet: Option<Cidr>,
        reply: oneshot::Sender<Result<Vec<Ipv4Net>, IpamFailure>>,
    },
    /// Every allocation here: identity -> addresses.
    Owned {
        reply: oneshot::Sender<Result<BTreeMap<String, Vec<Ipv4Addr>>, IpamFailure>>,
    },
    /// Frees `addr`, which must belong to `ident`.
    Free {
        ident: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<Result<(), IpamFailure>>,
    },
    /// Frees every address of `ident` and cancels its requests in progress; answers
    /// what was freed.
    FreeIdent {
        ident: String,
        reply: oneshot::Sender<Result<Vec<Ipv4Addr>, IpamFailure>>,
    },
    /// Answers once the ring exists, starting consensus if need be (`weave prime`).
    Prime {
        reply: oneshot::Sender<Result<(), IpamFailure>>,
    },
    /// Takes over every range of a dead peer (by name or nickname); answers Weave's
    /// `N IPs taken over from PEER`.
    Rmpeer {
        peer: String,
        reply: oneshot::Sender<Result<String, IpamFailure>>,
    },
    /// The container task, once it has loaded its registry at start: the addresses its
    /// containers (and `weave:expose`) still hold. IPAM re-claims them, then allocates.
    Reclaim {
        held: Vec<(String, Vec<Ipv4Net>)>,
        reply: oneshot::Sender<Result<(), IpamFailure>>,
    },
}

impl DaemonHandle {
    async fn ipam<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, IpamFailure>>) -> IpamRequest,
    ) -> Result<Result<T, IpamFailure>, Gone> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Ipam(make(reply)))
            .await
            .map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Like [`Self::ipam`], but gives up after `timeout` with 503 and `why`. The daemon
    /// sees the dropped answer and cancels the request.
    async fn ipam_waiting<T>(
        &self,
        timeout: Duration,
        why: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, IpamFailure>>) -> IpamRequest,
    ) -> Result<Result<T, IpamFailure>, Gone> {
        match tokio::time::timeout(timeout, self.ipam(make)).await {
            Ok(answer) => answer,
            Err(_) => Ok(Err(IpamFailure::Unavailable(why.to_owned()))),
        }
    }

    pub(crate) async fn ipam_allocate(
        &self,
        ident: String,
        subnet: Option<Cidr>,
    ) -> Result<Result<Ipv4Net, IpamFailure>, Gone> {
        self.ipam_waiting(WAIT_TIMEOUT, "waiting for IP space", |reply| {
            IpamRequest::Allocate {
                ident,
                subnet,
                reply,
            }
        })
        .await
    }

    pub(crate) async fn ipam_claim(
        &self,
        ident: String,
        addr: Ipv4Net,
    ) -> Result<Result<Ipv4Net, IpamFailure>, Gone> {
        let why = format!("waiting for the owner of {} to hand it over", addr.addr());
        self.ipam_waiting(WAIT_TIMEOUT, &why, |reply| IpamRequest::Claim {
            ident,
            addr,
            reply,
        })
        .await
    }

    pub(crate) async fn ipam_lookup(
        &self,
        ident: String,
        subnet: Option<Cidr>,
    ) -> Result<Result<Vec<Ipv4Net>, IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::Lookup {
            ident,
            subnet,
            reply,
        })
        .await
    }

    pub(crate) async fn ipam_owned(
        &self,
    ) -> Result<Result<BTreeMap<String, Vec<Ipv4Addr>>, IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::Owned { reply }).await
    }

    pub(crate) async fn ipam_free(
        &self,
        ident: String,
        addr: Ipv4Addr,
    ) -> Result<Result<(), IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::Free { ident, addr, reply })
            .await
    }

    pub(crate) async fn ipam_free_ident(
        &self,
        ident: String,
    ) -> Result<Result<Vec<Ipv4Addr>, IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::FreeIdent { ident, reply })
            .await
    }

    pub(crate) async fn ipam_prime(&self) -> Result<Result<(), IpamFailure>, Gone> {
        self.ipam_waiting(
            PRIME_TIMEOUT,
            "the IP allocation ring does not exist yet",
            |reply| IpamRequest::Prime { reply },
        )
        .await
    }

    pub(crate) async fn ipam_rmpeer(
        &self,
        peer: String,
    ) -> Result<Result<String, IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::Rmpeer { peer, reply }).await
    }

    pub(crate) async fn ipam_reclaim(
        &self,
        held: Vec<(String, Vec<Ipv4Net>)>,
    ) -> Result<Result<(), IpamFailure>, Gone> {
        self.ipam(|reply| IpamRequest::Reclaim { held, reply })
            .await
    }
}
