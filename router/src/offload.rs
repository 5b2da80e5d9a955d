//! Offload metadata carried with frames: the TAP device hands us TCP "super-frames" of up
//! to 64 KiB (TSO) with a virtio-net header saying how to cut them into segments and
//! where the checksum goes; we carry that header across the sleeve and hand it to the
//! far TAP, so the kernels at both ends do the per-segment work once, in bulk, and the
//! frames cross the data plane 40 segments at a time.
//!
//! On the wire (in a [`Kind::OffloadFrames`](crate::sleeve::Kind) datagram) each frame
//! is preceded by the header in big-endian ([`VnetHdr::write_wire`]); the TAP device uses
//! the host's order ([`VnetHdr::write_native`]).
//!
//! When a super-frame does not fit what the path to its next hop can carry, [`split_gso`]
//! cuts it into smaller super-frames (or single segments) at segment boundaries, fixing
//! IP lengths, IDs and checksums and TCP sequence numbers and flags as the kernel's own
//! segmentation would. [`complete_checksum`] fills in a checksum left to offload, for
//! frames that must be fragmented or inspected.

/// Size of the virtio-net header (without `num_buffers`), as TAP devices use by default.
pub const VNET_HDR_LEN: usize = 10;

const ETHERNET_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (Ethernet, IP, TCP) of each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment (the MSS).
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The checksum at `csum_start + csum_offset` is partial (pseudo-header only).
    pub const F_NEEDS_CSUM: u8 = 1;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_ECN: u8 = 0x80;

    /// A TCP super-frame (segmentation pending).
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }

    /// Reads the header as the TAP device wrote it (host order).
    pub fn from_native(b: &[u8; VNET_HDR_LEN]) -> Self {
        Self::read(b, u16::from_ne_bytes)
    }

    pub fn write_native(&self, out: &mut [u8; VNET_HDR_LEN]) {
        self.write(out, u16::to_ne_bytes);
    }

    /// Reads the header as the sleeve carries it (big-endian).
    pub fn from_wire(b: &[u8; VNET_HDR_LEN]) -> Self {
        Self::read(b, u16::from_be_bytes)
    }

    pub fn write_wire(&self, out: &mut [u8; VNET_HDR_LEN]) {
        self.write(out, u16::to_be_bytes);
    }

    /// The layout, with the byte order of the 16-bit fields given.
    fn read(b: &[u8; VNET_HDR_LEN], from_bytes: fn([u8; 2]) -> u16) -> Self {
        let u = |i: usize| from_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    fn write(&self, out: &mut [u8; VNET_HDR_LEN], to_bytes: fn(u16) -> [u8; 2]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        let fields = [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ];
        for (at, field) in (2..).step_by(2).zip(fields) {
            out[at..at + 2].copy_from_slice(&to_bytes(field));
        }
    }
}

/// Why a super-frame could not be split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// Not TCP over IPv4 or IPv6 (without extension headers) in an untagged frame, or
    /// headers that do not parse.
    Unsupported,
    /// Not even one segment fits `max_frame`.
    TooSmall,
}

/// Headers of a TCP super-frame.
struct TcpFrame {
    v4: bool,
    ip_at: usize,
    tcp_at: usize,
    /// End of the TCP header: where the payload starts.
    payload_at: usize,
}

fn parse_tcp(frame: &[u8]) -> Option<TcpFrame> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip_at = ETHERNET_HEADER_LEN;
    let (v4, tcp_at) = match ethertype {
        ETHERTYPE_IPV4 => {
            let first = *frame.get(ip_at)?;
            let ihl = usize::from(first & 0x0f) * 4;
            if first >> 4 != 4 || ihl < 20 || *frame.get(ip_at + 9)? != PROTO_TCP {
                return None;
            }
            (true, ip_at + ihl)
        }
        ETHERTYPE_IPV6 => {
            if *frame.get(ip_at)? >> 4 != 6 || *frame.get(ip_at + 6)? != PROTO_TCP {
                return None;
            }
            (false, ip_at + 40)
        }
        _ => return None,
    };
    let thl = usize::from(*frame.get(tcp_at + 12)? >> 4) * 4;
    if thl < 20 || frame.len() < tcp_at + thl {
        return None;
    }
    Some(TcpFrame {
        v4,
        ip_at,
        tcp_at,
        payload_at: tcp_at + thl,
    })
}

