//! The service as the `healthd` binary runs it: [`Service`] binds the
//! listener, starts the checks (through the same builder an embedding app
//! uses) and the server, and runs the lifecycle starting -> ready ->
//! draining -> stopped; SIGHUP reloads the config file meanwhile. With
//! `[server.tls]` it serves HTTPS, and follows its certificate files
//! (`tls`). Also the process-wide logging the binary installs
//! ([`init_logging`]), and `healthd test-alert` ([`send_test_alert`]).
//!
//! An app that embeds healthd needs none of this: it mounts
//! [`Healthd::scope`](crate::Healthd::scope) in its own server and drains
//! with [`Healthd::drain`](crate::Healthd::drain), the same drain as here.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use anyhow::Context;

pub use crate::alerts::test_alert::{send_test_alert, TestAlertError};
pub use crate::api::log::LogFormat;

use crate::alerts;
use crate::api::access::Access;
use crate::api::{self, HealthState};
use crate::base::budget::{self, Budget};
use crate::base::secret::{sha256_hex, ProcessEnv};
use crate::base::units::Prefix;
use crate::builder::Healthd;
use crate::config::{ServerSettings, Settings, StorageSettings};
use crate::engine::monitor::Monitor;

mod https;

use https::ServerTls;

/// How long (seconds) requests in flight may take to finish once the
/// listener has closed. healthd answers in microseconds; this bounds slow
/// clients, so that the process exits well inside Kubernetes' grace period.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// Connections the kernel holds for healthd beyond the cap: clients past
/// it wait here until a slot frees (actix-web's own default; std binds
/// with 128).
pub const LISTEN_BACKLOG: i32 = 1024;

/// What raising the limit of open files did: the soft limit before and after.
static RAISED: OnceLock<Option<(u64, u64)>> = OnceLock::new();

/// Raises the soft limit of open files (RLIMIT_NOFILE) to the hard one,
/// once per process. The binary calls it before it reads the config, so
/// that `server.max_connections` is checked against the raised limit;
/// [`Service::build`] calls it too, and logs what it did.
pub fn raise_open_files_limit() {
    RAISED.get_or_init(budget::raise_open_files_limit);
}

/// The running service: its port, its server and its checks.
pub struct Service {
    port: u16,
    server: Server,
    monitor: Monitor,
    state: Data<HealthState>,
    /// Milliseconds; a reload may change it.
    drain_delay: Arc<AtomicU64>,
    running: ServerSettings,
    /// `[storage]` as at start: a reload cannot change the store.
    storage: Option<StorageSettings>,
    config_file: Option<PathBuf>,
    budget: Budget,
    /// With `[server.tls]`: the certificate and client CA new handshakes use.
    tls: Option<Arc<ServerTls>>,
}

/// Starts draining a running [`Service`] from elsewhere (a signal, a test).
#[derive(Clone)]
pub struct DrainHandle {
    state: Data<HealthState>,
    server: ServerHandle,
    drain_delay: Arc<AtomicU64>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Service {
    /// Binds `server.listen` (port 0 picks a free port) and starts the
    /// checks; serves HTTPS with `[server.tls]`.
    pub async fn build(settings: Settings) -> anyhow::Result<Service> {
        let listener = TcpListener::bind(settings.server.listen)
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let port = listener.local_addr()?.port();
        // Listening again changes only the backlog.
        // SAFETY: listen(2) on the socket the listener owns and keeps open.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot enlarge the listen backlog");
        }
        let budget = descriptor_budget(&settings)?;
        // The checks' settings live in the monitor alone: a reload compares
        // with those, and with the running server settings kept here.
        let running = settings.server.clone();
        let storage = settings.storage.clone();
        let (monitor, state, _) = Healthd::builder(settings).start_parts()?;
        state.connections().set_max(budget.cap);
        let server_state = state.clone();
        let counted = state.clone();
        let idle = running.idle_timeout;
        let server = HttpServer::new(move || {
            App::new()
                .service(api::scope(server_state.clone(), &Prefix::root()))
                .default_service(web::to(api::not_found))
        })
        // Before the listener: actix-web captures it there. Each connection
        // is counted for the budget, and its client certificate recorded.
        .on_connect(move |connection, extensions| {
            extensions.insert(counted.connections().opened());
            api::record_peer(connection, extensions);
        })
        // The lifecycle owns signals: readiness must turn 503 before the listener closes.
        .disable_signals()
        // After the listener closes, requests in flight get this long to
        // finish; idle keep-alive connections close at once.
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        // The cap is per worker: past it a worker takes no more, and with
        // every worker full actix stops accepting (clients wait in the
        // backlog, the checks keep their descriptors).
        .workers(budget.workers)
        .max_connections(budget.per_worker)
        // An idle client gives its slot back: one that sends no request
        // (its first, or its next on a keep-alive connection) within the
        // idle timeout is closed.
        .client_request_timeout(idle)
        .keep_alive(idle);
        let (server, tls) = match &running.tls {
            Some(tls_settings) => {
                let (tls, config) = ServerTls::new(tls_settings)?;
                (server.listen_rustls_0_23(listener, config)?.run(), Some(tls))
            }
            None => (server.listen(listener)?.run(), None),
        };
        Ok(Service {
            port,
            server,
            monitor,
            state,
            drain_delay: Arc::new(AtomicU64::new(millis(running.drain_delay))),
            running,
            storage,
            config_file: None,
            budget,
            tls,
        })
    }

