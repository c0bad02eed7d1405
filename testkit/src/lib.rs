//! Real dependencies for healthd's integration tests and `cargo xtask
//! bench`: throwaway PostgreSQL (plain or over TLS), Redis, MariaDB, NATS,
//! RabbitMQ, dnsmasq and Mosquitto servers a test can kill, freeze and
//! restart, certificates minted by the test and a TLS listener that serves
//! them, and the Debian packages the tests need, installed when missing
//! (`debian`). What the servers share (running as another user, free ports,
//! freezing, temp dirs, cleanup) is `process`. A recording HTTP server
//! (`recorder`), a throwaway Alertmanager and an SMTP server (`smtp`) stand
//! in for where alerts go.

pub mod alertmanager;
pub mod certs;
pub mod debian;
pub mod dnsmasq;
pub mod mariadb;
pub mod mosquitto;
pub mod nats;
pub mod postgres;
mod process;
pub mod python;
pub mod rabbitmq;
pub mod readme;
pub mod recorder;
pub mod redis;
pub mod smtp;
