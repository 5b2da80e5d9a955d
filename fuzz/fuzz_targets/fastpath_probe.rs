//! A frame read from the fast path's probe device (anyone can send UDP to port 6784):
//! decoding never panics, and what decodes re-encodes to a probe that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::fastpath::Probe;

fuzz_target!(|data: &[u8]| {
    if let Ok(probe) = Probe::decode_frame(data) {
        let mut buf = [0u8; Probe::VXLAN_LEN];
        let len = probe.encode_vxlan(&mut buf);
        assert_eq!(Probe::decode_frame(&buf[8..len]), Ok(probe));
    }
});
