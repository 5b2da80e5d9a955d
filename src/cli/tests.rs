//! Command-line parsing: defaults, peers checked early, usage errors, environment.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use clap::error::ErrorKind;

use super::*;

fn parse(args: &[&str]) -> Result<Command_, clap::Error> {
    Cli::try_parse_from(std::iter::once("weave").chain(args.iter().copied())).map(|c| c.command)
}

type Command_ = super::Command;

fn launch(args: &[&str]) -> DaemonArgs {
    match parse(&[&["launch"], args].concat()) {
        Ok(Command_::Launch(a)) => a,
        other => panic!("expected launch, got {other:?}"),
    }
}

/// Tests run under `cargo test`, whose environment might carry WEAVE_* variables; the
/// defaults tests only make sense without them.
fn weave_env_is_clean() -> bool {
    std::env::vars_os().all(|(k, _)| !k.to_string_lossy().starts_with("WEAVE_"))
}

#[test]
fn launch_defaults_match_weave() {
    if !weave_env_is_clean() {
        return;
    }
    let a = launch(&[]);
    assert_eq!(
        a,
        DaemonArgs {
            peers: vec![],
            password: None,
            name: None,
            nickname: None,
            host: None,
            port: 6783,
            no_discovery: false,
            conn_limit: 200,
            no_fastdp: false,
            mtu: None,
            state_dir: PathBuf::from("/var/lib/weave"),
            http_addr: "127.0.0.1:6784".parse().expect("literal"),
            status_addr: "127.0.0.1:6782".parse().expect("literal"),
            log_level: "info".to_owned(),
            ipalloc_range: crate::daemon::ipam::RangeArg("10.32.0.0/12".parse().ok()),
            ipalloc_default_subnet: None,
            ipalloc_init: crate::daemon::ipam::InitArg::Consensus(None),
            no_dns: false,
            dns_domain: "weave.local.".to_owned(),
            dns_ttl: 1,
            dns_fallback_timeout: std::time::Duration::from_secs(5),
            dns_listen_address: None,
        }
    );
}

#[test]
fn launch_takes_every_flag() {
    let a = launch(&[
        "--password",
        "s3cret",
        "--name",
        "02:00:00:00:00:01",
        "--nickname",
        "host1",
        "--host",
        "192.0.2.1",
        "--port",
        "6790",
        "--no-discovery",
        "--no-fastdp",
        "--conn-limit",
        "0",
        "--mtu",
        "8000",
        "--state-dir",
        "/tmp/weave-state",
        "--http-addr",
        "127.0.0.1:7784",
        "--status-addr",
        "127.0.0.1:7782",
        "--log-level",
        "debug",
        "192.0.2.2",
        "host3:6790",
        "[2001:db8::1]:6783",
    ]);
    assert_eq!(a.peers, ["192.0.2.2", "host3:6790", "[2001:db8::1]:6783"]);
    assert_eq!(a.password(), Some("s3cret"));
    assert_eq!(a.name, Some(PeerName::from_u64(0x0200_0000_0001)));
    assert_eq!(a.nickname.as_deref(), Some("host1"));
    assert_eq!(a.host, Some("192.0.2.1".parse().expect("literal")));
    assert_eq!((a.port, a.no_discovery, a.conn_limit), (6790, true, 0));
    assert!(a.no_fastdp);
    assert_eq!(a.mtu, Some(8000));
    assert_eq!(a.state_dir, PathBuf::from("/tmp/weave-state"));
    assert_eq!(a.http_addr.to_string(), "127.0.0.1:7784");
    assert_eq!(a.status_addr.to_string(), "127.0.0.1:7782");
    assert_eq!(a.log_level, "debug");
    // `weave router` takes exactly the same flags.
    let Ok(Command_::Router(r)) = parse(&["router", "--port", "6790", "192.0.2.2"]) else {
        panic!("router parses")
    };
    assert_eq!((r.port, r.peers), (6790, vec!["192.0.2.2".to_owned()]));
}

#[test]
fn an_empty_password_means_none() {
    assert_eq!(launch(&["--password", ""]).password(), None);
}

