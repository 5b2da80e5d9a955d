//! Routes over the topology: unicast next hops and per-source broadcast trees.
//!
//! Every peer must compute the same trees from the same topology, or broadcasts loop or
//! get lost; so the search is a breadth-first search in a fixed order (neighbours by
//! name) and a broadcast from `origin` follows the tree of first discoveries of a search
//! rooted at `origin`: a peer forwards to exactly the peers it discovered, so in a stable
//! topology everyone receives each broadcast exactly once.
//!
//! An edge counts only if both ends report the connection. Data (frames) uses only edges
//! both ends call established (the UDP path works both ways); gossip uses all of them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::peer::PeerName;
use crate::topology::Topology;

/// Which connections a route may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// Connections both ends report as established: for Ethernet frames.
    Data,
    /// Every connection both ends report: for gossip.
    Gossip,
}

/// The usable connections of one kind, as an adjacency list indexed by position in name
/// order, built once per topology epoch so each search is a plain array walk.
#[derive(Debug, Default)]
struct Graph {
    names: Vec<PeerName>,
    index: BTreeMap<PeerName, usize>,
    /// Neighbours of each peer, in name order.
    adjacency: Vec<Vec<usize>>,
}

impl Graph {
    fn build(topology: &Topology, kind: RouteKind) -> Self {
        let names: Vec<PeerName> = topology.records().map(|r| r.name).collect();
        let index: BTreeMap<PeerName, usize> =
            names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let adjacency = topology
            .records()
            .map(|record| {
                record
                    .connections()
                    .filter(|(remote, _)| usable(topology, kind, record.name, *remote))
                    .filter_map(|(remote, _)| index.get(&remote).copied())
                    .collect()
            })
            .collect();
        Self {
            names,
            index,
            adjacency,
        }
    }

    /// Breadth-first search from `root` in the deterministic order; every reached peer
    /// but the root with the peer that discovered it, in discovery order.
    fn search(&self, root: PeerName) -> Vec<(usize, usize)> {
        let mut discovered = Vec::new();
        let Some(&root) = self.index.get(&root) else {
            return discovered;
        };
        let mut seen = vec![false; self.names.len()];
        seen[root] = true;
        let mut queue = VecDeque::from([root]);
        while let Some(peer) = queue.pop_front() {
            for &remote in &self.adjacency[peer] {
                if !seen[remote] {
                    seen[remote] = true;
                    discovered.push((remote, peer));
                    queue.push_back(remote);
                }
            }
        }
        discovered
    }
}

/// Routes as of one topology epoch, computed lazily and cached.
#[derive(Debug, Default)]
pub struct Routes {
    epoch: Option<u64>,
    graphs: BTreeMap<RouteKind, Graph>,
    unicast: BTreeMap<RouteKind, BTreeMap<PeerName, PeerName>>,
    broadcast: BTreeMap<(RouteKind, PeerName), Vec<PeerName>>,
}

impl Routes {
    /// Forgets cached routes if the topology changed since they were computed.
    fn refresh(&mut self, topology: &Topology) {
        if self.epoch != Some(topology.epoch()) {
            self.epoch = Some(topology.epoch());
            self.graphs.clear();
            self.unicast.clear();
            self.broadcast.clear();
        }
    }

    fn graph(&mut self, topology: &Topology, kind: RouteKind) -> &Graph {
        self.refresh(topology);
        self.graphs
            .entry(kind)
            .or_insert_with(|| Graph::build(topology, kind))
    }

    /// Peers reachable from us over `kind` connections, ourselves included.
    pub fn reachable(&mut self, topology: &Topology, kind: RouteKind) -> BTreeSet<PeerName> {
        let local = topology.local();
        let graph = self.graph(topology, kind);
        let mut reached: BTreeSet<PeerName> = graph
            .search(local)
            .into_iter()
            .map(|(peer, _)| graph.names[peer])
            .collect();
        reached.insert(local);
        reached
    }

    /// The neighbour through which to reach `dst`, if it is reachable.
    pub fn next_hop(
        &mut self,
        topology: &Topology,
        kind: RouteKind,
        dst: PeerName,
    ) -> Option<PeerName> {
        self.unicast_table(topology, kind).get(&dst).copied()
    }

    /// For every reachable peer, the neighbour through which to reach it.
    pub fn unicast_table(
        &mut self,
        topology: &Topology,
        kind: RouteKind,
    ) -> &BTreeMap<PeerName, PeerName> {
        self.graph(topology, kind);
        let graph = &self.graphs[&kind];
        self.unicast.entry(kind).or_insert_with(|| {
            let local = topology.local();
            let mut first_hop = vec![usize::MAX; graph.names.len()];
            let mut table = BTreeMap::new();
            for (peer, parent) in graph.search(local) {
                let hop = if graph.names[parent] == local {
                    peer
                } else {
                    first_hop[parent]
                };
                first_hop[peer] = hop;
                table.insert(graph.names[peer], graph.names[hop]);
            }
            table
        })
    }

    /// The neighbours to which we forward a broadcast that `origin` started (empty if we
    /// are a leaf of its tree, or not in it).
    pub fn broadcast_hops(
        &mut self,
        topology: &Topology,
        kind: RouteKind,
        origin: PeerName,
    ) -> &[PeerName] {
        self.graph(topology, kind);
        let graph = &self.graphs[&kind];
        let local = topology.local();
        self.broadcast.entry((kind, origin)).or_insert_with(|| {
            let Some(&me) = graph.index.get(&local) else {
                return Vec::new();
            };
            graph
                .search(origin)
                .into_iter()
                .filter(|(_, parent)| *parent == me)
                .map(|(peer, _)| graph.names[peer])
                .collect()
        })
    }
}

