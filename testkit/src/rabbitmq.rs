//! A throwaway RabbitMQ node, owned by the test process: one per test
//! (`start()`) or one shared by every test of a test binary (`shared()`).
//!
//! `TestRabbitmq::start()` runs the machine's `rabbitmq-server` (Debian
//! package `rabbitmq-server`) as a node of its own, `healthd-test-PID-N@localhost`,
//! with everything it reads or writes in a temp dir: its config
//! (`rabbitmq.conf`: a user `healthd` with a random password, no loopback
//! restriction, console logging only), an empty plugin list, an empty
//! `rabbitmq-env.conf` (so `/etc/rabbitmq/rabbitmq-env.conf`, which names the
//! machine's node, is never read), its Mnesia and log dirs, and `HOME` with an
//! Erlang cookie of its own. AMQP listens on a free port on 127.0.0.1, Erlang
//! distribution on another one (a new one each start: only epmd needs to
//! know it). It waits until a real AMQP 0-9-1 handshake with its credentials
//! works (about 2 to 5 s on two busy cores: an Erlang VM boots, and a fresh
//! node creates its database; a restart about 2 to 3 s). A test can kill it (connections refused), freeze it (SIGSTOP:
//! connections accepted, no `Connection.Start`), thaw it, and restart it on
//! the same port and data dir (what the node had not yet written out when it
//! was killed, such as a queue declared a moment before, may be lost, as
//! after any crash). Dropping the value kills the VM and every process under
//! it and removes the temp dir.
//!
//! The machine's own node is never touched: ours has its own name, ports,
//! cookie and files, and nothing here calls `rabbitmqctl`. Both register
//! with the machine's epmd (port 4369), as any two nodes on one host do; if
//! no epmd runs, the VM starts one that outlives the tests (it is not ours to
//! stop).
//!
//! How it is started: not through Debian's `/usr/sbin/rabbitmq-server`,
//! a wrapper that switches to the `rabbitmq` user with `su` and sends the
//! output to `/var/log/rabbitmq`, but through the script it wraps
//! (`/usr/lib/rabbitmq/bin/rabbitmq-server`), with `RABBITMQ_ALLOW_INPUT`
//! set so that the script `exec`s the VM instead of waiting on it in a
//! shell: then the VM is our child and gets the parent-death signal (with
//! `-noinput` added back, since the VM must not read stdin). As root it runs
//! as root: the VM does not refuse it, and it writes only its temp dir, so
//! the `rabbitmq` user would add a chown and nothing else.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::process::{
    child_command, free_port, make_secret, percent_encode, remove_at_exit, require_binary,
    set_owner_and_mode, Flavor, Server, TempDir,
};

/// Bound on `handshake()`.
const DEADLINE: Duration = Duration::from_secs(10);
/// The user every test node has.
const USER: &str = "healthd";
/// AMQP 0-9-1's protocol header.
const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Larger frames than this from the broker during a handshake are garbage.
const MAX_FRAME: u32 = 1 << 20;

/// A RabbitMQ node of its own for one test, or shared by a test binary; see
/// the module docs.
pub struct TestRabbitmq {
    server: Server<Rabbitmq>,
    started_in: Duration,
}

struct Rabbitmq {
    node: String,
    password: String,
}

