//! Receivers: one file per kind, each turning a `Notification` into what
//! its service takes. The dispatcher owns retries, deadlines and
//! concurrency; a receiver makes one attempt and says whether another
//! could succeed.
//!
//! What the HTTP receivers (`webhook`, `alertmanager`, `pagerduty`) share
//! lives here: one client per receiver ([`Poster`]) whose one POST judges
//! the answer the same way for all of them and keeps secrets out of its
//! errors, and one way of saying what a notification is about in words
//! ([`headline`], [`alert_line`], [`summary`]).

mod alertmanager;
mod email;
mod pagerduty;
mod webhook;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use healthd_models::{Notification, NotificationAlert, NotificationState};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Client, StatusCode, Url};

use crate::checks::util::categories::{error_chain, find_io_error, io_category};
use crate::checks::BoxFuture;
use crate::config::alerts::{ReceiverKind, ReceiverSettings};

/// Why a delivery failed. The text never holds a secret (a URL, a key, a
/// password): reqwest's errors are stripped of their URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Another attempt may succeed: a connection error, a deadline, a 5xx,
    /// 408 or 429.
    #[error("{0}")]
    Retry(String),
    /// No attempt will succeed as configured (a 4xx such as a bad routing
    /// key, a template that does not render): given up at once.
    #[error("{0}")]
    Refused(String),
}

/// One receiver, built from its settings.
pub trait Receiver: Send + Sync {
    /// Makes one delivery attempt. The dispatcher bounds it by the
    /// receiver's `timeout` and retries on `DeliveryError::Retry` with the
    /// same `notification.id`.
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// How often the alerts still firing must be sent again whatever the
    /// route's `repeat_interval` (Alertmanager resolves an alert that is not
    /// re-sent); `None` for receivers that keep state themselves.
    fn refresh_every(&self) -> Option<Duration> {
        None
    }
}

/// The receiver its settings describe.
pub fn build(settings: &ReceiverSettings) -> anyhow::Result<Arc<dyn Receiver>> {
    match &settings.kind {
        ReceiverKind::Alertmanager { .. } => alertmanager::build(settings),
        ReceiverKind::Webhook { .. } => webhook::build(settings),
        ReceiverKind::PagerDuty { .. } => pagerduty::build(settings),
        ReceiverKind::Email(_) => email::build(settings),
    }
}

/// How much of an error answer's body goes into the error text.
const ANSWER_EXCERPT: usize = 300;
/// Check names a headline lists before it says how many more there are.
const HEADLINE_NAMES: usize = 5;
/// Alert lines a summary lists before it says how many more there are.
pub const SUMMARY_LINES: usize = 20;

/// A receiver's HTTP client and where it posts, built once: its timeout is
/// the receiver's, redirects are not followed (a moved endpoint is a
/// configuration to fix), and every error text is scrubbed of the URL and
/// the receiver's other secrets.
pub struct Poster {
    client: Client,
    url: Url,
    timeout: Duration,
    /// Texts that must never appear in an error: the URL, its path and
    /// query, its password, keys.
    secrets: Vec<String>,
}

