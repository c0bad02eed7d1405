//! Real dependencies for healthd's integration tests and `cargo xtask
//! bench`: a throwaway PostgreSQL a test can kill, freeze and restart.

pub mod postgres;