    /// The file SIGHUP reads again; without one (the built-in default),
    /// SIGHUP changes nothing.
    pub fn reload_from(mut self, config_file: PathBuf) -> Self {
        if let Some(tls) = &self.tls {
            tls.set_source(&config_file);
        }
        self.config_file = Some(config_file);
        self
    }

    /// The port it listens on (the one picked, for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that drains the service, as SIGTERM does.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle {
            state: self.state.clone(),
            server: self.server.handle(),
            drain_delay: self.drain_delay.clone(),
        }
    }

    /// Serves until drained (SIGTERM, SIGINT or a `DrainHandle`), then stops the checks.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Registered before "serving" is logged, so no signal can arrive
        // unhandled (and kill the process without a drain).
        let signals = Signals::register();
        let hangups = hangup_signal();
        let handle = self.drain_handle();
        let mut reloader = Reloader {
            config_file: self.config_file,
            running: self.running,
            storage: self.storage,
            monitor: self.monitor.clone(),
            state: self.state.clone(),
            drain_delay: self.drain_delay.clone(),
            budget: self.budget,
            tls: self.tls.clone(),
        };
        // Certificates rotate without a signal too: the files are watched.
        let watch = self.tls.clone().map(|tls| tokio::spawn(tls.watch()));
        let reloads = tokio::spawn(async move {
            let Some(mut hangups) = hangups else { return };
            // Signals during a reload make one more reload after it.
            while hangups.recv().await.is_some() {
                reloader.reload().await;
            }
        });
        let signals = tokio::spawn(async move {
            let Some(mut signals) = signals else { return };
            signals.next().await;
            tokio::select! {
                _ = handle.drain() => {}
                _ = signals.next() => {
                    tracing::warn!("second signal: stopping without waiting for the drain");
                    handle.server.stop(false).await;
                }
            }
        });
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(port = self.port, scheme, "healthd is serving");
        let result = self.server.await;
        signals.abort();
        if let Some(watch) = watch {
            watch.abort();
        }
        // A reload under way stops here; the checks it started stop with it.
        reloads.abort();
        let _ = reloads.await;
        self.monitor.stop().await;
        self.state.alerts().stop();
        self.state.close_store().await;
        tracing::info!("checks stopped; healthd stopped");
        result.context("the server failed")
    }
}

impl DrainHandle {
    /// Readiness answers 503 at once; after the drain delay the listener
    /// closes and requests in flight finish.
    pub async fn drain(&self) {
        let drain_delay = Duration::from_millis(self.drain_delay.load(Ordering::Relaxed));
        self.state.drain(drain_delay).await;
        tracing::info!("drain delay over: closing the listener");
        self.server.stop(true).await;
    }
}

/// SIGTERM and SIGINT, which both start the drain.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(terminate), Ok(interrupt)) => Some(Signals { terminate, interrupt }),
            _ => {
                tracing::error!("cannot listen for SIGTERM and SIGINT");
                None
            }
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// SIGHUP, registered before healthd says it serves: its default action
/// ends the process.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .inspect_err(|error| tracing::error!(%error, "cannot listen for SIGHUP: no reloads"))
        .ok()
}

