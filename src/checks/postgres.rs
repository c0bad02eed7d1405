//! `kind = "postgres"`: `query` through a deadpool pool built once per check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use healthd_models::ComponentType;
use serde::Deserialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::checks::{
    elapsed_ms, error_chain, find_io_error, io_category, BoxFuture, Check, Kind, KindInput,
    KindSettings, Observation, CREDENTIALS_IN_FILE,
};
use crate::config::{Policy, Secret};

pub const KIND: Kind = Kind::new("postgres", &["url", "url_env", "query", "pool_size"], parse);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresFields {
    url: Option<String>,
    url_env: Option<String>,
    query: Option<String>,
    pool_size: Option<usize>,
}

#[derive(Debug)]
struct PostgresSettings {
    dsn: Secret,
    query: String,
    pool_size: usize,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: PostgresFields = input.fields()?;
    let (dsn, from_file) = input.secret_url(fields.url, fields.url_env)?;
    let parsed = match dsn.expose().parse::<tokio_postgres::Config>() {
        Ok(parsed) => parsed,
        Err(error) => {
            // The parser's message never repeats the DSN, but says what is wrong with it.
            input.report_at("url", format!("not a PostgreSQL connection string: {error}"));
            return None;
        }
    };
    if from_file && parsed.get_password().is_some() {
        input.report_at("url", CREDENTIALS_IN_FILE);
        return None;
    }
    if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        input.report_at(
            "url",
            "sslmode=require is not supported yet: the postgres check connects without TLS (use sslmode=disable or prefer)",
        );
        return None;
    }
    let pool_size = fields.pool_size.unwrap_or(2);
    if pool_size == 0 {
        input.report_at("pool_size", "must be at least 1");
        return None;
    }
    let query = fields.query.unwrap_or_else(|| "SELECT 1".into());
    Some(Arc::new(PostgresSettings { dsn, query, pool_size }))
}

impl KindSettings for PostgresSettings {
    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(PostgresCheck::new(name, &self.dsn, &self.query, self.pool_size, policy.timeout)?))
    }
}

struct PostgresCheck {
    name: String,
    pool: Pool,
    query: String,
    timeout: Duration,
}

impl PostgresCheck {
    fn new(
        name: &str,
        dsn: &Secret,
        query: &str,
        pool_size: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = dsn
            .expose()
            .parse()
            .map_err(|_| anyhow::anyhow!("check {name}: invalid PostgreSQL connection string"))?;
        // Covers only the TCP connect; the handshake and the query are bounded
        // by the monitor's deadline around the whole attempt.
        config.connect_timeout(timeout);
        config.application_name("healthd");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        Ok(PostgresCheck { name: name.to_string(), pool, query: query.to_string(), timeout })
    }

    fn failed(&self, category: String, error: &(dyn std::error::Error + 'static)) -> Observation {
        // tokio-postgres errors never include the connection string.
        tracing::warn!(check = %self.name, error = %error_chain(error), "postgres check failed");
        Observation::fail(category)
    }
}

impl Check for PostgresCheck {
    fn component_type(&self) -> ComponentType {
        ComponentType::Datastore
    }

    fn measurements(&self) -> &'static [(&'static str, &'static str)] {
        &[("responseTime", "ms"), ("connections", "connections")]
    }

    fn attempt(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let started = Instant::now();
            let client = match self.pool.get().await {
                Ok(client) => DetachUnlessFinished(Some(client)),
                Err(PoolError::Timeout(_)) => return Observation::timed_out(self.timeout),
                Err(PoolError::Backend(error)) => {
                    return self.failed(postgres_category(&error), &error)
                }
                Err(error) => return self.failed("connection pool error".into(), &error),
            };
            let result = client.connection().simple_query(&self.query).await;
            let connections = Some(self.pool.status().size as f64);
            match result {
                Ok(_) => {
                    client.finish();
                    Observation::pass(vec![elapsed_ms(started), connections])
                }
                Err(error) => self.failed(postgres_category(&error), &error),
            }
        })
    }
}

/// A pooled connection that goes back to the pool only when its query
/// finished. Dropped mid-query (the deadline passed, or the query failed),
/// it is detached and closed, so no later attempt inherits a stuck session.
struct DetachUnlessFinished(Option<Object>);

impl DetachUnlessFinished {
    fn connection(&self) -> &Object {
        self.0.as_ref().expect("present until finished or dropped")
    }

    fn finish(mut self) {
        drop(self.0.take());
    }
}

impl Drop for DetachUnlessFinished {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            drop(Object::take(object));
        }
    }
}

fn postgres_category(error: &tokio_postgres::Error) -> String {
    if let Some(code) = error.code() {
        let category = match *code {
            SqlState::INVALID_PASSWORD | SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
                "authentication failed"
            }
            SqlState::INVALID_CATALOG_NAME => "database does not exist",
            SqlState::CANNOT_CONNECT_NOW => "database is starting up or shutting down",
            SqlState::ADMIN_SHUTDOWN | SqlState::CRASH_SHUTDOWN => "server is shutting down",
            SqlState::TOO_MANY_CONNECTIONS => "too many connections",
            SqlState::QUERY_CANCELED => "query canceled",
            SqlState::READ_ONLY_SQL_TRANSACTION => "database is read-only",
            _ => return format!("query failed (SQLSTATE {})", code.code()),
        };
        return category.into();
    }
    if let Some(io) = find_io_error(error) {
        return io_category(io);
    }
    // The server asked for a password and the DSN has none.
    if error_chain(error).contains("password missing") {
        return "authentication failed".into();
    }
    if error.is_closed() {
        return "connection closed".into();
    }
    "connection failed".into()
}
