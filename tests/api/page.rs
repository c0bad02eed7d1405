//! The status page's data (`/health/page`) against the real server: the
//! order (failing, warning, then the rest), paging and the name filter,
//! the disclosure tiers, `ETag` and 304, the kept runs without a store and
//! the 90-day bar and windows with a SQLite store across a restart. Every
//! body is checked against the contract. The page itself, in Chromium at
//! 1,000 checks, is the contract stage's (contract/estate.mjs).

use std::collections::BTreeMap;

use healthd_models::{HealthPage, HealthPageHistory, HealthStatus};
use reqwest::StatusCode;

use crate::support::app::{assert_matches_schema, spawn_app, spawn_app_with_env, Answer, TestApp};
use crate::support::checks::{config, unique, DEADLINE};
use crate::support::upstream::{refused_address, Behaviour, Upstream};

/// A check's policy keys: quick runs, no retries.
const QUICK: &str = "interval = \"300ms\"\ntimeout = \"150ms\"\nretries = 0";

fn disk(name: &str, extra: &str) -> String {
    format!("[[checks]]\nname = \"{name}\"\nkind = \"disk\"\npath = \"/\"\n{QUICK}\n{extra}\n")
}

/// A disk check that warns whatever the machine's free space.
fn warning(name: &str) -> String {
    disk(name, "warn_below = \"100%\"\nfail_below = \"0%\"")
}

/// A tcp check on a listener: it passes.
fn listening(name: &str, address: &str) -> String {
    format!("[[checks]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"{address}\"\n{QUICK}\n")
}

fn refused(name: &str, address: &str) -> String {
    format!(
        "[[checks]]\nname = \"{name}\"\nkind = \"tcp\"\naddress = \"{address}\"\ncritical = false\n{QUICK}\n"
    )
}

fn http(name: &str, url: &str) -> String {
    format!("[[checks]]\nname = \"{name}\"\nkind = \"http\"\nurl = \"{url}\"\n{QUICK}\n")
}

/// The page in `answer`, checked against the contract and its model.
fn page(answer: &Answer) -> HealthPage {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert!(answer.content_type().starts_with("application/json"), "{}", answer.content_type());
    assert_eq!(answer.headers["cache-control"], "private, no-cache");
    assert!(tag(answer).starts_with("W/\""), "{}", tag(answer));
    assert_matches_schema(&answer.json, "HealthPage");
    serde_json::from_value(answer.json.clone()).expect("deserialises into HealthPage")
}

fn tag(answer: &Answer) -> String {
    answer.headers.get("etag").expect("an ETag").to_str().unwrap().to_string()
}

fn names(page: &HealthPage) -> Vec<&str> {
    page.checks.iter().map(|check| check.component_id.as_str()).collect()
}

/// Whether every check of the page has a reading of its own (not the
/// "no reading yet" a check has before its first run).
fn every_check_ran(page: &HealthPage) -> bool {
    page.checks.iter().all(|check| check.output.as_deref() != Some("no reading yet"))
}

async fn wait_for_page(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    done: impl Fn(&HealthPage) -> bool,
) -> (HealthPage, String) {
    let answer = app.wait_for(path, token, DEADLINE, |answer| done(&page(answer))).await;
    (page(&answer), tag(&answer))
}

async fn get_if_none_match(app: &TestApp, path: &str, tag: &str) -> Answer {
    app.send(app.client.get(app.url(path)).header("if-none-match", tag)).await
}

