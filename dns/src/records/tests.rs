use std::collections::BTreeMap;

use proptest::prelude::*;
use weave_mesh::gossip::GossipHarness;
use weave_mesh::{GossipSend, Gossiper, PeerName};

use super::*;

fn peer(n: u64) -> PeerName {
    PeerName::from_u64(n)
}

fn addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

/// A store for peer `local` whose harness knows `others` as live peers.
fn store(local: u64, others: &[u64], now: Instant) -> (NameStore, GossipHarness) {
    let mut harness = GossipHarness::new(peer(local), local);
    for &o in others {
        harness.add_peer(peer(o), &format!("p{o}"));
    }
    (NameStore::new(peer(local), now), harness)
}

/// The lattice content: identity -> (version, tombstone expiry).
fn lattice(s: &NameStore) -> BTreeMap<EntryKey, (u64, Option<Instant>)> {
    s.entries
        .iter()
        .map(|(k, v)| (k.clone(), (v.version, v.tombstone)))
        .collect()
}

/// The CRDT proper: identity -> rank. Tombstone expiry is soft state, merged by min but
/// never relayed on its own (see `merge_foreign`).
fn ranks(s: &NameStore) -> BTreeMap<EntryKey, (u64, bool)> {
    s.entries
        .iter()
        .map(|(k, v)| (k.clone(), v.rank()))
        .collect()
}

/// Checks the indexes and counters against a recomputation from the entries.
fn check_indexes(s: &NameStore) {
    let mut by_name: BTreeMap<WireName, Vec<(Ipv4Addr, u32)>> = BTreeMap::new();
    let mut by_addr: BTreeMap<Ipv4Addr, Vec<(WireName, u32)>> = BTreeMap::new();
    for (key, state) in &s.entries {
        if state.is_live() {
            index_add(by_name.entry(key.name.clone()).or_default(), key.addr);
            index_add(by_addr.entry(key.addr).or_default(), key.name.clone());
        }
    }
    assert_eq!(s.by_name, by_name);
    assert_eq!(s.by_addr, by_addr);
    assert_eq!(
        s.tombstones,
        s.entries.values().filter(|v| !v.is_live()).count()
    );
    assert_eq!(
        s.local_live,
        s.entries
            .iter()
            .filter(|(k, v)| k.origin == s.local && v.is_live())
            .count()
    );
}

fn broadcasts(h: &mut GossipHarness) -> Vec<Vec<u8>> {
    h.drain()
        .into_iter()
        .map(|m| match m {
            GossipSend::Broadcast(b) => b,
            other => panic!("unexpected send {other:?}"),
        })
        .collect()
}