impl Flavor for Rabbitmq {
    const NAME: &'static str = "RabbitMQ";
    /// An Erlang VM and a fresh database take seconds, more on loaded cores.
    const READY_DEADLINE: Duration = Duration::from_secs(90);

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let mut cmd = child_command(server_script(), None, dir, log);
        // Nothing of the caller's RabbitMQ settings applies to this node.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("RABBITMQ_")) {
                cmd.env_remove(name);
            }
        }
        cmd.env("HOME", dir)
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", port.to_string())
            // Distribution gets a fresh port each start; epmd tells peers.
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            // Does not exist: no advanced config.
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            // The script execs the VM (see the module docs).
            .env("RABBITMQ_ALLOW_INPUT", "true")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}",
            )
            // Unbound schedulers: the cores are shared with other work.
            .env("RABBITMQ_SCHEDULER_BIND_TYPE", "u")
            // Only used if the VM has to start epmd itself.
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // A VM that fails to boot exits at once, without a crash dump.
            .env("ERL_CRASH_DUMP_SECONDS", "0")
            .env_remove("ERL_FLAGS")
            .env_remove("ERL_AFLAGS")
            .env_remove("ERL_ZFLAGS");
        cmd
    }

    async fn probe(&self, port: u16) -> bool {
        handshake(port, USER, &self.password).await.is_ok()
    }

    fn port_was_taken(log: &str) -> bool {
        let log = log.to_ascii_lowercase();
        log.contains("eaddrinuse") || log.contains("address already in use")
    }
}

impl TestRabbitmq {
    /// Starts a new node and waits until an AMQP handshake with its
    /// credentials works; prints how long that took. Panics with the node's
    /// log if it does not within 90 s.
    pub async fn start() -> TestRabbitmq {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let began = Instant::now();
        let node = format!(
            "healthd-test-{}-{}@localhost",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let password = make_secret("rabbitmq");
        let dir = TempDir::new("rabbitmq", None);
        write_files(dir.path(), &password);
        let log = dir.path().join("rabbitmq.log");
        let server = Server::start(Rabbitmq { node, password }, dir, log).await;
        let started_in = began.elapsed();
        eprintln!(
            "testkit: RabbitMQ node {} on port {} ready in {started_in:?}",
            server.flavor().node,
            server.port()
        );
        TestRabbitmq { server, started_in }
    }

    /// One node for every test of this test process that only talks to it,
    /// started by the first caller (the others wait for it). It is never
    /// dropped: its VM dies with the process (the parent-death signal) and
    /// its temp dir is removed at exit. Do not kill, freeze or restart it:
    /// other tests use it at the same time; use `start()` for that.
    pub async fn shared() -> &'static TestRabbitmq {
        static SHARED: tokio::sync::OnceCell<TestRabbitmq> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let node = TestRabbitmq::start().await;
                remove_at_exit(node.server.dir());
                node
            })
            .await
    }

    /// How long `start()` took, until the first handshake worked.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The AMQP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `amqp://127.0.0.1:PORT/%2f` (the default vhost `/`), without
    /// credentials.
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2f", self.port())
    }

    /// `url()` with the user and password in the user-info.
    pub fn url_with_credentials(&self) -> String {
        self.url_with_credentials_at(format!("127.0.0.1:{}", self.port()))
    }

    /// `url_with_credentials()` for another address (`HOST:PORT`): a proxy
    /// in front of the node.
    pub fn url_with_credentials_at(&self, address: impl std::fmt::Display) -> String {
        format!(
            "amqp://{}:{}@{address}/%2f",
            percent_encode(self.user()),
            percent_encode(self.password())
        )
    }

    /// The node's user, an administrator of the vhost `/`.
    pub fn user(&self) -> &str {
        USER
    }

    /// The user's random password.
    pub fn password(&self) -> &str {
        &self.server.flavor().password
    }

    /// `healthd-test-PID-N@localhost`.
    pub fn node_name(&self) -> &str {
        &self.server.flavor().node
    }

    /// The Erlang VM's PID, or `None` after `kill()`.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn is_frozen(&self) -> bool {
        self.server.is_frozen()
    }

    /// SIGKILLs the VM and every process under it and waits until they are
    /// gone: connections break and new ones are refused. A no-op if it is
    /// not running.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the node again on the same port and data dir and waits until a
    /// handshake works. Its user stays; what it had not written out when
    /// killed may be lost (see the module docs).
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the VM and every process under it: connections are accepted
    /// by the kernel, no `Connection.Start` comes. Panics if it is not
    /// running; a no-op if frozen.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs a frozen node. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// An AMQP 0-9-1 handshake with the node's credentials: protocol header,
    /// `Connection.Start`/`Start-Ok` (PLAIN), `Tune`/`Tune-Ok`, `Open` of
    /// the vhost `/`/`Open-Ok`, then `Close`/`Close-Ok`; bounded by 10 s.
    pub async fn handshake(&self) -> io::Result<()> {
        self.handshake_as(USER, self.password()).await
    }

    /// `handshake()` as `user` with `password`: an error if the broker
    /// refuses them.
    pub async fn handshake_as(&self, user: &str, password: &str) -> io::Result<()> {
        match tokio::time::timeout(DEADLINE, handshake(self.port(), user, password)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no handshake within 10 s")),
        }
    }

    /// The node's log (its console output).
    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

