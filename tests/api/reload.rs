//! SIGHUP reloads the config file, against the real binary: an invalid
//! file changes nothing and logs each problem as `FILE: KEY: REASON`; a
//! valid one adds, restarts and removes checks while the unchanged ones
//! keep their readings, counters and schedule; access settings switch at
//! once; listen and workers changes are logged and ignored. A probe loop
//! runs throughout each reload and must see only contract answers, every
//! one of them the one expected.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{answer, metric, spawn_binary, RunningBinary};

const DEADLINE: Duration = Duration::from_secs(20);
const OPS_TOKEN: &str = "ops-token-0123456789";
const OLD_TOKEN: &str = "old-token-0123456789";
const TOKENS: &[(&str, &str)] =
    &[("HEALTHD_OPS_TOKEN", OPS_TOKEN), ("HEALTHD_OLD_TOKEN", OLD_TOKEN)];

/// A dependency for tcp checks: accepts and closes.
async fn listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    (address, task)
}

/// A config with the ops token (and the old one when `old_token`), and `checks`.
fn config(extra_server: &str, access: &str, old_token: bool, checks: &str) -> String {
    let old = if old_token {
        "[[access.tokens]]\nname = \"old\"\nenv = \"HEALTHD_OLD_TOKEN\"\n"
    } else {
        ""
    };
    format!(
        r#"
[server]
service_id = "reload-test"
drain_delay = "0s"
{extra_server}

[access]
details_allow = ["127.0.0.0/8"]
{access}
[[access.tokens]]
name = "ops"
env = "HEALTHD_OPS_TOKEN"
{old}
[defaults]
interval = "1s"
timeout = "500ms"
retries = 0

{checks}
"#
    )
}

fn tcp_check(name: &str, address: SocketAddr, extra: &str) -> String {
    format!("[[checks]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"{address}\"\n{extra}\n")
}

async fn start(config: &str) -> RunningBinary {
    let mut env = TOKENS.to_vec();
    env.push(("HEALTHD_LISTEN", "127.0.0.1:0"));
    spawn_binary(config, &[], &env).await
}

/// GETs `path` (with `token`) and validates the answer against the contract.
async fn get(
    client: &reqwest::Client,
    binary: &RunningBinary,
    path: &str,
    token: Option<&str>,
) -> crate::support::app::Answer {
    let mut request = client.get(format!("{}{path}", binary.base()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("healthd answers"), false).await
}

/// Polls `path` until `done` holds, failing after `DEADLINE`.
async fn wait_for(
    binary: &RunningBinary,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&crate::support::app::Answer) -> bool,
) -> crate::support::app::Answer {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = get(&client, binary, path, token).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no wanted answer from {path} within {DEADLINE:?}; last: {answer:#?}\nstdout:\n{}",
            binary.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Requests every probe and operation a monitoring stack would make,
/// over and over, each answer checked against the contract (a mismatch
/// panics the loop) and against the status it must have; anything else,
/// a connection error included, is kept as a failure.
struct ProbeLoop {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    rounds: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProbeLoop {
    fn start(base: String, checks: &'static [&'static str]) -> ProbeLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(Mutex::new(0));
        let (stopped, failed, counted) = (stop.clone(), failures.clone(), rounds.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut paths = vec![
                ("/health/live", None),
                ("/health/ready", None),
                ("/health/startup", None),
                ("/health", Some(OPS_TOKEN)),
                ("/metrics", Some(OPS_TOKEN)),
            ];
            let check_paths: Vec<String> =
                checks.iter().map(|name| format!("/health/checks/{name}")).collect();
            for path in &check_paths {
                paths.push((path.as_str(), Some(OPS_TOKEN)));
            }
            while !stopped.load(Ordering::SeqCst) {
                for (path, token) in &paths {
                    let mut request = client.get(format!("{base}{path}"));
                    if let Some(token) = token {
                        request = request.bearer_auth(token);
                    }
                    match request.send().await {
                        Ok(response) => {
                            let answer = answer(response, false).await;
                            if answer.status != StatusCode::OK {
                                failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("{path}: {} {}", answer.status, answer.text));
                            }
                        }
                        Err(error) => failed.lock().unwrap().push(format!("{path}: {error}")),
                    }
                }
                *counted.lock().unwrap() += 1;
            }
        });
        ProbeLoop { stop, failures, rounds, task }
    }

    /// Waits until the loop has gone round `more` more times.
    async fn go_round(&self, more: usize) {
        let target = *self.rounds.lock().unwrap() + more;
        let started = Instant::now();
        while *self.rounds.lock().unwrap() < target {
            assert!(started.elapsed() < DEADLINE, "the probe loop is stuck");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop; it must have seen no failure.
    async fn finish(self, binary: &RunningBinary) {
        self.go_round(1).await;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("every answer of the probe loop matches the contract");
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "the probe loop saw {failures:#?}\nstdout:\n{}",
            binary.stdout()
        );
        assert!(*self.rounds.lock().unwrap() > 2, "the probe loop hardly ran");
    }
}

