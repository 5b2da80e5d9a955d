//! Allocations per second on one peer.
//!
//! Baseline, measured in the same run: recording the same addresses in a plain
//! `BTreeMap<u32, String>` (the bookkeeping any allocator needs). The ratio
//! `allocate / baseline` is the number to watch; absolute times depend on the machine.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weave_ipam::{AllocResult, Cidr, InitMode, Ipam, IpamConfig};
use weave_mesh::PeerName;
use weave_mesh::gossip::GossipHarness;

const BATCH: usize = 1000;

fn fresh() -> (Ipam, GossipHarness, Instant) {
    let me = PeerName::from_u64(1);
    let range: Cidr = "198.18.0.0/16".parse().expect("bench range");
    let mut ipam =
        Ipam::new(IpamConfig::new(range, InitMode::Seed(vec![me])), me).expect("valid config");
    let mut h = GossipHarness::new(me, 1);
    let now = Instant::now();
    ipam.finish_reclaim(&mut h.ctx(now));
    while ipam.poll_persist().is_some() {}
    (ipam, h, now)
}

fn idents(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("container-{i:08}")).collect()
}

fn bench(c: &mut Criterion) {
    let names = idents(BATCH);
    let mut group = c.benchmark_group("ipam");
    group.throughput(Throughput::Elements(BATCH as u64));

    group.bench_function("baseline_btreemap_record", |b| {
        b.iter_batched(
            BTreeMap::<u32, String>::new,
            |mut map| {
                for (i, name) in names.iter().enumerate() {
                    map.insert(0xc612_0001 + i as u32, name.clone());
                }
                black_box(map)
            },
            BatchSize::SmallInput,
        );
    });

    group.bench_function("allocate_fresh_peer", |b| {
        b.iter_batched(
            fresh,
            |(mut ipam, mut h, now)| {
                for name in &names {
                    let r = ipam.allocate(&mut h.ctx(now), name, None);
                    assert!(matches!(r, Ok(AllocResult::Ready(_))));
                    while let Some(op) = ipam.poll_persist() {
                        black_box(op);
                    }
                }
                ipam
            },
            BatchSize::SmallInput,
        );
    });

    // Steady state: 20k addresses in use, free one and allocate one.
    group.bench_function("free_then_allocate_20k_in_use", |b| {
        let (mut ipam, mut h, now) = fresh();
        let held = idents(20_000);
        for name in &held {
            ipam.allocate(&mut h.ctx(now), name, None).expect("room");
        }
        while ipam.poll_persist().is_some() {}
        let mut k = 0usize;
        b.iter(|| {
            for _ in 0..BATCH {
                let name = &held[k % held.len()];
                k = k.wrapping_mul(7919).wrapping_add(1) % held.len();
                ipam.free_ident(&mut h.ctx(now), name);
                let r = ipam.allocate(&mut h.ctx(now), name, None);
                assert!(matches!(r, Ok(AllocResult::Ready(_))));
                while let Some(op) = ipam.poll_persist() {
                    black_box(op);
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
