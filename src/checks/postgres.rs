//! `kind = "postgres"`: `query` through a deadpool pool built once per check,
//! over TLS (rustls) when the DSN's `sslmode` asks for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime};
use healthd_models::ComponentType;
use tokio_postgres::error::SqlState;

use crate::base::policy::Policy;
use crate::base::secret::Secret;
use crate::checks::util::categories::{error_chain, find_io_error, io_category, tls_category};
use crate::checks::util::guard::AbandonUnlessFinished;
use crate::checks::util::postgres_tls::{self, split_sslmode};
use crate::checks::util::sql::{SqlFields, SQL_KEYS};
use crate::checks::util::trust::{self, Verify};
use crate::checks::{
    elapsed_ms, BoxFuture, Check, Kind, KindInput, KindSettings, Observation, CREDENTIALS_IN_FILE,
};

pub const KIND: Kind = Kind::new("postgres", SQL_KEYS, parse);

#[derive(Debug)]
struct PostgresSettings {
    /// The DSN with `sslmode=verify-*` spelled `require`, the most
    /// tokio-postgres reads; `verify` keeps what was asked.
    dsn: Secret,
    verify: Verify,
    ca_file: Option<PathBuf>,
    query: String,
    pool_size: usize,
}

fn parse(input: &mut KindInput<'_>) -> Option<Arc<dyn KindSettings>> {
    let fields: SqlFields = input.fields()?;
    let (dsn, from_file) = input.secret_url(fields.url.clone(), fields.url_env.clone())?;
    let (dsn, asked) = split_sslmode(dsn.expose());
    let dsn = Secret::new(dsn);
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
    if let Some(path) = &fields.ca_file {
        if let Err(reason) = trust::check_ca_file(path) {
            input.report_at("ca_file", reason);
            return None;
        }
    }
    let verify = postgres_tls::verify_for(asked, fields.ca_file.is_some());
    let (pool_size, query) = fields.pool_and_query(input)?;
    Some(Arc::new(PostgresSettings { dsn, verify, ca_file: fields.ca_file, query, pool_size }))
}

impl KindSettings for PostgresSettings {
    fn descriptors(&self) -> usize {
        // The pool, and a session taken out of it and closing while its
        // replacement opens.
        self.pool_size + 1
    }

    fn build(&self, name: &str, policy: &Policy) -> anyhow::Result<Arc<dyn Check>> {
        Ok(Arc::new(PostgresCheck::new(name, self, policy.timeout)?))
    }
}

struct PostgresCheck {
    pool: Pool,
    query: String,
    timeout: Duration,
}

impl PostgresCheck {
    fn new(name: &str, settings: &PostgresSettings, timeout: Duration) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config =
            settings.dsn.expose().parse().map_err(|_| {
                anyhow::anyhow!("check {name}: invalid PostgreSQL connection string")
            })?;
        // Covers only the TCP connect; the handshake and the query are bounded
        // by the monitor's deadline around the whole attempt.
        config.connect_timeout(timeout);
        config.application_name("healthd");
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager =
            postgres_tls::manager(config, settings.verify, settings.ca_file.as_deref(), recycling)?;
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()?;
        Ok(PostgresCheck { pool, query: settings.query.clone(), timeout })
    }

    fn failed(&self, category: String, error: &(dyn std::error::Error + 'static)) -> Observation {
        // tokio-postgres errors never include the connection string.
        Observation::fail(category).with_detail(error_chain(error))
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
            let mut client = match self.pool.get().await {
                // Dropped mid-query, the connection is detached from the
                // pool and closed, so no later attempt inherits a stuck session.
                Ok(client) => {
                    AbandonUnlessFinished::new(client, |client| drop(Object::take(client)))
                }
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
                    // Back to the pool.
                    drop(client.finish());
                    Observation::pass(vec![elapsed_ms(started), connections])
                }
                Err(error) => self.failed(postgres_category(&error), &error),
            }
        })
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
    let chain = error_chain(error);
    if let Some(tls) = tls_category(&chain) {
        return tls.into();
    }
    if chain.contains("server does not support TLS") {
        return "TLS: the server does not accept TLS".into();
    }
    if let Some(io) = find_io_error(error) {
        return io_category(io);
    }
    // The server asked for a password and the DSN has none.
    if chain.contains("password missing") {
        return "authentication failed".into();
    }
    if error.is_closed() {
        return "connection closed".into();
    }
    "connection failed".into()
}