#[tokio::test]
async fn failing_then_warning_then_passing_checks_come_a_page_at_a_time() {
    // Arrange: the configured order mixes them up.
    let address = refused_address().await.to_string();
    let listener = Upstream::start(Behaviour::Never).await;
    let up = listener.address().to_string();
    let checks = [
        listening("pass-a", &up),
        refused("fail-a", &address),
        warning("warn-a"),
        listening("pass-b", &up),
        refused("fail-b", &address),
        listening("pass-c", &up),
    ]
    .concat();
    let app = spawn_app(&config(&checks)).await;

    // Act
    let (all, _) = wait_for_page(&app, "/health/page", None, |page| {
        page.counts.as_ref().is_some_and(|counts| counts.fail == 2 && counts.warn == 1)
            && every_check_ran(page)
    })
    .await;
    let (second, _) = wait_for_page(&app, "/health/page?offset=2&limit=2", None, |_| true).await;
    let (passing, _) = wait_for_page(&app, "/health/page?name=pass", None, |_| true).await;
    let (b, _) = wait_for_page(&app, "/health/page?name=-b", None, |_| true).await;

    // Assert
    assert_eq!(names(&all), ["fail-a", "fail-b", "warn-a", "pass-a", "pass-b", "pass-c"]);
    assert_eq!((all.total, all.offset), (Some(6), Some(0)));
    assert_eq!(all.status, HealthStatus::Warn, "non-critical failures make a warn");
    assert_eq!(all.service_id.as_deref(), Some("checks-test"));
    assert_eq!(all.history, Some(HealthPageHistory::Memory));
    let failing = &all.checks[0];
    assert_eq!(failing.status, HealthStatus::Fail);
    assert_eq!(failing.output.as_deref(), Some("connection refused"));
    assert!(!failing.critical);
    assert!(failing.status_since.is_some());
    let recent = failing.recent.as_ref().expect("without a store, the kept runs");
    assert!(recent.runs.ends_with('f') && recent.runs.chars().all(|c| c == 'f'), "{recent:?}");
    assert_eq!(recent.uptime, Some(0.0));
    assert!(recent.p50_ms.is_some());
    assert!(all.checks[2].recent.as_ref().unwrap().runs.ends_with('w'));
    assert!(all.checks[3].recent.as_ref().unwrap().runs.ends_with('p'));
    assert!(all.checks.iter().all(|check| check.days.is_empty() && check.windows.is_empty()));
    assert_eq!(names(&second), ["warn-a", "pass-a"]);
    assert_eq!((second.total, second.offset), (Some(6), Some(2)));
    assert_eq!(names(&passing), ["pass-a", "pass-b", "pass-c"]);
    assert_eq!(passing.total, Some(3));
    assert_eq!(passing.counts, all.counts, "the counts are of every check, filter or not");
    assert_eq!(names(&b), ["fail-b", "pass-b"]);
}

#[tokio::test]
async fn bad_paging_and_filters_are_400_and_head_has_the_tag_only() {
    // Arrange
    let app = spawn_app(&config(&disk("disk", ""))).await;
    let long = "x".repeat(65);

    // Act
    let answers = [
        app.get("/health/page?limit=0").await,
        app.get("/health/page?limit=1001").await,
        app.get("/health/page?offset=1000001").await,
        app.get("/health/page?offset=-1").await,
        app.get(&format!("/health/page?name={long}")).await,
    ];
    let head = app.request(reqwest::Method::HEAD, "/health/page", None).await;
    let post = app.request(reqwest::Method::POST, "/health/page", None).await;

    // Assert
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
        assert!(answer.content_type().starts_with("application/problem+json"));
    }
    assert_eq!(head.status, StatusCode::OK);
    assert!(tag(&head).starts_with("W/\""));
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn anonymous_callers_see_the_status_only_and_a_token_shows_the_checks() {
    // Arrange
    let config = format!(
        "[server]\nservice_id = \"tiers\"\n[access]\ndetails = \"authorized\"\n[[access.tokens]]\nname = \"ops\"\nenv = \"PAGE_TOKEN\"\n{}",
        disk("disk", "")
    );
    let env = BTreeMap::from([("PAGE_TOKEN".to_string(), "page-token".to_string())]);
    let app = spawn_app_with_env(&config, env).await;

    // Act
    let (with_token, token_tag) =
        wait_for_page(&app, "/health/page", Some("page-token"), every_check_ran).await;
    let anonymous = app.get("/health/page").await;
    let wrong = app.get_with_token("/health/page", "not-the-token").await;
    let anonymous_tag_with_token = app
        .send(
            app.client
                .get(app.url("/health/page"))
                .bearer_auth("page-token")
                .header("if-none-match", tag(&anonymous)),
        )
        .await;

    // Assert
    assert_eq!(names(&with_token), ["disk"]);
    let fields: Vec<&String> = anonymous.json.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["serviceId", "status"], "{}", anonymous.text);
    page(&anonymous);
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_ne!(tag(&anonymous), token_tag, "the tiers never share a tag");
    assert_eq!(
        anonymous_tag_with_token.status,
        StatusCode::OK,
        "{}",
        anonymous_tag_with_token.text
    );
}

/// Sends the tag back until healthd answers 304 (a run that ended in
/// between changes the page without a store; the deadline bounds it).
async fn wait_for_304(app: &TestApp, path: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let first = app.get(path).await;
        let tag = tag(&first);
        let again = get_if_none_match(app, path, &tag).await;
        if again.status == StatusCode::NOT_MODIFIED {
            assert!(again.text.is_empty(), "a 304 has no body: {}", again.text);
            assert_eq!(again.headers["etag"].to_str().unwrap(), tag);
            return tag;
        }
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert!(started.elapsed() < DEADLINE, "no 304 from {path} within {DEADLINE:?}");
    }
}

