//! `kind = "http"` against small local dependencies that answer 200, 500,
//! slowly, never, alternately, or with their own health report: every state
//! is waited for with a deadline, and statuses follow the thresholds.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::app::{spawn_app, spawn_app_with_env};
use crate::support::checks::{
    assert_no_secret, config, every_body, failures, is_unavailable, output, shows, status, unique,
    DEADLINE,
};
use crate::support::upstream::{refused_address, Behaviour, Upstream};

const API: &str = "api:responseTime";

/// One http check named `api` against `url`, every 300 ms with a 150 ms
/// deadline; `extra` adds or overrides keys.
fn api_check(url: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "api"
kind = "http"
url = "{url}"
interval = "300ms"
timeout = "150ms"
{extra}
"#
    ))
}

#[tokio::test]
async fn an_http_dependency_answering_500_fails_the_check_and_recovers_without_a_restart() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&api_check(&upstream.url(), "retries = 0")).await;
    let answer = app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let reading = answer.check(API).unwrap();
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].as_f64().is_some_and(|ms| ms >= 0.0), "{reading}");

    // Act
    upstream.set(Behaviour::Status(500));
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;

    // Assert
    assert_eq!(answer.json["status"], "fail");
    assert_eq!(status(&answer, API), Some("fail"));
    assert_eq!(output(&answer, API), Some("HTTP 500"));
    assert_eq!(app.get("/health/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
    let one = app.get("/health/checks/api").await;
    assert_eq!(one.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(output(&one, API), Some("HTTP 500"));

    upstream.set(Behaviour::Status(200));
    let answer = app.wait_for("/health", None, DEADLINE, |a| a.status == StatusCode::OK).await;
    assert!(shows(&answer, API, "pass", None), "{:#}", answer.json);
    assert_eq!(app.get("/health/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_500_turns_fail_only_after_failure_threshold_runs_and_back_after_success_threshold() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&api_check(
        &upstream.url(),
        "retries = 0\nfailure_threshold = 3\nsuccess_threshold = 2",
    ))
    .await;
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;

    // Act: failing runs. Until the third in a row the check stays pass.
    upstream.set(Behaviour::Status(500));
    let held_pass_while_failing = Cell::new(false);
    let failed = app
        .wait_for("/health", None, DEADLINE, |a| {
            let failures = failures(a, API);
            if failures < 3 {
                assert_eq!(status(a, API), Some("pass"), "{failures} failures: {:#}", a.json);
                assert_eq!(a.status, StatusCode::OK);
                held_pass_while_failing.set(held_pass_while_failing.get() || failures >= 1);
            }
            failures >= 3
        })
        .await;

    // Assert
    assert!(held_pass_while_failing.get(), "a report with 1 or 2 failures in a row was seen");
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status(&failed, API), Some("fail"));
    assert_eq!(output(&failed, API), Some("HTTP 500"));

    // Act: good runs. The first one alone does not bring it back.
    upstream.set(Behaviour::Status(200));
    let recovering_seen = Cell::new(false);
    let recovered = app
        .wait_for("/health", None, DEADLINE, |a| {
            if status(a, API) == Some("fail") && failures(a, API) == 0 {
                assert_eq!(output(a, API), Some("recovering: 1 of 2 good runs"), "{:#}", a.json);
                recovering_seen.set(true);
            }
            status(a, API) == Some("pass")
        })
        .await;

    // Assert
    assert!(recovering_seen.get(), "a report after one good run still said fail");
    assert_eq!(recovered.status, StatusCode::OK);
    assert!(upstream.requests() >= 1 + 3 + 2, "{} requests", upstream.requests());
}

#[tokio::test]
async fn a_flapping_dependency_is_damped_by_the_failure_threshold() {
    // Arrange: the same flapping dependency (200, 500, 200, ...) behind a
    // check that flips at once and one that needs two failures in a row.
    let raw = Upstream::start(Behaviour::Alternate(200, 500)).await;
    let damped = Upstream::start(Behaviour::Alternate(200, 500)).await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "300ms"
timeout = "150ms"
retries = 0

[[checks]]
name = "raw"
kind = "http"
url = "{}"
critical = false

[[checks]]
name = "damped"
kind = "http"
url = "{}"
failure_threshold = 2
"#,
        raw.url(),
        damped.url()
    )))
    .await;

    // Act: watch at least eight runs of the damped check.
    let raw_statuses = RefCell::new(BTreeSet::new());
    app.wait_for("/health", None, DEADLINE, |a| {
        if let Some(status) = status(a, "damped:responseTime") {
            assert_eq!(status, "pass", "the damped check flipped: {:#}", a.json);
            assert!(failures(a, "damped:responseTime") <= 1);
        }
        if let Some(status) = status(a, "raw:responseTime") {
            raw_statuses.borrow_mut().insert(status.to_string());
        }
        damped.requests() >= 8 && raw_statuses.borrow().len() == 2
    })
    .await;

    // Assert: the undamped one was seen both ways; as a non-critical check
    // its failures made the service warn, never fail.
    assert_eq!(raw_statuses.into_inner(), ["fail".to_string(), "pass".to_string()].into());
    let answer = app.get("/health").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_dependency_times_out_at_the_deadline_and_runs_keep_their_schedule() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&api_check(&upstream.url(), "retries = 0")).await;
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;

    // Act
    upstream.set(Behaviour::Slow(Duration::from_secs(30), 200));
    let slowed = Instant::now();
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    let to_fail = slowed.elapsed();

    // Assert: one interval plus one deadline, with room for a busy machine.
    assert_eq!(output(&answer, API), Some("timed out after 150 ms"));
    assert!(to_fail < Duration::from_millis(300 + 150 + 2_000), "{to_fail:?}");
    // Each run is abandoned at its deadline, so the next ones still come.
    let answer = app.wait_for("/health", None, DEADLINE, |a| failures(a, API) >= 4).await;
    assert_eq!(output(&answer, API), Some("timed out after 150 ms"));
    assert!(upstream.requests() >= 5, "{} requests", upstream.requests());
}

