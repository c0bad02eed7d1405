//! `kind = "tcp"`: a connect within the deadline, against a listener, a
//! closed port, and a port whose handshake never completes.

use std::time::Instant;

use reqwest::StatusCode;

use crate::support::app::spawn_app;
use crate::support::checks::{config, failures, output, shows, status, DEADLINE};
use crate::support::upstream::{refused_address, Behaviour, Unanswering, Upstream};

const CACHE: &str = "cache:responseTime";

/// One tcp check named `cache` on `address`, every 300 ms with a 150 ms
/// deadline and no retries; `extra` adds keys.
fn cache_check(address: &str, extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "cache"
kind = "tcp"
address = "{address}"
interval = "300ms"
timeout = "150ms"
retries = 0
{extra}
"#
    ))
}

#[tokio::test]
async fn a_listening_endpoint_passes_with_a_response_time() {
    // Arrange: a listener that never says a word; a TCP check proves the
    // connect only, and the kernel completes it.
    let listener = Upstream::start(Behaviour::Never).await;
    let app = spawn_app(&cache_check(&listener.address().to_string(), "")).await;

    // Act
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, CACHE).is_some()).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    let reading = answer.check(CACHE).unwrap();
    assert_eq!(reading["status"], "pass");
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].as_f64().is_some_and(|ms| ms >= 0.0), "{reading}");
    assert!(reading.get("output").is_none());
}

#[tokio::test]
async fn a_closed_port_fails_with_connection_refused() {
    // Arrange
    let address = refused_address().await;
    let app = spawn_app(&cache_check(&address.to_string(), "")).await;

    // Act
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, CACHE).is_some()).await;

    // Assert
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json["status"], "fail");
    assert!(shows(&answer, CACHE, "fail", Some("connection refused")), "{:#}", answer.json);
    assert_eq!(app.get("/health/ready").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_handshake_that_never_completes_times_out_at_the_deadline() {
    // Arrange
    let unanswering = Unanswering::start().await;

    // Act
    let started = Instant::now();
    let app = spawn_app(&cache_check(&unanswering.address().to_string(), "")).await;
    let answer = app.wait_for("/health", None, DEADLINE, |a| status(a, CACHE).is_some()).await;
    let first_reading = started.elapsed();

    // Assert: the first run starts at once and is cut at its deadline.
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(output(&answer, CACHE), Some("timed out after 150 ms"));
    // The output proves the deadline cut the attempt (only the deadline
    // writes it); how soon the reading came depends on the machine's load.
    eprintln!(
        "MEASURED first reading against a silent listener: {first_reading:?} (timeout 150 ms)"
    );
    // The runs after it are cut the same way and keep coming.
    let answer = app.wait_for("/health", None, DEADLINE, |a| failures(a, CACHE) >= 3).await;
    assert_eq!(output(&answer, CACHE), Some("timed out after 150 ms"));
}

#[tokio::test]
async fn a_non_critical_tcp_check_that_fails_makes_the_service_warn_and_stays_ready() {
    // Arrange
    let address = refused_address().await;
    let app = spawn_app(&cache_check(&address.to_string(), "critical = false")).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, CACHE, "fail", Some("connection refused"))
        })
        .await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
    assert!(shows(&answer, CACHE, "fail", Some("connection refused")), "{:#}", answer.json);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    // The check's own report is its own status.
    let own = app.get("/health/checks/cache").await;
    assert_eq!(own.status, StatusCode::SERVICE_UNAVAILABLE);
}
