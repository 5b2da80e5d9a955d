//! The forwarder's routes, from the mesh's: a pure function, so it is tested without a
//! mesh.

use std::collections::BTreeMap;

use weave_mesh::PeerName;
use weave_router::RouteSnapshot;

/// The snapshot for `local` from the mesh's data routes: `unicast` maps each reachable
/// peer to its next hop, and `broadcast_hops(origin)` gives where `origin`'s floods go
/// next from here, asked for every peer in `origins` (the live peers, `local` included:
/// that list is where our own floods go).
pub(crate) fn snapshot(
    local: PeerName,
    unicast: &BTreeMap<PeerName, PeerName>,
    origins: impl IntoIterator<Item = PeerName>,
    mut broadcast_hops: impl FnMut(PeerName) -> Vec<PeerName>,
) -> RouteSnapshot {
    let unicast: Vec<(PeerName, PeerName)> = unicast
        .iter()
        .filter(|(dst, hop)| **dst != local && **hop != local)
        .map(|(dst, hop)| (*dst, *hop))
        .collect();
    let broadcast: Vec<(PeerName, Vec<PeerName>)> = origins
        .into_iter()
        .map(|origin| {
            let mut hops = broadcast_hops(origin);
            // Never back to the origin or to ourselves, whatever the tree says.
            hops.retain(|hop| *hop != origin && *hop != local);
            (origin, hops)
        })
        .filter(|(_, hops)| !hops.is_empty())
        .collect();
    // The mesh takes our unicast routes and our own broadcast tree from one search
    // rooted at us, so the peers our floods reach through a next hop are exactly those
    // whose unicast route starts with it.
    let own_hops: Vec<PeerName> = broadcast
        .iter()
        .find(|(origin, _)| *origin == local)
        .map(|(_, hops)| hops.clone())
        .unwrap_or_default();
    let mut snapshot = RouteSnapshot::from_parts(local, unicast.iter().copied(), broadcast);
    for hop in own_hops {
        let reach = unicast
            .iter()
            .filter(|(_, next)| *next == hop)
            .map(|(dst, _)| *dst)
            .collect();
        snapshot.set_own_flood_reach(hop, reach);
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(n: u64) -> PeerName {
        PeerName::from_u64(0x0200_0000_0000 + n)
    }

    #[test]
    fn line_a_b_c_seen_from_b_and_from_a() {
        let (a, b, c) = (p(1), p(2), p(3));
        // From B: both neighbours are their own next hop; a flood from A goes on to C
        // and one from C to A; B's own floods go to both.
        let unicast = BTreeMap::from([(a, a), (c, c), (b, b)]);
        let tree = |origin: PeerName| match origin {
            o if o == a => vec![c],
            o if o == c => vec![a],
            _ => vec![a, c],
        };
        let s = snapshot(b, &unicast, [a, b, c], tree);
        assert_eq!(s.local(), b);
        assert_eq!(s.unicast_next_hop(a), Some(a));
        assert_eq!(s.unicast_next_hop(c), Some(c));
        assert_eq!(s.unicast_next_hop(b), None);
        assert_eq!(s.broadcast_next_hops(a), &[c]);
        assert_eq!(s.broadcast_next_hops(c), &[a]);
        assert_eq!(s.broadcast_next_hops(b), &[a, c]);
        assert_eq!(s.own_flood_reach(a), Some(&[a][..]));
        assert_eq!(s.own_flood_reach(c), Some(&[c][..]));

        // From A: C is reached through B; A's floods go to B only, and A is a leaf of
        // everyone else's tree.
        let unicast = BTreeMap::from([(b, b), (c, b)]);
        let tree = |origin: PeerName| if origin == a { vec![b] } else { vec![] };
        let s = snapshot(a, &unicast, [a, b, c], tree);
        assert_eq!(s.unicast_next_hop(c), Some(b));
        assert_eq!(s.broadcast_next_hops(a), &[b]);
        assert!(s.broadcast_next_hops(b).is_empty());
        assert!(s.broadcast_next_hops(c).is_empty());
        assert_eq!(s.own_flood_reach(b), Some(&[b, c][..]), "C is behind B");
        assert_eq!(s.own_flood_reach(c), None, "not one of our next hops");
    }

    #[test]
    fn nonsense_from_the_tree_is_filtered() {
        let (a, b) = (p(1), p(2));
        let unicast = BTreeMap::from([(b, a)]);
        let s = snapshot(a, &unicast, [a, b], |origin| vec![origin, a, b]);
        assert_eq!(
            s.unicast_next_hop(b),
            None,
            "a next hop of ourselves is no route"
        );
        assert_eq!(s.broadcast_next_hops(a), &[b]);
        assert!(s.broadcast_next_hops(b).is_empty());
    }
}