/// One's complement sum of `data` as big-endian 16-bit words, added to `sum`.
fn sum_words(mut sum: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Cuts TCP super-frame `frame` (described by `hdr`) into frames of at most `max_frame`
/// bytes each (Ethernet header included), each carrying as many whole segments as fit,
/// and calls `emit` with each one's header and bytes, in order. Pieces of more than one
/// segment stay super-frames; a piece of one segment is a plain frame. Every piece
/// keeps its TCP checksum partial (pseudo-header sum, `F_NEEDS_CSUM`), as the kernel
/// expects of frames it was handed with offloads.
pub fn split_gso(
    hdr: &VnetHdr,
    frame: &[u8],
    max_frame: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&VnetHdr, &[u8]),
) -> Result<(), SplitError> {
    let t = parse_tcp(frame).ok_or(SplitError::Unsupported)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SplitError::Unsupported);
    }
    let headers = t.payload_at;
    let per_piece = (max_frame.saturating_sub(headers) / mss) * mss;
    if per_piece == 0 {
        return Err(SplitError::TooSmall);
    }
    let payload = &frame[headers..];
    let seq = u32::from_be_bytes(
        frame[t.tcp_at + 4..t.tcp_at + 8]
            .try_into()
            .expect("parse_tcp checked the TCP header"),
    );
    let ip_id = if t.v4 {
        u16::from_be_bytes([frame[t.ip_at + 4], frame[t.ip_at + 5]])
    } else {
        0
    };
    let flags = frame[t.tcp_at + 13];
    let mut at = 0;
    loop {
        let len = per_piece.min(payload.len() - at);
        let first = at == 0;
        let last = at + len == payload.len();
        scratch.clear();
        scratch.extend_from_slice(&frame[..headers]);
        scratch.extend_from_slice(&payload[at..at + len]);
        let tcp_len = headers - t.tcp_at + len;
        // IP header: lengths, ID (one per segment, as the kernel's segmentation does).
        let pseudo = if t.v4 {
            let ip = &mut scratch[t.ip_at..t.tcp_at];
            let total = u16::try_from(t.tcp_at - t.ip_at + tcp_len).unwrap_or(u16::MAX);
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            let id = ip_id.wrapping_add(u16::try_from(at / mss).unwrap_or(0));
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let csum = !fold(sum_words(0, ip));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            let mut sum = sum_words(0, &ip[12..20]);
            sum += u64::from(PROTO_TCP) + tcp_len as u64;
            sum
        } else {
            let ip = &mut scratch[t.ip_at..t.tcp_at];
            let plen = u16::try_from(tcp_len).unwrap_or(u16::MAX);
            ip[4..6].copy_from_slice(&plen.to_be_bytes());
            let mut sum = sum_words(0, &ip[8..40]);
            sum += u64::from(PROTO_TCP) + tcp_len as u64;
            sum
        };
        // TCP header: sequence, flags, partial checksum.
        let tcp = &mut scratch[t.tcp_at..headers];
        let piece_seq = seq.wrapping_add(u32::try_from(at).unwrap_or(0));
        tcp[4..8].copy_from_slice(&piece_seq.to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if !first {
            f &= !TCP_CWR;
        }
        tcp[13] = f;
        tcp[16..18].copy_from_slice(&fold(pseudo).to_be_bytes());
        let mut piece = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: hdr.gso_type,
            hdr_len: u16::try_from(headers).unwrap_or(u16::MAX),
            gso_size: hdr.gso_size,
            csum_start: u16::try_from(t.tcp_at).unwrap_or(u16::MAX),
            csum_offset: 16,
        };
        if len <= mss {
            piece.gso_type = VnetHdr::GSO_NONE;
            piece.gso_size = 0;
        }
        emit(&piece, scratch);
        at += len;
        if last {
            return Ok(());
        }
    }
}

