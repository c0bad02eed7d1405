//! The one integration-test binary: every module runs the real server.

mod config_cli;
mod contract;
mod endpoints;
mod helpers;
mod postgres_support;
mod support;
