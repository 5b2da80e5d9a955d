//! Sleeve hot path: encode + seal and open + decode of 1400-byte frames, one per
//! datagram and 46 per 64 KiB datagram, beside RustCrypto's bare ChaCha20-Poly1305 seal
//! and open of the same bytes measured in the same run (`rustcrypto_*`: the baseline the
//! sleeve's AEAD, ring's, is compared to; the sleeve used RustCrypto's before). Also the
//! forwarder's per-frame decision.
//!
//! `cargo bench -p weave-router --bench sleeve`

use std::hint::black_box;
use std::time::Instant;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use weave_mesh::PeerName;
use weave_router::sleeve::{
    self, Body, FRAME_HEADER_LEN, MAX_DATAGRAM, SEALED_HEADER_LEN, TAG_LEN,
};
use weave_router::{
    Decision, Forwarder, ForwarderConfig, FrameTag, Mac, Protection, RouteSnapshot, SleeveEncoder,
    SleeveKeys,
};

const FRAME: usize = 1400;
const A: PeerName = PeerName::from_u64(0x02_00_00_00_00_0a);
const B: PeerName = PeerName::from_u64(0x02_00_00_00_00_0b);

fn keys() -> (SleeveKeys, SleeveKeys) {
    (
        SleeveKeys {
            send: [1; 32],
            recv: [2; 32],
        },
        SleeveKeys {
            send: [2; 32],
            recv: [1; 32],
        },
    )
}

fn tag() -> FrameTag {
    FrameTag {
        src: A,
        dst: B,
        hops: 64,
    }
}