#[tokio::test]
async fn a_dependency_that_accepts_and_never_answers_is_bounded_by_the_deadline() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Never).await;

    // Act
    let started = Instant::now();
    let app = spawn_app(&api_check(&upstream.url(), "retries = 0")).await;
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, API).is_some()).await;
    let first_reading = started.elapsed();

    // Assert: the first run starts at once and ends at its deadline.
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(output(&answer, API), Some("timed out after 150 ms"));
    // The output proves the deadline cut the attempt (only the deadline
    // writes it); how soon the reading came depends on the machine's load.
    eprintln!(
        "MEASURED first reading against a silent listener: {first_reading:?} (timeout 150 ms)"
    );
    app.wait_for("/health", None, DEADLINE, |a| failures(a, API) >= 3).await;
    assert!(upstream.requests() >= 3);
}

#[tokio::test]
async fn a_dependency_that_closes_refuses_or_lacks_tls_gets_a_category_not_an_error_text() {
    // Arrange
    let closing = Upstream::start(Behaviour::Close).await;
    let plain = Upstream::start(Behaviour::PlainAtOnce).await;
    let refused = refused_address().await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "300ms"
timeout = "150ms"
retries = 0

[[checks]]
name = "closing"
kind = "http"
url = "{}"

[[checks]]
name = "refused"
kind = "http"
url = "http://{refused}/health"

[[checks]]
name = "plain"
kind = "http"
url = "https://{}/health"
"#,
        closing.url(),
        plain.address()
    )))
    .await;

    // Act: a first attempt a loaded machine cuts at 150 ms is not the answer.
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            output(a, "closing:responseTime") == Some("connection closed")
                && output(a, "refused:responseTime") == Some("connection refused")
                && output(a, "plain:responseTime") == Some("TLS: the server does not speak TLS")
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(output(&answer, "closing:responseTime"), Some("connection closed"));
    assert_eq!(output(&answer, "refused:responseTime"), Some("connection refused"));
    assert_eq!(output(&answer, "plain:responseTime"), Some("TLS: the server does not speak TLS"));
}

