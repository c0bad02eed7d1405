//! The `email` receiver: each notification is one message over SMTP
//! (lettre on tokio), sent to every `to` address. The connection is
//! upgraded with STARTTLS, which must succeed (`starttls`, port 587), is
//! TLS from the first byte (`tls`, port 465), or stays plain (`plain`, for
//! a relay nearby); the server's certificate is checked against the
//! system's roots plus those of `ca_file`. With a `username`, healthd logs
//! in with the password from `password_env`.
//!
//! The message is multipart/alternative: plain text and HTML that say the
//! same (every value HTML-escaped). Its subject reads like Alertmanager's
//! (`[FIRING:2] orders-api: db, cache`, `[RESOLVED] orders-api: db`), and
//! its Message-ID is made from the notification's id, so that a retry of
//! the same notification is recognisably the same message.
//!
//! A 4xx reply, a connection or TLS failure, or no answer is worth another
//! attempt; a 5xx reply (a recipient refused, a failed login) or a server
//! that cannot do what the settings ask (no STARTTLS, no common login
//! mechanism) is not. No error text holds the password.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use healthd_models::{Notification, NotificationState};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::alerts::receivers::{
    alert_line, headline, one_line, split, time, DeliveryError, Receiver,
};
use crate::base::secret::Secret;
use crate::checks::util::trust;
use crate::checks::BoxFuture;
use crate::config::alerts::{EmailSettings, ReceiverKind, ReceiverSettings, SmtpSecurity};

pub fn build(settings: &ReceiverSettings) -> anyhow::Result<Arc<dyn Receiver>> {
    let ReceiverKind::Email(email) = &settings.kind else {
        anyhow::bail!("not an email receiver");
    };
    Ok(Arc::new(EmailReceiver::new(email, settings.timeout)?))
}

struct EmailReceiver {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// `host:port`, for error messages.
    server: String,
    /// Scrubbed from every error text, should a server echo it.
    password: Option<Secret>,
}

impl EmailReceiver {
    fn new(email: &EmailSettings, timeout: Duration) -> anyhow::Result<EmailReceiver> {
        let from: Mailbox = email
            .from
            .parse()
            .with_context(|| format!("from: {:?} is not a mail address", email.from))?;
        let to = email
            .to
            .iter()
            .map(|to| to.parse().with_context(|| format!("to: {to:?} is not a mail address")))
            .collect::<anyhow::Result<Vec<Mailbox>>>()?;
        let tls = match email.security {
            SmtpSecurity::Starttls => Tls::Required(tls_parameters(email)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters(email)?),
            SmtpSecurity::Plain => Tls::None,
        };
        // "Dangerous" only in that the caller picks the TLS mode: done above.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&email.host)
            .port(email.port)
            .tls(tls)
            // Each command's deadline; the dispatcher bounds the whole attempt.
            .timeout(Some(timeout));
        if let (Some(username), Some(password)) = (&email.username, &email.password) {
            builder = builder
                .credentials(Credentials::new(username.clone(), password.expose().to_string()));
        }
        Ok(EmailReceiver {
            transport: builder.build(),
            from,
            to,
            server: format!("{}:{}", email.host, email.port),
            password: email.password.clone(),
        })
    }

    /// The message for `notification`; the same id makes the same
    /// Message-ID, subject and text.
    fn message(&self, notification: &Notification) -> Result<Message, DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(headline(notification))
            .message_id(Some(message_id(&notification.id, &self.from)))
            .date(SystemTime::from(notification.created_at))
            .user_agent(format!("healthd/{}", env!("CARGO_PKG_VERSION")));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        let mut message = builder
            .multipart(MultiPart::alternative_plain_html(text(notification), html(notification)))
            .map_err(|error| {
                DeliveryError::Refused(format!("the message cannot be built: {error}"))
            })?;
        // RFC 3834: no vacation replies to an alert.
        message.headers_mut().insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
        Ok(message)
    }

    /// What a failed attempt says, and whether another may succeed.
    fn failure(&self, error: &lettre::transport::smtp::Error) -> DeliveryError {
        let mut reason = format!("SMTP {}: {error}", self.server);
        if let Some(password) = &self.password {
            if !password.expose().is_empty() {
                reason = reason.replace(password.expose(), "[redacted]");
            }
        }
        if error.is_permanent() || error.is_client() {
            // A 5xx reply, or a server that cannot do what the settings
            // ask (no STARTTLS, no common login mechanism).
            DeliveryError::Refused(reason)
        } else {
            // A 4xx reply, no connection, a failed TLS handshake, a garbled
            // answer or none in time.
            DeliveryError::Retry(reason)
        }
    }
}

