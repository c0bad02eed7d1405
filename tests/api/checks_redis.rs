//! `kind = "redis"` against a real, throwaway `redis-server` (with a
//! password) that the tests kill, freeze, thaw, restart and make load its
//! data set, and against a listener that never answers. Every state is
//! waited for with a deadline; `MEASURED ...` lines (`--nocapture`) are the
//! figures the issue note quotes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{spawn_app_with_env, TestApp};
use crate::support::checks::{
    assert_no_secret, config, every_body, is_unavailable, output, percentile, probe_latencies,
    shows, status, wait_shows, DEADLINE,
};
use crate::support::redis::TestRedis;
use crate::support::upstream::{Behaviour, Upstream};

const CACHE: &str = "cache:responseTime";

/// One redis check named `cache` reading its URL from `CACHE_URL`.
fn cache_check(interval: &str, timeout: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "cache"
kind = "redis"
url_env = "CACHE_URL"
interval = "{interval}"
timeout = "{timeout}"
retries = 0
{extra}
"#
    ))
}

async fn spawn_with_url(check: &str, url: String) -> TestApp {
    spawn_app_with_env(check, BTreeMap::from([("CACHE_URL".to_string(), url)])).await
}

#[tokio::test]
async fn stopping_redis_fails_the_check_and_a_restart_brings_it_back_without_restarting_healthd() {
    // Arrange
    let redis = TestRedis::start().await;
    let app = spawn_with_url(&cache_check("1s", "500ms", ""), redis.url_with_password()).await;
    let answer = wait_shows(&app, CACHE, "pass", None).await;
    let reading = answer.check(CACHE).unwrap();
    assert_eq!(reading["componentType"], "datastore");
    assert_eq!(reading["observedUnit"], "ms");

    // Act
    redis.kill();
    let killed = Instant::now();
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    eprintln!("MEASURED Redis kill -> /health 503: {:?} (interval 1 s)", killed.elapsed());

    // Assert
    assert_eq!(status(&answer, CACHE), Some("fail"));
    let category = output(&answer, CACHE).unwrap_or_default();
    assert!(
        ["connection refused", "connection closed", "connection reset"].contains(&category),
        "{category}"
    );
    redis.restart().await;
    let answer = wait_shows(&app, CACHE, "pass", None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_within_deadline_plus_interval_while_probes_stay_fast() {
    // Arrange: a long deadline, so a probe that waited on Redis would take seconds.
    let redis = TestRedis::start().await;
    let app = spawn_with_url(&cache_check("4s", "3s", ""), redis.url_with_password()).await;
    wait_shows(&app, CACHE, "pass", None).await;

    // Act
    redis.freeze();
    let frozen = Instant::now();
    let answer = wait_shows(&app, CACHE, "fail", Some("timed out after 3000 ms")).await;
    let to_fail = frozen.elapsed();
    eprintln!("MEASURED Redis freeze -> /health 503: {to_fail:?} (interval 4 s, timeout 3 s)");
    let probes = probe_latencies(&app, "/health", 50, 4).await;

    // Assert
    assert!(is_unavailable(&answer));
    // The next run starts within an interval and is cut at its deadline (plus room for a busy machine).
    assert!(to_fail < Duration::from_secs(4 + 3 + 3), "{to_fail:?}");
    assert!(probes.iter().all(|(_, code)| *code == 503));
    let latencies: Vec<Duration> = probes.iter().map(|(latency, _)| *latency).collect();
    eprintln!(
        "MEASURED probe latency with Redis frozen, 50 concurrent x4: p50 {:?} p99 {:?} max {:?}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0)
    );
    assert!(percentile(&latencies, 100.0) < Duration::from_secs(1));

    redis.thaw();
    wait_shows(&app, CACHE, "pass", None).await;
}

#[tokio::test]
async fn a_listener_that_never_answers_is_cut_at_the_deadline() {
    // Arrange
    let silent = Upstream::start(Behaviour::Never).await;
    let url = format!("redis://{}", silent.address());

    // Act
    let app = spawn_with_url(&cache_check("2s", "500ms", ""), url).await;

    // Assert
    let answer = wait_shows(&app, CACHE, "fail", Some("timed out after 500 ms")).await;
    assert!(is_unavailable(&answer));
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_reported_as_authentication_failed() {
    // Arrange
    let redis = TestRedis::start().await;
    let wrong = format!("redis://:not-{}@127.0.0.1:{}", redis.password(), redis.port());
    let env = BTreeMap::from([("WRONG".to_string(), wrong), ("NONE".to_string(), redis.url())]);
    let checks = r#"
[defaults]
interval = "1s"
timeout = "800ms"
retries = 0

[[checks]]
name = "wrong"
kind = "redis"
url_env = "WRONG"

[[checks]]
name = "none"
kind = "redis"
url_env = "NONE"
"#;

    // Act
    let app = spawn_app_with_env(&config(checks), env).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, "wrong:responseTime", "fail", Some("authentication failed"))
                && shows(a, "none:responseTime", "fail", Some("authentication failed"))
        })
        .await;
    assert!(is_unavailable(&answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_loading_its_data_set_is_reported_as_loading() {
    // Arrange
    let redis = TestRedis::start().await;
    let app = spawn_with_url(&cache_check("300ms", "250ms", ""), redis.url_with_password()).await;
    wait_shows(&app, CACHE, "pass", None).await;

    // Act: the restart drops the kept connection; the next one meets the load.
    redis.restart_loading(Duration::from_secs(6)).await;

    // Assert
    wait_shows(&app, CACHE, "fail", Some("loading")).await;
    wait_shows(&app, CACHE, "pass", None).await;
}

#[tokio::test]
async fn a_replica_fails_only_where_the_check_expects_a_master() {
    // Arrange
    let master = TestRedis::start().await;
    let replica = master.start_replica().await;
    let env = BTreeMap::from([
        ("MASTER".to_string(), master.url_with_password()),
        ("REPLICA".to_string(), replica.url_with_password()),
    ]);
    let checks = r#"
[defaults]
interval = "1s"
timeout = "800ms"
retries = 0

[[checks]]
name = "master"
kind = "redis"
url_env = "MASTER"
expect_role = "master"

[[checks]]
name = "replica"
kind = "redis"
url_env = "REPLICA"
expect_role = "master"

[[checks]]
name = "any"
kind = "redis"
url_env = "REPLICA"
"#;

    // Act
    let app = spawn_app_with_env(&config(checks), env).await;

    // Assert
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, "master:responseTime", "pass", None)
            && shows(a, "replica:responseTime", "fail", Some("read-only replica"))
            && shows(a, "any:responseTime", "pass", None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_in_answers_or_logs_in_any_fault() {
    // Arrange
    let redis = TestRedis::start().await;
    let good = redis.url_with_password();
    let wrong_password = format!("wrong{}", redis.password());
    let wrong = format!("redis://:{wrong_password}@127.0.0.1:{}", redis.port());
    let env =
        BTreeMap::from([("CACHE_URL".to_string(), good.clone()), ("WRONG".to_string(), wrong)]);
    let checks = format!(
        "{}\n[[checks]]\nname = \"wrong\"\nkind = \"redis\"\nurl_env = \"WRONG\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\nretries = 0\ncritical = false\n",
        cache_check("500ms", "400ms", "")
    );
    let app = spawn_app_with_env(&checks, env).await;
    let secrets = [redis.password(), wrong_password.as_str(), good.as_str()];
    let scan = |fault: &'static str| {
        let app = &app;
        let secrets = &secrets;
        async move {
            let bodies = every_body(app, &["cache", "wrong"]).await;
            assert_no_secret(&bodies, secrets, fault);
        }
    };

    // Act and assert, fault by fault.
    wait_shows(&app, CACHE, "pass", None).await;
    wait_shows(&app, "wrong:responseTime", "fail", Some("authentication failed")).await;
    scan("healthy").await;
    redis.kill();
    app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    scan("killed").await;
    redis.restart().await;
    wait_shows(&app, CACHE, "pass", None).await;
    redis.freeze();
    wait_shows(&app, CACHE, "fail", Some("timed out after 400 ms")).await;
    scan("frozen").await;
    redis.thaw();
    wait_shows(&app, CACHE, "pass", None).await;
    scan("thawed").await;
}

#[test]
fn a_password_in_the_file_is_refused_and_the_reason_does_not_repeat_it() {
    let text =
        "[[checks]]\nname = \"c\"\nkind = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6390\"\n";
    let problems = healthd::Settings::parse(text, "r.toml", &BTreeMap::new())
        .expect_err("a password in the file is refused")
        .to_string();
    assert!(problems.starts_with("r.toml: checks[0].url: holds credentials"), "{problems}");
    assert!(!problems.contains("hunter2"), "{problems}");
}