#[test]
fn add_lookup_remove() {
    let now = Instant::now();
    let (mut s, mut h) = store(1, &[], now);
    assert!(s.add("Web.weave.local", addr(1), "c1", now).unwrap());
    assert!(!s.add("web.weave.local.", addr(1), "c1", now).unwrap());
    assert!(s.add("web.weave.local.", addr(2), "c2", now).unwrap());
    assert!(s.add("db.weave.local.", addr(2), "c2", now).unwrap());
    assert_eq!(s.lookup_name("WEB.weave.local"), vec![addr(1), addr(2)]);
    assert_eq!(s.lookup_addr(addr(2)).as_deref(), Some("db.weave.local."));
    assert_eq!(s.local_entry_count(), 3);
    assert_eq!(s.entries().len(), 3);
    let domain = WireName::from_dotted("weave.local").unwrap();
    assert_eq!(s.entries()[0].hostname(&domain), "db");
    assert_eq!(s.entries()[0].name, "db.weave.local.");
    assert!(s.add("bad name", addr(1), "c1", now).is_err());
    assert!(
        s.add("ok.weave.local", addr(1), &"x".repeat(300), now)
            .is_err()
    );

    // Changes are broadcast once, batched, from handle_timeout.
    assert_eq!(s.poll_timeout(), Some(now));
    s.handle_timeout(&mut h.ctx(now));
    let sent = broadcasts(&mut h);
    assert_eq!(sent.len(), 1);
    assert_eq!(wire::decode_entries(&sent[0]).unwrap().len(), 3);

    assert_eq!(s.remove_owner("c2", now), 2);
    assert_eq!(s.lookup_name("web.weave.local"), vec![addr(1)]);
    assert_eq!(s.lookup_addr(addr(2)), None);
    assert_eq!(
        s.remove(None, Some(addr(1)), Some("web.weave.local"), now)
            .unwrap(),
        1
    );
    assert!(s.lookup_name("web.weave.local").is_empty());
    assert_eq!(s.local_entry_count(), 0);
    s.handle_timeout(&mut h.ctx(now));
    let sent = broadcasts(&mut h);
    let decoded = wire::decode_entries(&sent[0]).unwrap();
    assert_eq!(decoded.len(), 3);
    assert!(
        decoded
            .iter()
            .all(|e| e.tombstone_ms == Some(30 * 60 * 1000))
    );

    // Re-adding a removed record un-tombstones it with a newer version.
    assert!(s.add("web.weave.local", addr(1), "c1", now).unwrap());
    assert_eq!(s.lookup_name("web.weave.local"), vec![addr(1)]);
    check_indexes(&s);

    // Tombstones are purged after their lifetime.
    let later = now + TOMBSTONE_LIFETIME + PURGE_INTERVAL;
    s.handle_timeout(&mut h.ctx(later));
    assert_eq!(s.len(), 1);
    check_indexes(&s);
}

#[test]
fn merge_relays_only_what_is_new_and_ignores_departed_origins() {
    let now = Instant::now();
    let (mut a, mut ha) = store(1, &[2, 3], now);
    let (mut b, mut hb) = store(2, &[1, 3], now);
    a.add("web.weave.local", addr(1), "c1", now).unwrap();
    a.handle_timeout(&mut ha.ctx(now));
    let update = broadcasts(&mut ha).pop().unwrap();
    let relay = b
        .merge_received(&mut hb.ctx(now), peer(1), &update)
        .unwrap();
    assert!(relay.is_some());
    assert_eq!(b.lookup_name("web.weave.local"), vec![addr(1)]);
    // Again: nothing new, nothing to relay.
    assert_eq!(
        b.merge_received(&mut hb.ctx(now), peer(1), &update)
            .unwrap(),
        None
    );
    assert_eq!(
        b.merge_delta(&mut hb.ctx(now), peer(1), &update).unwrap(),
        None
    );

    // Records of a peer not in our topology are ignored.
    let (mut c, mut hc) = store(3, &[2], now);
    assert_eq!(
        c.merge_delta(&mut hc.ctx(now), peer(2), &update).unwrap(),
        None
    );
    assert!(c.is_empty());
    // Malformed input is an error, not a panic.
    assert!(
        c.merge_delta(&mut hc.ctx(now), peer(2), &[1, 2, 3])
            .is_err()
    );
}

#[test]
fn departed_peer_records_go_and_come_back() {
    let now = Instant::now();
    let (mut a, mut ha) = store(1, &[2], now);
    let (mut b, mut hb) = store(2, &[1], now);
    a.add("web.weave.local", addr(1), "c1", now).unwrap();
    a.handle_timeout(&mut ha.ctx(now));
    ha.drain();
    b.merge_delta(&mut hb.ctx(now), peer(1), &a.complete())
        .unwrap();
    assert_eq!(b.lookup_name("web.weave.local"), vec![addr(1)]);

    hb.remove_peer(peer(1));
    b.on_peers_changed(&mut hb.ctx(now));
    assert!(b.lookup_name("web.weave.local").is_empty());
    assert!(b.is_empty());

    // It returns: anti-entropy sends its records, since our digest lacks that origin.
    hb.add_peer(peer(1), "p1");
    b.on_peers_changed(&mut hb.ctx(now));
    let missing = a.missing(&b.digest()).unwrap();
    b.merge_delta(&mut hb.ctx(now), peer(1), &missing).unwrap();
    assert_eq!(b.lookup_name("web.weave.local"), vec![addr(1)]);
    assert_eq!(a.missing(&b.digest()), None);
    check_indexes(&b);
}

