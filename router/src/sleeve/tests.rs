use proptest::prelude::*;

use super::*;

const A: PeerName = PeerName::from_u64(0x02_00_00_00_00_0a);
const B: PeerName = PeerName::from_u64(0x02_00_00_00_00_0b);
const C: PeerName = PeerName::from_u64(0x02_00_00_00_00_0c);

fn keys() -> (SleeveKeys, SleeveKeys) {
    let a_to_b = [0x11; 32];
    let b_to_a = [0x22; 32];
    (
        SleeveKeys {
            send: a_to_b,
            recv: b_to_a,
        },
        SleeveKeys {
            send: b_to_a,
            recv: a_to_b,
        },
    )
}

fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn tag(src: PeerName, dst: PeerName, hops: u8) -> FrameTag {
    FrameTag { src, dst, hops }
}

/// Builds one datagram from A carrying `frames`, sealed if `send` is given.
fn build(frames: &[(FrameTag, Vec<u8>)], send: Option<&mut SendCrypto>) -> Vec<u8> {
    let protection = if send.is_some() {
        Protection::Sealed
    } else {
        Protection::Clear
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, protection).unwrap();
    for (t, f) in frames {
        enc.push(*t, f).unwrap();
    }
    enc.finish(send).unwrap().to_vec()
}

fn frames_of(opened: Opened<'_>) -> Vec<(FrameTag, Vec<u8>)> {
    match opened.body {
        Body::Frames(frames) => frames.map(|f| (f.tag, f.payload.to_vec())).collect(),
        Body::Control(c) => panic!("expected frames, got {c:?}"),
    }
}

fn sample_frames() -> Vec<(FrameTag, Vec<u8>)> {
    (0..40)
        .map(|i| {
            let len = [0, 1, 14, 60, 64, 1400, 1514][i % 7];
            (tag(A, [B, C][i % 2], 64 - i as u8), frame(len, i as u8))
        })
        .collect()
}

#[test]
fn clear_round_trip_many_frames() {
    let frames = sample_frames();
    let mut dg = build(&frames, None);
    let expected_len = CLEAR_HEADER_LEN
        + frames
            .iter()
            .map(|(_, f)| FRAME_HEADER_LEN + f.len())
            .sum::<usize>();
    assert_eq!(dg.len(), expected_len);
    let opened = open(&mut dg, None).unwrap();
    assert_eq!(
        opened.header,
        Header {
            kind: Kind::Frames,
            protection: Protection::Clear,
            sender: A,
            counter: None
        }
    );
    assert_eq!(frames_of(opened), frames);
}

#[test]
fn sealed_round_trip_many_datagrams() {
    let (ka, kb) = keys();
    let (mut a_send, _) = split(&ka);
    let (_, mut b_recv) = split(&kb);
    let frames = sample_frames();
    for i in 0..20u64 {
        let mut dg = build(&frames[..(i as usize + 1)], Some(&mut a_send));
        assert_eq!(
            dg.len(),
            SEALED_HEADER_LEN
                + TAG_LEN
                + frames[..=i as usize]
                    .iter()
                    .map(|(_, f)| FRAME_HEADER_LEN + f.len())
                    .sum::<usize>()
        );
        // The frames are not readable on the wire.
        assert!(!dg.windows(1400).any(|w| w == &frames[5].1[..]));
        let opened = open(&mut dg, Some(&mut b_recv)).unwrap();
        assert_eq!(opened.header.counter, Some(i));
        assert_eq!(opened.header.sender, A);
        assert_eq!(frames_of(opened), frames[..=i as usize].to_vec());
    }
    assert_eq!(a_send.next_counter(), 20);
    assert_eq!(b_recv.window().highest(), Some(19));
}

