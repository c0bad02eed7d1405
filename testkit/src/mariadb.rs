//! A throwaway MariaDB server per test, owned by the test process.
//!
//! `TestMariadb::start()` copies a freshly installed data dir into a new temp
//! dir and runs `mariadbd` on it, on a free port on 127.0.0.1 with its socket
//! and pid file in the temp dir, and waits until the server sends its
//! handshake greeting over TCP. The data dir is made once per test process
//! (`mariadb-install-db --auth-root-authentication-method=normal
//! --skip-test-db`, about 2 s) and copied for every server after that (a few
//! ms), so a test pays only for `mariadbd`'s own start. `root` has no
//! password, on the socket and from 127.0.0.1; `create_user` and
//! `create_database` set up what a check connects with. A test can kill the
//! server (connections refused), freeze it (SIGSTOP: connections accepted,
//! no greeting), thaw it, and restart it on the same port and data (InnoDB
//! recovers from the kill). Dropping the value kills the server and removes
//! the temp dir.
//!
//! TLS: `start_tls(names)` also gives the server a certificate for `names`
//! signed by a test CA (`ca_path()`), so a check can connect with
//! `require_ssl=true`; connections without TLS are still accepted. The
//! certificate and key are copies in the temp dir, owned by the server's
//! user.
//!
//! As root it runs as the `mysql` user: the temp dir belongs to that user and
//! both `mariadb-install-db` and `mariadbd` are spawned with its uid/gid
//! (not with `--user=mysql`, which would make mariadbd switch users itself
//! and so lose the parent-death signal). Every server reads no option file
//! (`--no-defaults`), so the machine's own MariaDB config never applies; it
//! runs small and fast: an 8 MiB buffer pool, no binary log, no performance
//! schema, no doublewrite, no sync per commit, no name resolution.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::certs::{LeafSpec, TestCerts};
use crate::process::{
    child_command, copy_tree, percent_encode, require_binary, run_as_when_root, run_to_completion,
    set_owner_and_mode, Flavor, RunAs, Server, TempDir, Template,
};

/// Bound on `greeting()` and on one `sql()` connection attempt.
const DEADLINE: Duration = Duration::from_secs(10);
/// Settings for both the install and every server: small and fast.
const SETTINGS: [&str; 3] =
    ["--skip-name-resolve", "--innodb-buffer-pool-size=8M", "--innodb-log-file-size=4M"];

/// A MariaDB of its own for one test; see the module docs.
pub struct TestMariadb {
    server: Server<Mariadb>,
    /// The CA and leaf of a TLS server (dropped after the server).
    certs: Option<TestCerts>,
}

struct Mariadb {
    data_dir: PathBuf,
    /// Options beyond the fixed ones (TLS).
    settings: Vec<String>,
}

impl Flavor for Mariadb {
    const NAME: &'static str = "MariaDB";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let mut cmd = child_command(&binaries().mariadbd, run_as(), dir, log);
        // --no-defaults must come first.
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--tmpdir={}", dir.display()))
            .args(SETTINGS)
            .args([
                "--skip-log-bin",
                "--performance-schema=OFF",
                "--innodb-doublewrite=0",
                // Written to the OS at each commit, synced once a second: what a
                // test set up survives a SIGKILL (not a machine crash).
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
            ])
            .args(&self.settings);
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        read_greeting(port).await.is_ok()
    }
}

impl TestMariadb {
    /// Starts a new server and waits for its greeting (about 1 s, plus about
    /// 2 s for the first server of the test process, which installs the data
    /// dir the others copy). Panics with the server's log if that fails.
    pub async fn start() -> TestMariadb {
        TestMariadb::launch(None).await
    }

    /// As `start()`, with TLS: a certificate for `names` (IP addresses become
    /// IP SANs) signed by the test CA that `ca_path()` names.
    pub async fn start_tls(names: &[&str]) -> TestMariadb {
        TestMariadb::launch(Some(names)).await
    }

    async fn launch(tls: Option<&[&str]>) -> TestMariadb {
        let template = template().await;
        let run_as = run_as();
        let dir = TempDir::new("mariadb", run_as);
        let data_dir = dir.path().join("data");
        copy_tree(&template, &data_dir, run_as).unwrap_or_else(|e| {
            panic!("copying {} to {}: {e}", template.display(), data_dir.display())
        });
        let mut settings = Vec::new();
        let certs = tls.map(|names| {
            let certs = TestCerts::new();
            let leaf = certs.mint(&LeafSpec::new(names));
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            for (from, to, mode) in [(&leaf.chain, &cert, 0o644), (&leaf.key, &key, 0o600)] {
                fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
                set_owner_and_mode(to, run_as, mode);
            }
            settings.push(format!("--ssl-cert={}", cert.display()));
            settings.push(format!("--ssl-key={}", key.display()));
            certs
        });
        let log = dir.path().join("mariadb.log");
        let server = Server::start(Mariadb { data_dir, settings }, dir, log).await;
        TestMariadb { server, certs }
    }