#[test]
fn restarted_origin_tombstones_or_reasserts_its_records() {
    let now = Instant::now();
    let (mut a, mut ha) = store(1, &[2], now);
    let (mut b, mut hb) = store(2, &[1], now);
    for i in 1..=3 {
        a.add(&format!("n{i}.weave.local"), addr(i), "c", now)
            .unwrap();
    }
    // n1 is deleted and re-added: it is now at version 5.
    a.remove(None, None, Some("n1.weave.local"), now).unwrap();
    a.add("n1.weave.local", addr(1), "c", now).unwrap();
    b.merge_delta(&mut hb.ctx(now), peer(1), &a.complete())
        .unwrap();

    // Peer 1 restarts with an empty store and re-adds only n1 (say from its database).
    let (mut a2, mut ha2) = store(1, &[2], now);
    a2.add("n1.weave.local", addr(1), "c", now).unwrap();
    a2.handle_timeout(&mut ha2.ctx(now));
    ha2.drain();
    // Its n1 has version 1, older than what peer 2 holds.
    // Anti-entropy brings peer 1 its old records.
    let missing = b.missing(&a2.digest()).unwrap();
    a2.merge_delta(&mut ha2.ctx(now), peer(2), &missing)
        .unwrap();
    let sent = broadcasts(&mut ha2);
    assert_eq!(sent.len(), 1);
    let decoded = wire::decode_entries(&sent[0]).unwrap();
    // n1 re-asserted live, n2 and n3 tombstoned, all above the old versions.
    assert_eq!(decoded.len(), 3);
    for e in &decoded {
        assert!(e.version > 5, "{e:?}");
        assert_eq!(
            e.tombstone_ms.is_none(),
            e.name.to_dotted() == "n1.weave.local."
        );
    }
    for update in &sent {
        b.merge_received(&mut hb.ctx(now), peer(1), update).unwrap();
    }
    assert_eq!(b.lookup_name("n1.weave.local"), vec![addr(1)]);
    assert!(b.lookup_name("n2.weave.local").is_empty());
    assert!(b.lookup_name("n3.weave.local").is_empty());
    assert_eq!(lattice(&a2), lattice(&b));
    let _ = &mut ha;
    let _ = &mut a;
}

#[test]
fn tombstone_life_is_not_extended_by_regossip() {
    let now = Instant::now();
    let (mut a, mut ha) = store(1, &[2], now);
    let (mut b, mut hb) = store(2, &[1], now);
    a.add("web.weave.local", addr(1), "c1", now).unwrap();
    a.remove_owner("c1", now);
    b.merge_delta(&mut hb.ctx(now), peer(1), &a.complete())
        .unwrap();
    // 20 minutes later peer 1 re-gossips: the tombstone keeps its original end.
    let t20 = now + Duration::from_secs(20 * 60);
    a.handle_timeout(&mut ha.ctx(t20));
    b.handle_timeout(&mut hb.ctx(t20));
    let again = a.complete();
    b.merge_delta(&mut hb.ctx(t20), peer(1), &again).unwrap();
    let expiry = b.entries.values().next().unwrap().tombstone.unwrap();
    assert_eq!(expiry, now + TOMBSTONE_LIFETIME);
    let end = now + TOMBSTONE_LIFETIME + PURGE_INTERVAL;
    b.handle_timeout(&mut hb.ctx(end));
    assert!(b.is_empty());
    // A third peer first hearing of it at 20 minutes agrees on its end.
    let (mut c, mut hc) = store(3, &[1], t20);
    c.merge_delta(&mut hc.ctx(t20), peer(1), &again).unwrap();
    assert_eq!(
        c.entries.values().next().unwrap().tombstone,
        Some(now + TOMBSTONE_LIFETIME)
    );
    // One whose tombstone has no life left is not stored.
    let mut dead = wire::decode_entries(&again).unwrap()[0].clone();
    dead.tombstone_ms = Some(0);
    let dead = WireEntry {
        origin: dead.origin,
        name: dead.name.to_dotted(),
        addr: dead.addr.octets(),
        owner: dead.owner.to_string(),
        version: dead.version + 1,
        tombstone_ms: Some(0),
    };
    b.merge_delta(&mut hb.ctx(end), peer(1), &wire::encode_entries(vec![dead]))
        .unwrap();
    assert!(b.is_empty());
}

