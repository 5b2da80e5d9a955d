//! Arbitrary bytes into the DNS answering path. Byte 0: bit 0 picks TCP, bit 1 splits the
//! rest into a query and an upstream reply at byte 1, bit 2 makes the upstream reply
//! echo the forwarded query (so it reaches the record walker and the cache). Every reply
//! we build ourselves must parse with hickory-proto and fit the transport.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use weave_dns::{Answer, ForwardOutcome, NameStore, Server, ServerConfig, Transport};
use weave_mesh::PeerName;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let (query, reply_tail) = match rest {
        [split, tail @ ..] if mode & 2 != 0 => tail.split_at(usize::from(*split).min(tail.len())),
        _ => (rest, &[][..]),
    };
    let now = Instant::now();
    let mut store = NameStore::new(PeerName::from_u64(1), now);
    for i in 0..40u8 {
        let name = ["web.weave.local", "db.weave.local", "a.weave.local"][usize::from(i % 3)];
        store
            .add(name, Ipv4Addr::new(198, 18, 0, i), &format!("c{i}"), now)
            .expect("valid record");
    }
    let mut server = Server::new(ServerConfig::default(), u64::from(*mode));
    server.set_upstreams(vec![SocketAddr::from(([192, 0, 2, 1], 53))]);
    let transport = if mode & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let limit = if transport == Transport::Udp {
        4096
    } else {
        65535
    };

    match server.answer(&store, query, transport, now) {
        Answer::Reply(bytes) => {
            assert!(bytes.len() <= limit);
            let parsed = Message::from_vec(&bytes).expect("our replies parse");
            assert_eq!(parsed.metadata.message_type, MessageType::Response);
        }
        Answer::Forward(plan) => {
            let mut reply = if mode & 4 != 0 {
                let mut echo = plan.query().to_vec();
                echo.extend_from_slice(reply_tail);
                echo
            } else {
                reply_tail.to_vec()
            };
            if reply.len() >= 3 {
                reply[0..2].copy_from_slice(&plan.query()[0..2]);
                reply[2] |= 0x80;
            }
            if let ForwardOutcome::Reply(bytes) = server.forward_reply(&plan, &reply, now) {
                assert!(bytes.len() <= limit);
                // Asked again later: maybe from the cache, TTLs aged; still within limits.
                if let Answer::Reply(again) =
                    server.answer(&store, query, transport, now + Duration::from_secs(3))
                {
                    assert!(again.len() <= limit);
                }
            }
            let failed = server.forward_failed(&plan);
            Message::from_vec(&failed).expect("our SERVFAIL parses");
        }
        Answer::Drop => {}
    }
}
