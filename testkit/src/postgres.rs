//! A throwaway PostgreSQL cluster per test, owned by the test process.
//!
//! `TestPostgres::start()` runs `initdb` into a fresh temp dir and then the
//! `postgres` binary itself (not `pg_ctl`), so the child process *is* the
//! postmaster: a test can kill it, restart it on the same port and data dir,
//! or freeze it (SIGSTOP) to play a server that accepts connections and never
//! answers. Dropping the value shuts the server down (thawing it first) and
//! removes the temp dir.
//!
//! How it copes with the machines the tests run on:
//! - PostgreSQL refuses to run as root, and CI runs as root: then the temp dir
//!   is chowned to the `postgres` user and both `initdb` and `postgres` are
//!   spawned with that user's uid/gid. As a normal user they run as that user.
//! - Binaries come from `PATH` or `/usr/lib/postgresql/<version>/bin`
//!   (version 15 preferred); without them `start()` panics, naming the
//!   package to install.
//! - The port is a free ephemeral one (never 5432, which another server
//!   uses), the server listens on 127.0.0.1 only and puts its Unix socket in
//!   the temp dir; durability is off (`fsync`, `full_page_writes`,
//!   `synchronous_commit`), which makes start and crash recovery fast.
//! - Every child gets a parent-death signal (SIGKILL), so a test binary that
//!   crashes or is killed leaves no server behind. The kernel sends that
//!   signal when the *thread* that forked the child ends, so all children are
//!   forked from one process-wide thread that lives as long as the process
//!   (not from a tokio worker or blocking-pool thread, which can end first).
//! - `pg_hba.conf` lets `postgres` in over TCP without a password and asks
//!   every other role for a SCRAM password (`password_encryption` is
//!   `scram-sha-256`): see `create_role` and `url_with_password`.
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

// Test support: not every helper is used by every set of tests.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::NoTls;

/// How long `start()` and `restart()` may take before they panic.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long killed or stopped processes may take to reach that state.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on one connection attempt while waiting for the server.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// Bound on `client()`.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Ports to try if another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// The port of the machine's own PostgreSQL: never ours.
const RESERVED_PORT: u16 = 5432;

/// A PostgreSQL 15 cluster of its own for one test; see the module docs.
pub struct TestPostgres {
    /// Temp dir: `data/` (the cluster), the Unix socket, `postgres.log`.
    dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    state: Mutex<State>,
    statements: Mutex<StatementCount>,
}

#[derive(Default)]
struct State {
    /// The running postmaster (our child), if any.
    postmaster: Option<Child>,
    /// Processes stopped by `freeze()`, the postmaster first.
    frozen: Vec<Proc>,
    /// While frozen: a shell that SIGKILLs `frozen` if the test process dies
    /// (stopped processes cannot act on their postmaster's death).
    freeze_guard: Option<Child>,
}

#[derive(Default)]
struct StatementCount {
    /// How far the log has been read (always at a line end).
    offset: u64,
    count: i64,
}

