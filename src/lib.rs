//! healthd: health checks for an application's dependencies, answered from
//! a contract-first HTTP API. Run it as a service (`healthd --config FILE`)
//! or mount its routes in your own actix-web app:
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! use healthd::config::Settings;
//! use healthd::http::{access::Access, scope, HealthState};
//! use healthd::monitor::Monitor;
//! use healthd::report::ServiceInfo;
//!
//! #[actix_web::main]
//! async fn main() -> anyhow::Result<()> {
//!     let settings = Settings::load(None, &healthd::config::ProcessEnv)?;
//!     let service = ServiceInfo::new("orders-api".into(), None);
//!     let monitor = Monitor::start(service, &settings.checks)?;
//!     let state = HealthState::new(monitor.reader(), Access::new(settings.access), "/ops", true);
//!     HttpServer::new(move || {
//!         App::new()
//!             .route("/orders", actix_web::web::get().to(|| async { "[]" }))
//!             .service(scope(state.clone(), "/ops"))
//!     })
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await?;
//!     Ok(())
//! }
//! ```

pub mod checks;
pub mod config;
pub mod http;
pub mod monitor;
pub mod net;
pub mod report;
pub mod startup;
pub mod telemetry;
pub mod tls;
