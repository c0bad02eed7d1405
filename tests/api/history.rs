//! A check's history (`/health/checks/{name}/history`), the status badge
//! and the status page, against the real server: an http check on a local
//! upstream switched between 200 and 500, every state waited for with a
//! deadline; bodies checked against the contract and its generated model.
//! The page in a browser is the contract stage's (contract/status.mjs).

use std::collections::BTreeMap;

use healthd_models::{CheckHistory, HealthStatus};
use reqwest::StatusCode;

use crate::support::app::{assert_matches_schema, spawn_app, spawn_app_with_env, Answer, TestApp};
use crate::support::checks::{config, DEADLINE};
use crate::support::upstream::{Behaviour, Upstream};

/// An http check named `name` on `url`, every 200 ms, no retries.
fn http_check(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "http"
url = "{url}"
interval = "200ms"
timeout = "100ms"
retries = 0
{extra}
"#
    )
}

/// The history in `answer`, checked against the contract's schema and
/// read into the generated model.
fn history(answer: &Answer) -> CheckHistory {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.content_type().starts_with("application/json"), "{}", answer.content_type());
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_matches_schema(&answer.json, "CheckHistory");
    serde_json::from_value(answer.json.clone()).expect("deserialises into CheckHistory")
}

async fn wait_for_history(
    app: &TestApp,
    name: &str,
    token: Option<&str>,
    done: impl Fn(&CheckHistory) -> bool,
) -> CheckHistory {
    let path = format!("/health/checks/{name}/history");
    history(&app.wait_for(&path, token, DEADLINE, |answer| done(&history(answer))).await)
}

fn statuses(history: &CheckHistory) -> Vec<HealthStatus> {
    history.entries.iter().map(|entry| entry.status).collect()
}

/// The statuses with repeats collapsed: [pass, pass, fail] -> [pass, fail].
fn phases(history: &CheckHistory) -> Vec<HealthStatus> {
    let mut phases = statuses(history);
    phases.dedup();
    phases
}

fn count(history: &CheckHistory, status: HealthStatus) -> usize {
    history.entries.iter().filter(|entry| entry.status == status).count()
}

#[tokio::test]
async fn the_history_shows_pass_fail_and_recovery_in_order_with_its_uptime() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&config(&http_check("api", &upstream.url(), ""))).await;
    wait_for_history(&app, "api", None, |h| count(h, HealthStatus::Pass) >= 2).await;

    // Act: two failed runs at least, then two good ones.
    upstream.set(Behaviour::Status(500));
    wait_for_history(&app, "api", None, |h| {
        h.entries.iter().rev().take(2).filter(|e| e.status == HealthStatus::Fail).count() == 2
    })
    .await;
    upstream.set(Behaviour::Status(200));
    let history = wait_for_history(&app, "api", None, |h| {
        h.entries.iter().rev().take(2).filter(|e| e.status == HealthStatus::Pass).count() == 2
    })
    .await;

    // Assert: the runs in the order they happened.
    use HealthStatus::{Fail, Pass};
    assert_eq!(phases(&history), [Pass, Fail, Pass], "{:?}", statuses(&history));
    assert!(history.entries.windows(2).all(|pair| pair[0].time <= pair[1].time), "{history:#?}");
    for entry in &history.entries {
        assert!(entry.duration_ms >= 0.0 && entry.duration_ms < 5_000.0, "{entry:?}");
        match entry.status {
            Fail => {
                assert_eq!(entry.output.as_deref(), Some("HTTP 500"));
            }
            _ => {
                assert_eq!(entry.output, None);
                assert!(entry.observed_value.is_some_and(|ms| ms >= 0.0), "{entry:?}");
            }
        }
    }
    // The status began with the first run of the latest streak.
    let recovered = history.entries.iter().rposition(|entry| entry.status == Fail).unwrap() + 1;
    assert_eq!(history.status_since, Some(history.entries[recovered].time));
    // The identity of the check.
    assert_eq!(history.component_id, "api");
    assert_eq!(history.measurement, "responseTime");
    assert_eq!(history.observed_unit.as_deref(), Some("ms"));
    assert_eq!((history.interval_ms, history.capacity), (200, 120));
    // Uptime: the share of runs that were not fail, over what is kept
    // (everything, here: fewer than 120 runs) and since start.
    let runs = history.entries.len();
    let failed = count(&history, Fail);
    let uptime = &history.uptime;
    assert_eq!((uptime.runs as usize, uptime.failed_runs as usize), (runs, failed));
    assert_eq!(
        (uptime.runs_since_start, uptime.failed_runs_since_start),
        (runs as u64, failed as u64)
    );
    let share = (runs - failed) as f64 / runs as f64;
    assert_eq!(uptime.window, Some(share));
    assert_eq!(uptime.since_start, Some(share));
    assert!(share > 0.0 && share < 1.0, "{share}");
}

