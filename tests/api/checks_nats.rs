//! `kind = "nats"` against a throwaway `nats-server -js` of the testkit,
//! which the tests kill, freeze, thaw and restart (the machine's own on 4222
//! is never touched): a round trip, a JetStream stream's messages, a stream
//! that does not exist, a token and a password from the environment only.
//! Every state is waited for with a deadline.

use std::collections::BTreeMap;

use async_nats::jetstream;
use reqwest::StatusCode;

use crate::support::app::{spawn_app_with_env, Answer, TestApp};
use crate::support::checks::{
    assert_no_secret, config, every_body, is_unavailable, shows, unique, DEADLINE,
};
use crate::support::nats::TestNats;

const BUS: &str = "bus:responseTime";

/// One nats check named `bus` reading its URL from `BUS_URL`.
fn bus_check(extra: &str) -> String {
    config(&format!(
        r#"
[[checks]]
name = "bus"
kind = "nats"
url_env = "BUS_URL"
interval = "700ms"
timeout = "500ms"
retries = 0
{extra}
"#
    ))
}

async fn spawn_with(check: &str, env: &[(&str, &str)]) -> TestApp {
    let env: BTreeMap<String, String> =
        env.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
    spawn_app_with_env(check, env).await
}

async fn wait_shows(app: &TestApp, wanted: &str, wanted_output: Option<&str>) -> Answer {
    app.wait_for("/health", None, DEADLINE, |a| shows(a, BUS, wanted, wanted_output)).await
}

/// Creates `stream` on `nats` (subject `NAME.>`) and publishes `messages`.
async fn stream_with_messages(nats: &TestNats, stream: &str, messages: usize) {
    let client = async_nats::connect(nats.url()).await.expect("the test server answers");
    let context = jetstream::new(client);
    context
        .create_stream(jetstream::stream::Config {
            name: stream.to_string(),
            subjects: vec![format!("{stream}.>")],
            ..Default::default()
        })
        .await
        .expect("creating the stream");
    for n in 0..messages {
        context
            .publish(format!("{stream}.event"), format!("message {n}").into())
            .await
            .expect("publishing")
            .await
            .expect("the stream stores the message");
    }
}

#[tokio::test]
async fn killing_nats_fails_the_check_and_a_restart_brings_it_back_without_restarting_healthd() {
    // Arrange
    let nats = TestNats::start().await;
    let app = spawn_with(&bus_check(""), &[("BUS_URL", &nats.url())]).await;
    let answer = wait_shows(&app, "pass", None).await;
    let reading = answer.check(BUS).unwrap();
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(answer.check("bus:messages").is_none(), "no stream, no messages");

    // Act
    nats.kill();

    // Assert: the lost connection is noticed, then the reconnects are refused.
    let answer = app.wait_for("/health", None, DEADLINE, is_unavailable).await;
    assert_eq!(answer.json["status"], "fail");
    wait_shows(&app, "fail", Some("connection refused")).await;

    // Act
    nats.restart().await;

    // Assert
    let answer = wait_shows(&app, "pass", None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_frozen_nats_times_out_and_recovers_when_thawed() {
    // Arrange
    let nats = TestNats::start().await;
    let app = spawn_with(&bus_check(""), &[("BUS_URL", &nats.url())]).await;
    wait_shows(&app, "pass", None).await;

    // Act
    nats.freeze();

    // Assert: the round trip on the kept connection meets the deadline.
    let answer = wait_shows(&app, "fail", Some("timed out after 500 ms")).await;
    assert!(is_unavailable(&answer));

    // Act
    nats.thaw();

    // Assert
    wait_shows(&app, "pass", None).await;
}

#[tokio::test]
async fn a_stream_reports_its_messages_and_a_missing_stream_fails() {
    // Arrange
    let nats = TestNats::start().await;
    stream_with_messages(&nats, "ORDERS", 4).await;
    let checks = r#"
[[checks]]
name = "bus"
kind = "nats"
url_env = "BUS_URL"
stream = "ORDERS"
interval = "700ms"
timeout = "500ms"
retries = 0

[[checks]]
name = "missing"
kind = "nats"
url_env = "BUS_URL"
stream = "NO_SUCH_STREAM"
interval = "700ms"
timeout = "500ms"
retries = 0
"#;

    // Act
    let app = spawn_with(&config(checks), &[("BUS_URL", &nats.url())]).await;

    // Assert
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, BUS, "pass", None)
                && shows(a, "missing:responseTime", "fail", Some("stream not found"))
        })
        .await;
    let messages = answer.check("bus:messages").expect("a messages reading");
    assert_eq!(messages["observedValue"], 4.0);
    assert_eq!(messages["observedUnit"], "messages");
    assert!(is_unavailable(&answer));
}

#[tokio::test]
async fn a_token_from_token_env_passes_and_a_wrong_one_fails_without_showing_it() {
    // Arrange
    let nats = TestNats::start_with_token().await;
    let token = nats.token().unwrap().to_string();
    let wrong = unique("wrong-token-");
    let checks = r#"
[[checks]]
name = "bus"
kind = "nats"
url_env = "BUS_URL"
token_env = "BUS_TOKEN"
interval = "700ms"
timeout = "500ms"
retries = 0

[[checks]]
name = "wrong"
kind = "nats"
url_env = "BUS_URL"
token_env = "WRONG_TOKEN"
interval = "700ms"
timeout = "500ms"
retries = 0
"#;

    // Act
    let app = spawn_with(
        &config(checks),
        &[("BUS_URL", &nats.url()), ("BUS_TOKEN", &token), ("WRONG_TOKEN", &wrong)],
    )
    .await;

    // Assert
    app.wait_for("/health", None, DEADLINE, |a| {
        shows(a, BUS, "pass", None)
            && shows(a, "wrong:responseTime", "fail", Some("authentication failed"))
    })
    .await;
    assert_no_secret(&every_body(&app, &["bus", "wrong"]).await, &[&token, &wrong], "token");
}

#[tokio::test]
async fn a_user_and_password_in_url_env_pass_and_never_show() {
    // Arrange
    let nats = TestNats::start_with_user().await;
    let url = nats.url_with_credentials();
    let password = match nats.auth() {
        healthd_testkit::nats::NatsAuth::UserPassword { password, .. } => password.clone(),
        other => panic!("a user and password server, not {other:?}"),
    };

    // Act
    let app = spawn_with(&bus_check(""), &[("BUS_URL", &url)]).await;

    // Assert
    wait_shows(&app, "pass", None).await;
    assert_no_secret(&every_body(&app, &["bus"]).await, &[&password], "password");
}
