//! The fault tests the SQL kinds (`postgres`, `mysql`) share, written once:
//! a check of a real, throwaway server that the tests kill, restart, freeze
//! and thaw, and of a listener that never answers. Each kind's file names
//! its server (an [`SqlServer`]), calls these from its own `#[tokio::test]`s
//! and keeps the tests only it has. Every state is waited for with a
//! deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{spawn_app, Answer, TestApp};
use crate::support::checks::{
    assert_no_secret, config, every_body, failures, is_unavailable, output, percentile,
    probe_latencies, shows, status, wait_shows, DEADLINE,
};
use crate::support::upstream::{Behaviour, Upstream};

/// The reading of the check named `db`.
pub const DB: &str = "db:responseTime";
/// The interval of [`db_check`].
pub const INTERVAL: Duration = Duration::from_millis(1000);
/// What [`db_check`]'s deadline writes.
pub const TIMEOUT_OUTPUT: &str = "timed out after 750 ms";
const FROZEN_OUTPUT: &str = "timed out after 3000 ms";

/// A throwaway server of an SQL kind, as the shared tests drive it.
pub trait SqlServer {
    /// Its name in `MEASURED` lines.
    const NAME: &'static str;
    /// The check kind that watches it.
    const KIND: &'static str;
    /// A URL of `address` the kind accepts, with a user and no password.
    fn url_at(address: SocketAddr) -> String;
    /// The server's URL, with its superuser and no password.
    fn url(&self) -> String;
    /// SIGKILLs it and waits until it is gone.
    fn kill(&self);
    /// Starts it again on the same port and data, and waits until it answers.
    async fn restart(&self);
    /// SIGSTOPs it: connections are accepted, nothing is answered.
    fn freeze(&self);
    /// SIGCONTs it.
    fn thaw(&self);
    /// How many connections healthd holds to it now.
    async fn healthd_connections(&self) -> usize;
}

/// [`SqlServer`]'s `NAME` and `KIND`, and its `url`, `kill`, `restart`,
/// `freeze` and `thaw` for a testkit server whose own methods of the same
/// names they are.
macro_rules! testkit_controls {
    (name: $name:literal, kind: $kind:literal) => {
        const NAME: &'static str = $name;
        const KIND: &'static str = $kind;
        fn url(&self) -> String {
            Self::url(self)
        }
        fn kill(&self) {
            Self::kill(self)
        }
        async fn restart(&self) {
            Self::restart(self).await
        }
        fn freeze(&self) {
            Self::freeze(self)
        }
        fn thaw(&self) {
            Self::thaw(self)
        }
    };
}
pub(crate) use testkit_controls;

/// Brings about `fault`, then waits until `/health` answers 503: that
/// answer, and how long after the fault it came.
async fn until_unavailable(app: &TestApp, fault: impl FnOnce()) -> (Answer, Duration) {
    fault();
    let started = Instant::now();
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    (answer, started.elapsed())
}

/// One `kind` check named `db`, every second with a 750 ms deadline (which
/// a loaded machine meets on a healthy server) and no retries; `source` is
/// `url = "..."` or `url_env = "..."`, and `extra` more config after it.
pub fn db_check(kind: &str, source: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "db"
kind = "{kind}"
{source}
interval = "1s"
timeout = "750ms"
retries = 0
{extra}
"#
    ))
}

