//! The one integration-test binary: every module runs the real server.

mod access;
mod bad_input;
mod checks_http;
mod checks_postgres;
mod checks_postgres_tls;
mod checks_redis;
mod checks_tcp;
mod config_cli;
mod contract;
mod endpoints;
mod helpers;
mod lifecycle;
mod metrics;
mod postgres_support;
mod reload;
mod support;