#[tokio::test]
async fn the_ring_keeps_the_configured_number_of_runs_and_uptime_since_start_keeps_counting() {
    // Arrange: a ring of 3, and one that keeps nothing.
    let upstream = Upstream::start(Behaviour::Status(500)).await;
    let checks = format!(
        "[defaults]\nhistory = 3\n{}{}",
        http_check("three", &upstream.url(), ""),
        http_check("none", &upstream.url(), "history = 0")
    );
    let app = spawn_app(&config(&checks)).await;

    // Act: more runs than the ring holds, the last three good.
    wait_for_history(&app, "three", None, |h| h.uptime.runs_since_start >= 3).await;
    upstream.set(Behaviour::Status(200));
    let three = wait_for_history(&app, "three", None, |h| {
        h.entries.iter().all(|entry| entry.status == HealthStatus::Pass)
    })
    .await;
    let none = wait_for_history(&app, "none", None, |h| h.uptime.runs_since_start >= 6).await;

    // Assert
    assert_eq!((three.capacity, three.entries.len()), (3, 3));
    assert_eq!((three.uptime.runs, three.uptime.failed_runs), (3, 0));
    assert_eq!(three.uptime.window, Some(1.0));
    assert!(three.uptime.runs_since_start > 3 && three.uptime.failed_runs_since_start >= 3);
    let since_start = three.uptime.since_start.unwrap();
    assert!(since_start < 1.0, "{:?}", three.uptime);
    assert_eq!((none.capacity, none.entries.len(), none.uptime.runs), (0, 0, 0));
    assert_eq!(none.uptime.window, None);
    assert!(none.uptime.since_start.is_some_and(|share| share < 1.0), "{:?}", none.uptime);
}

#[tokio::test]
async fn the_history_needs_details_access_and_an_unknown_name_is_404() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let config = format!(
        "[access]\ndetails = \"authorized\"\ndetails_allow = [\"127.0.0.0/8\"]\n\
         [[access.tokens]]\nname = \"ops\"\nenv = \"TOKEN\"\n{}",
        http_check("api", &upstream.url(), "")
    );
    let env = BTreeMap::from([("TOKEN".to_string(), "history-token".to_string())]);
    let app = spawn_app_with_env(&config, env).await;

    // Act
    let anonymous = app.get("/health/checks/api/history").await;
    let wrong = app.get_with_token("/health/checks/api/history", "nope").await;
    let unknown = app.get_with_token("/health/checks/nope/history", "history-token").await;
    let head =
        app.request(reqwest::Method::HEAD, "/health/checks/api/history", Some("history-token"));

    // Assert
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.headers["www-authenticate"].to_str().unwrap().split(' ').next(),
        Some("Bearer")
    );
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json["detail"], "no check is named \"nope\"");
    assert_eq!(head.await.status, StatusCode::OK);
    let with_token =
        wait_for_history(&app, "api", Some("history-token"), |h| !h.entries.is_empty()).await;
    assert_eq!(with_token.entries[0].status, HealthStatus::Pass);
}

/// The badge's status word and colour, after checking its headers.
fn badge(answer: &Answer) -> (&str, &str) {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "image/svg+xml");
    assert_eq!(answer.headers["cache-control"], "no-store");
    let svg = answer.text.as_str();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{svg}");
    let word = ["pass", "warn", "fail"]
        .into_iter()
        .find(|word| {
            svg.contains(&format!(">{word}</text>")) && svg.contains(&format!("health: {word}"))
        })
        .unwrap_or_else(|| panic!("no status word in {svg}"));
    let colour = ["#2e7d32", "#b26a00", "#c62828"]
        .into_iter()
        .find(|colour| svg.contains(&format!("fill=\"{colour}\"")))
        .unwrap_or_else(|| panic!("no status colour in {svg}"));
    (word, colour)
}