/// Fills in a checksum left partial (`F_NEEDS_CSUM`): sums `frame` from `csum_start`
/// (the field holds the pseudo-header sum) and stores the result at `csum_start +
/// csum_offset`, then clears the flag. False if the offsets do not fit the frame.
pub fn complete_checksum(hdr: &mut VnetHdr, frame: &mut [u8]) -> bool {
    if !hdr.needs_csum() {
        return true;
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let sum = !fold(sum_words(0, &frame[start..]));
    // A computed 0 is sent as 0xffff only for UDP; TCP keeps 0. Both verify.
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    hdr.flags &= !VnetHdr::F_NEEDS_CSUM;
    true
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    use super::*;

    const MSS: usize = 1000;

    /// A TCP super-frame as a TAP would hand it: `segments` × MSS bytes of payload,
    /// checksum partial, PSH and FIN set.
    fn super_frame(v4: bool, payload_len: usize) -> (VnetHdr, Vec<u8>) {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i % 251) as u8).collect();
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v4 {
            eth.ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        } else {
            eth.ipv6([0xfd; 16], [0xfe; 16], 64)
        };
        let builder = ip.tcp(40000, 5201, 1_000_000, 65000).psh().fin().ack(77);
        let mut frame = Vec::new();
        builder.write(&mut frame, &payload).unwrap();
        let t = parse_tcp(&frame).unwrap();
        // Make the checksum partial, as the kernel leaves it for offload.
        let tcp_len = frame.len() - t.tcp_at;
        let mut sum = if v4 {
            sum_words(0, &frame[t.ip_at + 12..t.ip_at + 20])
        } else {
            sum_words(0, &frame[t.ip_at + 8..t.ip_at + 40])
        };
        sum += u64::from(PROTO_TCP) + tcp_len as u64;
        frame[t.tcp_at + 16..t.tcp_at + 18].copy_from_slice(&fold(sum).to_be_bytes());
        let hdr = VnetHdr {
            flags: VnetHdr::F_NEEDS_CSUM,
            gso_type: if v4 {
                VnetHdr::GSO_TCPV4
            } else {
                VnetHdr::GSO_TCPV6
            },
            hdr_len: t.payload_at as u16,
            gso_size: MSS as u16,
            csum_start: t.tcp_at as u16,
            csum_offset: 16,
        };
        (hdr, frame)
    }

    #[test]
    fn headers_round_trip_in_both_byte_orders() {
        let h = VnetHdr {
            flags: 1,
            gso_type: VnetHdr::GSO_TCPV4 | VnetHdr::GSO_ECN,
            hdr_len: 66,
            gso_size: 1396,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write_wire(&mut b);
        assert_eq!(b[4..6], 1396u16.to_be_bytes());
        assert_eq!(VnetHdr::from_wire(&b), h);
        h.write_native(&mut b);
        assert_eq!(VnetHdr::from_native(&b), h);
        assert!(h.is_gso() && h.needs_csum());
        assert!(!VnetHdr::default().is_gso());
    }

    #[test]
    fn split_pieces_carry_the_same_bytes_with_valid_headers() {
        for v4 in [true, false] {
            let (hdr, frame) = super_frame(v4, 10 * MSS + 123);
            let t = parse_tcp(&frame).unwrap();
            let headers = t.payload_at;
            let mut pieces: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
            let mut scratch = Vec::new();
            split_gso(
                &hdr,
                &frame,
                headers + 3 * MSS + 10,
                &mut scratch,
                |h, f| pieces.push((*h, f.to_vec())),
            )
            .unwrap();
            assert_eq!(pieces.len(), 4, "3+3+3+1.123 segments");
            let mut data = Vec::new();
            for (i, (h, f)) in pieces.iter_mut().enumerate() {
                let last = i == 3;
                assert!(f.len() <= headers + 3 * MSS + 10);
                assert_eq!(h.is_gso(), !last || f.len() - headers > MSS);
                // Complete the checksum, then let etherparse verify everything.
                assert!(complete_checksum(h, f));
                let p = SlicedPacket::from_ethernet(f).expect("well-formed piece");
                let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
                    panic!("TCP expected")
                };
                assert_eq!(
                    tcp.sequence_number(),
                    1_000_000 + u32::try_from(data.len()).unwrap()
                );
                assert_eq!(tcp.fin(), last, "FIN only on the last piece");
                assert_eq!(tcp.psh(), last, "PSH only on the last piece");
                match &p.net {
                    Some(NetSlice::Ipv4(ip)) => {
                        let h = ip.header();
                        assert_eq!(usize::from(h.total_len()), f.len() - 14);
                        let tcp_header = tcp.to_header();
                        let expect = tcp_header
                            .calc_checksum_ipv4_raw(h.source(), h.destination(), tcp.payload())
                            .unwrap();
                        assert_eq!(tcp.checksum(), expect, "TCP checksum of piece {i}");
                        assert_eq!(
                            !fold(sum_words(0, &f[14..34])),
                            0,
                            "IP checksum of piece {i}"
                        );
                    }
                    Some(NetSlice::Ipv6(ip)) => {
                        let h = ip.header();
                        assert_eq!(usize::from(h.payload_length()), f.len() - 54);
                        let expect = tcp
                            .to_header()
                            .calc_checksum_ipv6_raw(h.source(), h.destination(), tcp.payload())
                            .unwrap();
                        assert_eq!(tcp.checksum(), expect, "TCP checksum of piece {i}");
                    }
                    _ => panic!("IP expected"),
                }
                data.extend_from_slice(tcp.payload());
            }
            assert_eq!(data, &frame[headers..]);
        }
    }

    #[test]
    fn split_refuses_what_it_cannot_cut() {
        let (hdr, frame) = super_frame(true, 5 * MSS);
        let mut scratch = Vec::new();
        assert_eq!(
            split_gso(&hdr, &frame, 60, &mut scratch, |_, _| {}),
            Err(SplitError::TooSmall)
        );
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert_eq!(
            split_gso(&hdr, &udp, 3000, &mut scratch, |_, _| {}),
            Err(SplitError::Unsupported)
        );
        // Cut inside the headers (Ethernet 14 + IPv4 20 + TCP 20).
        for n in 0..54 {
            assert!(split_gso(&hdr, &frame[..n], 3000, &mut scratch, |_, _| {}).is_err());
        }
    }

    #[test]
    fn complete_checksum_checks_offsets() {
        let (mut hdr, mut frame) = super_frame(true, 100);
        hdr.csum_offset = 5000;
        assert!(!complete_checksum(&mut hdr, &mut frame));
        hdr.flags = 0;
        assert!(complete_checksum(&mut hdr, &mut frame), "nothing to do");
    }
}