#[test]
fn bad_peers_are_usage_errors() {
    for bad in [
        "",
        "host:",
        "host:0",
        "host:70000",
        "-bad-.example",
        "a..b",
        "host:port",
        "a b",
        "-x",
    ] {
        let err = parse(&["launch", "--", bad]).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}: {err}");
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["connect", "--", bad]).expect_err(bad);
        assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}: {err}");
    }
    let msg = parse(&["connect", "host:0"])
        .expect_err("port 0")
        .to_string();
    assert!(msg.contains("invalid peer address \"host:0\""), "{msg}");
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["launch", "--port", "0"][..],
        &["launch", "--port", "65536"],
        &["launch", "--name", "not-a-name"],
        &["launch", "--nickname", ""],
        &["launch", "--nickname", "two words"],
        &["launch", "--host", "host1"],
        &["launch", "--http-addr", "localhost"],
        &["launch", "--conn-limit", "-1"],
        &["launch", "--log-level", "verbose"],
        &["launch", "--bogus"],
        &["status", "dns-entries"],
        &["forget"],
        &["connect"],
        &["frobnicate"],
        &["stop", "extra"],
    ] {
        let err = parse(args).expect_err(&args.join(" "));
        assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
    }
}

#[test]
fn client_commands() {
    let Ok(Command_::Connect(c)) = parse(&["connect", "--replace", "192.0.2.2", "192.0.2.3:6790"])
    else {
        panic!("connect parses")
    };
    assert!(c.replace);
    assert_eq!(c.peers, ["192.0.2.2", "192.0.2.3:6790"]);
    // `--replace` alone clears all targets.
    let Ok(Command_::Connect(c)) = parse(&["connect", "--replace"]) else {
        panic!("connect --replace")
    };
    assert!(c.replace && c.peers.is_empty());

    let Ok(Command_::Forget(f)) = parse(&["forget", "192.0.2.2", "--http-addr", "127.0.0.1:7784"])
    else {
        panic!("forget parses")
    };
    assert_eq!(f.peers, ["192.0.2.2"]);
    assert_eq!(f.api.http_addr.to_string(), "127.0.0.1:7784");

    for (view, path) in [
        (None, "/status"),
        (Some("targets"), "/status/targets"),
        (Some("connections"), "/status/connections"),
        (Some("peers"), "/status/peers"),
    ] {
        let args: Vec<&str> = std::iter::once("status").chain(view).collect();
        let Ok(Command_::Status(s)) = parse(&args) else {
            panic!("status parses")
        };
        assert_eq!(s.view.map_or("/status", StatusView::path), path);
    }

    let Ok(Command_::Report(r)) = parse(&["report", "-f", "{{.Router.Name}}"]) else {
        panic!("report")
    };
    assert_eq!(r.format.as_deref(), Some("{{.Router.Name}}"));
    let Ok(Command_::Report(r)) = parse(&["report", "--format={{json .}}"]) else {
        panic!("report")
    };
    assert_eq!(r.format.as_deref(), Some("{{json .}}"));

    assert!(matches!(parse(&["stop"]), Ok(Command_::Stop(_))));
    assert!(matches!(
        parse(&["reset", "--state-dir", "/tmp/x"]),
        Ok(Command_::Reset(_))
    ));
    assert!(matches!(parse(&["version"]), Ok(Command_::Version(_))));
}

#[test]
fn help_and_version_exit_zero() {
    for args in [&["--help"][..], &["--version"], &["launch", "--help"]] {
        let err = parse(args).expect_err("help is an early exit");
        assert_eq!(err.exit_code(), 0, "{args:?}");
    }
}

