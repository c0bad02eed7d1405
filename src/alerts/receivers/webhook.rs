//! The `webhook` receiver: one JSON POST per notification, signed as
//! Standard Webhooks asks (<https://www.standardwebhooks.com>) when it has
//! a secret, so that the receiving end can check who sent it and when.
//!
//! Headers: `webhook-id` (the notification's id, the same on every retry,
//! for the receiving end to drop duplicates), `webhook-timestamp` (unix
//! seconds of this attempt) and, with a secret, `webhook-signature`:
//! `v1,` and the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`. The
//! key is the base64 after `whsec_` when the secret starts so, else the
//! secret's bytes as they are.
//!
//! The body is the `Notification` as JSON, or what a minijinja template
//! renders from it (it must be JSON, or the notification is refused), or
//! one of the built-in templates (`preset`) for Slack, Microsoft Teams,
//! Discord, Mattermost and Google Chat incoming webhooks. A template sees
//! the notification's fields as its JSON names them, `headline` and
//! `summary` (the headline and a line per alert), each alert's `line`,
//! and the filters `tojson` (a JSON string of any value) and
//! `clip(n)` (at most n characters).

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::Utc;
use healthd_models::Notification;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::alerts::receivers::{alert_line, headline, summary, DeliveryError, Poster, Receiver};
use crate::checks::BoxFuture;
use crate::config::alerts::{ReceiverKind, ReceiverSettings, WebhookBody, WebhookPreset};

/// Slack's incoming webhooks take `text` (mrkdwn).
const SLACK: &str = r#"{"text": {{ summary | tojson }}}"#;
/// Mattermost's incoming webhooks take Slack's `text` (Markdown).
const MATTERMOST: &str = r#"{"text": {{ summary | tojson }}}"#;
/// Discord's webhooks take `content`, at most 2000 characters.
const DISCORD: &str = r#"{"content": {{ summary | clip(2000) | tojson }}}"#;
/// Google Chat's incoming webhooks take `text`, at most 4096 characters.
const GOOGLE_CHAT: &str = r#"{"text": {{ summary | clip(4096) | tojson }}}"#;
/// Teams' Workflows ("post to a channel when a webhook request is
/// received") take a message with an Adaptive Card attachment; the
/// retired Office 365 connectors took it too.
const TEAMS: &str = r#"{
  "type": "message",
  "attachments": [{
    "contentType": "application/vnd.microsoft.card.adaptive",
    "contentUrl": null,
    "content": {
      "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
      "type": "AdaptiveCard",
      "version": "1.4",
      "msteams": {"width": "Full"},
      "body": [
        {"type": "TextBlock", "text": {{ headline | tojson }}, "weight": "Bolder", "size": "Medium", "wrap": true,
         "color": {{ ("Attention" if state == "firing" else "Good") | tojson }}}
        {%- for alert in alerts[:20] %},
        {"type": "TextBlock", "text": {{ alert.line | tojson }}, "wrap": true, "spacing": "Small"}
        {%- endfor %}
        {%- if alerts | length > 20 %},
        {"type": "TextBlock", "text": {{ ("and " ~ (alerts | length - 20) ~ " more") | tojson }}, "wrap": true, "isSubtle": true}
        {%- endif %}
      ]
    }
  }]
}"#;

pub fn build(settings: &ReceiverSettings) -> anyhow::Result<Arc<dyn Receiver>> {
    let ReceiverKind::Webhook { url, secret, body } = &settings.kind else {
        anyhow::bail!("not a webhook receiver");
    };
    let key = secret.as_ref().map(|secret| signing_key(secret.expose())).transpose()?;
    let secrets: Vec<&str> = secret.iter().map(|secret| secret.expose()).collect();
    let template = match body {
        WebhookBody::Notification => None,
        WebhookBody::Preset(preset) => Some(preset_template(*preset).to_string()),
        WebhookBody::Template(template) => Some(template.clone()),
    };
    Ok(Arc::new(Webhook {
        poster: Poster::new(settings, url.expose(), &secrets)?,
        key,
        template,
        templates: environment(),
    }))
}

struct Webhook {
    poster: Poster,
    /// The HMAC key; no signature without one.
    key: Option<Vec<u8>>,
    /// None: the notification's own JSON.
    template: Option<String>,
    templates: minijinja::Environment<'static>,
}

