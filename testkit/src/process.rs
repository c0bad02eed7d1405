//! What every throwaway server has in common, whatever it serves: the
//! process a test can kill, freeze (SIGSTOP), thaw and restart on the same
//! port, and the temp dir it lives in.
//!
//! A server file (`postgres.rs`, `redis.rs`, ...) describes its server as a
//! [`Flavor`] (the command line, a readiness probe) and gets a [`Server`]
//! that starts it, waits for it with a deadline and cleans up on drop.
//!
//! How it copes with the machines the tests run on:
//! - As root (CI runs as root), a server that refuses root or should not have
//!   it runs as its package's system user (`postgres`, `mysql`): the temp dir
//!   is chowned to that user and the child is spawned with its uid/gid
//!   (`CommandExt`), not through `sudo`, which is not installed.
//! - Ports are free ephemeral ones on 127.0.0.1, never a standard port of the
//!   machine's own services; a server that loses its port to another process
//!   before it binds it is started again on another one.
//! - Every child gets a parent-death SIGKILL, so a test binary that crashes or
//!   is killed leaves no server behind. The kernel sends it when the *thread*
//!   that forked the child ends, so every child is forked from one
//!   process-wide thread that lives as long as the process (not from a tokio
//!   worker or blocking-pool thread, which can end first). The signal is
//!   cleared when a process changes its own uid, so servers must not drop
//!   privileges themselves (no `--user` as root): we spawn them as the user.
//! - Freezing stops the server process and then every process it descends
//!   to (children, grandchildren, from /proc): PostgreSQL's backends call
//!   `setsid()`, so a process-group signal would miss them; an Erlang VM's
//!   port programs are grandchildren. Killing takes the same tree. While frozen, a small guard shell
//!   SIGKILLs the stopped processes if the test process dies, since a stopped
//!   process cannot act on its parent-death signal.
//! - A data dir that takes seconds to install (`initdb`, `mariadb-install-db`)
//!   is installed once per test process into a [`Template`] and copied for
//!   each server.
//! - Temp dirs (data dirs, sockets, logs) live in `/dev/shm` when it is
//!   writable, in memory: a disk kept busy by other builds made one
//!   `mariadb-install-db` take minutes. Else in the temp dir.
//! - Temp dirs of test processes that died without cleaning up (a timeout
//!   killed them) are swept once per process and kind.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long killed or stopped processes may take to reach that state.
const SIGNAL_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on one readiness probe.
const PROBE_ATTEMPT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);
/// Ports to try if another process takes the chosen one first.
const PORT_ATTEMPTS: usize = 5;
/// The standard ports of the machine's own services (PostgreSQL, MariaDB and
/// its X protocol, Redis, RabbitMQ and its management, EPMD and clustering,
/// NATS and its monitoring and routes, Mosquitto): never ours, though most
/// are below the ephemeral range anyway.
const RESERVED_PORTS: [u16; 12] =
    [5432, 3306, 33060, 6379, 5672, 15672, 4369, 25672, 4222, 8222, 6222, 1883];

// ---------------------------------------------------------------------------
// A supervised server

/// One kind of throwaway server.
pub(crate) trait Flavor: Send + Sync + 'static {
    /// For messages: "PostgreSQL", "Redis", ...
    const NAME: &'static str;
    /// How long a start or a restart may take before it panics.
    const READY_DEADLINE: Duration = Duration::from_secs(30);

    /// The server's command line for `port`, made with [`child_command`]
    /// (so it logs to `log` and dies with the test process).
    fn command(&self, dir: &Path, log: &Path, port: u16) -> Command;

    /// True once the server on `port` answers; bounded by the caller.
    fn probe(&self, port: u16) -> impl Future<Output = bool> + Send;

    /// Whether a server that exited during its start lost its port.
    fn port_was_taken(log: &str) -> bool {
        log.contains("Address already in use")
    }
}

