//! Processes the xtasks start and talk to: healthd with a realistic config,
//! its dependencies, the baseline server, and a minimal HTTP client.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use healthd_testkit::postgres::TestPostgres;

use crate::callgrind;

/// The bearer token healthd is given; its `[[access.tokens]]` name is "xtask".
pub const TOKEN: &str = "xtask-token-0123456789";
/// How often healthd's checks run under the xtasks.
pub const CHECK_INTERVAL_SECONDS: u64 = 10;
/// HTTP workers of healthd and of the baseline.
pub const WORKERS: usize = 2;

/// Which build of the binaries to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    /// Builds healthd and the baseline server.
    pub fn build(self, root: &Path) -> anyhow::Result<()> {
        let mut args = vec!["build", "--quiet", "--bin", "healthd", "--example", "baseline"];
        if self == Profile::Release {
            args.push("--release");
        }
        let status = Command::new(env!("CARGO")).current_dir(root).args(&args).status()?;
        if !status.success() {
            bail!("cargo {} failed", args.join(" "));
        }
        Ok(())
    }

    pub fn binary(self, root: &Path, name: &str) -> PathBuf {
        let profile = if self == Profile::Release { "release" } else { "debug" };
        target_dir(root).join(profile).join(name)
    }
}

/// Where cargo builds: `CARGO_TARGET_DIR` when set (relative to the root,
/// as cargo reads it from the root), else `target/`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// How a server binary runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    Native,
    /// Under callgrind, which writes next to the bench's other output and
    /// slows start-up by tens of times.
    Callgrind,
}

impl Launch {
    fn command(self, root: &Path, binary: &Path) -> (Command, Option<PathBuf>) {
        match self {
            Launch::Native => (Command::new(binary), None),
            Launch::Callgrind => {
                let (command, out_file) = callgrind::wrap(binary, &root.join("target/bench"));
                (command, Some(out_file))
            }
        }
    }

    fn startup_deadline(self, native: Duration) -> Duration {
        match self {
            Launch::Native => native,
            Launch::Callgrind => native * 10,
        }
    }
}

/// What healthd's checks watch: a throwaway PostgreSQL, and a bare
/// actix-web server as the http and tcp checks' dependency.
pub struct Dependencies {
    pub postgres: TestPostgres,
    pub upstream_port: u16,
    _upstream: Process,
}

impl Dependencies {
    pub async fn start(root: &Path, profile: Profile) -> anyhow::Result<Dependencies> {
        let postgres = TestPostgres::start().await;
        let upstream_port = free_port()?;
        let upstream =
            start_baseline(root, profile, Launch::Native, upstream_port, 1, 64, "/health")?;
        Ok(Dependencies { postgres, upstream_port, _upstream: upstream })
    }
}

/// Starts `examples/baseline` answering `GET path` with a JSON body of
/// `body_bytes`, and waits until it answers.
pub fn start_baseline(
    root: &Path,
    profile: Profile,
    launch: Launch,
    port: u16,
    workers: usize,
    body_bytes: usize,
    path: &str,
) -> anyhow::Result<Process> {
    let (mut command, callgrind_out) =
        launch.command(root, &profile.binary(root, "examples/baseline"));
    let process = Process {
        child: command
            .args([format!("127.0.0.1:{port}"), workers.to_string(), body_bytes.to_string()])
            .arg(path)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the baseline server")?,
        callgrind_out,
    };
    wait_until(
        "the baseline server answering",
        launch.startup_deadline(Duration::from_secs(10)),
        || fetch(port, path, None).is_ok_and(|(status, _)| status == 200),
    )?;
    Ok(process)
}

/// Who sees the checks in `/health`: healthd's `[access] details`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Details {
    /// Callers with the token, from `details_allow`.
    Authorized,
    /// Everyone.
    Always,
}

impl Details {
    fn as_config(self) -> &'static str {
        match self {
            Details::Authorized => "authorized",
            Details::Always => "always",
        }
    }
}

/// Starts healthd on `port` with a realistic config (a postgres, an http, a
/// tcp and a disk check; a token; the access log on, JSON, to `log`) and
/// waits until every check has reported.
pub fn start_healthd(
    root: &Path,
    profile: Profile,
    launch: Launch,
    port: u16,
    dependencies: &Dependencies,
    details: Details,
    log: Stdio,
) -> anyhow::Result<Process> {
    let variant = Variant { details, access_log: true, extra_checks: "" };
    start_healthd_with(root, profile, launch, port, dependencies, log, variant)
}

