//! Per-direction AEAD state for the sleeve: ChaCha20-Poly1305, counter nonces and the
//! receiver's replay window.
//!
//! Keys come from the control-plane handshake, one per direction, and are used for
//! nothing else; so the nonce needs no direction or channel bit and is simply the
//! datagram counter (WireGuard's construction).
//!
//! The AEAD is `ring`'s ChaCha20-Poly1305 (BoringSSL's assembly with runtime CPU
//! dispatch), not RustCrypto's `chacha20poly1305` used by the control session: on this
//! project's machines RustCrypto's runs at about 0.4-0.7 GB/s on sleeve datagrams
//! because its SIMD backends are not inlined without `-C target-feature` flags, while
//! ring's reaches several GB/s with a plain build. The wire format is RFC 8439 either
//! way (the router's tests check both against each other). See `benches/sleeve.rs`.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

use weave_mesh::SleeveKeys;

use crate::Error;

/// Length of the Poly1305 tag that ends every sealed datagram.
pub const TAG_LEN: usize = 16;

/// Counters at or above this value are never sent nor accepted. 2^63 datagrams is
/// beyond any connection's life (three thousand years at 10^8 datagrams per second);
/// the bound keeps every counter computation clear of overflow.
pub const COUNTER_LIMIT: u64 = 1 << 63;

/// Bits in the replay window's bitmap.
const WINDOW_BITS: u64 = 4096;
const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (WINDOW_BITS / WORD_BITS) as usize;
/// How far behind the highest accepted counter a datagram may be and still be accepted:
/// the bitmap less one word, because the word holding the newest counter is partly
/// in the future (RFC 6479's block scheme, as in WireGuard).
pub const REPLAY_WINDOW: u64 = WINDOW_BITS - WORD_BITS;

/// The sending and receiving halves of a connection's [`SleeveKeys`] (from the
/// control handshake: `send` seals what we send, `recv` opens what the peer sends),
/// each with a fresh counter or window.
pub fn split(keys: &SleeveKeys) -> (SendCrypto, RecvCrypto) {
    (SendCrypto::new(&keys.send), RecvCrypto::new(&keys.recv))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key fits ChaCha20-Poly1305"),
    )
}

/// Sealing state for one direction: the key and the next counter to use.
#[derive(Clone)]
pub struct SendCrypto {
    aead: LessSafeKey,
    next: u64,
}

impl SendCrypto {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: aead_key(key),
            next: 0,
        }
    }

    /// The counter the next sealed datagram will carry.
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Takes the next counter; a counter is never used twice, even if the datagram
    /// it was taken for is then not sent.
    pub(crate) fn reserve(&mut self) -> Result<u64, Error> {
        if self.next >= COUNTER_LIMIT {
            return Err(Error::CounterExhausted);
        }
        let counter = self.next;
        self.next += 1;
        Ok(counter)
    }

    /// Encrypts `body` in place under `counter` (from [`Self::reserve`]), also
    /// authenticating `aad` (the datagram header), and returns the tag.
    pub(crate) fn seal(&self, counter: u64, aad: &[u8], body: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), body)
            .expect("sleeve datagrams are far below ChaCha20-Poly1305's 256 GiB message limit");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

impl fmt::Debug for SendCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendCrypto")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Opening state for one direction: the key and the replay window.
#[derive(Clone)]
pub struct RecvCrypto {
    aead: LessSafeKey,
    window: ReplayWindow,
}

impl RecvCrypto {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            aead: aead_key(key),
            window: ReplayWindow::new(),
        }
    }

    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// Checks the counter against the window, decrypts `body` in place and only then
    /// records the counter: a forged datagram cannot move the window.
    pub(crate) fn open(
        &mut self,
        counter: u64,
        aad: &[u8],
        body: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        self.window.check(counter)?;
        self.aead
            .open_in_place_separate_tag(nonce(counter), Aad::from(aad), Tag::from(*tag), body, 0..)
            .map_err(|_| Error::Authentication)?;
        self.window.update(counter);
        Ok(())
    }
}

