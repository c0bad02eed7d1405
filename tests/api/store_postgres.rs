//! The PostgreSQL store (`[storage] url_env`) against a throwaway
//! PostgreSQL: runs of the real healthd recorded and read back (history,
//! incidents, uptime) across a clean stop and a restart; a PostgreSQL
//! stopped and frozen while probes stay fast and writing resumes by itself;
//! two instances in one database; the refusals at start (a newer schema,
//! someone else's tables) that change nothing; TLS with `verify-full`.
//! Every state is waited for with a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use healthd_models::{CheckHistory, CheckUptime, HealthStatus, IncidentList};
use reqwest::StatusCode;

use crate::support::app::{
    assert_matches_schema, send, spawn_app_with_env, spawn_binary, Answer, RunningBinary, TestApp,
};
use crate::support::checks::{config, unique, DEADLINE};
use crate::support::postgres::TestPostgres;
use crate::support::upstream::{Behaviour, Upstream};

/// The variable the configs name for the store's URL.
const URL_VAR: &str = "HEALTHD_STORE_URL";
/// Far above what a probe takes (about a millisecond), far below a hang:
/// a probe that waited for the store would take the store's 5 s bound.
const PROBE_BOUND: Duration = Duration::from_secs(2);
/// Writing resumes after the writer's backoff (at most 30 s) and a bounded
/// call (5 s): generous on a busy machine.
const RESUME_DEADLINE: Duration = Duration::from_secs(90);

/// A config with the PostgreSQL store for `instance` and `checks`.
fn store_config(instance: &str, extra_storage: &str, checks: &str) -> String {
    config(&format!(
        "[storage]\nurl_env = \"{URL_VAR}\"\ninstance = \"{instance}\"\n{extra_storage}\n{checks}"
    ))
}

/// An http check named `name` on `url`, run every `interval`. Where a test
/// counts failures, the interval is long enough for a timeout (`interval`
/// minus 100 ms) that a busy machine never turns a 200 into a failure the
/// test did not make.
fn http_check(name: &str, url: &str, interval_ms: u64) -> String {
    let timeout_ms = interval_ms - 100;
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "http"
url = "{url}"
interval = "{interval_ms}ms"
timeout = "{timeout_ms}ms"
retries = 0
history = 500
"#
    )
}

fn env_with(url: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(URL_VAR.to_string(), url.to_string())])
}

/// GET `path` from a server at `base`, checked against the contract.
async fn get(client: &reqwest::Client, base: &str, path: &str) -> Answer {
    send(client.get(format!("{base}{path}"))).await
}

/// Polls `path` at `base` until `done` holds, failing after `deadline`.
async fn wait_for(
    base: &str,
    path: &str,
    deadline: Duration,
    done: impl Fn(&Answer) -> bool,
) -> Answer {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = get(&client, base, path).await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < deadline,
            "no wanted answer from {path} within {deadline:?}; last: {answer:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn model<T: serde::de::DeserializeOwned>(answer: &Answer, schema: &str) -> T {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_matches_schema(&answer.json, schema);
    serde_json::from_value(answer.json.clone()).expect("deserialises into its model")
}

fn history(answer: &Answer) -> CheckHistory {
    model(answer, "CheckHistory")
}

fn incidents(answer: &Answer) -> IncidentList {
    model(answer, "IncidentList")
}

/// The status of each incident, newest first, as (from, to).
fn changes(list: &IncidentList) -> Vec<(Option<HealthStatus>, HealthStatus)> {
    list.incidents.iter().map(|incident| (incident.from, incident.to)).collect()
}

/// A run as the store keeps it: its time to the millisecond (memory has
/// nanoseconds, the store microseconds), status and output.
fn runs_of(history: &CheckHistory) -> Vec<(i64, HealthStatus, Option<String>)> {
    history
        .entries
        .iter()
        .map(|entry| (entry.time.timestamp_millis(), entry.status, entry.output.clone()))
        .collect()
}

/// The value of the line `series` in a `/metrics` text.
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{metrics}"))
}

