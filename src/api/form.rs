//! `application/x-www-form-urlencoded`, by hand: Weave's API repeats keys
//! (`peer=a&peer=b`), which serde_urlencoded cannot put into a Vec.

use std::fmt::Write;

/// Encodes pairs as `k=v&k=v`, percent-escaping everything but unreserved characters.
pub(crate) fn encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        escape_into(&mut out, key);
        out.push('=');
        escape_into(&mut out, value);
    }
    out
}

fn escape_into(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").expect("writing to a String cannot fail");
        }
    }
}

/// Decodes `k=v&k=v` (`+` is a space, `%XX` a byte) in order, keeping repeated keys.
/// Fails on malformed escapes or text that is not UTF-8 once decoded.
pub(crate) fn decode(input: &str) -> Result<Vec<(String, String)>, String> {
    input
        .split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            Ok((unescape(key)?, unescape(value)?))
        })
        .collect()
}

fn unescape(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_repeated_keys_in_order() {
        let pairs = decode("peer=192.0.2.1&peer=host2%3A6790&replace=true&flag").expect("valid");
        let want = [
            ("peer", "192.0.2.1"),
            ("peer", "host2:6790"),
            ("replace", "true"),
            ("flag", ""),
        ];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn rejects_bad_escapes() {
        for bad in ["peer=%", "peer=%4", "peer=%zz", "peer=%ff", "%C3%28=x"] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert_eq!(
            decode("a=b+c").expect("valid"),
            [("a".to_owned(), "b c".to_owned())]
        );
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(pairs in proptest::collection::vec((".*", ".*"), 0..5)) {
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let encoded = encode(&refs);
            let decoded = decode(&encoded).expect("our own encoding decodes");
            // Empty pairs (`=`) survive; only wholly empty parts are skipped.
            prop_assert_eq!(decoded, pairs);
        }

        #[test]
        fn decode_never_panics(input in ".*") {
            let _ = decode(&input);
        }
    }
}