/// Whether `from` and `to` are joined by a connection usable for `kind`.
pub fn usable(topology: &Topology, kind: RouteKind, from: PeerName, to: PeerName) -> bool {
    let (Some(a), Some(b)) = (topology.record(from), topology.record(to)) else {
        return false;
    };
    match (a.connection(to), b.connection(from)) {
        (Some(ab), Some(ba)) => kind == RouteKind::Gossip || (ab.established && ba.established),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::topology::{ConnectionInfo, Incarnation};

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    /// Every peer's view of the same topology (`edges` both ways, all established but
    /// `half_open`, which only the first end reports established).
    fn views(peers: u64, edges: &[(u64, u64)], half_open: &[(u64, u64)]) -> Vec<Topology> {
        let mut owners: Vec<Topology> = (0..peers)
            .map(|n| {
                Topology::new(
                    name(n),
                    format!("h{n}"),
                    Incarnation {
                        generation: 1,
                        uid: n,
                    },
                )
            })
            .collect();
        let addr = Some(SocketAddr::from(([192, 0, 2, 1], 6783)));
        for &(a, b) in edges {
            let established = !half_open.contains(&(a, b));
            owners[a as usize].set_local_connection(
                name(b),
                Some(ConnectionInfo {
                    addr,
                    outbound: true,
                    established: true,
                }),
            );
            owners[b as usize].set_local_connection(
                name(a),
                Some(ConnectionInfo {
                    addr,
                    outbound: false,
                    established,
                }),
            );
        }
        let all: Vec<_> = owners.iter().map(Topology::complete).collect();
        for owner in &mut owners {
            for delta in &all {
                owner.merge(delta);
            }
        }
        owners
    }

    #[test]
    fn line_routes_through_the_middle() {
        let mut views = views(3, &[(0, 1), (1, 2)], &[]);
        let mut routes = Routes::default();
        assert_eq!(
            routes.next_hop(&views[0], RouteKind::Data, name(2)),
            Some(name(1))
        );
        assert_eq!(
            routes.next_hop(&views[0], RouteKind::Data, name(1)),
            Some(name(1))
        );
        let mut middle = Routes::default();
        assert_eq!(
            middle.broadcast_hops(&views[1], RouteKind::Data, name(0)),
            &[name(2)]
        );
        assert!(
            routes
                .broadcast_hops(&views[0], RouteKind::Data, name(2))
                .is_empty()
        );
        views[0].set_local_connection(name(1), None);
        assert_eq!(
            routes.next_hop(&views[0], RouteKind::Data, name(2)),
            None,
            "cache follows the topology"
        );
    }

    #[test]
    fn data_routes_need_both_ends_established() {
        let views = views(3, &[(0, 1), (1, 2), (0, 2)], &[(0, 2)]);
        let mut routes = Routes::default();
        assert_eq!(
            routes.next_hop(&views[0], RouteKind::Data, name(2)),
            Some(name(1))
        );
        assert_eq!(
            routes.next_hop(&views[0], RouteKind::Gossip, name(2)),
            Some(name(2))
        );
    }

    fn connected_graph() -> impl Strategy<Value = (u64, Vec<(u64, u64)>)> {
        (2..12u64).prop_flat_map(|n| {
            let tree = prop::collection::vec(any::<prop::sample::Index>(), (n - 1) as usize);
            let extra = prop::collection::vec((0..n, 0..n), 0..(n as usize * 2));
            (Just(n), tree, extra).prop_map(|(n, tree, extra)| {
                let mut edges = BTreeSet::new();
                for (i, parent) in tree.iter().enumerate() {
                    let child = i as u64 + 1;
                    edges.insert((parent.index(child as usize) as u64, child));
                }
                for (a, b) in extra {
                    if a != b && !edges.contains(&(b, a)) {
                        edges.insert((a, b));
                    }
                }
                (n, edges.into_iter().collect())
            })
        })
    }

    proptest! {
        /// A broadcast from any peer, forwarded hop by hop along each peer's own
        /// computation of the tree, reaches every other peer exactly once.
        #[test]
        fn broadcast_reaches_everyone_exactly_once((n, edges) in connected_graph()) {
            let views = views(n, &edges, &[]);
            let mut routes: Vec<Routes> = (0..n).map(|_| Routes::default()).collect();
            for origin in 0..n {
                let mut received = vec![0u32; n as usize];
                let mut frontier = vec![origin];
                while let Some(at) = frontier.pop() {
                    let hops = routes[at as usize].broadcast_hops(&views[at as usize], RouteKind::Data, name(origin)).to_vec();
                    for hop in hops {
                        received[hop.as_u64() as usize] += 1;
                        frontier.push(hop.as_u64());
                    }
                }
                for peer in 0..n {
                    let expected = u32::from(peer != origin);
                    prop_assert_eq!(received[peer as usize], expected, "origin {} peer {}", origin, peer);
                }
            }
        }

        /// Following next hops from any peer reaches the destination without loops.
        #[test]
        fn unicast_reaches_every_destination((n, edges) in connected_graph()) {
            let views = views(n, &edges, &[]);
            let mut routes: Vec<Routes> = (0..n).map(|_| Routes::default()).collect();
            for src in 0..n {
                for dst in 0..n {
                    let mut at = src;
                    let mut hops = 0;
                    while at != dst {
                        let next = routes[at as usize].next_hop(&views[at as usize], RouteKind::Data, name(dst));
                        prop_assert!(next.is_some(), "{} has no route to {}", at, dst);
                        at = next.unwrap().as_u64();
                        hops += 1;
                        prop_assert!(hops <= n, "loop from {} to {}", src, dst);
                    }
                }
            }
        }
    }
}
