//! Arbitrary bytes into the DNS records CRDT. The input is read as three-byte operations
//! that build valid gossip from two producer stores (peer 2, and an earlier incarnation
//! of ourselves, to reach the origin-authority rule), merge it whole, mutated or via
//! anti-entropy, move time and change the topology; what is left goes in raw. After each
//! step the store's public views must agree with each other.
#![no_main]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weave_dns::NameStore;
use weave_mesh::gossip::GossipHarness;
use weave_mesh::{Gossiper, PeerName};

fuzz_target!(|data: &[u8]| run(data));

const NAMES: [&str; 4] = [
    "web.weave.local",
    "db.weave.local",
    "x.weave.local",
    "web.other.test",
];

fn run(data: &[u8]) {
    let mut now = Instant::now();
    let me = PeerName::from_u64(1);
    let other = PeerName::from_u64(2);
    let mut store = NameStore::new(me, now);
    let mut harness = GossipHarness::new(me, 1);
    harness.add_peer(other, "other");
    harness.add_peer(PeerName::from_u64(3), "third");
    let mut producers = [
        (NameStore::new(other, now), GossipHarness::new(other, 2)),
        (NameStore::new(me, now), GossipHarness::new(me, 3)),
    ];
    store
        .add("mine.weave.local", Ipv4Addr::new(198, 18, 1, 1), "c0", now)
        .expect("valid record");

    let ops = data.len().min(90) / 3;
    let (head, raw) = data.split_at(ops * 3);
    for op in head.chunks_exact(3) {
        let (kind, a, b) = (op[0], op[1], op[2]);
        let (producer, ph) = &mut producers[usize::from(kind >> 7)];
        match kind & 7 {
            0..=2 => {
                let name = NAMES[usize::from(a % 4)];
                let _ = producer.add(
                    name,
                    Ipv4Addr::new(198, 18, 0, b % 8),
                    &format!("c{}", a % 3),
                    now,
                );
            }
            3 => {
                producer.remove_owner(&format!("c{}", a % 3), now);
            }
            4 => {
                let _ = store.merge_received(&mut harness.ctx(now), other, &producer.complete());
            }
            5 => {
                let mut bytes = producer.complete();
                if !bytes.is_empty() {
                    let at = usize::from(a) % bytes.len();
                    bytes[at] ^= b | 1;
                }
                let _ = store.merge_delta(&mut harness.ctx(now), other, &bytes);
            }
            6 => {
                if let Some(m) = producer.missing(&store.digest()) {
                    let _ = store.merge_delta(&mut harness.ctx(now), other, &m);
                }
                if let Some(m) = store.missing(&producer.digest()) {
                    let _ = producer.merge_delta(&mut ph.ctx(now), me, &m);
                }
            }
            _ => {
                now += Duration::from_secs(u64::from(a) * 60);
                if b & 1 == 0 {
                    harness.remove_peer(other);
                } else {
                    harness.add_peer(other, "other");
                }
                store.on_peers_changed(&mut harness.ctx(now));
                store.handle_timeout(&mut harness.ctx(now));
            }
        }
        harness.drain();
        check(&store, me);
    }
    let _ = store.merge_received(&mut harness.ctx(now), other, raw);
    let _ = store.merge_delta(&mut harness.ctx(now), other, raw);
    let _ = store.on_unicast(&mut harness.ctx(now), other, raw);
    let _ = store.missing(raw);
    check(&store, me);
}

fn check(store: &NameStore, me: PeerName) {
    let entries = store.entries();
    for e in &entries {
        assert!(
            store.lookup_name(&e.name).contains(&e.addr),
            "{e:?} not found by name"
        );
        assert!(
            store.lookup_addr(e.addr).is_some(),
            "{e:?} not found by address"
        );
    }
    assert_eq!(
        store.local_entry_count(),
        entries.iter().filter(|e| e.origin == me).count()
    );
    assert!(entries.len() <= store.len());
}