#[test]
fn golden_clear_layout() {
    let mut buf = [0u8; 64];
    let mut enc = SleeveEncoder::new(&mut buf, A, 64, Protection::Clear).unwrap();
    enc.push(tag(A, B, 3), &[0xee; 4]).unwrap();
    let dg = enc.finish(None).unwrap();
    #[rustfmt::skip]
    let expected = [
        0x10, // version 1, clear, kind 0 (frames)
        0x02, 0, 0, 0, 0, 0x0a, // sender
        0x02, 0, 0, 0, 0, 0x0a, // frame src
        0x02, 0, 0, 0, 0, 0x0b, // frame dst
        3, // hops
        0, 4, // length
        0xee, 0xee, 0xee, 0xee,
    ];
    assert_eq!(dg, expected);
}

#[test]
fn golden_sealed_header() {
    let (ka, _) = keys();
    let (mut send, _) = split(&ka);
    let mut buf = [0u8; 64];
    let dg = encode_control(
        &mut buf,
        A,
        Control::PmtuAck { size: 0x0102 },
        Some(&mut send),
    )
    .unwrap();
    assert_eq!(dg.len(), SEALED_HEADER_LEN + 2 + TAG_LEN);
    assert_eq!(dg[0], 0x10 | 0x08 | 3);
    assert_eq!(&dg[1..7], &A.to_bytes());
    assert_eq!(&dg[7..15], &0u64.to_be_bytes());
    // Body encrypted: not the clear size.
    assert_ne!(&dg[15..17], &[1, 2]);
}

#[test]
fn full_buffer_packs_exactly_to_the_limit() {
    for protection in [Protection::Clear, Protection::Sealed] {
        let max = 1472;
        let mut buf = vec![0u8; 4096];
        let mut enc = SleeveEncoder::new(&mut buf, A, max, protection).unwrap();
        let largest = enc.max_frame_len();
        assert_eq!(largest, max - protection.overhead() - FRAME_HEADER_LEN);
        assert_eq!(enc.push(tag(A, B, 1), &frame(largest + 1, 0)), Err(Full));
        assert!(enc.is_empty());
        enc.push(tag(A, B, 1), &frame(largest, 0)).unwrap();
        assert_eq!(enc.datagram_len(), max);
        assert_eq!(enc.push(tag(A, B, 1), &[]), Err(Full));

        // Many small frames: fill until Full, never beyond the limit.
        enc.reset();
        let mut pushed = 0;
        while enc.push(tag(A, C, 1), &frame(100, pushed as u8)).is_ok() {
            pushed += 1;
            assert!(enc.datagram_len() <= max);
        }
        assert_eq!(
            pushed,
            (max - protection.overhead()) / (FRAME_HEADER_LEN + 100)
        );
        assert_eq!(enc.frame_count(), pushed);
        let (ka, kb) = keys();
        let (mut send, _) = split(&ka);
        let (_, mut recv) = split(&kb);
        let sealed = protection == Protection::Sealed;
        let mut dg = enc.finish(sealed.then_some(&mut send)).unwrap().to_vec();
        assert!(dg.len() <= max);
        let opened = open(&mut dg, sealed.then_some(&mut recv)).unwrap();
        assert_eq!(frames_of(opened).len(), pushed);
    }
}

#[test]
fn buffer_smaller_than_max_datagram_caps_the_datagram() {
    let mut buf = vec![0u8; 200];
    let enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Sealed).unwrap();
    assert_eq!(enc.max_frame_len(), 200 - 31 - 15);
    let mut tiny = [0u8; 40];
    assert_eq!(
        SleeveEncoder::new(&mut tiny, A, 40, Protection::Sealed).unwrap_err(),
        Error::BufferTooSmall
    );
}

#[test]
fn large_datagrams_round_trip() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Sealed).unwrap();
    let big = frame(enc.max_frame_len(), 9);
    assert_eq!(big.len(), MAX_DATAGRAM - 31 - 15);
    enc.push(tag(A, B, 2), &big).unwrap();
    let mut dg = enc.finish(Some(&mut send)).unwrap().to_vec();
    assert_eq!(dg.len(), MAX_DATAGRAM);
    assert_eq!(
        frames_of(open(&mut dg, Some(&mut recv)).unwrap()),
        vec![(tag(A, B, 2), big)]
    );
}

