//! A packet socket on one interface: how the daemon reads the fast path's probes,
//! which the kernel's VXLAN device decapsulates into frames no IP stack wants.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::error::SysError;

/// An `AF_PACKET` socket receiving the frames of one EtherType that arrive on one
/// interface. Non-blocking: drive it with tokio's `AsyncFd`.
#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens the socket and binds it to interface `ifindex` for `ethertype`.
    pub(crate) fn bind(ifindex: u32, ethertype: u16) -> Result<Self, SysError> {
        let io_err = |context: &str| SysError::Io {
            context: context.into(),
            source: io::Error::last_os_error(),
        };
        let protocol = ethertype.to_be();
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if raw < 0 {
            return Err(io_err("opening a packet socket"));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is a valid value of that plain C struct.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| SysError::Io {
            context: format!("interface index {ifindex}"),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("binding a packet socket"));
        }
        Ok(Self { fd })
    }

    /// Registers the socket with the current tokio runtime's IO driver, for reading.
    pub(crate) fn into_async(self) -> io::Result<tokio::io::unix::AsyncFd<Self>> {
        // SAFETY: a PacketSocket owns its descriptor, never replaces it, and closes it
        // only when dropped, so it stays open and the same for the AsyncFd's lifetime.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)
    }

    /// Reads one frame into `buf`; `WouldBlock` when none is waiting. A frame longer
    /// than `buf` is cut to it.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                0,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
