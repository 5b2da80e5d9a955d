//! Local A answers per second through `Server::answer` (bytes in, bytes out), against a
//! baseline measured in the same run: the same query parsed and its answer built and
//! encoded with hickory-proto's `Message` (what answering through hickory would cost at
//! the least). Also: a store of 10,000 names (lookups are O(log n)), NXDOMAIN, a
//! 60-record truncated answer, and a forwarded name served from the cache.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use weave_dns::{Answer, ForwardOutcome, NameStore, Server, ServerConfig, Transport};
use weave_mesh::PeerName;

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("valid name"),
        RecordType::A,
    ));
    m.to_vec().expect("encodable")
}

fn store(names: usize, now: Instant) -> NameStore {
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    for i in 0..3u8 {
        store
            .add(
                "web.weave.local",
                Ipv4Addr::new(198, 18, 0, i + 1),
                &format!("w{i}"),
                now,
            )
            .expect("valid");
    }
    for i in 0..60u8 {
        store
            .add(
                "big.weave.local",
                Ipv4Addr::new(198, 19, 0, i),
                &format!("b{i}"),
                now,
            )
            .expect("valid");
    }
    for i in 0..names {
        let addr = Ipv4Addr::new(198, 18, 1 + (i / 250) as u8, (i % 250) as u8 + 1);
        store
            .add(&format!("host{i}.weave.local"), addr, &format!("h{i}"), now)
            .expect("valid");
    }
    store
}

/// What a hickory-based answer costs: parse, build the response, encode.
fn hickory_answer(bytes: &[u8], addrs: &[Ipv4Addr]) -> Vec<u8> {
    let q = Message::from_vec(bytes).expect("valid query");
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.authoritative = true;
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    let name = q.queries[0].name().clone();
    r.add_queries(q.queries);
    for addr in addrs {
        r.add_answer(Record::from_rdata(name.clone(), 1, RData::A(A(*addr))));
    }
    r.to_vec().expect("encodable")
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let small = store(0, now);
    let large = store(10_000, now);
    let mut server = Server::new(ServerConfig::default(), 1);
    let web = query("web.weave.local.");
    let addrs = small.lookup_name("web.weave.local");

    let mut group = c.benchmark_group("dns_answer");
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline_hickory_parse_build_encode", |b| {
        b.iter(|| black_box(hickory_answer(black_box(&web), &addrs)))
    });
    group.bench_function("local_a_3_addrs", |b| {
        b.iter(|| black_box(server.answer(&small, black_box(&web), Transport::Udp, now)))
    });
    group.bench_function("local_a_3_addrs_10k_names", |b| {
        b.iter(|| black_box(server.answer(&large, black_box(&web), Transport::Udp, now)))
    });
    let host = query("HOST5000.weave.local.");
    group.bench_function("local_a_10k_names_other_case", |b| {
        b.iter(|| black_box(server.answer(&large, black_box(&host), Transport::Udp, now)))
    });
    let nx = query("nosuch.weave.local.");
    group.bench_function("local_nxdomain", |b| {
        b.iter(|| black_box(server.answer(&large, black_box(&nx), Transport::Udp, now)))
    });
    let big = query("big.weave.local.");
    group.bench_function("local_a_60_addrs_truncated", |b| {
        b.iter(|| black_box(server.answer(&small, black_box(&big), Transport::Udp, now)))
    });

    // A forwarded name, answered once by "upstream", then served from the cache.
    server.set_upstreams(vec![SocketAddr::from(([192, 0, 2, 1], 53))]);
    let www = query("www.example.");
    let Answer::Forward(plan) = server.answer(&small, &www, Transport::Udp, now) else {
        panic!("www.example. is forwarded");
    };
    let mut reply = Message::from_vec(plan.query()).expect("valid");
    reply.metadata.message_type = MessageType::Response;
    let name = reply.queries[0].name().clone();
    reply.add_answer(Record::from_rdata(
        name,
        300,
        RData::A(A(Ipv4Addr::new(203, 0, 113, 1))),
    ));
    let reply = reply.to_vec().expect("encodable");
    assert!(matches!(
        server.forward_reply(&plan, &reply, now),
        ForwardOutcome::Reply(_)
    ));
    group.bench_function("forwarded_cache_hit", |b| {
        b.iter(|| {
            let answer = server.answer(&small, black_box(&www), Transport::Udp, now);
            debug_assert!(matches!(answer, Answer::Reply(_)));
            black_box(answer)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
