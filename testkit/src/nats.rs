//! A throwaway `nats-server` with JetStream per test, owned by the test
//! process.
//!
//! `TestNats::start()` runs `nats-server -a 127.0.0.1 -p PORT -js -sd DIR` on
//! a free port with its JetStream store in a temp dir, and waits until a
//! client round trip works (INFO, CONNECT, PING, PONG). `start_with_token()`
//! and `start_with_user()` make it require a random token or a user and
//! random password (`--auth`, `--user`/`--pass`). A test can kill it
//! (connections refused), freeze it (SIGSTOP: connections accepted, no INFO
//! line), thaw it, and restart it on the same port and store dir, so streams
//! the test created (with its own client) survive. Dropping the value kills
//! the server and removes the temp dir.
//!
//! As root it runs as root: nats-server does not refuse it and only writes
//! its store dir.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::{
    child_command, make_secret, percent_encode, require_binary, Flavor, Server, TempDir,
};

/// Bound on `info()` and `round_trip()`.
const DEADLINE: Duration = Duration::from_secs(10);

/// A NATS server of its own for one test; see the module docs.
pub struct TestNats {
    server: Server<Nats>,
}

/// What a client must present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    Token(String),
    UserPassword { user: String, password: String },
}

struct Nats {
    auth: NatsAuth,
}

impl Flavor for Nats {
    const NAME: &'static str = "NATS";

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let mut cmd = child_command(binary(), None, dir, log);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("jetstream"));
        match &self.auth {
            NatsAuth::None => {}
            NatsAuth::Token(token) => {
                cmd.args(["--auth", token]);
            }
            NatsAuth::UserPassword { user, password } => {
                cmd.args(["--user", user, "--pass", password]);
            }
        }
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        round_trip(port, &self.auth).await.is_ok()
    }

    fn port_was_taken(log: &str) -> bool {
        log.to_ascii_lowercase().contains("address already in use")
    }
}

impl TestNats {
    /// Starts a server that needs no credentials and waits until it answers.
    pub async fn start() -> TestNats {
        TestNats::start_with(NatsAuth::None).await
    }

    /// Starts a server that requires a random token (`token()`).
    pub async fn start_with_token() -> TestNats {
        TestNats::start_with(NatsAuth::Token(make_secret("nats"))).await
    }

    /// Starts a server that requires user `healthd` and a random password.
    pub async fn start_with_user() -> TestNats {
        TestNats::start_with(NatsAuth::UserPassword {
            user: "healthd".into(),
            password: make_secret("nats"),
        })
        .await
    }

    /// Starts a server that requires `auth`.
    pub async fn start_with(auth: NatsAuth) -> TestNats {
        let dir = TempDir::new("nats", None);
        let log = dir.path().join("nats.log");
        TestNats { server: Server::start(Nats { auth }, dir, log).await }
    }

    /// The TCP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `nats://127.0.0.1:PORT`, without credentials.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// `url()` with the credentials in the user-info (`nats://TOKEN@...`,
    /// `nats://USER:PASSWORD@...`); `url()` if none are needed.
    pub fn url_with_credentials(&self) -> String {
        let port = self.port();
        match self.auth() {
            NatsAuth::None => self.url(),
            NatsAuth::Token(token) => format!("nats://{}@127.0.0.1:{port}", percent_encode(token)),
            NatsAuth::UserPassword { user, password } => format!(
                "nats://{}:{}@127.0.0.1:{port}",
                percent_encode(user),
                percent_encode(password)
            ),
        }
    }

    /// What the server requires.
    pub fn auth(&self) -> &NatsAuth {
        &self.server.flavor().auth
    }

    /// The token, if the server requires one.
    pub fn token(&self) -> Option<&str> {
        match self.auth() {
            NatsAuth::Token(token) => Some(token),
            _ => None,
        }
    }

    /// The JetStream store dir (kept across `restart()`).
    pub fn store_dir(&self) -> PathBuf {
        self.server.dir().join("jetstream")
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

    /// Starts the server again on the same port and store dir and waits
    /// until it answers.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the server: connections are accepted by the kernel, no INFO
    /// line comes. Panics if it is not running; a no-op if frozen.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen server. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// Connects and returns the JSON of the server's `INFO` line; bounded by
    /// 10 s.
    pub async fn info(&self) -> io::Result<String> {
        bounded(async {
            let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", self.port())).await?);
            read_info(&mut stream).await
        })
        .await
    }

    /// INFO, then CONNECT with the credentials and PING, until PONG (an
    /// `-ERR` line, e.g. "Authorization Violation", is an error); bounded by
    /// 10 s.
    pub async fn round_trip(&self) -> io::Result<()> {
        bounded(round_trip(self.port(), self.auth())).await
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

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| require_binary("nats-server", "nats-server"))
}

async fn bounded<T>(work: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer within 10 s")),
    }
}

async fn read_info(stream: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    match line.strip_prefix("INFO ") {
        Some(json) => Ok(json.trim_end().to_string()),
        None => Err(io::Error::new(io::ErrorKind::InvalidData, format!("not INFO: {line:?}"))),
    }
}

async fn round_trip(port: u16, auth: &NatsAuth) -> io::Result<()> {
    let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
    read_info(&mut stream).await?;
    let credentials = match auth {
        NatsAuth::None => String::new(),
        NatsAuth::Token(token) => format!(r#","auth_token":{}"#, json_string(token)),
        NatsAuth::UserPassword { user, password } => {
            format!(r#","user":{},"pass":{}"#, json_string(user), json_string(password))
        }
    };
    let connect = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"testkit\"{credentials}}}\r\nPING\r\n"
    );
    stream.get_mut().write_all(connect.as_bytes()).await?;
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        match line.trim_end() {
            "PONG" => return Ok(()),
            error if error.starts_with("-ERR") => {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, error.to_string()))
            }
            // INFO updates, PING from the server.
            _ => {}
        }
    }
}

/// A JSON string literal (control characters as `\u` escapes).
fn json_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
