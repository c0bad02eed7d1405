//! A throwaway `mosquitto` broker per test, owned by the test process.
//!
//! `TestMosquitto::start()` runs mosquitto on a free port of 127.0.0.1 that
//! requires user `healthd` and a random password (a `password_file` made
//! with `mosquitto_passwd`), keeps nothing on disk, and logs to its temp
//! dir. `start_with_acl(lines)` adds an ACL; `start_tls(files)` adds a second listener, on a port of its own,
//! that speaks TLS with the given certificate (see `certs`). A test can
//! kill it (connections refused), freeze it (SIGSTOP: connections accepted,
//! no CONNACK), thaw it and restart it on the same ports. Dropping the
//! value kills the broker and removes the temp dir.
//!
//! As root it stays root (`user root`): dropping to the `mosquitto` user
//! would clear the parent-death signal that ends it with the test process.
//! The machine's own Mosquitto on 1883 is never touched.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::certs::CertFiles;
use crate::process::{
    child_command, free_port, make_secret, require_binary, run_to_completion, Flavor, Server,
    TempDir,
};

/// The user every test broker requires.
pub const USER: &str = "healthd";

/// A Mosquitto of its own for one test; see the module docs.
pub struct TestMosquitto {
    server: Server<Mosquitto>,
}

struct Mosquitto {
    password: String,
    /// An `acl_file`'s lines, if the broker has one.
    acl: Option<String>,
    /// The TLS listener: its port and the certificate it serves.
    tls: Option<(u16, CertFiles)>,
}

impl Flavor for Mosquitto {
    const NAME: &'static str = "Mosquitto";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let config = dir.join("mosquitto.conf");
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut text = format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\n\
             persistence false\nlog_dest stderr\nlog_type all\n{}listener {port} 127.0.0.1\n",
            dir.join("passwd").display(),
            if root { "user root\n" } else { "" },
        );
        if let Some(acl) = &self.acl {
            let path = dir.join("acl");
            std::fs::write(&path, acl)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            text = format!("acl_file {}\n{text}", path.display());
        }
        if let Some((tls_port, files)) = &self.tls {
            text.push_str(&format!(
                "listener {tls_port} 127.0.0.1\ncertfile {}\nkeyfile {}\n",
                files.chain.display(),
                files.key.display()
            ));
        }
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut cmd = child_command(binary(), None, dir, log);
        cmd.arg("-c").arg(&config);
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        matches!(connect(port, USER, &self.password).await, Ok(0))
    }
}

impl TestMosquitto {
    /// Starts a broker that requires `USER` and a random password.
    pub async fn start() -> TestMosquitto {
        TestMosquitto::launch(None, None).await
    }

    /// As `start()`, with a second listener speaking TLS with `files`.
    pub async fn start_tls(files: &CertFiles) -> TestMosquitto {
        TestMosquitto::launch(Some((free_port(), files.clone())), None).await
    }

    /// As `start()`, with an `acl_file` of these lines (`user healthd`,
    /// `topic readwrite healthd/#`). Mosquitto 2.0 acknowledges a denied
    /// subscription as granted and then delivers nothing on it.
    pub async fn start_with_acl(acl: &str) -> TestMosquitto {
        TestMosquitto::launch(None, Some(acl.to_string())).await
    }

    async fn launch(tls: Option<(u16, CertFiles)>, acl: Option<String>) -> TestMosquitto {
        let dir = TempDir::new("mosquitto", None);
        let password = make_secret("mqtt");
        let passwd = dir.path().join("passwd");
        let log = dir.path().join("mosquitto.log");
        let mut make = child_command(passwd_binary(), None, dir.path(), &log);
        make.arg("-b").arg("-c").arg(&passwd).args([USER, &password]);
        run_to_completion(make, &log).await;
        TestMosquitto { server: Server::start(Mosquitto { password, acl, tls }, dir, log).await }
    }

    /// The plain listener's port on 127.0.0.1 (stays across `restart()`).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port())
    }

    /// `mqtts://127.0.0.1:PORT` of the TLS listener; panics without one.
    pub fn tls_url(&self) -> String {
        let (port, _) = self.server.flavor().tls.as_ref().expect("started with start_tls()");
        format!("mqtts://127.0.0.1:{port}")
    }

    /// The password of `USER` (random per broker).
    pub fn password(&self) -> &str {
        &self.server.flavor().password
    }

    /// SIGKILLs the broker and waits until it is gone. A no-op if not running.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the broker again on the same ports and waits until it answers.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the broker: connections are accepted, nothing answers.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen broker. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// The last lines of the broker's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| require_binary("mosquitto", "mosquitto"))
}

fn passwd_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| require_binary("mosquitto_passwd", "mosquitto"))
}

/// An MQTT 3.1.1 CONNECT with `user` and `password` to 127.0.0.1:`port`:
/// the CONNACK's return code (0 accepted, 5 not authorised); 2 s at most.
pub async fn connect(port: u16, user: &str, password: &str) -> io::Result<u8> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let string = |out: &mut Vec<u8>, text: &str| {
            out.extend_from_slice(&(text.len() as u16).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        };
        let mut body = Vec::new();
        string(&mut body, "MQTT");
        // Level 4 (3.1.1); user name, password, clean session; keep-alive 10 s.
        body.extend_from_slice(&[4, 0xC2, 0, 10]);
        string(&mut body, &format!("testkit-probe-{}", std::process::id()));
        string(&mut body, user);
        string(&mut body, password);
        let mut packet = vec![0x10];
        let mut length = body.len();
        loop {
            let mut byte = (length % 128) as u8;
            length /= 128;
            if length > 0 {
                byte |= 0x80;
            }
            packet.push(byte);
            if length == 0 {
                break;
            }
        }
        packet.extend_from_slice(&body);
        stream.write_all(&packet).await?;
        let mut ack = [0u8; 4];
        stream.read_exact(&mut ack).await?;
        if ack[0] != 0x20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a CONNACK"));
        }
        Ok(ack[3])
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no CONNACK within 2 s"))?
}
