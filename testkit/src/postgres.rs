//! A throwaway PostgreSQL cluster per test, owned by the test process.
//!
//! `TestPostgres::start()` copies a cluster made by `initdb` (once per test
//! process, into a template dir) into a fresh temp dir and runs the
//! `postgres` binary itself on it (not `pg_ctl`), so the child process *is* the
//! postmaster: a test can kill it, restart it on the same port and data dir,
//! or freeze it (SIGSTOP of the postmaster and its backends) to play a server
//! that accepts connections and never answers. Dropping the value shuts the
//! server down (thawing it first) and removes the temp dir. Process handling,
//! ports and temp dirs are `process.rs`'s, shared with the other servers.
//!
//! How it copes with the machines the tests run on:
//! - PostgreSQL refuses to run as root, and CI runs as root: then the temp dir
//!   belongs to the `postgres` user and both `initdb` and `postgres` run with
//!   that user's uid/gid. As a normal user they run as that user.
//! - Binaries come from `PATH` or `/usr/lib/postgresql/<version>/bin`
//!   (version 15 preferred); without them `start()` panics, naming the
//!   package to install.
//! - The server listens on 127.0.0.1 only, on a free port (never 5432), puts
//!   its Unix socket in the temp dir; durability is off (`fsync`,
//!   `full_page_writes`, `synchronous_commit`), which makes start and crash
//!   recovery fast.
//! - `pg_hba.conf` lets `postgres` in over TCP without a password and asks
//!   every other role for a SCRAM password (`password_encryption` is
//!   `scram-sha-256`): see `create_role` and `url_with_password`.
//!
//! TLS: `start_tls()` runs the cluster with `ssl = on` and a server
//! certificate for `127.0.0.1` and `localhost` signed by a test CA
//! (`ca_path()`), so a test can connect with `sslmode=require`, `verify-ca`
//! and `verify-full`; `start_tls_with` mints it for other names (a hostname
//! mismatch) or refuses non-TLS connections of every role but `postgres`.
//! PostgreSQL wants its key owned by the server's user with mode 0600, so
//! the certificate and key are copies in the temp dir.
//!
//! Statement counting: the server runs with `log_statement = all` and
//! `executed_statements()` counts the `statement:` / `execute` lines of its
//! log. A backend writes that line before it runs the statement, so the count
//! is exact and current the moment a client has its answer, and reading it
//! sends nothing to the server (it works while the server is frozen or
//! killed). `pg_stat_database.xact_commit` was not used: in PostgreSQL 15 each
//! backend flushes its counters lazily (at most once a second, and an idle
//! backend that flushed less than a second ago waits about 10 s), and
//! `pg_stat_force_next_flush()` only affects the backend that calls it, so
//! another connection's statements can stay invisible for seconds.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::certs::{LeafSpec, TestCerts};
use crate::process::{
    child_command, copy_tree, find_in_path, is_executable, lock, percent_encode, run_as_when_root,
    run_to_completion, set_owner_and_mode, Flavor, RunAs, Server, TempDir, Template,
};

/// Bound on `client()`.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

/// A PostgreSQL 15 cluster of its own for one test; see the module docs.
pub struct TestPostgres {
    server: Server<Postgres>,
    data_dir: PathBuf,
    statements: Mutex<StatementCount>,
    /// The CA and leaf of a TLS cluster (dropped after the server).
    certs: Option<TestCerts>,
}

/// How `TestPostgres::start_tls_with` sets up TLS.
#[derive(Clone, Debug)]
pub struct PostgresTls {
    /// The names the server certificate holds: IP addresses become IP SANs,
    /// the rest DNS SANs. `["127.0.0.1", "localhost"]` by default.
    pub names: Vec<String>,
    /// Refuse TCP connections without TLS for every role but `postgres`
    /// (which the test's own `client()` uses). Off by default: the server
    /// then takes both, as PostgreSQL does out of the box.
    pub tls_only: bool,
}

impl Default for PostgresTls {
    fn default() -> Self {
        PostgresTls { names: vec!["127.0.0.1".into(), "localhost".into()], tls_only: false }
    }
}

/// The server as `process::Server` runs it.
struct Postgres {
    data_dir: PathBuf,
    /// `-c` settings beyond the fixed ones (TLS).
    settings: Vec<String>,
}

#[derive(Default)]
struct StatementCount {
    /// How far the log has been read (always at a line end).
    offset: u64,
    count: i64,
}

