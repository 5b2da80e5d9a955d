//! Arbitrary bytes into the IPAM allocator's gossip entry points (merge_received,
//! merge_delta, on_unicast, missing). The input is cut into chunks (one length byte, one
//! kind byte, then the body); some kinds send the body raw, others first mutate a valid
//! message from a producer peer so the fuzzer gets past the decoder. After every step the
//! allocator's public views must stay consistent.
#![no_main]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weave_ipam::{Cidr, InitMode, Ipam, IpamConfig};
use weave_mesh::gossip::GossipHarness;
use weave_mesh::{Gossiper, PeerName};

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let range: Cidr = "198.18.0.0/22".parse().expect("test range");
    let me = PeerName::from_u64(1);
    let other = PeerName::from_u64(2);
    let init = InitMode::Seed(vec![me, other]);
    let mut now = Instant::now();
    let mut ipam = Ipam::new(IpamConfig::new(range, init.clone()), me).expect("valid config");
    let mut producer = Ipam::new(IpamConfig::new(range, init), other).expect("valid config");
    let mut h = GossipHarness::new(me, 1);
    let mut ph = GossipHarness::new(other, 2);
    h.add_peer(other, "other");
    ph.add_peer(me, "me");
    ipam.finish_reclaim(&mut h.ctx(now));
    producer.finish_reclaim(&mut ph.ctx(now));
    // Let the producer give us a little of its range so ring deltas exist.
    let subnet: Cidr = "198.18.2.0/24".parse().expect("test subnet");
    let _ = producer.allocate(&mut ph.ctx(now), "p", Some(subnet));

    let mut rest = data;
    let mut ident = 0u32;
    while let [len, kind, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        now += Duration::from_millis(u64::from(*kind) * 50);
        let mut ctx = h.ctx(now);
        match kind % 8 {
            0 => {
                let _ = ipam.merge_received(&mut ctx, other, body);
            }
            1 => {
                let _ = ipam.merge_delta(&mut ctx, other, body);
            }
            2 => {
                let _ = ipam.on_unicast(&mut ctx, other, body);
            }
            3 => {
                let _ = ipam.missing(body);
            }
            4 | 5 => {
                // A valid message from the producer, mutated at a few places.
                let mut msg = if kind % 8 == 4 {
                    producer.complete()
                } else {
                    producer
                        .missing(&ipam.digest())
                        .unwrap_or_else(|| producer.complete())
                };
                for pair in body.chunks_exact(2) {
                    if !msg.is_empty() {
                        let at = usize::from(pair[0]) % msg.len();
                        msg[at] = pair[1];
                    }
                }
                let _ = ipam.merge_delta(&mut ctx, other, &msg);
            }
            6 => {
                ident += 1;
                let _ = ipam.allocate(&mut ctx, &format!("c{ident}"), None);
                let _ = producer.allocate(&mut ph.ctx(now), &format!("p{ident}"), Some(subnet));
            }
            _ => {
                // Deliver the producer's queued gossip to us, and ours to it.
                for send in ph.drain() {
                    let bytes = match send {
                        weave_mesh::GossipSend::Broadcast(b)
                        | weave_mesh::GossipSend::Neighbours(b)
                        | weave_mesh::GossipSend::Unicast(_, b) => b,
                    };
                    let _ = ipam.on_unicast(&mut ctx, other, &bytes);
                    let _ = ipam.merge_delta(&mut ctx, other, &bytes);
                }
                drop(ctx);
                for send in h.drain() {
                    if let weave_mesh::GossipSend::Unicast(_, b) = send {
                        let _ = producer.on_unicast(&mut ph.ctx(now), me, &b);
                    }
                }
                if ipam.poll_timeout().is_some_and(|t| t <= now) {
                    ipam.handle_timeout(&mut h.ctx(now));
                }
            }
        }
        check(&mut ipam, range);
    }
}

fn check(ipam: &mut Ipam, range: Cidr) {
    while ipam.poll_persist().is_some() {}
    while ipam.poll_event().is_some() {}
    let ranges = ipam.ring_ranges();
    let covered: u64 = ranges.iter().map(|r| r.1).sum();
    assert!(
        ranges.is_empty() || covered == range.size(),
        "ring covers {covered}"
    );
    let mut end = 0u64;
    for (start, size) in ipam.owned_ranges() {
        let s = u64::from(u32::from(start));
        assert!(s >= end && size > 0, "owned ranges overlap or are unsorted");
        end = s + size;
    }
    let addrs: Vec<Ipv4Addr> = ipam.allocations().map(|(a, _)| a).collect();
    let unique: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    assert_eq!(unique.len(), addrs.len());
    let _ = ipam.status(&Default::default());
    let _ = ipam.complete();
    let _ = ipam.digest();
}
