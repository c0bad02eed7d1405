//! healthd: health checks for an application's dependencies, answered from
//! a contract-first HTTP API (`/health`, `/health/live`, `/health/ready`,
//! `/health/startup`, `/metrics`, the contract and Swagger UI). Run it as a
//! service (`healthd --config FILE`), or embed it in an actix-web app: the
//! binary and an app start it the same way, through [`Healthd::builder`].
//!
//! An app gets healthd's checks from a config file (or the built-in
//! default, which watches the disk and shows details to local callers),
//! adds checks of its own from code, mounts the routes under a prefix, and
//! drains before it stops:
//!
//! ```
//! use std::time::Duration;
//!
//! use actix_web::{web, App, HttpServer};
//! use healthd::{check_fn, CheckPolicy, Healthd, Outcome, ProcessEnv, Settings};
//!
//! # #[actix_web::main]
//! # async fn main() -> anyhow::Result<()> {
//! // `HEALTHD_CONFIG`'s checks and access rules, or the built-in default.
//! let config = std::env::var_os("HEALTHD_CONFIG").map(std::path::PathBuf::from);
//! let settings = Settings::load(config.as_deref(), &ProcessEnv)?;
//! let healthd = Healthd::builder(settings)
//!     .service_id("orders-api")
//!     .prefix("/ops")
//!     // A check only the app can make, under the same policy rules as
//!     // config checks: a non-critical failure makes the service `warn`.
//!     .check(
//!         "queue",
//!         CheckPolicy::new()
//!             .critical(false)
//!             .interval(Duration::from_secs(5))
//!             .timeout(Duration::from_secs(1)),
//!         check_fn(|| async { Outcome::Pass }),
//!     )
//!     .start()?; // inside the app's runtime; the checks run on it
//!
//! let routes = healthd.clone();
//! let server = HttpServer::new(move || {
//!     App::new()
//!         .route("/orders", web::get().to(|| async { "[]" }))
//!         .service(routes.scope())
//! })
//! .disable_signals() // the app drains on SIGTERM itself; see below
//! .bind("127.0.0.1:0")?;
//! let address = server.addrs()[0];
//! let server = server.run();
//! let handle = server.handle();
//! actix_web::rt::spawn(server);
//!
//! let ready = reqwest::get(format!("http://{address}/ops/health/live")).await?;
//! assert_eq!(ready.status(), 200);
//!
//! // On SIGTERM: readiness answers 503 at once; `healthd.drain().await`
//! // also waits the config's drain delay before the server stops.
//! healthd.start_draining();
//! let ready = reqwest::get(format!("http://{address}/ops/health/ready")).await?;
//! assert_eq!(ready.status(), 503);
//! handle.stop(true).await;
//! healthd.stop().await;
//! # Ok(())
//! # }
//! ```
//!
//! A check from code is any [`Check`], or an async closure through
//! [`check_fn`], or blocking code through [`blocking_check_fn`] (which runs
//! it on tokio's blocking pool, one call in flight per check). Each runs
//! under its [`CheckPolicy`]: a hard deadline per attempt (its future is
//! dropped then), retries with backoff, thresholds, and the same history,
//! metrics and disclosure rules as a config check. A check that panics is
//! `fail` with output `check panicked` (the panic's message goes to the log
//! only) and keeps its schedule. `examples/embedded.rs` is a whole app.

#![warn(missing_docs)]

// Layers, each importing only from those above it in this list (a test in
// `tests/api/layers.rs` holds it): see ARCHITECTURE.md.
mod alerts;
mod api;
mod base;
mod builder;
mod checks;
mod config;
mod engine;
pub mod service;
mod store;

pub use base::policy::CheckPolicy;
pub use base::problem::{ConfigError, ConfigProblem};
pub use base::secret::{Environment, ProcessEnv};
pub use builder::{Builder, Healthd};
pub use checks::from_code::{blocking_check_fn, check_fn, Outcome};
pub use checks::{BoxFuture, Check, Observation};
pub use config::{Settings, DEFAULT_CONFIG};
pub use healthd_models::{ComponentType, HealthReport, HealthStatus};

/// healthd's operations as utoipa derives them from the route handlers:
/// the same document as `openapi.yaml`, which healthd serves (a test
/// compares the two). An app that describes its own API with utoipa can
/// merge it into its document (`OpenApi::merge`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi;
    api::ApiDoc::openapi()
}