impl Flavor for Postgres {
    const NAME: &'static str = "PostgreSQL";
    const READY_DEADLINE: Duration = Duration::from_secs(20);

    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command {
        let mut cmd = child_command(&binaries().postgres, run_as(), dir, log);
        cmd.arg("-D").arg(&self.data_dir).arg("-p").arg(port.to_string()).arg("-k").arg(dir);
        for setting in [
            "listen_addresses=127.0.0.1",
            "fsync=off",
            "full_page_writes=off",
            "synchronous_commit=off",
            "password_encryption=scram-sha-256",
            // executed_statements() counts these lines.
            "log_statement=all",
            "log_line_prefix=%m [%p] ",
        ] {
            cmd.arg("-c").arg(setting);
        }
        for setting in &self.settings {
            cmd.arg("-c").arg(setting);
        }
        cmd
    }

    /// Any answer but "starting up" from the server: a TLS-only cluster
    /// answers a plain connection of another role with a refusal.
    async fn probe(&self, port: u16) -> bool {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
        match config.connect(NoTls).await {
            Ok((client, connection)) => {
                // Let the connection send its Terminate when the client drops.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                drop(client);
                true
            }
            Err(e) => e.as_db_error().is_some_and(|db| *db.code() != SqlState::CANNOT_CONNECT_NOW),
        }
    }

    fn port_was_taken(log: &str) -> bool {
        log.contains("Address already in use") || log.contains("could not bind IPv4 address")
    }
}

impl TestPostgres {
    /// Creates, starts and waits for a new cluster (about 1 s). Panics with
    /// the server's log if that fails.
    pub async fn start() -> TestPostgres {
        TestPostgres::launch(None).await
    }

    /// Like `start()`, with `ssl = on` and a certificate for 127.0.0.1 and
    /// localhost signed by the test CA at `ca_path()`.
    pub async fn start_tls() -> TestPostgres {
        TestPostgres::launch(Some(PostgresTls::default())).await
    }

    /// Like `start_tls()`, with the certificate's names and the refusal of
    /// plain connections as `tls` says.
    pub async fn start_tls_with(tls: PostgresTls) -> TestPostgres {
        TestPostgres::launch(Some(tls)).await
    }

    async fn launch(tls: Option<PostgresTls>) -> TestPostgres {
        let run_as = run_as();
        let template = template().await;
        let dir = TempDir::new("pg", run_as);
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        copy_tree(&template, &data_dir, run_as).unwrap_or_else(|e| {
            panic!("copying {} to {}: {e}", template.display(), data_dir.display())
        });
        write_pg_hba(&data_dir, tls.as_ref().is_some_and(|tls| tls.tls_only));

        let mut settings = Vec::new();
        let certs = tls.map(|tls| {
            let certs = TestCerts::new();
            let names: Vec<&str> = tls.names.iter().map(String::as_str).collect();
            let leaf = certs.mint(&LeafSpec::new(&names));
            let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
            for (from, to, mode) in [(&leaf.chain, &cert, 0o644), (&leaf.key, &key, 0o600)] {
                fs::copy(from, to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
                set_owner_and_mode(to, run_as, mode);
            }
            settings.push("ssl=on".to_string());
            settings.push(format!("ssl_cert_file={}", cert.display()));
            settings.push(format!("ssl_key_file={}", key.display()));
            certs
        });

        let flavor = Postgres { data_dir: data_dir.clone(), settings };
        let server = Server::start(flavor, dir, log_path).await;
        TestPostgres { server, data_dir, statements: Mutex::new(StatementCount::default()), certs }
    }

    /// The TCP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port())
    }