#[test]
fn finish_is_idempotent_and_push_after_finish_starts_over() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let mut buf = vec![0u8; 2000];
    let mut enc = SleeveEncoder::new(&mut buf, A, 1500, Protection::Sealed).unwrap();
    enc.push(tag(A, B, 1), &frame(100, 1)).unwrap();
    let first = enc.finish(Some(&mut send)).unwrap().to_vec();
    let again = enc.finish(Some(&mut send)).unwrap().to_vec();
    assert_eq!(first, again);
    assert_eq!(send.next_counter(), 1);
    assert!(enc.is_empty());
    enc.push(tag(A, C, 1), &frame(50, 2)).unwrap();
    assert_eq!(enc.frame_count(), 1);
    let mut second = enc.finish(Some(&mut send)).unwrap().to_vec();
    let mut first = first;
    assert_eq!(
        frames_of(open(&mut first, Some(&mut recv)).unwrap()),
        vec![(tag(A, B, 1), frame(100, 1))]
    );
    assert_eq!(
        frames_of(open(&mut second, Some(&mut recv)).unwrap()),
        vec![(tag(A, C, 1), frame(50, 2))]
    );
}

#[test]
fn protection_mismatch_is_refused_without_losing_frames() {
    let (ka, _) = keys();
    let (mut send, _) = split(&ka);
    let mut buf = vec![0u8; 200];
    let mut enc = SleeveEncoder::new(&mut buf, A, 200, Protection::Sealed).unwrap();
    enc.push(tag(A, B, 1), &[1, 2, 3]).unwrap();
    assert_eq!(enc.finish(None).unwrap_err(), Error::ProtectionMismatch);
    assert_eq!(enc.frame_count(), 1);
    assert_eq!(send.next_counter(), 0);
    enc.finish(Some(&mut send)).unwrap();

    let mut buf = vec![0u8; 200];
    let mut enc = SleeveEncoder::new(&mut buf, A, 200, Protection::Clear).unwrap();
    enc.push(tag(A, B, 1), &[1, 2, 3]).unwrap();
    assert_eq!(
        enc.finish(Some(&mut send)).unwrap_err(),
        Error::ProtectionMismatch
    );
}

#[test]
fn every_tampered_byte_is_rejected_and_leaves_the_window_alone() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let frames = vec![(tag(A, B, 5), frame(60, 1)), (tag(A, C, 5), frame(14, 2))];
    let dg = build(&frames, Some(&mut send));
    for i in 0..dg.len() {
        for bit in [0x01, 0x80] {
            let (_, mut recv) = split(&kb);
            let mut bad = dg.clone();
            bad[i] ^= bit;
            let err = open(&mut bad, Some(&mut recv)).unwrap_err();
            let expected: &[Error] = match i {
                0 => &[
                    Error::UnsupportedVersion((dg[0] ^ bit) >> 4),
                    Error::Authentication,
                ],
                // The counter's top bit: past the limit, refused before decrypting.
                7 if bit == 0x80 => &[Error::CounterExhausted],
                _ => &[Error::Authentication],
            };
            assert!(
                expected.contains(&err),
                "byte {i} bit {bit:#x}: {err:?} not in {expected:?}"
            );
            assert_eq!(recv.window().highest(), None, "byte {i}");
        }
    }
    // Flipping the sealed bit or the kind gives their own reasons.
    let (_, mut recv) = split(&kb);
    let mut bad = dg.clone();
    bad[0] &= !0x08;
    assert_eq!(
        open(&mut bad, Some(&mut recv)).unwrap_err(),
        Error::ClearWhenKeyed
    );
    let mut bad = dg.clone();
    bad[0] |= 0x07;
    assert_eq!(
        open(&mut bad, Some(&mut recv)).unwrap_err(),
        Error::UnknownKind(7)
    );
    let mut bad = dg.clone();
    bad[0] = (bad[0] & !0x07) | 1;
    assert_eq!(
        open(&mut bad, Some(&mut recv)).unwrap_err(),
        Error::Authentication
    );
    // And the genuine one still opens afterwards.
    let mut good = dg;
    assert_eq!(frames_of(open(&mut good, Some(&mut recv)).unwrap()), frames);
}

