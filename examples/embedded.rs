//! An actix-web app that embeds healthd: its own route (`GET /orders`),
//! healthd's routes under `/ops`, a check from code (`queue`, non-critical,
//! flipping between pass and fail every few seconds so it is seen to move)
//! beside the checks of an optional config file (`HEALTHD_CONFIG`; without
//! one, healthd's built-in default, which checks the disk and shows details
//! to local callers). It listens on `HEALTHD_LISTEN` (default
//! `127.0.0.1:8081`) and drains on SIGTERM or SIGINT like the binary:
//! readiness answers 503 for the drain delay, then the server stops.
//!
//! ```text
//! cargo run --example embedded
//! curl -s localhost:8081/ops/health
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Context;
use healthd::{check_fn, CheckPolicy, Healthd, Outcome, ProcessEnv, Settings};

/// How often the example's queue consumer changes its mind.
const FLIP_EVERY: Duration = Duration::from_secs(3);

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    let config = std::env::var_os("HEALTHD_CONFIG").map(PathBuf::from);
    let settings = Settings::load(config.as_deref(), &ProcessEnv)?;
    // The app owns its listener: the config's `server.listen` is the binary's.
    let listen = std::env::var("HEALTHD_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let listener =
        TcpListener::bind(&listen).with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr()?;

    // The app's own state, which only it can judge: here a consumer loop
    // that stalls and recovers every few seconds.
    let consuming = Arc::new(AtomicBool::new(true));
    let flipping = consuming.clone();
    actix_web::rt::spawn(async move {
        let mut ticks = actix_web::rt::time::interval(FLIP_EVERY);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            flipping.fetch_xor(true, Ordering::Relaxed);
        }
    });
    let queue = check_fn(move || {
        let consuming = consuming.load(Ordering::Relaxed);
        async move {
            if consuming {
                Outcome::Pass
            } else {
                Outcome::fail("consumer stalled")
            }
        }
    });

    let healthd = Healthd::builder(settings)
        .service_id("orders-api")
        .prefix("/ops")
        .check(
            "queue",
            CheckPolicy::new()
                .critical(false)
                .interval(Duration::from_secs(1))
                .timeout(Duration::from_millis(200))
                .retries(0),
            queue,
        )
        .start()?;

    let routes = healthd.clone();
    let server = HttpServer::new(move || {
        App::new().route("/orders", web::get().to(orders)).service(routes.scope())
    })
    // Signals are ours: readiness must turn 503 before the listener closes.
    .disable_signals()
    .listen(listener)?
    .run();
    println!("listening on http://{address}");

    let handle = server.handle();
    let draining = healthd.clone();
    actix_web::rt::spawn(async move {
        shutdown_signal().await;
        draining.drain().await;
        handle.stop(true).await;
    });
    server.await?;
    healthd.stop().await;
    Ok(())
}

async fn orders() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!([{ "id": 1, "item": "tea" }]))
}

/// SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot listen for SIGTERM and SIGINT");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received: draining"),
        _ = interrupt.recv() => tracing::info!("SIGINT received: draining"),
    }
}