    /// A URL for `user` with `password` (percent-encoded) on the `postgres`
    /// database; roles other than `postgres` need the right SCRAM password.
    pub fn url_with_password(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            percent_encode(user),
            percent_encode(password),
            self.port()
        )
    }

    /// A tokio-postgres config for the superuser over TCP.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port()).user("postgres").dbname("postgres");
        config
    }

    /// The test CA's certificate (PEM) that signed the server's certificate,
    /// for `sslrootcert` / `ca_file`; `None` unless started with TLS.
    pub fn ca_path(&self) -> Option<&Path> {
        self.certs.as_ref().map(TestCerts::ca_path)
    }

    /// The CAs of a TLS cluster, to mint more (e.g. a client's `ca_file`
    /// that is the unknown CA); `None` unless started with TLS.
    pub fn certs(&self) -> Option<&TestCerts> {
        self.certs.as_ref()
    }

    /// The cluster's data directory (inside the temp dir removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log (stdout and stderr of initdb and every postgres run).
    pub fn log_path(&self) -> &Path {
        self.server.log_path()
    }

    /// The postmaster's PID, or `None` after `kill()`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.server.pid()
    }

    pub fn is_frozen(&self) -> bool {
        self.server.is_frozen()
    }

    /// A connected superuser client; its connection task is spawned on the
    /// current runtime. Panics (with the server log) if connecting fails or
    /// takes longer than 10 s (a frozen server).
    pub async fn client(&self) -> tokio_postgres::Client {
        match tokio::time::timeout(CLIENT_DEADLINE, self.try_client()).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => panic!(
                "connecting to {}: {}\nserver log:\n{}",
                self.url(),
                describe_error(&e),
                self.log_tail()
            ),
            Err(_) => panic!(
                "connecting to {} took more than {CLIENT_DEADLINE:?} (frozen: {})",
                self.url(),
                self.is_frozen()
            ),
        }
    }

    /// Like `client()` but returns the error, and is not bounded: against a
    /// frozen server it hangs, so wrap it in `tokio::time::timeout`.
    pub async fn try_client(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// SIGKILLs the postmaster and every process it had forked, reaps it and
    /// waits until they are all gone. Existing connections break and new ones
    /// are refused. A no-op if the server is not running.
    pub fn kill(&self) {
        self.server.kill();
    }

    /// Starts the server again on the same port and data dir (after crash
    /// recovery if it was killed); kills it first if it is running. Retries
    /// while the old lock file or shared memory is still held, and panics
    /// with the log if it is not ready within 20 s.
    pub async fn restart(&self) {
        self.server.restart().await;
    }

    /// SIGSTOPs the postmaster, then every backend (whose parent it is), and
    /// waits until all are stopped. The kernel still accepts TCP connections,
    /// but no handshake or query gets an answer, and `statement_timeout` does
    /// not fire. Panics if the server is not running; a no-op if it is
    /// already frozen.
    pub fn freeze(&self) {
        self.server.freeze();
    }

    /// SIGCONTs what `freeze()` stopped. A no-op if not frozen.
    pub fn thaw(&self) {
        self.server.thaw();
    }

    /// How many statements the server has run since it was created, its own
    /// background work excluded: one per simple-protocol query message (a
    /// multi-statement string counts once) and one per extended-protocol
    /// execute (tokio-postgres' `query`/`execute` count one each, their
    /// prepare step none). Statements of every client count, the tests' own
    /// `client()` included, so compare a before and an after. Exact and
    /// up to date once a client has its answer; reads the log, so it works
    /// while the server is frozen or killed.
    pub async fn executed_statements(&self) -> i64 {
        let mut counter = lock(&self.statements);
        let mut file = File::open(self.log_path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path().display()));
        file.seek(SeekFrom::Start(counter.offset)).expect("seeking in the server log");
        let mut new = Vec::new();
        file.read_to_end(&mut new).expect("reading the server log");
        // Only whole lines: a backend may be writing the last one right now.
        let complete = new.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let added =
            new[..complete].split(|&b| b == b'\n').filter(|line| is_statement_line(line)).count();
        counter.offset += complete as u64;
        counter.count += added as i64;
        counter.count
    }

    /// Creates a login role with a password, stored as a SCRAM-SHA-256
    /// verifier; `pg_hba.conf` makes every role but `postgres` authenticate
    /// with it over TCP, so a wrong password fails with "password
    /// authentication failed for user ...". Connect with `url_with_password`.
    ///
    /// The commit is synchronous (the server runs with `synchronous_commit =
    /// off`), so the role survives a `kill()` right after.
    pub async fn create_role(&self, name: &str, password: &str) {
        let sql = format!(
            "SET synchronous_commit = on; CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        );
        if let Err(e) = self.client().await.batch_execute(&sql).await {
            panic!("creating role {name:?}: {}", describe_error(&e));
        }
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

impl Drop for TestPostgres {
    /// Shuts the server down (thawing it first); the temp dir goes with the
    /// server field. An immediate shutdown (SIGQUIT) rather than SIGKILL, so
    /// that the server removes its shared memory (SysV and /dev/shm segments,
    /// which outlive the data dir); a server left killed is started once more
    /// for that, as its crash recovery removes what the killed one left.
    fn drop(&mut self) {
        self.server.thaw();
        if self.server.pid().is_none() && self.data_dir.join("PG_VERSION").exists() {
            let lock_file = self.data_dir.join("postmaster.pid");
            // postmaster.pid: line 1 the PID, line 8 the status.
            self.server.relaunch_blocking(|pid| {
                let text = fs::read_to_string(&lock_file).unwrap_or_default();
                let mut lines = text.lines();
                lines.next() == Some(pid.to_string().as_str())
                    && lines.nth(6).map(str::trim) == Some("ready")
            });
        }
        if let Err(e) = self.server.shut_down(libc::SIGQUIT, Duration::from_secs(5)) {
            eprintln!("test PostgreSQL on port {}: {e}", self.port());
        }
    }
}

fn write_pg_hba(data_dir: &Path, tls_only: bool) {
    let path = data_dir.join("pg_hba.conf");
    // Truncating the file initdb wrote keeps its owner and mode.
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let others: &[u8] = if tls_only {
        b"hostssl   all all      127.0.0.1/32 scram-sha-256\n\
          hostnossl all all      127.0.0.1/32 reject\n"
    } else {
        b"host      all all      127.0.0.1/32 scram-sha-256\n"
    };
    file.write_all(
        b"# Written by healthd-testkit: the superuser needs no password, every\n\
          # other role authenticates with SCRAM over TCP.\n\
          local     all all                   trust\n\
          host      all postgres 127.0.0.1/32 trust\n",
    )
    .and_then(|()| file.write_all(others))
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Binaries and user

/// Where the PostgreSQL server binaries are.
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        find_binaries().unwrap_or_else(|| {
            panic!(
                "the tests need the PostgreSQL server binaries `initdb` and `postgres` (version 15), \
                 found neither in PATH nor in /usr/lib/postgresql/*/bin: install them, \
                 e.g. `apt-get install postgresql-15`, or put their directory in PATH"
            )
        })
    })
}