#[test]
fn deleted_record_regossiped_after_expiry_is_killed_by_its_origin() {
    let now = Instant::now();
    let (mut a, mut ha) = store(1, &[2], now);
    let (mut b, mut hb) = store(2, &[1], now);
    a.add("web.weave.local", addr(1), "c1", now).unwrap();
    let stale = a.complete();
    a.remove_owner("c1", now);
    let later = now + TOMBSTONE_LIFETIME + PURGE_INTERVAL;
    a.handle_timeout(&mut ha.ctx(later));
    ha.drain();
    assert!(a.is_empty());
    // A peer that slept through all that gossips the old live record.
    b.merge_delta(&mut hb.ctx(later), peer(1), &stale).unwrap();
    assert_eq!(b.lookup_name("web.weave.local"), vec![addr(1)]);
    let missing = b.missing(&a.digest()).unwrap();
    a.merge_delta(&mut ha.ctx(later), peer(2), &missing)
        .unwrap();
    for update in broadcasts(&mut ha) {
        b.merge_received(&mut hb.ctx(later), peer(1), &update)
            .unwrap();
    }
    assert!(b.lookup_name("web.weave.local").is_empty());
    assert!(a.lookup_name("web.weave.local").is_empty());
}

#[test]
fn missing_sends_only_newer_records_to_a_peer_with_our_prefix() {
    let now = Instant::now();
    let (mut a, _) = store(1, &[2], now);
    let (mut b, mut hb) = store(2, &[1], now);
    for i in 1..=5 {
        a.add(&format!("n{i}.weave.local"), addr(i), "c", now)
            .unwrap();
    }
    b.merge_delta(&mut hb.ctx(now), peer(1), &a.complete())
        .unwrap();
    a.add("n6.weave.local", addr(6), "c", now).unwrap();
    let missing = a.missing(&b.digest()).unwrap();
    let decoded = wire::decode_entries(&missing).unwrap();
    assert_eq!(decoded.len(), 1);
    assert_eq!(decoded[0].name.to_dotted(), "n6.weave.local.");
    // Not a prefix (b lost an older change): the whole origin is sent.
    a.remove(None, Some(addr(2)), None, now).unwrap();
    a.add("n7.weave.local", addr(7), "c", now).unwrap();
    let (mut c, mut hc) = store(3, &[1], now);
    c.merge_delta(&mut hc.ctx(now), peer(1), &a.complete())
        .unwrap();
    let n8 = {
        a.add("n8.weave.local", addr(8), "c", now).unwrap();
        a.missing(&c.digest()).unwrap()
    };
    assert_eq!(wire::decode_entries(&n8).unwrap().len(), 1);
    let gap = a.missing(&b.digest()).unwrap();
    assert_eq!(wire::decode_entries(&gap).unwrap().len(), 8);
    // An unreadable digest gets everything.
    assert_eq!(
        wire::decode_entries(&a.missing(&[0xff]).unwrap())
            .unwrap()
            .len(),
        8
    );
}

// ---- CRDT laws ----

const ORIGINS: [u64; 3] = [11, 12, 13];
const LOCAL: u64 = 99;

fn arb_entry() -> impl Strategy<Value = WireEntry> {
    (
        0..ORIGINS.len(),
        0..3u8,
        1..4u8,
        0..2u8,
        1..5u64,
        prop::option::of(prop::sample::select(vec![1000u32, 2000, 3000])),
    )
        .prop_map(|(o, n, a, w, version, tombstone_ms)| WireEntry {
            origin: peer(ORIGINS[o]),
            name: format!("n{n}.weave.local."),
            addr: addr(a).octets(),
            owner: format!("c{w}"),
            version,
            tombstone_ms,
        })
}

