//! The containers' side of a simulated IPAM host, shared by the allocator's own
//! simulation (ipam/src/sim.rs) and the one on the simulated mesh (tests/sim_ipam.rs):
//! the requests waiting for an address and the addresses containers hold, kept up to date
//! from the allocator's answers as the daemon keeps them, and containers going away.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::{IpamEvent, RequestId};

/// Applies `event` if it answers a request: `Allocated` gives the waiting container its
/// address, `Failed` (a failed request or re-claim) leaves it without one. Any other
/// event is returned for the caller.
pub(crate) fn answer(
    pending: &mut BTreeMap<RequestId, String>,
    containers: &mut BTreeMap<String, Ipv4Addr>,
    event: IpamEvent,
) -> Option<IpamEvent> {
    let (request, ident, addr) = match event {
        IpamEvent::Allocated {
            request,
            ident,
            addr,
        } => (request, ident, Some(addr)),
        IpamEvent::Failed { request, ident, .. } => (request, ident, None),
        other => return Some(other),
    };
    if pending.remove(&request).is_some() {
        match addr {
            Some(addr) => containers.insert(ident, addr),
            None => containers.remove(&ident),
        };
    }
    None
}

/// Takes the `k`th container (in order) away: it holds no address any more, and its
/// requests in progress are cancelled (freeing an identity cancels a re-claim too).
/// Returns its identity, for the caller to free.
pub(crate) fn remove_nth(
    pending: &mut BTreeMap<RequestId, String>,
    containers: &mut BTreeMap<String, Ipv4Addr>,
    k: usize,
) -> String {
    let ident = containers.keys().nth(k).cloned().expect("index below len");
    containers.remove(&ident);
    pending.retain(|_, v| *v != ident);
    ident
}
