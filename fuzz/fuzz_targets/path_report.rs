//! The path report (a direct message from a neighbour over the control connection):
//! decoding never panics, and what decodes re-encodes to the same leading bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weave_router::PathReport;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = PathReport::decode(data) {
        let bytes = report.encode();
        assert_eq!(PathReport::decode(&bytes), Ok(report));
        assert_eq!(&bytes[..9], &data[..9]);
    }
});
