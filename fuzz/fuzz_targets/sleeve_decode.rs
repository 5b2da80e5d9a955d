//! Arbitrary bytes as a sleeve datagram, opened without keys and with keys, and any
//! frames that come out fed to a forwarder: nothing may panic, and nothing forged
//! without the key may authenticate.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weave_mesh::PeerName;
use weave_router::sleeve::{self, Body, RecvCrypto};
use weave_router::{Decision, Forwarder, ForwarderConfig, RouteSnapshot};

fuzz_target!(|data: &[u8]| {
    let _ = sleeve::Header::parse(data);

    let mut clear = data.to_vec();
    let local = PeerName::from_u64(0x02_00_00_00_00_01);
    let mut fwd = Forwarder::new(local, ForwarderConfig::default());
    let neighbour = PeerName::from_u64(0x02_00_00_00_00_02);
    let routes = RouteSnapshot::from_parts(
        local,
        [(neighbour, neighbour)],
        [(local, vec![neighbour]), (neighbour, vec![neighbour])],
    );
    fwd.set_routes(routes)
        .expect("routes built for this forwarder");
    let now = Instant::now();
    let mut decision = Decision::new();
    if let Ok(opened) = sleeve::open(&mut clear, None) {
        if let Body::Frames(frames) = opened.body {
            let expected = frames.len();
            let mut seen = 0;
            for frame in frames {
                seen += 1;
                fwd.handle_sleeve_frame(
                    opened.header.sender,
                    frame.tag,
                    frame.payload,
                    now,
                    &mut decision,
                );
                fwd.handle_tap_frame(frame.payload, now, &mut decision);
            }
            assert_eq!(seen, expected);
        }
    }

    let mut sealed = data.to_vec();
    let mut recv = RecvCrypto::new(&[0x42; 32]);
    assert!(
        sleeve::open(&mut sealed, Some(&mut recv)).is_err(),
        "a datagram made without the key authenticated"
    );
    assert_eq!(
        recv.window().highest(),
        None,
        "a rejected datagram moved the window"
    );
});
