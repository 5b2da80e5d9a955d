//! The control connection's byte layer (TCP 6783): hello and version negotiation, the
//! password handshake, then length-prefixed, optionally encrypted frames.
//!
//! [`Session`] is sans-IO: the caller feeds it whatever TCP read ([`Session::handle_input`],
//! any chunking), writes out what [`Session::poll_transmit`] yields, and takes authenticated
//! application payloads from [`Session::poll_message`]. It reads no clock and no OS RNG: the
//! Noise ephemeral key comes from the seed given to [`Session::new`], so a simulation
//! replays byte for byte. Timeouts (a peer that never finishes its hello) belong to the
//! connection layer above, which owns the clock.
//!
//! Wire format, key schedule and the choice of `Noise_NNpsk2` are documented in
//! `docs/protocol-control.md`, section "Control connection (TCP 6783)".

use std::collections::VecDeque;
use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hkdf::Hkdf;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sha2::Sha256;
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

#[cfg(test)]
mod tests;

/// The magic every hello starts with (as in Weave Net, so a Go peer fails on the version).
pub const MAGIC: &[u8; 5] = b"weave";
/// Hello length: magic, min version, max version, encryption flag.
pub const HELLO_LEN: usize = 8;
/// The only protocol version this implementation speaks. Weave Net's Go peers speak 1..=2.
pub const PROTOCOL_VERSION: u8 = 3;
/// Default cap on one application payload.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 8 << 20;
/// Length of a frame's length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// AEAD tag appended to every encrypted frame body.
pub const TAG_LEN: usize = 16;

/// The Noise protocol used when a password is set (see the protocol doc for why NNpsk2:
/// the password enters after `ee`, so a recorded handshake is no password oracle).
pub const NOISE_PATTERN: &str = "Noise_NNpsk2_25519_ChaChaPoly_BLAKE2s";
/// The handshake's psk modifier position (`psk2`: mixed in at the end of message 2).
const PSK_POSITION: u8 = 2;
/// Mixed into the Noise prologue ahead of both hellos.
const PROLOGUE_LABEL: &[u8] = b"weave-rs control v3";
/// Handshake message bodies are 48 bytes (32-byte ephemeral + 16-byte tag of an empty
/// payload: in a psk handshake `e` is mixed into the key, so even message 1 carries a
/// tag); anything past this cap is garbage, rejected before buffering it.
const MAX_HANDSHAKE_LEN: usize = 256;

/// Argon2id salt for [`derive_psk`]. Fixed (every peer must derive the same key from the
/// same password) and specific to this protocol, so tables built for other uses of the
/// password do not apply.
pub const PSK_SALT: &[u8] = b"weave-rs control psk v1";
/// Argon2id memory cost in KiB (OWASP's 19 MiB recommendation).
pub const PSK_M_COST_KIB: u32 = 19 * 1024;
/// Argon2id passes.
pub const PSK_T_COST: u32 = 2;

const LABEL_CONTROL_I2R: &[u8] = b"weave-rs control initiator->responder";
const LABEL_CONTROL_R2I: &[u8] = b"weave-rs control responder->initiator";
const LABEL_SLEEVE_I2R: &[u8] = b"weave-rs sleeve initiator->responder";
const LABEL_SLEEVE_R2I: &[u8] = b"weave-rs sleeve responder->initiator";

/// Stretches a password into the 32-byte pre-shared key of the handshake: Argon2id,
/// [`PSK_M_COST_KIB`] KiB, [`PSK_T_COST`] passes, one lane, salt [`PSK_SALT`].
///
/// It runs once per daemon start. Its cost is what an attacker pays per offline guess: a
/// recorded handshake is no oracle (the password enters after `ee`), but anyone who
/// connects and receives a message 2 can test guesses against it, as with any PSK-only
/// scheme.
pub fn derive_psk(password: &[u8]) -> [u8; 32] {
    let params = Params::new(PSK_M_COST_KIB, PSK_T_COST, 1, Some(32))
        .expect("constant Argon2 parameters are within range");
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, PSK_SALT, &mut out)
        .expect("salt is at least 8 bytes and the output 32; passwords up to 4 GiB are accepted");
    out
}