#[test]
fn the_password_stays_out_of_the_routers_argv() {
    let a = launch(&[
        "--password",
        "s3cret",
        "--name",
        "02:00:00:00:00:01",
        "--no-discovery",
        "--no-fastdp",
        "--dns-fallback-timeout",
        "1.5s",
        "192.0.2.2",
    ]);
    assert_eq!(
        a.dns_fallback_timeout,
        std::time::Duration::from_millis(1500)
    );
    let argv = launch::router_args(&a, Path::new("/var/lib/weave-test"));
    assert!(
        argv.iter()
            .all(|arg| !arg.to_string_lossy().contains("s3cret")),
        "{argv:?}"
    );
    let strs: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(strs[0], "router");
    assert_eq!(strs.last().map(String::as_str), Some("192.0.2.2"));
    // The router's argv parses back to the same settings, minus the password.
    let reparsed = match Cli::try_parse_from(std::iter::once(OsString::from("weave")).chain(argv)) {
        Ok(Cli {
            command: Command_::Router(r),
        }) => r,
        other => panic!("router argv does not parse: {other:?}"),
    };
    let expected = DaemonArgs {
        password: reparsed.password.clone(),
        state_dir: PathBuf::from("/var/lib/weave-test"),
        ..a
    };
    assert_eq!(reparsed, expected);
}

#[test]
fn router_config_from_args() {
    let dir = std::env::temp_dir().join(format!("weave-cli-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut a = launch(&["--no-discovery", "--password", "s3cret", "192.0.2.2"]);
    a.state_dir = dir.clone();
    let config = router::daemon_config(a).expect("config");
    assert!(!config.discovery);
    assert_eq!(config.password.as_deref(), Some("s3cret"));
    assert_eq!(config.peers, ["192.0.2.2"]);
    assert!(dir.is_dir(), "the state directory is created");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn not_running_prints_just_that() {
    let err = anyhow::Error::from(ClientError::NotRunning);
    assert_eq!(error_message(&err), "weave is not running");
    let err = anyhow::anyhow!("inner").context("outer");
    assert_eq!(error_message(&err), "outer: inner");
}

const PROBE_ENV: &str = "WEAVE_CLI_TEST_PROBE";

/// Environment variables are process-wide (and setting them is `unsafe` in edition
/// 2024), so this runs [`env_probe`] in a child test process with a chosen environment.
fn parse_in_child(env: &[(&str, &str)], args: &str) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command.args([
        "--exact",
        "cli::tests::env_probe",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEAVE_") {
            command.env_remove(key);
        }
    }
    command.env(PROBE_ENV, args).envs(env.iter().copied());
    let out = command.output().expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "probe failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // libtest prints "test ... " before the probe's own output on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("PROBE "))
        .expect("probe output");
    line.1.to_owned()
}

#[test]
#[ignore = "run by the environment tests in a child process"]
fn env_probe() {
    let Ok(args) = std::env::var(PROBE_ENV) else {
        return;
    };
    let argv = std::iter::once("weave").chain(args.split_whitespace());
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command_::Launch(a),
        }) => println!(
            "PROBE password={:?} port={} state_dir={} http={} status={} log={}",
            a.password(),
            a.port,
            a.state_dir.display(),
            a.http_addr,
            a.status_addr,
            a.log_level
        ),
        Ok(Cli {
            command: Command_::Status(s),
        }) => println!("PROBE http={}", s.api.http_addr),
        Ok(Cli {
            command: Command_::Reset(r),
        }) => {
            println!(
                "PROBE state_dir={} http={}",
                r.state_dir.display(),
                r.api.http_addr
            )
        }
        Ok(other) => println!("PROBE {other:?}"),
        Err(err) => println!("PROBE error exit={} {:?}", err.exit_code(), err.kind()),
    }
}

