//! The data plane's UDP socket: batches of datagrams in and out with one system call
//! each (recvmmsg, sendmmsg), large socket buffers, Don't Fragment on everything sent.
//!
//! Buffers live in [`RecvQueue`] and [`SendQueue`], allocated once per thread and
//! reused: the hot path allocates nothing. The socket is blocking, with a receive
//! timeout so a receiving thread wakes up now and then to see whether it should stop.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::error::SysError;

/// One IPv4 UDP socket, shared by the data plane's threads (the kernel serialises
/// concurrent sends and receives on it).
#[derive(Debug)]
pub(crate) struct DataSocket {
    fd: OwnedFd,
}

/// What [`DataSocket::bind`] got from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketInfo {
    pub(crate) recv_buffer: usize,
    pub(crate) send_buffer: usize,
}

impl AsRawFd for DataSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<std::net::UdpSocket> for DataSocket {
    /// Takes over a socket opened elsewhere (the DNS server's, bound in a container's
    /// namespace); its options and blocking mode stay as they were.
    fn from(socket: std::net::UdpSocket) -> Self {
        Self {
            fd: OwnedFd::from(socket),
        }
    }
}

impl DataSocket {
    /// Registers the (non-blocking) socket with the current tokio runtime's IO driver,
    /// for `interest` only. Must be called on a runtime.
    pub(crate) fn into_async(
        self,
        interest: tokio::io::Interest,
    ) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: a DataSocket owns its descriptor, never replaces it, and closes it
        // only when dropped, so it stays open and the same for the AsyncFd's lifetime.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, interest) }
            .map_err(io::Error::from)
    }
}

