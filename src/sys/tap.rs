//! TAP devices: the router's port on the bridge. One read is one Ethernet frame.
//!
//! Raw `TUNSETIFF` rather than the tun-tap crate: that crate builds a C helper, offers no
//! nonblocking async use, and cannot ask for IFF_VNET_HDR or IFF_MULTI_QUEUE, which the
//! offload and multi-queue work will need. The ioctl is a dozen lines.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::SysError;
use super::link::check_ifname;
use super::netns::Netns;

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;

/// Offloads a TAP opened with `vnet_hdr` may take (`TUN_F_*`): frames with a partial
/// checksum, and TCP super-frames (TSO) over IPv4 and IPv6, with ECN.
pub(crate) const TUN_F_CSUM: u32 = 0x01;
pub(crate) const TUN_F_TSO4: u32 = 0x02;
pub(crate) const TUN_F_TSO6: u32 = 0x04;
pub(crate) const TUN_F_TSO_ECN: u32 = 0x08;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Options for a TAP device beyond the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TapOptions {
    /// Prefix frames with a `virtio_net_hdr` (for GSO/checksum offload).
    pub(crate) vnet_hdr: bool,
    /// Allow several queues (one fd each) on one device.
    pub(crate) multi_queue: bool,
}

/// An open TAP device, nonblocking, on the tokio reactor. The device lives while this
/// handle does (it is not made persistent), so a crashed daemon leaves none behind.
#[derive(Debug)]
pub(crate) struct Tap {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) TAP device `name` in the calling thread's namespace.
    /// Needs a tokio runtime.
    pub(crate) fn create(name: &str, opts: TapOptions) -> Result<Self, SysError> {
        let (fd, name) = open_tap(name, opts)?;
        Self::register(fd, name)
    }

    /// Creates TAP device `name` inside `ns` (the device lives in the namespace it was
    /// created in; the fd works from anywhere).
    pub(crate) async fn create_in(
        ns: &Netns,
        name: &str,
        opts: TapOptions,
    ) -> Result<Self, SysError> {
        let owned = name.to_owned();
        let (fd, name) = ns.run(move || open_tap(&owned, opts)).await??;
        Self::register(fd, name)
    }

    fn register(fd: OwnedFd, name: String) -> Result<Self, SysError> {
        // SAFETY: `fd` is an open descriptor that the AsyncFd owns from here on; we never
        // hand out `&mut OwnedFd`, so it stays the same descriptor until dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|err| SysError::Tap {
                    name: name.clone(),
                    source: err.into_parts().1,
                })?;
        Ok(Self { fd, name })
    }

    /// The device's name (the kernel's, if a pattern like "tap%d" was given).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf`, waiting until one arrives. A frame longer than `buf`
    /// is truncated, so size `buf` for the MTU plus the Ethernet header.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_fd(fd.get_ref(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// Reads one frame if one is queued, without waiting.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.fd.get_ref(), buf)
    }

    /// Writes one whole frame, waiting while the device queue is full.
    pub(crate) async fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| write_fd(fd.get_ref(), frame)) {
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// Writes one whole frame if the device takes it now.
    pub(crate) fn try_send(&self, frame: &[u8]) -> io::Result<()> {
        write_fd(self.fd.get_ref(), frame)
    }

    /// Takes the device off the tokio reactor, for plain threads to read and write
    /// (the data plane's packet paths).
    pub(crate) fn into_fd(self) -> Result<TapFd, SysError> {
        let name = self.name;
        let fd = self.fd.into_inner();
        Ok(TapFd { fd, name })
    }
}

/// A TAP device's descriptor for plain threads: nonblocking reads and writes, and
/// [`super::udp::poll_readable`] to wait. One reader and any number of writers may use
/// it at once (each read or write is one whole frame).
#[derive(Debug)]
pub(crate) struct TapFd {
    fd: OwnedFd,
    name: String,
}

impl TapFd {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Tells the kernel which offloads we handle (`TUN_F_*`); only for a device opened
    /// with `vnet_hdr`.
    pub(crate) fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is an open TAP.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame if one is queued (`WouldBlock` otherwise).
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(&self.fd, buf)
    }

    /// Writes one whole frame; if the device queue is full, waits for room up to
    /// `patience`, then gives up with `WouldBlock`.
    pub(crate) fn write(&self, frame: &[u8], patience: std::time::Duration) -> io::Result<()> {
        self.patiently(patience, || write_fd(&self.fd, frame))
    }

    /// Runs `write`; if the device queue was full, waits for room up to `patience` and
    /// runs it once more.
    fn patiently(
        &self,
        patience: std::time::Duration,
        write: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        match write() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(patience.as_millis()).unwrap_or(libc::c_int::MAX);
                // SAFETY: `pfd` is one valid pollfd, borrowed for the call.
                unsafe { libc::poll(&raw mut pfd, 1, ms) };
                write()
            }
            other => other,
        }
    }
}

impl TapFd {
    /// Writes one frame given in two parts (the virtio-net header, then the frame)
    /// with one system call; waits for room up to `patience` as [`Self::write`].
    pub(crate) fn write_parts(
        &self,
        head: &[u8],
        frame: &[u8],
        patience: std::time::Duration,
    ) -> io::Result<()> {
        let iov = [
            libc::iovec {
                iov_base: head.as_ptr().cast_mut().cast(),
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr().cast_mut().cast(),
                iov_len: frame.len(),
            },
        ];
        let total = head.len() + frame.len();
        let once = || {
            // SAFETY: both iovecs point at live slices of the lengths given; writev
            // only reads them.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            whole_frame(n, total)
        };
        self.patiently(patience, once)
    }
}

impl AsRawFd for TapFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn read_fd(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `fd` is open.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn write_fd(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: `frame` is valid for reads of `frame.len()` bytes and `fd` is open.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    whole_frame(n, frame.len())
}

/// What a write(2) or writev(2) of a `total`-byte frame that returned `n` amounts to.
fn whole_frame(n: isize, total: usize) -> io::Result<()> {
    match usize::try_from(n) {
        Ok(n) if n == total => Ok(()),
        // A TAP write is all-or-nothing; anything else means the frame was not sent.
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("TAP took {n} of {total} bytes"),
        )),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// Opens /dev/net/tun and binds it to TAP device `name` (created if absent).
fn open_tap(name: &str, opts: TapOptions) -> Result<(OwnedFd, String), SysError> {
    check_ifname(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => SysError::TunMissing,
            _ => SysError::Tap {
                name: name.to_owned(),
                source,
            },
        })?;
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if opts.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    if opts.multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        // The IFF_* values used here all fit in 16 bits.
        flags: flags as libc::c_short,
        _pad: [0; 22],
    };
    // check_ifname bounds the name at 15 bytes, leaving the terminating NUL.
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a properly sized, initialised `struct ifreq` that outlives the
    // call; TUNSETIFF reads it and writes back the device name.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(SysError::Tap {
            name: name.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    let len = req
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(req.name.len());
    let actual = String::from_utf8_lossy(&req.name[..len]).into_owned();
    Ok((OwnedFd::from(file), actual))
}