impl Receiver for Webhook {
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let body = self.body(notification)?;
            let timestamp = Utc::now().timestamp().to_string();
            let mut headers = HeaderMap::new();
            headers.insert(HeaderName::from_static("webhook-id"), header(&notification.id)?);
            headers.insert(HeaderName::from_static("webhook-timestamp"), header(&timestamp)?);
            if let Some(key) = &self.key {
                let signature = signature(key, &notification.id, &timestamp, &body);
                headers.insert(HeaderName::from_static("webhook-signature"), header(&signature)?);
            }
            self.poster.post_json(headers, body).await
        })
    }
}

impl Webhook {
    /// The bytes to post (and sign).
    fn body(&self, notification: &Notification) -> Result<Vec<u8>, DeliveryError> {
        let Some(template) = &self.template else {
            return serde_json::to_vec(notification)
                .map_err(|error| DeliveryError::Refused(format!("unserialisable: {error}")));
        };
        render(&self.templates, template, notification).map(String::into_bytes)
    }
}

/// What `template` makes of `notification`: JSON, or refused.
fn render(
    templates: &minijinja::Environment<'static>,
    template: &str,
    notification: &Notification,
) -> Result<String, DeliveryError> {
    let rendered = templates.render_str(template, context(notification)).map_err(|error| {
        DeliveryError::Refused(format!("the template does not render: {error}"))
    })?;
    if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&rendered) {
        return Err(DeliveryError::Refused(format!("the template did not render JSON: {error}")));
    }
    Ok(rendered)
}

/// A template's variables: the notification as JSON, its headline and
/// summary, and each alert's line.
fn context(notification: &Notification) -> minijinja::Value {
    let mut value = serde_json::to_value(notification).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("headline".into(), headline(notification).into());
        object.insert("summary".into(), summary(notification).into());
        if let Some(alerts) = object.get_mut("alerts").and_then(|alerts| alerts.as_array_mut()) {
            for (json, alert) in alerts.iter_mut().zip(&notification.alerts) {
                if let Some(json) = json.as_object_mut() {
                    json.insert("line".into(), alert_line(alert).into());
                }
            }
        }
    }
    minijinja::Value::from_serialize(&value)
}

/// The templates' environment: minijinja's built-in filters and `clip`.
fn environment() -> minijinja::Environment<'static> {
    let mut templates = minijinja::Environment::new();
    templates.add_filter("clip", clip);
    templates
}

/// At most `limit` characters, the last an ellipsis when cut.
fn clip(text: String, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text;
    }
    let mut clipped: String = text.chars().take(limit.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

fn preset_template(preset: WebhookPreset) -> &'static str {
    match preset {
        WebhookPreset::Slack => SLACK,
        WebhookPreset::Teams => TEAMS,
        WebhookPreset::Discord => DISCORD,
        WebhookPreset::Mattermost => MATTERMOST,
        WebhookPreset::GoogleChat => GOOGLE_CHAT,
    }
}

/// The HMAC key of a signing secret: the base64 after `whsec_`, or the
/// secret's own bytes. The error never repeats the secret.
fn signing_key(secret: &str) -> anyhow::Result<Vec<u8>> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) => match BASE64.decode(encoded) {
            Ok(key) if !key.is_empty() => Ok(key),
            _ => anyhow::bail!("secret_env: a secret that starts with whsec_ must go on in base64"),
        },
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// `v1,` and the base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}").
fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

