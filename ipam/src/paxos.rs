//! Single-decree Paxos over gossip: how peers in `consensus` mode agree on the peers the
//! ring is first split among, so that at most one ring is ever created.
//!
//! Every participant is proposer, acceptor and learner (as in Weave). Instead of request
//! and reply messages, each peer publishes its acceptor state in a gossiped map keyed by
//! peer name; only the peer itself writes its entry, and the map merges per field by
//! maximum (a promise only grows, an accepted proposal only grows), so the map is a CRDT
//! and any gossip order is fine. A peer reads the map as a (possibly stale) view of the
//! other acceptors, and a stale view is a lower bound of each acceptor's state, which is
//! all Paxos needs:
//!
//! - Phase 1: a proposer picks `(round, name)` above anything it has seen and promises it
//!   to itself. Acceptors promise the highest proposal they see anywhere.
//! - Phase 2: once a quorum promised exactly its proposal, the proposer accepts a value:
//!   the highest-numbered value those promisers had accepted, else its own (the names of
//!   every participant it knows, at least a quorum). Acceptors accept a published
//!   `(proposal, value)` when it is at least what they promised.
//! - Learning: a value accepted by a quorum under one proposal is chosen.
//!
//! A promiser's state seen with `promised == p` can only have accepted something below `p`
//! or `p` itself, so the proposer's choice is the classic safe one. Acceptor state must
//! survive restarts: the allocator persists it, and a restarted peer that lost it adopts
//! whatever of its old state gossip still carries (the per-field max). A peer holding a
//! ring never takes part, so a peer that lost its data cannot gather a quorum for a
//! second ring while a quorum of peers keeps theirs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weave_mesh::PeerName;

/// A proposal number: rounds first, proposer name breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub round: u64,
    pub proposer: PeerName,
}

/// What one acceptor has promised and accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AcceptorState {
    pub promised: Option<ProposalId>,
    pub accepted: Option<(ProposalId, Vec<PeerName>)>,
}