#[test]
fn environment_fills_in_flags() {
    let env = [
        ("WEAVE_PASSWORD", "from-env"),
        ("WEAVE_PORT", "6790"),
        ("WEAVE_STATE_DIR", "/tmp/weave-env"),
        ("WEAVE_HTTP_ADDR", "127.0.0.1:7784"),
        ("WEAVE_STATUS_ADDR", "127.0.0.1:7782"),
        ("WEAVE_LOG_LEVEL", "warning"),
    ];
    assert_eq!(
        parse_in_child(&env, "launch"),
        r#"password=Some("from-env") port=6790 state_dir=/tmp/weave-env http=127.0.0.1:7784 status=127.0.0.1:7782 log=warning"#
    );
    // Flags win over the environment.
    assert_eq!(
        parse_in_child(
            &env,
            "launch --password flag --port 6791 --http-addr 127.0.0.1:8784"
        ),
        r#"password=Some("flag") port=6791 state_dir=/tmp/weave-env http=127.0.0.1:8784 status=127.0.0.1:7782 log=warning"#
    );
    assert_eq!(parse_in_child(&env, "status"), "http=127.0.0.1:7784");
    assert_eq!(
        parse_in_child(&env, "reset"),
        "state_dir=/tmp/weave-env http=127.0.0.1:7784"
    );
    // Without the environment: the defaults.
    assert_eq!(
        parse_in_child(&[], "launch"),
        "password=None port=6783 state_dir=/var/lib/weave http=127.0.0.1:6784 status=127.0.0.1:6782 log=info"
    );
    // A bad value in the environment is a usage error too.
    assert_eq!(
        parse_in_child(&[("WEAVE_HTTP_ADDR", "nowhere")], "status"),
        "error exit=2 ValueValidation"
    );
}

// The commands' flows against a fake daemon on 127.0.0.1 (see crate::api::fake).

use std::time::Duration;

use crate::api::fake::{Call, FakeDaemon};
use crate::daemon::state::{DB_FILE, LOCK_FILE, LOG_FILE};

fn api(addr: SocketAddr) -> ApiArgs {
    ApiArgs { http_addr: addr }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weave-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A port on 127.0.0.1 nobody listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test]
async fn connect_and_forget_commands() {
    let daemon = FakeDaemon::start(crate::report::Report::default()).await;
    let args = ConnectArgs {
        replace: true,
        peers: vec!["192.0.2.7".to_owned()],
        api: api(daemon.http),
    };
    connect::run(args).await.expect("connect");
    let args = ForgetArgs {
        peers: vec!["192.0.2.7".to_owned()],
        api: api(daemon.http),
    };
    forget::run(args).await.expect("forget");
    let args = ConnectArgs {
        replace: false,
        peers: vec![crate::api::fake::REFUSED_PEER.to_owned()],
        api: api(daemon.http),
    };
    let err = connect::run(args).await.expect_err("refused by the daemon");
    assert_eq!(
        error_message(&err),
        format!("cannot connect to {}", crate::api::fake::REFUSED_PEER)
    );
    assert_eq!(
        daemon.calls()[..2],
        [
            Call::Connect {
                peers: vec!["192.0.2.7".into()],
                replace: true
            },
            Call::Forget {
                peers: vec!["192.0.2.7".into()]
            },
        ]
    );
}

#[tokio::test]
async fn commands_say_when_weave_is_not_running() {
    let addr = dead_addr();
    let err = status::run(StatusArgs {
        view: None,
        api: api(addr),
    })
    .await
    .expect_err("down");
    assert_eq!(error_message(&err), "weave is not running");
    let err = stop::run(api(addr)).await.expect_err("down");
    assert_eq!(error_message(&err), "weave is not running");
    let err = report::run(ReportArgs {
        format: None,
        api: api(addr),
    })
    .await
    .expect_err("down");
    assert_eq!(error_message(&err), "weave is not running");
    // `version` still prints ours.
    version::run(api(addr))
        .await
        .expect("version works without a daemon");
}

#[tokio::test]
async fn stop_waits_until_the_daemon_is_gone() {
    let daemon = FakeDaemon::start(crate::report::Report::default()).await;
    stop::run(api(daemon.http)).await.expect("stop");
    assert_eq!(daemon.calls(), [Call::Stop { reset: false }]);
    // stop returned only once the API stopped answering.
    let err = Client::new(daemon.http)
        .get("/status")
        .await
        .expect_err("gone");
    assert!(matches!(err, ClientError::NotRunning), "{err}");
}