/// How a session is set up. Both ends must agree on whether there is a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Pre-shared key from [`derive_psk`]; `None` means no password (plaintext frames).
    pub psk: Option<[u8; 32]>,
    /// Lowest protocol version we accept.
    pub min_version: u8,
    /// Highest protocol version we speak.
    pub max_version: u8,
    /// Largest application payload accepted or sent, in bytes (capped at 4 GiB - 17).
    pub max_message_len: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            psk: None,
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
        }
    }
}

impl SessionConfig {
    /// The default configuration with a pre-shared key.
    pub fn with_psk(psk: [u8; 32]) -> Self {
        Self {
            psk: Some(psk),
            ..Self::default()
        }
    }
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("psk", &self.psk.map(|_| "<redacted>"))
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("max_message_len", &self.max_message_len)
            .finish()
    }
}

/// Which end of the TCP connection we are: the dialler initiates the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Initiator,
    Responder,
}

/// Per-direction keys for the UDP data plane ("sleeve"), derived from the same handshake as
/// the control connection's keys but under different labels, so they never coincide with
/// them. The initiator's `send` equals the responder's `recv` and vice versa.
#[derive(Clone, PartialEq, Eq)]
pub struct SleeveKeys {
    pub send: [u8; 32],
    pub recv: [u8; 32],
}

impl fmt::Debug for SleeveKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SleeveKeys { .. }")
    }
}

/// Why a control session failed. The text is what `weave status connections` shows after
/// "failed: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("not a weave peer (bad magic in hello)")]
    BadMagic,
    #[error(
        "no common protocol version: we speak {ours_min}..{ours_max}, peer {peer_min}..{peer_max}"
    )]
    NoCommonVersion {
        ours_min: u8,
        ours_max: u8,
        peer_min: u8,
        peer_max: u8,
    },
    #[error("invalid encryption flag {flag} in peer hello")]
    BadEncryptionFlag { flag: u8 },
    #[error("{}", password_mismatch_text(*.we_have_password))]
    PasswordMismatch { we_have_password: bool },
    /// We are the initiator and the responder's handshake message (the one that mixes in
    /// the password) did not authenticate under our key.
    #[error("authentication failed (wrong password?)")]
    AuthenticationFailed,
    /// We are the responder and the initiator told us our handshake message did not
    /// authenticate under its key.
    #[error("peer rejected our password (wrong password?)")]
    PeerRejectedPassword,
    #[error("malformed handshake message")]
    MalformedHandshake,
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    #[error("message failed authentication (corrupted or forged)")]
    Decrypt,
    #[error("message counter exhausted")]
    CounterExhausted,
}

fn password_mismatch_text(we_have_password: bool) -> &'static str {
    if we_have_password {
        "we require a password, peer has none"
    } else {
        "peer requires a password, we have none"
    }
}

/// One end of a control connection. See the module documentation.
pub struct Session {
    role: Role,
    psk: Option<[u8; 32]>,
    min_version: u8,
    max_version: u8,
    /// Effective payload cap (config value clamped so a frame length fits in 32 bits).
    max_message_len: usize,
    seed: [u8; 32],
    our_hello: [u8; HELLO_LEN],
    phase: Phase,
    version: Option<u8>,
    /// Frame keys, set once the handshake has split (encrypted sessions only).
    cipher: Option<FrameCipher>,
    sleeve: Option<SleeveKeys>,
    rx: RecvBuf,
    tx: VecDeque<Vec<u8>>,
    /// Application payloads sent before the session was established, in order.
    pending: Vec<Vec<u8>>,
    inbox: VecDeque<Vec<u8>>,
}

enum Phase {
    /// Waiting for the peer's hello.
    Hello,
    /// Waiting for a Noise message: the responder for message 1, the initiator for 2.
    Noise(Box<HandshakeState>),
    /// Responder only: the handshake has split, waiting for the initiator's first frame,
    /// which proves it holds the ephemeral key (message 1 alone could be a replay) and
    /// the password (message 1 does not involve it). A reject notice may come instead.
    Confirm,
    Established,
    Failed(SessionError),
}

