//! Peer identity: a 48-bit name shown MAC-style, a nickname, and a per-start UID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A peer's name: 48 bits, written like a MAC address (`aa:bb:cc:dd:ee:ff`).
///
/// Names order numerically; every peer sorts by name when it computes routes, so every
/// peer computes the same ones.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerName(u64);

impl PeerName {
    /// The largest value a name can take (48 bits).
    pub const MAX: u64 = (1 << 48) - 1;

    /// A name from its 48-bit value; higher bits are dropped.
    pub const fn from_u64(value: u64) -> Self {
        Self(value & Self::MAX)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 6]) -> Self {
        let mut wide = [0u8; 8];
        wide[2..].copy_from_slice(&bytes);
        Self(u64::from_be_bytes(wide))
    }

    pub fn to_bytes(self) -> [u8; 6] {
        let wide = self.0.to_be_bytes();
        let mut out = [0u8; 6];
        out.copy_from_slice(&wide[2..]);
        out
    }

    /// A random name for a new peer: a locally administered unicast MAC, as a bridge
    /// would get, so a name never looks like a vendor's address.
    pub fn random(random: u64) -> Self {
        let mut bytes = Self::from_u64(random).to_bytes();
        bytes[0] = (bytes[0] | 0x02) & !0x01;
        Self::from_bytes(bytes)
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected six hex bytes like aa:bb:cc:dd:ee:ff")]
pub struct PeerNameParseError(pub String);

impl FromStr for PeerName {
    type Err = PeerNameParseError;

    /// Accepts `aa:bb:cc:dd:ee:ff` (also with `-`), case-insensitive. Like Weave, a
    /// shorter form with fewer groups is padded on the left with zeroes (`::1` is not
    /// accepted; `00:00:00:00:00:01` is).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeerNameParseError(s.to_owned());
        let groups: Vec<&str> = s.split([':', '-']).collect();
        if groups.len() != 6 {
            return Err(err());
        }
        let mut bytes = [0u8; 6];
        for (byte, group) in bytes.iter_mut().zip(groups) {
            if group.is_empty() || group.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| err())?;
        }
        Ok(Self::from_bytes(bytes))
    }
}

/// A random number chosen at every daemon start: two records with one name but
/// different UIDs are two incarnations (a restart) or two machines with the same name
/// (a collision, which we detect and report).
pub type PeerUid = u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let name = PeerName::from_u64(0xaabb_ccdd_eeff);
        assert_eq!(name.to_string(), "aa:bb:cc:dd:ee:ff");
        assert_eq!("AA:bb:cc:dd:ee:ff".parse::<PeerName>().unwrap(), name);
        assert_eq!("aa-bb-cc-dd-ee-ff".parse::<PeerName>().unwrap(), name);
    }

    #[test]
    fn parse_rejects_malformed() {
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aaa:b:c:d:e:f",
            "a::b:c:d:e",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_names_are_local_unicast() {
        for seed in [0u64, 1, u64::MAX, 0x0100_0000_0000] {
            let first = PeerName::random(seed).to_bytes()[0];
            assert_eq!(first & 0x03, 0x02, "{seed:x}");
        }
    }

    #[test]
    fn from_u64_drops_high_bits() {
        assert_eq!(PeerName::from_u64(u64::MAX).as_u64(), PeerName::MAX);
    }
}