#[tokio::test]
async fn the_badge_says_pass_warn_and_fail_in_green_amber_and_red() {
    // Arrange: a critical check and a non-critical one; details for no one,
    // because the badge needs none.
    let critical = Upstream::start(Behaviour::Status(200)).await;
    let optional = Upstream::start(Behaviour::Status(200)).await;
    let checks = format!(
        "[access]\ndetails = \"never\"\n{}{}",
        http_check("critical", &critical.url(), ""),
        http_check("optional", &optional.url(), "critical = false")
    );
    let app = spawn_app(&checks).await;
    let wait = |word: &'static str| {
        app.wait_for("/health/badge.svg", None, DEADLINE, move |answer| badge(answer).0 == word)
    };

    // Act and assert
    let pass = wait("pass").await;
    assert_eq!(badge(&pass), ("pass", "#2e7d32"));
    optional.set(Behaviour::Status(500));
    let warn = wait("warn").await;
    assert_eq!(badge(&warn), ("warn", "#b26a00"));
    critical.set(Behaviour::Status(500));
    let fail = wait("fail").await;
    assert_eq!(badge(&fail), ("fail", "#c62828"));
    // The same bytes as text to a caller that reads no SVG.
    let text =
        app.send(app.client.get(app.url("/health/badge.svg")).header("accept", "text/plain")).await;
    assert_eq!(text.content_type(), "text/plain; charset=utf-8");
    assert_eq!(text.text, fail.text);
    assert_eq!(text.headers["vary"], "accept");
    assert_eq!(fail.headers["vary"], "accept");
    // Still 200: an image that is not served shows nothing at all.
    let head = app.request(reqwest::Method::HEAD, "/health/badge.svg", None).await;
    assert_eq!((head.status, head.content_type()), (StatusCode::OK, "image/svg+xml"));
}

#[tokio::test]
async fn the_status_page_is_one_self_contained_file_served_to_anyone_allowed() {
    // Arrange
    let app =
        spawn_app(&config("[[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \"/\"\n")).await;

    // Act
    let page = app.get("/status").await;
    let head = app.request(reqwest::Method::HEAD, "/status", None).await;

    // Assert
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-store");
    let html = page.text.as_str();
    assert!(html.starts_with("<!doctype html>"), "{}", &html[..40]);
    // Nothing from elsewhere: no external script, style sheet or image.
    for reference in ["src=", "<link rel=\"stylesheet\"", "http://", "https://", "@import"] {
        let outside = html
            .match_indices(reference)
            .filter(|(at, _)| !html[*at..].starts_with("http://www.w3.org/2000/svg"))
            .count();
        assert_eq!(outside, 0, "the page refers to {reference}");
    }
    // Its data comes from relative paths, so it works under a prefix.
    assert!(html.contains("return `health/page?${query}`;"));
    assert!(html.contains("sessionStorage") && !html.contains("localStorage"));
    assert_eq!(head.status, StatusCode::OK);
}

#[tokio::test]
async fn a_history_over_the_limit_is_refused_with_file_key_and_reason() {
    let too_many =
        config("[[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \"/\"\nhistory = 20000\n");
    let negative = config(
        "[defaults]\nhistory = -1\n[[checks]]\nname = \"disk\"\nkind = \"disk\"\npath = \"/\"\n",
    );
    let env = BTreeMap::new();

    let too_many = healthd::Settings::parse(&too_many, "h.toml", &env).unwrap_err().to_string();
    let negative = healthd::Settings::parse(&negative, "h.toml", &env).unwrap_err().to_string();

    assert!(
        too_many.contains("h.toml: checks[0]: history = 20000 is more than 10000"),
        "{too_many}"
    );
    assert!(negative.contains("h.toml: defaults.history:"), "{negative}");
}
