//! `Application`: binds the listener, starts the monitor and the server,
//! and runs the lifecycle starting -> ready -> draining -> stopped.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web::{self, Data};
use actix_web::{App, HttpServer};
use anyhow::Context;

use crate::builder::Healthd;
use crate::config::Settings;
use crate::http::{self, HealthState};
use crate::monitor::Monitor;

/// How long (seconds) requests in flight may take to finish once the
/// listener has closed. healthd answers in microseconds; this bounds slow
/// clients, so that the process exits well inside Kubernetes' grace period.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

/// The running service: its port, its server and its checks.
pub struct Application {
    port: u16,
    server: Server,
    monitor: Monitor,
    state: Data<HealthState>,
    drain_delay: Duration,
}

/// Starts draining a running `Application` from elsewhere (a signal, a test).
#[derive(Clone)]
pub struct DrainHandle {
    state: Data<HealthState>,
    server: ServerHandle,
    drain_delay: Duration,
}

impl Application {
    /// Binds `server.listen` (port 0 picks a free port) and starts the checks.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(settings.server.listen)
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let port = listener.local_addr()?.port();
        let (monitor, state) = Healthd::builder(settings.clone()).start_parts()?;
        let server_state = state.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .service(http::scope(server_state.clone(), ""))
                .default_service(web::to(http::not_found))
        })
        // The lifecycle owns signals: readiness must turn 503 before the listener closes.
        .disable_signals()
        // After the listener closes, requests in flight get this long to
        // finish; idle keep-alive connections close at once.
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS);
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        Ok(Application { port, server, monitor, state, drain_delay: settings.server.drain_delay })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle {
            state: self.state.clone(),
            server: self.server.handle(),
            drain_delay: self.drain_delay,
        }
    }

    /// Serves until drained (SIGTERM, SIGINT or a `DrainHandle`), then stops the checks.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        // Registered before "serving" is logged, so no signal can arrive
        // unhandled (and kill the process without a drain).
        let signals = Signals::register();
        let handle = self.drain_handle();
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
        tracing::info!(port = self.port, "healthd is serving");
        let result = self.server.await;
        signals.abort();
        self.monitor.stop().await;
        tracing::info!("checks stopped; healthd stopped");
        result.context("the server failed")
    }
}

impl DrainHandle {
    /// Readiness answers 503 at once; after the drain delay the listener
    /// closes and requests in flight finish.
    pub async fn drain(&self) {
        tracing::info!(
            drain_delay_ms = self.drain_delay.as_millis() as u64,
            "draining: readiness now answers 503"
        );
        self.state.start_draining();
        tokio::time::sleep(self.drain_delay).await;
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
