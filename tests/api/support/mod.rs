//! Test support shared by the modules of the api test binary, all of it in
//! this folder: the real server on port 0 (`app`), the small HTTP
//! dependencies (`upstream`), the check-test helpers (`checks`) and the
//! fault tests the SQL kinds share (`datastore`). The throwaway PostgreSQL,
//! Redis, MariaDB, NATS and RabbitMQ live in the healthd-testkit crate, which the
//! benchmark uses too.

pub mod app;
pub mod checks;
pub mod datastore;
#[cfg(feature = "nats")]
pub use healthd_testkit::nats;
#[cfg(feature = "amqp")]
pub use healthd_testkit::rabbitmq;
pub use healthd_testkit::{mariadb, postgres, redis};
#[cfg(feature = "icmp")]
pub mod netns;
pub mod upstream;