/// A probe of `/health`: answered (200 or 503) within `PROBE_BOUND`.
async fn probe_answers_quickly(app: &TestApp, fault: &str) {
    let started = Instant::now();
    let answer = tokio::time::timeout(PROBE_BOUND, app.client.get(app.url("/health")).send())
        .await
        .unwrap_or_else(|_| panic!("{fault}: a probe did not answer within {PROBE_BOUND:?}"))
        .expect("healthd answers a probe");
    assert!(
        answer.status() == StatusCode::OK || answer.status() == StatusCode::SERVICE_UNAVAILABLE,
        "{fault}: {}",
        answer.status()
    );
    assert!(started.elapsed() < PROBE_BOUND, "{fault}: a probe took {:?}", started.elapsed());
}

/// Polls `/metrics` until `series` exceeds `above`, probing `/health` in
/// between (each probe must answer quickly) and, when `check` is given,
/// waiting for that check's reading to move on as well: neither a probe
/// nor a check waits for the store. Answers the series' value.
async fn wait_for_metric_above(
    app: &TestApp,
    series: &str,
    above: f64,
    deadline: Duration,
    fault: &str,
) -> f64 {
    let started = Instant::now();
    loop {
        probe_answers_quickly(app, fault).await;
        let value = metric(&app.get("/metrics").await.text, series);
        if value > above {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "{fault}: {series} stayed at {value} (not above {above}) for {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The time of `name`'s latest reading in `/health`.
async fn reading_time(app: &TestApp, name: &str) -> Option<DateTime<Utc>> {
    let answer = app.get("/health").await;
    let time = answer.check(&format!("{name}:responseTime"))?.get("time")?.as_str()?;
    Some(time.parse().expect("an RFC 3339 time"))
}

/// Waits until the check's reading is newer than `before`: the check runs.
async fn wait_for_a_new_reading(
    app: &TestApp,
    name: &str,
    before: Option<DateTime<Utc>>,
    fault: &str,
) {
    let started = Instant::now();
    while reading_time(app, name).await <= before {
        probe_answers_quickly(app, fault).await;
        assert!(started.elapsed() < DEADLINE, "{fault}: {name} has no new reading");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sums the store holds for `instance`'s check `name`: its row's totals
/// and its hourly roll-ups' runs and failures, and its kept runs.
async fn stored_totals(pg: &TestPostgres, instance: &str, name: &str) -> [i64; 5] {
    let client = pg.client().await;
    let row = client
        .query_one(
            "SELECT runs_total, failed_total,
               (SELECT coalesce(sum(runs), 0)::bigint FROM hourly WHERE check_id = checks.id),
               (SELECT coalesce(sum(failed), 0)::bigint FROM hourly WHERE check_id = checks.id),
               (SELECT count(*) FROM runs WHERE check_id = checks.id)
             FROM checks WHERE instance = $1 AND name = $2",
            &[&instance, &name],
        )
        .await
        .expect("the check's row");
    [row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)]
}

/// Drains the in-process healthd and waits until it stopped, which is
/// after the store's last write (or its bound).
async fn stop(app: &TestApp) {
    app.drain().await.unwrap();
    let started = Instant::now();
    while !app.is_stopped() {
        assert!(started.elapsed() < DEADLINE, "healthd did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM, and the exit that follows the drain and the store's last write.
async fn stop_cleanly(binary: &mut RunningBinary) {
    binary.signal(libc::SIGTERM);
    let status = binary.wait_for_exit(DEADLINE).await;
    assert!(status.success(), "healthd exited with {status}\n{}", binary.stderr());
    assert!(
        binary.stdout().contains("the store has everything"),
        "the last write did not finish:\n{}",
        binary.stdout()
    );
}

#[tokio::test]
async fn a_run_is_recorded_in_postgresql_and_a_restart_shows_the_same_history_incidents_and_uptime()
{
    // Arrange: healthd (the binary) storing into PostgreSQL, its check on
    // an upstream that passes, fails and passes again.
    let pg = TestPostgres::start().await;
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let text = store_config("pg-restart", "", &http_check("api", &upstream.url(), 1_000));
    let url = pg.url();
    let env = [(URL_VAR, url.as_str())];
    let mut first = spawn_binary(&text, &[], &env).await;
    let base = first.base();
    let status_is = |wanted: &'static str| {
        move |answer: &Answer| {
            answer.check("api:responseTime").and_then(|r| r.get("status")?.as_str()) == Some(wanted)
                && answer.check("api:responseTime").and_then(|r| r.get("output")?.as_str())
                    != Some("no reading yet")
        }
    };
    wait_for(&base, "/health", DEADLINE, status_is("pass")).await;
    upstream.set(Behaviour::Status(500));
    wait_for(&base, "/health", DEADLINE, status_is("fail")).await;
    upstream.set(Behaviour::Status(200));
    wait_for(&base, "/health", DEADLINE, status_is("pass")).await;

    // Act 1: the incidents come back from the store while healthd runs.
    let before_incidents = incidents(
        &wait_for(&base, "/health/checks/api/incidents", DEADLINE, |answer| {
            answer.status == StatusCode::OK && incidents(answer).incidents.len() == 2
        })
        .await,
    );
    let before = history(
        &wait_for(&base, "/health/checks/api/history", DEADLINE, |a| history(a).entries.len() >= 5)
            .await,
    );
    stop_cleanly(&mut first).await;

    // Assert 1: every run counted, in the check's row and in its roll-ups.
    assert_eq!(
        changes(&before_incidents),
        vec![
            (Some(HealthStatus::Fail), HealthStatus::Pass),
            (Some(HealthStatus::Pass), HealthStatus::Fail)
        ]
    );
    assert!(before_incidents.incidents[0].ended_at.is_none());
    assert!(before_incidents.incidents[1].ended_at.is_some());
    assert!(before_incidents.incidents[1].duration_ms.is_some());
    let [runs_total, failed_total, hourly_runs, hourly_failed, kept] =
        stored_totals(&pg, "pg-restart", "api").await;
    assert!(runs_total >= i64::try_from(before.entries.len()).unwrap(), "{runs_total}");
    assert!(failed_total >= 1);
    assert_eq!((hourly_runs, hourly_failed), (runs_total, failed_total), "roll-ups = totals");
    assert_eq!(kept, runs_total, "each run is kept (history = 500)");

    // Act 2: the same healthd again.
    let second = spawn_binary(&text, &[], &env).await;
    let base = second.base();
    let after = history(&get(&reqwest::Client::new(), &base, "/health/checks/api/history").await);
    let after_incidents =
        incidents(&get(&reqwest::Client::new(), &base, "/health/checks/api/incidents").await);
    let uptime: CheckUptime = model(
        &get(&reqwest::Client::new(), &base, "/health/checks/api/uptime").await,
        "CheckUptime",
    );

    // Assert 2: the ring as it was (newer runs after it), the status since
    // the same time, the same incidents (the restart announced nothing),
    // and the uptime from the roll-ups written at the stop.
    let (before_runs, after_runs) = (runs_of(&before), runs_of(&after));
    assert!(after_runs.len() >= before_runs.len(), "{after_runs:?}");
    assert_eq!(after_runs[..before_runs.len()], before_runs[..], "the ring came back");
    assert_eq!(
        after.status_since.map(|since| since.timestamp_millis()),
        before.status_since.map(|since| since.timestamp_millis()),
        "statusSince unchanged"
    );
    assert!(after.uptime.runs_since_start >= u64::try_from(runs_total).unwrap());
    assert_eq!(after.uptime.failed_runs_since_start, u64::try_from(failed_total).unwrap());
    assert_eq!(changes(&after_incidents), changes(&before_incidents));
    assert_eq!(after_incidents.incidents[1].started_at, before_incidents.incidents[1].started_at);
    let day = &uptime.windows[0];
    assert!(day.runs >= u64::try_from(runs_total).unwrap(), "{day:?}");
    assert_eq!(day.failed_runs, u64::try_from(failed_total).unwrap(), "{day:?}");
    assert!(day.uptime.is_some_and(|uptime| uptime > 0.0 && uptime < 1.0), "{day:?}");
    assert!(day.p50_ms.is_some(), "{day:?}");
}

#[tokio::test]
async fn probes_and_checks_stay_fast_while_postgresql_is_stopped_or_frozen_and_writing_resumes() {
    // Arrange
    let pg = TestPostgres::start().await;
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let text = store_config("pg-faults", "", &http_check("api", &upstream.url(), 300));
    let app = spawn_app_with_env(&text, env_with(&pg.url())).await;
    let written =
        wait_for_metric_above(&app, "healthd_store_written_total", 0.0, DEADLINE, "PostgreSQL up")
            .await;

    // Act 1: PostgreSQL stopped. The test cluster runs without
    // `synchronous_commit`: a checkpoint first, or the kill could take the
    // store's tables back with it.
    pg.client().await.batch_execute("CHECKPOINT").await.unwrap();
    pg.kill();
    let failures = metric(&app.get("/metrics").await.text, "healthd_store_write_failures_total");
    // Assert 1: writes fail and are counted; probes and the check go on.
    wait_for_metric_above(
        &app,
        "healthd_store_write_failures_total",
        failures,
        DEADLINE,
        "PostgreSQL stopped",
    )
    .await;
    let seen = reading_time(&app, "api").await;
    wait_for_a_new_reading(&app, "api", seen, "PostgreSQL stopped").await;

    // Act 2: started again: writing resumes by itself.
    pg.restart().await;
    let written_at_restart =
        metric(&app.get("/metrics").await.text, "healthd_store_written_total").max(written);
    wait_for_metric_above(
        &app,
        "healthd_store_written_total",
        written_at_restart,
        RESUME_DEADLINE,
        "PostgreSQL restarted",
    )
    .await;

    // Act 3: frozen (accepts, never answers): each write is bounded, fails
    // and is counted.
    let failures = metric(&app.get("/metrics").await.text, "healthd_store_write_failures_total");
    pg.freeze();
    wait_for_metric_above(
        &app,
        "healthd_store_write_failures_total",
        failures,
        DEADLINE,
        "PostgreSQL frozen",
    )
    .await;
    let seen = reading_time(&app, "api").await;
    wait_for_a_new_reading(&app, "api", seen, "PostgreSQL frozen").await;
    // A store query is bounded too: an answer (503), not a hang.
    let query = tokio::time::timeout(
        Duration::from_secs(15),
        app.client.get(app.url("/health/checks/api/uptime")).send(),
    )
    .await
    .expect("a store query against a frozen PostgreSQL answers within its deadline")
    .expect("healthd answers");
    assert_eq!(query.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Act 4: thawed: writing resumes by itself.
    let written_at_thaw = metric(&app.get("/metrics").await.text, "healthd_store_written_total");
    pg.thaw();
    wait_for_metric_above(
        &app,
        "healthd_store_written_total",
        written_at_thaw,
        RESUME_DEADLINE,
        "PostgreSQL thawed",
    )
    .await;
    let answer = app
        .wait_for("/health/checks/api/uptime", None, DEADLINE, |answer| {
            answer.status == StatusCode::OK
        })
        .await;
    assert_matches_schema(&answer.json, "CheckUptime");
}

// Two workers, so that both start-ups (and their migrations) truly overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_writing_to_one_database_keep_their_own_series() {
    // Arrange: one check named alike in each, one passing, one failing;
    // both start at once on an empty database (their migrations meet).
    let pg = TestPostgres::start().await;
    let passing = Upstream::start(Behaviour::Status(200)).await;
    let failing = Upstream::start(Behaviour::Status(500)).await;
    let east = store_config("east", "", &http_check("api", &passing.url(), 1_000));
    let west = store_config("west", "", &http_check("api", &failing.url(), 1_000));
    let (east_app, west_app) = tokio::join!(
        spawn_app_with_env(&east, env_with(&pg.url())),
        spawn_app_with_env(&west, env_with(&pg.url())),
    );

    // Act: both record runs; west's first reading is an incident.
    let west_incidents = incidents(
        &west_app
            .wait_for("/health/checks/api/incidents", None, DEADLINE, |answer| {
                answer.status == StatusCode::OK && !incidents(answer).incidents.is_empty()
            })
            .await,
    );
    for app in [&east_app, &west_app] {
        app.wait_for("/metrics", None, DEADLINE, |answer| {
            metric(&answer.text, "healthd_store_written_total") >= 5.0
        })
        .await;
    }
    let east_incidents = incidents(&east_app.get("/health/checks/api/incidents").await);
    stop(&east_app).await;
    stop(&west_app).await;

    // Assert: each instance's row, runs and roll-ups are its own.
    assert_eq!(changes(&west_incidents), vec![(None, HealthStatus::Fail)]);
    assert!(east_incidents.incidents.is_empty(), "{east_incidents:?}");
    let client = pg.client().await;
    let rows = client
        .query(
            "SELECT checks.instance, runs.status, count(*) FROM runs
             JOIN checks ON checks.id = runs.check_id
             GROUP BY checks.instance, runs.status ORDER BY checks.instance",
            &[],
        )
        .await
        .unwrap();
    let series: Vec<(String, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_eq!(series, vec![("east".to_string(), 0), ("west".to_string(), 2)], "{series:?}");
    let [east_runs, east_failed, ..] = stored_totals(&pg, "east", "api").await;
    let [west_runs, west_failed, ..] = stored_totals(&pg, "west", "api").await;
    assert!(east_runs >= 5 && east_failed == 0, "east: {east_runs} runs, {east_failed} failed");
    assert!(west_runs >= 5 && west_failed == west_runs, "west: {west_runs}, {west_failed}");
    let migrations: Vec<i32> = client
        .query("SELECT version FROM healthd_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(migrations, [1, 3, 4], "the schema was made once");
}

/// Starts the binary with `text` and `url`, expecting it to refuse to
/// start; answers what it printed.
async fn refused_start(text: &str, url: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("healthd-store-refused")));
    std::fs::write(&path, text).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_healthd"));
    command
        .arg("--config")
        .arg(&path)
        .env_remove("HEALTHD_CONFIG")
        .env_remove("RUST_LOG")
        .env("HEALTHD_LISTEN", "127.0.0.1:0")
        .env(URL_VAR, url);
    let mut binary = RunningBinary::start(command, Some(path));
    let status = binary.wait_for_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "healthd started:\n{}", binary.stdout());
    binary.stderr()
}

/// The tables of the database with their number of rows, and the rows of
/// `healthd_migrations`: to show a refusal changed nothing.
async fn database_state(
    client: &tokio_postgres::Client,
) -> (Vec<(String, i64)>, Vec<(i32, String)>) {
    let names: Vec<String> = client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut tables = Vec::new();
    for name in names {
        let count = client.query_one(&format!("SELECT count(*) FROM {name}"), &[]).await.unwrap();
        tables.push((name, count.get(0)));
    }
    let migrations = if tables.iter().any(|(table, _)| table == "healthd_migrations") {
        client
            .query("SELECT version, name FROM healthd_migrations ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    } else {
        Vec::new()
    };
    (tables, migrations)
}

#[tokio::test]
async fn a_newer_schema_someone_elses_tables_or_a_damaged_store_stop_the_start_and_change_nothing()
{
    // Arrange: a healthd store, then a version 5 recorded in it as a newer
    // healthd would; and another database with a table named `checks`.
    let pg = TestPostgres::start().await;
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let text = store_config("pg-refusal", "", &http_check("api", &upstream.url(), 1_000));
    let app = spawn_app_with_env(&text, env_with(&pg.url())).await;
    app.wait_for("/metrics", None, DEADLINE, |answer| {
        metric(&answer.text, "healthd_store_written_total") >= 1.0
    })
    .await;
    stop(&app).await;
    let client = pg.client().await;
    client
        .batch_execute(
            "INSERT INTO healthd_migrations (version, name, applied_on, checksum)
             VALUES (5, 'newer', '2030-01-01T00:00:00Z', '1')",
        )
        .await
        .unwrap();
    let newer = database_state(&client).await;
    client.batch_execute("CREATE DATABASE someone_else").await.unwrap();
    let other_url = format!("postgres://postgres@127.0.0.1:{}/someone_else", pg.port());
    let (other, connection) =
        tokio_postgres::connect(&other_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    other
        .batch_execute("CREATE TABLE checks (id int); CREATE TABLE orders (id int)")
        .await
        .unwrap();
    let foreign = database_state(&other).await;

    // Act
    let newer_error = refused_start(&text, &pg.url()).await;
    let after_newer = database_state(&client).await;
    let foreign_error = refused_start(&text, &other_url).await;
    // And a store whose table was dropped: writing there would fail forever.
    client.batch_execute("DELETE FROM healthd_migrations WHERE version = 5").await.unwrap();
    client.batch_execute("DROP TABLE runs").await.unwrap();
    let damaged = database_state(&client).await;
    let damaged_error = refused_start(&text, &pg.url()).await;

    // Assert: a clear error naming the database and the reason; nothing changed.
    assert!(
        newer_error.contains("PostgreSQL database postgres at 127.0.0.1")
            && newer_error.contains("version 5, newer than this healthd knows (4)"),
        "{newer_error}"
    );
    assert!(
        foreign_error.contains("PostgreSQL database someone_else")
            && foreign_error.contains("not a healthd store")
            && foreign_error.contains("checks"),
        "{foreign_error}"
    );
    assert_eq!(after_newer, newer);
    assert!(damaged_error.contains("a healthd store missing its tables runs"), "{damaged_error}");
    assert_eq!(database_state(&client).await, damaged);
    // Versions 1, 3 and 4, and the newer 5; then without it.
    let versions =
        |rows: &[(i32, String)]| rows.iter().map(|(version, _)| *version).collect::<Vec<_>>();
    assert_eq!(versions(&newer.1), [1, 3, 4, 5], "{newer:?}");
    assert_eq!(versions(&damaged.1), [1, 3, 4], "{damaged:?}");
    assert_eq!(database_state(&other).await, foreign);
    assert_eq!(foreign.0, vec![("checks".to_string(), 0), ("orders".to_string(), 0)]);
    assert!(newer.0.iter().any(|(table, rows)| table == "checks" && *rows == 1), "{newer:?}");
}

#[tokio::test]
async fn the_store_speaks_tls_with_verify_full_and_a_ca_file_and_refuses_an_unknown_ca() {
    // Arrange: a cluster with TLS, its CA in a file.
    let pg = TestPostgres::start_tls().await;
    let ca = pg.ca_path().expect("a TLS cluster has a CA").display().to_string();
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let checks = http_check("api", &upstream.url(), 300);
    let url = format!("{}?sslmode=verify-full", pg.url());

    // Act
    let app = spawn_app_with_env(
        &store_config("pg-tls", &format!("ca_file = \"{ca}\""), &checks),
        env_with(&url),
    )
    .await;
    app.wait_for("/metrics", None, DEADLINE, |answer| {
        metric(&answer.text, "healthd_store_written_total") >= 1.0
    })
    .await;
    let client = pg.client().await;
    let connections = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE ssl) FROM pg_stat_ssl
             JOIN pg_stat_activity USING (pid) WHERE application_name = 'healthd-store'",
            &[],
        )
        .await
        .unwrap();
    let (all, over_tls): (i64, i64) = (connections.get(0), connections.get(1));
    stop(&app).await;
    // Without the CA the server's certificate is unknown.
    let refused = refused_start(&store_config("pg-tls", "", &checks), &url).await;

    // Assert: the writes went over TLS; the unknown CA stopped the start.
    assert!(all >= 1 && over_tls == all, "{over_tls} of {all} store connections use TLS");
    let [runs, ..] = stored_totals(&pg, "pg-tls", "api").await;
    assert!(runs >= 1);
    assert!(refused.contains("certificate") || refused.contains("TLS"), "{refused}");
}

#[tokio::test]
async fn the_last_ping_survives_a_restart_in_postgresql_too() {
    let pg = TestPostgres::start().await;
    let url = pg.url();
    let text = crate::store_sqlite::heartbeat_config(&format!(
        "url_env = \"{URL_VAR}\"\ninstance = \"pg-pings\""
    ));
    crate::store_sqlite::pings_survive_a_restart(&text, &[(URL_VAR, url.as_str())]).await;
    let rows = pg
        .client()
        .await
        .query_one("SELECT count(*) FROM pings WHERE instance = 'pg-pings'", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 2);
}