impl fmt::Debug for RecvCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvCrypto")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// A sliding window of the last [`REPLAY_WINDOW`] counters (4096-bit bitmap in 64-bit
/// words, RFC 6479). [`Self::check`] is read-only; [`Self::update`] is called only once
/// the datagram has authenticated.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter plus one; 0 before the first datagram.
    next: u64,
    bitmap: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub const fn new() -> Self {
        Self {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Whether `counter` could be accepted: below the limit, inside the window, unseen.
    pub fn check(&self, counter: u64) -> Result<(), Error> {
        if counter >= COUNTER_LIMIT {
            return Err(Error::CounterExhausted);
        }
        // Work with counter + 1 so that 0 can mean "nothing accepted yet".
        let c = counter + 1;
        if c + REPLAY_WINDOW < self.next {
            return Err(Error::TooOld);
        }
        if c > self.next {
            return Ok(());
        }
        let (word, bit) = Self::position(c);
        if self.bitmap[word] & bit != 0 {
            Err(Error::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `counter` as seen, sliding the window forward if it is the newest.
    /// Callers have checked it first.
    pub fn update(&mut self, counter: u64) {
        debug_assert!(self.check(counter).is_ok());
        let c = counter + 1;
        if c > self.next {
            // Clear the words the window slides over (at most the whole bitmap).
            let current = self.next / WORD_BITS;
            let target = c / WORD_BITS;
            let clear = (target - current).min(WORDS as u64);
            for i in 1..=clear {
                self.bitmap[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.next = c;
        }
        let (word, bit) = Self::position(c);
        self.bitmap[word] |= bit;
    }

    fn position(c: u64) -> (usize, u64) {
        (
            ((c / WORD_BITS) % WORDS as u64) as usize,
            1 << (c % WORD_BITS),
        )
    }
}

impl fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<(), Error> {
        w.check(c)?;
        w.update(c);
        Ok(())
    }

    #[test]
    fn window_accepts_each_counter_once_in_any_order_within_the_window() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for c in [5, 3, 0, 4, 1, 2, 100, 50, 99] {
            assert_eq!(accept(&mut w, c), Ok(()), "first sight of {c}");
        }
        for c in [5, 3, 0, 4, 1, 2, 100, 50, 99] {
            assert_eq!(
                accept(&mut w, c),
                Err(Error::Replayed),
                "second sight of {c}"
            );
        }
        assert_eq!(w.highest(), Some(100));
    }

    #[test]
    fn window_edge_is_exact() {
        let mut w = ReplayWindow::new();
        let top = 10_000;
        accept(&mut w, top).unwrap();
        assert_eq!(w.check(top - REPLAY_WINDOW), Ok(()));
        assert_eq!(w.check(top - REPLAY_WINDOW - 1), Err(Error::TooOld));
        accept(&mut w, top - REPLAY_WINDOW).unwrap();
        assert_eq!(w.check(top - REPLAY_WINDOW), Err(Error::Replayed));
    }

    #[test]
    fn big_jump_clears_the_whole_bitmap() {
        let mut w = ReplayWindow::new();
        for c in 0..5000 {
            accept(&mut w, c).unwrap();
        }
        let far = 5000 + 10 * WINDOW_BITS + 17;
        accept(&mut w, far).unwrap();
        // Everything in the new window except `far` itself is unseen.
        for c in far - REPLAY_WINDOW..far {
            assert_eq!(w.check(c), Ok(()), "{c} should be fresh");
        }
        assert_eq!(w.check(far), Err(Error::Replayed));
        assert_eq!(w.check(4999), Err(Error::TooOld));
    }

    #[test]
    fn window_matches_a_naive_model() {
        // Pseudo-random walk of counters near a moving front, checked against a set.
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::BTreeSet::new();
        let mut highest: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let front = highest.unwrap_or(0);
            let c = (front + (x % 300)).saturating_sub(x % 5000);
            let expect = match highest {
                Some(h) if c + REPLAY_WINDOW < h => Err(Error::TooOld),
                _ if seen.contains(&c) => Err(Error::Replayed),
                _ => Ok(()),
            };
            assert_eq!(w.check(c), expect, "counter {c}, highest {highest:?}");
            if expect.is_ok() {
                w.update(c);
                seen.insert(c);
                highest = Some(highest.map_or(c, |h| h.max(c)));
            }
        }
    }

    #[test]
    fn counters_at_the_limit_are_refused_both_ways() {
        let w = ReplayWindow::new();
        assert_eq!(w.check(COUNTER_LIMIT), Err(Error::CounterExhausted));
        assert_eq!(w.check(u64::MAX), Err(Error::CounterExhausted));
        assert_eq!(w.check(COUNTER_LIMIT - 1), Ok(()));
        let mut s = SendCrypto::new(&[7; 32]);
        s.next = COUNTER_LIMIT - 1;
        assert_eq!(s.reserve(), Ok(COUNTER_LIMIT - 1));
        assert_eq!(s.reserve(), Err(Error::CounterExhausted));
    }

    #[test]
    fn debug_never_prints_keys() {
        let keys = SleeveKeys {
            send: [0xab; 32],
            recv: [0xcd; 32],
        };
        let (s, r) = split(&keys);
        let text = format!("{s:?} {r:?}");
        assert!(!text.contains("171") && !text.contains("ab, ab"), "{text}");
    }
}