/// The config, the (empty) env file and plugin list, and the Erlang cookie.
fn write_files(dir: &Path, password: &str) {
    let config = format!(
        "# A throwaway test node: see healthd-testkit's rabbitmq.rs.\n\
         default_user = {USER}\n\
         default_pass = {password}\n\
         default_vhost = /\n\
         default_permissions.configure = .*\n\
         default_permissions.read = .*\n\
         default_permissions.write = .*\n\
         # The tests connect over 127.0.0.1 anyway; no user is loopback-only.\n\
         loopback_users = none\n\
         # A small tmpfs must not raise the disk alarm (it blocks publishers).\n\
         disk_free_limit.absolute = 1MB\n\
         log.console = true\n\
         log.console.level = info\n\
         log.console.use_colors = off\n\
         log.file = false\n"
    );
    let files = [
        ("rabbitmq.conf", config),
        ("rabbitmq-env.conf", String::new()),
        ("enabled_plugins", "[].\n".to_string()),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    // Erlang refuses a cookie file that others can read.
    let cookie = dir.join(".erlang.cookie");
    fs::write(&cookie, make_secret("cookie"))
        .unwrap_or_else(|e| panic!("writing {}: {e}", cookie.display()));
    set_owner_and_mode(&cookie, None, 0o400);
}

/// The script that starts a node in the foreground. Debian's
/// `/usr/sbin/rabbitmq-server` is a link to `rabbitmq-script-wrapper` (see
/// the module docs); the real script is beside the wrapper.
fn server_script() -> &'static PathBuf {
    static SCRIPT: OnceLock<PathBuf> = OnceLock::new();
    SCRIPT.get_or_init(|| {
        let found = require_binary("rabbitmq-server", "rabbitmq-server");
        let real = fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
        if real.file_name().is_some_and(|name| name == "rabbitmq-script-wrapper") {
            let script = real.with_file_name("rabbitmq-server");
            assert!(
                crate::process::is_executable(&script),
                "{} is Debian's wrapper, but the script it runs, {}, is missing: reinstall \
                 `rabbitmq-server` (`apt-get install --reinstall rabbitmq-server`)",
                found.display(),
                script.display()
            );
            script
        } else {
            found
        }
    })
}

// ---------------------------------------------------------------------------
// AMQP 0-9-1, as much as a handshake needs

/// (class, method) ids.
type MethodId = (u16, u16);
const START: MethodId = (10, 10);
const START_OK: MethodId = (10, 11);
const TUNE: MethodId = (10, 30);
const TUNE_OK: MethodId = (10, 31);
const OPEN: MethodId = (10, 40);
const OPEN_OK: MethodId = (10, 41);
const CLOSE: MethodId = (10, 50);
const CLOSE_OK: MethodId = (10, 51);

