//! `kind = "mqtt"`: the machine's Mosquitto on 127.0.0.1:1883 (read-only
//! use: unique topics, nothing retained) and throwaway brokers (testkit)
//! that require a password, speak TLS, and are killed, frozen and
//! restarted while healthd watches. Credentials never reach an answer or a
//! log line.

use std::collections::BTreeMap;

use healthd_testkit::certs::TestCerts;
use healthd_testkit::mosquitto::{TestMosquitto, USER};
use reqwest::StatusCode;

use crate::support::app::{spawn_app, spawn_app_with_env};
use crate::support::checks::{
    assert_no_secret, config, every_body, shows, status, unique, wait_shows, DEADLINE,
};

const RT: &str = "broker:responseTime";

/// One mqtt check named `name` on `url`, every 400 ms with a 300 ms
/// deadline and no retries; `extra` adds keys.
fn mqtt_check(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[checks]]
name = "{name}"
kind = "mqtt"
url = "{url}"
interval = "400ms"
timeout = "300ms"
retries = 0
{extra}
"#
    )
}

/// A config with one mqtt check named `broker`.
fn broker_check(url: &str, extra: &str) -> String {
    config(&mqtt_check("broker", url, extra))
}

/// The variables holding `broker`'s credentials.
fn credentials(broker: &TestMosquitto) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("MQTT_USER".to_string(), USER.to_string()),
        ("MQTT_PASSWORD".to_string(), broker.password().to_string()),
    ])
}

const WITH_CREDENTIALS: &str = "username_env = \"MQTT_USER\"\npassword_env = \"MQTT_PASSWORD\"";

#[tokio::test]
async fn the_machines_mosquitto_passes_a_round_trip_on_a_unique_topic() {
    // Arrange: a topic no one else uses; the run adds its own level below it.
    let topic = unique("healthd-test/");
    let app =
        spawn_app(&broker_check("mqtt://127.0.0.1:1883", &format!("topic = \"{topic}\""))).await;

    // Act
    let answer = wait_shows(&app, RT, "pass", None).await;

    // Assert
    assert_eq!(answer.status, StatusCode::OK, "{:#}", answer.json);
    let reading = answer.check(RT).unwrap();
    assert_eq!(reading["status"], "pass");
    assert_eq!(reading["componentType"], "component");
    assert_eq!(reading["observedUnit"], "ms");
    assert!(reading["observedValue"].as_f64().is_some_and(|ms| ms > 0.0), "{reading}");
}

#[tokio::test]
async fn the_right_credentials_pass_and_a_wrong_password_fails_without_leaking_either() {
    // Arrange
    let broker = TestMosquitto::start().await;
    let good =
        broker_check(&broker.url(), &format!("{WITH_CREDENTIALS}\ntopic = \"healthd/probe\""));
    let app = spawn_app_with_env(&good, credentials(&broker)).await;

    // Act
    let answer = wait_shows(&app, RT, "pass", None).await;

    // Assert: the broker carried the run's message back to it.
    assert_eq!(answer.status, StatusCode::OK);
    let log = broker.log_tail();
    assert!(log.contains("Received SUBSCRIBE from healthd-broker-"), "{log}");
    assert!(log.contains("Sending PUBLISH to healthd-broker-"), "{log}");

    // Arrange: the same broker, a wrong password.
    let wrong_password = unique("wrong-mqtt-password-");
    let mut env = credentials(&broker);
    env.insert("MQTT_PASSWORD".into(), wrong_password.clone());
    let wrong = spawn_app_with_env(&broker_check(&broker.url(), WITH_CREDENTIALS), env).await;

    // Act
    let refused = wait_shows(&wrong, RT, "fail", Some("authentication failed")).await;

    // Assert
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let mut bodies = every_body(&app, &["broker"]).await;
    bodies.extend(every_body(&wrong, &["broker"]).await);
    assert_no_secret(&bodies, &[broker.password(), &wrong_password], "mqtt credentials");
}

#[tokio::test]
async fn a_killed_broker_is_connection_refused_until_it_restarts() {
    // Arrange
    let broker = TestMosquitto::start().await;
    let app =
        spawn_app_with_env(&broker_check(&broker.url(), WITH_CREDENTIALS), credentials(&broker))
            .await;
    wait_shows(&app, RT, "pass", None).await;

    // Act
    broker.kill();
    let down = wait_shows(&app, RT, "fail", Some("connection refused")).await;

    // Assert
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    broker.restart().await;
    wait_shows(&app, RT, "pass", None).await;
}

#[tokio::test]
async fn a_frozen_broker_times_out_at_the_deadline_and_recovers_when_thawed() {
    // Arrange
    let broker = TestMosquitto::start().await;
    let app = spawn_app_with_env(
        &broker_check(&broker.url(), &format!("{WITH_CREDENTIALS}\ntopic = \"healthd/probe\"")),
        credentials(&broker),
    )
    .await;
    wait_shows(&app, RT, "pass", None).await;

    // Act
    broker.freeze();
    let frozen = wait_shows(&app, RT, "fail", Some("timed out after 300 ms")).await;

    // Assert
    assert_eq!(frozen.status, StatusCode::SERVICE_UNAVAILABLE);

    // Act
    broker.thaw();
    wait_shows(&app, RT, "pass", None).await;
}

#[tokio::test]
async fn tls_passes_with_the_brokers_ca_and_is_not_trusted_without_it() {
    // Arrange
    let certs = TestCerts::new();
    let broker = TestMosquitto::start_tls(&certs.valid()).await;
    let ca = certs.ca_path().display().to_string();
    let keys = format!("{WITH_CREDENTIALS}\ntopic = \"healthd/tls\"");
    let checks = mqtt_check("broker", &broker.tls_url(), &format!("{keys}\nca_file = \"{ca}\""))
        + &mqtt_check("untrusted", &broker.tls_url(), &keys);
    let app = spawn_app_with_env(&config(&checks), credentials(&broker)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, RT, "pass", None) && status(a, "untrusted:responseTime") == Some("fail")
        })
        .await;

    // Assert
    assert!(shows(&answer, RT, "pass", None), "{:#}\n{}", answer.json, broker.log_tail());
    assert!(
        shows(&answer, "untrusted:responseTime", "fail", Some("TLS: certificate not trusted")),
        "{:#}",
        answer.json
    );
}

#[tokio::test]
async fn a_topic_the_acl_denies_says_the_message_did_not_come_back() {
    // Arrange: the user may use healthd/allowed/# only.
    let broker =
        TestMosquitto::start_with_acl(&format!("user {USER}\ntopic readwrite healthd/allowed/#\n"))
            .await;
    let checks = mqtt_check(
        "broker",
        &broker.url(),
        &format!("{WITH_CREDENTIALS}\ntopic = \"healthd/allowed\""),
    ) + &mqtt_check(
        "denied",
        &broker.url(),
        &format!("{WITH_CREDENTIALS}\ntopic = \"healthd/denied\""),
    );
    let app = spawn_app_with_env(&config(&checks), credentials(&broker)).await;

    // Act
    let answer = app
        .wait_for("/health", None, DEADLINE, |a| {
            shows(a, RT, "pass", None) && status(a, "denied:responseTime") == Some("fail")
        })
        .await;

    // Assert: 90% of the 300 ms deadline, then the step that did not happen.
    assert!(shows(&answer, RT, "pass", None), "{:#}\n{}", answer.json, broker.log_tail());
    assert!(
        shows(
            &answer,
            "denied:responseTime",
            "fail",
            Some("message not delivered back within 270 ms")
        ),
        "{:#}",
        answer.json
    );
}