/// How long a reload may take to read and validate the file and build its
/// new checks; past it the reload is abandoned and refused. Applying the
/// checks after that is bounded by their own deadlines.
pub const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// Reads the config file again and applies it: all of it, or (when it is
/// invalid) nothing.
struct Reloader {
    config_file: Option<PathBuf>,
    /// The server settings that run now: what a reload compares with (the
    /// checks it compares with the monitor's).
    running: ServerSettings,
    storage: Option<StorageSettings>,
    monitor: Monitor,
    state: Data<HealthState>,
    drain_delay: Arc<AtomicU64>,
    /// The cap set at start, which a reload does not change.
    budget: Budget,
    tls: Option<Arc<ServerTls>>,
}

impl Reloader {
    async fn reload(&mut self) {
        let Some(file) = &self.config_file else {
            tracing::warn!("SIGHUP received, but there is no config file to read again (healthd runs on the built-in default)");
            return;
        };
        tracing::info!(file = %file.display(), "SIGHUP received: reading the config again");
        // Reading, validating and building happen on a blocking thread, so
        // that no file can stall the runtime, and within a bound, so that
        // no file can stall reloads (or the exit) for good.
        let (path, monitor) = (file.clone(), self.monitor.clone());
        let loading = tokio::task::spawn_blocking(move || {
            let settings = Settings::load(Some(&path), &ProcessEnv).map_err(|error| {
                error.to_string().lines().map(str::to_string).collect::<Vec<_>>()
            })?;
            // Checks are built before anything changes: one that cannot be
            // built refuses the reload like a problem in the file.
            let warn_status = settings.server.warn_status;
            let prepared = match monitor.prepare(&settings.checks, &settings.groups, warn_status) {
                Ok(prepared) => prepared,
                Err((index, error)) => {
                    return Err(vec![format!("{}: checks[{index}]: {error:#}", path.display())])
                }
            };
            match alerts::Prepared::new(&settings.alerts) {
                Ok(alerts) => Ok((settings, prepared, alerts)),
                Err(error) => Err(vec![format!("{}: {error:#}", path.display())]),
            }
        });
        let (mut settings, prepared, alerts) =
            match tokio::time::timeout(RELOAD_BOUND, loading).await {
                Ok(Ok(Ok(loaded))) => loaded,
                Ok(Ok(Err(problems))) => return self.refuse(problems),
                Ok(Err(_panicked)) => {
                    return self.refuse(vec![format!("{}: reading it failed", file.display())])
                }
                Err(_) => {
                    return self.refuse(vec![format!(
                        "{}: reading and checking it took longer than {} s: reload abandoned",
                        file.display(),
                        RELOAD_BOUND.as_secs()
                    )])
                }
            };
        // Before the restart rules: they may put the running TLS settings
        // back, whose certificate the watch may have replaced since.
        if let (Some(tls), Some(wanted)) = (&self.tls, &settings.server.tls) {
            tls.apply(wanted);
        }
        keep_what_needs_a_restart(&self.running, &mut settings.server);
        let same_store = match (&self.storage, &settings.storage) {
            (Some(running), Some(wanted)) => running.is_same_as(wanted),
            (None, None) => true,
            _ => false,
        };
        if !same_store {
            tracing::warn!("[storage] changed: that needs a restart; the running store stays");
        }
        let checks = settings.check_descriptors();
        if checks > self.budget.room_for_checks() {
            tracing::warn!(
                "the new checks may hold {checks} descriptors, more than the {} the cap on client \
                 connections ({}) leaves under the limit of {} open files: restart to derive the cap again",
                self.budget.room_for_checks(),
                self.budget.cap,
                self.budget.limit
            );
        }
        // Access and identity switch at once; checks once the new ones
        // have their first reading.
        self.state.set_access(Access::new(settings.access.clone()));
        self.monitor
            .set_service(&settings.server.service_id, settings.server.description.as_deref());
        self.drain_delay.store(millis(settings.server.drain_delay), Ordering::Relaxed);
        if let Some(store) = self.state.store() {
            // A heartbeat the reload starts saves its pings from its first.
            crate::builder::save_pings(store, prepared.started());
        }
        let changes = self.monitor.apply(prepared).await;
        self.state.alerts().apply(alerts, &settings.checks);
        self.state.reloads().count_ok();
        tracing::info!(
            added = changes.added,
            restarted = changes.restarted,
            removed = changes.removed,
            unchanged = changes.unchanged,
            "config reloaded"
        );
        self.running = settings.server;
    }