/// Sends SIGHUP and waits for the reload's outcome to be logged: its `n`th
/// line containing `wanted`.
async fn reload(binary: &mut RunningBinary, wanted: &str) -> String {
    let before = binary.stdout().matches(wanted).count();
    binary.signal(libc::SIGHUP);
    let started = Instant::now();
    loop {
        let stdout = binary.stdout();
        if stdout.matches(wanted).count() > before {
            let line = stdout.lines().filter(|line| line.contains(wanted)).nth(before);
            return line.unwrap_or_default().to_string();
        }
        assert!(started.elapsed() < DEADLINE, "no {wanted:?} after SIGHUP:\n{stdout}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runs(metrics: &str, check: &str) -> f64 {
    metric(metrics, &format!("healthd_check_runs_total{{check=\"{check}\",kind=\"tcp\"}}"))
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn a_valid_reload_adds_restarts_and_removes_checks_and_keeps_the_unchanged_ones() {
    // Arrange: `keep` runs every 10 s, so that its schedule shows.
    let (first, _a) = listener().await;
    let (second, _b) = listener().await;
    let checks_before = [
        tcp_check("keep", first, "interval = \"10s\""),
        tcp_check("change", first, "interval = \"200ms\"\ntimeout = \"100ms\""),
        tcp_check("gone", first, ""),
    ]
    .concat();
    let mut binary = start(&config("", "", true, &checks_before)).await;
    let client = reqwest::Client::new();
    wait_for(&binary, "/health/startup", None, |answer| answer.status == StatusCode::OK).await;
    // `change` restarts: it needs runs to lose.
    let metrics = wait_for(&binary, "/metrics", Some(OPS_TOKEN), |answer| {
        runs(&answer.text, "change") >= 5.0
    })
    .await;
    assert_eq!(runs(&metrics.text, "keep"), 1.0, "{}", metrics.text);
    let keep_before = get(&client, &binary, "/health/checks/keep", Some(OPS_TOKEN)).await;
    let keep_time = keep_before.check("keep:responseTime").unwrap()["time"].clone();
    let probes = ProbeLoop::start(binary.base(), &["keep"]);
    probes.go_round(3).await;

    // Act: `change` moves to another address, runs every second and turns
    // non-critical; `gone` goes, `new` comes.
    let checks_after = [
        tcp_check("new", second, ""),
        tcp_check("keep", first, "interval = \"10s\""),
        tcp_check("change", second, "critical = false"),
    ]
    .concat();
    binary.write_config(&config("", "", true, &checks_after));
    let line = reload(&mut binary, "config reloaded").await;

    // Assert
    assert!(line.contains("added=1") && line.contains("restarted=1"), "{line}");
    assert!(line.contains("removed=1") && line.contains("unchanged=1"), "{line}");
    let health = get(&client, &binary, "/health", Some(OPS_TOKEN)).await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    // A new check is in from the reload on, with a reading already.
    assert_eq!(health.check("new:responseTime").unwrap()["status"], "pass", "{}", health.text);
    assert!(health.check("gone:responseTime").is_none(), "{}", health.text);
    assert_eq!(health.check("change:responseTime").unwrap()["critical"], false);
    // The unchanged check was not run again: same reading, same count.
    assert_eq!(health.check("keep:responseTime").unwrap()["time"], keep_time);
    let metrics = get(&client, &binary, "/metrics", Some(OPS_TOKEN)).await.text;
    assert_eq!(runs(&metrics, "keep"), 1.0, "{metrics}");
    assert!(runs(&metrics, "change") < 5.0, "the changed check kept its counters: {metrics}");
    assert!(!metrics.contains("check=\"gone\""), "{metrics}");
    let gone = get(&client, &binary, "/health/checks/gone", Some(OPS_TOKEN)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(metric(&metrics, "healthd_config_reloads_total{result=\"ok\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "healthd_config_reloads_total{result=\"invalid\"}"), Some(0.0));
    // `keep` goes on at its own pace: its next run comes an interval after its last.
    let kept =
        wait_for(&binary, "/metrics", Some(OPS_TOKEN), |answer| runs(&answer.text, "keep") >= 2.0)
            .await;
    assert_eq!(runs(&kept.text, "keep"), 2.0);
    probes.finish(&binary).await;
}

#[tokio::test]
async fn an_invalid_reload_changes_nothing_and_logs_every_problem() {
    // Arrange
    let (target, _listener) = listener().await;
    let checks = tcp_check("db", target, "");
    let mut binary = start(&config("", "", true, &checks)).await;
    wait_for(&binary, "/health/startup", None, |answer| answer.status == StatusCode::OK).await;
    let probes = ProbeLoop::start(binary.base(), &["db"]);
    probes.go_round(3).await;

    // Act: two problems, next to a check that would be new and a token
    // that would go.
    let broken = config(
        "",
        "",
        false,
        &[
            checks.clone(),
            tcp_check("other", target, ""),
            tcp_check("bad name", target, ""),
            "[[checks]]\nname = \"nowhere\"\nkind = \"tcp\"\naddress = \"no port\"\n".into(),
        ]
        .concat(),
    );
    binary.write_config(&broken);
    reload(&mut binary, "config reload refused").await;

    // Assert: each problem on a line of its own, FILE: KEY: REASON.
    let stdout = binary.stdout();
    let file = binary.config_path().display().to_string();
    assert!(stdout.contains(&format!("{file}: checks[2].name: ")), "{stdout}");
    assert!(stdout.contains(&format!("{file}: checks[3].address: ")), "{stdout}");
    let client = reqwest::Client::new();
    let health = get(&client, &binary, "/health", Some(OLD_TOKEN)).await;
    assert_eq!(health.status, StatusCode::OK, "the old token still works: {}", health.text);
    assert!(health.check("other:responseTime").is_none());
    let metrics = get(&client, &binary, "/metrics", Some(OPS_TOKEN)).await.text;
    assert_eq!(metric(&metrics, "healthd_config_reloads_total{result=\"invalid\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "healthd_config_reloads_total{result=\"ok\"}"), Some(0.0));

    // A file that cannot be read is refused alike.
    std::fs::remove_file(binary.config_path()).unwrap();
    let line = reload(&mut binary, ": (file): cannot read").await;
    assert!(line.contains(&file), "{line}");
    probes.finish(&binary).await;
}

#[tokio::test]
async fn access_settings_switch_at_once_and_a_removed_token_is_refused() {
    // Arrange
    let (target, _listener) = listener().await;
    let checks = tcp_check("db", target, "");
    let mut binary = start(&config("", "details = \"always\"", true, &checks)).await;
    wait_for(&binary, "/health/startup", None, |answer| answer.status == StatusCode::OK).await;
    let client = reqwest::Client::new();
    let old = get(&client, &binary, "/health", Some(OLD_TOKEN)).await;
    assert_eq!(old.status, StatusCode::OK);
    let anonymous = get(&client, &binary, "/health", None).await;
    assert!(anonymous.check("db:responseTime").is_some(), "details = always");
    let probes = ProbeLoop::start(binary.base(), &["db"]);
    probes.go_round(3).await;

    // Act
    binary.write_config(&config("", "details = \"authorized\"", false, &checks));
    reload(&mut binary, "config reloaded").await;

    // Assert: the very next requests see the new settings.
    let old = get(&client, &binary, "/health", Some(OLD_TOKEN)).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED, "{}", old.text);
    assert!(old.headers.get("www-authenticate").is_some());
    let anonymous = get(&client, &binary, "/health", None).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert!(anonymous.json.get("checks").is_none(), "{}", anonymous.text);
    let ops = get(&client, &binary, "/health", Some(OPS_TOKEN)).await;
    assert!(ops.check("db:responseTime").is_some(), "{}", ops.text);
    probes.finish(&binary).await;
    assert!(!binary.stdout().contains(OLD_TOKEN) && !binary.stdout().contains(OPS_TOKEN));
}

#[tokio::test]
async fn listen_workers_and_connection_changes_are_logged_and_ignored() {
    // Arrange
    let (target, _listener) = listener().await;
    let checks = tcp_check("db", target, "");
    let mut binary = start(&config("workers = 1\nmax_connections = 100", "", true, &checks)).await;
    wait_for(&binary, "/health/startup", None, |answer| answer.status == StatusCode::OK).await;
    let probes = ProbeLoop::start(binary.base(), &["db"]);
    probes.go_round(3).await;

    // Act: HEALTHD_LISTEN stays as it was, so the file's listen is moot;
    // workers, the connection cap and timeout and the description change.
    let server =
        "workers = 2\nmax_connections = 50\nidle_timeout = \"10s\"\ndescription = \"reloaded\"";
    binary.write_config(&config(server, "", true, &checks));
    let line = reload(&mut binary, "config reloaded").await;

    // Assert
    let stdout = binary.stdout();
    assert!(stdout.contains("server.workers changed") && stdout.contains("restart"), "{stdout}");
    assert!(stdout.contains("server.max_connections changed"), "{stdout}");
    assert!(stdout.contains("server.idle_timeout changed"), "{stdout}");
    assert!(!stdout.contains("server.listen changed"), "{stdout}");
    assert!(line.contains("unchanged=1"), "{line}");
    let client = reqwest::Client::new();
    let health = get(&client, &binary, "/health", Some(OPS_TOKEN)).await;
    assert_eq!(health.json["description"], "reloaded", "{}", health.text);
    let check = get(&client, &binary, "/health/checks/db", Some(OPS_TOKEN)).await;
    assert_eq!(check.json["description"], "reloaded", "{}", check.text);
    let metrics = get(&client, &binary, "/metrics", Some(OPS_TOKEN)).await;
    assert!(metrics.text.contains("\nhealthd_client_connections_max 100\n"), "{}", metrics.text);
    probes.finish(&binary).await;
}

#[tokio::test]
async fn a_reload_naming_a_fifo_or_a_device_is_refused_at_once_and_neither_blocks_reloads_nor_the_exit(
) {
    // Arrange: a FIFO nobody writes to, which a plain read would wait on
    // for ever, and /dev/zero, which a plain read would never finish.
    let (target, _listener) = listener().await;
    let checks = tcp_check("db", target, "");
    let mut binary = start(&config("", "", false, &checks)).await;
    wait_for(&binary, "/health/startup", None, |answer| answer.status == StatusCode::OK).await;
    let fifo = binary.config_path().with_extension("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let tls_check = |ca_file: &std::path::Path| {
        format!(
            "[[checks]]\nname = \"cert\"\nkind = \"tls\"\naddress = \"{target}\"\nca_file = \"{}\"\n",
            ca_file.display()
        )
    };

    // Act + Assert: each is refused, naming what the file is, as soon as
    // the reload reads it.
    for (ca_file, said) in
        [(fifo.as_path(), "is a FIFO"), (std::path::Path::new("/dev/zero"), "is a device")]
    {
        binary.write_config(&config("", "", false, &[checks.clone(), tls_check(ca_file)].concat()));
        let started = Instant::now();
        reload(&mut binary, "config reload refused").await;
        assert!(started.elapsed() < Duration::from_secs(5), "{said}: {:?}", started.elapsed());
        let stdout = binary.stdout();
        assert!(
            stdout.contains(&format!("checks[1].ca_file: {} {said}", ca_file.display())),
            "{stdout}"
        );
    }

    // A valid reload after them is applied.
    let (other, _other_listener) = listener().await;
    binary.write_config(&config(
        "",
        "",
        false,
        &[checks.clone(), tcp_check("added", other, "")].concat(),
    ));
    reload(&mut binary, "config reloaded").await;
    wait_for(&binary, "/health", Some(OPS_TOKEN), |answer| {
        answer.check("added:responseTime").is_some()
    })
    .await;

    // SIGTERM still drains and exits on time.
    binary.signal(libc::SIGTERM);
    let status = binary.wait_for_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(&fifo);
}
