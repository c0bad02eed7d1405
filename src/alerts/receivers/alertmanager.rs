//! The `alertmanager` receiver: each notification's alerts go to an
//! Alertmanager's API v2 (`POST {url}/api/v2/alerts`), as Prometheus sends
//! them, and Alertmanager does the rest: grouping across services,
//! silences, inhibitions, its own receivers.
//!
//! Each alert is `HealthdCheckFailing` with the labels `service`,
//! `instance`, `check`, `kind` and `severity` (`critical` for a critical
//! check, else `warning`), and `test="true"` on a `healthd test-alert`.
//! A firing alert ends four refresh periods from now unless it is sent
//! again, and healthd sends the alerts still firing every minute
//! (`refresh_every`), so an alert that healthd stops telling about (it was
//! removed from the config, healthd is gone) resolves by itself, as
//! Prometheus' alerts do. A resolved alert ends when its check recovered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use healthd_models::{Notification, NotificationAlert, NotificationState};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use crate::alerts::receivers::{alert_line, severity, DeliveryError, Poster, Receiver};
use crate::checks::BoxFuture;
use crate::config::alerts::{ReceiverKind, ReceiverSettings};

/// How often the alerts still firing are sent again (Prometheus'
/// `resend_delay`).
const REFRESH: Duration = Duration::from_secs(60);
/// A firing alert's `endsAt` is this many refreshes ahead (as Prometheus
/// does), so that one lost refresh does not resolve it.
const REFRESHES_AHEAD: u32 = 4;
/// The `alertname` of every alert.
pub const ALERT_NAME: &str = "HealthdCheckFailing";

pub fn build(settings: &ReceiverSettings) -> anyhow::Result<Arc<dyn Receiver>> {
    let ReceiverKind::Alertmanager { url } = &settings.kind else {
        anyhow::bail!("not an alertmanager receiver");
    };
    let endpoint = format!("{}/api/v2/alerts", url.expose().trim_end_matches('/'));
    Ok(Arc::new(Alertmanager { poster: Poster::new(settings, &endpoint, &[url.expose()])? }))
}

struct Alertmanager {
    poster: Poster,
}

impl Receiver for Alertmanager {
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let alerts = alerts(notification, Utc::now());
            let body = serde_json::to_vec(&alerts)
                .map_err(|error| DeliveryError::Refused(format!("unserialisable: {error}")))?;
            self.poster.post_json(HeaderMap::new(), body).await
        })
    }

    fn refresh_every(&self) -> Option<Duration> {
        Some(REFRESH)
    }
}

/// The API v2 body: one postable alert per alert of the notification.
fn alerts(notification: &Notification, now: DateTime<Utc>) -> Value {
    Value::Array(notification.alerts.iter().map(|alert| one(notification, alert, now)).collect())
}