fn find_binaries() -> Option<Binaries> {
    if let Some(initdb) = find_in_path("initdb") {
        // Take the `postgres` beside the real initdb (PATH may hold symlinks).
        let beside = fs::canonicalize(&initdb).ok().map(|p| p.with_file_name("postgres"));
        if let Some(postgres) =
            beside.filter(|p| is_executable(p)).or_else(|| find_in_path("postgres"))
        {
            return Some(Binaries { initdb, postgres });
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    // 15 first, then the newest.
    versions.sort_by_key(|&(version, _)| (version != 15, std::cmp::Reverse(version)));
    versions.into_iter().find_map(|(_, bin)| {
        let (initdb, postgres) = (bin.join("initdb"), bin.join("postgres"));
        (is_executable(&initdb) && is_executable(&postgres))
            .then_some(Binaries { initdb, postgres })
    })
}

/// The cluster every server copies, made by `initdb` once per process.
async fn template() -> PathBuf {
    static TEMPLATE: Template = Template::new();
    let dir = TEMPLATE
        .get("pgtemplate", run_as(), |dir| async move {
            let log = dir.join("initdb.log");
            let mut cmd = child_command(&binaries().initdb, run_as(), &dir, &log);
            cmd.args(["-A", "trust", "--no-sync", "-U", "postgres", "-E", "UTF8", "--locale=C"])
                .arg("-D")
                .arg(dir.join("data"));
            run_to_completion(cmd, &log).await;
        })
        .await;
    dir.join("data")
}

/// The `postgres` user when we are root (PostgreSQL refuses root).
fn run_as() -> Option<RunAs> {
    static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();
    *RUN_AS.get_or_init(|| run_as_when_root("postgres", "postgresql-15"))
}

// ---------------------------------------------------------------------------
// Small helpers

/// A `log_statement` line: "<time> [<pid>] LOG:  statement: ..." or
/// "... LOG:  execute <name>: ...".
fn is_statement_line(line: &[u8]) -> bool {
    let contains = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    contains(b"] LOG:  statement: ") || contains(b"] LOG:  execute ")
}

/// A tokio-postgres error with the server's message ("db error" alone says
/// little) or the underlying cause.
pub fn describe_error(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.to_string();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
