//! IPv4 CIDR blocks: the range, subnets and donated blocks.
//!
//! Addresses are handled as `u32` internally and block ends as `u64`, so a block reaching
//! 255.255.255.255 (or the whole space) has an end without overflow.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::IpamError;

/// An IPv4 network: a base address with all host bits zero and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u32, u8)", into = "(u32, u8)")]
pub struct Cidr {
    base: u32,
    len: u8,
}

impl Cidr {
    /// A block from its base address and prefix length; host bits must be zero.
    pub fn new(base: Ipv4Addr, len: u8) -> Result<Self, IpamError> {
        let base = u32::from(base);
        if len > 32 {
            return Err(IpamError::InvalidCidr(format!(
                "{}/{len}: prefix length above 32",
                Ipv4Addr::from(base)
            )));
        }
        let cidr = Self { base, len };
        if base & !cidr.mask() != 0 {
            return Err(IpamError::InvalidCidr(format!(
                "{}/{len}: host bits set (network is {})",
                Ipv4Addr::from(base),
                Ipv4Addr::from(base & cidr.mask())
            )));
        }
        Ok(cidr)
    }

    /// The block of `len` bits containing `addr` (host bits cleared).
    pub fn containing(addr: Ipv4Addr, len: u8) -> Result<Self, IpamError> {
        if len > 32 {
            return Err(IpamError::InvalidCidr(format!("{addr}/{len}")));
        }
        Ok(Self {
            base: u32::from(addr) & mask_of(len),
            len,
        })
    }

    fn mask(self) -> u32 {
        mask_of(self.len)
    }

    /// The network (first) address.
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The broadcast (last) address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base | !self.mask())
    }

    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// Number of addresses in the block (up to 2^32).
    pub fn size(self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    pub(crate) fn start(self) -> u32 {
        self.base
    }

    /// One past the last address.
    pub(crate) fn end(self) -> u64 {
        u64::from(self.base) + self.size()
    }

    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == self.base
    }

    pub(crate) fn contains_u32(self, addr: u32) -> bool {
        addr & self.mask() == self.base
    }

    /// Whether the two blocks share at least one address.
    pub fn overlaps(self, other: Self) -> bool {
        u64::from(self.base) < other.end() && u64::from(other.base) < self.end()
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn contains_cidr(self, other: Self) -> bool {
        self.len <= other.len && self.contains_u32(other.base)
    }

    /// The addresses an allocation may use: all but network and broadcast, except for
    /// /31 and /32 which have none to spare (RFC 3021); callers refuse those as subnets.
    pub(crate) fn usable(self) -> (u32, u64) {
        if self.len >= 31 {
            (self.base, self.end())
        } else {
            (self.base + 1, self.end() - 1)
        }
    }
}

// The wire form is (base, len); decoding checks it like `Cidr::new` does, so a peer
// cannot smuggle in a block with host bits set.
impl TryFrom<(u32, u8)> for Cidr {
    type Error = IpamError;

    fn try_from((base, len): (u32, u8)) -> Result<Self, Self::Error> {
        Self::new(Ipv4Addr::from(base), len)
    }
}

impl From<Cidr> for (u32, u8) {
    fn from(cidr: Cidr) -> Self {
        (cidr.base, cidr.len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Cidr {
    type Err = IpamError;

    /// `a.b.c.d/len`, host bits zero.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpamError::InvalidCidr(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        Self::new(addr, len)
    }
}

fn mask_of(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Largest power-of-two block aligned on its size inside `[lo, hi)`, no larger than
/// `cap` addresses; the highest such block (donors keep their low addresses, which they
/// allocate from first). Returns `(start, size)`.
pub(crate) fn largest_aligned_block(lo: u64, hi: u64, cap: u64) -> Option<(u64, u64)> {
    if hi <= lo || cap == 0 {
        return None;
    }
    let mut size = 1u64 << (63 - cap.leading_zeros()).min(32);
    while size >= 1 {
        if hi - lo >= size {
            let start = (hi - size) & !(size - 1);
            if start >= lo {
                return Some((start, size));
            }
        }
        size >>= 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/15");
        assert_eq!(c.size(), 1 << 17);
        assert_eq!(c.network(), Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(198, 19, 255, 255));
        assert!(c.contains(Ipv4Addr::new(198, 19, 1, 1)));
        assert!(!c.contains(Ipv4Addr::new(198, 20, 0, 0)));
    }

    #[test]
    fn parse_rejects_bad_input() {
        for bad in [
            "198.18.0.1/15",
            "198.18.0.0",
            "198.18.0.0/33",
            "198.18.0.0/",
            "198.18.0.0/+1",
            "x/8",
            "198.18.0.0/015",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().size(), 1 << 32);
    }

    #[test]
    fn overlap_and_containment() {
        let big: Cidr = "198.18.0.0/16".parse().unwrap();
        let small: Cidr = "198.18.4.0/24".parse().unwrap();
        let other: Cidr = "198.19.0.0/24".parse().unwrap();
        assert!(big.overlaps(small) && small.overlaps(big));
        assert!(big.contains_cidr(small) && !small.contains_cidr(big));
        assert!(!big.overlaps(other));
        assert_eq!(
            Cidr::containing(Ipv4Addr::new(198, 18, 4, 77), 24).unwrap(),
            small
        );
    }

    #[test]
    fn aligned_blocks() {
        assert_eq!(largest_aligned_block(0, 256, 1000), Some((0, 256)));
        assert_eq!(largest_aligned_block(0, 256, 128), Some((128, 128)));
        assert_eq!(largest_aligned_block(3, 13, 100), Some((8, 4)));
        assert_eq!(largest_aligned_block(5, 6, 100), Some((5, 1)));
        assert_eq!(largest_aligned_block(5, 5, 100), None);
        assert_eq!(largest_aligned_block(0, 8, 0), None);
        assert_eq!(
            largest_aligned_block(0, 1 << 32, u64::MAX),
            Some((0, 1 << 32))
        );
    }
}
