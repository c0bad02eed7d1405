//! The `email` receiver end to end, with the real binary and a real SMTP
//! server (aiosmtpd, from testkit): a failing check routed to it is mailed
//! over STARTTLS, logged in, as plain text and HTML naming the check, and
//! so is its resolution; `healthd test-alert` sends one marked message and
//! exits 0, exits 1 with the reason (never the password) when delivery
//! fails, and 2 when the receiver's name or the config is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use healthd_testkit::certs::TestCerts;
use healthd_testkit::smtp::{ReceivedMail, SmtpSpec, TestSmtp, USER};

use crate::support::app::spawn_binary;

const DEADLINE: Duration = Duration::from_secs(30);

/// A scratch dir for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "healthd-email-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `[[receivers]]` entry named `mail` for the server on `port`, logging in
/// as `USER` with the password in `SMTP_PASSWORD`.
fn receiver(port: u16, security: &str, ca_file: &Path) -> String {
    format!(
        "[[receivers]]\nname = \"mail\"\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         security = \"{security}\"\nusername = \"{USER}\"\npassword_env = \"SMTP_PASSWORD\"\n\
         from = \"healthd <healthd@example.com>\"\nto = [\"oncall@example.com\"]\n\
         ca_file = \"{}\"\ntimeout = \"5s\"\n",
        ca_file.display()
    )
}

/// Runs `healthd test-alert --receiver NAME --config FILE` with `env`.
async fn test_alert(config: &str, receiver: &str, env: &[(&str, &str)]) -> Output {
    let scratch = Scratch::new();
    let path = scratch.0.join("healthd.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_healthd"));
    command
        .args(["test-alert", "--receiver", receiver, "--config"])
        .arg(&path)
        .env_remove("HEALTHD_CONFIG")
        .env_remove("HEALTHD_LISTEN")
        .env_remove("SMTP_PASSWORD")
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("test-alert ends within the deadline")
        .expect("test-alert runs")
}

/// A received message taken apart: its headers (unfolded) and the decoded
/// text of its plain and HTML parts.
#[derive(Debug)]
struct Mail {
    headers: Vec<(String, String)>,
    plain: String,
    html: String,
}

impl Mail {
    fn parse(received: &ReceivedMail) -> Mail {
        let text = received.text();
        let (head, body) = split_head(&text);
        let top = headers(head);
        let content_type = header(&top, "content-type").unwrap_or_default();
        assert!(content_type.starts_with("multipart/alternative"), "{text}");
        let boundary = content_type
            .split("boundary=")
            .nth(1)
            .map(|rest| rest.trim_matches('"').split('"').next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no boundary: {content_type}"));
        let (mut plain, mut html) = (None, None);
        for part in body.split(&format!("--{boundary}")).skip(1) {
            if part.starts_with("--") {
                break;
            }
            let (head, body) = split_head(part.trim_start_matches("\r\n"));
            let part_headers = headers(head);
            let kind = header(&part_headers, "content-type").unwrap_or_default();
            let decoded = decode(header(&part_headers, "content-transfer-encoding"), body);
            if kind.starts_with("text/plain") {
                plain = Some(decoded);
            } else if kind.starts_with("text/html") {
                html = Some(decoded);
            }
        }
        Mail {
            headers: top,
            plain: plain.unwrap_or_else(|| panic!("no text/plain part: {text}")),
            html: html.unwrap_or_else(|| panic!("no text/html part: {text}")),
        }
    }

    fn header(&self, name: &str) -> String {
        header(&self.headers, name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", self.headers))
    }
}

fn split_head(text: &str) -> (&str, &str) {
    text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of the headers: {text}"))
}

fn headers(head: &str) -> Vec<(String, String)> {
    head.replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect()
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone())
}

/// A part's body per its Content-Transfer-Encoding.
fn decode(encoding: Option<String>, body: &str) -> String {
    match encoding.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("base64") => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD.decode(compact).unwrap();
            String::from_utf8(bytes).unwrap()
        }
        Some("quoted-printable") => {
            let joined = body.replace("=\r\n", "");
            let bytes = joined.as_bytes();
            let mut out = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                if bytes[at] == b'=' && at + 2 < bytes.len() {
                    let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    at += 3;
                } else {
                    out.push(bytes[at]);
                    at += 1;
                }
            }
            String::from_utf8(out).unwrap()
        }
        _ => body.to_string(),
    }
}

