//! A throwaway `dnsmasq` per test, answering for a made-up zone on a free
//! port of 127.0.0.1 (UDP and TCP), owned by the test process.
//!
//! `TestDnsmasq::start(hosts, records)` writes `hosts` (lines of a hosts
//! file: A and AAAA records) and a config with `records` (dnsmasq lines
//! such as `txt-record=...` or `mx-host=...`), and runs `dnsmasq -d` with no
//! upstream servers (`no-resolv`), not reading `/etc/hosts`, and
//! authoritative for `test` (`local=/test/`: an unknown name there is
//! NXDOMAIN; a name outside it is REFUSED). It never binds port 53 and
//! starts no system service: Debian's `dnsmasq-base` is installed when
//! missing (as root), the package with the binary and no service.
//!
//! A test can rewrite the hosts (`set_hosts`, applied with SIGHUP), kill
//! the server (queries go unanswered), freeze it (SIGSTOP), thaw it and
//! restart it on the same port. Dropping the value kills the server and
//! removes the temp dir.
//!
//! `-d` keeps it in the foreground and keeps its user: as root it stays
//! root instead of dropping to `nobody`, which would clear the parent-death
//! signal that ends it with the test process.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::debian::require_package;
use crate::process::{child_command, Flavor, Server, TempDir};

/// A dnsmasq of its own for one test; see the module docs.
pub struct TestDnsmasq {
    server: Server<Dnsmasq>,
}

struct Dnsmasq {
    records: String,
}

impl Flavor for Dnsmasq {
    const NAME: &'static str = "dnsmasq";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let config = dir.join("dnsmasq.conf");
        let text = format!(
            "listen-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nlocal=/test/\n\
             addn-hosts={}\nlog-queries\n{}\n",
            dir.join("hosts").display(),
            self.records
        );
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut cmd = child_command(binary(), None, dir, log);
        cmd.arg("-d")
            .arg("--log-facility=-")
            .arg(format!("--port={port}"))
            .arg(format!("--conf-file={}", config.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        query(port, "testkit-probe.test", 1).await.is_ok()
    }
}

impl TestDnsmasq {
    /// Starts a server with `hosts` (hosts-file lines) and `records`
    /// (dnsmasq config lines), and waits until it answers a query.
    pub async fn start(hosts: &str, records: &str) -> TestDnsmasq {
        let dir = TempDir::new("dnsmasq", None);
        let hosts_path = dir.path().join("hosts");
        std::fs::write(&hosts_path, hosts)
            .unwrap_or_else(|e| panic!("writing {}: {e}", hosts_path.display()));
        let log = dir.path().join("dnsmasq.log");
        let flavor = Dnsmasq { records: records.to_string() };
        TestDnsmasq { server: Server::start(flavor, dir, log).await }
    }

    /// The port on 127.0.0.1 (UDP and TCP); it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `127.0.0.1:PORT`, as a `servers` entry.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Replaces the hosts-file records and makes the server read them again
    /// (SIGHUP). Returns at once; the change applies within milliseconds.
    pub fn set_hosts(&self, hosts: &str) {
        let path = self.server.dir().join("hosts");
        std::fs::write(&path, hosts).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let pid = self.server.pid().expect("set_hosts(): dnsmasq is not running");
        // SAFETY: kill only sends a signal to our own, unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    }

    /// The server's PID, or `None` after `kill()`.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// SIGKILLs the server and waits until it is gone: queries go unanswered
    /// (UDP) or are refused (TCP). A no-op if it is not running.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the server: queries are queued by the kernel, never answered.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen server. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// Sends one query (`qtype` 1 is A, 16 TXT) over UDP and returns the
    /// response code and the number of answers; bounded by 2 s.
    pub async fn query(&self, name: &str, qtype: u16) -> io::Result<(u8, u16)> {
        query(self.port(), name, qtype).await
    }

    /// The last lines of the server's log (every query it answered).
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| require_package("/usr/sbin/dnsmasq", "dnsmasq-base"))
}

/// A DNS query over UDP to 127.0.0.1:`port`: (rcode, answer count).
async fn query(port: u16, name: &str, qtype: u16) -> io::Result<(u8, u16)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(("127.0.0.1", port)).await?;
    let id: u16 = (std::process::id() as u16) ^ port;
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    // Recursion desired; one question.
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    socket.send(&packet).await?;
    let mut answer = [0u8; 1500];
    let read = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut answer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no DNS answer within 2 s"))??;
    if read < 12 || answer[..2] != id.to_be_bytes() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not an answer to the query"));
    }
    Ok((answer[3] & 0x0f, u16::from_be_bytes([answer[6], answer[7]])))
}