/// A running (or killed, or frozen) server process, its port and temp dir.
pub(crate) struct Server<F: Flavor> {
    flavor: F,
    port: u16,
    log_path: PathBuf,
    state: Mutex<State>,
    /// Dropped after `Drop::drop` has ended the processes.
    dir: TempDir,
}

#[derive(Default)]
struct State {
    /// The server process (our child), if running.
    child: Option<Child>,
    /// Processes stopped by `freeze()`, the server first.
    frozen: Vec<Proc>,
    /// While frozen: a shell that SIGKILLs `frozen` if the test process dies.
    freeze_guard: Option<Child>,
}

enum Ready {
    Yes,
    Exited(ExitStatus),
    TimedOut,
}

impl<F: Flavor> Server<F> {
    /// Starts the server in `dir` (which it owns from now on) on a free port,
    /// appending its output to `log_path`, and waits until `probe` answers.
    /// Panics with the server's log if it does not.
    pub(crate) async fn start(flavor: F, dir: TempDir, log_path: PathBuf) -> Server<F> {
        if !log_path.exists() {
            File::create(&log_path)
                .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));
        }
        let mut server =
            Server { flavor, port: 0, log_path, state: Mutex::new(State::default()), dir };
        let deadline = Instant::now() + F::READY_DEADLINE;
        for attempt in 1.. {
            server.port = free_port();
            let log_start = file_len(&server.log_path);
            server.spawn().await;
            match server.wait_ready(deadline).await {
                Ready::Yes => return server,
                Ready::Exited(status) => {
                    let log = log_since(&server.log_path, log_start);
                    if F::port_was_taken(&log) && attempt < PORT_ATTEMPTS {
                        continue;
                    }
                    panic!(
                        "{} on port {} exited during start ({status}); its log:\n{log}",
                        F::NAME,
                        server.port
                    );
                }
                Ready::TimedOut => {
                    let _ = stop_locked(&mut lock(&server.state));
                    panic!(
                        "{} on port {} was not ready within {:?}; its log:\n{}",
                        F::NAME,
                        server.port,
                        F::READY_DEADLINE,
                        log_since(&server.log_path, log_start)
                    );
                }
            }
        }
        unreachable!("the start loop returns or panics")
    }

    pub(crate) fn flavor(&self) -> &F {
        &self.flavor
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of the server's log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        log_since(&self.log_path, 0)
    }

    /// The server process's PID, or `None` after `kill()`.
    pub(crate) fn pid(&self) -> Option<u32> {
        lock(&self.state).child.as_ref().map(Child::id)
    }

    pub(crate) fn is_frozen(&self) -> bool {
        !lock(&self.state).frozen.is_empty()
    }

    /// SIGKILLs the server and every process it had forked, reaps it and
    /// waits until they are all gone. A no-op if it is not running.
    pub(crate) fn kill(&self) {
        if let Err(e) = stop_locked(&mut lock(&self.state)) {
            panic!("killing the test {} on port {}: {e}", F::NAME, self.port);
        }
    }

    /// Starts the server again on the same port and dir; kills it first if it
    /// is running. Retries while it exits at once (a lock file or shared
    /// memory of the killed one still held), and panics with the log if it is
    /// not ready within the flavor's deadline.
    pub(crate) async fn restart(&self) {
        self.kill();
        let deadline = Instant::now() + F::READY_DEADLINE;
        loop {
            let log_start = file_len(&self.log_path);
            self.spawn().await;
            match self.wait_ready(deadline).await {
                Ready::Yes => return,
                Ready::Exited(status) => {
                    if Instant::now() >= deadline {
                        panic!(
                            "{} on port {} did not restart within {:?}; last attempt ({status}) logged:\n{}",
                            F::NAME,
                            self.port,
                            F::READY_DEADLINE,
                            log_since(&self.log_path, log_start)
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ready::TimedOut => {
                    self.kill();
                    panic!(
                        "{} on port {} was not ready within {:?} after a restart; its log:\n{}",
                        F::NAME,
                        self.port,
                        F::READY_DEADLINE,
                        log_since(&self.log_path, log_start)
                    );
                }
            }
        }
    }

    /// SIGSTOPs the server, then every process it descends to, and waits
    /// until all are stopped. The kernel still accepts TCP connections, but
    /// nothing answers. Panics if the server is not running; a no-op if it is
    /// already frozen.
    pub(crate) fn freeze(&self) {
        let mut state = lock(&self.state);
        if !state.frozen.is_empty() {
            return;
        }
        let pid = match state.child.as_ref() {
            Some(child) => child.id() as i32,
            None => panic!("freeze(): the test {} on port {} is not running", F::NAME, self.port),
        };
        let server = Proc::of(pid).unwrap_or_else(|| {
            panic!("freeze(): the {} (PID {pid}) has exited; log:\n{}", F::NAME, self.log_tail())
        });
        let deadline = Instant::now() + SIGNAL_DEADLINE;
        // The server first: once it is stopped it forks nothing new.
        server.signal(libc::SIGSTOP);
        state.frozen.push(server);
        if let Err(e) = server.wait_stopped(deadline) {
            panic!("freeze(): {e}");
        }
        if let Err(e) = stop_descendants(pid, &mut state.frozen, deadline) {
            panic!("freeze(): {e}");
        }
        state.freeze_guard = spawn_freeze_guard(&state.frozen);
    }

    /// SIGCONTs what `freeze()` stopped. A no-op if not frozen.
    pub(crate) fn thaw(&self) {
        thaw_locked(&mut lock(&self.state));
    }

    /// Sends `signal` to the running, unfrozen server and waits up to `grace`
    /// for it to exit; then kills whatever is left. For a clean shutdown on
    /// drop (PostgreSQL removes its shared memory on SIGQUIT).
    pub(crate) fn shut_down(&self, signal: libc::c_int, grace: Duration) -> Result<(), String> {
        let mut state = lock(&self.state);
        thaw_locked(&mut state);
        if let Some(child) = state.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                // SAFETY: an unreaped child's PID cannot have been reused.
                unsafe { libc::kill(child.id() as i32, signal) };
                let deadline = Instant::now() + grace;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        stop_locked(&mut state)
    }

    /// Starts the server once more without awaiting anything (for `Drop`),
    /// until `settled(pid)` says it is far enough, it exits, or 5 s pass.
    /// Best effort: a no-op if it is running or cannot be spawned.
    pub(crate) fn relaunch_blocking(&self, settled: impl Fn(u32) -> bool) {
        let mut state = lock(&self.state);
        if state.child.is_some() {
            return;
        }
        let cmd = self.flavor.command(self.dir.path(), &self.log_path, self.port);
        let Ok(mut child) = spawn_child_blocking(cmd) else {
            return;
        };
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !settled(pid) && matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        state.child = Some(child);
    }

    async fn spawn(&self) {
        let cmd = self.flavor.command(self.dir.path(), &self.log_path, self.port);
        let program = cmd.get_program().to_owned();
        let child = spawn_child(cmd)
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", Path::new(&program).display()));
        lock(&self.state).child = Some(child);
    }

    /// Polls the probe until it answers, the server exits, or the deadline.
    async fn wait_ready(&self, deadline: Instant) -> Ready {
        loop {
            {
                let mut state = lock(&self.state);
                let exited = match state.child.as_mut() {
                    Some(child) => child.try_wait().expect("checking on the server process"),
                    None => panic!("the {} process is gone while waiting for it", F::NAME),
                };
                if let Some(status) = exited {
                    state.child = None;
                    return Ready::Exited(status);
                }
            }
            if tokio::time::timeout(PROBE_ATTEMPT, self.flavor.probe(self.port))
                .await
                .unwrap_or(false)
            {
                return Ready::Yes;
            }
            if Instant::now() >= deadline {
                return Ready::TimedOut;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl<F: Flavor> Drop for Server<F> {
    /// Kills what is left (thawing a frozen server first would be pointless:
    /// SIGKILL ends stopped processes too); the temp dir goes after this.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = stop_locked(state) {
            eprintln!("test {} on port {}: {e}", F::NAME, self.port);
        }
        if std::thread::panicking() {
            eprintln!(
                "--- test {} on port {}: end of its log ---\n{}",
                F::NAME,
                self.port,
                self.log_tail()
            );
        }
    }
}

/// Kills the server and its descendants, reaps it, and waits until they are
/// gone too (an orphaned PostgreSQL backend would keep the shared memory
/// and block a restart). A no-op if not running.
fn stop_locked(state: &mut State) -> Result<(), String> {
    dismiss_freeze_guard(state);
    let frozen = std::mem::take(&mut state.frozen);
    let Some(mut child) = state.child.take() else {
        return Ok(());
    };
    let pid = child.id() as i32;
    let deadline = Instant::now() + SIGNAL_DEADLINE;
    let mut doomed: Vec<Proc> = frozen.into_iter().filter(|p| p.pid != pid).collect();
    let running = child.try_wait().map_err(|e| format!("checking on PID {pid}: {e}"))?;
    if running.is_none() {
        if let Some(me) = Proc::of(pid) {
            // Stopped, the tree forks nothing between the listing and the kill.
            me.signal(libc::SIGSTOP);
            me.wait_stopped(deadline)?;
            stop_descendants(pid, &mut doomed, deadline)?;
        }
        // SAFETY: `pid` is our unreaped child, so it cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for p in &doomed {
        p.signal(libc::SIGKILL);
    }
    child.wait().map_err(|e| format!("reaping the server (PID {pid}): {e}"))?;
    for p in &doomed {
        while p.is_alive() {
            if Instant::now() >= deadline {
                return Err(format!("PID {} (a child of the server) outlived SIGKILL", p.pid));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(())
}

fn thaw_locked(state: &mut State) {
    dismiss_freeze_guard(state);
    let frozen = std::mem::take(&mut state.frozen);
    // Children first, so that the server wakes up to running children.
    for p in frozen.iter().rev() {
        p.signal(libc::SIGCONT);
    }
}

/// A shell that waits for end-of-file on its stdin, which only we hold, and
/// then SIGKILLs `procs`. It has its own process group and ignores the usual
/// signals, so a Ctrl-C to the test's group does not take it first. `None`
/// (with a warning) if it cannot be started: freezing still works.
fn spawn_freeze_guard(procs: &[Proc]) -> Option<Child> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap '' HUP INT QUIT TERM; read line; kill -KILL \"$@\" 2>/dev/null")
        .arg("testkit-freeze-guard")
        .args(procs.iter().map(|p| p.pid.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.spawn().map_err(|e| eprintln!("testkit: no freeze guard (/bin/sh: {e})")).ok()
}

/// Ends the guard without letting it act (dropping it would close its stdin).
fn dismiss_freeze_guard(state: &mut State) {
    if let Some(mut guard) = state.freeze_guard.take() {
        let _ = guard.kill();
        let _ = guard.wait();
    }
}

// ---------------------------------------------------------------------------
// Binaries and users

/// `name` from `PATH` or the usual system dirs (root's PATH may lack sbin);
/// panics naming the Debian package to install.
pub(crate) fn require_binary(name: &str, package: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| {
        panic!(
            "the tests need `{name}`, found neither in PATH nor in /usr/sbin, /usr/bin, \
             /usr/local/bin: install it (`apt-get install {package}`)"
        )
    })
}

fn find_binary(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| is_executable(p))
    })
}

pub(crate) fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A user to run a server as.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `user` when we are root, else `None` (run as ourselves). Panics if we are
/// root and there is no such user, naming the package that creates it.
pub(crate) fn run_as_when_root(user: &str, package: &str) -> Option<RunAs> {
    if !is_root() {
        return None;
    }
    Some(lookup_user(user).unwrap_or_else(|| {
        panic!(
            "running as root, so the test server runs as the `{user}` user, but there is no such \
             user: install `{package}` (it creates that user) or run the tests as a normal user"
        )
    }))
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

/// Gives `path` to `owner` (if any) with `mode`: for files a server must own,
/// such as PostgreSQL's TLS key (0600, its user).
pub(crate) fn set_owner_and_mode(path: &Path, owner: Option<RunAs>, mode: u32) {
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chowning {}: {e}", path.display()));
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Ports

/// A port nothing listens on right now: bind port 0, release it.
pub(crate) fn free_port() -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        if !RESERVED_PORTS.contains(&port) {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------
// Child processes

/// A command run as `run_as`, in `cwd`, with stdout and stderr appended to
/// `log`, that gets SIGKILL when the test process dies.
pub(crate) fn child_command(
    program: &Path,
    run_as: Option<RunAs>,
    cwd: &Path,
    log: &Path,
) -> Command {
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()))
    };
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(open_log()).stderr(open_log());
    if let Some(user) = run_as {
        // std drops supplementary groups too when it leaves root.
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
            .name("testkit-spawner".into())
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
pub(crate) async fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    spawner()
        .send(Box::new(move || {
            let _ = reply.send(cmd.spawn());
        }))
        .expect("the spawner thread is gone");
    answer.await.expect("the spawner thread dropped a job")
}

/// `spawn_child` for code that cannot await (`Drop`).
pub(crate) fn spawn_child_blocking(mut cmd: Command) -> io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    spawner()
        .send(Box::new(move || {
            let _ = reply.send(cmd.spawn());
        }))
        .expect("the spawner thread is gone");
    answer.recv().expect("the spawner thread dropped a job")
}

/// Runs a setup command (initdb, mariadb-install-db) made with
/// [`child_command`] to its end; panics with what it logged if it fails.
pub(crate) async fn run_to_completion(cmd: Command, log: &Path) {
    let program = Path::new(cmd.get_program()).display().to_string();
    let log_start = file_len(log);
    let mut child = spawn_child(cmd).await.unwrap_or_else(|e| panic!("running {program}: {e}"));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiting for a setup command")
        .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    if !status.success() {
        panic!("{program} failed ({status}); its output:\n{}", log_since(log, log_start));
    }
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

/// SIGSTOPs every live descendant of the stopped process `root` (children,
/// their children, ...) that `stopped` does not hold yet, adds them to it
/// (parents before children) and waits until they are stopped. Level by
/// level: a process is listed only once its parent is stopped, so nothing
/// forks a child the listing misses. An Erlang VM's port programs are its
/// grandchildren, under `erl_child_setup`.
fn stop_descendants(root: i32, stopped: &mut Vec<Proc>, deadline: Instant) -> Result<(), String> {
    let mut parents = vec![root];
    while !parents.is_empty() {
        let level: Vec<Proc> =
            children_of(&parents).into_iter().filter(|p| p.pid != root).collect();
        let fresh: Vec<Proc> = level.iter().filter(|p| !stopped.contains(p)).copied().collect();
        for p in &fresh {
            p.signal(libc::SIGSTOP);
        }
        // Recorded before the wait, so that a failed wait still thaws them.
        stopped.extend(fresh.iter().copied());
        for p in &fresh {
            p.wait_stopped(deadline)?;
        }
        // Already stopped ones too: their children may not be.
        parents = level.iter().map(|p| p.pid).collect();
    }
    Ok(())
}

/// Live processes whose parent is one of `parents`.
fn children_of(parents: &[i32]) -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = read_stat(pid)?;
            (parents.contains(&stat.ppid) && stat.state != 'Z')
                .then_some(Proc { pid, start_time: stat.start_time })
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Temp dirs

/// A private dir under the temp dir, removed on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// `healthd-KIND-PID-N-NANOS`, mode 0700, owned by `owner` if given.
    /// `kind` must not contain '-' (the sweep splits on it).
    pub(crate) fn new(kind: &'static str, owner: Option<RunAs>) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base_dir();
        sweep_stale_dirs(base, kind);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = base.join(format!(
            "healthd-{kind}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        if let Some(user) = owner {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("chowning {}: {e}", path.display()));
        }
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A dir made once per test process (an installed data dir) and copied for
/// every server after that: `initdb` and `mariadb-install-db` take seconds
/// on a loaded machine, a copy a fraction of that. Removed when the process
/// exits (atexit), or by a later process's sweep if it was killed.
pub(crate) struct Template {
    cell: tokio::sync::OnceCell<TempDir>,
}

impl Template {
    pub(crate) const fn new() -> Template {
        Template { cell: tokio::sync::OnceCell::const_new() }
    }

    /// The template dir, made by `make` (given the new, empty dir) the
    /// first time; callers racing the first one wait for it.
    pub(crate) async fn get<Fut: Future<Output = ()>>(
        &'static self,
        kind: &'static str,
        owner: Option<RunAs>,
        make: impl FnOnce(PathBuf) -> Fut,
    ) -> &'static Path {
        let dir = self
            .cell
            .get_or_init(|| async {
                let dir = TempDir::new(kind, owner);
                remove_at_exit(dir.path());
                make(dir.path().to_owned()).await;
                dir
            })
            .await;
        dir.path()
    }
}

pub(crate) fn remove_at_exit(path: &Path) {
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    extern "C" fn remove_all() {
        for dir in lock(&DIRS).iter() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    lock(&DIRS).push(path.to_owned());
    // SAFETY: the handler is a plain function that only removes files.
    REGISTERED.call_once(|| unsafe {
        libc::atexit(remove_all);
    });
}

/// Copies the tree `from` to the new dir `to` (dirs and files only, with
/// their modes: PostgreSQL refuses a data dir open to others), owned by
/// `owner` if given.
pub(crate) fn copy_tree(from: &Path, to: &Path, owner: Option<RunAs>) -> io::Result<()> {
    let chown = |path: &Path| match owner {
        Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)),
        None => Ok(()),
    };
    fs::DirBuilder::new().mode(fs::metadata(from)?.permissions().mode()).create(to)?;
    chown(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, owner)?;
        } else if kind.is_file() {
            // Keeps the mode.
            fs::copy(entry.path(), &target)?;
            chown(&target)?;
        }
    }
    Ok(())
}

/// Where temp dirs go: `/dev/shm` when it is writable (a tmpfs), else the temp
/// dir (`/tmp` if that path is long: Unix socket paths, dir +
/// "/.s.PGSQL.NNNNN", must fit in 107 bytes). In memory because a disk that
/// other builds keep busy made `mariadb-install-db` take 70 to 220 s instead
/// of 2.5 s (its many small syncs), and because nothing here must outlive
/// the test process.
fn base_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        // SAFETY: access only reads the NUL-terminated path.
        let writable = unsafe { libc::access(c"/dev/shm".as_ptr(), libc::W_OK | libc::X_OK) } == 0;
        if writable && fs::metadata(shm).is_ok_and(|m| m.is_dir()) {
            return shm.to_owned();
        }
        let temp = std::env::temp_dir();
        if temp.as_os_str().len() > 60 {
            PathBuf::from("/tmp")
        } else {
            temp
        }
    })
}

/// Removes, once per process and kind, the temp dirs of test processes that
/// died without cleaning up: their servers died with them, the dirs did not.
/// A dir whose PID is alive stays.
fn sweep_stale_dirs(base: &Path, kind: &'static str) {
    static SWEPT: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    if !lock(&SWEPT).get_or_insert_with(HashSet::new).insert(kind) {
        return;
    }
    let prefix = format!("healthd-{kind}-");
    // The temp dir too: where dirs went before /dev/shm was used.
    let entries = [base.to_owned(), std::env::temp_dir()]
        .into_iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Percent-encodes everything but unreserved characters, for URL user-info.
pub(crate) fn percent_encode(text: &str) -> String {
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

/// A random-enough secret for a throwaway server (no crate: it only has to
/// differ between runs, not resist an attacker).
pub(crate) fn make_secret(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mixed = (nanos as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{prefix}-{mixed:016x}")
}