fn bench_sizes(c: &mut Criterion) {
    let frame = vec![0x5au8; FRAME];
    for (name, per_datagram) in [("1x1400", 1usize), ("46x1400_64k", 46)] {
        let body_len = per_datagram * (FRAME_HEADER_LEN + FRAME);
        let datagram_len = SEALED_HEADER_LEN + body_len + TAG_LEN;
        assert!(datagram_len <= MAX_DATAGRAM);
        let mut group = c.benchmark_group(format!("sleeve_{name}"));
        group.throughput(Throughput::Bytes((per_datagram * FRAME) as u64));

        // Baseline: RustCrypto's AEAD alone over the same body with the same AAD.
        let aead = ChaCha20Poly1305::new(&Key::from([1u8; 32]));
        let aad = [0u8; SEALED_HEADER_LEN];
        let mut body = vec![0x5au8; body_len];
        let mut counter = 0u64;
        group.bench_function("rustcrypto_seal", |b| {
            b.iter(|| {
                counter += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = aead
                    .encrypt_inout_detached(&Nonce::from(n), &aad, body.as_mut_slice().into())
                    .unwrap();
                black_box(tag);
            })
        });

        let (ka, kb) = keys();
        let (mut send, _) = sleeve::split(&ka);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        group.bench_function("encode_seal", |b| {
            b.iter(|| {
                let mut enc =
                    SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Sealed).unwrap();
                for _ in 0..per_datagram {
                    enc.push(tag(), black_box(&frame)).unwrap();
                }
                black_box(enc.finish(Some(&mut send)).unwrap().len());
            })
        });
        group.bench_function("encode_clear", |b| {
            b.iter(|| {
                let mut enc =
                    SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Clear).unwrap();
                for _ in 0..per_datagram {
                    enc.push(tag(), black_box(&frame)).unwrap();
                }
                black_box(enc.finish(None).unwrap().len());
            })
        });

        // Opening decrypts in place and the replay window accepts a counter once, so
        // each iteration gets a fresh copy of the datagram and of the receive state
        // (built outside the timed part).
        let mut enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Sealed).unwrap();
        for _ in 0..per_datagram {
            enc.push(tag(), &frame).unwrap();
        }
        let sealed = enc.finish(Some(&mut send)).unwrap().to_vec();
        let (_, recv) = sleeve::split(&kb);
        let raw_tag = {
            let mut copy = sealed.clone();
            let (head, rest) = copy.split_at_mut(SEALED_HEADER_LEN);
            let (body, tag) = rest.split_at_mut(body_len);
            let tag = Tag::try_from(&*tag).unwrap();
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&head[7..15]);
            let aead = ChaCha20Poly1305::new(&Key::from([1u8; 32]));
            aead.decrypt_inout_detached(&Nonce::from(n), head, body.into(), &tag)
                .unwrap();
            tag
        };
        group.bench_function("rustcrypto_open", |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |dg| {
                    let (head, rest) = dg.split_at_mut(SEALED_HEADER_LEN);
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&head[7..15]);
                    aead.decrypt_inout_detached(
                        &Nonce::from(n),
                        head,
                        (&mut rest[..body_len]).into(),
                        &raw_tag,
                    )
                    .unwrap();
                },
                BatchSize::SmallInput,
            )
        });
        group.bench_function("open_decode", |b| {
            b.iter_batched_ref(
                || (sealed.clone(), recv.clone()),
                |(dg, recv)| {
                    let opened = sleeve::open(dg, Some(recv)).unwrap();
                    let Body::Frames(frames) = opened.body else {
                        unreachable!()
                    };
                    let mut n = 0;
                    for f in frames {
                        n += f.payload.len();
                    }
                    black_box(n);
                },
                BatchSize::SmallInput,
            )
        });
        let mut clear_enc =
            SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Clear).unwrap();
        for _ in 0..per_datagram {
            clear_enc.push(tag(), &frame).unwrap();
        }
        let clear = clear_enc.finish(None).unwrap().to_vec();
        group.bench_function("open_decode_clear", |b| {
            b.iter_batched_ref(
                || clear.clone(),
                |dg| {
                    let opened = sleeve::open(dg, None).unwrap();
                    let Body::Frames(frames) = opened.body else {
                        unreachable!()
                    };
                    black_box(frames.map(|f| f.payload.len()).sum::<usize>());
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn bench_forward(c: &mut Criterion) {
    let me = A;
    let mut fwd = Forwarder::new(me, ForwarderConfig::default());
    let peers: Vec<PeerName> = (1..=50)
        .map(|i| PeerName::from_u64(0x0300_0000_0000 + i))
        .collect();
    fwd.set_routes(RouteSnapshot::from_parts(
        me,
        peers.iter().map(|&p| (p, peers[0])),
        peers.iter().map(|&p| (p, vec![peers[1], peers[2]])),
    ))
    .unwrap();
    let now = Instant::now();
    let mut d = Decision::new();
    // Teach it 1000 remote MACs.
    for i in 0..1000u32 {
        let b = i.to_be_bytes();
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0xcc, b[0], b[1], b[2], b[3]]);
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        let t = FrameTag {
            src: peers[i as usize % 50],
            dst: me,
            hops: 64,
        };
        fwd.handle_sleeve_frame(peers[0], t, &f, now, &mut d);
    }
    let mut frame = vec![0x02, 0xcc, 0, 0, 0x01, 0xf4];
    frame.extend_from_slice(&Mac([0x02, 0xdd, 0, 0, 0, 1]).0);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.resize(FRAME, 0);
    let mut group = c.benchmark_group("forward");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tap_known_unicast", |b| {
        b.iter(|| {
            fwd.handle_tap_frame(black_box(&frame), now, &mut d);
            black_box(d.outputs.len());
        })
    });
    let mut reply = frame.clone();
    reply[..6].copy_from_slice(&[0x02, 0xdd, 0, 0, 0, 1]);
    reply[6..12].copy_from_slice(&[0x02, 0xcc, 0, 0, 0x01, 0xf4]);
    let t = FrameTag {
        src: peers[0],
        dst: me,
        hops: 64,
    };
    group.bench_function("sleeve_for_local_mac", |b| {
        b.iter(|| {
            fwd.handle_sleeve_frame(peers[0], t, black_box(&reply), now, &mut d);
            black_box(d.inject);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_sizes, bench_forward);
criterion_main!(benches);