impl DataSocket {
    /// Binds UDP `addr` with socket buffers of about `buffer` bytes each (forced past
    /// the sysctl limits where we may: Weave lost 13-20 % of datagrams with the default
    /// ones) and `recv_timeout` on receives. With `dont_fragment`, every datagram has
    /// Don't Fragment set (IP_PMTUDISC_DO: too-big sends fail with EMSGSIZE); without,
    /// none has (IP_PMTUDISC_DONT: the kernel fragments what the path cannot carry
    /// whole, and PMTU probes go through a [`ProbeSocket`]).
    pub(crate) fn bind(
        addr: SocketAddrV4,
        buffer: usize,
        recv_timeout: Duration,
        dont_fragment: bool,
    ) -> Result<(Self, SocketInfo), SysError> {
        let io_err = |context: &str, source: io::Error| SysError::Io {
            context: format!("{context} (UDP {addr})"),
            source,
        };
        let fd = open_socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)
            .map_err(|e| io_err("creating the socket", e))?;
        let sock = Self { fd };
        let size = libc::c_int::try_from(buffer).unwrap_or(libc::c_int::MAX);
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            // FORCE needs CAP_NET_ADMIN; without it the plain option, capped by sysctl.
            if sock.set_int(libc::SOL_SOCKET, force, size).is_err() {
                sock.set_int(libc::SOL_SOCKET, plain, size)
                    .map_err(|e| io_err("setting the socket buffer", e))?;
            }
        }
        let pmtu = if dont_fragment {
            libc::IP_PMTUDISC_DO
        } else {
            libc::IP_PMTUDISC_DONT
        };
        sock.set_int(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, pmtu)
            .map_err(|e| io_err("setting Don't Fragment", e))?;
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(recv_timeout.as_secs()).unwrap_or(1),
            tv_usec: libc::suseconds_t::from(recv_timeout.subsec_micros().max(1)),
        };
        // SAFETY: `tv` is a valid timeval that outlives the call; the size matches.
        let rc = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err(
                "setting the receive timeout",
                io::Error::last_os_error(),
            ));
        }
        let sa = sockaddr(addr);
        // SAFETY: `sa` is a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("binding", io::Error::last_os_error()));
        }
        let info = SocketInfo {
            recv_buffer: sock.get_int(libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0),
            send_buffer: sock.get_int(libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0),
        };
        Ok((sock, info))
    }

    fn set_int(&self, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` is a c_int that outlives the call; the size matches.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn get_int(&self, level: libc::c_int, name: libc::c_int) -> io::Result<usize> {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and sized as the kernel expects.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(value).unwrap_or(0))
    }

    /// Receives up to a queue's worth of datagrams; with `wait`, waits (up to the
    /// receive timeout) for the first, else takes only what is there. Returns how many
    /// arrived; 0 on timeout or when none was there.
    pub(crate) fn recv(&self, q: &mut RecvQueue, wait: bool) -> io::Result<usize> {
        let n = q.slots.bufs.len();
        for i in 0..n {
            let len = q.slots.bufs[i].len();
            q.slots.point(i, len);
        }
        // SAFETY: every header points at a live iovec, buffer and address of this
        // queue, which stays borrowed mutably for the whole call; `n` is their count.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                q.slots.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                if wait {
                    libc::MSG_WAITFORONE
                } else {
                    libc::MSG_DONTWAIT
                },
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => {
                    q.count = 0;
                    Ok(0)
                }
                _ => Err(err),
            };
        }
        q.count = rc as usize;
        Ok(q.count)
    }

    /// Sends one datagram now (control messages: heartbeats, probes, acks).
    pub(crate) fn send_to(&self, datagram: &[u8], to: SocketAddrV4) -> io::Result<()> {
        send_one(&self.fd, datagram, to)
    }

    /// Sends every datagram queued, in order, and empties the queue. A datagram the
    /// kernel refuses is skipped and reported to `on_error` (its index, length,
    /// destination and the error); the rest still go.
    pub(crate) fn send(
        &self,
        q: &mut SendQueue,
        mut on_error: impl FnMut(usize, usize, SocketAddrV4, io::Error),
    ) {
        let n = q.count;
        for i in 0..n {
            q.slots.addrs[i] = sockaddr(q.dests[i]);
            let len = q.lens[i];
            q.slots.point(i, len);
        }
        let mut at = 0;
        while at < n {
            // SAFETY: headers `at..n` point at live iovecs, buffers and addresses of
            // this queue, borrowed for the whole call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    q.slots.hdrs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The datagram at `at` failed: report it, carry on after it.
                on_error(at, q.lens[at], q.dests[at], err);
                at += 1;
            } else {
                at += rc as usize;
            }
        }
        q.count = 0;
    }
}

/// Opens an IPv4 socket of `kind` (SOCK_DGRAM, SOCK_RAW) for `protocol`, close-on-exec.
fn open_socket(kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with plain integer arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, protocol) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own alone.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Sends `datagram` to `to` on the UDP or raw socket `fd`, now (no batching).
fn send_one(fd: &OwnedFd, datagram: &[u8], to: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr(to);
    // SAFETY: `datagram` and `sa` are valid for reads of the sizes given.
    let rc = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// `n` buffers of `size` bytes, each with the iovec, header and address a recvmmsg or
/// sendmmsg call needs for it: what [`RecvQueue`] and [`SendQueue`] are made of.
struct Slots {
    bufs: Vec<Box<[u8]>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    addrs: Vec<libc::sockaddr_in>,
}

// SAFETY: the raw pointers inside `iovs` and `hdrs` only ever point into these slots'
// own buffers, and are rebuilt before each use; nothing else aliases them.
unsafe impl Send for Slots {}

impl Slots {
    fn new(n: usize, size: usize) -> Self {
        Self {
            bufs: (0..n).map(|_| vec![0u8; size].into_boxed_slice()).collect(),
            // SAFETY: all-zero iovecs, headers and addresses are valid values.
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    /// Rebuilds header `i` for the next call: it points at iovec `i` and address `i`,
    /// the iovec at the first `len` bytes of buffer `i`.
    fn point(&mut self, i: usize, len: usize) {
        self.iovs[i] = libc::iovec {
            iov_base: self.bufs[i].as_mut_ptr().cast(),
            iov_len: len.min(self.bufs[i].len()),
        };
        // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
        self.hdrs[i] = unsafe { zeroed() };
        self.hdrs[i].msg_hdr.msg_iov = &raw mut self.iovs[i];
        self.hdrs[i].msg_hdr.msg_iovlen = 1;
        self.hdrs[i].msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
        self.hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    /// How many bytes the last recvmmsg put in buffer `i` (at most its size).
    fn received(&self, i: usize) -> usize {
        (self.hdrs[i].msg_len as usize).min(self.bufs[i].len())
    }
}

/// Buffers for one [`DataSocket::recv`]: `n` datagrams of up to `size` bytes.
pub(crate) struct RecvQueue {
    slots: Slots,
    count: usize,
}

impl RecvQueue {
    pub(crate) fn new(n: usize, size: usize) -> Self {
        Self {
            slots: Slots::new(n, size),
            count: 0,
        }
    }

    /// Datagrams received by the last [`DataSocket::recv`].
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The bytes of datagram `i` (after [`Self::datagram`] decrypted them in place).
    pub(crate) fn bytes(&self, i: usize) -> &[u8] {
        let len = self.slots.received(i);
        &self.slots.bufs[i][..len]
    }

    /// Datagram `i`: its bytes (mutable, for decryption in place), where it came from,
    /// and whether it was cut short (bigger than the buffer).
    pub(crate) fn datagram(&mut self, i: usize) -> (&mut [u8], SocketAddrV4, bool) {
        let len = self.slots.received(i);
        let truncated = self.slots.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let from = from_sockaddr(&self.slots.addrs[i]);
        (&mut self.slots.bufs[i][..len], from, truncated)
    }
}

/// Datagrams waiting for one [`DataSocket::send`]: up to `n` of up to `size` bytes.
pub(crate) struct SendQueue {
    slots: Slots,
    lens: Vec<usize>,
    dests: Vec<SocketAddrV4>,
    count: usize,
}

impl SendQueue {
    pub(crate) fn new(n: usize, size: usize) -> Self {
        Self {
            slots: Slots::new(n, size),
            lens: vec![0; n],
            dests: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); n],
            count: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.count == self.slots.bufs.len()
    }

    /// The next free buffer, to build a datagram in; `None` when full (send first).
    pub(crate) fn next_buf(&mut self) -> Option<&mut [u8]> {
        self.slots.bufs.get_mut(self.count).map(|b| &mut b[..])
    }

    /// Queues the first `len` bytes of the buffer [`Self::next_buf`] gave, for `to`.
    pub(crate) fn commit(&mut self, len: usize, to: SocketAddrV4) {
        assert!(
            self.count < self.slots.bufs.len(),
            "commit without a free buffer"
        );
        self.lens[self.count] = len.min(self.slots.bufs[self.count].len());
        self.dests[self.count] = to;
        self.count += 1;
    }
}

/// Waits until `fd` is readable or `timeout` passes; true if readable.
pub(crate) fn poll_readable(fd: &impl AsRawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd, borrowed for the call.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(rc > 0 && pfd.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0)
}

/// A send-only raw socket for PMTU probes: UDP datagrams from our data port with Don't
/// Fragment set, while the data socket itself lets the kernel fragment. Built by hand
/// (IP and UDP headers) because DF is a per-socket setting for UDP sockets.
#[derive(Debug)]
pub(crate) struct ProbeSocket {
    fd: OwnedFd,
    src: SocketAddrV4,
}

impl ProbeSocket {
    /// Probes will come from `src` (an unspecified address lets the kernel pick the
    /// route's source, as for the data socket bound to all addresses).
    pub(crate) fn open(src: SocketAddrV4) -> Result<Self, SysError> {
        let fd = open_socket(libc::SOCK_RAW, libc::IPPROTO_RAW).map_err(|source| SysError::Io {
            context: "creating the raw socket for PMTU probes".into(),
            source,
        })?;
        Ok(Self { fd, src })
    }

    /// Sends `payload` to `to` as one UDP datagram with Don't Fragment. Fails with
    /// EMSGSIZE if it is bigger than the outgoing interface's MTU.
    pub(crate) fn send(
        &self,
        payload: &[u8],
        to: SocketAddrV4,
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let total = u16::try_from(20 + 8 + payload.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
        scratch.clear();
        // IPv4: version/IHL, TOS, length, ID (0: the kernel fills it), DF, TTL 64, UDP,
        // checksum (the kernel fills it), source (0: the kernel picks), destination.
        scratch.extend_from_slice(&[0x45, 0]);
        scratch.extend_from_slice(&total.to_be_bytes());
        scratch.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        scratch.extend_from_slice(&self.src.ip().octets());
        scratch.extend_from_slice(&to.ip().octets());
        // UDP: ports, length, checksum 0 (none, allowed over IPv4).
        scratch.extend_from_slice(&self.src.port().to_be_bytes());
        scratch.extend_from_slice(&to.port().to_be_bytes());
        scratch.extend_from_slice(&(total - 20).to_be_bytes());
        scratch.extend_from_slice(&[0, 0]);
        scratch.extend_from_slice(payload);
        send_one(&self.fd, scratch, to)
    }
}
