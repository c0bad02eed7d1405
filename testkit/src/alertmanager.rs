//! A throwaway Prometheus Alertmanager per test, owned by the test process.
//!
//! `TestAlertmanager::start(webhook)` runs Debian's `prometheus-alertmanager`
//! (installed when missing, as root, with no service started) on a free
//! port of 127.0.0.1, with gossip off (`--cluster.listen-address=` empty, so
//! no second port), its silences and notification log in its temp dir, and
//! one route to one webhook receiver at `webhook` with `send_resolved`.
//! Alerts are grouped by `alertname` and the group is told after 1 s
//! (`group_wait`) and then at most every second (`group_interval`), so a
//! test sees Alertmanager's decisions within seconds. `start` returns once
//! `/-/ready` answers 200. Dropping the value kills Alertmanager and
//! removes the temp dir. The machine's own Alertmanager (9093) is never
//! touched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::debian::require_package;
use crate::process::{child_command, Flavor, Server, TempDir};

/// An Alertmanager of its own for one test; see the module docs.
pub struct TestAlertmanager {
    server: Server<Alertmanager>,
}

struct Alertmanager {
    webhook: String,
}

impl Flavor for Alertmanager {
    const NAME: &'static str = "Alertmanager";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let config = dir.join("alertmanager.yml");
        let text = format!(
            "route:\n  receiver: recorder\n  group_by: [alertname]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: recorder\n    webhook_configs:\n      - url: {:?}\n        \
             send_resolved: true\n",
            self.webhook
        );
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut cmd = child_command(binary(), None, dir, log);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug");
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        get(port, "/-/ready").await.is_some_and(|(status, _)| status == 200)
    }

    fn port_was_taken(log: &str) -> bool {
        // Go writes "bind: address already in use".
        log.to_ascii_lowercase().contains("address already in use")
    }
}

impl TestAlertmanager {
    /// Starts Alertmanager with its one receiver posting to `webhook` (a
    /// full URL) and waits until it is ready.
    pub async fn start(webhook: &str) -> TestAlertmanager {
        let dir = TempDir::new("alertmanager", None);
        let log = dir.path().join("alertmanager.log");
        let flavor = Alertmanager { webhook: webhook.to_string() };
        TestAlertmanager { server: Server::start(flavor, dir, log).await }
    }

    /// `http://127.0.0.1:PORT`, the base URL its API v2 is under.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Its log (debug level: every alert received and notification sent).
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        require_package("/usr/bin/prometheus-alertmanager", "prometheus-alertmanager")
    })
}

/// A GET over a fresh connection: the status and the body; `None` when
/// there is no answer within 2 s.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split(' ').nth(1)?.parse().ok()?;
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}