impl TestPostgres {
    /// Creates, starts and waits for a new cluster (about 1 s). Panics with
    /// the server's log if that fails.
    pub async fn start() -> TestPostgres {
        let bins = binaries();
        let run_as = run_as();
        let dir = make_temp_dir(run_as);
        let data_dir = dir.join("data");
        let log_path = dir.join("postgres.log");
        // Removes the temp dir if anything below panics.
        let mut cleanup = RemoveDirOnDrop(Some(dir.clone()));
        File::create(&log_path).unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));

        // initdb
        let log_start = file_len(&log_path);
        let mut cmd = child_command(&bins.initdb, run_as, &dir, &log_path);
        cmd.args(["-A", "trust", "--no-sync", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D"])
            .arg(&data_dir);
        let mut initdb = spawn_child(cmd)
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", bins.initdb.display()));
        let status = tokio::task::spawn_blocking(move || initdb.wait())
            .await
            .expect("waiting for initdb")
            .expect("waiting for initdb");
        if !status.success() {
            panic!("initdb failed ({status}); its output:\n{}", log_since(&log_path, log_start));
        }
        write_pg_hba(&data_dir);

        // postgres, on another port if the chosen one is taken meanwhile
        let deadline = Instant::now() + READY_DEADLINE;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = free_port();
            let log_start = file_len(&log_path);
            let state = Mutex::new(State {
                postmaster: Some(spawn_postmaster(&data_dir, &dir, &log_path, port).await),
                ..State::default()
            });
            match wait_ready(&state, port, deadline).await {
                Ready::Yes => {
                    cleanup.0 = None;
                    return TestPostgres {
                        dir,
                        data_dir,
                        log_path,
                        port,
                        state,
                        statements: Mutex::new(StatementCount::default()),
                    };
                }
                Ready::Exited(status) => {
                    let log = log_since(&log_path, log_start);
                    if port_was_taken(&log) && attempts < PORT_ATTEMPTS {
                        continue;
                    }
                    panic!(
                        "postgres on port {port} exited during start ({status}); its log:\n{log}"
                    );
                }
                Ready::TimedOut => {
                    let _ = stop_server(&mut lock(&state));
                    panic!(
                        "postgres on port {port} was not ready within {READY_DEADLINE:?}; its log:\n{}",
                        log_since(&log_path, log_start)
                    );
                }
            }
        }
    }

    /// The TCP port on 127.0.0.1; it stays the same across `restart()`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A URL for `user` with `password` (percent-encoded) on the `postgres`
    /// database; roles other than `postgres` need the right SCRAM password.
    pub fn url_with_password(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres",
            percent_encode(user),
            percent_encode(password),
            self.port
        )
    }

    /// A tokio-postgres config for the superuser over TCP.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port).user("postgres").dbname("postgres");
        config
    }

    /// The cluster's data directory (inside the temp dir removed on drop).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's log (stdout and stderr of initdb and every postgres run).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The postmaster's PID, or `None` after `kill()`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        lock(&self.state).postmaster.as_ref().map(Child::id)
    }

    pub fn is_frozen(&self) -> bool {
        !lock(&self.state).frozen.is_empty()
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
        if let Err(e) = stop_server(&mut lock(&self.state)) {
            panic!("killing the test PostgreSQL on port {}: {e}", self.port);
        }
    }

    /// Starts the server again on the same port and data dir (after crash
    /// recovery if it was killed); kills it first if it is running. Retries
    /// while the old lock file or shared memory is still held, and panics
    /// with the log if it is not ready within 20 s.
    pub async fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let log_start = file_len(&self.log_path);
            let child =
                spawn_postmaster(&self.data_dir, &self.dir, &self.log_path, self.port).await;
            lock(&self.state).postmaster = Some(child);
            match wait_ready(&self.state, self.port, deadline).await {
                Ready::Yes => return,
                Ready::Exited(status) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "postgres on port {} did not restart within {READY_DEADLINE:?}; last attempt ({status}) logged:\n{}",
                            self.port,
                            log_since(&self.log_path, log_start)
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ready::TimedOut => {
                    self.kill();
                    panic!(
                        "postgres on port {} was not ready within {READY_DEADLINE:?} after a restart; its log:\n{}",
                        self.port,
                        log_since(&self.log_path, log_start)
                    );
                }
            }
        }
    }

    /// SIGSTOPs the postmaster, then every process whose parent it is (read
    /// from /proc; backends call `setsid()`, so a process-group signal would
    /// miss them), and waits until all are stopped. The kernel still accepts
    /// TCP connections, but no handshake or query gets an answer, and
    /// `statement_timeout` does not fire. Panics if the server is not
    /// running; a no-op if it is already frozen.
    pub fn freeze(&self) {
        let mut state = lock(&self.state);
        if !state.frozen.is_empty() {
            return;
        }
        let pid = match state.postmaster.as_mut() {
            Some(child) => child.id() as i32,
            None => panic!("freeze(): the test PostgreSQL on port {} is not running", self.port),
        };
        let postmaster = Proc::of(pid).unwrap_or_else(|| {
            panic!("freeze(): the postmaster (PID {pid}) has exited; log:\n{}", self.log_tail())
        });
        let deadline = Instant::now() + SIGNAL_DEADLINE;
        // The postmaster first: once it is stopped it forks nothing new.
        postmaster.signal(libc::SIGSTOP);
        state.frozen.push(postmaster);
        if let Err(e) = postmaster.wait_stopped(deadline) {
            panic!("freeze(): {e}");
        }
        let children = children_of(pid);
        for child in &children {
            child.signal(libc::SIGSTOP);
        }
        state.frozen.extend(children.iter().copied());
        for child in &children {
            if let Err(e) = child.wait_stopped(deadline) {
                panic!("freeze(): {e}");
            }
        }
        state.freeze_guard = spawn_freeze_guard(&state.frozen);
    }

    /// SIGCONTs what `freeze()` stopped. A no-op if not frozen.
    pub fn thaw(&self) {
        thaw_locked(&mut lock(&self.state));
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
        let mut file = File::open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
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
        log_since(&self.log_path, 0)
    }
}

