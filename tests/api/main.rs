//! The one integration-test binary: every module runs the real server.

mod access;
mod bad_input;
mod behind_proxy;
mod checks_http;
mod checks_mysql;
mod checks_postgres;
mod checks_postgres_tls;
mod checks_redis;
mod checks_tcp;
mod config_cli;
mod contract;
mod embedded;
mod endpoints;
mod helpers;
mod lifecycle;
mod metrics;
mod postgres_support;
mod support;