#[test]
fn every_truncation_of_a_sealed_datagram_is_rejected() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let frames = vec![(tag(A, B, 5), frame(100, 1)), (tag(A, C, 5), frame(30, 2))];
    let dg = build(&frames, Some(&mut send));
    let (_, mut recv) = split(&kb);
    for n in 0..dg.len() {
        let mut cut = dg[..n].to_vec();
        let err = open(&mut cut, Some(&mut recv)).unwrap_err();
        let ok = if n < SEALED_HEADER_LEN + TAG_LEN {
            err == Error::Truncated
        } else {
            err == Error::Authentication
        };
        assert!(ok, "length {n}: {err:?}");
    }
    let mut whole = dg;
    assert_eq!(
        frames_of(open(&mut whole, Some(&mut recv)).unwrap()),
        frames
    );
}

#[test]
fn truncation_inside_a_clear_frame_is_malformed() {
    let frames = vec![(tag(A, B, 5), frame(100, 1)), (tag(A, C, 5), frame(30, 2))];
    let dg = build(&frames, None);
    let boundary = CLEAR_HEADER_LEN + FRAME_HEADER_LEN + 100;
    for n in 0..dg.len() {
        let mut cut = dg[..n].to_vec();
        let result = open(&mut cut, None);
        match n {
            0 => assert_eq!(result.unwrap_err(), Error::Truncated),
            1..CLEAR_HEADER_LEN => assert_eq!(result.unwrap_err(), Error::Truncated),
            // Without a key nothing can tell a datagram cut at a frame boundary from
            // a shorter one; IP never cuts datagrams, and the daemon drops what the
            // socket reports as truncated (MSG_TRUNC).
            CLEAR_HEADER_LEN => assert_eq!(frames_of(result.unwrap()), vec![]),
            _ if n == boundary => assert_eq!(frames_of(result.unwrap()), frames[..1].to_vec()),
            _ => assert_eq!(result.unwrap_err(), Error::Malformed, "length {n}"),
        }
    }
}

#[test]
fn replayed_datagram_is_rejected() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let dg = build(&[(tag(A, B, 1), frame(64, 0))], Some(&mut send));
    let mut once = dg.clone();
    open(&mut once, Some(&mut recv)).unwrap();
    let mut twice = dg;
    assert_eq!(
        open(&mut twice, Some(&mut recv)).unwrap_err(),
        Error::Replayed
    );
}

#[test]
fn reordered_within_window_is_accepted_once() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let datagrams: Vec<Vec<u8>> = (0..300)
        .map(|i| build(&[(tag(A, B, 1), frame(64, i as u8))], Some(&mut send)))
        .collect();
    // A fixed permutation that moves datagrams both ways by up to 300 places.
    let mut order: Vec<usize> = (0..300).collect();
    order.sort_by_key(|&i| (i * 7919) % 300);
    for &i in &order {
        let mut dg = datagrams[i].clone();
        let opened = open(&mut dg, Some(&mut recv)).unwrap();
        assert_eq!(frames_of(opened), vec![(tag(A, B, 1), frame(64, i as u8))]);
    }
    for &i in &order {
        let mut dg = datagrams[i].clone();
        assert_eq!(open(&mut dg, Some(&mut recv)).unwrap_err(), Error::Replayed);
    }
}

#[test]
fn too_old_datagram_is_rejected() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let first = build(&[(tag(A, B, 1), frame(20, 0))], Some(&mut send));
    let mut last = Vec::new();
    for _ in 0..=REPLAY_WINDOW {
        last = build(&[(tag(A, B, 1), frame(20, 0))], Some(&mut send));
    }
    open(&mut last, Some(&mut recv)).unwrap();
    assert_eq!(recv.window().highest(), Some(REPLAY_WINDOW + 1));
    let mut first = first;
    assert_eq!(
        open(&mut first, Some(&mut recv)).unwrap_err(),
        Error::TooOld
    );
}