fn arb_state() -> impl Strategy<Value = Vec<WireEntry>> {
    prop::collection::vec(arb_entry(), 0..12)
}

fn fresh(now: Instant) -> (NameStore, GossipHarness) {
    store(LOCAL, &ORIGINS, now)
}

fn load(entries: &[WireEntry], now: Instant) -> NameStore {
    let (mut s, mut h) = fresh(now);
    if !entries.is_empty() {
        s.merge_delta(
            &mut h.ctx(now),
            peer(1),
            &wire::encode_entries(entries.to_vec()),
        )
        .unwrap();
    }
    s
}

fn join(a: &NameStore, b: &NameStore, now: Instant) -> NameStore {
    let (mut s, mut h) = fresh(now);
    s.merge_delta(&mut h.ctx(now), peer(1), &a.complete())
        .unwrap();
    s.merge_delta(&mut h.ctx(now), peer(1), &b.complete())
        .unwrap();
    s
}

proptest! {
    #[test]
    fn merge_is_commutative(a in arb_state(), b in arb_state()) {
        let now = Instant::now();
        let (a, b) = (load(&a, now), load(&b, now));
        let ab = join(&a, &b, now);
        let ba = join(&b, &a, now);
        prop_assert_eq!(lattice(&ab), lattice(&ba));
        check_indexes(&ab);
    }

    #[test]
    fn merge_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
        let now = Instant::now();
        let (a, b, c) = (load(&a, now), load(&b, now), load(&c, now));
        let left = join(&join(&a, &b, now), &c, now);
        let right = join(&a, &join(&b, &c, now), now);
        prop_assert_eq!(lattice(&left), lattice(&right));
    }

    #[test]
    fn merge_is_idempotent(a in arb_state(), b in arb_state()) {
        let now = Instant::now();
        let (a, b) = (load(&a, now), load(&b, now));
        prop_assert_eq!(lattice(&join(&a, &a, now)), lattice(&a));
        let ab = join(&a, &b, now);
        prop_assert_eq!(lattice(&join(&ab, &b, now)), lattice(&ab));
    }

    /// Merging entry by entry in any order, or as one update, gives the same state; the
    /// relayed delta, merged into the old state, gives the new state.
    #[test]
    fn deltas_carry_exactly_the_change(a in arb_state(), b in arb_state()) {
        let now = Instant::now();
        let (mut s, mut h) = fresh(now);
        let base = load(&a, now);
        s.merge_delta(&mut h.ctx(now), peer(1), &base.complete()).unwrap();
        let delta = s.merge_delta(&mut h.ctx(now), peer(1), &wire::encode_entries(b.clone())).unwrap();
        let (mut t, mut ht) = fresh(now);
        t.merge_delta(&mut ht.ctx(now), peer(1), &base.complete()).unwrap();
        if let Some(delta) = delta {
            t.merge_delta(&mut ht.ctx(now), peer(1), &delta).unwrap();
        }
        prop_assert_eq!(ranks(&s), ranks(&t));
        let (mut u, mut hu) = fresh(now);
        u.merge_delta(&mut hu.ctx(now), peer(1), &base.complete()).unwrap();
        for e in b.iter().rev() {
            u.merge_delta(&mut hu.ctx(now), peer(1), &wire::encode_entries(vec![e.clone()])).unwrap();
        }
        prop_assert_eq!(lattice(&s), lattice(&u));
        check_indexes(&s);
    }

    /// Anti-entropy: after merging what `a` says `b` is missing, `b` holds all of `a`.
    #[test]
    fn missing_covers_the_difference(a in arb_state(), b in arb_state()) {
        let now = Instant::now();
        let (a, mut b) = (load(&a, now), load(&b, now));
        let (_, mut h) = fresh(now);
        if let Some(m) = a.missing(&b.digest()) {
            b.merge_delta(&mut h.ctx(now), peer(1), &m).unwrap();
        }
        let both = join(&a, &b, now);
        prop_assert_eq!(ranks(&both), ranks(&b));
    }
}
