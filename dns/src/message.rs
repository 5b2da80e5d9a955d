//! DNS messages on the answering path: a total parser for queries, a walker for upstream
//! replies, and writers for the responses we build (RFC 1035 §4, RFC 6891 for EDNS0).
//!
//! Hand-written rather than hickory-proto's `Message` so a local answer does not allocate
//! per record and name; hickory parses every response we write in the tests and fuzz
//! targets. Every read is bounds-checked; input can only make us answer FORMERR or drop.

use std::net::Ipv4Addr;

use crate::name::{MAX_LABEL_LEN, MAX_NAME_LEN};

pub(crate) const HEADER_LEN: usize = 12;

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_PTR: u16 = 12;
pub(crate) const TYPE_OPT: u16 = 41;
pub(crate) const TYPE_IXFR: u16 = 251;
pub(crate) const TYPE_AXFR: u16 = 252;
pub(crate) const TYPE_ANY: u16 = 255;
pub(crate) const CLASS_IN: u16 = 1;
pub(crate) const CLASS_ANY: u16 = 255;

pub(crate) const RCODE_NOERROR: u8 = 0;
pub(crate) const RCODE_FORMERR: u8 = 1;
pub(crate) const RCODE_SERVFAIL: u8 = 2;
pub(crate) const RCODE_NXDOMAIN: u8 = 3;
pub(crate) const RCODE_NOTIMP: u8 = 4;
pub(crate) const RCODE_REFUSED: u8 = 5;
/// BADVERS is 16: 0 in the header, 1 in the OPT record's extended-rcode byte.
pub(crate) const EXT_RCODE_BADVERS: u8 = 1;

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const EDNS_DO: u16 = 0x8000;

/// Bytes of an OPT record without options.
pub(crate) const OPT_LEN: usize = 11;
/// Bytes of an A record whose owner is a compression pointer.
pub(crate) const A_RECORD_LEN: usize = 16;

/// The EDNS0 facts of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// A parsed query: its header facts, its one question (raw and lowercased), its EDNS.
pub(crate) struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    /// The question as received: name, type, class.
    pub question: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    /// The name lowercased (ASCII only), in wire form.
    lower: [u8; MAX_NAME_LEN],
    lower_len: usize,
    /// Offset in the name of each label's length byte (root excluded).
    labels: [u8; MAX_NAME_LEN / 2],
    label_count: usize,
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub(crate) fn lower_name(&self) -> &[u8] {
        &self.lower[..self.lower_len]
    }

    pub(crate) fn label_count(&self) -> usize {
        self.label_count
    }

    /// Label `i` (lowercase, without its length byte).
    pub(crate) fn label(&self, i: usize) -> &[u8] {
        let at = usize::from(self.labels[i]);
        let len = usize::from(self.lower[at]);
        &self.lower[at + 1..at + 1 + len]
    }

    pub(crate) fn rd(&self) -> bool {
        self.flags & FLAG_RD != 0
    }

    pub(crate) fn cd(&self) -> bool {
        self.flags & FLAG_CD != 0
    }
}