#[tokio::test]
async fn a_failing_non_critical_check_makes_the_service_warn_and_stays_out_of_readiness() {
    // Arrange
    let optional = Upstream::start(Behaviour::Status(500)).await;
    let core = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "300ms"
timeout = "150ms"
retries = 0

[[checks]]
name = "optional"
kind = "http"
url = "{}"
critical = false

[[checks]]
name = "core"
kind = "http"
url = "{}"
"#,
        optional.url(),
        core.url()
    )))
    .await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            status(a, "optional:responseTime") == Some("fail")
                && status(a, "core:responseTime") == Some("pass")
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
    assert_eq!(status(&answer, "optional:responseTime"), Some("fail"));
    assert_eq!(answer.check("optional:responseTime").unwrap()["critical"], false);
    assert_eq!(status(&answer, "core:responseTime"), Some("pass"));
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json["status"], "pass");

    // A critical failure still fails the service.
    core.set(Behaviour::Status(503));
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(answer.json["status"], "fail");
    assert_eq!(output(&answer, "core:responseTime"), Some("HTTP 503"));
    assert_eq!(app.get("/health/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_dependency_that_fails_once_then_succeeds_within_one_run_passes() {
    // Arrange: every run's first request gets 500 and its retry 200 (the
    // dependency alternates); a twin without retries shows the difference.
    let retried = Upstream::start(Behaviour::Alternate(500, 200)).await;
    let single = Upstream::start(Behaviour::Alternate(500, 200)).await;
    let app = spawn_app(&config(&format!(
        r#"
[defaults]
interval = "400ms"
timeout = "150ms"
backoff = "20ms"

[[checks]]
name = "retried"
kind = "http"
url = "{}"
retries = 1

[[checks]]
name = "single"
kind = "http"
url = "{}"
retries = 0
critical = false
"#,
        retried.url(),
        single.url()
    )))
    .await;

    // Act: at least five runs, each with a failed first attempt.
    let single_failed = Cell::new(false);
    app.wait_for("/health", None, DEADLINE, |a| {
        if let Some(status) = status(a, "retried:responseTime") {
            assert_eq!(status, "pass", "{:#}", a.json);
            assert_eq!(failures(a, "retried:responseTime"), 0);
        }
        if status(a, "single:responseTime") == Some("fail") {
            single_failed.set(true);
        }
        retried.requests() >= 10 && single_failed.get()
    })
    .await;

    // Assert: two requests per run, the first of each refused.
    let answer = app.get("/health").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(status(&answer, "retried:responseTime"), Some("pass"));
    assert!(retried.requests() >= 10);
}

#[tokio::test]
async fn a_dependency_health_report_carries_its_warn_and_fail_into_the_check() {
    // Arrange
    let upstream = Upstream::start(Behaviour::HealthReport("warn")).await;
    let app = spawn_app(&api_check(&upstream.url(), "retries = 0")).await;

    // Act + Assert: warn
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, API, "warn", Some("dependency reports warn"))
        })
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
    assert!(answer.check(API).unwrap()["observedValue"].is_number());

    // fail
    upstream.set(Behaviour::HealthReport("fail"));
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(output(&answer, API), Some("dependency reports fail"));

    // pass
    upstream.set(Behaviour::HealthReport("pass"));
    let answer = app.wait_for("/health", None, DEADLINE, |a| a.status == StatusCode::OK).await;
    assert_eq!(answer.json["status"], "pass");
    assert!(shows(&answer, API, "pass", None));
}

#[tokio::test]
async fn a_health_report_under_any_casing_or_parameters_is_read_and_an_unreadable_type_fails() {
    // Arrange: a dependency reporting `fail` under a media type written
    // as RFC 9110 allows.
    let upstream = Upstream::start(Behaviour::HealthReportAs(
        b"Application/Health+JSON ; charset=\"utf-8\"",
        "fail",
    ))
    .await;
    let app = spawn_app(&api_check(&upstream.url(), "retries = 0")).await;

    // Act + Assert: its fail is carried.
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, API, "fail", Some("dependency reports fail"))
        })
        .await;
    assert!(is_unavailable(&answer));

    // A Content-Type that is not a media type fails, never passes.
    for unreadable in [&b"application/health+json\xff"[..], b"application/", b"health+json"] {
        upstream.set(Behaviour::HealthReport("pass"));
        app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
        upstream.set(Behaviour::HealthReportAs(unreadable, "pass"));
        let answer = app
            .wait_for("/health", None, DEADLINE, |a| {
                shows(a, API, "fail", Some("invalid content type"))
            })
            .await;
        assert!(is_unavailable(&answer), "{unreadable:?}");
    }
}

#[tokio::test]
async fn head_and_expect_status_are_honoured_and_redirects_are_not_followed() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(204)).await;
    let app = spawn_app(&api_check(
        &upstream.url(),
        "retries = 0\nmethod = \"HEAD\"\nexpect_status = [204, 301]",
    ))
    .await;

    // Act + Assert
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
    assert_eq!(upstream.last_request().unwrap().method, "HEAD");

    upstream.set(Behaviour::Status(200));
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(output(&answer, API), Some("HTTP 200"));

    // A redirect is an answer in itself: expected here, and not followed.
    upstream.set(Behaviour::Status(301));
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
    assert!(upstream.last_request().unwrap().path == "/health");
}

