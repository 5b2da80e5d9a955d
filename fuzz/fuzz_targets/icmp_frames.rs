//! Frames from containers that are too big for their path: the ICMP answer and the
//! IPv4 fragmenter take any bytes without panicking, and what they build stays within
//! its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::icmp;

fuzz_target!(|input: (u16, u16, &[u8])| {
    let (mtu, max_frame, frame) = input;
    let mut out = Vec::new();
    if icmp::frag_needed(frame, mtu, &mut out) {
        assert!(out.len() <= 14 + 576);
    } else {
        assert!(out.is_empty());
    }
    let mut scratch = Vec::new();
    let max_frame = usize::from(max_frame);
    icmp::fragment_ipv4(frame, max_frame, &mut scratch, |piece| {
        assert!(piece.len() <= max_frame);
    });
});
