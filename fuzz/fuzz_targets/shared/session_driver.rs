//! The driver both session fuzz targets share: feeds arbitrary bytes into a control
//! session in chunks and checks that a failed session stays failed and that no message
//! exceeds the configured cap.

use weave_mesh::session::{Role, Session, SessionConfig};

/// Byte 0 picks the mode: bit 0 puts a valid hello in front (so most inputs reach what
/// follows it), bit 1 makes the session the initiator. Byte 1 sets the chunk size the
/// rest is fed in.
pub fn run(config: &SessionConfig, data: &[u8]) {
    let [mode, chunk, rest @ ..] = data else {
        return;
    };
    let role = if mode & 2 == 0 {
        Role::Responder
    } else {
        Role::Initiator
    };
    let mut session = Session::new(config, role, [7; 32]);
    if mode & 1 == 1 {
        let flag = u8::from(config.psk.is_some());
        session
            .handle_input(&[b'w', b'e', b'a', b'v', b'e', 3, 3, flag])
            .expect("valid hello");
    }
    let mut failed = None;
    for piece in rest.chunks(1 + usize::from(*chunk % 64)) {
        let result = session.handle_input(piece);
        if let Some(error) = &failed {
            assert_eq!(result.as_ref(), Err(error), "a failed session stays failed");
        } else if let Err(error) = result {
            failed = Some(error);
        }
        while let Some(message) = session.poll_message() {
            assert!(message.len() <= config.max_message_len);
        }
        while session.poll_transmit().is_some() {}
    }
    let _ = session.send(b"probe");
}
