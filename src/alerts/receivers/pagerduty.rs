//! The `pagerduty` receiver: PagerDuty's Events API v2. Each alert of a
//! notification is one event, `trigger` while it fires and `resolve` once
//! it has ended, with the dedup key `{service}/{check}`, so that a check's
//! incident is opened once, stays one incident through reminders and
//! retries, and is closed by its recovery. The routing key comes from the
//! environment; the URL is PagerDuty's (another for a proxy or a test).
//!
//! PagerDuty answers 202 to an accepted event, 400 to an invalid one
//! (refused at once) and 429 when it is rate-limited (tried again, as a
//! 5xx is).

use std::sync::Arc;

use chrono::SecondsFormat;
use healthd_models::{Notification, NotificationAlert, NotificationState};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::alerts::receivers::{alert_line, severity, DeliveryError, Poster, Receiver};
use crate::base::secret::Secret;
use crate::checks::BoxFuture;
use crate::config::alerts::{ReceiverKind, ReceiverSettings};

/// PagerDuty's limit on `payload.summary`.
const SUMMARY_LIMIT: usize = 1024;

pub fn build(settings: &ReceiverSettings) -> anyhow::Result<Arc<dyn Receiver>> {
    let ReceiverKind::PagerDuty { routing_key, url } = &settings.kind else {
        anyhow::bail!("not a pagerduty receiver");
    };
    Ok(Arc::new(PagerDuty {
        poster: Poster::new(settings, url, &[routing_key.expose()])?,
        routing_key: routing_key.clone(),
    }))
}

struct PagerDuty {
    poster: Poster,
    routing_key: Secret,
}

impl Receiver for PagerDuty {
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            // One after the other: a retry sends them all again, which
            // PagerDuty takes as the same events (same dedup keys).
            for alert in &notification.alerts {
                let event = event(self.routing_key.expose(), notification, alert);
                let body = serde_json::to_vec(&event)
                    .map_err(|error| DeliveryError::Refused(format!("unserialisable: {error}")))?;
                self.poster.post_json(HeaderMap::new(), body).await?;
            }
            Ok(())
        })
    }
}

/// The dedup key of a check's incident.
fn dedup_key(notification: &Notification, alert: &NotificationAlert) -> String {
    format!("{}/{}", notification.service, alert.component_id)
}

fn event(routing_key: &str, notification: &Notification, alert: &NotificationAlert) -> Value {
    let dedup_key = dedup_key(notification, alert);
    if alert.state == NotificationState::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let mut summary = format!("{}: {}", notification.service, alert_line(alert));
    if notification.test {
        summary.insert_str(0, "[TEST] ");
    }
    if summary.len() > SUMMARY_LIMIT {
        let mut cut = SUMMARY_LIMIT - '…'.len_utf8();
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push('…');
    }
    let mut details = json!({
        "service": notification.service,
        "instance": notification.instance,
        "route": notification.route,
        "check": alert.component_id,
        "kind": alert.kind,
        "status": alert.status,
        "critical": alert.critical,
        "tags": alert.tags,
        "startedAt": alert.started_at,
        "notification": notification.id,
    });
    if let Some(output) = &alert.output {
        details["output"] = output.clone().into();
    }
    if notification.test {
        details["test"] = true.into();
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "healthd",
        "payload": {
            "summary": summary,
            "source": notification.instance,
            "severity": severity(alert),
            "timestamp": alert.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "component": alert.component_id,
            "group": notification.service,
            "class": alert.kind,
            "custom_details": details,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use healthd_testkit::recorder::{Recorder, Reply};

    use super::*;
    use crate::alerts::receivers::test_support::{at, firing, notification, resolved, settings};

    const WAIT: Duration = Duration::from_secs(10);
    const ROUTING_KEY: &str = "R0UT1NGK3Y0000000000000000000000";
    /// What PagerDuty answers an accepted event.
    const ACCEPTED: &str =
        r#"{"status":"success","message":"Event processed","dedup_key":"orders-api/db"}"#;

    fn pagerduty(url: &str) -> Arc<dyn Receiver> {
        let kind = ReceiverKind::PagerDuty {
            routing_key: Secret::new(ROUTING_KEY.into()),
            url: url.into(),
        };
        build(&settings(kind)).expect("a pagerduty receiver")
    }

    #[tokio::test]
    async fn each_alert_is_an_event_that_triggers_or_resolves_its_checks_incident() {
        // Arrange
        let recorder = Recorder::answering(Reply::Body(202, ACCEPTED.into())).await;
        let receiver = pagerduty(&format!("{}/v2/enqueue", recorder.url()));
        let since = at("2026-12-05T07:40:00Z");
        let notification = notification(vec![
            firing("db", true, since),
            resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")),
        ]);

        // Act
        receiver.deliver(&notification).await.expect("delivered");

        // Assert
        let requests = recorder.wait_for(2, WAIT).await;
        println!("pagerduty received (trigger): {}", requests[0].text());
        println!("pagerduty received (resolve): {}", requests[1].text());
        assert!(requests.iter().all(|r| r.path == "/v2/enqueue" && r.method == "POST"));
        let trigger: Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(trigger["routing_key"], ROUTING_KEY);
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], "orders-api/db");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "web-1");
        assert_eq!(trigger["payload"]["timestamp"], "2026-12-05T07:40:00Z");
        assert_eq!(
            trigger["payload"]["summary"],
            "orders-api: db (postgres, critical): fail since 2026-12-05T07:40:00Z: connection refused"
        );
        assert_eq!(trigger["payload"]["custom_details"]["output"], "connection refused");
        assert_eq!(trigger["payload"]["custom_details"]["route"], "databases");
        let resolve: Value = serde_json::from_slice(&requests[1].body).unwrap();
        assert_eq!(
            resolve,
            json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "orders-api/cache"})
        );
    }

    #[tokio::test]
    async fn a_400_is_refused_and_a_429_or_5xx_retried_never_showing_the_routing_key() {
        // Arrange: PagerDuty's answer to a bad key, echoing it.
        let recorder = Recorder::start().await;
        let receiver = pagerduty(&recorder.url());
        let notification = notification(vec![firing("db", true, at("2026-12-05T07:40:00Z"))]);
        let invalid = format!(
            r#"{{"status":"invalid event","message":"Event object is invalid","errors":["routing_key {ROUTING_KEY} is invalid"]}}"#
        );
        let mut outcomes = Vec::new();

        // Act
        for reply in [Reply::Body(400, invalid), Reply::Status(429), Reply::Status(502)] {
            recorder.reply(reply);
            outcomes.push(receiver.deliver(&notification).await);
        }

        // Assert
        let [refused, limited, failing] = &outcomes[..] else { unreachable!() };
        let Err(DeliveryError::Refused(reason)) = refused else { panic!("{refused:?}") };
        assert!(reason.contains("400") && reason.contains("Event object is invalid"), "{reason}");
        assert!(!reason.contains(ROUTING_KEY), "{reason}");
        assert!(matches!(limited, Err(DeliveryError::Retry(reason)) if reason.contains("429")));
        assert!(matches!(failing, Err(DeliveryError::Retry(reason)) if reason.contains("502")));
    }
}