impl AcceptorState {
    /// Per-field maximum. Returns whether `self` changed.
    pub(crate) fn join(&mut self, other: &Self) -> bool {
        let mut changed = false;
        if other.promised > self.promised {
            self.promised = other.promised;
            changed = true;
        }
        if other.accepted > self.accepted {
            self.accepted.clone_from(&other.accepted);
            changed = true;
        }
        changed
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Paxos {
    states: BTreeMap<PeerName, AcceptorState>,
}

impl Paxos {
    pub(crate) fn states(&self) -> &BTreeMap<PeerName, AcceptorState> {
        &self.states
    }

    pub(crate) fn known(&self) -> usize {
        self.states.len()
    }

    pub(crate) fn own(&self, me: PeerName) -> Option<&AcceptorState> {
        self.states.get(&me)
    }

    /// Merges gossiped states; returns the names whose state changed.
    pub(crate) fn merge(&mut self, incoming: &[(PeerName, AcceptorState)]) -> Vec<PeerName> {
        let mut changed = Vec::new();
        for (name, state) in incoming {
            if self.states.entry(*name).or_default().join(state) {
                changed.push(*name);
            }
        }
        changed
    }

    /// Starts a new proposal above everything seen.
    pub(crate) fn propose(&mut self, me: PeerName) -> ProposalId {
        let round = self
            .states
            .values()
            .flat_map(|s| [s.promised, s.accepted.as_ref().map(|a| a.0)])
            .flatten()
            .map(|p| p.round)
            .max()
            .unwrap_or(0)
            + 1;
        let pid = ProposalId {
            round,
            proposer: me,
        };
        let own = self.states.entry(me).or_default();
        own.promised = Some(pid);
        pid
    }

    /// The highest proposal anyone has promised.
    pub(crate) fn highest_promise(&self) -> Option<ProposalId> {
        self.states.values().filter_map(|s| s.promised).max()
    }

    /// Runs our acceptor and proposer rules once over the current view. `quorum` is the
    /// number of distinct peers needed. Returns whether our own state changed.
    pub(crate) fn step(&mut self, me: PeerName, quorum: usize, participate: bool) -> bool {
        if !participate {
            return false;
        }
        let before = self.states.get(&me).cloned().unwrap_or_default();
        let mut own = before.clone();
        // Acceptor: promise the highest proposal seen, accept its value if published.
        if let Some(highest) = self.highest_promise()
            && Some(highest) > own.promised
        {
            own.promised = Some(highest);
        }
        let best_accepted = self
            .states
            .values()
            .filter_map(|s| s.accepted.as_ref())
            .max()
            .cloned();
        if let Some((pid, value)) = best_accepted
            && Some(pid) >= own.promised
            && own.accepted.as_ref().map(|a| a.0) < Some(pid)
        {
            own.promised = Some(pid);
            own.accepted = Some((pid, value));
        }
        // Proposer: our own proposal, promised by a quorum, not yet given a value.
        if let Some(pid) = own.promised
            && pid.proposer == me
            && own.accepted.as_ref().map(|a| a.0) != Some(pid)
        {
            let others = self
                .states
                .iter()
                .filter(|(name, _)| **name != me)
                .map(|(_, s)| s);
            let promisers: Vec<&AcceptorState> = std::iter::once(&own)
                .chain(others)
                .filter(|s| s.promised == Some(pid))
                .collect();
            if promisers.len() >= quorum {
                let value = promisers
                    .iter()
                    .filter_map(|s| s.accepted.as_ref())
                    .max()
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| {
                        let mut names: Vec<PeerName> = self.states.keys().copied().collect();
                        names.push(me);
                        names.sort_unstable();
                        names.dedup();
                        names
                    });
                own.accepted = Some((pid, value));
            }
        }
        // Only peers that took part have an entry: the keys are the participants.
        if own != before {
            self.states.insert(me, own);
            return true;
        }
        false
    }

    /// The chosen value, once a quorum accepted one proposal.
    pub(crate) fn chosen(&self, quorum: usize) -> Option<Vec<PeerName>> {
        let mut votes: BTreeMap<&ProposalId, (usize, &Vec<PeerName>)> = BTreeMap::new();
        for state in self.states.values() {
            if let Some((pid, value)) = &state.accepted {
                votes.entry(pid).or_insert((0, value)).0 += 1;
            }
        }
        votes
            .into_values()
            .find(|(count, _)| *count >= quorum)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_state() -> impl Strategy<Value = AcceptorState> {
        let pid = (0u64..4, 1u64..4).prop_map(|(round, p)| ProposalId {
            round,
            proposer: PeerName::from_u64(p),
        });
        let value = prop::collection::vec((1u64..5).prop_map(PeerName::from_u64), 1..3);
        (
            prop::option::of(pid.clone()),
            prop::option::of((pid, value)),
        )
            .prop_map(|(promised, accepted)| AcceptorState { promised, accepted })
    }

    fn join(a: &AcceptorState, b: &AcceptorState) -> AcceptorState {
        let mut out = a.clone();
        out.join(b);
        out
    }

    proptest! {
        #[test]
        fn acceptor_join_is_a_join(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(join(&a, &a), a.clone());
            prop_assert_eq!(join(&a, &b), join(&b, &a));
            prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
        }
    }

    fn name(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    /// Runs peers that see each other's full state after every step until nothing moves.
    fn run(paxos: &mut [Paxos], names: &[PeerName], quorum: usize, links: &[(usize, usize)]) {
        for _ in 0..50 {
            let mut moved = false;
            for (i, p) in paxos.iter_mut().enumerate() {
                moved |= p.step(names[i], quorum, true);
            }
            for &(a, b) in links {
                let sa: Vec<_> = paxos[a].states.clone().into_iter().collect();
                let sb: Vec<_> = paxos[b].states.clone().into_iter().collect();
                moved |= !paxos[b].merge(&sa).is_empty();
                moved |= !paxos[a].merge(&sb).is_empty();
            }
            if !moved {
                break;
            }
        }
    }

    #[test]
    fn quorum_agrees_on_one_value() {
        let names = [name(1), name(2), name(3)];
        let mut paxos = vec![Paxos::default(); 3];
        for (p, n) in paxos.iter_mut().zip(names) {
            p.propose(n);
        }
        run(&mut paxos, &names, 2, &[(0, 1), (1, 2), (0, 2)]);
        let chosen: Vec<_> = paxos.iter().map(|p| p.chosen(2)).collect();
        assert!(chosen[0].is_some());
        assert!(chosen.iter().all(|c| c == &chosen[0]));
    }

    #[test]
    fn minority_cannot_choose() {
        let names = [name(1), name(2), name(3), name(4), name(5)];
        let mut paxos = vec![Paxos::default(); 5];
        for (p, n) in paxos.iter_mut().zip(names) {
            p.propose(n);
        }
        // {0,1} and {2,3,4} are partitioned; quorum of 5 is 3.
        run(&mut paxos, &names, 3, &[(0, 1), (2, 3), (3, 4)]);
        assert_eq!(paxos[0].chosen(3), None);
        assert_eq!(paxos[1].chosen(3), None);
        let majority = paxos[2].chosen(3).expect("majority side decides");
        assert_eq!(majority.len(), 3);
        // Healing: the minority learns the same value, never another.
        for (p, n) in paxos.iter_mut().zip(names).take(2) {
            p.propose(n);
        }
        run(
            &mut paxos,
            &names,
            3,
            &[(0, 1), (2, 3), (3, 4), (1, 2), (0, 4)],
        );
        for p in &paxos {
            assert_eq!(p.chosen(3).as_ref(), Some(&majority));
        }
    }
}