/// Why a query gets no normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// Not worth a reply: too short to carry an ID, or itself a response (answering
    /// those would let two servers bounce errors at each other forever).
    Drop,
    /// Reply with this rcode and the header alone.
    Reply { id: u16, flags: u16, rcode: u8 },
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Parses a query. Total: any input yields a query or a [`QueryError`].
pub(crate) fn parse_query(bytes: &[u8]) -> Result<Query<'_>, QueryError> {
    if bytes.len() < HEADER_LEN {
        return Err(QueryError::Drop);
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    let flags = u16::from_be_bytes([bytes[2], bytes[3]]);
    if flags & FLAG_QR != 0 {
        return Err(QueryError::Drop);
    }
    let fail = |rcode| QueryError::Reply { id, flags, rcode };
    if (flags >> 11) & 0xf != 0 {
        return Err(fail(RCODE_NOTIMP));
    }
    let count = |at| usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 {
        return Err(fail(RCODE_FORMERR));
    }
    let formerr = || fail(RCODE_FORMERR);

    // The question name. Nothing precedes it that a compression pointer could validly
    // point at, so a pointer here is malformed (and compression loops cannot happen).
    let mut lower = [0u8; MAX_NAME_LEN];
    let mut labels = [0u8; MAX_NAME_LEN / 2];
    let mut label_count = 0;
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*bytes.get(pos).ok_or_else(formerr)?);
        let at = pos - HEADER_LEN;
        if at + 1 + len > MAX_NAME_LEN {
            return Err(formerr());
        }
        lower[at] = len as u8;
        if len == 0 {
            pos += 1;
            break;
        }
        if len > MAX_LABEL_LEN {
            return Err(formerr());
        }
        let label = bytes.get(pos + 1..pos + 1 + len).ok_or_else(formerr)?;
        for (dst, src) in lower[at + 1..at + 1 + len].iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        labels[label_count] = at as u8;
        label_count += 1;
        pos += 1 + len;
    }
    let lower_len = pos - HEADER_LEN;
    let qtype = read_u16(bytes, pos).ok_or_else(formerr)?;
    let qclass = read_u16(bytes, pos + 2).ok_or_else(formerr)?;
    pos += 4;
    let question = &bytes[HEADER_LEN..pos];

    // Skip answer and authority records (unusual in a query, but legal), then look for
    // the OPT record among the additional ones. Each record consumes at least 11 bytes,
    // so huge counts end at the first out-of-bounds read.
    for _ in 0..an + ns {
        pos = skip_record(bytes, pos).ok_or_else(formerr)?.next;
    }
    let mut edns = None;
    for _ in 0..ar {
        let record = skip_record(bytes, pos).ok_or_else(formerr)?;
        if record.rtype == TYPE_OPT {
            // RFC 6891 §6.1.1: one OPT, owned by the root.
            if edns.is_some() || record.name_end != pos + 1 || bytes[pos] != 0 {
                return Err(formerr());
            }
            let class = read_u16(bytes, record.name_end + 2).ok_or_else(formerr)?;
            let ttl = read_u32(bytes, record.name_end + 4).ok_or_else(formerr)?;
            edns = Some(Edns {
                payload: class,
                version: (ttl >> 16) as u8,
                dnssec_ok: ttl as u16 & EDNS_DO != 0,
            });
        }
        pos = record.next;
    }
    Ok(Query {
        id,
        flags,
        question,
        qtype,
        qclass,
        lower,
        lower_len,
        labels,
        label_count,
        edns,
    })
}

/// Where a record's parts are.
pub(crate) struct RecordSpan {
    pub name_end: usize,
    pub rtype: u16,
    pub rdata: usize,
    pub next: usize,
}