#[tokio::test]
async fn reset_stops_with_reset_and_removes_owned_files() {
    let dir = scratch_dir("reset");
    for file in [DB_FILE, LOCK_FILE, LOG_FILE, "unrelated.txt"] {
        std::fs::write(dir.join(file), b"x").expect("write");
    }
    let daemon = FakeDaemon::start(crate::report::Report::default()).await;
    let swept = std::sync::atomic::AtomicUsize::new(0);
    let sweep = || async {
        swept.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    reset::run_with(
        ResetArgs {
            state_dir: dir.clone(),
            api: api(daemon.http),
        },
        sweep,
    )
    .await
    .expect("reset");
    assert_eq!(
        swept.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a running daemon cleans up after itself"
    );
    assert_eq!(daemon.calls(), [Call::Stop { reset: true }]);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["unrelated.txt"], "only what weave owns is removed");

    // Not running: the files go all the same.
    std::fs::write(dir.join(DB_FILE), b"x").expect("write");
    reset::run_with(
        ResetArgs {
            state_dir: dir.clone(),
            api: api(dead_addr()),
        },
        sweep,
    )
    .await
    .expect("reset");
    assert!(!dir.join(DB_FILE).exists());
    assert_eq!(
        swept.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "without a daemon, reset sweeps the host"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn reset_leaves_a_directory_a_live_daemon_holds() {
    let dir = scratch_dir("reset-held");
    let lock = std::fs::File::create(dir.join(LOCK_FILE)).expect("create lock");
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).expect("lock");
    std::fs::write(dir.join(DB_FILE), b"x").expect("write");
    assert!(state::lock_held(&dir).expect("check"));
    let run = reset::run_with(
        ResetArgs {
            state_dir: dir.clone(),
            api: api(dead_addr()),
        },
        || async { Ok(()) },
    );
    let outcome = tokio::time::timeout(Duration::from_millis(500), run).await;
    assert!(
        outcome.is_err(),
        "reset keeps waiting while the lock is held"
    );
    assert!(
        dir.join(DB_FILE).exists(),
        "nothing removed under a live daemon"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn launch_refuses_when_weave_is_running() {
    let daemon = FakeDaemon::start(crate::report::Report::default()).await;
    let dir = scratch_dir("launch-running");
    let mut args = launch(&[]);
    args.http_addr = daemon.http;
    args.state_dir = dir.clone();
    let err = launch::run(args.clone())
        .await
        .expect_err("already running");
    assert_eq!(error_message(&err), "weave is already running");

    // No API, but another daemon holds the state directory.
    args.http_addr = dead_addr();
    let lock = std::fs::File::create(dir.join(LOCK_FILE)).expect("create lock");
    let held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).expect("lock");
    let err = launch::run(args).await.expect_err("state dir in use");
    assert!(
        error_message(&err).starts_with("weave is already running (state directory "),
        "{err:#}"
    );
    drop(held);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn launch_reports_a_router_that_dies_with_the_log_tail() {
    // Under `cargo test` our own executable is the test harness, which rejects the
    // router's flags and exits at once: just what a daemon failing to start looks like.
    let dir = scratch_dir("launch-dies");
    let mut args = launch(&["--password", "s3cret"]);
    args.http_addr = dead_addr();
    args.state_dir = dir.join("sub");
    std::fs::create_dir_all(&args.state_dir).expect("create");
    std::fs::write(args.state_dir.join(LOG_FILE), "a previous run's line\n").expect("write");
    let err = launch::run(args).await.expect_err("the child exits");
    let msg = error_message(&err);
    assert!(
        msg.starts_with("weave router exited (exit status: "),
        "{msg}"
    );
    assert!(msg.contains("before it was ready; the end of "), "{msg}");
    assert!(
        !msg.contains("a previous run's line"),
        "only this run's log: {msg}"
    );
    assert!(
        msg.to_lowercase().contains("unrecognized option"),
        "the child's stderr is in the log: {msg}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn launch_says_when_the_state_directory_cannot_be_created() {
    let dir = scratch_dir("launch-baddir");
    std::fs::write(dir.join("file"), b"x").expect("write");
    let mut args = launch(&[]);
    args.http_addr = dead_addr();
    args.state_dir = dir.join("file").join("state");
    let err = launch::run(args).await.expect_err("cannot create");
    assert!(
        error_message(&err).starts_with("cannot create state directory "),
        "{err:#}"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
