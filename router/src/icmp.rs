//! Frames too big for the path to their next hop: an ICMP "fragmentation needed" answer
//! for the sender (IPv4 with Don't Fragment), or IPv4 fragmentation (without it).
//! Pure functions over Ethernet frames; the daemon injects or sends what they build.
//!
//! The answer claims to come from the packet's destination (source and destination
//! MACs and addresses swapped), as a router on the path would answer: the sender's kernel
//! only checks that the quoted header matches one of its sockets, then lowers its path
//! MTU to the destination and retransmits in smaller pieces (RFC 1191).

use etherparse::icmpv4::DestUnreachableHeader;
use etherparse::{Icmpv4Type, Ipv4Header, PacketBuilder};

/// An untagged Ethernet header.
pub const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IPV4_MIN_HEADER: usize = 20;
/// An ICMP error and what it quotes stay within 576 bytes (RFC 1812 4.3.2.3).
const ICMP_ERROR_MAX: usize = 576;
const ICMP_HEADER_LEN: usize = 8;
const PROTO_ICMP: u8 = 1;
const FLAG_DF: u8 = 0x40;
const FLAG_MF: u8 = 0x20;

/// What the IPv4 header of an Ethernet frame says about fragmenting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Fragmentability {
    /// Not IPv4 (or too short to tell).
    NotIpv4,
    /// IPv4 with Don't Fragment: answer with [`frag_needed`].
    DontFragment,
    /// IPv4 that may be fragmented: [`fragment_ipv4`].
    MayFragment,
}

/// Looks at the frame's IPv4 header, if it has one.
pub fn ipv4_fragmentability(frame: &[u8]) -> Ipv4Fragmentability {
    match ipv4_header(frame) {
        Some(ip) if ip[6] & FLAG_DF != 0 => Ipv4Fragmentability::DontFragment,
        Some(_) => Ipv4Fragmentability::MayFragment,
        None => Ipv4Fragmentability::NotIpv4,
    }
}

/// The IPv4 header of an untagged Ethernet frame carrying IPv4, checked for version and
/// length (not the checksum).
fn ipv4_header(frame: &[u8]) -> Option<&[u8]> {
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETHERNET_HEADER_LEN..)?;
    let first = *ip.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < IPV4_MIN_HEADER {
        return None;
    }
    ip.get(..ihl)
}

/// Builds, into `out` (cleared first), the Ethernet frame of an ICMP "fragmentation
/// needed" (type 3 code 4) answering `frame`, telling its sender that packets of at most
/// `mtu` bytes (IP packet, the container MTU) pass. Returns false, leaving `out` empty,
/// when no answer is due: not IPv4, Don't Fragment not set, a non-first fragment, a
/// broadcast or multicast destination, an unspecified or group source, or itself an ICMP
/// error (RFC 1122 3.2.2).
pub fn frag_needed(frame: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    let Some(header) = ipv4_header(frame) else {
        return false;
    };
    if header[6] & FLAG_DF == 0 {
        return false;
    }
    let Ok((ip, _)) = Ipv4Header::from_slice(&frame[ETHERNET_HEADER_LEN..]) else {
        return false;
    };
    let dst_mac: [u8; 6] = frame[..6].try_into().expect("frame has an Ethernet header");
    let src_mac: [u8; 6] = frame[6..12]
        .try_into()
        .expect("frame has an Ethernet header");
    let group_mac = |mac: &[u8; 6]| mac[0] & 1 != 0;
    let unusable_source = |a: [u8; 4]| a == [0; 4] || a[0] >= 224 || a[0] == 127;
    if group_mac(&dst_mac)
        || group_mac(&src_mac)
        || ip.fragment_offset.value() != 0
        || unusable_source(ip.source)
        || ip.destination[0] >= 224
        || ip.destination == [255; 4]
    {
        return false;
    }
    let ip_packet = &frame[ETHERNET_HEADER_LEN..];
    let ihl = ip.header_len();
    if ip.protocol.0 == PROTO_ICMP {
        // Never answer an ICMP error with one; queries (echo...) are fine.
        match ip_packet.get(ihl) {
            Some(0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) => {}
            _ => return false,
        }
    }
    let total = usize::from(ip.total_len).clamp(ihl, ip_packet.len());
    let quote_max = ICMP_ERROR_MAX - IPV4_MIN_HEADER - ICMP_HEADER_LEN;
    let quote = &ip_packet[..total.min(quote_max)];
    let builder = PacketBuilder::ethernet2(dst_mac, src_mac)
        .ipv4(ip.destination, ip.source, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ));
    out.reserve(builder.size(quote.len()));
    if builder.write(out, quote).is_err() {
        out.clear();
        return false;
    }
    true
}