impl Receiver for EmailReceiver {
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let message = self.message(notification)?;
            match self.transport.send(message).await {
                Ok(_) => Ok(()),
                Err(error) => Err(self.failure(&error)),
            }
        })
    }
}

/// The system's roots, and those of `ca_file` besides.
fn tls_parameters(email: &EmailSettings) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(email.host.clone());
    if let Some(path) = &email.ca_file {
        let pem = trust::read_pem(path)?;
        let roots = Certificate::from_pem(&pem)
            .with_context(|| format!("ca_file: {} holds no usable certificate", path.display()))?;
        builder = builder.add_root_certificate(roots);
    }
    builder.build_rustls().context("the TLS settings for the SMTP server cannot be built")
}

/// `<ID@DOMAIN>`, DOMAIN from the sender's address.
fn message_id(id: &str, from: &Mailbox) -> String {
    format!("<{id}@{}>", from.email.domain())
}

/// The first line of the text: what happened, to what, where.
fn intro(notification: &Notification) -> String {
    let (firing, resolved) = split(notification);
    let what = match notification.state {
        NotificationState::Firing => format!(
            "{} firing{}",
            count(firing.len(), "alert"),
            if resolved.is_empty() {
                String::new()
            } else {
                format!(", {} resolved", resolved.len())
            }
        ),
        NotificationState::Resolved => format!("{} resolved", count(resolved.len(), "alert")),
    };
    format!(
        "{what} for {} on {} (route {})",
        one_line(&notification.service),
        one_line(&notification.instance),
        one_line(&notification.route)
    )
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

const TEST_NOTE: &str =
    "This is a test sent by `healthd test-alert` to check this receiver: nothing is wrong.";
const REMINDER_NOTE: &str = "A reminder: these alerts are still firing.";

/// The plain-text part.
fn text(notification: &Notification) -> String {
    let (firing, resolved) = split(notification);
    let mut text = String::new();
    if notification.test {
        let _ = writeln!(text, "{TEST_NOTE}\n");
    }
    if notification.reminder {
        let _ = writeln!(text, "{REMINDER_NOTE}\n");
    }
    let _ = writeln!(text, "{}", intro(notification));
    for (title, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(text, "\n{title}:");
        for alert in alerts.iter() {
            let _ = writeln!(text, "- {}", alert_line(alert));
            if !alert.tags.is_empty() {
                let tags: Vec<String> = alert.tags.iter().map(|tag| one_line(tag)).collect();
                let _ = writeln!(text, "  tags: {}", tags.join(", "));
            }
        }
    }
    let _ = write!(text, "\n-- \n{}\n", footer(notification));
    text
}

fn footer(notification: &Notification) -> String {
    format!(
        "healthd notification {} to receiver {}, made {} by {}",
        one_line(&notification.id),
        one_line(&notification.receiver),
        time(notification.created_at),
        one_line(&notification.instance)
    )
}

/// The HTML part: the text's content as a table, every value escaped.
fn html(notification: &Notification) -> String {
    let (firing, resolved) = split(notification);
    let mut html = String::from(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"></head>\n\
         <body style=\"font-family: sans-serif\">\n",
    );
    if notification.test {
        let _ = writeln!(html, "<p><strong>{}</strong></p>", escape(TEST_NOTE));
    }
    if notification.reminder {
        let _ = writeln!(html, "<p>{}</p>", escape(REMINDER_NOTE));
    }
    let colour = match notification.state {
        NotificationState::Firing => "#b00020",
        NotificationState::Resolved => "#1b5e20",
    };
    let _ = writeln!(html, "<h2 style=\"color: {colour}\">{}</h2>", escape(&intro(notification)));
    for (title, alerts) in [("Firing", &firing), ("Resolved", &resolved)] {
        if alerts.is_empty() {
            continue;
        }
        let _ = writeln!(html, "<h3>{title}</h3>");
        html.push_str(
            "<table cellpadding=\"4\" style=\"border-collapse: collapse\">\n\
             <tr><th align=\"left\">Check</th><th align=\"left\">Kind</th>\
             <th align=\"left\">Status</th><th align=\"left\">Since</th>\
             <th align=\"left\">Until</th><th align=\"left\">Output</th>\
             <th align=\"left\">Tags</th></tr>\n",
        );
        for alert in alerts.iter() {
            let name = if alert.critical {
                format!("<strong>{}</strong> (critical)", escape(&alert.component_id))
            } else {
                escape(&alert.component_id)
            };
            let _ = writeln!(
                html,
                "<tr>\n<td>{name}</td>\n<td>{}</td>\n<td>{}</td>\n<td>{}</td>\n<td>{}</td>\n\
                 <td>{}</td>\n<td>{}</td>\n</tr>",
                escape(&alert.kind),
                escape(&alert.status.to_string()),
                escape(&time(alert.started_at)),
                alert.ended_at.map(|ended| escape(&time(ended))).unwrap_or_default(),
                escape(alert.output.as_deref().unwrap_or_default()),
                escape(&alert.tags.join(", ")),
            );
        }
        html.push_str("</table>\n");
    }
    let _ = writeln!(
        html,
        "<p style=\"color: #666666; font-size: small\">{}</p>\n</body>\n</html>",
        escape(&footer(notification))
    );
    html
}

/// `text` safe inside an HTML element or a quoted attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::alerts::receivers::test_support::{at, firing, notification, resolved};
    use crate::base::secret::Secret;

    use super::*;

    fn email(port: u16) -> EmailSettings {
        EmailSettings {
            host: "127.0.0.1".into(),
            port,
            security: SmtpSecurity::Plain,
            username: Some("healthd".into()),
            password: Some(Secret::new("hunter2-secret".into())),
            from: "healthd <healthd@example.com>".into(),
            to: vec!["oncall@example.com".into(), "Ops <ops@example.org>".into()],
            ca_file: None,
        }
    }

    #[test]
    fn html_escapes_every_value() {
        // Arrange
        let mut evil = firing("<script>alert(1)</script>", true, at("2026-12-05T07:40:00Z"));
        evil.output = Some("a & b \"quoted\" 'single'".into());
        evil.tags = vec!["<b>".into()];
        let mut n = notification(vec![evil]);
        n.service = "<svc>".into();

        // Act
        let html = html(&n);

        // Assert
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<svc>") && !html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(html.contains("a &amp; b &quot;quoted&quot; &#39;single&#39;"), "{html}");
    }

    #[test]
    fn the_text_names_each_alert_and_the_notification() {
        // Arrange
        let since = at("2026-12-05T07:40:00Z");
        let n = notification(vec![
            firing("db", true, since),
            resolved(firing("cache", false, since), at("2026-12-05T07:45:00Z")),
        ]);

        // Act
        let text = text(&n);

        // Assert
        assert!(
            text.starts_with(
                "1 alert firing, 1 resolved for orders-api on web-1 (route databases)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n- db (postgres, critical): fail since 2026-12-05T07:40:00Z: connection refused\n"),
            "{text}"
        );
        assert!(text.contains("\n- cache (postgres): resolved at 2026-12-05T07:45:00Z"), "{text}");
        assert!(text.contains(&n.id), "{text}");
    }

    #[test]
    fn a_test_says_so_in_its_subject_and_its_text() {
        // Arrange
        let mut n = notification(vec![firing("healthd-test-alert", false, Utc::now())]);
        n.test = true;
        let receiver = EmailReceiver::new(&email(2525), Duration::from_secs(5)).unwrap();

        // Act
        let message = String::from_utf8(receiver.message(&n).unwrap().formatted()).unwrap();

        // Assert
        assert!(
            message.contains("Subject: [TEST] [FIRING:1] orders-api: healthd-test-alert\r\n"),
            "{message}"
        );
        assert!(text(&n).starts_with(TEST_NOTE), "{}", text(&n));
    }

    #[test]
    fn a_retry_is_the_same_message_id() {
        // Arrange
        let receiver = EmailReceiver::new(&email(2525), Duration::from_secs(5)).unwrap();
        let n = notification(vec![firing("db", true, at("2026-12-05T07:40:00Z"))]);

        // Act
        let first = String::from_utf8(receiver.message(&n).unwrap().formatted()).unwrap();
        let again = String::from_utf8(receiver.message(&n).unwrap().formatted()).unwrap();

        // Assert
        let id = format!("Message-ID: <{}@example.com>\r\n", n.id);
        assert!(first.contains(&id) && again.contains(&id), "{first}");
        assert!(first.contains("Content-Type: multipart/alternative"), "{first}");
        assert!(first.contains("Content-Type: text/plain; charset=utf-8"), "{first}");
        assert!(first.contains("Content-Type: text/html; charset=utf-8"), "{first}");
        assert!(first.contains("Auto-Submitted: auto-generated\r\n"), "{first}");
        assert!(first.contains("To: oncall@example.com, Ops <ops@example.org>\r\n"), "{first}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_and_never_shows_the_password() {
        // Arrange: a port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let receiver = EmailReceiver::new(&email(port), Duration::from_secs(5)).unwrap();
        let n = notification(vec![firing("db", true, Utc::now())]);

        // Act
        let error = receiver.deliver(&n).await.unwrap_err();

        // Assert
        let DeliveryError::Retry(reason) = error else { panic!("not retried: {error:?}") };
        assert!(reason.starts_with(&format!("SMTP 127.0.0.1:{port}: ")), "{reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}