/// The handshake `TestRabbitmq::handshake` describes; unbounded (the caller
/// sets the deadline). A refusal (`Connection.Close`, or the broker hanging
/// up, which is what it does on wrong credentials) is an error.
async fn handshake(port: u16, user: &str, password: &str) -> io::Result<()> {
    let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
    stream.get_mut().write_all(PROTOCOL_HEADER).await?;
    expect(read_method(&mut stream).await?, START)?;

    let mut start_ok = Vec::new();
    // No client properties: an empty table.
    start_ok.extend_from_slice(&0u32.to_be_bytes());
    put_short_string(&mut start_ok, "PLAIN");
    put_long_string(&mut start_ok, format!("\0{user}\0{password}").as_bytes());
    put_short_string(&mut start_ok, "en_US");
    write_method(&mut stream, START_OK, &start_ok).await?;

    let tune = expect(read_method(&mut stream).await?, TUNE)?;
    let (channel_max, frame_max) = match tune.get(..6) {
        Some(fields) => (&fields[..2], &fields[2..6]),
        None => return Err(invalid("a short Connection.Tune")),
    };
    let mut tune_ok = Vec::new();
    tune_ok.extend_from_slice(channel_max);
    tune_ok.extend_from_slice(frame_max);
    // No heartbeats.
    tune_ok.extend_from_slice(&0u16.to_be_bytes());
    write_method(&mut stream, TUNE_OK, &tune_ok).await?;

    let mut open = Vec::new();
    put_short_string(&mut open, "/");
    put_short_string(&mut open, "");
    open.push(0);
    write_method(&mut stream, OPEN, &open).await?;
    expect(read_method(&mut stream).await?, OPEN_OK)?;

    let mut close = Vec::new();
    close.extend_from_slice(&200u16.to_be_bytes());
    put_short_string(&mut close, "OK");
    close.extend_from_slice(&[0, 0, 0, 0]);
    write_method(&mut stream, CLOSE, &close).await?;
    expect(read_method(&mut stream).await?, CLOSE_OK)?;
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The method's arguments if it is `wanted`; a `Connection.Close` from the
/// broker becomes an error with its reply code and text.
fn expect((id, args): (MethodId, Vec<u8>), wanted: MethodId) -> io::Result<Vec<u8>> {
    if id == wanted {
        return Ok(args);
    }
    if id == CLOSE {
        let code = args.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let text = args
            .get(2)
            .and_then(|&len| args.get(3..3 + usize::from(len)))
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let kind = if code == 403 {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::ConnectionAborted
        };
        return Err(io::Error::new(kind, format!("Connection.Close {code} {text}")));
    }
    Err(invalid(&format!("expected method {wanted:?}, got {id:?}")))
}

/// The next method frame on channel 0 (heartbeats skipped).
async fn read_method(stream: &mut BufReader<TcpStream>) -> io::Result<(MethodId, Vec<u8>)> {
    loop {
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), "the broker closed the connection")
            } else {
                e
            }
        })?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]);
        if size > MAX_FRAME {
            return Err(invalid(&format!("a frame of {size} bytes")));
        }
        let mut payload = vec![0u8; size as usize + 1];
        stream.read_exact(&mut payload).await?;
        if payload.pop() != Some(FRAME_END) {
            return Err(invalid("a frame without its end marker"));
        }
        match header[0] {
            FRAME_HEARTBEAT => continue,
            FRAME_METHOD if payload.len() >= 4 => {
                let class = u16::from_be_bytes([payload[0], payload[1]]);
                let method = u16::from_be_bytes([payload[2], payload[3]]);
                return Ok(((class, method), payload.split_off(4)));
            }
            other => return Err(invalid(&format!("a frame of type {other} in a handshake"))),
        }
    }
}

async fn write_method(
    stream: &mut BufReader<TcpStream>,
    (class, method): MethodId,
    args: &[u8],
) -> io::Result<()> {
    let size = u32::try_from(args.len() + 4).map_err(|_| invalid("arguments too long"))?;
    let mut frame = Vec::with_capacity(args.len() + 12);
    frame.push(FRAME_METHOD);
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&size.to_be_bytes());
    frame.extend_from_slice(&class.to_be_bytes());
    frame.extend_from_slice(&method.to_be_bytes());
    frame.extend_from_slice(args);
    frame.push(FRAME_END);
    stream.get_mut().write_all(&frame).await
}

/// Up to 255 bytes (longer is cut: only fixed short strings go here).
fn put_short_string(out: &mut Vec<u8>, text: &str) {
    let bytes = &text.as_bytes()[..text.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn put_long_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}
