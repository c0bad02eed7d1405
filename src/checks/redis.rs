//! `kind = "redis"`: `PING` over one multiplexed connection kept per check,
//! opened again after any failure; with `expect_role = "master"`, a replica
//! fails as `read-only replica`.
//!
//! The crate's `ConnectionManager` was not used: it reconnects in the
//! background on its own schedule, so an attempt could not tell a fresh
//! connection from one that was retried behind its back, and its first
//! connect happens outside any attempt's deadline. Here every connect
//! happens inside an attempt, under the monitor's deadline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use healthd_models::ComponentType;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, ServerErrorKind, Value};
use serde::Deserialize;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::guard::AbandonUnlessFinished;
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, CREDENTIALS_IN_FILE,
    RESPONSE_TIME,
};

pub const KIND: Kind = Kind::new("redis", &["url", "url_env", "expect_role"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisFields {
    url: Option<String>,
    url_env: Option<String>,
    expect_role: Option<Role>,
}

/// The role a server must have; a replica is read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Master,
}

#[derive(Debug)]
struct RedisSettings {
    url: Secret,
    expect_role: Option<Role>,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: RedisFields = input.fields()?;
    let (url, from_file) = input.secret_url(fields.url, fields.url_env)?;
    match redis::parse_redis_url(url.expose()) {
        Some(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => {
            if from_file && parsed.password().is_some() {
                input.report_at("url", CREDENTIALS_IN_FILE);
                return None;
            }
        }
        // The URL may hold a password: the reason never repeats it.
        _ => {
            input.report_at("url", "not a redis:// or rediss:// URL");
            return None;
        }
    }
    Some(Arc::new(RedisSettings { url, expect_role: fields.expect_role }))
}

impl KindSettings for RedisSettings {
    fn descriptors(&self) -> usize {
        // The multiplexed connection, and a new one after a failure.
        2
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        let client = Client::open(self.url.expose())
            .map_err(|_| anyhow::anyhow!("check {name}: invalid Redis URL"))?;
        Ok(Arc::new(RedisCheck {
            client,
            expect_role: self.expect_role,
            timeout: policy.timeout,
            connection: Mutex::new(None),
        }))
    }
}

struct RedisCheck {
    client: Client,
    expect_role: Option<Role>,
    timeout: Duration,
    /// The kept connection; cleared whenever an attempt does not finish
    /// cleanly, so the next one connects afresh.
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisCheck {
    fn kept(&self) -> Option<MultiplexedConnection> {
        self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn keep(&self, connection: Option<MultiplexedConnection>) {
        *self.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = connection;
    }

    async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        // The crate's own bounds (500 ms and 1 s by default) would cut a
        // longer deadline short: they are set to the check's.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn ping(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> Result<Option<Value>, RedisError> {
        redis::cmd("PING").query_async::<()>(connection).await?;
        match self.expect_role {
            Some(_) => Ok(Some(redis::cmd("ROLE").query_async::<Value>(connection).await?)),
            None => Ok(None),
        }
    }

    fn failed(&self, error: &RedisError) -> Observation {
        // Redis errors never carry the URL or the password.
        let observation = if error.is_timeout() {
            Observation::timed_out(self.timeout)
        } else {
            Observation::fail(redis_category(error))
        };
        observation.with_detail(error_chain(error))
    }
}

impl Check for RedisCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        RESPONSE_TIME
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let connection = match self.kept() {
                Some(connection) => connection,
                None => match self.connect().await {
                    Ok(connection) => connection,
                    Err(error) => return self.failed(&error),
                },
            };
            // Dropped at the deadline with the connection still out, it is
            // forgotten: a reply that never came must not be waited on twice.
            let mut held = AbandonUnlessFinished::new(connection, |_| self.keep(None));
            match self.ping(held.connection()).await {
                Ok(role) => {
                    let elapsed = elapsed_ms(started);
                    self.keep(Some(held.finish()));
                    match role {
                        Some(role) if !is_master(&role) => {
                            Observation::fail_with("read-only replica", vec![elapsed])
                        }
                        _ => Observation::pass(vec![elapsed]),
                    }
                }
                Err(error) => self.failed(&error),
            }
        })
    }
}

/// `ROLE` answers `["master", ...]` or `["slave", ...]`.
fn is_master(role: &Value) -> bool {
    match role {
        Value::Array(items) => matches!(
            items.first(),
            Some(Value::BulkString(word)) if word.as_slice() == b"master"
        ),
        _ => false,
    }
}

fn redis_category(error: &RedisError) -> String {
    if error.kind() == ErrorKind::AuthenticationFailed {
        return "authentication failed".into();
    }
    match error.code() {
        Some("NOAUTH" | "WRONGPASS") => return "authentication failed".into(),
        Some("LOADING") => return "loading".into(),
        Some("READONLY") => return "read-only replica".into(),
        Some("MASTERDOWN") => return "replica has no master".into(),
        _ => {}
    }
    if error.kind() == ErrorKind::Server(ServerErrorKind::BusyLoading) {
        return "loading".into();
    }
    let chain = error_chain(error);
    if let Some(tls) = tls_category(&chain) {
        return tls.into();
    }
    if let Some(io) = find_io_error(error) {
        return io_category(io);
    }
    if error.is_connection_refusal() {
        return "connection refused".into();
    }
    if error.is_connection_dropped() || error.is_unrecoverable_error() {
        return "connection closed".into();
    }
    match error.code() {
        Some(code) if code.chars().all(|c| c.is_ascii_uppercase()) => {
            format!("server error {code}")
        }
        _ => "command failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_reply_tells_a_master_from_a_replica() {
        let reply = |word: &str| {
            Value::Array(vec![Value::BulkString(word.as_bytes().to_vec()), Value::Int(0)])
        };
        assert!(is_master(&reply("master")));
        assert!(!is_master(&reply("slave")));
        assert!(!is_master(&Value::Nil));
    }
}
