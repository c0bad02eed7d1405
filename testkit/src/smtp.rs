//! A throwaway SMTP server per test: aiosmtpd (from the pinned venv of
//! [`crate::python`]) running `testkit/smtp_server.py` on a free port of
//! 127.0.0.1, owned by the test process.
//!
//! [`TestSmtp::start`] takes an [`SmtpSpec`]: STARTTLS that the server
//! requires before MAIL (with a certificate from [`crate::certs`]), TLS from
//! the first byte, or plain; optionally AUTH (PLAIN or LOGIN) as [`USER`]
//! with a random password; optionally one fixed reply to every DATA (a 4xx
//! or 5xx, to see how a client takes it). Every message received is kept in
//! the temp dir as sent, with its envelope, whether TLS was on, and who
//! logged in: [`TestSmtp::messages`], or [`TestSmtp::wait_for_messages`]
//! with a deadline. A test can kill the server (connections refused) and
//! restart it on the same port. Dropping the value kills it and removes
//! the temp dir.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::certs::CertFiles;
use crate::process::{child_command, make_secret, Flavor, Server, TempDir};

/// The user a server with AUTH accepts.
pub const USER: &str = "healthd";

const SCRIPT: &str = include_str!("../smtp_server.py");
const POLL: Duration = Duration::from_millis(20);

/// How a client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain, then STARTTLS, which the server requires before MAIL.
    Starttls,
    /// TLS from the first byte (what port 465 speaks).
    Tls,
    /// No TLS at all.
    Plain,
}

/// What server to start; see the module docs.
#[derive(Clone, Debug)]
pub struct SmtpSpec {
    pub security: Security,
    /// The certificate it serves (not for `Plain`).
    pub cert: Option<CertFiles>,
    /// Whether AUTH as [`USER`] is required.
    pub auth: bool,
    /// A reply to every DATA instead of taking the message
    /// (`"451 4.3.0 try again later"`).
    pub reply: Option<String>,
}

impl SmtpSpec {
    /// STARTTLS, required, with `cert` (its `chain` and `key`).
    pub fn starttls(cert: &CertFiles) -> SmtpSpec {
        SmtpSpec {
            security: Security::Starttls,
            cert: Some(cert.clone()),
            auth: false,
            reply: None,
        }
    }

    /// TLS from the first byte, with `cert`.
    pub fn tls(cert: &CertFiles) -> SmtpSpec {
        SmtpSpec { security: Security::Tls, cert: Some(cert.clone()), auth: false, reply: None }
    }

    /// No TLS.
    pub fn plain() -> SmtpSpec {
        SmtpSpec { security: Security::Plain, cert: None, auth: false, reply: None }
    }

    /// AUTH as [`USER`] with a random password, required before MAIL.
    pub fn with_auth(mut self) -> SmtpSpec {
        self.auth = true;
        self
    }

    /// Every DATA answered with `reply`; no message is kept.
    pub fn replying(mut self, reply: &str) -> SmtpSpec {
        self.reply = Some(reply.to_string());
        self
    }
}

/// One message as the server received it.
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// The bytes after DATA, as sent (dot-unstuffed, CRLF line ends).
    pub raw: Vec<u8>,
    /// The envelope's sender (MAIL FROM).
    pub mail_from: String,
    /// The envelope's recipients (RCPT TO).
    pub rcpt_to: Vec<String>,
    /// Whether the session was encrypted (after STARTTLS, or from the start).
    pub tls: bool,
    /// The user that logged in, if one did.
    pub auth: Option<String>,
}

