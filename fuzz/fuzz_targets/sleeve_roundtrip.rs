//! Frames described by arbitrary bytes, packed by the encoder (clear or sealed, at an
//! arbitrary datagram size) and opened again: every datagram must open to exactly the
//! frames that went in, in order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_mesh::PeerName;
use weave_router::sleeve::{self, Body, FrameTag, Protection, SleeveEncoder, SleeveKeys};

type Frames = Vec<(FrameTag, Vec<u8>)>;

fn check(datagram: &[u8], sealed: bool, recv: &mut sleeve::RecvCrypto, expected: &Frames) {
    let mut copy = datagram.to_vec();
    let opened = sleeve::open(&mut copy, sealed.then_some(recv)).expect("own datagram opens");
    let Body::Frames(frames) = opened.body else {
        panic!("frames datagram decoded as control");
    };
    let got: Frames = frames.map(|f| (f.tag, f.payload.to_vec())).collect();
    assert_eq!(&got, expected);
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let sealed = flags & 1 == 1;
    let max = 64 + usize::from(flags >> 1) * 64;
    let protection = if sealed {
        Protection::Sealed
    } else {
        Protection::Clear
    };
    let keys = SleeveKeys {
        send: [1; 32],
        recv: [2; 32],
    };
    let (mut send, _) = sleeve::split(&keys);
    let mut recv = sleeve::RecvCrypto::new(&keys.send);
    let mut buf = vec![0u8; max];
    let mut enc = SleeveEncoder::new(&mut buf, PeerName::from_u64(9), max, protection)
        .expect("64 bytes hold any header");
    let mut batch: Frames = Vec::new();
    // Each frame: [src][dst][hops][len] then len bytes (or what is left).
    while let [src, dst, hops, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        let tag = FrameTag {
            src: PeerName::from_u64(u64::from(*src)),
            dst: PeerName::from_u64(u64::from(*dst)),
            hops: *hops,
        };
        if payload.len() > enc.max_frame_len() {
            assert!(enc.push(tag, payload).is_err());
            continue;
        }
        if enc.push(tag, payload).is_err() {
            assert!(!enc.is_empty());
            let datagram = enc
                .finish(sealed.then_some(&mut send))
                .expect("matching protection");
            assert!(datagram.len() <= max);
            check(datagram, sealed, &mut recv, &batch);
            batch.clear();
            enc.push(tag, payload).expect("fits an empty datagram");
        }
        batch.push((tag, payload.to_vec()));
    }
    let datagram = enc
        .finish(sealed.then_some(&mut send))
        .expect("matching protection");
    check(datagram, sealed, &mut recv, &batch);
});