impl Poster {
    /// A client for `url`; `secrets` are scrubbed from errors besides the
    /// URL's own parts.
    pub fn new(settings: &ReceiverSettings, url: &str, secrets: &[&str]) -> anyhow::Result<Poster> {
        // The reason never repeats the URL: it may be a credential.
        let parsed =
            Url::parse(url).map_err(|error| anyhow::anyhow!("the URL is invalid: {error}"))?;
        let client = Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("healthd/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("the HTTP client cannot be built")?;
        let mut scrubbed: Vec<String> = vec![url.to_string(), parsed.to_string()];
        if parsed.path().len() > 1 {
            scrubbed.push(parsed.path().to_string());
        }
        scrubbed.extend(parsed.query().map(str::to_string));
        scrubbed.extend(parsed.password().map(str::to_string));
        scrubbed.extend(secrets.iter().map(|secret| secret.to_string()));
        scrubbed.retain(|secret| secret.len() >= 4);
        // The longest first, so that a part never leaves the rest of a whole.
        scrubbed.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        Ok(Poster { client, url: parsed, timeout: settings.timeout, secrets: scrubbed })
    }

    /// POSTs `body` as JSON with `headers`: a 2xx is delivered; a
    /// connection error, no answer in time, a 5xx, 408 or 429 is worth
    /// another attempt; any other answer is refused.
    pub async fn post_json(
        &self,
        mut headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<(), DeliveryError> {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let sent = self.client.post(self.url.clone()).headers(headers).body(body).send().await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return Err(self.failed(error)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Some of the answer says why (PagerDuty's `errors`, Slack's
        // `invalid_payload`); a slow or endless one is not waited for.
        let mut excerpt = Vec::new();
        while excerpt.len() < ANSWER_EXCERPT {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let excerpt = String::from_utf8_lossy(&excerpt[..excerpt.len().min(ANSWER_EXCERPT)])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut reason = format!("answered {status}");
        if !excerpt.is_empty() {
            let _ = write!(reason, ": {excerpt}");
        }
        let reason = self.scrub(&reason);
        if retry_status(status) {
            Err(DeliveryError::Retry(reason))
        } else {
            Err(DeliveryError::Refused(reason))
        }
    }

    /// A request that got no answer, in words without the URL.
    fn failed(&self, error: reqwest::Error) -> DeliveryError {
        let error = error.without_url();
        if error.is_timeout() {
            return DeliveryError::Retry(format!(
                "no answer within the receiver's timeout of {} s",
                self.timeout.as_secs_f64()
            ));
        }
        if error.is_builder() {
            return DeliveryError::Refused(self.scrub(&error_chain(&error)));
        }
        let chain = error_chain(&error);
        let reason = match find_io_error(&error) {
            Some(io) if error.is_connect() => format!("cannot connect: {}", io_category(io)),
            _ if error.is_connect() => format!("cannot connect: {chain}"),
            _ => chain,
        };
        DeliveryError::Retry(self.scrub(&reason))
    }

    /// `text` with every secret replaced.
    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_string(), |text, secret| text.replace(secret, "[redacted]"))
    }
}

/// Whether an answer with this status is worth another attempt.
fn retry_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The alerts that fire, and those that ended.
fn split(notification: &Notification) -> (Vec<&NotificationAlert>, Vec<&NotificationAlert>) {
    notification.alerts.iter().partition(|alert| alert.state == NotificationState::Firing)
}

/// What a notification is about, on one line, as Alertmanager's default
/// titles say it: `[FIRING:2] orders-api: db, cache`,
/// `[RESOLVED] orders-api: db`; a reminder and a test say so.
pub fn headline(notification: &Notification) -> String {
    let (firing, resolved) = split(notification);
    let (mut headline, named) = match notification.state {
        NotificationState::Firing => (format!("[FIRING:{}]", firing.len()), firing),
        NotificationState::Resolved => ("[RESOLVED]".to_string(), resolved),
    };
    if notification.test {
        headline.insert_str(0, "[TEST] ");
    }
    let _ = write!(headline, " {}", one_line(&notification.service));
    let names: Vec<String> =
        named.iter().take(HEADLINE_NAMES).map(|alert| one_line(&alert.component_id)).collect();
    if !names.is_empty() {
        let _ = write!(headline, ": {}", names.join(", "));
    }
    if named.len() > HEADLINE_NAMES {
        let _ = write!(headline, " and {} more", named.len() - HEADLINE_NAMES);
    }
    if notification.reminder {
        headline.push_str(" (reminder)");
    }
    headline
}

/// One alert on one line: name, kind, what it is and since when, and the
/// output that fired it: `db (postgres, critical): fail since
/// 2026-12-05T07:40:00Z: connection refused`, `db (postgres): resolved
/// after 5m (fail from 07:40:00Z)`.
pub fn alert_line(alert: &NotificationAlert) -> String {
    let critical = if alert.critical { ", critical" } else { "" };
    let mut line =
        format!("{} ({}{critical}): ", one_line(&alert.component_id), one_line(&alert.kind));
    match (alert.state, alert.ended_at) {
        (NotificationState::Resolved, Some(ended)) => {
            let lasted = (ended - alert.started_at).to_std().unwrap_or_default();
            let _ = write!(
                line,
                "resolved at {} after {} ({} since {})",
                time(ended),
                span(lasted),
                alert.status,
                time(alert.started_at)
            );
        }
        (NotificationState::Resolved, None) => {
            let _ = write!(line, "resolved ({} since {})", alert.status, time(alert.started_at));
        }
        (NotificationState::Firing, _) => {
            let _ = write!(line, "{} since {}", alert.status, time(alert.started_at));
        }
    }
    if let Some(output) =
        alert.output.as_deref().filter(|_| alert.state == NotificationState::Firing)
    {
        let _ = write!(line, ": {}", one_line(output));
    }
    line
}

/// The headline and a line per alert (firing first, at most
/// `SUMMARY_LINES`), for a chat message.
pub fn summary(notification: &Notification) -> String {
    let (firing, resolved) = split(notification);
    let mut text = headline(notification);
    let alerts: Vec<&NotificationAlert> = firing.into_iter().chain(resolved).collect();
    for alert in alerts.iter().take(SUMMARY_LINES) {
        let _ = write!(text, "\n- {}", alert_line(alert));
    }
    if alerts.len() > SUMMARY_LINES {
        let _ = write!(text, "\n- and {} more", alerts.len() - SUMMARY_LINES);
    }
    text
}

/// `critical` for a critical check, else `warning`: the severity label
/// Alertmanager routes on and PagerDuty's event severity.
pub fn severity(alert: &NotificationAlert) -> &'static str {
    if alert.critical {
        "critical"
    } else {
        "warning"
    }
}

/// A value with its line breaks and other controls made spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `42s`, `5m`, `1h 3m`, `2d 4h`.
fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What the receivers' tests share: settings, a notification, the
/// Python verifier.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::Duration;

    use chrono::{DateTime, Utc};
    use healthd_models::{HealthStatus, Notification, NotificationAlert, NotificationState};

    use crate::config::alerts::{ReceiverKind, ReceiverSettings};

    /// Settings of a receiver named `test` with a 2 s timeout.
    pub fn settings(kind: ReceiverKind) -> ReceiverSettings {
        ReceiverSettings {
            name: "test".into(),
            kind,
            timeout: Duration::from_secs(2),
            concurrency: 1,
            give_up_after: Duration::from_secs(60),
        }
    }

    pub fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    /// A firing alert of check `name`, failing since `since`.
    pub fn firing(name: &str, critical: bool, since: DateTime<Utc>) -> NotificationAlert {
        NotificationAlert {
            component_id: name.into(),
            kind: "postgres".into(),
            critical,
            tags: vec!["db".into()],
            state: NotificationState::Firing,
            status: HealthStatus::Fail,
            started_at: since,
            ended_at: None,
            output: Some("connection refused".into()),
        }
    }

    /// `alert`, ended at `ended`.
    pub fn resolved(mut alert: NotificationAlert, ended: DateTime<Utc>) -> NotificationAlert {
        alert.state = NotificationState::Resolved;
        alert.ended_at = Some(ended);
        alert
    }

    /// A notification of `alerts` from service `orders-api` on `web-1`.
    pub fn notification(alerts: Vec<NotificationAlert>) -> Notification {
        let firing = alerts.iter().any(|alert| alert.state == NotificationState::Firing);
        Notification {
            id: crate::alerts::router::notification_id(),
            service: "orders-api".into(),
            instance: "web-1".into(),
            route: "databases".into(),
            receiver: "test".into(),
            state: if firing { NotificationState::Firing } else { NotificationState::Resolved },
            reminder: false,
            test: false,
            created_at: Utc::now(),
            alerts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use healthd_testkit::readme::readme_block;

    #[tokio::test]
    async fn the_readmes_receiver_examples_load_build_and_deliver_as_written() {
        use std::collections::BTreeMap;

        use healthd_testkit::recorder::{Recorder, Reply};

        // Arrange: a recorder in place of every service the examples name.
        let recorder = Recorder::answering(Reply::Status(202)).await;
        let env: BTreeMap<String, String> = [
            ("ALERTMANAGER_URL", format!("{}/am", recorder.url())),
            ("OPS_WEBHOOK_URL", format!("{}/ops", recorder.url())),
            ("OPS_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
            ("TICKETS_URL", format!("{}/tickets", recorder.url())),
            ("SLACK_WEBHOOK_URL", format!("{}/slack", recorder.url())),
            ("PAGERDUTY_ROUTING_KEY", "R0UT1NGK3Y0000000000000000000000".into()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        let since = at("2026-12-05T07:40:00Z");
        let sample = notification(vec![firing("db", true, since)]);
        let mut receivers = Vec::new();
        for marker in ["alertmanager-example", "webhook-example", "pagerduty-example"] {
            let settings = crate::config::Settings::parse(&readme_block(marker), "README.md", &env)
                .unwrap_or_else(|error| panic!("{marker} is refused:\n{error}"));
            receivers.extend(settings.alerts.receivers);
        }
        // PagerDuty's own URL is the default; the test's recorder stands in.
        for receiver in &mut receivers {
            if let ReceiverKind::PagerDuty { url, .. } = &mut receiver.kind {
                assert_eq!(url, crate::config::alerts::PAGERDUTY_EVENTS_URL);
                *url = format!("{}/pagerduty", recorder.url());
            }
        }

        // Act
        for receiver in &receivers {
            let built = build(receiver).unwrap_or_else(|e| panic!("{}: {e:#}", receiver.name));
            built.deliver(&sample).await.unwrap_or_else(|e| panic!("{}: {e}", receiver.name));
        }

        // Assert
        let requests = recorder.wait_for(receivers.len(), Duration::from_secs(10)).await;
        let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/am/api/v2/alerts", "/ops", "/tickets", "/slack", "/pagerduty"]);
        for request in &requests {
            let _: serde_json::Value = serde_json::from_slice(&request.body)
                .unwrap_or_else(|e| panic!("{}: {e}: {}", request.path, request.text()));
        }
        assert!(requests[1].header("webhook-signature").is_some());
        let ticket: serde_json::Value = serde_json::from_slice(&requests[2].body).unwrap();
        assert_eq!(ticket["priority"], "P1");
        assert_eq!(ticket["key"], "orders-api/databases");
    }

    #[test]
    fn the_headline_names_the_state_the_service_and_the_checks() {
        // Arrange
        let since = at("2026-12-05T07:40:00Z");
        let mut storm: Vec<_> = (0..7).map(|i| firing(&format!("db{i}"), false, since)).collect();
        storm.push(resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")));

        // Act
        let text = headline(&notification(storm));

        // Assert
        assert_eq!(text, "[FIRING:7] orders-api: db0, db1, db2, db3, db4 and 2 more");
    }

    #[test]
    fn an_alert_line_says_what_fails_since_when_and_how_long_a_resolved_one_lasted() {
        // Arrange
        let alert = firing("db", true, at("2026-12-05T07:40:00Z"));

        // Act
        let firing_line = alert_line(&alert);
        let resolved_line = alert_line(&resolved(alert, at("2026-12-05T08:43:10Z")));

        // Assert
        assert_eq!(
            firing_line,
            "db (postgres, critical): fail since 2026-12-05T07:40:00Z: connection refused"
        );
        assert_eq!(
            resolved_line,
            "db (postgres, critical): resolved at 2026-12-05T08:43:10Z after 1h 3m \
             (fail since 2026-12-05T07:40:00Z)"
        );
    }
}
