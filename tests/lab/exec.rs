//! Running commands inside a lab namespace: with a timeout (`Output`), or in the
//! background, owned by the lab (`Proc`).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use super::{WaitError, wait_until};

/// Default time limit for a foreground command.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a command's output pipes may stay open after it exits (a daemon it forked
/// may hold them) before we stop reading.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// What a finished (or timed-out) command left behind.
#[derive(Clone, Debug)]
pub(crate) struct Output {
    /// The command line, for messages.
    pub(crate) command: String,
    /// Exit code; `None` if killed by a signal (including our timeout).
    pub(crate) status: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) timed_out: bool,
}

impl Output {
    /// Exited 0 within its time limit.
    pub(crate) fn success(&self) -> bool {
        self.status == Some(0) && !self.timed_out
    }

    /// Panics with everything the command printed unless it succeeded.
    #[track_caller]
    pub(crate) fn expect_ok(self) -> Self {
        assert!(self.success(), "command failed:\n{self}");
        self
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.timed_out, self.status) {
            (true, _) => "timed out".to_owned(),
            (false, Some(code)) => format!("exit {code}"),
            (false, None) => "killed by a signal".to_owned(),
        };
        writeln!(f, "$ {}  ({status})", self.command)?;
        if !self.stdout.is_empty() {
            writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.is_empty() {
            writeln!(f, "--- stderr\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// The lab's registry of background processes, killed when the lab is dropped.
#[derive(Debug, Default)]
pub(crate) struct Procs {
    list: Mutex<Vec<ProcEntry>>,
}

#[derive(Debug)]
struct ProcEntry {
    child: Child,
    label: String,
    log: PathBuf,
}

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ProcEntry>> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every process (SIGTERM to its group, SIGKILL after `grace`) and reaps it.
    pub(crate) fn stop_all(&self, grace: Duration) {
        let mut list = self.lock();
        for entry in list.iter_mut() {
            if matches!(entry.child.try_wait(), Ok(None)) {
                signal_group(entry.child.id(), "TERM");
            }
        }
        let deadline = Instant::now() + grace;
        for entry in list.iter_mut() {
            while matches!(entry.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(entry.child.try_wait(), Ok(None)) {
                signal_group(entry.child.id(), "KILL");
                let _ = entry.child.kill();
            }
            let _ = entry.child.wait();
        }
    }

    /// The last `lines` lines of every process's log, for a failing test's report.
    pub(crate) fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for entry in self.lock().iter() {
            let text = std::fs::read_to_string(&entry.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "==== {} ({})\n{}\n",
                entry.label,
                entry.log.display(),
                tail.join("\n")
            ));
        }
        out
    }
}

/// Sends `sig` to the process group led by `pid` (background processes lead their own).
fn signal_group(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// A background process started by the lab. Stopped at the latest when the lab drops.
#[derive(Clone, Debug)]
pub(crate) struct Proc {
    pid: u32,
    label: String,
    log: PathBuf,
    procs: Arc<Procs>,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Where its stdout and stderr go.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it printed so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn with_child<T>(&self, f: impl FnOnce(&mut Child) -> T) -> Option<T> {
        let mut list = self.procs.lock();
        list.iter_mut()
            .find(|e| e.child.id() == self.pid)
            .map(|e| f(&mut e.child))
    }

    /// Still running (not exited, not reaped).
    pub(crate) fn is_running(&self) -> bool {
        self.with_child(|c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Waits up to `timeout` (looking every `poll`) for it to exit by itself; `what` says
    /// what is awaited in the error.
    pub(crate) fn wait_exit(
        &self,
        what: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<(), WaitError> {
        wait_until(what, timeout, poll, || {
            if self.is_running() {
                Err("still running")
            } else {
                Ok(())
            }
        })
    }

    /// Its exit status if it has exited.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.with_child(|c| c.try_wait().ok().flatten()).flatten()
    }

    /// Sends SIGTERM to it (and whatever it forked), waits up to `grace`, then SIGKILL.
    /// Returns its exit status.
    pub(crate) fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if self.is_running() {
            signal_group(self.pid, "TERM");
        }
        let deadline = Instant::now() + grace;
        while self.is_running() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.is_running() {
            self.kill();
        }
        self.with_child(|c| c.wait().ok()).flatten()
    }

    /// SIGKILL to it and its group, like a crash.
    pub(crate) fn kill(&self) {
        signal_group(self.pid, "KILL");
        self.with_child(|c| {
            let _ = c.kill();
            let _ = c.wait();
        });
    }
}

/// Prepares `args` to run inside network namespace `netns`, with the weave binary
/// substituted for a leading "weave".
pub(crate) fn netns_command(netns: &str, args: &[String], weave_bin: &Path) -> Command {
    assert!(!args.is_empty(), "empty command");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns]);
    if args[0] == "weave" {
        cmd.arg(weave_bin);
    } else {
        cmd.arg(&args[0]);
    }
    cmd.args(&args[1..]);
    cmd
}

/// Runs `cmd` to completion or until `timeout`, collecting its output.
pub(crate) fn run_with_timeout(mut cmd: Command, label: String, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
    let stdout = Pipe::read(child.stdout.take().expect("stdout was piped"));
    let stderr = Pipe::read(child.stderr.take().expect("stderr was piped"));
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let (status, timed_out) = loop {
        match child.try_wait() {
            Ok(Some(status)) => break (status.code(), false),
            Ok(None) if Instant::now() >= deadline => {
                signal_group(child.id(), "KILL");
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            Ok(None) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => panic!("waiting for `{label}`: {e}"),
        }
    };
    let grace = Instant::now() + PIPE_GRACE;
    while !(stdout.done() && stderr.done()) && Instant::now() < grace {
        thread::sleep(Duration::from_millis(5));
    }
    Output {
        command: label,
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
        timed_out,
    }
}

/// Starts `cmd` in the background with output to `log`, registered with `procs`.
pub(crate) fn spawn_logged(
    mut cmd: Command,
    label: String,
    log: PathBuf,
    procs: &Arc<Procs>,
) -> Proc {
    let file =
        File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
    let err = file.try_clone().expect("duplicate log fd");
    cmd.stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{label}`: {e}"));
    let pid = child.id();
    procs.lock().push(ProcEntry {
        child,
        label: label.clone(),
        log: log.clone(),
    });
    Proc {
        pid,
        label,
        log,
        procs: Arc::clone(procs),
    }
}

/// A pipe drained by its own thread, so a full pipe never blocks the child.
struct Pipe {
    buf: Arc<Mutex<Vec<u8>>>,
    eof: Arc<AtomicBool>,
}

impl Pipe {
    fn read(mut src: impl Read + Send + 'static) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let eof = Arc::new(AtomicBool::new(false));
        let (b, e) = (Arc::clone(&buf), Arc::clone(&eof));
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = src.read(&mut chunk) {
                b.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&chunk[..n]);
            }
            e.store(true, Ordering::Release);
        });
        Self { buf, eof }
    }

    fn done(&self) -> bool {
        self.eof.load(Ordering::Acquire)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }
}
