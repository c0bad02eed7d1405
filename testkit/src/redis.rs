//! A throwaway `redis-server` per test, owned by the test process.
//!
//! `TestRedis::start()` runs `redis-server` on a free port on 127.0.0.1 with
//! a random `requirepass`, no persistence (`--save ''`, `--appendonly no`)
//! and its working dir in a temp dir, and waits until it answers `PING`. A
//! test can kill it (connections refused), freeze it (SIGSTOP: connections
//! are accepted, nothing answers), thaw it, and restart it on the same port.
//! `start_replica()` starts a second server replicating this one (`ROLE`
//! says `slave`), for `expect_role = "master"`; `restart_loading()` restarts
//! it loading a real dataset slowly, so that for a while it answers every
//! command with `-LOADING` (see there). Dropping the value kills the server
//! and removes the temp dir.
//!
//! As root it runs as root: redis-server does not refuse it and needs no
//! other user's files. `command()` talks RESP to it directly, for setup and
//! for the tests of this crate; healthd's own client is what is under test.

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::{
    child_command, make_secret, percent_encode, require_binary, Flavor, Server, TempDir,
};

/// Bound on `command()`.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);
/// How long a replica may take to report its link to the master up.
const REPLICA_DEADLINE: Duration = Duration::from_secs(30);
/// Per key while loading slowly (`key-load-delay` is in microseconds).
const KEY_LOAD_DELAY: Duration = Duration::from_millis(1);

/// A Redis of its own for one test; see the module docs.
pub struct TestRedis {
    server: Server<Redis>,
}

struct Redis {
    password: String,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    /// Set while `restart_loading()` restarts the server: it loads slowly,
    /// and `-LOADING` counts as ready.
    loading_slowly: AtomicBool,
}

/// A RESP2 reply, as `TestRedis::command` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...`, `-LOADING ...`, `-NOAUTH ...`
    Error(String),
    Integer(i64),
    /// `None` for the null bulk string.
    Bulk(Option<String>),
    /// `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Flavor for Redis {
    const NAME: &'static str = "Redis";

    fn command(&self, dir: &std::path::Path, log: &std::path::Path, port: u16) -> Command {
        let mut cmd = child_command(binary(), None, dir, log);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--requirepass", &self.password, "--appendonly", "no", "--save", ""])
            .arg("--dir")
            .arg(dir)
            .args(["--dbfilename", "dump.rdb", "--logfile", ""])
            // A master waits 5 s by default for more replicas before a sync.
            .args(["--repl-diskless-sync-delay", "0"]);
        if let Some(master) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()])
                .args(["--masterauth", &self.password]);
        }
        if self.loading_slowly.load(Ordering::SeqCst) {
            let delay = KEY_LOAD_DELAY.as_micros().to_string();
            // The smallest interval: the server answers clients (with
            // -LOADING) every kilobyte it loads.
            cmd.args(["--key-load-delay", &delay])
                .args(["--loading-process-events-interval-bytes", "1024"]);
        }
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        match raw_command(port, Some(&self.password), &["PING"]).await {
            Ok(Reply::Status(status)) => status == "PONG",
            Ok(Reply::Error(error)) => {
                self.loading_slowly.load(Ordering::SeqCst) && error.starts_with("LOADING")
            }
            _ => false,
        }
    }
}

impl TestRedis {
    /// Starts a new server and waits until it answers `PING` (a few ms).
    pub async fn start() -> TestRedis {
        TestRedis::launch(None, make_secret("redis")).await
    }

    async fn launch(replica_of: Option<u16>, password: String) -> TestRedis {
        let dir = TempDir::new("redis", None);
        let log = dir.path().join("redis.log");
        let flavor = Redis { password, replica_of, loading_slowly: AtomicBool::new(false) };
        TestRedis { server: Server::start(flavor, dir, log).await }
    }