impl Session {
    /// A new session; our hello is queued for [`poll_transmit`](Self::poll_transmit) at
    /// once. `seed` determines our Noise ephemeral key: give each connection a fresh one.
    pub fn new(config: &SessionConfig, role: Role, seed: [u8; 32]) -> Self {
        let our_hello = [
            MAGIC[0],
            MAGIC[1],
            MAGIC[2],
            MAGIC[3],
            MAGIC[4],
            config.min_version,
            config.max_version,
            u8::from(config.psk.is_some()),
        ];
        let max_frame_payload = u32::MAX as usize - TAG_LEN;
        Self {
            role,
            psk: config.psk,
            min_version: config.min_version,
            max_version: config.max_version,
            max_message_len: config.max_message_len.min(max_frame_payload),
            seed,
            our_hello,
            phase: Phase::Hello,
            version: None,
            cipher: None,
            sleeve: None,
            rx: RecvBuf::default(),
            tx: VecDeque::from([our_hello.to_vec()]),
            pending: Vec::new(),
            inbox: VecDeque::new(),
        }
    }

    /// Feeds bytes read from TCP. On error the session is failed for good: later calls
    /// return the same error. Bytes may still be queued for transmission (the initiator's
    /// reject notice for a wrong password): drain [`poll_transmit`](Self::poll_transmit)
    /// before closing.
    pub fn handle_input(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        if let Phase::Failed(error) = &self.phase {
            return Err(error.clone());
        }
        self.rx.extend(bytes);
        let result = self.process();
        self.rx.compact();
        if let Err(error) = &result {
            self.fail(error.clone());
        }
        result
    }

    /// The next authenticated application payload, in the order the peer sent them.
    pub fn poll_message(&mut self) -> Option<Vec<u8>> {
        self.inbox.pop_front()
    }

