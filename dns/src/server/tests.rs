//! Every answering rule, with queries built and responses read by hickory-proto.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use weave_mesh::PeerName;

use super::*;

const ID: u16 = 0x4242;

fn addr(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

fn upstream(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n], 53))
}

fn setup(now: Instant) -> (Server, NameStore) {
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    store.add("web.weave.local", addr(1), "c1", now).unwrap();
    store.add("web.weave.local", addr(2), "c2", now).unwrap();
    store.add("web.weave.local", addr(3), "c3", now).unwrap();
    store.add("db.weave.local", addr(9), "c9", now).unwrap();
    (Server::new(ServerConfig::default(), 7), store)
}

fn message(name: &str, rtype: RecordType, edns: Option<u16>) -> Message {
    let mut m = Message::new(ID, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(HQuery::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    message(name, rtype, edns).to_vec().unwrap()
}

fn reply(answer: Answer) -> Message {
    match answer {
        Answer::Reply(bytes) => Message::from_vec(&bytes).expect("our reply parses"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn plan(answer: Answer) -> ForwardPlan {
    match answer {
        Answer::Forward(plan) => plan,
        other => panic!("expected a forward plan, got {other:?}"),
    }
}

fn a_addrs(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(A(a)) => *a,
            other => panic!("not an A record: {other:?}"),
        })
        .collect()
}

fn assert_soa_authority(m: &Message) {
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let soa = &m.authorities[0];
    assert_eq!(soa.name, Name::from_ascii("weave.local.").unwrap());
    let RData::SOA(SOA {
        mname,
        rname,
        minimum,
        ..
    }) = &soa.data
    else {
        panic!("not a SOA: {soa:?}");
    };
    assert_eq!(*mname, Name::from_ascii("weave.local.").unwrap());
    assert_eq!(*rname, Name::from_ascii("hostmaster.weave.local.").unwrap());
    assert_eq!(*minimum, 1);
    assert_eq!(soa.ttl, 1);
}

#[test]
fn a_query_gets_all_addresses_authoritatively() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    let m = reply(server.answer(
        &store,
        &query("web.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.id, ID);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.authoritative);
    assert!(m.metadata.recursion_desired);
    assert!(m.metadata.recursion_available);
    assert!(!m.metadata.truncation);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.queries.len(), 1);
    let got: BTreeSet<Ipv4Addr> = a_addrs(&m).into_iter().collect();
    assert_eq!(got, [addr(1), addr(2), addr(3)].into());
    for r in &m.answers {
        assert_eq!(r.ttl, 1);
        assert_eq!(r.dns_class, DNSClass::IN);
        assert_eq!(r.name, Name::from_ascii("web.weave.local.").unwrap());
    }
    assert!(m.edns.is_none());
    assert_eq!(server.stats().local, 1);
}

#[test]
fn names_match_case_insensitively_and_answers_keep_the_askers_case() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    let m = reply(server.answer(
        &store,
        &query("WeB.wEAVE.Local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(a_addrs(&m).len(), 3);
    let asked = Name::from_ascii("WeB.wEAVE.Local.").unwrap();
    assert!(m.queries[0].name().eq_case(&asked));
    assert!(m.answers.iter().all(|r| r.name.eq_case(&asked)));
}

#[test]
fn answers_are_shuffled_per_answer() {
    let now = Instant::now();
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    for i in 1..=8 {
        store
            .add("many.weave.local", addr(i), &format!("c{i}"), now)
            .unwrap();
    }
    let all: BTreeSet<Ipv4Addr> = (1..=8).map(addr).collect();
    let q = query("many.weave.local.", RecordType::A, None);
    let mut orders = BTreeSet::new();
    let mut firsts = BTreeSet::new();
    for seed in 0..4 {
        let mut server = Server::new(ServerConfig::default(), seed);
        for _ in 0..10 {
            let got = a_addrs(&reply(server.answer(&store, &q, Transport::Udp, now)));
            assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), all);
            firsts.insert(got[0]);
            orders.insert(got);
        }
    }
    assert!(
        orders.len() > 30,
        "only {} distinct orders of 40",
        orders.len()
    );
    assert_eq!(firsts, all, "every address comes first sometimes");
    // Same seed, same answers: deterministic.
    let run = |seed| {
        let mut server = Server::new(ServerConfig::default(), seed);
        (0..5)
            .map(|_| a_addrs(&reply(server.answer(&store, &q, Transport::Udp, now))))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
}

#[test]
fn other_types_of_an_existing_name_are_empty_noerror() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    for rtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let m = reply(server.answer(
            &store,
            &query("web.weave.local.", rtype, None),
            Transport::Udp,
            now,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
    }
    // ANY gets the addresses.
    let m = reply(server.answer(
        &store,
        &query("web.weave.local.", RecordType::ANY, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(a_addrs(&m).len(), 3);
}

#[test]
fn unknown_names_in_the_domain_are_nxdomain_with_soa() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    for name in [
        "nosuch.weave.local.",
        "a.b.weave.local.",
        "WEB2.weave.local.",
    ] {
        let m = reply(server.answer(
            &store,
            &query(name, RecordType::A, Some(1232)),
            Transport::Udp,
            now,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
        assert!(m.edns.is_some());
    }
}

#[test]
fn the_domain_apex_has_a_soa() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    let m = reply(server.answer(
        &store,
        &query("weave.local.", RecordType::SOA, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    let m = reply(server.answer(
        &store,
        &query("weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_soa_authority(&m);
}

#[test]
fn removed_records_leave_the_answers() {
    let now = Instant::now();
    let (mut server, mut store) = setup(now);
    store.remove_owner("c2", now);
    let m = reply(server.answer(
        &store,
        &query("web.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(
        a_addrs(&m).into_iter().collect::<BTreeSet<_>>(),
        [addr(1), addr(3)].into()
    );
    store
        .remove(None, None, Some("db.weave.local"), now)
        .unwrap();
    let m = reply(server.answer(
        &store,
        &query("db.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn single_label_names_are_completed_with_the_domain() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let m = reply(server.answer(
        &store,
        &query("Web.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(a_addrs(&m).len(), 3);
    assert!(
        m.answers
            .iter()
            .all(|r| r.name.eq_case(&Name::from_ascii("Web.").unwrap()))
    );
    let m = reply(server.answer(
        &store,
        &query("web.", RecordType::AAAA, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_soa_authority(&m);
    // Unknown single-label names go upstream.
    plan(server.answer(
        &store,
        &query("nosuch.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
}

#[test]
fn ptr_for_our_addresses() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let m = reply(server.answer(
        &store,
        &query("9.0.18.198.in-addr.arpa.", RecordType::PTR, Some(4096)),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 1);
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(Name::from_ascii("db.weave.local.").unwrap()))
    );
    let m = reply(server.answer(
        &store,
        &query("1.0.18.198.IN-ADDR.ARPA.", RecordType::PTR, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(Name::from_ascii("web.weave.local.").unwrap()))
    );
    // Not ours, not canonical, or not PTR: forwarded.
    for (name, rtype) in [
        ("7.0.18.198.in-addr.arpa.", RecordType::PTR),
        ("09.0.18.198.in-addr.arpa.", RecordType::PTR),
        ("9.0.18.198.in-addr.arpa.", RecordType::A),
        ("0.18.198.in-addr.arpa.", RecordType::PTR),
    ] {
        plan(server.answer(&store, &query(name, rtype, None), Transport::Udp, now));
    }
}

fn big_store(now: Instant, n: u8) -> NameStore {
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    for i in 0..n {
        store
            .add(
                "big.weave.local",
                Ipv4Addr::new(198, 19, 0, i),
                &format!("c{i}"),
                now,
            )
            .unwrap();
    }
    store
}

#[test]
fn truncation_keeps_the_largest_prefix_that_fits() {
    let now = Instant::now();
    let store = big_store(now, 100);
    let mut server = Server::new(ServerConfig::default(), 1);
    // Plain UDP: 512 bytes.
    let q = query("big.weave.local.", RecordType::A, None);
    let Answer::Reply(bytes) = server.answer(&store, &q, Transport::Udp, now) else {
        panic!()
    };
    assert!(bytes.len() <= 512);
    let m = Message::from_vec(&bytes).unwrap();
    assert!(m.metadata.truncation);
    let question = q.len() - 12;
    assert_eq!(m.answers.len(), (512 - 12 - question) / 16);
    assert!(
        512 - bytes.len() < 16,
        "the prefix is the largest that fits"
    );
    // EDNS with room for all: no truncation.
    let m = reply(server.answer(
        &store,
        &query("big.weave.local.", RecordType::A, Some(4096)),
        Transport::Udp,
        now,
    ));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    assert_eq!(m.edns.as_ref().unwrap().max_payload(), 4096);
    // EDNS asking for 1000 bytes gets at most 1000.
    let Answer::Reply(bytes) = server.answer(
        &store,
        &query("big.weave.local.", RecordType::A, Some(1000)),
        Transport::Udp,
        now,
    ) else {
        panic!()
    };
    assert!(bytes.len() <= 1000 && bytes.len() > 1000 - 16);
    let m = Message::from_vec(&bytes).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "the OPT record survives truncation");
    // TCP: everything.
    let m = reply(server.answer(&store, &q, Transport::Tcp, now));
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
}

#[test]
fn edns_sizes_are_clamped_to_our_maximum() {
    let now = Instant::now();
    let store = big_store(now, 250);
    let config = ServerConfig {
        max_udp_payload: 1232,
        ..ServerConfig::default()
    };
    let mut server = Server::new(config, 1);
    let Answer::Reply(bytes) = server.answer(
        &store,
        &query("big.weave.local.", RecordType::A, Some(65000)),
        Transport::Udp,
        now,
    ) else {
        panic!()
    };
    assert!(bytes.len() <= 1232 && bytes.len() > 1232 - 16);
}

fn raw_query(counts: [u16; 4], body: &[u8]) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00];
    for c in counts {
        q.extend_from_slice(&c.to_be_bytes());
    }
    q.extend_from_slice(body);
    q
}

fn rcode_of(answer: Answer) -> (u16, ResponseCode) {
    let m = reply(answer);
    (m.metadata.id, m.metadata.response_code)
}

#[test]
fn malformed_queries_get_formerr_or_are_dropped() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    let formerr = (0x1234, ResponseCode::FormErr);
    let mut ask = |bytes: &[u8]| server.answer(&store, bytes, Transport::Udp, now);
    // Truncated question, compression loop, no question, two questions, huge counts.
    assert_eq!(
        rcode_of(ask(&raw_query([1, 0, 0, 0], b"\x03web\x05wea"))),
        formerr
    );
    assert_eq!(
        rcode_of(ask(&raw_query([1, 0, 0, 0], b"\xc0\x0c\x00\x01\x00\x01"))),
        formerr
    );
    assert_eq!(rcode_of(ask(&raw_query([0, 0, 0, 0], b""))), formerr);
    assert_eq!(
        rcode_of(ask(&raw_query(
            [2, 0, 0, 0],
            b"\x01a\x00\x00\x01\x00\x01\x01b\x00\x00\x01\x00\x01"
        ))),
        formerr
    );
    assert_eq!(
        rcode_of(ask(&raw_query(
            [1, 0xffff, 0xffff, 0xffff],
            b"\x01a\x00\x00\x01\x00\x01"
        ))),
        formerr
    );
    // A compression loop inside a record of the additional section.
    assert_eq!(
        rcode_of(ask(&raw_query(
            [1, 0, 0, 1],
            b"\x01a\x00\x00\x01\x00\x01\xc0\x14\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04"
        ))),
        formerr
    );
    // Too short for a header, or a response: dropped.
    assert_eq!(ask(&[0x12, 0x34, 0x01]), Answer::Drop);
    let mut response = query("web.weave.local.", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(ask(&response), Answer::Drop);
    // Another opcode: NOTIMP.
    let mut status = raw_query([1, 0, 0, 0], b"\x01a\x00\x00\x01\x00\x01");
    status[2] |= 2 << 3;
    assert_eq!(rcode_of(ask(&status)).1, ResponseCode::NotImp);
    assert!(server.stats().errors >= 6);
    assert_eq!(server.stats().dropped, 2);
}

#[test]
fn unsupported_edns_versions_get_badvers() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    let mut m = message("web.weave.local.", RecordType::A, Some(1232));
    m.edns.as_mut().unwrap().set_version(1);
    let r = reply(server.answer(&store, &m.to_vec().unwrap(), Transport::Udp, now));
    // 16 is BADVERS in an OPT context (hickory names it BADSIG, the TSIG meaning).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert_eq!(r.edns.unwrap().version(), 0);
}

#[test]
fn zone_transfers_and_other_classes_are_refused() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let m = reply(server.answer(
        &store,
        &query("weave.local.", RecordType::AXFR, None),
        Transport::Tcp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut chaos = message("web.weave.local.", RecordType::TXT, None);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let m = reply(server.answer(&store, &chaos.to_vec().unwrap(), Transport::Udp, now));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

/// The upstream's reply to `plan`: `records` A records of TTL `ttl` (or NXDOMAIN with a
/// SOA of minimum `ttl` when `records` is 0).
fn upstream_reply(plan: &ForwardPlan, records: usize, ttl: u32, rcode: ResponseCode) -> Vec<u8> {
    let q = Message::from_vec(plan.query()).unwrap();
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_queries(q.queries.clone());
    let name = q.queries[0].name().clone();
    for i in 0..records {
        m.add_answer(Record::from_rdata(
            name.clone(),
            ttl,
            RData::A(A(Ipv4Addr::new(203, 0, 113, i as u8))),
        ));
    }
    if records == 0 {
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, ttl);
        m.add_authority(Record::from_rdata(zone, 3600, RData::SOA(soa)));
    }
    if let Some(e) = &q.edns {
        m.set_edns(e.clone());
    }
    m.to_vec().unwrap()
}

#[test]
fn everything_else_is_forwarded_and_cached() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    // No upstream: SERVFAIL at once.
    let m = reply(server.answer(
        &store,
        &query("www.example.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    server.set_upstreams(vec![upstream(1), upstream(2)]);
    let q = query("WWW.example.", RecordType::A, None);
    let p = plan(server.answer(&store, &q, Transport::Udp, now));
    assert_eq!(p.upstreams(), &[upstream(1), upstream(2)]);
    assert_eq!(p.transport(), Transport::Udp);
    assert_eq!(p.timeout(), Duration::from_secs(5));
    assert_eq!(
        &p.query()[2..],
        &q[2..],
        "the client's query under another ID"
    );

    // Junk, a wrong ID or a wrong question is ignored; SERVFAIL means try the next one.
    assert_eq!(
        server.forward_reply(&p, b"junk", now),
        ForwardOutcome::Ignore
    );
    let good = upstream_reply(&p, 2, 300, ResponseCode::NoError);
    let mut wrong_id = good.clone();
    wrong_id[1] ^= 1;
    assert_eq!(
        server.forward_reply(&p, &wrong_id, now),
        ForwardOutcome::Ignore
    );
    let other = plan(server.answer(
        &store,
        &query("other.example.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    let mut wrong_q = upstream_reply(&other, 1, 300, ResponseCode::NoError);
    wrong_q[0..2].copy_from_slice(&p.query()[0..2]);
    assert_eq!(
        server.forward_reply(&p, &wrong_q, now),
        ForwardOutcome::Ignore
    );
    let failed = upstream_reply(&p, 0, 5, ResponseCode::ServFail);
    assert_eq!(
        server.forward_reply(&p, &failed, now),
        ForwardOutcome::TryNext
    );

    let ForwardOutcome::Reply(bytes) = server.forward_reply(&p, &good, now) else {
        panic!()
    };
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.id, ID);
    assert_eq!(m.answers.len(), 2);
    assert_eq!(server.cache_len(), 1);

    // Asked again 100 s later, differently spelt: from the cache, TTLs aged.
    let later = now + Duration::from_secs(100);
    let m = reply(server.answer(
        &store,
        &query("www.EXAMPLE.", RecordType::A, None),
        Transport::Udp,
        later,
    ));
    assert_eq!(m.answers.len(), 2);
    assert!(m.answers.iter().all(|r| r.ttl == 200));
    assert!(
        m.queries[0]
            .name()
            .eq_case(&Name::from_ascii("www.EXAMPLE.").unwrap())
    );
    assert!(
        m.answers
            .iter()
            .all(|r| r.name.eq_case(&Name::from_ascii("www.EXAMPLE.").unwrap()))
    );
    assert_eq!(server.stats().cache_hits, 1);
    // Another type, or with EDNS, is another cache entry; after the TTL, gone.
    plan(server.answer(
        &store,
        &query("www.example.", RecordType::AAAA, None),
        Transport::Udp,
        later,
    ));
    plan(server.answer(
        &store,
        &query("www.example.", RecordType::A, Some(1232)),
        Transport::Udp,
        later,
    ));
    plan(server.answer(&store, &q, Transport::Udp, now + Duration::from_secs(300)));

    // All upstreams failed: SERVFAIL with the question.
    let m = Message::from_vec(&server.forward_failed(&p)).unwrap();
    assert_eq!(m.metadata.id, ID);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn negative_upstream_answers_are_cached_briefly() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let q = query("nosuch.example.", RecordType::A, None);
    let p = plan(server.answer(&store, &q, Transport::Udp, now));
    let nx = upstream_reply(&p, 0, 3600, ResponseCode::NXDomain);
    let ForwardOutcome::Reply(bytes) = server.forward_reply(&p, &nx, now) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::NXDomain
    );
    let m = reply(server.answer(&store, &q, Transport::Udp, now + Duration::from_secs(29)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    plan(server.answer(&store, &q, Transport::Udp, now + Duration::from_secs(30)));
}

#[test]
fn oversized_forwarded_replies_are_truncated_for_udp_clients() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let p = plan(server.answer(
        &store,
        &query("big.example.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    // A misbehaving upstream sends 60 records (> 512 bytes) over UDP.
    let big = upstream_reply(&p, 60, 60, ResponseCode::NoError);
    assert!(big.len() > 512);
    let ForwardOutcome::Reply(bytes) = server.forward_reply(&p, &big, now) else {
        panic!()
    };
    assert!(bytes.len() <= 512);
    let m = Message::from_vec(&bytes).unwrap();
    assert!(m.metadata.truncation);
    assert_eq!(m.queries.len(), 1);
    assert!(m.answers.is_empty());
    // Over TCP the same cached reply is whole.
    let m = reply(server.answer(
        &store,
        &query("big.example.", RecordType::A, None),
        Transport::Tcp,
        now,
    ));
    assert_eq!(m.answers.len(), 60);
    assert!(!m.metadata.truncation);
}

#[test]
fn typed_messages_get_the_same_answers() {
    let now = Instant::now();
    let (mut server, store) = setup(now);
    server.set_upstreams(vec![upstream(1)]);
    let MessageAnswer::Reply(m) = server.answer_message(
        &store,
        &message("web.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ) else {
        panic!()
    };
    assert_eq!(a_addrs(&m).len(), 3);
    assert!(m.metadata.authoritative);
    let MessageAnswer::Reply(m) = server.answer_message(
        &store,
        &message("x.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ) else {
        panic!()
    };
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(
        server.answer_message(
            &store,
            &message("www.example.", RecordType::A, None),
            Transport::Udp,
            now
        ),
        MessageAnswer::Forward(_)
    ));
}

#[test]
fn a_custom_domain_and_ttl() {
    let now = Instant::now();
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    store.add("web.cluster.test.", addr(1), "c1", now).unwrap();
    store.add("web.weave.local.", addr(2), "c2", now).unwrap();
    let config = ServerConfig {
        domain: WireName::from_dotted("Cluster.Test").unwrap(),
        ttl: 30,
        ..ServerConfig::default()
    };
    let mut server = Server::new(config, 1);
    server.set_upstreams(vec![upstream(1)]);
    let m = reply(server.answer(
        &store,
        &query("web.cluster.test.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
    assert_eq!(a_addrs(&m), vec![addr(1)]);
    assert_eq!(m.answers[0].ttl, 30);
    // weave.local is not our domain any more: forwarded.
    plan(server.answer(
        &store,
        &query("web.weave.local.", RecordType::A, None),
        Transport::Udp,
        now,
    ));
}

mod robustness {
    use proptest::prelude::*;

    use super::*;

    fn check(
        server: &mut Server,
        store: &NameStore,
        bytes: &[u8],
        transport: Transport,
        now: Instant,
    ) {
        match server.answer(store, bytes, transport, now) {
            Answer::Reply(reply) => {
                assert!(
                    reply.len()
                        <= if transport == Transport::Udp {
                            4096
                        } else {
                            65535
                        }
                );
                let m = Message::from_vec(&reply).expect("our replies parse");
                assert_eq!(m.metadata.message_type, MessageType::Response);
                if bytes.len() >= 2 {
                    assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
                }
            }
            Answer::Forward(plan) => {
                Message::from_vec(&server.forward_failed(&plan)).expect("our SERVFAIL parses");
                // Any reply bytes, even carrying the right ID, never panic.
                let mut junk = bytes.to_vec();
                if junk.len() >= 3 {
                    junk[0..2].copy_from_slice(&plan.query()[0..2]);
                    junk[2] |= 0x80;
                }
                let _ = server.forward_reply(&plan, &junk, now);
            }
            Answer::Drop => {}
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), tcp in any::<bool>()) {
            let now = Instant::now();
            let (mut server, store) = setup(now);
            server.set_upstreams(vec![upstream(1)]);
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            check(&mut server, &store, &bytes, transport, now);
        }

        #[test]
        fn mutated_queries_never_panic(
            which in 0..6usize,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            tcp in any::<bool>(),
        ) {
            let now = Instant::now();
            let (mut server, store) = setup(now);
            server.set_upstreams(vec![upstream(1)]);
            let names = ["web.weave.local.", "x.weave.local.", "web.", "9.0.18.198.in-addr.arpa.", "www.example.", "weave.local."];
            let mut bytes = query(names[which], RecordType::A, if tcp { None } else { Some(1232) });
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value;
            }
            let len = bytes.len();
            bytes.truncate(len - cut.index(len / 4 + 1));
            let transport = if tcp { Transport::Tcp } else { Transport::Udp };
            check(&mut server, &store, &bytes, transport, now);
        }
    }
}