#[tokio::test]
async fn a_failing_check_is_mailed_over_starttls_and_so_is_its_resolution() {
    // Arrange: a file check on a file that is not there yet, routed to a
    // mail server that requires STARTTLS and a login.
    let certs = TestCerts::new();
    let smtp = TestSmtp::start(SmtpSpec::starttls(&certs.valid()).with_auth()).await;
    let scratch = Scratch::new();
    let backup = scratch.0.join("orders.dump");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nservice_id = \"orders-api\"\n\
         [[checks]]\nname = \"nightly-backup\"\nkind = \"file\"\npath = \"{}\"\n\
         interval = \"300ms\"\ntimeout = \"100ms\"\nretries = 0\n\
         {}\
         [[alerts]]\nname = \"backups\"\nreceiver = \"mail\"\nchecks = [\"nightly-backup\"]\n\
         group_wait = \"0s\"\ngroup_interval = \"500ms\"\n",
        backup.display(),
        receiver(smtp.port(), "starttls", certs.ca_path())
    );

    // Act: the check fails (no file), then passes (the file appears).
    let _binary = spawn_binary(&config, &[], &[("SMTP_PASSWORD", smtp.password())]).await;
    let firing = smtp.wait_for_messages(1, DEADLINE).await.remove(0);
    std::fs::write(&backup, b"dump").unwrap();
    let resolved = smtp.wait_for_messages(2, DEADLINE).await.remove(1);

    // Assert: both came over TLS, logged in, to the configured address.
    println!("--- the firing message as received ---\n{}", firing.text());
    for received in [&firing, &resolved] {
        assert!(received.tls, "not over TLS: {}", received.text());
        assert_eq!(received.auth.as_deref(), Some(USER));
        assert_eq!(received.mail_from, "healthd@example.com");
        assert_eq!(received.rcpt_to, ["oncall@example.com"]);
        assert!(!received.text().contains(smtp.password()), "{}", received.text());
    }
    let mail = Mail::parse(&firing);
    assert_eq!(mail.header("subject"), "[FIRING:1] orders-api: nightly-backup");
    assert_eq!(mail.header("from"), "healthd <healthd@example.com>");
    assert_eq!(mail.header("auto-submitted"), "auto-generated");
    let id = mail.header("message-id");
    assert!(id.starts_with("<ntf_") && id.ends_with("@example.com>"), "{id}");
    assert!(
        mail.plain.contains("- nightly-backup (file, critical): fail since ")
            && mail.plain.contains(": not found\r\n"),
        "{}",
        mail.plain
    );
    assert!(mail.html.contains("<strong>nightly-backup</strong>"), "{}", mail.html);
    assert!(mail.html.contains("<td>not found</td>"), "{}", mail.html);

    let mail = Mail::parse(&resolved);
    assert_eq!(mail.header("subject"), "[RESOLVED] orders-api: nightly-backup");
    assert_ne!(mail.header("message-id"), id, "a new notification, a new Message-ID");
    assert!(
        mail.plain.contains("- nightly-backup (file, critical): resolved at "),
        "{}",
        mail.plain
    );
    assert!(mail.html.contains("<h3>Resolved</h3>"), "{}", mail.html);
}

#[tokio::test]
async fn test_alert_sends_one_marked_message_and_exits_0() {
    // Arrange
    let certs = TestCerts::new();
    let smtp = TestSmtp::start(SmtpSpec::starttls(&certs.valid()).with_auth()).await;
    let config = receiver(smtp.port(), "starttls", certs.ca_path());

    // Act
    let output = test_alert(&config, "mail", &[("SMTP_PASSWORD", smtp.password())]).await;

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "sent to mail\n");
    let received = smtp.wait_for_messages(1, DEADLINE).await.remove(0);
    assert!(received.tls);
    let mail = Mail::parse(&received);
    let subject = mail.header("subject");
    assert!(subject.starts_with("[TEST] [FIRING:1] "), "{subject}");
    assert!(subject.ends_with(": healthd-test-alert"), "{subject}");
    assert!(
        mail.plain.starts_with("This is a test sent by `healthd test-alert`"),
        "{}",
        mail.plain
    );
    assert!(mail.html.contains("healthd-test-alert"), "{}", mail.html);
}

#[tokio::test]
async fn test_alert_over_implicit_tls_reports_a_refusal_and_exits_1() {
    // Arrange: TLS from the first byte; the server refuses every message.
    let certs = TestCerts::new();
    let spec = SmtpSpec::tls(&certs.valid()).with_auth().replying("554 5.7.1 no mail today");
    let smtp = TestSmtp::start(spec).await;
    let config = receiver(smtp.port(), "tls", certs.ca_path());

    // Act
    let output = test_alert(&config, "mail", &[("SMTP_PASSWORD", smtp.password())]).await;

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("permanent error (554)"), "{stderr}");
    assert!(stderr.contains("no mail today"), "{stderr}");
    assert!(!stderr.contains(smtp.password()), "{stderr}");
}

#[tokio::test]
async fn test_alert_against_a_closed_port_exits_1_without_the_password() {
    // Arrange: a port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let certs = TestCerts::new();
    let config = receiver(port, "starttls", certs.ca_path());
    let password = "s3cret-pa55word-never-shown";

    // Act
    let output = test_alert(&config, "mail", &[("SMTP_PASSWORD", password)]).await;

    // Assert
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("SMTP 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    assert!(output.stdout.is_empty(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[tokio::test]
async fn test_alert_exits_2_for_an_unknown_receiver_or_a_bad_config() {
    // Arrange
    let certs = TestCerts::new();
    let config = receiver(2525, "starttls", certs.ca_path());

    // Act
    let unknown = test_alert(&config, "pager", &[("SMTP_PASSWORD", "x")]).await;
    let no_password = test_alert(&config, "mail", &[]).await;

    // Assert: the known receivers are listed; the config's problem named.
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no receiver is named \"pager\": the config has \"mail\""), "{stderr}");
    let stderr = String::from_utf8_lossy(&no_password.stderr);
    assert_eq!(no_password.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("receivers[0].password_env: environment variable SMTP_PASSWORD"),
        "{stderr}"
    );
}

#[test]
fn the_readmes_email_example_is_a_valid_config() {
    // Arrange
    let block = healthd_testkit::readme::readme_block("email-example");
    let env = BTreeMap::from([("SMTP_PASSWORD".to_string(), "hunter2".to_string())]);

    // Act
    let settings = healthd::Settings::parse(&block, "README.md", &env);

    // Assert
    if let Err(error) = settings {
        panic!("the README's email example is refused:\n{error}");
    }
}
