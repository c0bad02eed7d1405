//! Test support shared by the modules of the api test binary. The throwaway
//! PostgreSQL lives in the healthd-testkit crate, which the benchmark uses
//! too; the small HTTP dependencies and the check-test helpers live here.

pub mod checks;
pub use healthd_testkit::{postgres, redis};
pub mod upstream;
