//! The CLI's view of the state directory: create it, tell whether a daemon holds it (the
//! daemon keeps an exclusive flock on its lock file while it runs), read the log's end.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::daemon::state::LOCK_FILE;

/// Creates `dir` if needed and returns it absolute (the daemon runs from `/`).
pub(super) fn ensure_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state directory {}", dir.display()))?;
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve state directory {}", dir.display()))?;
    if !dir.is_dir() {
        anyhow::bail!("state directory {} is not a directory", dir.display());
    }
    Ok(dir)
}

/// Whether a live process holds the daemon's lock on `dir` (a crashed daemon's lock
/// goes with it, so a stale lock file is not "held").
pub(super) fn lock_held(dir: &Path) -> io::Result<bool> {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Dropping the guard unlocks at once: we only looked.
        Ok(_guard) => Ok(false),
        Err((_, Errno::EWOULDBLOCK)) => Ok(true),
        Err((_, errno)) => Err(io::Error::from(errno)),
    }
}

/// The last `lines` lines written to `path` since byte `from` (at most 64 KiB of them).
pub(super) fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    const MAX: u64 = 64 << 10;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = from.max(len.saturating_sub(MAX)).min(len);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.take(MAX).read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weave-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn lock_is_seen_while_held_and_not_after() {
        let dir = ensure_dir(&temp_dir("lock")).expect("create");
        assert!(!lock_held(&dir).expect("no lock file"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .expect("create lock file");
        assert!(!lock_held(&dir).expect("unlocked file"));
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let guard = Flock::lock(file, FlockArg::LockExclusiveNonblock).expect("lock");
        assert!(lock_held(&dir).expect("locked"));
        drop(guard);
        assert!(!lock_held(&dir).expect("released"));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn ensure_dir_creates_and_reports_failures() {
        let root = temp_dir("nested");
        let dir = root.join("a/b");
        assert!(ensure_dir(&dir).expect("created").is_absolute());
        assert!(dir.is_dir());
        // A path under a regular file cannot be created.
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = ensure_dir(&file.join("sub")).expect_err("under a file");
        assert!(
            err.to_string()
                .starts_with("cannot create state directory "),
            "{err}"
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn log_tail_shows_only_this_run() {
        let dir = ensure_dir(&temp_dir("log")).expect("create");
        let path = dir.join("weave.log");
        std::fs::write(&path, "old run\n").expect("write");
        let from = std::fs::metadata(&path).expect("stat").len();
        let mut log = OpenOptions::new().append(true).open(&path).expect("open");
        for i in 1..=5 {
            writeln!(log, "line {i}").expect("append");
        }
        assert_eq!(log_tail(&path, from, 3), "line 3\nline 4\nline 5");
        assert_eq!(
            log_tail(&path, 0, 10),
            "old run\nline 1\nline 2\nline 3\nline 4\nline 5"
        );
        assert!(log_tail(&dir.join("missing"), 0, 3).starts_with("(cannot read "));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