#[test]
fn wrong_key_or_wrong_direction_fails_authentication() {
    let (ka, kb) = keys();
    let (mut a_send, mut a_recv) = split(&ka);
    let dg = build(&[(tag(A, B, 1), frame(64, 0))], Some(&mut a_send));
    // Our own datagram reflected back at us does not open with our receive key.
    let mut reflected = dg.clone();
    assert_eq!(
        open(&mut reflected, Some(&mut a_recv)).unwrap_err(),
        Error::Authentication
    );
    let mut stranger = RecvCrypto::new(&[0x33; 32]);
    let mut other = dg.clone();
    assert_eq!(
        open(&mut other, Some(&mut stranger)).unwrap_err(),
        Error::Authentication
    );
    let (_, mut b_recv) = split(&kb);
    let mut genuine = dg;
    open(&mut genuine, Some(&mut b_recv)).unwrap();
}

#[test]
fn forged_counter_does_not_advance_the_window() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let genuine = build(&[(tag(A, B, 1), frame(64, 0))], Some(&mut send));
    let mut forged = genuine.clone();
    forged[7..15].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(
        open(&mut forged, Some(&mut recv)).unwrap_err(),
        Error::Authentication
    );
    assert_eq!(recv.window().highest(), None);
    let mut genuine = genuine;
    open(&mut genuine, Some(&mut recv)).unwrap();
}

#[test]
fn keyed_and_unkeyed_do_not_mix() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let mut clear = build(&[(tag(A, B, 1), frame(64, 0))], None);
    assert_eq!(
        open(&mut clear, Some(&mut recv)).unwrap_err(),
        Error::ClearWhenKeyed
    );
    let mut sealed = build(&[(tag(A, B, 1), frame(64, 0))], Some(&mut send));
    assert_eq!(
        open(&mut sealed, None).unwrap_err(),
        Error::SealedWhenUnkeyed
    );
}

#[test]
fn header_errors() {
    assert_eq!(Header::parse(&[]).unwrap_err(), Error::Truncated);
    assert_eq!(
        Header::parse(&[0x20; 30]).unwrap_err(),
        Error::UnsupportedVersion(2)
    );
    assert_eq!(
        Header::parse(&[0x15; 30]).unwrap_err(),
        Error::UnknownKind(5)
    );
    assert_eq!(Header::parse(&[0x10; 6]).unwrap_err(), Error::Truncated);
    assert_eq!(Header::parse(&[0x18; 30]).unwrap_err(), Error::Truncated);
    let h = Header::parse(&[0x18; 31]).unwrap();
    assert_eq!(h.protection, Protection::Sealed);
    assert_eq!(h.counter, Some(u64::from_be_bytes([0x18; 8])));
}

#[test]
fn control_round_trips_clear_and_sealed() {
    let (ka, kb) = keys();
    let (mut send, _) = split(&ka);
    let (_, mut recv) = split(&kb);
    let controls = [
        Control::Heartbeat {
            connection: 0x0123_4567_89ab_cdef,
        },
        Control::PmtuAck { size: 1472 },
        Control::PmtuProbe { size: 1472 },
        Control::PmtuProbe { size: 33 },
        Control::PmtuProbe {
            size: MAX_DATAGRAM as u16,
        },
    ];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for control in controls {
        let mut dg = encode_control(&mut buf, B, control, None).unwrap().to_vec();
        if let Control::PmtuProbe { size } = control {
            assert_eq!(dg.len(), usize::from(size));
        }
        let opened = open(&mut dg, None).unwrap();
        assert_eq!(opened.header.kind, control.kind());
        assert_eq!(opened.header.sender, B);
        assert!(matches!(opened.body, Body::Control(c) if c == control));

        let mut dg = encode_control(&mut buf, B, control, Some(&mut send))
            .unwrap()
            .to_vec();
        if let Control::PmtuProbe { size } = control {
            assert_eq!(dg.len(), usize::from(size));
        }
        let opened = open(&mut dg, Some(&mut recv)).unwrap();
        assert_eq!(opened.header.protection, Protection::Sealed);
        assert!(matches!(opened.body, Body::Control(c) if c == control));
    }
    // Controls share the counter with frames: a replayed heartbeat is refused.
    let mut hb = encode_control(&mut buf, B, controls[0], Some(&mut send))
        .unwrap()
        .to_vec();
    let mut again = hb.clone();
    open(&mut hb, Some(&mut recv)).unwrap();
    assert_eq!(
        open(&mut again, Some(&mut recv)).unwrap_err(),
        Error::Replayed
    );
}

