//! The one integration-test binary: every module runs the real server.

mod access;
mod alerts_delivery;
mod alerts_email;
mod bad_input;
mod behind_proxy;
#[cfg(feature = "amqp")]
mod checks_amqp;
#[cfg(feature = "dns")]
mod checks_dns;
mod checks_exec;
mod checks_file;
#[cfg(feature = "grpc")]
mod checks_grpc;
mod checks_http;
mod checks_http_conditions;
#[cfg(feature = "icmp")]
mod checks_icmp;
#[cfg(feature = "mqtt")]
mod checks_mqtt;
mod checks_mysql;
#[cfg(feature = "nats")]
mod checks_nats;
mod checks_postgres;
mod checks_postgres_tls;
mod checks_redis;
mod checks_tcp;
mod checks_tls;
mod config_cli;
mod config_fuzz;
mod contract;
mod descriptors;
mod embedded;
mod endpoints;
#[cfg(all(
    feature = "amqp",
    feature = "nats",
    feature = "grpc",
    feature = "dns",
    feature = "mqtt",
    feature = "icmp"
))]
mod every_kind;
mod groups;
mod heartbeats;
mod history;
mod lifecycle;
mod metrics;
mod page;
mod reload;
mod store_postgres;
mod store_sqlite;
mod support;
mod tls_server;
