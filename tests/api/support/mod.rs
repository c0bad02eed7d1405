//! Test support shared by the modules of the api test binary. The throwaway
//! PostgreSQL, Redis and MariaDB live in the healthd-testkit crate, which the
//! benchmark uses too; the small HTTP dependencies and the check-test
//! helpers live here.

pub mod checks;
pub mod datastore;
#[cfg(feature = "nats")]
pub use healthd_testkit::nats;
pub use healthd_testkit::{mariadb, postgres, redis};
#[cfg(feature = "icmp")]
pub mod netns;
pub mod upstream;