#[tokio::test]
async fn url_user_info_and_secret_headers_are_sent_but_never_shown_or_logged_in_any_fault() {
    // Arrange
    let user = unique("urluser");
    let password = unique("urlpass");
    let header = unique("headersecret");
    let basic = base64(format!("{user}:{password}").as_bytes());
    let secrets = [user.as_str(), password.as_str(), header.as_str(), basic.as_str()];
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let env = BTreeMap::from([
        ("API_URL".to_string(), upstream.url_with_userinfo(&user, &password)),
        ("API_KEY".to_string(), header.clone()),
    ]);
    let app = spawn_app_with_env(
        &config(
            r#"
[[checks]]
name = "api"
kind = "http"
url_env = "API_URL"
headers_env = { "X-Api-Key" = "API_KEY" }
interval = "300ms"
timeout = "150ms"
retries = 0
"#,
        ),
        env,
    )
    .await;

    // The credentials reach the dependency.
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
    let seen = upstream.last_request().expect("a request");
    assert_eq!(seen.header("x-api-key"), Some(header.as_str()));
    assert_eq!(seen.header("authorization"), Some(format!("Basic {basic}").as_str()));
    assert_no_secret(&every_body(&app, &["api"]).await, &secrets, "pass");

    // Every fault; a 500 body echoes the request head, credentials and all.
    let faults = [
        (Behaviour::Status(500), "HTTP 500"),
        (Behaviour::Slow(Duration::from_secs(30), 200), "timed out after 150 ms"),
        (Behaviour::Never, "timed out after 150 ms"),
        (Behaviour::Close, "connection closed"),
        (Behaviour::HealthReport("fail"), "dependency reports fail"),
    ];
    for (behaviour, category) in faults {
        let fault = format!("{behaviour:?}");
        upstream.set(behaviour);
        app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "fail", Some(category))).await;
        assert_no_secret(&every_body(&app, &["api"]).await, &secrets, &fault);
        upstream.set(Behaviour::Status(200));
        app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "pass", None)).await;
    }

    // Gone altogether.
    drop(upstream);
    app.wait_for("/health", None, DEADLINE, |a| shows(a, API, "fail", Some("connection refused")))
        .await;
    assert_no_secret(&every_body(&app, &["api"]).await, &secrets, "refused");
}

/// Standard base64 with padding, for the expected Basic credentials.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let buffer = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let bits = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]);
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(bits >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[tokio::test]
async fn a_flapping_dependency_is_logged_once_as_flapping_and_shown_until_it_settles() {
    // Arrange: a dependency that answers 200 and 500 in turn, checked
    // every 100 ms with no thresholds: every run changes the status.
    let upstream = Upstream::start(Behaviour::Alternate(200, 500)).await;
    let name = unique("flappy");
    let key = format!("{name}:responseTime");
    let app = spawn_app(&config(&format!(
        "[[checks]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{}\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nretries = 0\n",
        upstream.url()
    )))
    .await;
    let flapping = |answer: &crate::support::app::Answer| {
        answer.check(&key).is_some_and(|check| check["flapping"] == true)
    };

    // Act + Assert: it is shown as flapping, in /health and /metrics.
    app.wait_for("/health", None, DEADLINE, flapping).await;
    let series = format!("healthd_check_flapping{{check=\"{name}\",kind=\"http\"}} 1");
    app.wait_for("/metrics", None, DEADLINE, |answer| answer.text.contains(&series)).await;

    // Once steady, it settles and the field is gone.
    upstream.set(Behaviour::Status(200));
    app.wait_for("/health", None, DEADLINE, |answer| {
        answer.check(&key).is_some_and(|check| check.get("flapping").is_none())
            && shows(answer, &key, "pass", None)
    })
    .await;

    // The log heard of its changes until it flapped, once that it did,
    // once that it settled: not of every change.
    let logs = crate::support::app::captured_logs();
    let lines: Vec<&str> = logs.lines().filter(|line| line.contains(&name)).collect();
    let count = |text: &str| lines.iter().filter(|line| line.contains(text)).count();
    assert_eq!(count("check is flapping"), 1, "{lines:#?}");
    assert_eq!(count("check stopped flapping"), 1, "{lines:#?}");
    let changes = count("check status changed") + count("check recovered");
    assert!(changes <= 4, "{changes} changes logged one by one:\n{lines:#?}");
}