/// Killing `server` fails the check with a category, and its restart
/// brings the check back without restarting healthd.
pub async fn a_kill_fails_the_check_and_a_restart_brings_it_back<S: SqlServer>(server: &S) {
    // Arrange
    let app = spawn_app(&db_check(S::KIND, &format!("url = \"{}\"", server.url()), "")).await;
    let answer = wait_shows(&app, DB, "pass", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let reading = answer.check(DB).unwrap();
    assert_eq!(reading["componentType"], "datastore");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].is_number());
    let connections = answer.check("db:connections").expect("a pool reading");
    assert_eq!(connections["observedUnit"], "connections");
    assert!(connections["observedValue"].as_f64().is_some_and(|n| (1.0..=2.0).contains(&n)));

    // Act
    let (answer, to_503) = until_unavailable(&app, || server.kill()).await;
    eprintln!(
        "MEASURED {} kill -> /health 503: {to_503:?} (interval 1 s, timeout 750 ms)",
        S::NAME
    );

    // Assert: a category, whichever way the dead server was first noticed.
    assert_eq!(answer.json["status"], "fail");
    assert_eq!(status(&answer, DB), Some("fail"));
    let first = output(&answer, DB).unwrap_or_default().to_string();
    assert!(
        ["connection refused", "connection closed", "connection reset", "server is shutting down"]
            .contains(&first.as_str()),
        "{first}"
    );
    // The next run starts within an interval (plus room for a loaded machine).
    assert!(to_503 < INTERVAL + Duration::from_millis(750 + 5_000), "{to_503:?}");
    wait_shows(&app, DB, "fail", Some("connection refused")).await;
    assert_eq!(app.get("/health/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);

    // Act: the same server comes back; healthd keeps running.
    server.restart().await;

    // Assert
    let answer = wait_shows(&app, DB, "pass", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(app.get("/health/ready").await.status, StatusCode::OK);
}

/// Freezing `server` times the check out within its deadline plus an
/// interval, probes stay fast meanwhile, and after the thaw healthd holds no
/// more connections than its pool.
pub async fn a_freeze_times_out_within_deadline_plus_interval_while_probes_stay_fast<
    S: SqlServer,
>(
    server: &S,
) {
    // Arrange: a long deadline, so that a probe that waited on the database
    // would take seconds, far from what a loaded machine adds to a probe.
    let check = format!(
        "[[checks]]\nname = \"db\"\nkind = \"{}\"\nurl = \"{}\"\ninterval = \"4s\"\ntimeout = \"3s\"\nretries = 0\n",
        S::KIND,
        server.url()
    );
    let app = spawn_app(&config(&check)).await;
    wait_shows(&app, DB, "pass", None).await;
    // Open the client's connections once, so the timings below are of probes.
    probe_latencies(&app, "/health", 200, 1).await;

    // Act
    let (answer, to_fail) = until_unavailable(&app, || server.freeze()).await;
    eprintln!(
        "MEASURED {} freeze -> /health 503: {to_fail:?} (interval 4 s, timeout 3 s)",
        S::NAME
    );

    // Assert: the next run began within an interval and was cut at its
    // deadline (plus room for a busy machine).
    assert!(shows(&answer, DB, "fail", Some(FROZEN_OUTPUT)), "{:#}", answer.json);
    assert!(to_fail < Duration::from_secs(4 + 3 + 3), "{to_fail:?}");

    // Probes read the snapshot: one at a time and 200 at once, all fast.
    let mut sequential = Vec::new();
    for _ in 0..200 {
        let (latency, code) = probe_latencies(&app, "/health", 1, 1).await[0];
        assert_eq!(code, 503);
        sequential.push(latency);
    }
    let concurrent = probe_latencies(&app, "/health", 200, 1).await;
    assert!(concurrent.iter().all(|(_, code)| *code == 503));
    let concurrent: Vec<Duration> = concurrent.into_iter().map(|(latency, _)| latency).collect();
    eprintln!(
        "MEASURED probe latency while {} is frozen: sequential p50 {:?} p99 {:?} max {:?}; 200 concurrent p50 {:?} p99 {:?} max {:?}",
        S::NAME,
        percentile(&sequential, 50.0),
        percentile(&sequential, 99.0),
        percentile(&sequential, 100.0),
        percentile(&concurrent, 50.0),
        percentile(&concurrent, 99.0),
        percentile(&concurrent, 100.0)
    );
    // A probe that waited on the database would take up to the 3 s
    // deadline; the bounds leave room for a loaded 2-core machine.
    assert!(percentile(&sequential, 50.0) < Duration::from_millis(100));
    assert!(percentile(&sequential, 100.0) < Duration::from_secs(1));
    assert!(percentile(&concurrent, 100.0) < Duration::from_secs(1));
    for path in ["/health/live", "/health/ready", "/health/startup"] {
        let started = Instant::now();
        app.get(path).await;
        assert!(started.elapsed() < Duration::from_secs(1), "{path}");
    }

    // Still failing, run after run, each cut at the deadline.
    let runs_before = failures(&app.get("/health").await, DB);
    let answer =
        app.wait_for("/health", None, DEADLINE, |a| failures(a, DB) >= runs_before + 2).await;
    assert_eq!(output(&answer, DB), Some(FROZEN_OUTPUT));

    // Act: thaw.
    server.thaw();

    // Assert: it recovers, and the connections that timed out were closed
    // rather than kept: healthd holds no more than its pool.
    wait_shows(&app, DB, "pass", None).await;
    let waited = Instant::now();
    let held = loop {
        let held = server.healthd_connections().await;
        if held <= 2 || waited.elapsed() > DEADLINE {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(held <= 2, "healthd holds {held} connections");
}

/// A listener that accepts and never answers, in place of the server, fails
/// the check at its deadline, run after run. Returns how soon the first
/// reading came.
pub async fn a_silent_listener_is_bounded_by_the_deadline<S: SqlServer>() -> Duration {
    // Arrange: it accepts and never answers.
    let silent = Upstream::start(Behaviour::Never).await;
    let url = S::url_at(silent.address());

    // Act
    let started = Instant::now();
    let app = spawn_app(&db_check(S::KIND, &format!("url = \"{url}\""), "")).await;
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, DB).is_some()).await;
    let first_reading = started.elapsed();

    // Assert
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(shows(&answer, DB, "fail", Some(TIMEOUT_OUTPUT)), "{:#}", answer.json);
    // The output proves the deadline cut the attempt (only the deadline
    // writes it); how soon the reading came depends on the machine's load.
    eprintln!(
        "MEASURED first reading against a silent listener: {first_reading:?} (timeout 750 ms)"
    );
    let answer = app.wait_for("/health", None, DEADLINE, |a| failures(a, DB) >= 3).await;
    assert_eq!(output(&answer, DB), Some(TIMEOUT_OUTPUT));
    first_reading
}

/// Kills, restarts, freezes and thaws `server`, which `app`'s check `db`
/// ([`db_check`]) watches, and after each fault finds none of `secrets` in
/// any answer about `checks` or any log line.
pub async fn no_secret_shows_through_the_faults<S: SqlServer>(
    app: &TestApp,
    server: &S,
    checks: &[&str],
    secrets: &[&str],
) {
    server.kill();
    wait_shows(app, DB, "fail", Some("connection refused")).await;
    assert_no_secret(&every_body(app, checks).await, secrets, "killed");

    server.restart().await;
    wait_shows(app, DB, "pass", None).await;
    assert_no_secret(&every_body(app, checks).await, secrets, "restarted");

    server.freeze();
    wait_shows(app, DB, "fail", Some(TIMEOUT_OUTPUT)).await;
    assert_no_secret(&every_body(app, checks).await, secrets, "frozen");

    server.thaw();
    wait_shows(app, DB, "pass", None).await;
    assert_no_secret(&every_body(app, checks).await, secrets, "thawed");
}
