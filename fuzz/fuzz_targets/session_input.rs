//! Arbitrary bytes into a control session without a password: hello parsing, then the
//! plaintext framing. Byte 0 picks the mode: bit 0 puts a valid hello in front (so most
//! inputs reach the framing), bit 1 makes the session the initiator. Byte 1 sets the
//! chunk size the rest is fed in.
#![no_main]

#[path = "shared/session_driver.rs"]
mod session_driver;

use libfuzzer_sys::fuzz_target;
use weave_mesh::session::SessionConfig;

fuzz_target!(|data: &[u8]| {
    let config = SessionConfig {
        max_message_len: 4096,
        ..SessionConfig::default()
    };
    session_driver::run(&config, data);
});
