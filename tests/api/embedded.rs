//! healthd as a library: `examples/embedded.rs` run as a real process, and
//! checks from code in an app of the test's own (a panicking check, a
//! policy that does not fit).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{web, App, HttpResponse, HttpServer};
use healthd::{check_fn, CheckPolicy, Healthd, Outcome, Settings};
use reqwest::StatusCode;

use crate::support::app::{captured_logs, init_tracing, send, Answer, RunningBinary};
use crate::support::checks::{config, output, status, DEADLINE};

/// The example's binary, which `cargo test` builds beside this test binary
/// (examples are built to check they compile). Fails, rather than test an
/// old build, when it is missing or older than the sources it is built from.
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    // target/debug/deps/api-HASH -> target/debug/examples/embedded
    let binary = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("the test binary sits in target/<profile>/deps")
        .join("examples/embedded");
    let built = std::fs::metadata(&binary).and_then(|meta| meta.modified()).unwrap_or_else(|_| {
        panic!(
            "{} is missing: `cargo test` builds it, `cargo test --test api` does not; run `cargo build --example embedded`",
            binary.display()
        )
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest = ["src", "generated/src", "examples/embedded.rs", "Cargo.toml"]
        .iter()
        .map(|path| newest_change(&root.join(path)))
        .max()
        .unwrap();
    assert!(
        built >= newest,
        "{} is older than its sources: run `cargo build --example embedded` (or a plain `cargo test`)",
        binary.display()
    );
    binary
}

/// The latest modification time of a file, or of any file under a directory.
fn newest_change(path: &Path) -> SystemTime {
    let meta =
        std::fs::metadata(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    if !meta.is_dir() {
        return meta.modified().unwrap();
    }
    std::fs::read_dir(path)
        .unwrap()
        .map(|entry| newest_change(&entry.unwrap().path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Runs the example on a free port with `env`, waiting for the address it prints.
async fn spawn_example(env: &[(&str, &str)], config: Option<PathBuf>) -> (RunningBinary, String) {
    let mut command = std::process::Command::new(example_binary());
    command
        .env_remove("HEALTHD_CONFIG")
        .env_remove("RUST_LOG")
        .env("HEALTHD_LISTEN", "127.0.0.1:0")
        .current_dir(std::env::temp_dir());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut example = RunningBinary::start(command, config);
    let line = example
        .wait_for_line(Duration::from_secs(30), |line| line.starts_with("listening on http://"))
        .await;
    let base = line.trim_start_matches("listening on ").trim().to_string();
    (example, base)
}

/// GETs `url` until `done` holds, failing after `deadline`.
async fn wait_for(url: &str, deadline: Duration, done: impl Fn(&Answer) -> bool) -> Answer {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = send(client.get(url)).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < deadline,
            "no wanted answer from {url} in {deadline:?}: {answer:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_example_serves_its_route_and_healthd_under_ops_and_drains_on_sigterm() {
    // Arrange: a config with a check of its own and a short drain.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let checks = format!(
        "[[checks]]\nname = \"cache\"\nkind = \"tcp\"\naddress = \"{}\"\ninterval = \"1s\"\ntimeout = \"200ms\"\n",
        upstream.local_addr().unwrap()
    );
    let text = config(&checks).replace("drain_delay = \"0s\"", "drain_delay = \"2s\"");
    let path = std::env::temp_dir().join(format!("healthd-embedded-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let (mut example, base) =
        spawn_example(&[("HEALTHD_CONFIG", path.to_str().unwrap())], Some(path.clone())).await;

    // Act + Assert: the app's own route.
    let orders =
        wait_for(&format!("{base}/orders"), DEADLINE, |a| a.status == StatusCode::OK).await;
    assert_eq!(orders.json[0]["item"], "tea", "{orders:?}");

    // healthd under /ops: the config's check and the code check `queue`,
    // which flips both ways; non-critical, it never fails the service.
    let health = format!("{base}/ops/health");
    let seen_pass = wait_for(&health, DEADLINE, |a| {
        status(a, "cache:responseTime") == Some("pass")
            && status(a, "queue:responseTime") == Some("pass")
    })
    .await;
    assert_eq!(seen_pass.json["serviceId"], "orders-api");
    let seen_fail =
        wait_for(&health, DEADLINE, |a| status(a, "queue:responseTime") == Some("fail")).await;
    assert_eq!(output(&seen_fail, "queue:responseTime"), Some("consumer stalled"));
    assert_eq!(seen_fail.status, StatusCode::OK, "a non-critical failure is warn: {seen_fail:?}");
    assert_eq!(seen_fail.json["status"], "warn");
    assert_eq!(seen_fail.check("queue:responseTime").unwrap()["componentType"], "component");
    wait_for(&health, DEADLINE, |a| status(a, "queue:responseTime") == Some("pass")).await;
    let ready = format!("{base}/ops/health/ready");
    wait_for(&ready, DEADLINE, |a| a.status == StatusCode::OK).await;
    // Nothing of healthd's answers outside its prefix.
    let root = send(reqwest::Client::new().get(format!("{base}/health"))).await;
    assert_eq!(root.status, StatusCode::NOT_FOUND);

    // SIGTERM: readiness turns 503 while the app still serves, then it exits.
    example.signal(libc::SIGTERM);
    wait_for(&ready, DEADLINE, |a| a.status == StatusCode::SERVICE_UNAVAILABLE).await;
    let live = send(reqwest::Client::new().get(format!("{base}/ops/health/live"))).await;
    assert_eq!(live.status, StatusCode::OK, "liveness stays 200 while draining");
    let exit = example.wait_for_exit(DEADLINE).await;
    assert!(exit.success(), "{exit}\n{}\n{}", example.stdout(), example.stderr());
}

#[tokio::test]
async fn the_example_runs_on_the_built_in_default_without_a_config() {
    // Arrange + Act
    let (_example, base) = spawn_example(&[], None).await;

    // Assert: the default's disk check and `queue`, shown to a local caller.
    let health = wait_for(&format!("{base}/ops/health"), DEADLINE, |a| {
        status(a, "disk:freeSpace").is_some() && status(a, "queue:responseTime").is_some()
    })
    .await;
    assert_eq!(health.json["serviceId"], "orders-api");
}

/// An app of the test's own with `builder`'s checks, on a free port.
async fn serve(healthd: &Healthd) -> (String, actix_web::dev::ServerHandle) {
    let routes = healthd.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .route("/orders", web::get().to(|| async { HttpResponse::Ok().body("[]") }))
            .service(routes.scope())
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (base, handle)
}

fn local_details() -> Settings {
    Settings::parse(&config(""), "test.toml", &std::collections::BTreeMap::new()).unwrap()
}

/// `healthd_check_runs_total` of `check` in a `/metrics` text.
fn runs(metrics: &str, check: &str) -> u64 {
    let prefix = format!("healthd_check_runs_total{{check=\"{check}\",kind=\"code\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_panicking_check_is_fail_with_check_panicked_and_the_others_keep_running() {
    // Arrange: one check that panics on every attempt, one that passes.
    init_tracing();
    let quick = || {
        CheckPolicy::new()
            .interval(Duration::from_millis(300))
            .timeout(Duration::from_millis(100))
            .retries(0)
    };
    let healthd = Healthd::builder(local_details())
        .prefix("/ops")
        .check("boom", quick(), check_fn(|| async { panic!("boom: secret-detail-7731") }))
        .check("steady", quick().critical(false), check_fn(|| async { Outcome::Pass }))
        .start()
        .unwrap();
    let (base, server) = serve(&healthd).await;

    // Act + Assert: boom fails with the category only.
    let health = format!("{base}/ops/health");
    let answer = wait_for(&health, DEADLINE, |a| {
        status(a, "boom:responseTime") == Some("fail")
            && status(a, "steady:responseTime") == Some("pass")
    })
    .await;
    assert_eq!(output(&answer, "boom:responseTime"), Some("check panicked"));
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "boom is critical");
    assert!(!answer.text.contains("secret-detail-7731"), "{}", answer.text);

    // Both keep their schedules: their run counts go on rising.
    let metrics = format!("{base}/ops/metrics");
    let first = wait_for(&metrics, DEADLINE, |a| runs(&a.text, "boom") >= 1).await;
    let (boom, steady) = (runs(&first.text, "boom"), runs(&first.text, "steady"));
    let later = wait_for(&metrics, DEADLINE, |a| {
        runs(&a.text, "boom") >= boom + 3 && runs(&a.text, "steady") >= steady + 3
    })
    .await;
    assert!(!later.text.contains("secret-detail-7731"));
    let answer =
        wait_for(&health, DEADLINE, |a| status(a, "steady:responseTime") == Some("pass")).await;
    assert_eq!(output(&answer, "boom:responseTime"), Some("check panicked"));
    // The panic's message went to the log, with the check's name.
    let logs = captured_logs();
    assert!(
        logs.lines().any(|line| line.contains("check panicked")
            && line.contains("boom")
            && line.contains("secret-detail-7731")),
        "no log line of the panic"
    );
    // The handle reads the same report.
    assert_eq!(
        healthd.report().checks["boom:responseTime"][0].output.as_deref(),
        Some("check panicked")
    );

    server.stop(true).await;
    healthd.stop().await;
}

#[tokio::test]
async fn a_check_from_code_whose_timeout_does_not_fit_is_an_error_naming_it() {
    // Arrange
    let builder = Healthd::builder(local_details())
        .check(
            "slowpoke",
            CheckPolicy::new().interval(Duration::from_secs(1)).timeout(Duration::from_secs(2)),
            check_fn(|| async { Outcome::Pass }),
        )
        .check("disk", CheckPolicy::new(), check_fn(|| async { Outcome::Pass }))
        .check("bad name", CheckPolicy::new(), check_fn(|| async { Outcome::Pass }));
    let duplicate = Healthd::builder(
        Settings::load(None, &std::collections::BTreeMap::new()).unwrap(),
    )
    .check("disk", CheckPolicy::new(), check_fn(|| async { Outcome::Pass }));

    // Act
    let error = builder.start().err().expect("refused").to_string();
    let duplicate = duplicate.start().err().expect("refused").to_string();

    // Assert: `FILE: KEY: REASON`, the check's name as the key.
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(lines.len(), 2, "{error}");
    assert!(
        lines[0].starts_with("checks from code: slowpoke: timeout × (retries + 1) + backoff"),
        "{error}"
    );
    assert!(lines[1].starts_with("checks from code: bad name: invalid name"), "{error}");
    assert_eq!(duplicate, "checks from code: disk: duplicate check name \"disk\"");
}