    /// Starts a replica of this server (same password, `--replicaof` and
    /// `--masterauth`) and waits until its link to this one is up. Its
    /// `ROLE` is `slave`, and writes to it fail with `-READONLY`.
    pub async fn start_replica(&self) -> TestRedis {
        let replica = TestRedis::launch(Some(self.port()), self.password().to_string()).await;
        let deadline = Instant::now() + REPLICA_DEADLINE;
        loop {
            let info = replica.command(&["INFO", "replication"]).await;
            if matches!(&info, Ok(Reply::Bulk(Some(text))) if text.contains("master_link_status:up"))
            {
                return replica;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the replica on port {} did not connect to its master on port {} within \
                     {REPLICA_DEADLINE:?} (last INFO: {info:?}); its log:\n{}",
                    replica.port(),
                    self.port(),
                    replica.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The TCP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `redis://127.0.0.1:PORT`, without the password (commands get NOAUTH).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    /// The `requirepass` password (random per server).
    pub fn password(&self) -> &str {
        &self.server.flavor().password
    }

    /// `redis://:PASSWORD@127.0.0.1:PORT` (the default user).
    pub fn url_with_password(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}", percent_encode(self.password()), self.port())
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

    /// Starts the server again on the same port (killing it first if it
    /// runs) and waits until it answers `PING`. The data set is empty again
    /// (nothing is saved), unless `restart_loading()` saved one.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the server: connections are accepted by the kernel, nothing
    /// answers. Panics if it is not running; a no-op if already frozen.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen server. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// Saves a data set (about one key per millisecond of `loading`) and
    /// restarts the server loading it with a per-key delay (the server's
    /// `key-load-delay`), so that it really is loading its data set for about
    /// `loading` and answers every command but AUTH with `-LOADING Redis is
    /// loading the dataset in memory`. Returns once it answers so; after the
    /// load it answers as usual, the keys in place.
    pub async fn restart_loading(&self, loading: Duration) {
        let keys = (loading.as_millis() / KEY_LOAD_DELAY.as_millis()).max(1);
        let value = "v".repeat(100);
        let names: Vec<String> = (0..keys).map(|i| format!("testkit:loading:{i}")).collect();
        let mut args = vec!["MSET"];
        for name in &names {
            args.extend([name.as_str(), value.as_str()]);
        }
        for step in [args, vec!["SAVE"]] {
            match self.command(&step).await {
                Ok(Reply::Status(_)) => {}
                other => panic!("{} before a slow load: {other:?}", step[0]),
            }
        }
        let flavor = self.server.flavor();
        flavor.loading_slowly.store(true, Ordering::SeqCst);
        self.server.restart().await;
        flavor.loading_slowly.store(false, Ordering::SeqCst);
    }

    /// Sends one command (after `AUTH`) over a new connection and reads its
    /// reply; bounded by 10 s (`TimedOut`, e.g. while frozen).
    pub async fn command(&self, args: &[&str]) -> io::Result<Reply> {
        match tokio::time::timeout(
            COMMAND_DEADLINE,
            raw_command(self.port(), Some(self.password()), args),
        )
        .await
        {
            Ok(reply) => reply,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply within 10 s")),
        }
    }

    /// The server's log (stdout: it logs there).
    pub fn log_path(&self) -> &std::path::Path {
        self.server.log_path()
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| require_binary("redis-server", "redis-server"))
}

/// Connects to 127.0.0.1:`port`, authenticates with `password` (if given)
/// and sends `args`; returns the command's reply (an AUTH error instead, if
/// that fails). Unbounded: the caller sets the deadline.
pub(crate) async fn raw_command(
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> io::Result<Reply> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut stream = BufReader::new(stream);
    let mut request = Vec::new();
    if let Some(password) = password {
        encode(&mut request, &["AUTH", password]);
    }
    encode(&mut request, args);
    stream.get_mut().write_all(&request).await?;
    if password.is_some() {
        if let reply @ Reply::Error(_) = read_reply(&mut stream).await? {
            return Ok(reply);
        }
    }
    read_reply(&mut stream).await
}

fn encode(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn read_reply(
    stream: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(rest.parse().map_err(|_| bad())?),
            "$" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut data = vec![0; len as usize + 2];
                    stream.read_exact(&mut data).await?;
                    data.truncate(len as usize);
                    Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
                }
            }
            "*" => {
                let len: i64 = rest.parse().map_err(|_| bad())?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(read_reply(stream).await?);
                    }
                    Reply::Array(Some(items))
                }
            }
            _ => return Err(bad()),
        })
    })
}