fn one(notification: &Notification, alert: &NotificationAlert, now: DateTime<Utc>) -> Value {
    let mut labels = BTreeMap::from([
        ("alertname", ALERT_NAME.to_string()),
        ("service", notification.service.clone()),
        ("instance", notification.instance.clone()),
        ("check", alert.component_id.clone()),
        ("kind", alert.kind.clone()),
        ("severity", severity(alert).to_string()),
    ]);
    if notification.test {
        labels.insert("test", "true".into());
    }
    let mut annotations = BTreeMap::from([
        ("summary", alert_line(alert)),
        ("status", alert.status.to_string()),
        ("route", notification.route.clone()),
    ]);
    if let Some(output) = &alert.output {
        annotations.insert("output", output.clone());
    }
    let ends = match alert.state {
        NotificationState::Firing => {
            now + TimeDelta::from_std(REFRESH * REFRESHES_AHEAD).unwrap_or_default()
        }
        // Never before it started, which Alertmanager refuses.
        NotificationState::Resolved => alert.ended_at.unwrap_or(now).max(alert.started_at),
    };
    json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": time(alert.started_at),
        "endsAt": time(ends),
    })
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use healthd_testkit::alertmanager::TestAlertmanager;
    use healthd_testkit::recorder::{Recorded, Recorder};

    use super::*;
    use crate::alerts::receivers::test_support::{at, firing, notification, resolved, settings};
    use crate::base::secret::Secret;

    /// Alertmanager tells its receiver within a few seconds (group_wait
    /// and group_interval of 1 s); a loaded machine gets room.
    const WAIT: Duration = Duration::from_secs(30);

    fn checks(webhook: &Value) -> Vec<(String, String)> {
        let mut checks: Vec<_> = webhook["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .map(|alert| {
                let check = alert["labels"]["check"].as_str().unwrap_or_default().to_string();
                (check, alert["status"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        checks.sort();
        checks
    }

    fn json(request: &Recorded) -> Value {
        serde_json::from_slice(&request.body).expect("Alertmanager posts JSON")
    }

    #[test]
    fn a_firing_alert_ends_four_refreshes_ahead_and_a_resolved_one_when_it_recovered() {
        // Arrange
        let now = at("2026-12-05T08:00:00Z");
        let since = at("2026-12-05T07:40:00Z");
        let notification = notification(vec![
            firing("db", true, since),
            resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")),
        ]);

        // Act
        let body = alerts(&notification, now);

        // Assert
        assert_eq!(
            body[0]["labels"],
            json!({"alertname": "HealthdCheckFailing", "service": "orders-api", "instance": "web-1",
                   "check": "db", "kind": "postgres", "severity": "critical"})
        );
        assert_eq!(body[0]["annotations"]["output"], "connection refused");
        assert_eq!(body[0]["annotations"]["status"], "fail");
        assert_eq!(body[0]["startsAt"], "2026-12-05T07:40:00.000Z");
        assert_eq!(body[0]["endsAt"], "2026-12-05T08:04:00.000Z");
        assert_eq!(body[1]["labels"]["severity"], "warning");
        assert_eq!(body[1]["endsAt"], "2026-12-05T07:45:00.000Z");
    }

    #[tokio::test]
    async fn the_alerts_go_to_the_api_v2_under_the_base_url() {
        // Arrange
        let recorder = Recorder::start().await;
        let base = format!("{}/monitoring/alertmanager/", recorder.url());
        let receiver =
            build(&settings(ReceiverKind::Alertmanager { url: Secret::new(base) })).unwrap();
        let since = at("2026-12-05T07:40:00Z");
        let notification = notification(vec![
            firing("db", true, since),
            resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")),
        ]);

        // Act
        receiver.deliver(&notification).await.expect("delivered");

        // Assert
        let request = recorder.wait_for(1, WAIT).await.remove(0);
        println!("alertmanager receiver posted: {}", request.text());
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/monitoring/alertmanager/api/v2/alerts");
        assert_eq!(request.header("content-type"), Some("application/json"));
        let body = json(&request);
        assert_eq!(body.as_array().map(Vec::len), Some(2));
        assert_eq!(body[1]["endsAt"], "2026-12-05T07:45:00.000Z");
    }

    #[tokio::test]
    async fn alertmanager_forwards_the_alert_honours_a_silence_and_forwards_the_resolution() {
        // Arrange
        let recorder = Recorder::start().await;
        let alertmanager =
            TestAlertmanager::start(&format!("{}/from-alertmanager", recorder.url())).await;
        let receiver =
            build(&settings(ReceiverKind::Alertmanager { url: Secret::new(alertmanager.url()) }))
                .expect("an alertmanager receiver");
        assert_eq!(receiver.refresh_every(), Some(REFRESH));
        let since = Utc::now() - TimeDelta::minutes(3);

        // Act 1: one alert.
        receiver.deliver(&notification(vec![firing("db", true, since)])).await.expect("posted");

        // Assert 1: Alertmanager tells its receiver, labels and all.
        let first = &recorder.wait_for(1, WAIT).await[0];
        println!("Alertmanager's webhook received (firing): {}", first.text());
        let first = json(first);
        assert_eq!(first["status"], "firing");
        assert_eq!(first["receiver"], "recorder");
        let alert = &first["alerts"][0];
        assert_eq!(alert["labels"]["alertname"], ALERT_NAME);
        assert_eq!(alert["labels"]["service"], "orders-api");
        assert_eq!(alert["labels"]["instance"], "web-1");
        assert_eq!(alert["labels"]["check"], "db");
        assert_eq!(alert["labels"]["kind"], "postgres");
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["annotations"]["output"], "connection refused");

        // Act 2: a silence on check "cache", then cache and queue fail too.
        let silence = json!({
            "matchers": [{"name": "check", "value": "cache", "isRegex": false, "isEqual": true}],
            "startsAt": time(Utc::now() - TimeDelta::minutes(1)),
            "endsAt": time(Utc::now() + TimeDelta::hours(1)),
            "createdBy": "healthd tests",
            "comment": "cache is being replaced",
        });
        let created = reqwest::Client::new()
            .post(format!("{}/api/v2/silences", alertmanager.url()))
            .header("content-type", "application/json")
            .body(silence.to_string())
            .send()
            .await
            .expect("the silences API answers");
        assert!(created.status().is_success(), "{:?}", created.text().await);
        let second = notification(vec![
            firing("db", true, since),
            firing("cache", false, since),
            firing("queue", false, since),
        ]);
        receiver.deliver(&second).await.expect("posted");

        // Assert 2: the group grows by queue only; Alertmanager holds cache as silenced.
        let requests = recorder.wait_for(2, WAIT).await;
        let grown = json(&requests[1]);
        assert_eq!(
            checks(&grown),
            [("db".into(), "firing".into()), ("queue".into(), "firing".into())],
            "{grown}"
        );
        let listed: Value = serde_json::from_str(
            &reqwest::get(format!(
                "{}/api/v2/alerts?filter=check%3D%22cache%22",
                alertmanager.url()
            ))
            .await
            .expect("the alerts API answers")
            .text()
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(listed[0]["status"]["state"], "suppressed", "{listed}");
        assert_eq!(listed[0]["status"]["silencedBy"].as_array().map(Vec::len), Some(1));

        // Act 3: db and queue recover.
        let ended = Utc::now();
        receiver
            .deliver(&notification(vec![
                resolved(firing("db", true, since), ended),
                resolved(firing("queue", false, since), ended),
            ]))
            .await
            .expect("posted");

        // Assert 3: the resolution arrives (in one webhook, unless a group
        // flush fell between the two alerts of the post: then in the next).
        let mut count = 3;
        let last = loop {
            let requests = recorder.wait_for(count, WAIT).await;
            let last = json(&requests[count - 1]);
            if last["status"] == "resolved" {
                println!(
                    "Alertmanager's webhook received (resolved): {}",
                    requests[count - 1].text()
                );
                break last;
            }
            count += 1;
        };
        assert_eq!(
            checks(&last),
            [("db".into(), "resolved".into()), ("queue".into(), "resolved".into())],
        );
        // The silenced alert was never told.
        for request in recorder.requests() {
            assert!(!checks(&json(&request)).iter().any(|(check, _)| check == "cache"));
        }
    }
}