#[tokio::test]
async fn a_refresh_with_the_etag_is_304_until_what_the_page_shows_changes() {
    // Arrange: one run a minute, so the kept runs stay still between runs.
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let slow = format!(
        "[[checks]]\nname = \"api\"\nkind = \"http\"\nurl = \"{}\"\ninterval = \"1m\"\ntimeout = \"1s\"\nretries = 0\n",
        upstream.url()
    );
    let app = spawn_app(&config(&slow)).await;
    wait_for_page(&app, "/health/page", None, every_check_ran).await;

    // Act
    let tag = wait_for_304(&app, "/health/page").await;
    let other_query = get_if_none_match(&app, "/health/page?limit=5", &tag).await;
    let listed = get_if_none_match(&app, "/health/page", &format!("\"x\", {tag}")).await;

    // Assert
    assert_eq!(other_query.status, StatusCode::OK, "another query is another tag");
    assert_eq!(listed.status, StatusCode::NOT_MODIFIED, "a tag among others matches");
}

#[tokio::test]
async fn a_change_of_status_changes_the_tag() {
    // Arrange
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let app = spawn_app(&config(&http("api", &upstream.url()))).await;
    let (_, before) = wait_for_page(&app, "/health/page", None, |page| {
        page.checks.first().is_some_and(|check| check.status == HealthStatus::Pass)
    })
    .await;

    // Act
    upstream.set(Behaviour::Status(500));
    let (failing, after) = wait_for_page(&app, "/health/page", None, |page| {
        page.checks.first().is_some_and(|check| check.status == HealthStatus::Fail)
    })
    .await;
    let old_tag = get_if_none_match(&app, "/health/page", &before).await;

    // Assert
    assert_eq!(failing.checks[0].output.as_deref(), Some("HTTP 500"));
    assert_ne!(before, after);
    assert_eq!(old_tag.status, StatusCode::OK, "the old tag no longer matches");
    page(&old_tag);
}

#[tokio::test]
async fn with_a_store_the_page_has_the_days_and_windows_across_a_restart() {
    // Arrange: a check that passes, fails, and passes again, then a stop
    // (which writes the roll-ups) and a start on the same file.
    let dir = std::env::temp_dir().join(unique("healthd-page-"));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = Upstream::start(Behaviour::Status(200)).await;
    let listener = Upstream::start(Behaviour::Never).await;
    let checks = format!(
        "[storage]\npath = \"{}\"\n{}{}",
        dir.join("store.db").display(),
        http("flaky", &upstream.url()),
        listening("steady", &listener.address().to_string())
    );
    let config = config(&checks);
    let app = spawn_app(&config).await;
    let failed = |page: &HealthPage| {
        page.checks.iter().any(|c| c.component_id == "flaky" && c.status == HealthStatus::Fail)
    };
    wait_for_page(&app, "/health/page", None, every_check_ran).await;
    upstream.set(Behaviour::Status(500));
    wait_for_page(&app, "/health/page", None, failed).await;
    upstream.set(Behaviour::Status(200));
    wait_for_page(&app, "/health/page", None, |page| !failed(page) && every_check_ran(page)).await;
    app.drain().await.unwrap();
    let started = std::time::Instant::now();
    while !app.is_stopped() {
        assert!(started.elapsed() < DEADLINE, "healthd did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Act
    let app = spawn_app(&config).await;
    let (page, _) = wait_for_page(&app, "/health/page", None, |page| {
        page.checks.iter().all(|check| check.days.last().is_some_and(Option::is_some))
    })
    .await;
    let tag = wait_for_304(&app, "/health/page").await;
    let incidents = app.get("/health/checks/flaky/incidents").await;

    // Assert
    assert_eq!(page.history, Some(HealthPageHistory::Store));
    assert_eq!(page.last_day, Some(chrono::Utc::now().date_naive()));
    let flaky = page.checks.iter().find(|c| c.component_id == "flaky").unwrap();
    let steady = page.checks.iter().find(|c| c.component_id == "steady").unwrap();
    assert_eq!(flaky.days.len(), 90);
    assert!(flaky.days[..89].iter().all(Option::is_none), "no runs before today");
    assert!(flaky.days[89].is_some_and(|share| share > 0.0 && share < 1.0), "{:?}", flaky.days[89]);
    assert_eq!(steady.days[89], Some(1.0));
    assert!(flaky.recent.is_none());
    let windows: Vec<String> = flaky.windows.iter().map(|w| w.window.to_string()).collect();
    assert_eq!(windows, ["24h", "7d", "30d"]);
    for window in &flaky.windows {
        assert!(window.runs > 0 && window.failed_runs > 0, "{window:?}");
        assert!(window.p50_ms.is_some() && window.p99_ms >= window.p50_ms, "{window:?}");
    }
    assert!(tag.starts_with("W/\""));
    assert_eq!(incidents.status, StatusCode::OK, "{}", incidents.text);
    let changes = incidents.json["incidents"].as_array().unwrap();
    assert!(changes.iter().any(|i| i["to"] == "fail" && i["durationMs"].is_u64()), "{changes:?}");
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}
