//! Domain names as the records store and the answering path use them: lowercase DNS wire
//! format (length-prefixed labels, then the root label).
//!
//! Keeping names in wire form means a query's name, lowercased into a stack buffer, is
//! directly a lookup key: no parsing into text and no allocation on the answering path.

use std::borrow::Borrow;
use std::fmt;

use crate::DnsError;

/// Longest name in wire form, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
/// Longest label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A domain name in lowercase wire format, at most [`MAX_NAME_LEN`] bytes, labels of 1 to
/// [`MAX_LABEL_LEN`] bytes drawn from letters, digits, `-` and `_`.
///
/// Orders by its bytes, which is all the store needs: a stable, total order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireName(Box<[u8]>);

impl WireName {
    /// Parses `web.weave.local` or `web.weave.local.` (case-insensitive; stored lowercase).
    /// The root name (`.`) and empty labels are refused: a record needs a real name.
    pub fn from_dotted(text: &str) -> Result<Self, DnsError> {
        let invalid = || DnsError::InvalidName(text.chars().take(300).collect());
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        if trimmed.is_empty() {
            return Err(invalid());
        }
        let mut wire = Vec::with_capacity(trimmed.len() + 2);
        for label in trimmed.split('.') {
            let bytes = label.as_bytes();
            if bytes.is_empty()
                || bytes.len() > MAX_LABEL_LEN
                || !bytes.iter().all(|b| is_name_byte(*b))
            {
                return Err(invalid());
            }
            wire.push(bytes.len() as u8);
            wire.extend(bytes.iter().map(u8::to_ascii_lowercase));
        }
        wire.push(0);
        if wire.len() > MAX_NAME_LEN {
            return Err(invalid());
        }
        Ok(Self(wire.into_boxed_slice()))
    }

    /// Bounds for range scans: below and above every valid name (a valid name starts
    /// with a label length of at most 63).
    pub(crate) fn below_all() -> Self {
        Self(Box::new([]))
    }

    pub(crate) fn above_all() -> Self {
        Self(Box::new([0xff]))
    }

    /// The name in wire form, root label included.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }

    /// The name as text with a trailing dot: `web.weave.local.`.
    pub fn to_dotted(&self) -> String {
        wire_to_dotted(&self.0)
    }

    /// Whether `self` is `domain` or a name below it.
    pub fn is_within(&self, domain: &Self) -> bool {
        suffix_at_label(&self.0, &domain.0).is_some()
    }

    /// The part of the name before `domain` (`web` for `web.weave.local.`), as text
    /// without a trailing dot; `None` if the name is not below `domain`.
    pub fn strip_domain(&self, domain: &Self) -> Option<String> {
        let at = suffix_at_label(&self.0, &domain.0)?;
        if at == 0 {
            return None;
        }
        let mut head = self.0[..at].to_vec();
        head.push(0);
        let mut text = wire_to_dotted(&head);
        text.pop();
        Some(text)
    }
}

/// Lets maps keyed by `WireName` be searched with a query's stack-buffered name; the
/// order and equality are those of the bytes either way.
impl Borrow<[u8]> for WireName {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_dotted())
    }
}

impl fmt::Debug for WireName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireName({})", self.to_dotted())
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Text form of well-formed wire bytes (non-name bytes are escaped `\ddd`, as dig does).
pub(crate) fn wire_to_dotted(wire: &[u8]) -> String {
    let mut text = String::with_capacity(wire.len());
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let end = (pos + 1 + usize::from(len)).min(wire.len());
        for &b in &wire[pos + 1..end] {
            if is_name_byte(b) {
                text.push(char::from(b));
            } else {
                text.push_str(&format!("\\{b:03}"));
            }
        }
        text.push('.');
        pos = end;
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

/// If `suffix` (a wire name) ends `name` on a label boundary, the offset in `name` where
/// it starts. Both must be uncompressed wire names.
pub(crate) fn suffix_at_label(name: &[u8], suffix: &[u8]) -> Option<usize> {
    if suffix.len() > name.len() {
        return None;
    }
    let at = name.len() - suffix.len();
    let mut pos = 0;
    while pos < at {
        pos += 1 + usize::from(name[pos]);
    }
    (pos == at && name[at..] == *suffix).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let name = WireName::from_dotted("Web.Weave.local").unwrap();
        assert_eq!(name.as_wire(), b"\x03web\x05weave\x05local\x00");
        assert_eq!(name.to_dotted(), "web.weave.local.");
        assert_eq!(WireName::from_dotted("web.weave.local.").unwrap(), name);
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            ".",
            "a..b",
            "a b.c",
            &"x".repeat(64),
            &"abcd.".repeat(60),
            "é.local",
        ] {
            assert!(WireName::from_dotted(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_membership_is_on_label_boundaries() {
        let domain = WireName::from_dotted("weave.local.").unwrap();
        let web = WireName::from_dotted("web.weave.local.").unwrap();
        let not = WireName::from_dotted("webweave.local.").unwrap();
        assert!(web.is_within(&domain));
        assert!(domain.is_within(&domain));
        assert!(!not.is_within(&domain));
        assert_eq!(web.strip_domain(&domain).as_deref(), Some("web"));
        let deep = WireName::from_dotted("a.b.weave.local").unwrap();
        assert_eq!(deep.strip_domain(&domain).as_deref(), Some("a.b"));
        assert_eq!(domain.strip_domain(&domain), None);
    }
}