/// Skips a name that may end in a compression pointer (not followed: skipping needs no
/// decompression). Returns the offset after it.
pub(crate) fn skip_name(bytes: &[u8], mut pos: usize) -> Option<usize> {
    let start = pos;
    loop {
        let len = *bytes.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => {
                pos += 1 + usize::from(len);
                if pos - start > MAX_NAME_LEN {
                    return None;
                }
            }
            0xc0 => {
                bytes.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

pub(crate) fn skip_record(bytes: &[u8], pos: usize) -> Option<RecordSpan> {
    let name_end = skip_name(bytes, pos)?;
    let rtype = read_u16(bytes, name_end)?;
    let rdlen = usize::from(read_u16(bytes, name_end + 8)?);
    let rdata = name_end + 10;
    let next = rdata + rdlen;
    (next <= bytes.len()).then_some(RecordSpan {
        name_end,
        rtype,
        rdata,
        next,
    })
}

/// What the walker learnt from an upstream reply.
pub(crate) struct ReplyFacts {
    pub rcode: u8,
    pub truncated: bool,
    /// Offsets of the TTL fields of all records but OPT.
    pub ttl_offsets: Vec<u16>,
    /// Smallest TTL of any record but OPT, if there is one.
    pub min_ttl: Option<u32>,
    /// For a negative answer: min(SOA TTL, SOA minimum) of the first SOA in authority.
    pub soa_negative_ttl: Option<u32>,
    pub answers: u16,
}

/// Walks an upstream reply whose question was already checked (it ends at `question_end`).
pub(crate) fn walk_reply(bytes: &[u8], question_end: usize) -> Option<ReplyFacts> {
    let count = |at| read_u16(bytes, at);
    let flags = count(2)?;
    let (an, ns, ar) = (count(6)?, count(8)?, count(10)?);
    let mut facts = ReplyFacts {
        rcode: (flags & 0xf) as u8,
        truncated: flags & FLAG_TC != 0,
        ttl_offsets: Vec::new(),
        min_ttl: None,
        soa_negative_ttl: None,
        answers: an,
    };
    let mut pos = question_end;
    for i in 0..usize::from(an) + usize::from(ns) + usize::from(ar) {
        let record = skip_record(bytes, pos)?;
        if record.rtype != TYPE_OPT {
            let ttl_at = record.name_end + 4;
            let ttl = read_u32(bytes, ttl_at)?;
            facts.ttl_offsets.push(u16::try_from(ttl_at).ok()?);
            facts.min_ttl = Some(facts.min_ttl.map_or(ttl, |m| m.min(ttl)));
            let in_authority = i >= usize::from(an) && i < usize::from(an) + usize::from(ns);
            if in_authority && record.rtype == TYPE_SOA && facts.soa_negative_ttl.is_none() {
                // The SOA minimum is the last field of its rdata (RFC 2308 §5).
                let minimum = record
                    .next
                    .checked_sub(4)
                    .filter(|m| *m >= record.rdata + 2)?;
                facts.soa_negative_ttl = Some(ttl.min(read_u32(bytes, minimum)?));
            }
        }
        pos = record.next;
    }
    Some(facts)
}

/// Whether `reply` answers `question` (same type and class, name equal ignoring ASCII
/// case) as its only question. Returns where the question ends.
pub(crate) fn reply_question_matches(reply: &[u8], question: &[u8]) -> Option<usize> {
    if read_u16(reply, 4)? != 1 {
        return None;
    }
    let got = reply.get(HEADER_LEN..HEADER_LEN + question.len())?;
    got.eq_ignore_ascii_case(question)
        .then_some(HEADER_LEN + question.len())
}

pub(crate) fn response_flags(query_flags: u16, aa: bool, tc: bool, rcode: u8) -> u16 {
    let mut flags =
        FLAG_QR | FLAG_RA | (query_flags & (0x7800 | FLAG_RD | FLAG_CD)) | u16::from(rcode & 0xf);
    if aa {
        flags |= FLAG_AA;
    }
    if tc {
        flags |= FLAG_TC;
    }
    flags
}

pub(crate) fn push_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
}

/// A header-only error response.
pub(crate) fn error_reply(id: u16, query_flags: u16, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    push_header(
        &mut out,
        id,
        response_flags(query_flags, false, false, rcode),
        [0; 4],
    );
    out
}

/// Our OPT record: `payload` is the UDP size we accept.
pub(crate) fn push_opt(out: &mut Vec<u8>, payload: u16, ext_rcode: u8, dnssec_ok: bool) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&payload.to_be_bytes());
    out.push(ext_rcode);
    out.push(0);
    out.extend_from_slice(&(if dnssec_ok { EDNS_DO } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// Fixed part of a record: owner as a compression pointer, then type, class, TTL, rdlen.
pub(crate) fn push_record_head(
    out: &mut Vec<u8>,
    owner_ptr: u16,
    rtype: u16,
    ttl: u32,
    rdlen: u16,
) {
    out.extend_from_slice(&(0xc000 | owner_ptr).to_be_bytes());
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&rdlen.to_be_bytes());
}

pub(crate) fn push_a(out: &mut Vec<u8>, ttl: u32, addr: Ipv4Addr) {
    push_record_head(out, HEADER_LEN as u16, TYPE_A, ttl, 4);
    out.extend_from_slice(&addr.octets());
}

/// Sets the header's TC bit and section counts of a response built in `out`.
pub(crate) fn set_counts(out: &mut [u8], counts: [u16; 4]) {
    for (i, count) in counts.into_iter().enumerate() {
        out[4 + 2 * i..6 + 2 * i].copy_from_slice(&count.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], tail: &[u8], counts: [u16; 4]) -> Vec<u8> {
        let mut q = Vec::new();
        push_header(&mut q, 0x1234, FLAG_RD, counts);
        q.extend_from_slice(name);
        q.extend_from_slice(tail);
        q
    }

    #[test]
    fn parses_a_plain_query() {
        let q = query(
            b"\x03WeB\x05weave\x05local\x00",
            &[0, 1, 0, 1],
            [1, 0, 0, 0],
        );
        let parsed = parse_query(&q).unwrap();
        assert_eq!(parsed.id, 0x1234);
        assert_eq!(parsed.lower_name(), b"\x03web\x05weave\x05local\x00");
        assert_eq!(parsed.label_count(), 3);
        assert_eq!(parsed.label(0), b"web");
        assert_eq!(parsed.label(2), b"local");
        assert_eq!(parsed.qtype, TYPE_A);
        assert_eq!(parsed.question, &q[12..]);
        assert!(parsed.edns.is_none());
    }

    #[test]
    fn finds_edns() {
        let mut tail = vec![0, 1, 0, 1];
        push_opt(&mut tail, 1232, 0, true);
        let q = query(b"\x01a\x00", &tail, [1, 0, 0, 1]);
        let edns = parse_query(&q).unwrap().edns.unwrap();
        assert_eq!(edns.payload, 1232);
        assert_eq!(edns.version, 0);
        assert!(edns.dnssec_ok);
        // Two OPT records are malformed.
        let mut tail2 = tail.clone();
        push_opt(&mut tail2, 1232, 0, true);
        let q = query(b"\x01a\x00", &tail2, [1, 0, 0, 2]);
        assert!(matches!(
            parse_query(&q),
            Err(QueryError::Reply {
                rcode: RCODE_FORMERR,
                ..
            })
        ));
    }

    #[test]
    fn malformed_queries_are_formerr_or_dropped() {
        let formerr = |q: &[u8]| {
            matches!(
                parse_query(q),
                Err(QueryError::Reply {
                    rcode: RCODE_FORMERR,
                    ..
                })
            )
        };
        assert_eq!(parse_query(&[0; 11]).err(), Some(QueryError::Drop));
        // Pointer in the question (a loop onto itself).
        assert!(formerr(&query(b"\xc0\x0c", &[0, 1, 0, 1], [1, 0, 0, 0])));
        // Truncated label, missing type, no question, two questions, huge counts.
        assert!(formerr(&query(b"\x05ab", &[], [1, 0, 0, 0])));
        assert!(formerr(&query(b"\x01a\x00", &[0], [1, 0, 0, 0])));
        assert!(formerr(&query(b"", &[], [0, 0, 0, 0])));
        assert!(formerr(&query(b"\x01a\x00", &[0, 1, 0, 1], [2, 0, 0, 0])));
        assert!(formerr(&query(
            b"\x01a\x00",
            &[0, 1, 0, 1],
            [1, 0xffff, 0xffff, 0xffff]
        )));
        // A name longer than 255 bytes.
        let long: Vec<u8> = std::iter::repeat_n(
            b"\x3fxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx".as_slice(),
            5,
        )
        .flatten()
        .copied()
        .chain([0])
        .collect();
        assert!(formerr(&query(&long, &[0, 1, 0, 1], [1, 0, 0, 0])));
        // A response is dropped, another opcode is NOTIMP.
        let mut resp = query(b"\x01a\x00", &[0, 1, 0, 1], [1, 0, 0, 0]);
        resp[2] |= 0x80;
        assert_eq!(parse_query(&resp).err(), Some(QueryError::Drop));
        let mut notify = query(b"\x01a\x00", &[0, 1, 0, 1], [1, 0, 0, 0]);
        notify[2] |= 4 << 3;
        assert!(matches!(
            parse_query(&notify),
            Err(QueryError::Reply {
                rcode: RCODE_NOTIMP,
                ..
            })
        ));
    }

    #[test]
    fn skip_name_stops_at_pointers_and_bounds() {
        assert_eq!(skip_name(b"\x01a\xc0\x00", 0), Some(4));
        assert_eq!(skip_name(b"\x01a", 0), None);
        assert_eq!(skip_name(b"\x80", 0), None);
        assert_eq!(skip_name(b"\xc0", 0), None);
    }
}