/// Splits an IPv4 frame that may be fragmented into Ethernet frames of at most
/// `max_frame` bytes each (Ethernet header included), calling `emit` with each in
/// order; `scratch` is reused for building them. A fragment of a fragment keeps its
/// place (offsets add up, the last piece keeps the original's More Fragments bit).
///
/// Returns false, emitting nothing, if the frame is not IPv4, has Don't Fragment set,
/// carries IP options (which RFC 791 copies selectively; such packets are rare enough
/// to drop), is malformed, or `max_frame` leaves no room for 8 bytes of payload.
pub fn fragment_ipv4(
    frame: &[u8],
    max_frame: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> bool {
    let Some(header) = ipv4_header(frame) else {
        return false;
    };
    if header.len() != IPV4_MIN_HEADER || header[6] & FLAG_DF != 0 {
        return false;
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let ip_packet = &frame[ETHERNET_HEADER_LEN..];
    if total < IPV4_MIN_HEADER || total > ip_packet.len() {
        return false;
    }
    let room = max_frame.saturating_sub(ETHERNET_HEADER_LEN + IPV4_MIN_HEADER) & !7;
    if room == 0 {
        return false;
    }
    let payload = &ip_packet[IPV4_MIN_HEADER..total];
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let base_offset = usize::from(flags_offset & 0x1fff) * 8;
    let original_mf = header[6] & FLAG_MF != 0;
    if base_offset + payload.len() > 0xffff {
        return false;
    }
    let mut at = 0;
    loop {
        let len = room.min(payload.len() - at);
        let last = at + len == payload.len();
        scratch.clear();
        scratch.extend_from_slice(&frame[..ETHERNET_HEADER_LEN]);
        scratch.extend_from_slice(header);
        scratch.extend_from_slice(&payload[at..at + len]);
        let ip = &mut scratch[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + IPV4_MIN_HEADER];
        let total_len = u16::try_from(IPV4_MIN_HEADER + len).expect("bounded by the original");
        ip[2..4].copy_from_slice(&total_len.to_be_bytes());
        let offset = u16::try_from((base_offset + at) / 8).expect("checked above");
        let mf = if last { original_mf } else { true };
        let flags = if mf { u16::from(FLAG_MF) << 8 } else { 0 };
        ip[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        emit(scratch);
        at += len;
        if last {
            return true;
        }
    }
}

/// The Internet checksum of an IPv4 header (its checksum field zeroed).
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    const A_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
    const B_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
    const A_IP: [u8; 4] = [198, 18, 0, 1];
    const B_IP: [u8; 4] = [198, 18, 0, 2];

    /// A UDP packet of `payload` bytes from A to B, with or without DF.
    fn udp_frame(payload: usize, df: bool) -> Vec<u8> {
        let data: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
        let builder = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv4(A_IP, B_IP, 64)
            .udp(40000, 5001);
        let mut out = Vec::new();
        builder.write(&mut out, &data).unwrap();
        out[ETHERNET_HEADER_LEN + 6] = if df { FLAG_DF } else { 0 };
        fix_checksum(&mut out);
        out
    }

    fn fix_checksum(frame: &mut [u8]) {
        let ip = &mut frame[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + 20];
        ip[10..12].copy_from_slice(&[0, 0]);
        let sum = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn frag_needed_answers_the_sender_with_the_mtu_and_a_valid_quote() {
        let frame = udp_frame(3000, true);
        let mut out = Vec::new();
        assert!(frag_needed(&frame, 1412, &mut out));
        assert_eq!(&out[..6], &A_MAC, "to the sender");
        assert_eq!(&out[6..12], &B_MAC, "as if from the destination");
        let packet = SlicedPacket::from_ethernet(&out).expect("a well-formed frame");
        let Some(NetSlice::Ipv4(ip)) = &packet.net else {
            panic!("IPv4 expected")
        };
        assert_eq!(ip.header().source(), B_IP);
        assert_eq!(ip.header().destination(), A_IP);
        // etherparse checks nothing; check the header checksum ourselves.
        assert_eq!(
            ipv4_checksum(&out[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + 20]),
            0
        );
        let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport else {
            panic!("ICMP expected")
        };
        assert_eq!(
            icmp.icmp_type(),
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1412
            })
        );
        assert_eq!(ipv4_checksum(&out[34..]), 0, "ICMP checksum");
        let quote = icmp.payload();
        assert_eq!(&quote[..28], &frame[14..42], "original IP and UDP headers");
        assert!(out.len() - ETHERNET_HEADER_LEN <= 576);
    }

    #[test]
    fn no_answer_where_none_is_due() {
        let mut out = Vec::new();
        assert!(!frag_needed(&udp_frame(3000, false), 1400, &mut out));
        let mut broadcast = udp_frame(3000, true);
        broadcast[..6].copy_from_slice(&[0xff; 6]);
        assert!(!frag_needed(&broadcast, 1400, &mut out));
        let mut arp = udp_frame(100, true);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!frag_needed(&arp, 1400, &mut out));
        let mut multicast_dst = udp_frame(3000, true);
        multicast_dst[14 + 16] = 239;
        fix_checksum(&mut multicast_dst);
        assert!(!frag_needed(&multicast_dst, 1400, &mut out));
        // An ICMP error is never answered.
        let mut icmp_error = Vec::new();
        assert!(frag_needed(&udp_frame(3000, true), 1400, &mut icmp_error));
        icmp_error[14 + 6] = FLAG_DF;
        fix_checksum(&mut icmp_error);
        assert!(!frag_needed(&icmp_error, 1400, &mut out));
        assert!(out.is_empty());
        // Cut inside the IP header; a cut payload still has a header to quote.
        for n in 0..34 {
            assert!(!frag_needed(&udp_frame(3000, true)[..n], 1400, &mut out));
        }
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        for (payload, max_frame) in [(3000, 1450), (1000, 600), (8000, 1514), (17, 50)] {
            let frame = udp_frame(payload, false);
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            let mut scratch = Vec::new();
            assert!(fragment_ipv4(&frame, max_frame, &mut scratch, |f| {
                pieces.push(f.to_vec())
            }));
            assert!(pieces.len() >= frame.len().div_ceil(max_frame));
            let mut data = Vec::new();
            for (i, p) in pieces.iter().enumerate() {
                assert!(p.len() <= max_frame);
                assert_eq!(&p[..14], &frame[..14]);
                let ip = &p[14..34];
                assert_eq!(ipv4_checksum(ip), 0, "fragment {i} checksum");
                let fo = u16::from_be_bytes([ip[6], ip[7]]);
                assert_eq!(usize::from(fo & 0x1fff) * 8, data.len(), "offset of {i}");
                assert_eq!(fo & 0x2000 != 0, i + 1 < pieces.len(), "MF of {i}");
                assert_eq!(
                    usize::from(u16::from_be_bytes([ip[2], ip[3]])),
                    p.len() - 14
                );
                data.extend_from_slice(&p[34..]);
            }
            assert_eq!(data, &frame[34..]);
        }
    }

    #[test]
    fn fragmenting_a_fragment_keeps_offsets_and_the_more_fragments_bit() {
        let mut frame = udp_frame(1600, false);
        // Pretend it is the middle fragment at offset 800 of something bigger.
        frame[14 + 6..14 + 8].copy_from_slice(&(0x2000u16 | 100).to_be_bytes());
        fix_checksum(&mut frame);
        let mut offsets = Vec::new();
        let mut scratch = Vec::new();
        assert!(fragment_ipv4(&frame, 1000, &mut scratch, |f| {
            let fo = u16::from_be_bytes([f[20], f[21]]);
            offsets.push((fo & 0x1fff, fo & 0x2000 != 0));
        }));
        assert_eq!(offsets.first(), Some(&(100, true)));
        assert!(offsets.iter().all(|&(_, mf)| mf), "{offsets:?}");
    }

    #[test]
    fn what_cannot_be_fragmented_is_refused() {
        let mut scratch = Vec::new();
        let mut emitted = 0;
        let df = udp_frame(3000, true);
        assert!(!fragment_ipv4(&df, 1400, &mut scratch, |_| emitted += 1));
        let not_ip = {
            let mut f = udp_frame(3000, false);
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            f
        };
        assert!(!fragment_ipv4(&not_ip, 1400, &mut scratch, |_| emitted += 1));
        assert!(!fragment_ipv4(
            &udp_frame(3000, false),
            40,
            &mut scratch,
            |_| { emitted += 1 }
        ));
        let mut lying = udp_frame(100, false);
        lying[16..18].copy_from_slice(&5000u16.to_be_bytes());
        assert!(!fragment_ipv4(&lying, 60, &mut scratch, |_| emitted += 1));
        assert_eq!(emitted, 0);
        assert_eq!(
            ipv4_fragmentability(&udp_frame(10, true)),
            Ipv4Fragmentability::DontFragment
        );
        assert_eq!(
            ipv4_fragmentability(&udp_frame(10, false)),
            Ipv4Fragmentability::MayFragment
        );
        assert_eq!(ipv4_fragmentability(&not_ip), Ipv4Fragmentability::NotIpv4);
    }
}