impl ReceivedMail {
    /// `raw` as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

/// An SMTP server of its own for one test; see the module docs.
pub struct TestSmtp {
    server: Server<Smtp>,
}

struct Smtp {
    python: PathBuf,
    spec: SmtpSpec,
    password: String,
}

impl Flavor for Smtp {
    const NAME: &'static str = "aiosmtpd";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let mut cmd = child_command(&self.python, None, dir, log);
        cmd.arg(dir.join("smtp_server.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--dir")
            .arg(mail_dir(dir))
            .arg("--security")
            .arg(match self.spec.security {
                Security::Starttls => "starttls",
                Security::Tls => "tls",
                Security::Plain => "plain",
            })
            // Python's output unbuffered, so the log is current.
            .env("PYTHONUNBUFFERED", "1");
        if let Some(cert) = &self.spec.cert {
            cmd.arg("--chain").arg(&cert.chain).arg("--key").arg(&cert.key);
        }
        if self.spec.auth {
            cmd.arg("--user").arg(USER).env("TESTKIT_SMTP_PASSWORD", &self.password);
        }
        if let Some(reply) = &self.spec.reply {
            cmd.arg("--reply").arg(reply);
        }
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
            return false;
        };
        if self.spec.security == Security::Tls {
            // The greeting comes after a handshake; being bound is enough.
            return true;
        }
        let mut greeting = [0u8; 4];
        stream.read_exact(&mut greeting).await.is_ok() && &greeting == b"220 "
    }

    fn port_was_taken(log: &str) -> bool {
        log.to_ascii_lowercase().contains("address already in use")
    }
}

fn mail_dir(dir: &Path) -> PathBuf {
    dir.join("mail")
}

impl TestSmtp {
    /// Starts a server as `spec` says and waits until it answers. Installs
    /// the Python tools on first use. Panics with the server's log if it
    /// does not start.
    pub async fn start(spec: SmtpSpec) -> TestSmtp {
        assert!(
            spec.cert.is_some() || spec.security == Security::Plain,
            "STARTTLS and TLS need a certificate"
        );
        let python = tokio::task::spawn_blocking(crate::python::python)
            .await
            .expect("installing the Python tools");
        let dir = TempDir::new("smtp", None);
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SCRIPT)
            .unwrap_or_else(|e| panic!("writing {}: {e}", script.display()));
        std::fs::create_dir(mail_dir(dir.path())).expect("creating the mail dir");
        let log = dir.path().join("smtp.log");
        let smtp = Smtp { python, spec, password: make_secret("smtp") };
        TestSmtp { server: Server::start(smtp, dir, log).await }
    }

    /// The port on 127.0.0.1 (stays across `restart()`).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The password of [`USER`] (random per server; used only with AUTH).
    pub fn password(&self) -> &str {
        &self.server.flavor().password
    }

    /// The messages received so far, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let dir = mail_dir(self.server.dir());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".eml").map(str::to_string))
            .collect();
        names.sort();
        names.iter().map(|name| read_mail(&dir, name)).collect()
    }

    /// The first `n` messages, once that many have arrived; panics with
    /// what did arrive and the server's log after `deadline`.
    pub async fn wait_for_messages(&self, n: usize, deadline: Duration) -> Vec<ReceivedMail> {
        let started = Instant::now();
        loop {
            let mut messages = self.messages();
            if messages.len() >= n {
                messages.truncate(n);
                return messages;
            }
            assert!(
                started.elapsed() < deadline,
                "{} of {n} message(s) within {deadline:?}:\n{}\nthe server's log:\n{}",
                messages.len(),
                messages.iter().map(ReceivedMail::text).collect::<Vec<_>>().join("\n----\n"),
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs the server and waits until it is gone (connections refused).
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn read_mail(dir: &Path, name: &str) -> ReceivedMail {
    let read = |extension: &str| {
        let path = dir.join(format!("{name}.{extension}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let raw = read("eml");
    let meta = String::from_utf8(read("meta")).expect("the meta file is UTF-8");
    let mut mail =
        ReceivedMail { raw, mail_from: String::new(), rcpt_to: Vec::new(), tls: false, auth: None };
    for line in meta.lines() {
        match line.split_once(' ') {
            Some(("mail_from", value)) => mail.mail_from = value.to_string(),
            Some(("rcpt_to", value)) => mail.rcpt_to.push(value.to_string()),
            Some(("tls", value)) => mail.tls = value == "yes",
            Some(("auth", value)) => mail.auth = Some(value.to_string()),
            _ => {}
        }
    }
    mail
}
