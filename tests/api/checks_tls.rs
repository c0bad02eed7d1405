//! `kind = "tls"`, and the `http` kind's `daysRemaining`, against TLS
//! listeners the tests start with certificates they mint (testkit): valid
//! for 30 days, expiring in 5, expired 2 days ago, signed by a CA nobody
//! trusts, for another name; and a closed port and a listener that never
//! answers. Every state is waited for with a deadline.

use std::path::Path;

use healthd_testkit::certs::{CertFiles, TestCerts, TlsListener};
use reqwest::StatusCode;

use crate::support::app::{spawn_app, Answer};
use crate::support::checks::{config, is_unavailable, output, status, DEADLINE};
use crate::support::upstream::{refused_address, Silent};

/// A `tls` check named `name` against `address`, trusting `ca` when given.
fn tls_check(name: &str, address: &str, ca: Option<&Path>, extra: &str) -> String {
    let ca = ca.map(|path| format!("ca_file = \"{}\"", path.display())).unwrap_or_default();
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "tls"
address = "{address}"
{ca}
interval = "700ms"
timeout = "500ms"
retries = 0
{extra}
"#
    )
}

fn days(answer: &Answer, name: &str) -> f64 {
    let key = format!("{name}:daysRemaining");
    let reading = answer.check(&key).unwrap_or_else(|| panic!("no {key}: {:#}", answer.json));
    assert_eq!(reading["observedUnit"], "d", "{reading}");
    reading["observedValue"].as_f64().unwrap_or_else(|| panic!("no value: {reading}"))
}

/// Whether `name` has a reading with this status and output.
fn reads(answer: &Answer, name: &str, wanted: &str, wanted_output: Option<&str>) -> bool {
    let key = format!("{name}:daysRemaining");
    status(answer, &key) == Some(wanted) && output(answer, &key) == wanted_output
}

async fn serve(files: &CertFiles) -> TlsListener {
    TlsListener::start(files).await
}

#[tokio::test]
async fn certificates_are_judged_by_the_days_they_have_left_and_by_their_chain_and_name() {
    // Arrange
    let certs = TestCerts::new();
    let ca = Some(certs.ca_path());
    let valid = serve(&certs.valid()).await;
    let soon = serve(&certs.expiring_in_days(5)).await;
    let expired = serve(&certs.expired_days_ago(2)).await;
    let untrusted = serve(&certs.by_unknown_ca()).await;
    let other = serve(&certs.for_names(&["other.example"])).await;
    let checks = [
        tls_check("valid", &valid.address(), ca, ""),
        tls_check("soon", &soon.address(), ca, ""),
        tls_check("soon-fail", &soon.address(), ca, "fail_below = \"7d\"\nwarn_below = \"20d\""),
        tls_check("expired", &expired.address(), ca, ""),
        tls_check("untrusted", &untrusted.address(), ca, ""),
        // The test CA is in no system store.
        tls_check("system-roots", &valid.address(), None, ""),
        tls_check("mismatch", &other.address(), ca, ""),
        tls_check("renamed", &other.address(), ca, "server_name = \"other.example\""),
    ]
    .concat();

    // Act
    let app = spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            reads(a, "valid", "pass", None)
                && reads(a, "soon", "warn", Some("certificate expires in 5 days"))
                && reads(a, "soon-fail", "fail", Some("certificate expires in 5 days"))
                && reads(a, "expired", "fail", Some("certificate expired 2 days ago"))
                && reads(a, "untrusted", "fail", Some("TLS: certificate not trusted"))
                && reads(a, "system-roots", "fail", Some("TLS: certificate not trusted"))
                && reads(a, "mismatch", "fail", Some("TLS: hostname mismatch"))
                && reads(a, "renamed", "pass", None)
        })
        .await;
    assert!(is_unavailable(&answer));
    let reading = answer.check("valid:daysRemaining").unwrap();
    assert_eq!(reading["componentType"], "component");
    assert!((29.9..=30.0).contains(&days(&answer, "valid")), "{reading}");
    assert!((5.0..5.1).contains(&days(&answer, "soon")));
    assert!((-2.1..=-2.0).contains(&days(&answer, "expired")));
    // The leaf was read though the chain was refused.
    assert!((29.9..=30.0).contains(&days(&answer, "untrusted")));
}

#[tokio::test]
async fn a_certificate_expiring_within_warn_below_warns_with_a_200() {
    // Arrange
    let certs = TestCerts::new();
    let soon = serve(&certs.expiring_in_days(9)).await;
    let check = tls_check("cert", &soon.address(), Some(certs.ca_path()), "");

    // Act
    let app = spawn_app(&config(&check)).await;

    // Assert: warn is 200 for the whole service.
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            reads(a, "cert", "warn", Some("certificate expires in 9 days"))
        })
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["status"], "warn");
}

#[tokio::test]
async fn a_closed_port_is_refused_and_a_listener_that_never_answers_times_out() {
    // Arrange
    let closed = refused_address().await;
    let silent = Silent::start().await;
    let checks = [
        tls_check("closed", &closed.to_string(), None, ""),
        tls_check("silent", &silent.address().to_string(), None, ""),
    ]
    .concat();

    // Act
    let app = spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            reads(a, "closed", "fail", Some("connection refused"))
                && reads(a, "silent", "fail", Some("timed out after 500 ms"))
        })
        .await;
    assert!(is_unavailable(&answer));
    assert!(answer.check("closed:daysRemaining").unwrap()["observedValue"].is_null());
    // The silent one was reached: the handshake, not the connect, hung.
    assert!(silent.accepted() >= 1);
}

#[tokio::test]
async fn an_https_check_reports_days_remaining_beside_its_response_time() {
    // Arrange
    let certs = TestCerts::new();
    let listener = serve(&certs.expiring_in_days(20)).await;
    let checks = format!(
        r#"
[[checks]]
name = "api"
kind = "http"
url = "https://127.0.0.1:{}/health"
ca_file = "{}"
interval = "700ms"
timeout = "500ms"
retries = 0
"#,
        listener.port(),
        certs.ca_path().display()
    );

    // Act
    let app = spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| status(a, "api:responseTime") == Some("pass"))
        .await;
    assert_eq!(answer.check("api:responseTime").unwrap()["observedUnit"], "ms");
    assert!((20.0..20.1).contains(&days(&answer, "api")), "{:#}", answer.json);
    assert_eq!(answer.check("api:daysRemaining").unwrap()["status"], "pass");
}

#[tokio::test]
async fn a_plain_http_check_has_no_days_remaining() {
    // Arrange
    let upstream =
        crate::support::upstream::Upstream::start(crate::support::upstream::Behaviour::Status(200))
            .await;
    let checks = format!(
        "[[checks]]\nname = \"api\"\nkind = \"http\"\nurl = \"{}\"\ninterval = \"700ms\"\ntimeout = \"500ms\"\nretries = 0\n",
        upstream.url()
    );

    // Act
    let app = spawn_app(&config(&checks)).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| status(a, "api:responseTime") == Some("pass"))
        .await;
    assert!(answer.check("api:daysRemaining").is_none(), "{:#}", answer.json);
}