#[test]
fn bad_control_bodies_are_malformed() {
    let mut buf = vec![0u8; 2000];
    let probe = encode_control(&mut buf, B, Control::PmtuProbe { size: 1000 }, None)
        .unwrap()
        .to_vec();
    // A probe that lost its tail proves nothing.
    let mut short = probe[..999].to_vec();
    assert_eq!(open(&mut short, None).unwrap_err(), Error::Malformed);
    let mut hb = encode_control(&mut buf, B, Control::Heartbeat { connection: 1 }, None)
        .unwrap()
        .to_vec();
    hb.push(0);
    assert_eq!(open(&mut hb, None).unwrap_err(), Error::Malformed);
    let mut ack = encode_control(&mut buf, B, Control::PmtuAck { size: 1 }, None)
        .unwrap()
        .to_vec();
    ack.pop();
    assert_eq!(open(&mut ack, None).unwrap_err(), Error::Malformed);
    assert_eq!(
        encode_control(&mut buf, B, Control::PmtuProbe { size: 8 }, None).unwrap_err(),
        Error::InvalidProbeSize(8)
    );
    assert_eq!(
        encode_control(&mut buf, B, Control::PmtuProbe { size: 2001 }, None).unwrap_err(),
        Error::BufferTooSmall
    );
}

#[test]
fn overheads_and_container_mtu() {
    assert_eq!(Protection::Clear.overhead(), 7);
    assert_eq!(Protection::Sealed.overhead(), 31);
    assert_eq!(Protection::Clear.container_mtu(1500), 1436);
    assert_eq!(Protection::Sealed.container_mtu(1500), 1412);
}

fn arb_frames() -> impl Strategy<Value = Vec<(FrameTag, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..1600),
        )
            .prop_map(|(s, d, h, f)| (tag(PeerName::from_u64(s), PeerName::from_u64(d), h), f)),
        0..60,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn encoder_round_trips_whatever_fits(
        frames in arb_frames(),
        max in 60usize..20_000,
        sealed in any::<bool>(),
    ) {
        let (ka, kb) = keys();
        let (mut send, _) = split(&ka);
        let (_, mut recv) = split(&kb);
        let protection = if sealed { Protection::Sealed } else { Protection::Clear };
        let mut buf = vec![0u8; max];
        let mut enc = SleeveEncoder::new(&mut buf, A, max, protection).unwrap();
        let mut datagrams = Vec::new();
        let mut batches = vec![Vec::new()];
        for (t, f) in &frames {
            if f.len() > enc.max_frame_len() {
                prop_assert_eq!(enc.push(*t, f), Err(Full));
                continue;
            }
            if enc.push(*t, f).is_err() {
                prop_assert!(!enc.is_empty());
                datagrams.push(enc.finish(sealed.then_some(&mut send)).unwrap().to_vec());
                batches.push(Vec::new());
                prop_assert!(enc.push(*t, f).is_ok());
            }
            batches.last_mut().unwrap().push((*t, f.clone()));
        }
        datagrams.push(enc.finish(sealed.then_some(&mut send)).unwrap().to_vec());
        prop_assert_eq!(datagrams.len(), batches.len());
        for (mut dg, batch) in datagrams.into_iter().zip(batches) {
            prop_assert!(dg.len() <= max);
            let opened = open(&mut dg, sealed.then_some(&mut recv)).unwrap();
            prop_assert_eq!(frames_of(opened), batch);
        }
    }

    #[test]
    fn open_never_panics_on_noise(mut bytes in prop::collection::vec(any::<u8>(), 0..400), keyed in any::<bool>()) {
        let (_, kb) = keys();
        let (_, mut recv) = split(&kb);
        if let Ok(opened) = open(&mut bytes, keyed.then_some(&mut recv)) {
            // Only clear datagrams can be built by chance.
            prop_assert!(!keyed);
            if let Body::Frames(frames) = opened.body {
                let n = frames.len();
                prop_assert_eq!(frames.count(), n);
            }
        }
    }
}