    /// Queues an application payload. Before the session is established it is held and
    /// sent, in order, once it is.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), SessionError> {
        if let Phase::Failed(error) = &self.phase {
            return Err(error.clone());
        }
        if payload.len() > self.max_message_len {
            return Err(SessionError::MessageTooLarge {
                len: payload.len(),
                max: self.max_message_len,
            });
        }
        if matches!(self.phase, Phase::Established) {
            let frame = self.seal(payload)?;
            self.tx.push_back(frame);
        } else {
            self.pending.push(payload.to_vec());
        }
        Ok(())
    }

    /// The next bytes to write to TCP, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }

    /// Appends everything queued for TCP to `out` (one write instead of one per frame).
    pub fn transmit_into(&mut self, out: &mut Vec<u8>) {
        for chunk in self.tx.drain(..) {
            out.extend_from_slice(&chunk);
        }
    }

    /// Both sides have proven they hold the password (if any): payloads flow.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established)
    }

    /// The failure that ended this session, if it has failed.
    pub fn error(&self) -> Option<&SessionError> {
        match &self.phase {
            Phase::Failed(error) => Some(error),
            _ => None,
        }
    }

    /// The negotiated protocol version, once the hellos have been exchanged.
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// Whether frames are encrypted (we have a password; the peer must have one too).
    pub fn encrypted(&self) -> bool {
        self.psk.is_some()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Keys for the UDP data plane, once an encrypted session is established.
    pub fn sleeve_keys(&self) -> Option<SleeveKeys> {
        if self.is_established() {
            self.sleeve.clone()
        } else {
            None
        }
    }

    fn fail(&mut self, error: SessionError) {
        self.phase = Phase::Failed(error);
        self.cipher = None;
        self.sleeve = None;
        self.pending = Vec::new();
        self.rx = RecvBuf::default();
    }

    /// Consumes as many complete records from `rx` as the current phase allows.
    fn process(&mut self) -> Result<(), SessionError> {
        loop {
            let progressed = match self.phase {
                Phase::Hello => self.read_hello()?,
                Phase::Noise(_) => self.read_noise()?,
                Phase::Confirm | Phase::Established => self.read_frame()?,
                Phase::Failed(_) => false,
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    /// Validates the peer's hello as far as it has arrived, so garbage fails at its first
    /// byte and a Go peer (7-byte header, no flag yet) fails on its versions.
    fn read_hello(&mut self) -> Result<bool, SessionError> {
        let avail = self.rx.available();
        let magic_seen = avail.len().min(MAGIC.len());
        if avail[..magic_seen] != MAGIC[..magic_seen] {
            return Err(SessionError::BadMagic);
        }
        if avail.len() < MAGIC.len() + 2 {
            return Ok(false);
        }
        let (peer_min, peer_max) = (avail[5], avail[6]);
        let low = self.min_version.max(peer_min);
        let high = self.max_version.min(peer_max);
        if low > high {
            return Err(SessionError::NoCommonVersion {
                ours_min: self.min_version,
                ours_max: self.max_version,
                peer_min,
                peer_max,
            });
        }
        let Some(&flag) = avail.get(7) else {
            return Ok(false);
        };
        let peer_has_password = match flag {
            0 => false,
            1 => true,
            flag => return Err(SessionError::BadEncryptionFlag { flag }),
        };
        if peer_has_password != self.psk.is_some() {
            return Err(SessionError::PasswordMismatch {
                we_have_password: self.psk.is_some(),
            });
        }
        let mut peer_hello = [0u8; HELLO_LEN];
        peer_hello.copy_from_slice(&avail[..HELLO_LEN]);
        self.rx.consume(HELLO_LEN);
        self.version = Some(high);

        match self.psk {
            None => self.establish()?,
            Some(psk) => {
                let mut handshake = self.build_handshake(&psk, &peer_hello);
                if self.role == Role::Initiator {
                    let mut message = [0u8; MAX_HANDSHAKE_LEN];
                    let len = handshake
                        .write_message(&[], &mut message)
                        .expect("NNpsk2 message 1 fits in 256 bytes");
                    self.tx.push_back(handshake_record(&message[..len]));
                }
                self.phase = Phase::Noise(Box::new(handshake));
            }
        }
        Ok(true)
    }

    fn build_handshake(&self, psk: &[u8; 32], peer_hello: &[u8; HELLO_LEN]) -> HandshakeState {
        // Both hellos go into the prologue so a man in the middle cannot rewrite the
        // version ranges without the handshake failing.
        let (initiator_hello, responder_hello) = match self.role {
            Role::Initiator => (&self.our_hello, peer_hello),
            Role::Responder => (peer_hello, &self.our_hello),
        };
        let mut prologue = Vec::with_capacity(PROLOGUE_LABEL.len() + 2 * HELLO_LEN);
        prologue.extend_from_slice(PROLOGUE_LABEL);
        prologue.extend_from_slice(initiator_hello);
        prologue.extend_from_slice(responder_hello);

        let params: NoiseParams = NOISE_PATTERN
            .parse()
            .expect("NOISE_PATTERN is a valid name");
        let builder = Builder::with_resolver(params, Box::new(SeededResolver { seed: self.seed }))
            .psk(PSK_POSITION, psk)
            .expect("the psk slot is set once")
            .prologue(&prologue)
            .expect("prologue is set once");
        match self.role {
            Role::Initiator => builder.build_initiator(),
            Role::Responder => builder.build_responder(),
        }
        .expect("the seeded resolver provides every primitive of NOISE_PATTERN")
    }

    /// Reads one handshake record: `u32` length + Noise message.
    fn read_noise(&mut self) -> Result<bool, SessionError> {
        let avail = self.rx.available();
        let Some(len) = read_length(avail) else {
            return Ok(false);
        };
        if len > MAX_HANDSHAKE_LEN {
            return Err(SessionError::MalformedHandshake);
        }
        let Some(message) = avail.get(LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len) else {
            return Ok(false);
        };
        let Phase::Noise(handshake) = &mut self.phase else {
            unreachable!("read_noise runs in the Noise phase only");
        };
        if message.is_empty() {
            // Only the initiator sends reject notices, and only after message 2.
            return Err(SessionError::MalformedHandshake);
        }
        let mut payload = [0u8; MAX_HANDSHAKE_LEN];
        if let Err(error) = handshake.read_message(message, &mut payload) {
            return Err(match (error, self.role) {
                // Message 2 mixes in the password: a wrong one (or tampering) shows here.
                // Tell the responder why we hang up, so it does not see a bare EOF.
                (snow::Error::Decrypt, Role::Initiator) => {
                    self.tx.push_back(handshake_record(&[]));
                    SessionError::AuthenticationFailed
                }
                // Message 1's tag is under public values only (prologue and `e`): failing
                // it means altered bytes or rewritten hellos, not a wrong password.
                (snow::Error::Decrypt, Role::Responder) => SessionError::Decrypt,
                _ => SessionError::MalformedHandshake,
            });
        }
        self.rx.consume(LENGTH_PREFIX_LEN + len);

        if self.role == Role::Responder {
            let mut message = [0u8; MAX_HANDSHAKE_LEN];
            let len = handshake
                .write_message(&[], &mut message)
                .expect("NNpsk2 message 2 fits in 256 bytes");
            self.tx.push_back(handshake_record(&message[..len]));
        }
        debug_assert!(handshake.is_handshake_finished(), "NNpsk2 has two messages");
        let keys = derive_keys(handshake);
        let (control_send, control_recv, sleeve) = match self.role {
            Role::Initiator => (
                keys.control_i2r,
                keys.control_r2i,
                SleeveKeys {
                    send: keys.sleeve_i2r,
                    recv: keys.sleeve_r2i,
                },
            ),
            Role::Responder => (
                keys.control_r2i,
                keys.control_i2r,
                SleeveKeys {
                    send: keys.sleeve_r2i,
                    recv: keys.sleeve_i2r,
                },
            ),
        };
        self.cipher = Some(FrameCipher::new(&control_send, &control_recv));
        self.sleeve = Some(sleeve);
        match self.role {
            Role::Initiator => {
                // The confirm frame: an empty payload under our new key. It proves to the
                // responder that we hold the ephemeral key (not merely a recording) and
                // the password, which message 1 says nothing about.
                let confirm = self.seal(&[])?;
                self.tx.push_back(confirm);
                self.establish()?;
            }
            Role::Responder => self.phase = Phase::Confirm,
        }
        Ok(true)
    }

    /// Reads one frame: `u32` length + body (ciphertext + tag when encrypted).
    fn read_frame(&mut self) -> Result<bool, SessionError> {
        let avail = self.rx.available();
        let Some(body_len) = read_length(avail) else {
            return Ok(false);
        };
        if body_len == 0 && matches!(self.phase, Phase::Confirm) {
            // The initiator's reject notice: an empty record, which no encrypted frame
            // (16-byte tag at least) can be. Its message 2 did not authenticate.
            return Err(SessionError::PeerRejectedPassword);
        }
        let overhead = if self.cipher.is_some() { TAG_LEN } else { 0 };
        if body_len > self.max_message_len + overhead {
            return Err(SessionError::MessageTooLarge {
                len: body_len - overhead,
                max: self.max_message_len,
            });
        }
        let frame_len = LENGTH_PREFIX_LEN + body_len;
        let Some(frame) = avail.get(..frame_len) else {
            return Ok(false);
        };
        let payload = match &mut self.cipher {
            Some(cipher) => cipher.open(frame)?,
            None => frame[LENGTH_PREFIX_LEN..].to_vec(),
        };
        self.rx.consume(frame_len);
        if matches!(self.phase, Phase::Confirm) {
            if !payload.is_empty() {
                return Err(SessionError::MalformedHandshake);
            }
            self.establish()?;
        } else {
            self.inbox.push_back(payload);
        }
        Ok(true)
    }

    fn establish(&mut self) -> Result<(), SessionError> {
        self.phase = Phase::Established;
        for payload in std::mem::take(&mut self.pending) {
            let frame = self.seal(&payload)?;
            self.tx.push_back(frame);
        }
        Ok(())
    }

    /// Frames a payload (length-checked by the caller), encrypting it if we have keys.
    fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        match &mut self.cipher {
            Some(cipher) => cipher.seal(payload),
            None => {
                let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + payload.len());
                frame.extend_from_slice(&frame_length(payload.len()));
                frame.extend_from_slice(payload);
                Ok(frame)
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match &self.phase {
            Phase::Hello => "hello",
            Phase::Noise(_) => "handshake",
            Phase::Confirm => "confirm",
            Phase::Established => "established",
            Phase::Failed(_) => "failed",
        };
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("phase", &phase)
            .field("version", &self.version)
            .field("encrypted", &self.encrypted())
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

fn read_length(avail: &[u8]) -> Option<usize> {
    let prefix: [u8; LENGTH_PREFIX_LEN] = avail.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix) as usize)
}

/// Big-endian length prefix; callers have capped `len` so it fits.
fn frame_length(len: usize) -> [u8; LENGTH_PREFIX_LEN] {
    u32::try_from(len)
        .expect("frame lengths are capped below 4 GiB")
        .to_be_bytes()
}

fn handshake_record(message: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(LENGTH_PREFIX_LEN + message.len());
    record.extend_from_slice(&frame_length(message.len()));
    record.extend_from_slice(message);
    record
}

struct DerivedKeys {
    control_i2r: [u8; 32],
    control_r2i: [u8; 32],
    sleeve_i2r: [u8; 32],
    sleeve_r2i: [u8; 32],
}

/// HKDF-SHA256 over the Noise split, salted with the handshake hash, one label per key.
fn derive_keys(handshake: &mut HandshakeState) -> DerivedKeys {
    let salt = handshake.get_handshake_hash().to_vec();
    let (k1, k2) = handshake.dangerously_get_raw_split();
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(&k1);
    ikm[32..].copy_from_slice(&k2);
    let hkdf = Hkdf::<Sha256>::new(Some(&salt), &ikm);
    let expand = |label: &[u8]| {
        let mut key = [0u8; 32];
        hkdf.expand(label, &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    };
    DerivedKeys {
        control_i2r: expand(LABEL_CONTROL_I2R),
        control_r2i: expand(LABEL_CONTROL_R2I),
        sleeve_i2r: expand(LABEL_SLEEVE_I2R),
        sleeve_r2i: expand(LABEL_SLEEVE_R2I),
    }
}

/// ChaCha20-Poly1305 per direction with implicit 64-bit counters as nonces (snow's own
/// transport caps messages at 65535 bytes; our frames go up to the configured cap).
struct FrameCipher {
    send: ChaCha20Poly1305,
    send_counter: u64,
    recv: ChaCha20Poly1305,
    recv_counter: u64,
}

impl FrameCipher {
    fn new(send: &[u8; 32], recv: &[u8; 32]) -> Self {
        Self {
            send: ChaCha20Poly1305::new(&Key::from(*send)),
            send_counter: 0,
            recv: ChaCha20Poly1305::new(&Key::from(*recv)),
            recv_counter: 0,
        }
    }

    /// Noise's nonce layout: 4 zero bytes, then the counter little-endian.
    fn nonce(counter: u64) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        Nonce::from(nonce)
    }

    fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, SessionError> {
        let counter = self.send_counter;
        self.send_counter = counter
            .checked_add(1)
            .ok_or(SessionError::CounterExhausted)?;
        let mut frame = Vec::with_capacity(LENGTH_PREFIX_LEN + payload.len() + TAG_LEN);
        frame.extend_from_slice(&frame_length(payload.len() + TAG_LEN));
        frame.extend_from_slice(payload);
        let (header, body) = frame.split_at_mut(LENGTH_PREFIX_LEN);
        // The length prefix is associated data: it is authenticated with the body.
        let tag = self
            .send
            .encrypt_inout_detached(&Self::nonce(counter), header, body.into())
            .expect("ChaCha20-Poly1305 takes messages up to 256 GiB; ours are below 4 GiB");
        frame.extend_from_slice(&tag);
        Ok(frame)
    }

    /// Authenticates and decrypts a whole frame (prefix included) into a new payload.
    fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, SessionError> {
        let (header, body) = frame.split_at(LENGTH_PREFIX_LEN);
        let plain_len = body
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(SessionError::Decrypt)?;
        let (ciphertext, tag) = body.split_at(plain_len);
        let tag = Tag::try_from(tag).map_err(|_| SessionError::Decrypt)?;
        let counter = self.recv_counter;
        let next = counter
            .checked_add(1)
            .ok_or(SessionError::CounterExhausted)?;
        let mut payload = ciphertext.to_vec();
        self.recv
            .decrypt_inout_detached(
                &Self::nonce(counter),
                header,
                payload.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| SessionError::Decrypt)?;
        self.recv_counter = next;
        Ok(payload)
    }
}

/// Received bytes not yet consumed. Consumption advances `start`; the consumed prefix is
/// dropped once per `handle_input`, so no byte is moved more than a couple of times and
/// a frame's claimed length is never allocated up front.
#[derive(Default)]
struct RecvBuf {
    data: Vec<u8>,
    start: usize,
}

impl RecvBuf {
    fn extend(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    fn available(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.data.len(), "consumed past the end");
    }

    fn compact(&mut self) {
        if self.start == self.data.len() {
            self.data.clear();
        } else if self.start > 0 {
            self.data.drain(..self.start);
        }
        self.start = 0;
    }
}

/// snow's primitives, with the RNG replaced by a ChaCha20 stream from the session seed:
/// the only randomness a handshake uses is our ephemeral key.
struct SeededResolver {
    seed: [u8; 32],
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}
