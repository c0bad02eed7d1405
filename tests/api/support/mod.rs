//! Test support shared by the modules of the api test binary; the
//! dependencies themselves live in the healthd-testkit crate, which the
//! benchmark uses too.

pub use healthd_testkit::postgres;