impl Drop for TestPostgres {
    /// Shuts the server down (thawing it first), then removes the temp dir.
    /// An immediate shutdown (SIGQUIT) rather than SIGKILL, so that the
    /// server removes its shared memory (SysV and /dev/shm segments, which
    /// outlive the data dir); a server left killed is started once more for
    /// that, as its crash recovery removes what the killed one left.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        thaw_locked(state);
        if state.postmaster.is_none() {
            relaunch_for_cleanup(state, &self.data_dir, &self.dir, &self.log_path, self.port);
        }
        if let Err(e) = shut_down(state) {
            eprintln!("test PostgreSQL on port {}: {e}", self.port);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- test PostgreSQL on port {}: end of its log ---\n{}",
                self.port,
                self.log_tail()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// Starting and stopping

enum Ready {
    Yes,
    Exited(ExitStatus),
    TimedOut,
}

/// Polls until a connection succeeds, the postmaster exits, or the deadline.
async fn wait_ready(state: &Mutex<State>, port: u16, deadline: Instant) -> Ready {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user("postgres").dbname("postgres");
    loop {
        {
            let mut state = lock(state);
            let exited = match state.postmaster.as_mut() {
                Some(child) => child.try_wait().expect("checking on the postmaster"),
                None => panic!("the postmaster is gone while waiting for it"),
            };
            if let Some(status) = exited {
                state.postmaster = None;
                return Ready::Exited(status);
            }
        }
        if let Ok(Ok((client, connection))) =
            tokio::time::timeout(CONNECT_ATTEMPT, config.connect(NoTls)).await
        {
            // Let the connection send its Terminate when the client drops.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            drop(client);
            return Ready::Yes;
        }
        if Instant::now() >= deadline {
            return Ready::TimedOut;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn spawn_postmaster(data_dir: &Path, dir: &Path, log_path: &Path, port: u16) -> Child {
    let cmd = postmaster_command(data_dir, dir, log_path, port);
    spawn_child(cmd)
        .await
        .unwrap_or_else(|e| panic!("running {}: {e}", binaries().postgres.display()))
}

fn postmaster_command(data_dir: &Path, dir: &Path, log_path: &Path, port: u16) -> Command {
    let mut cmd = child_command(&binaries().postgres, run_as(), dir, log_path);
    cmd.arg("-D").arg(data_dir).arg("-p").arg(port.to_string()).arg("-k").arg(dir);
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
    cmd
}

/// Starts a killed server again without waiting for connections (for
/// `Drop`, which cannot await): until its lock file says "ready", which is
/// after the crash recovery. Best effort, bounded by 5 s.
fn relaunch_for_cleanup(
    state: &mut State,
    data_dir: &Path,
    dir: &Path,
    log_path: &Path,
    port: u16,
) {
    if !data_dir.join("PG_VERSION").exists() {
        return;
    }
    let Ok(mut child) = spawn_child_blocking(postmaster_command(data_dir, dir, log_path, port))
    else {
        return;
    };
    let pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // postmaster.pid: line 1 the PID, line 8 the status.
        let lock_file = fs::read_to_string(data_dir.join("postmaster.pid")).unwrap_or_default();
        let mut lines = lock_file.lines();
        let ours = lines.next() == Some(pid.as_str());
        let ready = ours && lines.nth(6).map(str::trim) == Some("ready");
        if ready || !matches!(child.try_wait(), Ok(None)) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    state.postmaster = Some(child);
}

/// Immediate shutdown (SIGQUIT): the postmaster stops its children and
/// removes its shared memory; SIGKILL (`stop_server`) if it takes over 5 s.
fn shut_down(state: &mut State) -> Result<(), String> {
    if let Some(postmaster) = state.postmaster.as_mut() {
        if state.frozen.is_empty() && matches!(postmaster.try_wait(), Ok(None)) {
            // SAFETY: an unreaped child's PID cannot have been reused.
            unsafe { libc::kill(postmaster.id() as i32, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(postmaster.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    stop_server(state)
}

/// Kills the postmaster and its children, reaps it, and waits until the
/// children are gone too (an orphaned backend would keep the shared memory
/// and block a restart). A no-op if not running.
fn stop_server(state: &mut State) -> Result<(), String> {
    dismiss_freeze_guard(state);
    let frozen = std::mem::take(&mut state.frozen);
    let Some(mut postmaster) = state.postmaster.take() else {
        return Ok(());
    };
    let pid = postmaster.id() as i32;
    let deadline = Instant::now() + SIGNAL_DEADLINE;
    let mut doomed: Vec<Proc> = frozen.into_iter().filter(|p| p.pid != pid).collect();
    let running = postmaster.try_wait().map_err(|e| format!("checking on PID {pid}: {e}"))?;
    if running.is_none() {
        if let Some(me) = Proc::of(pid) {
            // Stopped, it forks nothing between the listing and the kill.
            me.signal(libc::SIGSTOP);
            me.wait_stopped(deadline)?;
            for child in children_of(pid) {
                if !doomed.contains(&child) {
                    doomed.push(child);
                }
            }
        }
        // SAFETY: `pid` is our unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for p in &doomed {
        p.signal(libc::SIGKILL);
    }
    postmaster.wait().map_err(|e| format!("reaping the postmaster (PID {pid}): {e}"))?;
    for p in &doomed {
        while p.is_alive() {
            if Instant::now() >= deadline {
                return Err(format!("PID {} (a child of the postmaster) outlived SIGKILL", p.pid));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

fn thaw_locked(state: &mut State) {
    dismiss_freeze_guard(state);
    let frozen = std::mem::take(&mut state.frozen);
    // Children first, so that the postmaster wakes up to running children.
    for p in frozen.iter().rev() {
        p.signal(libc::SIGCONT);
    }
}

/// A shell that waits for end-of-file on its stdin, which only we hold, and
/// then SIGKILLs `procs`: if the test process dies while the server is
/// frozen, the postmaster gets its parent-death SIGKILL but the stopped
/// backends would wait forever. It has its own process group and ignores the
/// usual signals, so a Ctrl-C to the test's group does not take it first.
/// `None` (with a warning) if it cannot be started: freezing still works.
fn spawn_freeze_guard(procs: &[Proc]) -> Option<Child> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap '' HUP INT QUIT TERM; read line; kill -KILL \"$@\" 2>/dev/null")
        .arg("test-postgres-freeze-guard")
        .args(procs.iter().map(|p| p.pid.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.spawn().map_err(|e| eprintln!("test PostgreSQL: no freeze guard (/bin/sh: {e})")).ok()
}

/// Ends the guard without letting it act (dropping it would close its stdin).
fn dismiss_freeze_guard(state: &mut State) {
    if let Some(mut guard) = state.freeze_guard.take() {
        let _ = guard.kill();
        let _ = guard.wait();
    }
}

fn port_was_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("could not bind IPv4 address")
}

/// A port nothing listens on right now: bind port 0, release it.
fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if port != RESERVED_PORT {
            return port;
        }
    }
}

fn write_pg_hba(data_dir: &Path) {
    let path = data_dir.join("pg_hba.conf");
    // Truncating the file initdb wrote keeps its owner and mode.
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.write_all(
        b"# Written by tests/api/support/postgres.rs: the superuser needs no password,\n\
          # every other role authenticates with SCRAM over TCP.\n\
          local all all                trust\n\
          host  all postgres 127.0.0.1/32 trust\n\
          host  all all      127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Child processes

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

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The user to run PostgreSQL as: `postgres` when we are root, else ourselves.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> Option<RunAs> {
    static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();
    *RUN_AS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        Some(lookup_user("postgres").unwrap_or_else(|| {
            panic!(
                "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
                 user to run it as: install the server package (`apt-get install postgresql-15` \
                 creates that user) or run the tests as a normal user"
            )
        }))
    })
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, `buf.len()` is its size.
    let rc = unsafe {
        libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
    };
    (rc == 0 && !result.is_null()).then_some(RunAs { uid: pwd.pw_uid, gid: pwd.pw_gid })
}

/// A command run as `run_as`, in `cwd`, with stdout and stderr appended to
/// `log`, that gets SIGKILL when the test process dies.
fn child_command(program: &Path, run_as: Option<RunAs>, cwd: &Path, log: &Path) -> Command {
    let open_log = || {
        OpenOptions::new()
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()))
    };
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(open_log()).stderr(open_log());
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    let hook = move || -> io::Result<()> {
        // std runs this after the uid/gid switch, which would clear it.
        // SAFETY: prctl(PR_SET_PDEATHSIG) only changes this process.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        // If the forking thread ended before the prctl, the signal is lost.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe system calls; it neither allocates nor locks.
    unsafe { cmd.pre_exec(hook) };
    cmd
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The process-wide spawner thread: the parent-death signal fires when the
/// forking *thread* ends, and this one lives as long as the process.
fn spawner() -> &'static mpsc::Sender<SpawnJob> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnJob>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("test-postgres-spawner".into())
            .spawn(move || {
                for job in receiver {
                    job();
                }
            })
            .expect("starting the spawner thread");
        sender
    })
}

/// Spawns `cmd` from the spawner thread.
async fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner()
        .send(Box::new(move || {
            let _ = reply.send(cmd.spawn());
        }))
        .expect("the spawner thread is gone");
    answer.await.expect("the spawner thread dropped a job")
}

/// `spawn_child` for code that cannot await (`Drop`).
fn spawn_child_blocking(mut cmd: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    spawner()
        .send(Box::new(move || {
            let _ = reply.send(cmd.spawn());
        }))
        .expect("the spawner thread is gone");
    answer.recv().expect("the spawner thread dropped a job")
}

// ---------------------------------------------------------------------------
// Processes, from /proc

/// A process, identified by PID and start time (so a reused PID is not it).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Proc {
    pid: i32,
    start_time: u64,
}

struct Stat {
    state: char,
    ppid: i32,
    start_time: u64,
}

fn read_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Field 22 (starttime); the next one is field 5.
    let start_time = fields.nth(17)?.parse().ok()?;
    Some(Stat { state, ppid, start_time })
}

impl Proc {
    fn of(pid: i32) -> Option<Proc> {
        read_stat(pid).map(|stat| Proc { pid, start_time: stat.start_time })
    }

    fn current(&self) -> Option<Stat> {
        read_stat(self.pid).filter(|stat| stat.start_time == self.start_time)
    }

    /// Still there and not a zombie (a zombie holds no memory or sockets).
    fn is_alive(&self) -> bool {
        self.current().is_some_and(|stat| !matches!(stat.state, 'Z' | 'X' | 'x'))
    }

    fn signal(&self, signal: libc::c_int) {
        if self.current().is_some() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    /// Waits until the process is stopped (or dead).
    fn wait_stopped(&self, deadline: Instant) -> Result<(), String> {
        loop {
            match self.current() {
                Some(stat) if !matches!(stat.state, 'T' | 't' | 'Z' | 'X' | 'x') => {}
                _ => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Err(format!("PID {} did not stop after SIGSTOP", self.pid));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Live processes whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = read_stat(pid)?;
            (stat.ppid == ppid && stat.state != 'Z')
                .then_some(Proc { pid, start_time: stat.start_time })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Small helpers

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the dir unless disarmed (set to `None`).
struct RemoveDirOnDrop(Option<PathBuf>);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A new private dir under the temp dir, owned by `run_as` if given.
fn make_temp_dir(run_as: Option<RunAs>) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut base = std::env::temp_dir();
    // The socket path (dir + "/.s.PGSQL.NNNNN") must fit in 107 bytes.
    if base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    sweep_stale_dirs(&base);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let dir = base.join(format!(
        "healthd-pg-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    if let Some(user) = run_as {
        std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chowning {} to the postgres user: {e}", dir.display()));
    }
    dir
}

/// Removes, once per process, the temp dirs of test processes that died
/// without dropping their `TestPostgres` (killed by a timeout, say): their
/// servers died with them, the dirs did not. A dir whose PID is alive stays.
fn sweep_stale_dirs(base: &Path) {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(entries) = fs::read_dir(base) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("healthd-pg-"))
                .and_then(|rest| rest.split('-').next())
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// The last 60 lines of `path` from byte `offset` on.
fn log_since(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

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

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