    /// The test CA that signed a TLS server's certificate; `None` without TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.certs.as_ref().map(TestCerts::ca_path)
    }

    /// The TCP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `mysql://root@127.0.0.1:PORT` (no password, no database).
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port())
    }

    /// `mysql://USER:PASSWORD@127.0.0.1:PORT` (both percent-encoded; append
    /// `/DATABASE` for a database).
    pub fn url_with_password(&self, user: &str, password: &str) -> String {
        format!(
            "mysql://{}:{}@127.0.0.1:{}",
            percent_encode(user),
            percent_encode(password),
            self.port()
        )
    }

    /// The server's Unix socket (root may connect there without a password).
    pub fn socket_path(&self) -> PathBuf {
        self.server.dir().join("sock")
    }

    /// The server's PID, or `None` after `kill()`.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn is_frozen(&self) -> bool {
        self.server.is_frozen()
    }

    /// SIGKILLs the server and waits until it is gone: connections break and
    /// new ones are refused. A no-op if it is not running.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and data (after InnoDB's
    /// crash recovery if it was killed) and waits for its greeting.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the server: connections are accepted by the kernel, no
    /// greeting comes. Panics if it is not running; a no-op if frozen.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen server. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// Connects over TCP and returns the server version from the handshake
    /// greeting (e.g. `10.11.19-MariaDB-0+deb12u1`); bounded by 10 s.
    pub async fn greeting(&self) -> io::Result<String> {
        match tokio::time::timeout(DEADLINE, read_greeting(self.port())).await {
            Ok(greeting) => greeting,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no greeting within 10 s")),
        }
    }

    /// Runs `sql` as root over the socket with the `mariadb` client and
    /// returns its output (tab-separated rows, no header). Panics with the
    /// client's message if it fails; do not call it while the server is
    /// frozen (the client would wait for it).
    pub async fn sql(&self, sql: &str) -> String {
        let mut cmd = Command::new(&binaries().client);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket_path().display()))
            .args(["--user=root", "--batch", "--skip-column-names"])
            .arg(format!("--connect-timeout={}", DEADLINE.as_secs()))
            .arg("--execute")
            .arg(sql);
        let output = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .expect("waiting for the mariadb client")
            .unwrap_or_else(|e| panic!("running {}: {e}", binaries().client.display()));
        if !output.status.success() {
            panic!(
                "mariadb client ({}) on the test server on port {}: {}",
                output.status,
                self.port(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates `user`@`%` identified by `password` (native password) with
    /// every privilege on every database, so that a wrong database name is
    /// "Unknown database" rather than "Access denied".
    pub async fn create_user(&self, user: &str, password: &str) {
        let (user, password) = (quote(user), quote(password));
        self.sql(&format!(
            "CREATE USER {user}@'%' IDENTIFIED BY {password}; \
             GRANT ALL PRIVILEGES ON *.* TO {user}@'%'"
        ))
        .await;
    }

    /// Creates a database.
    pub async fn create_database(&self, name: &str) {
        self.sql(&format!("CREATE DATABASE `{}`", name.replace('`', "``"))).await;
    }

    /// The server's log (stderr: it logs there).
    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

/// Reads the handshake packet: 3 bytes length, 1 byte sequence, then
/// protocol version 10 and the NUL-terminated server version. An error
/// packet (0xFF: too many connections, host blocked) is an error.
async fn read_greeting(port: u16) -> io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    match payload.first() {
        Some(10) => {
            let version = &payload[1..];
            let end = version.iter().position(|&b| b == 0).unwrap_or(version.len());
            Ok(String::from_utf8_lossy(&version[..end]).into_owned())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a greeting: {}", String::from_utf8_lossy(&payload)),
        )),
    }
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

// ---------------------------------------------------------------------------
// Binaries, user, and the installed data dir

struct Binaries {
    install_db: PathBuf,
    mariadbd: PathBuf,
    client: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| Binaries {
        install_db: require_binary("mariadb-install-db", "mariadb-server"),
        mariadbd: require_binary("mariadbd", "mariadb-server"),
        client: require_binary("mariadb", "mariadb-client"),
    })
}

/// The `mysql` user when we are root.
fn run_as() -> Option<RunAs> {
    static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();
    *RUN_AS.get_or_init(|| run_as_when_root("mysql", "mariadb-server"))
}

/// The data dir every server copies, installed once per process.
async fn template() -> PathBuf {
    static TEMPLATE: Template = Template::new();
    let dir = TEMPLATE
        .get("mariadbtemplate", run_as(), |dir| async move {
            let log = dir.join("install.log");
            let mut cmd = child_command(&binaries().install_db, run_as(), &dir, &log);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", dir.join("data").display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .args(SETTINGS);
            run_to_completion(cmd, &log).await;
        })
        .await;
    dir.join("data")
}
