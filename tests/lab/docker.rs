//! A real Docker container for end-to-end tests, when Docker works here: the engine may
//! have no registry access and no images, so the image is made locally from the host's
//! own `sleep` and C library (`docker import`); container and image are removed on drop.
//! Shared by the end-to-end tests that attach Docker containers.

use std::process::Command;

/// A running Docker container of a locally made image; removed (with the image) on drop.
pub(crate) struct DockerContainer {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) pid: u32,
    image: String,
    dir: std::path::PathBuf,
}

impl DockerContainer {
    /// `None` (with the reason printed) when Docker is missing or cannot run one.
    pub(crate) fn start() -> Option<Self> {
        let skip = |why: String| {
            eprintln!("skipping the Docker test: {why}");
            None
        };
        match docker(&["version", "--format", "{{.Server.Version}}"]) {
            Ok(_) => {}
            Err(why) => return skip(format!("docker does not work here ({why})")),
        }
        let tag = format!("{}-{}", std::process::id(), rand_suffix());
        // Made first, so its drop cleans up whatever the steps below leave.
        let mut made = Self {
            id: String::new(),
            name: format!("weave-e2e-{tag}"),
            pid: 0,
            image: format!("weave-e2e-lab:{tag}"),
            dir: std::env::temp_dir().join(format!("weave-e2e-image-{tag}")),
        };
        if let Err(why) = make_rootfs(&made.dir) {
            return skip(format!("cannot build an image root: {why}"));
        }
        let tar = Command::new("tar")
            .args(["-C", &made.dir.to_string_lossy(), "-cf", "-", "."])
            .stdout(std::process::Stdio::piped())
            .spawn();
        let Ok(mut tar) = tar else {
            return skip("tar is missing".into());
        };
        let imported = Command::new("timeout")
            .args(["60", "docker", "import", "-", &made.image])
            .stdin(tar.stdout.take().expect("piped"))
            .output();
        let _ = tar.wait();
        match imported {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return skip(format!(
                    "docker import failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Err(e) => return skip(format!("docker import: {e}")),
        }
        match docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &made.name,
            &made.image,
            "/bin/sleep",
            "120",
        ]) {
            Ok(id) => made.id = id.trim().to_owned(),
            Err(why) => return skip(format!("docker run failed: {why}")),
        }
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &made.id]).ok()?;
        made.pid = pid.trim().parse().ok()?;
        Some(made)
    }

    pub(crate) fn remove(&self) {
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = docker(&["rmi", "-f", &self.image]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs docker with a time limit; its stdout, or why it failed.
pub(crate) fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg("60")
        .arg("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A root filesystem with just /bin/sleep and the libraries it loads (per `ldd`).
fn make_rootfs(dir: &std::path::Path) -> Result<(), String> {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .ok_or("no sleep binary")?;
    let copy = |from: &str, to: &std::path::Path| -> Result<(), String> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("{from}: {e}"))
    };
    copy(sleep, &dir.join("bin/sleep"))?;
    let ldd = Command::new("ldd")
        .arg(sleep)
        .output()
        .map_err(|e| e.to_string())?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_owned);
        if let Some(path) = path {
            copy(&path, &dir.join(path.trim_start_matches('/')))?;
        }
    }
    Ok(())
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:08x}")
}