    /// Logs each problem as it is (`FILE: KEY: REASON`); nothing changes.
    fn refuse(&self, problems: Vec<String>) {
        for problem in &problems {
            tracing::error!("{problem}");
        }
        tracing::error!(
            problems = problems.len(),
            "config reload refused: the running config stays"
        );
        self.state.reloads().count_invalid();
    }
}

/// The listener and the workers are set up once: a reload that changes
/// them says so and keeps the running values.
fn keep_what_needs_a_restart(running: &ServerSettings, wanted: &mut ServerSettings) {
    if wanted.listen != running.listen {
        tracing::warn!(
            "server.listen changed from {} to {}: that needs a restart; still listening on {}",
            running.listen,
            wanted.listen,
            running.listen
        );
        wanted.listen = running.listen;
    }
    if wanted.workers != running.workers {
        let shown =
            |workers: Option<usize>| workers.map_or("default".to_string(), |n| n.to_string());
        tracing::warn!(
            "server.workers changed from {} to {}: that needs a restart; the running value stays",
            shown(running.workers),
            shown(wanted.workers)
        );
        wanted.workers = running.workers;
    }
    match (&running.tls, &wanted.tls) {
        (None, Some(_)) => {
            tracing::warn!(
                "server.tls added: serving HTTPS needs a restart; still serving plain HTTP"
            );
            wanted.tls = None;
        }
        (Some(tls), None) => {
            tracing::warn!(
                "server.tls removed: serving plain HTTP needs a restart; still serving HTTPS"
            );
            wanted.tls = Some(tls.clone());
        }
        _ => {}
    }
    if wanted.max_connections != running.max_connections {
        tracing::warn!(
            "server.max_connections changed: that needs a restart; the running cap stays"
        );
        wanted.max_connections = running.max_connections;
    }
    if wanted.idle_timeout != running.idle_timeout {
        tracing::warn!(
            "server.idle_timeout changed: that needs a restart; the running value stays"
        );
        wanted.idle_timeout = running.idle_timeout;
    }
}

/// Raises the limit of open files, logs it, and shares it out between
/// the checks, the process and the clients.
fn descriptor_budget(settings: &Settings) -> anyhow::Result<Budget> {
    raise_open_files_limit();
    let (soft, hard) = budget::open_files_limit().unwrap_or((u64::MAX, u64::MAX));
    match RAISED.get().copied().flatten() {
        Some((before, now)) if before < now => tracing::info!(
            soft = now,
            hard,
            "limit of open files (RLIMIT_NOFILE): soft raised from {before} to {now}, the hard limit"
        ),
        _ => tracing::info!(soft, hard, "limit of open files (RLIMIT_NOFILE)"),
    }
    let server = &settings.server;
    let budget = Budget::plan(
        soft,
        settings.check_descriptors(),
        server.worker_count(),
        server.max_connections,
    )
    .map_err(|reason| anyhow::anyhow!("server.max_connections: {reason}"))?;
    tracing::info!(
        max_connections = budget.cap,
        per_worker = budget.per_worker,
        workers = budget.workers,
        reserve = budget.reserve,
        checks = budget.checks,
        idle_timeout_ms = millis(server.idle_timeout),
        "client connections: at most {} ({} per worker); {} of {} open files kept for the checks and the process",
        budget.cap,
        budget.per_worker,
        budget.reserve,
        budget.limit
    );
    if budget.overcommitted {
        tracing::warn!(
            "the checks may hold {} descriptors and the process {}: more than the limit of {} open files; clients get one connection per worker",
            budget.checks,
            budget.reserve - budget.checks,
            budget.limit
        );
    }
    Ok(budget)
}

/// Installs the process's log subscriber: `RUST_LOG` filters (default
/// `info`), lines go out through a background writer so that no request
/// waits on stdout. Call once, before [`Service::build`].
pub fn init_logging(format: LogFormat) {
    crate::api::log::init(format);
}

/// Writes out the log lines still queued; call before the process exits.
pub fn flush_logs() {
    crate::api::log::flush();
}

/// The hex SHA-256 of a bearer token, as `[[access.tokens]] sha256` wants
/// it (`healthd hash-token`).
pub fn token_digest(token: &str) -> String {
    sha256_hex(token.as_bytes())
}
