//! The one error type of host plumbing.

use std::io;

/// What went wrong while plumbing the host: each message names the object and the step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SysError {
    #[error("cannot create TAP device: /dev/net/tun missing (is the tun module loaded?)")]
    TunMissing,
    #[error("cannot create TAP device {name}: {source}")]
    Tap { name: String, source: io::Error },
    #[error("invalid interface name {0:?}: needs 1 to 15 bytes, no '/', ':' or whitespace")]
    InvalidName(String),
    #[error("no network interface named {0}")]
    NoSuchLink(String),
    #[error("interface {name} exists but is a {found}, not a {expected}")]
    WrongKind {
        name: String,
        expected: &'static str,
        found: String,
    },
    #[error("this kernel cannot create {kind} devices (module missing?): {source}")]
    Unsupported {
        kind: &'static str,
        source: io::Error,
    },
    #[error("netlink: {op}: {source}")]
    Netlink { op: String, source: io::Error },
    #[error("network namespace {0} does not exist")]
    NetnsGone(String),
    #[error("cannot open network namespace {target}: {source}")]
    NetnsOpen { target: String, source: io::Error },
    #[error("cannot enter network namespace {target}: {source}")]
    Setns { target: String, source: io::Error },
    #[error("cannot create a network namespace: {0}")]
    Unshare(io::Error),
    #[error("namespace worker thread for {0} panicked")]
    ThreadPanicked(String),
    #[error("{tool} not found: cannot manage firewall rules (install iptables)")]
    FirewallToolMissing { tool: &'static str },
    #[error("firewall: `{command}` failed ({status}): {stderr}")]
    Firewall {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl SysError {
    /// Wraps a netlink failure, turning the kernel's negative errno into an `io::Error` so
    /// the message reads "File exists (os error 17)" rather than a packet dump.
    pub(crate) fn netlink(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source: netlink_io_error(err),
        }
    }

    /// The errno behind a netlink failure, if the kernel gave one.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. }
            | Self::Tap { source, .. }
            | Self::Unsupported { source, .. }
            | Self::NetnsOpen { source, .. }
            | Self::Setns { source, .. }
            | Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The kernel's answer as an `io::Error` (errno when there is one).
pub(crate) fn netlink_io_error(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(msg) => match msg.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other("netlink error without code"),
        },
        other => io::Error::other(other.to_string()),
    }
}

/// Whether a netlink failure carried this errno.
pub(crate) fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(msg) if msg.code.map(|c| -c.get()) == Some(errno))
}
