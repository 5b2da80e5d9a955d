//! Network namespaces: open one (by name, path or PID), run code inside it, and tell
//! whether the container behind it is still there.
//!
//! A namespace is entered per thread: `setns` on a throwaway thread that does its work
//! and exits, so no tokio worker ever changes namespace. Sockets (netlink included) and
//! TAP devices stay bound to the namespace they were created in, so a thread only has
//! to create them; they are then used from anywhere.

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::SysError;
use super::link::Netlink;

/// Where `ip netns add NAME` mounts named namespaces.
pub(crate) const NETNS_RUN_DIR: &str = "/run/netns";

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// How a caller names a container's network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum NsTarget {
    /// A namespace made by `ip netns add NAME` (mounted at /run/netns/NAME).
    Named(String),
    /// Any nsfs file: a bind mount, or /proc/PID/task/TID/ns/net.
    Path(PathBuf),
    /// The namespace of a running process (a container's PID 1).
    Pid(u32),
}

impl NsTarget {
    /// The nsfs file that holds the namespace.
    pub(crate) fn path(&self) -> PathBuf {
        match self {
            Self::Named(name) => Path::new(NETNS_RUN_DIR).join(name),
            Self::Path(path) => path.clone(),
            Self::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// Opens the namespace (it stays alive while the returned handle does).
    pub(crate) fn open(&self) -> Result<Netns, SysError> {
        if let Self::Named(name) = self
            && (name.is_empty() || name.contains('/') || name == "." || name == "..")
        {
            return Err(SysError::NetnsOpen {
                target: self.to_string(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        if let Self::Pid(pid) = self
            && !process_alive(*pid)
        {
            return Err(SysError::NetnsGone(self.to_string()));
        }
        Netns::open_file(&self.path(), self.to_string())
    }

    /// Whether the namespace can still be opened (for a PID: the process still runs).
    pub(crate) fn is_alive(&self) -> bool {
        match self {
            Self::Pid(pid) => process_alive(*pid),
            _ => self.open().is_ok(),
        }
    }
}

impl fmt::Display for NsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named(name) => write!(f, "netns {name}"),
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// A namespace's identity: the nsfs inode, stable while the namespace exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NsId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// An open network namespace. Holding it keeps the namespace (and its interfaces) alive;
/// clones share one descriptor.
#[derive(Clone)]
pub(crate) struct Netns {
    fd: Arc<OwnedFd>,
    id: NsId,
    label: Arc<str>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("label", &self.label)
            .field("ino", &self.id.ino)
            .finish()
    }
}

impl Netns {
    /// Opens a namespace made by `ip netns add NAME`.
    pub(crate) fn open_named(name: &str) -> Result<Self, SysError> {
        NsTarget::Named(name.to_owned()).open()
    }

    /// Opens the namespace file at `path`.
    pub(crate) fn open_path(path: impl AsRef<Path>) -> Result<Self, SysError> {
        NsTarget::Path(path.as_ref().to_owned()).open()
    }

    /// Opens the namespace process `pid` lives in.
    pub(crate) fn open_pid(pid: u32) -> Result<Self, SysError> {
        NsTarget::Pid(pid).open()
    }

    /// The namespace of the calling thread.
    pub(crate) fn current() -> Result<Self, SysError> {
        Self::open_file(Path::new("/proc/thread-self/ns/net"), "current".into())
    }

    /// A new, empty namespace with no name: it lives exactly as long as the handle (and
    /// anything running inside it), so nothing is left behind when it is dropped.
    pub(crate) fn new_anonymous() -> Result<Self, SysError> {
        let made = std::thread::Builder::new()
            .name("netns-new".into())
            .spawn(|| {
                // SAFETY: unshare only detaches this short-lived thread's network
                // namespace; the thread touches no shared state before it exits.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(SysError::Unshare(io::Error::last_os_error()));
                }
                Self::open_file(Path::new("/proc/thread-self/ns/net"), "anonymous".into())
            })
            .map_err(|source| SysError::Io {
                context: "spawning a namespace thread".into(),
                source,
            })?;
        made.join()
            .map_err(|_| SysError::ThreadPanicked("anonymous".into()))?
    }

    fn open_file(path: &Path, label: String) -> Result<Self, SysError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                SysError::NetnsGone(label.clone())
            } else {
                SysError::NetnsOpen {
                    target: label.clone(),
                    source,
                }
            }
        })?;
        // SAFETY: the fd is valid for the duration of the call; NS_GET_NSTYPE takes no
        // argument and only reads the nsfs inode's type.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(SysError::NetnsOpen {
                target: label,
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace file"),
            });
        }
        let meta = file.metadata().map_err(|source| SysError::NetnsOpen {
            target: label.clone(),
            source,
        })?;
        Ok(Self {
            id: NsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            fd: Arc::new(OwnedFd::from(file)),
            label: label.into(),
        })
    }

    /// The namespace's identity (compare to tell whether two handles are the same one).
    pub(crate) fn id(&self) -> NsId {
        self.id
    }

    /// What the namespace was opened as, for messages.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Whether `target` still names this very namespace (not a new one that took over
    /// its name or PID).
    pub(crate) fn still_at(&self, target: &NsTarget) -> bool {
        target.open().is_ok_and(|ns| ns.id == self.id)
    }

    /// Moves the calling thread into this namespace. Only for threads that exit after.
    fn enter(&self) -> Result<(), SysError> {
        // SAFETY: the fd is a valid nsfs descriptor owned by `self`; setns with
        // CLONE_NEWNET changes only the calling thread's network namespace.
        if unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(SysError::Setns {
                target: self.label.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Spawns a thread that enters this namespace and then runs `f` (or reports why it
    /// could not enter).
    fn spawn<R, F>(&self, f: F) -> Result<std::thread::JoinHandle<R>, SysError>
    where
        F: FnOnce(Result<(), SysError>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let ns = self.clone();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || f(ns.enter()))
            .map_err(|source| SysError::Io {
                context: "spawning a namespace thread".into(),
                source,
            })
    }

    /// Runs `f` on a new thread inside this namespace and waits for it (blocking). For
    /// short work: creating sockets or devices, running a command.
    pub(crate) fn run_blocking<T, F>(&self, f: F) -> Result<T, SysError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(move |entered| entered.map(|()| f()))?
            .join()
            .map_err(|_| SysError::ThreadPanicked(self.label.to_string()))?
    }

    /// Like [`Self::run_blocking`] but awaits the thread instead of blocking the runtime.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, SysError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A panic in `f` drops the sender, which the receiver reports.
        self.spawn(move |entered| {
            let _ = tx.send(entered.map(|()| f()));
        })?;
        rx.await
            .map_err(|_| SysError::ThreadPanicked(self.label.to_string()))?
    }

    /// Runs async `f` on a dedicated thread inside this namespace, on a current-thread
    /// runtime of its own, with a netlink connection opened there. Everything `f` creates
    /// (sockets, tasks) lives in the namespace; the thread ends when `f` does.
    pub(crate) async fn run_async<T, F, Fut>(&self, f: F) -> Result<T, SysError>
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let label = self.label.to_string();
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| SysError::Io {
                    context: format!("starting a runtime in {label}"),
                    source,
                })?;
            rt.block_on(async move {
                let netlink = Netlink::connect()?;
                Ok(f(netlink).await)
            })
        })
        .await?
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether process `pid` is running (a zombie counts as gone: its namespaces are).
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid_t, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // "pid (comm) S ...": the state follows the last ')', since comm may hold ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