fn header(value: &str) -> Result<HeaderValue, DeliveryError> {
    HeaderValue::from_str(value)
        .map_err(|_| DeliveryError::Refused(format!("{value:?} cannot be a header value")))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use healthd_testkit::recorder::{Recorded, Recorder, Reply};
    use serde_json::Value;

    use super::*;
    use crate::alerts::receivers::test_support::{at, firing, notification, resolved, settings};
    use crate::base::secret::Secret;

    const WAIT: Duration = Duration::from_secs(10);
    /// A Standard Webhooks secret as such services hand them out.
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn webhook(url: &str, secret: Option<&str>, body: WebhookBody) -> Arc<dyn Receiver> {
        let kind = ReceiverKind::Webhook {
            url: Secret::new(url.into()),
            secret: secret.map(|secret| Secret::new(secret.into())),
            body,
        };
        build(&settings(kind)).expect("a webhook receiver")
    }

    fn sample() -> Notification {
        let since = at("2026-12-05T07:40:00Z");
        notification(vec![
            firing("db", true, since),
            resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")),
        ])
    }

    /// What Python's `standardwebhooks` (the reference implementation)
    /// says of a request: "verified" or its exception. `raw` hands it the
    /// secret's bytes rather than the `whsec_` text.
    async fn standard_webhooks_verdict(secret: &str, raw: bool, request: &Recorded) -> String {
        let headers: serde_json::Map<String, Value> = request
            .headers
            .iter()
            .filter(|(name, _)| name.starts_with("webhook-"))
            .map(|(name, value)| (name.clone(), Value::from(value.as_str())))
            .collect();
        let headers = Value::Object(headers).to_string();
        let (secret, body) = (secret.to_string(), request.body.clone());
        tokio::task::spawn_blocking(move || {
            let script = "import json, os, sys\n\
                from standardwebhooks import Webhook\n\
                secret = os.environ['SECRET']\n\
                key = secret.encode() if os.environ['RAW'] == '1' else secret\n\
                try:\n    Webhook(key).verify(sys.stdin.buffer.read(), json.loads(os.environ['HEADERS']))\n    print('verified')\n\
                except Exception as error:\n    print(type(error).__name__, error)\n";
            let mut child = Command::new(healthd_testkit::python::python())
                .args(["-c", script])
                .env("SECRET", secret)
                .env("RAW", if raw { "1" } else { "0" })
                .env("HEADERS", headers)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("running python");
            child.stdin.take().unwrap().write_all(&body).unwrap();
            let output = child.wait_with_output().unwrap();
            assert!(output.status.success(), "python failed: {output:?}");
            String::from_utf8_lossy(&output.stdout).trim().to_string()
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_notification_arrives_as_json_with_a_signature_standard_webhooks_verifies() {
        // Arrange
        let recorder = Recorder::start().await;
        let receiver = webhook(
            &format!("{}/hooks/healthd", recorder.url()),
            Some(WHSEC),
            WebhookBody::Notification,
        );
        let notification = sample();

        // Act
        receiver.deliver(&notification).await.expect("delivered");

        // Assert
        let request = recorder.wait_for(1, WAIT).await.remove(0);
        println!("webhook (notification) received: {}", request.text());
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/healthd");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("webhook-id"), Some(notification.id.as_str()));
        let sent: Notification = serde_json::from_slice(&request.body).expect("a Notification");
        assert_eq!(sent, notification);
        let timestamp: i64 = request.header("webhook-timestamp").unwrap().parse().unwrap();
        assert!((Utc::now().timestamp() - timestamp).abs() < 60);
        assert!(request.header("webhook-signature").unwrap().starts_with("v1,"));
        assert_eq!(standard_webhooks_verdict(WHSEC, false, &request).await, "verified");
        // The verifier does refuse what was not signed so.
        let mut tampered = request.clone();
        tampered.body.push(b' ');
        assert_ne!(standard_webhooks_verdict(WHSEC, false, &tampered).await, "verified");
    }

    #[tokio::test]
    async fn a_secret_without_whsec_signs_with_its_own_bytes() {
        // Arrange
        let recorder = Recorder::start().await;
        let secret = "plain shared secret";
        let receiver = webhook(&recorder.url(), Some(secret), WebhookBody::Notification);

        // Act
        receiver.deliver(&sample()).await.expect("delivered");

        // Assert
        let request = recorder.wait_for(1, WAIT).await.remove(0);
        assert_eq!(standard_webhooks_verdict(secret, true, &request).await, "verified");
    }

    #[test]
    fn a_whsec_secret_that_is_not_base64_is_refused_at_build_without_repeating_it() {
        // Arrange
        let kind = ReceiverKind::Webhook {
            url: Secret::new("http://127.0.0.1:9/".into()),
            secret: Some(Secret::new("whsec_not*base64!".into())),
            body: WebhookBody::Notification,
        };

        // Act
        let error = build(&settings(kind)).err().expect("refused").to_string();

        // Assert
        assert!(error.contains("base64"), "{error}");
        assert!(!error.contains("not*base64"), "{error}");
    }

    #[tokio::test]
    async fn a_template_renders_the_notification_into_the_json_posted() {
        // Arrange
        let recorder = Recorder::start().await;
        let template = r#"{"title": {{ headline | tojson }}, "service": {{ service | tojson }},
            "checks": [{% for a in alerts %}{{ a.componentId | tojson }}{{ "," if not loop.last }}{% endfor %}],
            "first": {{ alerts[0].line | tojson }}}"#;
        let receiver = webhook(&recorder.url(), None, WebhookBody::Template(template.into()));

        // Act
        receiver.deliver(&sample()).await.expect("delivered");

        // Assert
        let request = recorder.wait_for(1, WAIT).await.remove(0);
        println!("webhook (template) received: {}", request.text());
        let body: Value = serde_json::from_slice(&request.body).expect("JSON");
        assert_eq!(body["title"], "[FIRING:1] orders-api: db");
        assert_eq!(body["service"], "orders-api");
        assert_eq!(body["checks"], serde_json::json!(["db", "cache"]));
        assert!(body["first"].as_str().unwrap().starts_with("db (postgres, critical): fail since"));
        assert_eq!(request.header("webhook-signature"), None, "no secret, no signature");
    }

    #[tokio::test]
    async fn a_template_that_does_not_render_json_is_refused_and_nothing_is_sent() {
        // Arrange
        let recorder = Recorder::start().await;
        let receiver = webhook(
            &recorder.url(),
            None,
            WebhookBody::Template(r#"{"title": {{ headline }}}"#.into()),
        );

        // Act
        let result = receiver.deliver(&sample()).await;

        // Assert
        let Err(DeliveryError::Refused(reason)) = result else {
            panic!("expected a refusal, got {result:?}");
        };
        assert!(reason.contains("did not render JSON"), "{reason}");
        assert!(recorder.requests().is_empty());
    }

    #[tokio::test]
    async fn each_preset_posts_the_json_its_service_takes() {
        // Arrange
        let recorder = Recorder::start().await;
        let since = at("2026-12-05T07:40:00Z");
        // A storm: more lines than a chat message lists, longer than Discord takes.
        let mut storm: Vec<_> = (0..40)
            .map(|i| firing(&format!("shard-{i:02}-of-the-orders-database"), i == 0, since))
            .collect();
        storm.push(resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")));
        let cases = [
            (WebhookPreset::Slack, "/slack"),
            (WebhookPreset::Mattermost, "/mattermost"),
            (WebhookPreset::Discord, "/discord"),
            (WebhookPreset::GoogleChat, "/google-chat"),
            (WebhookPreset::Teams, "/teams"),
        ];

        for (preset, path) in cases {
            for alerts in [sample().alerts, storm.clone()] {
                // Act
                let receiver = webhook(
                    &format!("{}{path}", recorder.url()),
                    None,
                    WebhookBody::Preset(preset),
                );
                let count = recorder.requests().len();
                receiver.deliver(&notification(alerts)).await.expect("delivered");

                // Assert
                let request = recorder.wait_for(count + 1, WAIT).await.remove(count);
                assert_eq!(request.path, path);
                let body: Value = serde_json::from_slice(&request.body)
                    .unwrap_or_else(|e| panic!("{preset:?}: not JSON ({e}): {}", request.text()));
                let text = match preset {
                    WebhookPreset::Slack
                    | WebhookPreset::Mattermost
                    | WebhookPreset::GoogleChat => body["text"].as_str().map(str::to_string),
                    WebhookPreset::Discord => body["content"].as_str().map(str::to_string),
                    WebhookPreset::Teams => {
                        assert_eq!(body["type"], "message");
                        let card = &body["attachments"][0];
                        assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
                        assert_eq!(card["content"]["type"], "AdaptiveCard");
                        let blocks = card["content"]["body"].as_array().expect("card body");
                        assert!(blocks.len() <= 22, "{} blocks", blocks.len());
                        Some(
                            blocks
                                .iter()
                                .filter_map(|block| block["text"].as_str())
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )
                    }
                };
                let text = text.unwrap_or_else(|| panic!("{preset:?}: no text in {body}"));
                assert!(text.starts_with("[FIRING:"), "{preset:?}: {text}");
                if preset == WebhookPreset::Discord {
                    assert!(text.chars().count() <= 2000, "{}", text.chars().count());
                }
                if preset == WebhookPreset::Slack && count == 0 {
                    println!("webhook (slack preset) received: {}", request.text());
                }
                if preset == WebhookPreset::Teams && count == 8 {
                    println!("webhook (teams preset) received: {}", request.text());
                }
            }
        }
    }

    #[tokio::test]
    async fn a_5xx_408_or_429_is_retried_with_the_same_id_and_other_4xx_are_refused() {
        // Arrange
        let recorder = Recorder::answering(Reply::Status(503)).await;
        let receiver = webhook(&recorder.url(), Some(WHSEC), WebhookBody::Notification);
        let notification = sample();
        let mut outcomes = Vec::new();

        // Act
        for status in [503, 408, 429, 400, 404, 200] {
            recorder.reply(Reply::Status(status));
            outcomes.push((status, receiver.deliver(&notification).await));
        }

        // Assert
        for (status, outcome) in &outcomes {
            match status {
                503 | 408 | 429 => assert!(
                    matches!(outcome, Err(DeliveryError::Retry(reason)) if reason.contains(&status.to_string())),
                    "{status}: {outcome:?}"
                ),
                400 | 404 => assert!(
                    matches!(outcome, Err(DeliveryError::Refused(reason)) if reason.contains(&status.to_string())),
                    "{status}: {outcome:?}"
                ),
                _ => assert_eq!(outcome, &Ok(())),
            }
        }
        let requests = recorder.wait_for(6, WAIT).await;
        assert!(requests.iter().all(|r| r.header("webhook-id") == Some(notification.id.as_str())));
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_fails_within_the_receivers_timeout() {
        // Arrange
        let recorder = Recorder::answering(Reply::Hang).await;
        let mut settings = settings(ReceiverKind::Webhook {
            url: Secret::new(recorder.url()),
            secret: None,
            body: WebhookBody::Notification,
        });
        settings.timeout = Duration::from_secs(1);
        let receiver = build(&settings).unwrap();
        let started = std::time::Instant::now();

        // Act: bounded as the dispatcher bounds it, with room to spare.
        let outcome =
            tokio::time::timeout(Duration::from_secs(5), receiver.deliver(&sample())).await;

        // Assert
        let Ok(Err(DeliveryError::Retry(reason))) = outcome else {
            panic!("expected the receiver's own timeout, got {outcome:?}");
        };
        assert!(reason.contains("no answer within"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert_eq!(recorder.wait_for(1, WAIT).await.len(), 1);
    }

    #[tokio::test]
    async fn no_error_text_holds_the_url_its_password_or_the_secret() {
        // Arrange: an answer that echoes the URL and the secret, and a port
        // where nothing listens.
        let recorder = Recorder::start().await;
        let path = "/services/T0001/B0002/XoXoSeCrEtToKeN";
        let echo = format!(r#"{{"error": "no such hook {path}", "key": "{WHSEC}"}}"#);
        recorder.reply(Reply::Body(403, echo));
        let answering = webhook(
            &format!(
                "http://user:hunter2pass@127.0.0.1:{}{path}?token=QuErYsEcReT",
                recorder.port()
            ),
            Some(WHSEC),
            WebhookBody::Notification,
        );
        let closed =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = webhook(
            &format!("http://user:hunter2pass@127.0.0.1:{closed}{path}"),
            Some(WHSEC),
            WebhookBody::Notification,
        );

        // Act
        let answered = answering.deliver(&sample()).await.unwrap_err().to_string();
        let unreachable = refused.deliver(&sample()).await.unwrap_err();

        // Assert
        assert!(matches!(unreachable, DeliveryError::Retry(_)), "{unreachable:?}");
        let unreachable = unreachable.to_string();
        assert!(answered.contains("403") && answered.contains("no such hook"), "{answered}");
        assert!(unreachable.contains("connection refused"), "{unreachable}");
        for text in [&answered, &unreachable] {
            for secret in
                ["XoXoSeCrEtToKeN", "hunter2pass", "QuErYsEcReT", "MfKQ9r8GKYqr", "127.0.0.1"]
            {
                assert!(!text.contains(secret), "{secret} in {text:?}");
            }
        }
    }
}