/// How one healthd differs from the realistic config.
#[derive(Clone, Copy)]
pub struct Variant<'a> {
    pub details: Details,
    /// Off: `RUST_LOG` filters out `healthd::access`, the rest of the log stays.
    pub access_log: bool,
    /// TOML `[[checks]]` (and `[[groups]]`) tables after the realistic ones.
    pub extra_checks: &'a str,
}

/// As `start_healthd`, with more than the realistic config's checks.
pub fn start_healthd_with(
    root: &Path,
    profile: Profile,
    launch: Launch,
    port: u16,
    dependencies: &Dependencies,
    log: Stdio,
    variant: Variant<'_>,
) -> anyhow::Result<Process> {
    let dir = root.join("target/xtask");
    fs::create_dir_all(&dir)?;
    let config_path = dir.join(format!("healthd-{port}.toml"));
    let config = realistic_config(
        port,
        &dependencies.postgres.url(),
        dependencies.upstream_port,
        variant.details,
    );
    fs::write(&config_path, config + variant.extra_checks)?;
    let (mut command, callgrind_out) = launch.command(root, &profile.binary(root, "healthd"));
    let process = Process {
        child: command
            .arg("--config")
            .arg(&config_path)
            .args(["--log-format", "json"])
            .env("HEALTHD_TOKEN", TOKEN)
            .env("RUST_LOG", if variant.access_log { "info" } else { "info,healthd::access=off" })
            .stdout(log)
            .spawn()
            .context("starting healthd")?,
        callgrind_out,
    };
    let deadline = launch.startup_deadline(Duration::from_secs(30));
    wait_until("healthd's startup probe answering 200", deadline, || {
        fetch(port, "/health/startup", None).is_ok_and(|(status, _)| status == 200)
    })?;
    Ok(process)
}

fn realistic_config(port: u16, database_url: &str, upstream_port: u16, details: Details) -> String {
    let details = details.as_config();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
service_id = "xtask"
description = "healthd under cargo xtask"
workers = {WORKERS}
drain_delay = "0s"

[access]
details = "{details}"
details_allow = ["127.0.0.0/8"]
[[access.tokens]]
name = "xtask"
env = "HEALTHD_TOKEN"

[defaults]
interval = "{CHECK_INTERVAL_SECONDS}s"
timeout = "1s"
retries = 1

[[checks]]
name = "db"
kind = "postgres"
url = "{database_url}"

[[checks]]
name = "upstream"
kind = "http"
url = "http://127.0.0.1:{upstream_port}/health"

[[checks]]
name = "upstream-tcp"
kind = "tcp"
address = "127.0.0.1:{upstream_port}"

[[checks]]
name = "disk"
kind = "disk"
path = "/"
"#
    )
}

/// A child process killed and reaped on drop, however the bench ends.
pub struct Process {
    pub child: Child,
    /// Where callgrind writes, when the process runs under it.
    callgrind_out: Option<PathBuf>,
}

impl Process {
    /// A process started natively, outside these helpers.
    pub fn native(child: Child) -> Process {
        Process { child, callgrind_out: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's instruction counter, when it runs under callgrind.
    pub fn instrumented(&self) -> Option<callgrind::Instrumented> {
        let out_file = self.callgrind_out.clone()?;
        Some(callgrind::Instrumented::new(self.pid(), out_file))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A minimal HTTP/1.0 GET, to read bodies without another client crate.
pub fn fetch(port: u16, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status =
        response.get(9..12).and_then(|code| code.parse().ok()).context("no HTTP status line")?;
    let body =
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

pub fn wait_until(
    what: &str,
    deadline: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > deadline {
            bail!("{what} did not happen within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The checks' dependency: a listener that accepts and closes at once,
/// with a backlog deep enough for 10,000 checks connecting together.
pub struct AcceptingListener {
    pub port: u16,
}

impl AcceptingListener {
    pub fn start() -> anyhow::Result<AcceptingListener> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        // std listens with a backlog of 128; listening again raises it
        // (up to net.core.somaxconn).
        // SAFETY: listen(2) on a socket this function owns; no memory is involved.
        if unsafe { libc::listen(listener.as_raw_fd(), 65_535) } != 0 {
            bail!("listen: {}", std::io::Error::last_os_error());
        }
        let port = listener.local_addr()?.port();
        // The thread ends with the xtask process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        Ok(AcceptingListener { port })
    }
}