/// The sleeve's AEAD (ring) and an independent RFC 8439 implementation (RustCrypto's,
/// which the control session uses) agree on the wire: nonce layout, AAD and tag.
#[test]
fn sealed_datagrams_match_an_independent_chacha20poly1305() {
    use chacha20poly1305::aead::AeadInOut;
    use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, Tag};

    let (ka, _) = keys();
    let (mut send, _) = split(&ka);
    send.reserve().unwrap();
    let frames = sample_frames();
    let mut dg = build(&frames, Some(&mut send));
    let aead = ChaCha20Poly1305::new(&Key::from(ka.send));
    let body_end = dg.len() - TAG_LEN;
    let (head, rest) = dg.split_at_mut(SEALED_HEADER_LEN);
    let (body, tag) = rest.split_at_mut(body_end - SEALED_HEADER_LEN);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&head[7..15]);
    assert_eq!(&head[7..15], &1u64.to_be_bytes());
    let tag = Tag::try_from(&*tag).unwrap();
    aead.decrypt_inout_detached(&Nonce::from(nonce), head, body.into(), &tag)
        .expect("RustCrypto opens what ring sealed");
    let clear = build(&frames, None);
    assert_eq!(&body[..], &clear[CLEAR_HEADER_LEN..]);

    // And the other way round: RustCrypto seals, the sleeve opens.
    let (_, kb_recv) = split(&SleeveKeys {
        send: [0; 32],
        recv: ka.send,
    });
    let mut recv = kb_recv;
    let mut dg2 = vec![0u8; SEALED_HEADER_LEN];
    dg2[0] = Header::first_byte(Kind::Frames, Protection::Sealed);
    dg2[1..7].copy_from_slice(&A.to_bytes());
    dg2[7..15].copy_from_slice(&5u64.to_be_bytes());
    dg2.extend_from_slice(&clear[CLEAR_HEADER_LEN..]);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&5u64.to_be_bytes());
    let (head, body) = dg2.split_at_mut(SEALED_HEADER_LEN);
    let tag = aead
        .encrypt_inout_detached(&Nonce::from(nonce), head, body.into())
        .unwrap();
    dg2.extend_from_slice(&tag);
    let opened = open(&mut dg2, Some(&mut recv)).expect("the sleeve opens RustCrypto's seal");
    assert_eq!(frames_of(opened), frames);
}

#[test]
fn offload_frames_round_trip_and_need_their_metadata() {
    let frames = vec![
        (tag(A, B, 64), frame(10 + 1400, 1)),
        (tag(A, C, 64), frame(10, 2)),
    ];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Clear)
        .unwrap()
        .offload();
    for (t, f) in &frames {
        enc.push(*t, f).unwrap();
    }
    let mut dg = enc.finish(None).unwrap().to_vec();
    assert_eq!(dg[0], 0x14, "version 1, clear, kind 4");
    let mut copy = dg.clone();
    let opened = open(&mut copy, None).unwrap();
    assert_eq!(opened.header.kind, Kind::OffloadFrames);
    assert_eq!(frames_of(opened), frames);
    // A record shorter than the metadata is malformed.
    let mut enc = SleeveEncoder::new(&mut buf, A, MAX_DATAGRAM, Protection::Clear)
        .unwrap()
        .offload();
    enc.push(tag(A, B, 64), &[1, 2, 3]).unwrap();
    dg = enc.finish(None).unwrap().to_vec();
    assert_eq!(open(&mut dg, None).unwrap_err(), Error::Malformed);
}
